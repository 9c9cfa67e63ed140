//! [`GroupGate`]: all / any of several gates, run concurrently.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use orch_core::{Evidence, Gate, GateContext, GateError, GateReport};

use crate::common::report;

/// How a group combines its gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every gate must pass.
    All,
    /// At least one gate must pass.
    Any,
}

/// Runs its gates concurrently and combines them; the children's reports
/// are kept in the group's report.
pub struct GroupGate {
    name: String,
    mode: Mode,
    gates: Vec<Arc<dyn Gate>>,
}

impl GroupGate {
    /// A group of `gates`.
    pub fn new(name: impl Into<String>, mode: Mode, gates: Vec<Arc<dyn Gate>>) -> Self {
        GroupGate {
            name: name.into(),
            mode,
            gates,
        }
    }
}

/// Runs `gates` concurrently against `ctx`, returning their reports in
/// order. The first error (a gate that cannot be evaluated) wins.
///
/// # Errors
/// The first [`GateError`] of any gate.
pub async fn check_all(
    gates: &[Arc<dyn Gate>],
    ctx: &GateContext,
) -> Result<Vec<GateReport>, GateError> {
    let mut set = tokio::task::JoinSet::new();
    for (i, g) in gates.iter().enumerate() {
        let (g, ctx) = (Arc::clone(g), ctx.clone());
        set.spawn(async move { (i, g.check(&ctx).await) });
    }
    let mut out: Vec<Option<GateReport>> = vec![None; gates.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(r))) => out[i] = Some(r),
            Ok((_, Err(e))) => return Err(e),
            Err(join) => {
                return Err(GateError {
                    kind: orch_core::GateErrorKind::Io,
                    gate: "group".into(),
                    message: format!("a gate task failed: {join}"),
                });
            }
        }
    }
    Ok(out.into_iter().flatten().collect())
}

#[async_trait]
impl Gate for GroupGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError> {
        let started = Instant::now();
        let children = check_all(&self.gates, ctx).await?;
        let failed: Vec<&str> = children
            .iter()
            .filter(|r| !r.passed())
            .map(|r| r.gate.as_str())
            .collect();
        let n = children.len();
        let (passed, reason) = match self.mode {
            Mode::All if failed.is_empty() => (true, format!("all {n} gates passed")),
            Mode::All => (
                false,
                format!(
                    "{} of {n} gates failed: {}",
                    failed.len(),
                    failed.join(", ")
                ),
            ),
            Mode::Any if failed.len() < n => {
                (true, format!("{} of {n} gates passed", n - failed.len()))
            }
            Mode::Any => (
                false,
                format!("none of {n} gates passed: {}", failed.join(", ")),
            ),
        };
        let mut r = report(
            &self.name,
            passed,
            reason,
            Evidence::default(),
            started,
            String::new(),
        );
        r.children = children;
        Ok(r)
    }
}
