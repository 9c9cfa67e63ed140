//! What the gate test targets share: a context, a gate from JSON, and
//! the file and process probes the tests assert with.

#![allow(dead_code)] // each test target uses its own part

use std::path::Path;
use std::time::{Duration, SystemTime};

use orch_core::{Cancellation, GateContext, GateReport, GateSpec};

/// A phase that began two seconds ago: files the test writes before the
/// check count as written during the phase.
pub fn ctx(dir: &Path) -> GateContext {
    GateContext {
        workdir: dir.into(),
        since: SystemTime::now() - Duration::from_secs(2),
        timeout: Duration::from_secs(120),
        cancel: Cancellation::new(),
    }
}

/// A gate spec from its JSON form (as a plan file would give it).
pub fn spec(json: serde_json::Value) -> GateSpec {
    serde_json::from_value(json).unwrap()
}

/// Runs the gate `json` describes in `dir`.
pub async fn check(dir: &Path, json: serde_json::Value) -> GateReport {
    orch_gates::from_spec(&spec(json))
        .unwrap()
        .check(&ctx(dir))
        .await
        .unwrap()
}

/// Runs the gate and asserts it failed with `why` in its reason.
pub async fn fails(dir: &Path, json: serde_json::Value, why: &str) -> GateReport {
    let r = check(dir, json.clone()).await;
    assert!(!r.passed(), "{json} passed: {}", r.reason);
    assert!(
        r.reason.contains(why),
        "{json}: expected {why:?} in {:?}",
        r.reason
    );
    r
}

/// The text of a fixture under `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Writes `bytes` at `rel` under `root`, making directories.
pub fn write(root: &Path, rel: &str, bytes: impl AsRef<[u8]>) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Runs git in `root` (as a committer named t), asserting it succeeds.
pub fn git(root: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(root)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// How many seconds before the phase began a stale report was written,
/// as its message says (which must name that reference time).
pub fn stale_by(reason: &str, rel: &str) -> f64 {
    reason
        .strip_prefix(&format!("report {rel} is stale: it was written "))
        .and_then(|r| r.strip_suffix(" s before this phase began"))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("not a stale-report message: {reason}"))
}

/// Whether the process runs (a killed process may linger as a zombie until
/// init reaps it; that is not running).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        }
    }
}

/// Dates `path` at `when` (a report from before, or from the future).
pub fn set_mtime(path: &Path, when: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// The pid a process wrote to `path`, waiting for it to be written.
pub fn read_pid(path: &Path) -> i32 {
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(p) = s.trim().parse()
        {
            return p;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no pid in {}", path.display());
}

/// A cargo package `gatedemo` at `dir` whose library is `lib`.
pub fn write_crate(dir: &Path, lib: &str) {
    write(
        dir,
        "Cargo.toml",
        "[package]\nname = \"gatedemo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    );
    write(dir, "src/lib.rs", lib);
}
