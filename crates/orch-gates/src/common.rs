//! Helpers shared by the gates.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use orch_core::{
    Evidence, GateContext, GateError, GateErrorKind, GateReport, GateSpec, GateStatus,
};

/// Lines of output shown in a report's excerpt.
pub(crate) const EXCERPT_LINES: usize = 40;

pub(crate) fn report(
    gate: &str,
    passed: bool,
    reason: impl Into<String>,
    evidence: Evidence,
    started: Instant,
    excerpt: String,
) -> GateReport {
    GateReport {
        gate: gate.to_owned(),
        status: if passed {
            GateStatus::Passed
        } else {
            GateStatus::Failed
        },
        reason: reason.into(),
        evidence,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        excerpt,
        children: Vec::new(),
    }
}

pub(crate) fn config(gate: &str, message: impl Into<String>) -> GateError {
    GateError {
        kind: GateErrorKind::Config,
        gate: gate.to_owned(),
        message: message.into(),
    }
}

/// `rel` resolved inside `workdir`, symbolic links followed
/// ([`orch_core::resolve_within`]): a gate reads only the work tree.
/// An absolute path or `..` out of the tree is the spec's fault (not
/// retryable); a link out of it is the work tree's (the agent made it),
/// so the gate fails and the attempt can be retried.
pub(crate) fn inside(gate: &str, workdir: &Path, rel: &str) -> Result<PathBuf, GateError> {
    orch_core::resolve_within(workdir, rel).map_err(|e| match e {
        orch_core::PathError::Symlink { .. } => GateError {
            kind: orch_core::GateErrorKind::Io,
            gate: gate.to_owned(),
            message: e.to_string(),
        },
        _ => config(gate, e.to_string()),
    })
}

/// Why a report file cannot be trusted, if it cannot.
/// File times come from the kernel's coarse clock, which lags the precise
/// one by up to a tick: a file written just after `since` can carry an
/// earlier time. Reports this little older still count as fresh.
const MTIME_SLACK: std::time::Duration = std::time::Duration::from_millis(50);

pub(crate) fn stale_or_missing(path: &Path, rel: &str, since: SystemTime) -> Option<String> {
    let since = since.checked_sub(MTIME_SLACK).unwrap_or(since);
    match std::fs::metadata(path) {
        Err(_) => Some(format!("report {rel} is missing")),
        Ok(m) if !m.is_file() => Some(format!("report {rel} is not a file")),
        Ok(m) => match m.modified() {
            Ok(t) if t < since => Some(format!(
                "report {rel} is stale: it was written before this check began"
            )),
            Ok(_) => None,
            Err(e) => Some(format!("cannot read the time of report {rel}: {e}")),
        },
    }
}

/// Checks a spec with the same rules plan validation uses
/// ([`GateSpec::problems`]) and returns the gate's name.
pub(crate) fn checked(spec: GateSpec) -> Result<String, GateError> {
    let name = spec.display_name();
    match spec.problems().into_iter().next() {
        Some((field, problem)) => Err(config(&name, format!("{field}: {problem}"))),
        None => Ok(name),
    }
}

pub(crate) fn cancelled(gate: &str) -> GateError {
    GateError {
        kind: GateErrorKind::Cancelled,
        gate: gate.to_owned(),
        message: "cancelled".into(),
    }
}

pub(crate) fn timeout(ctx: &GateContext, secs: Option<u64>) -> std::time::Duration {
    secs.map_or(ctx.timeout, std::time::Duration::from_secs)
}

/// Files under `root` as (path relative to `root`, full path), sorted;
/// `.git` is skipped. With `gitignore`, files `.gitignore` excludes (even
/// outside a git repository) are skipped too; hidden files are kept.
pub(crate) fn files_under(root: &Path, gitignore: bool) -> Vec<(String, PathBuf)> {
    let mut walker = ignore::WalkBuilder::new(root);
    if gitignore {
        walker.hidden(false).require_git(false);
    } else {
        walker.standard_filters(false);
    }
    let mut out: Vec<(String, PathBuf)> = walker
        .filter_entry(|e| e.file_name() != ".git")
        .build()
        .flatten()
        .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
        .filter_map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .ok()?
                .to_string_lossy()
                .into_owned();
            Some((rel, e.into_path()))
        })
        .collect();
    out.sort();
    out
}
