//! The [`Gate`] contract: check a work tree and report with evidence.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Cancellation;

/// Pass or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    /// Positive evidence that the check holds.
    Passed,
    /// The check does not hold, or there is no evidence that it does.
    Failed,
}

/// Test counts from a test report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TestCounts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed (errors included).
    pub failed: u64,
    /// Tests skipped or ignored.
    pub skipped: u64,
}

impl TestCounts {
    /// Tests that ran: passed plus failed.
    pub fn ran(&self) -> u64 {
        self.passed + self.failed
    }
}

/// A failing test and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TestFailure {
    /// Full test name.
    pub name: String,
    /// The failure message (first lines).
    pub message: String,
}

/// A forbidden pattern found in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Hit {
    /// File, relative to the work tree.
    pub file: String,
    /// 1-based line.
    pub line: u64,
    /// The rule that matched.
    pub rule: String,
}

/// What a gate saw. Every field is optional; gates fill what they measure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Evidence {
    /// The exit code of the command the gate ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Test counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestCounts>,
    /// Failing tests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<TestFailure>,
    /// Line coverage, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_coverage: Option<f64>,
    /// Branch coverage, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_coverage: Option<f64>,
    /// Forbidden-pattern hits (capped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hits: Vec<Hit>,
    /// A measured value (metric gates, word counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<f64>,
}

/// The result of one gate: exactly what the engine records and what an
/// agent is shown on its next attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateReport {
    /// The gate's name.
    pub gate: String,
    /// Pass or fail.
    pub status: GateStatus,
    /// One line a person and an agent can act on.
    pub reason: String,
    /// Counts, percentages, hits.
    #[serde(default)]
    pub evidence: Evidence,
    /// How long the check took.
    pub duration_ms: u64,
    /// An excerpt of the output (head and tail when long).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub excerpt: String,
    /// Reports of the gates inside an all/any gate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<GateReport>,
}

impl GateReport {
    /// Removes secrets from what the report quotes of the checked
    /// command's output: its reason, excerpt, failure messages, and those
    /// of its children.
    pub fn redact(&mut self, r: &crate::secrets::Redactor) {
        r.redact_in_place(&mut self.reason);
        r.redact_in_place(&mut self.excerpt);
        for f in &mut self.evidence.failures {
            r.redact_in_place(&mut f.name);
            r.redact_in_place(&mut f.message);
        }
        for c in &mut self.children {
            c.redact(r);
        }
    }

    /// Whether the gate passed.
    pub fn passed(&self) -> bool {
        self.status == GateStatus::Passed
    }

    /// The report as feedback for an agent: name, reason, failures, excerpt.
    pub fn feedback(&self) -> String {
        let mut s = format!("Gate `{}` failed: {}\n", self.gate, self.reason);
        for f in &self.evidence.failures {
            s.push_str(&format!("- failing test `{}`: {}\n", f.name, f.message));
        }
        for h in &self.evidence.hits {
            s.push_str(&format!("- {}:{}: {}\n", h.file, h.line, h.rule));
        }
        for c in self.children.iter().filter(|c| !c.passed()) {
            s.push_str(&c.feedback());
        }
        if !self.excerpt.is_empty() {
            s.push_str("Output:\n```\n");
            s.push_str(&self.excerpt);
            if !self.excerpt.ends_with('\n') {
                s.push('\n');
            }
            s.push_str("```\n");
        }
        s
    }
}

/// Where and when a gate checks.
#[derive(Debug, Clone)]
pub struct GateContext {
    /// The work tree to check.
    pub workdir: Arc<Path>,
    /// When the phase being checked began. Reports older than this are
    /// stale and must not be trusted.
    pub since: SystemTime,
    /// Time limit for gates that do not set their own.
    pub timeout: Duration,
    /// Fires when the check must stop.
    pub cancel: Cancellation,
}

impl GateContext {
    /// A context for `workdir`, starting now, with a 30 minute limit.
    pub fn new(workdir: impl AsRef<Path>) -> Self {
        GateContext {
            workdir: Arc::from(workdir.as_ref()),
            since: SystemTime::now(),
            timeout: Duration::from_secs(1800),
            cancel: Cancellation::new(),
        }
    }
}

/// Why a gate could not be evaluated at all (as opposed to failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateErrorKind {
    /// The gate's spec is wrong (bad regex, bad glob). Retrying will not help.
    Config,
    /// The work tree could not be read.
    Io,
    /// The check was cancelled.
    Cancelled,
}

/// A gate could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gate {gate:?}: {message}")]
pub struct GateError {
    /// What went wrong, for the engine.
    pub kind: GateErrorKind,
    /// The gate's name.
    pub gate: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl GateError {
    /// Whether evaluating the gate again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == GateErrorKind::Io
    }
}

/// Checks a work tree and reports, with evidence.
///
/// # Contract
///
/// * A gate passes only on positive evidence. No tests ran, a report older
///   than `ctx.since`, a command that was not found, was killed by a signal
///   or timed out: all are `Ok` reports with status `Failed` and a reason.
/// * `Err` is for gates that cannot be evaluated at all (bad configuration,
///   cancellation); the engine treats it as a failure it cannot retry away.
/// * A gate must not change the work tree.
/// * orch's engine runs each check on a tokio task of its own, so a gate
///   that parses a large report between awaits holds up no other ticket
///   (on a multi-thread runtime).
///
/// # Cancellation
///
/// When `ctx.cancel` fires, stop any process the gate started and return
/// `Err(GateError { kind: Cancelled, .. })`.
///
/// # Example
///
/// ```
/// use async_trait::async_trait;
/// use orch_core::{Gate, GateContext, GateError, GateReport, GateStatus, Evidence};
///
/// /// Passes when README.md exists.
/// struct HasReadme;
///
/// #[async_trait]
/// impl Gate for HasReadme {
///     fn name(&self) -> &str { "has README" }
///
///     async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError> {
///         let ok = ctx.workdir.join("README.md").is_file();
///         Ok(GateReport {
///             gate: self.name().into(),
///             status: if ok { GateStatus::Passed } else { GateStatus::Failed },
///             reason: if ok { "README.md exists".into() } else { "README.md is missing".into() },
///             evidence: Evidence::default(),
///             duration_ms: 0,
///             excerpt: String::new(),
///             children: vec![],
///         })
///     }
/// }
///
/// let gate: std::sync::Arc<dyn Gate> = std::sync::Arc::new(HasReadme);
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let report = rt.block_on(gate.check(&GateContext::new("/nonexistent"))).unwrap();
/// assert!(!report.passed());
/// assert!(report.feedback().contains("README.md is missing"));
/// ```
#[async_trait]
pub trait Gate: Send + Sync {
    /// The gate's name in reports.
    fn name(&self) -> &str;

    /// Checks `ctx.workdir`.
    ///
    /// # Errors
    /// [`GateError`] when the gate cannot be evaluated at all.
    async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError>;
}
