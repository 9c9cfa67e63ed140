//! # orch-gates
//!
//! [`Gate`] implementations for the checks teams put
//! between phases, each built from its [`GateSpec`] and usable on its own
//! by a program that depends only on orch-gates and orch-core.
//!
//! | gate | passes when |
//! |------|-------------|
//! | [`CommandGate`] | the command exits 0 and leaves nothing running |
//! | [`TestsGate`] | libtest / nextest / JUnit results show ≥ `min_tests` run, none failed, exit 0, report fresh |
//! | [`CoverageGate`] | LCOV / Cobertura / llvm-cov JSON / coverage.py JSON line (and branch) coverage meet the thresholds; report fresh |
//! | [`PatternsGate`] | no file (respecting `.gitignore`) matches a forbidden pattern |
//! | [`FilesGate`] | paths exist, are non-empty, and documents meet word, term and heading rules |
//! | [`MetricGate`] | a number in a fresh JSON file is within bounds |
//! | [`GroupGate`] | all / any of its gates pass (run concurrently) |
//!
//! Gates cannot be fooled: zero tests, a stale or truncated report, a
//! command that was not found, was killed or timed out, all fail with the
//! reason, and the report is what the agent is shown next.
//!
//! ```
//! use orch_core::{Gate, GateContext, GateSpec};
//! let spec: GateSpec = serde_json::from_str(
//!     r#"{"kind": "command", "argv": ["sh", "-c", "echo checking; exit 3"]}"#).unwrap();
//! let gate = orch_gates::from_spec(&spec).unwrap();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let report = rt.block_on(gate.check(&GateContext::new(std::env::temp_dir()))).unwrap();
//! assert!(!report.passed());
//! assert_eq!(report.reason, "`sh -c echo checking; exit 3` exited with status 3");
//! assert_eq!(report.evidence.exit_code, Some(3));
//! assert!(report.excerpt.contains("checking"));
//! ```

mod command;
mod common;
mod coverage;
pub mod coverage_parse;
mod files;
mod group;
mod patterns;
pub mod results;

/// The process runner, shared with agents (it lives in orch-core).
pub use orch_core::process;

use std::sync::Arc;

use orch_core::{Gate, GateError, GateSpec};

pub use command::{CommandGate, TestsGate};
pub use common::MAX_REPORT_BYTES;
pub use coverage::CoverageGate;
pub use files::{FilesGate, MAX_FILE_BYTES, MetricGate, word_count};
pub use group::{GroupGate, Mode, check_all};
pub use patterns::{PatternsGate, builtin};

/// Builds the gate a spec describes.
///
/// # Errors
/// [`GateError`] (config) when the spec cannot be made into a gate: empty
/// argv, invalid regex or glob, thresholds out of range.
pub fn from_spec(spec: &GateSpec) -> Result<Arc<dyn Gate>, GateError> {
    Ok(match spec {
        GateSpec::Command(s) => Arc::new(CommandGate::new(s.clone())?),
        GateSpec::Tests(s) => Arc::new(TestsGate::new(s.clone())?),
        GateSpec::Coverage(s) => Arc::new(CoverageGate::new(s.clone())?),
        GateSpec::ForbiddenPatterns(s) => Arc::new(PatternsGate::new(s.clone())?),
        GateSpec::Files(s) => Arc::new(FilesGate::new(s.clone())?),
        GateSpec::Metric(s) => Arc::new(MetricGate::new(s.clone())?),
        GateSpec::All(g) | GateSpec::Any(g) => {
            let mode = if matches!(spec, GateSpec::All(_)) {
                Mode::All
            } else {
                Mode::Any
            };
            let gates = g
                .gates
                .iter()
                .map(from_spec)
                .collect::<Result<Vec<_>, _>>()?;
            let name = g.name.clone().unwrap_or_else(|| spec.display_name());
            Arc::new(GroupGate::new(name, mode, gates))
        }
        _ => {
            return Err(common::config(
                &spec.display_name(),
                "unsupported gate kind",
            ));
        }
    })
}
