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

/// File times come from the kernel's coarse clock, which lags the precise
/// one by up to a tick: a file written just after `since` can carry an
/// earlier time. Reports this little older still count as fresh (a gate
/// with a command removes the old report first, so no earlier file can
/// use this).
const MTIME_SLACK: std::time::Duration = std::time::Duration::from_millis(50);

/// The largest report a gate reads (test results, coverage, a metric
/// file): a bigger one is refused before it is read, so a huge (or
/// sparse, or endless) file cannot take the memory of the machine.
pub const MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a report of at most [`MAX_REPORT_BYTES`], stopping there
/// whatever size the file claims.
///
/// # Errors
/// A message naming the report: unreadable, or over the limit.
pub(crate) fn read_report(path: &Path, rel: &str) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read report {rel}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_REPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read report {rel}: {e}"))?;
    if bytes.len() as u64 > MAX_REPORT_BYTES {
        return Err(format!(
            "report {rel} is larger than {MAX_REPORT_BYTES} bytes (64 MiB), the most a gate reads"
        ));
    }
    Ok(bytes)
}

/// Removes the report a gate's command is about to write, so that only
/// what the command writes while it runs can be read afterwards (a report
/// left from before, or planted, with any date, is gone).
///
/// # Errors
/// A [`GateError`] when something is there and cannot be removed.
pub(crate) fn clear_report(gate: &str, path: &Path, rel: &str) -> Result<(), GateError> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => Err(config(gate, format!("report {rel} is a directory"))),
        Ok(_) => std::fs::remove_file(path).map_err(|e| GateError {
            kind: orch_core::GateErrorKind::Io,
            gate: gate.to_owned(),
            message: format!("cannot remove the old report {rel} before the command runs: {e}"),
        }),
    }
}

/// What a report's time is compared with: when this gate's command
/// started, or (a report read as it is) when the phase began.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Since {
    /// The gate's own command started then.
    Command(SystemTime),
    /// The phase being checked began then.
    Phase(SystemTime),
}

/// Why a report file cannot be trusted, if it cannot: missing, not a
/// file, written before `since`, or dated after `until` (when the command
/// that wrote it had ended: written later, or dated into the future).
/// The message names the reference time and how far off the report is.
pub(crate) fn stale_or_missing(
    path: &Path,
    rel: &str,
    since: Since,
    until: SystemTime,
) -> Option<String> {
    let (since, what) = match since {
        Since::Command(t) => (t, "this gate's command started"),
        Since::Phase(t) => (t, "this phase began"),
    };
    let slack = since.checked_sub(MTIME_SLACK).unwrap_or(since);
    match std::fs::metadata(path) {
        Err(_) => Some(format!("report {rel} is missing")),
        Ok(m) if !m.is_file() => Some(format!("report {rel} is not a file")),
        Ok(m) => match m.modified() {
            Ok(t) if t < slack => Some(format!(
                "report {rel} is stale: it was written {} before {what}",
                human(since.duration_since(t).unwrap_or_default())
            )),
            Ok(t) if t > until => Some(format!(
                "report {rel} is dated {} after the command that should have written it ended (written later, or dated into the future)",
                human(t.duration_since(until).unwrap_or_default())
            )),
            Ok(_) => None,
            Err(e) => Some(format!("cannot read the time of report {rel}: {e}")),
        },
    }
}

/// A report no command of the gate wrote (read as it is): it must be
/// newer than every other file of the work tree that git would see, so
/// that it describes the code as it is, not as it was when it was made.
pub(crate) fn older_than_the_code(workdir: &Path, path: &Path, rel: &str) -> Option<String> {
    let report = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    let newest = files_under(workdir, true)
        .into_iter()
        .filter(|(_, p)| p != path)
        .filter_map(|(r, p)| Some((std::fs::metadata(&p).and_then(|m| m.modified()).ok()?, r)))
        .max()?;
    (newest.0 > report).then(|| {
        format!(
            "report {rel} is older than the code it describes: {} changed {} after it was written",
            newest.1,
            human(newest.0.duration_since(report).unwrap_or_default())
        )
    })
}

fn human(d: std::time::Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
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
    walk(root, &walker, false)
}

/// The files (and, with `links`, the symbolic links) `walker` finds under
/// `root`, `.git` left out, each with its path relative to `root`, sorted.
pub(crate) fn walk(
    root: &Path,
    walker: &ignore::WalkBuilder,
    links: bool,
) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = walker
        .clone()
        .filter_entry(|e| e.file_name() != ".git")
        .build()
        .flatten()
        .filter(|e| {
            e.file_type()
                .is_some_and(|t| t.is_file() || (links && t.is_symlink()))
        })
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
