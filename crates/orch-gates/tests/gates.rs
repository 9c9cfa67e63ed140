//! Gates against real processes, real cargo and (when available) real
//! pytest, including the adversarial cases that must never pass.

use std::path::Path;
use std::time::{Duration, SystemTime};

use orch_core::{Cancellation, GateContext, GateReport, GateSpec};

/// A phase that began two seconds ago: files the test writes before the
/// check count as written during the phase.
fn ctx(dir: &Path) -> GateContext {
    GateContext {
        workdir: dir.into(),
        since: SystemTime::now() - Duration::from_secs(2),
        timeout: Duration::from_secs(120),
        cancel: Cancellation::new(),
    }
}

fn spec(json: serde_json::Value) -> GateSpec {
    serde_json::from_value(json).unwrap()
}

async fn check(dir: &Path, json: serde_json::Value) -> GateReport {
    orch_gates::from_spec(&spec(json))
        .unwrap()
        .check(&ctx(dir))
        .await
        .unwrap()
}

/// Whether the process runs (a killed process may linger as a zombie until
/// init reaps it; that is not running).
fn alive(pid: i32) -> bool {
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
fn set_mtime(path: &Path, when: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

fn read_pid(path: &Path) -> i32 {
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

#[tokio::test]
async fn command_outcomes_each_have_their_reason() {
    let d = tempfile::tempdir().unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "command", "argv": ["true"]}),
    )
    .await;
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.evidence.exit_code, Some(0));

    let r = check(
        d.path(),
        serde_json::json!({"kind": "command", "argv": ["sh", "-c", "echo boom >&2; exit 7"]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "`sh -c echo boom >&2; exit 7` exited with status 7"
    );
    assert!(
        r.excerpt.contains("--- stderr") && r.excerpt.contains("boom"),
        "{}",
        r.excerpt
    );

    let r = check(
        d.path(),
        serde_json::json!({"kind": "command", "argv": ["no-such-program-orch"]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "`no-such-program-orch` was not found (is `no-such-program-orch` installed and on PATH?)"
    );

    let r = check(
        d.path(),
        serde_json::json!({"kind": "command", "argv": ["sh", "-c", "kill -9 $$"]}),
    )
    .await;
    assert!(!r.passed());
    assert!(
        r.reason.ends_with("was killed by signal 9 (SIGKILL)"),
        "{}",
        r.reason
    );

    // A shell string runs only when asked for.
    let r = check(
        d.path(),
        serde_json::json!({"kind": "command", "argv": ["test -d ."], "shell": true}),
    )
    .await;
    assert!(r.passed(), "{r:?}");
    let r = check(
        d.path(),
        serde_json::json!({"kind": "command", "argv": ["test -d ."]}),
    )
    .await;
    assert!(
        !r.passed(),
        "without shell = true the string is a program name"
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("child.pid");
    let r = check(
        d.path(),
        serde_json::json!({"kind": "command", "timeout_secs": 1,
            "argv": ["sh", "-c", "sleep 300 & echo $! > child.pid; wait"]}),
    )
    .await;
    assert!(!r.passed());
    assert!(
        r.reason
            .contains("timed out after 1s; it and every process it started were killed"),
        "{}",
        r.reason
    );
    let child = read_pid(&pidfile);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!alive(child), "the background child {child} must be gone");
}

#[tokio::test]
async fn a_child_that_outlives_the_command_fails_the_gate_and_is_killed() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("orphan.pid");
    let r = check(
        d.path(),
        serde_json::json!({"kind": "command",
            "argv": ["sh", "-c", "(sleep 300 >/dev/null 2>&1 & echo $! > orphan.pid); exit 0"]}),
    )
    .await;
    assert!(!r.passed(), "{r:?}");
    assert!(
        r.reason
            .ends_with("exited with status 0, but left processes running (they were killed)"),
        "{}",
        r.reason
    );
    let orphan = read_pid(&pidfile);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!alive(orphan), "orphan {orphan} must be killed");
}

#[tokio::test]
async fn cancellation_stops_the_gate_and_its_processes() {
    let d = tempfile::tempdir().unwrap();
    let c = ctx(d.path());
    let gate = orch_gates::from_spec(&spec(
        serde_json::json!({"kind": "command", "argv": ["sh", "-c", "echo $$ > me.pid; sleep 300"]}),
    ))
    .unwrap();
    let cancel = c.cancel.clone();
    let pidfile = d.path().join("me.pid");
    let waiter = tokio::spawn(async move { gate.check(&c).await });
    let pid = tokio::task::spawn_blocking(move || read_pid(&pidfile))
        .await
        .unwrap();
    cancel.cancel();
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err.kind, orch_core::GateErrorKind::Cancelled);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!alive(pid));
}

#[tokio::test]
async fn output_is_capped_keeping_head_and_tail() {
    let d = tempfile::tempdir().unwrap();
    let cmd = orch_gates::process::Command {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo FIRST; head -c 5000000 /dev/zero | tr '\\0' x; echo; echo LAST".into(),
        ],
        shell: false,
        cwd: d.path().to_path_buf(),
        env: Default::default(),
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let out = orch_gates::process::run(&cmd, &Cancellation::new()).await;
    assert!(out.success());
    assert_eq!(out.stdout.total(), 5_000_000 + 6 + 1 + 5);
    let text = out.stdout.text();
    assert!(text.len() <= 2 * orch_gates::process::KEEP_BYTES + 64);
    assert!(text.starts_with("FIRST\n") && text.trim_end().ends_with("LAST"));
    assert!(text.contains(" bytes dropped ...]"));
}

#[tokio::test]
async fn test_results_that_lie_do_not_pass() {
    let d = tempfile::tempdir().unwrap();
    // Prints a passing summary but exits 1.
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "libtest", "argv": ["sh", "-c",
        "printf 'running 3 tests\\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'; exit 1"]})).await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "the results show no failures, but the test command exited with status 1"
    );
    // Zero tests.
    let r = check(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "libtest", "argv": ["sh", "-c",
        "printf 'running 0 tests\\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'"]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(r.reason, "no tests ran (0 skipped); at least 1 must run");
    // All skipped where some must run.
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "libtest", "min_tests": 2, "argv": ["sh", "-c",
        "printf 'running 6 tests\\ntest result: ok. 1 passed; 0 failed; 5 ignored; 0 measured; 0 filtered out\\n'"]})).await;
    assert!(!r.passed());
    assert_eq!(r.reason, "only 1 tests ran; at least 2 must run");
    // No summary at all.
    let r = check(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "libtest", "argv": ["echo", "all good!"]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "no `test result:` line in the output; the test command exited with status 0"
    );
}

/// libtest's counts come only from its own blocks: a summary a program
/// prints by itself, a test binary that stops half-way, a summary that
/// claims more tests than its block ran, or per-test lines that do not
/// add up, all fail the gate and say which.
#[tokio::test]
async fn libtest_counts_only_what_its_blocks_ran() {
    let d = tempfile::tempdir().unwrap();
    let gate = |script: &str| serde_json::json!({"kind": "tests", "format": "libtest", "argv": ["sh", "-c", script]});
    let cases = [
        // A raw summary, after a real block of one test.
        (
            "printf 'running 1 test\\ntest a ... ok\\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\ntest result: ok. 99 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'",
            "a `test result:` line with no `running N tests` before it",
        ),
        // A test binary that exits in the middle (a test calls exit(0)).
        (
            "printf 'running 3 tests\\ntest a ... ok\\nrunning 1 test\\ntest b ... ok\\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'",
            "`running 3 tests` has no `test result:` line",
        ),
        (
            "printf 'running 3 tests\\ntest a ... ok\\n'",
            "`running 3 tests` has no `test result:` line",
        ),
        // A summary that claims more than its block ran.
        (
            "printf 'running 2 tests\\ntest result: ok. 50 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'",
            "the result counts 50 tests, but the block announced 2",
        ),
        // Per-test lines that do not add up.
        (
            "printf 'running 3 tests\\ntest a ... ok\\ntest b ... ok\\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'",
            "the block announced 3 and listed 2",
        ),
    ];
    for (script, why) in cases {
        let r = check(d.path(), gate(script)).await;
        assert!(!r.passed(), "{script}");
        assert!(r.reason.contains(why), "{script}: {}", r.reason);
    }
    // Real, quiet output (no per-test lines) still counts.
    let r = check(d.path(), gate("printf 'running 2 tests\\n..\\ntest result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'")).await;
    assert!(r.passed(), "{}", r.reason);
}

#[tokio::test]
async fn junit_reports_must_be_fresh_and_whole() {
    let d = tempfile::tempdir().unwrap();
    let fixture = std::fs::read(format!(
        "{}/tests/fixtures/nextest_junit.xml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    // A report left over from an earlier run.
    let old = d.path().join("old.xml");
    std::fs::write(&old, &fixture).unwrap();
    set_mtime(&old, SystemTime::now() - Duration::from_secs(3600));
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "junit", "report": "old.xml", "argv": ["true"]})).await;
    assert!(!r.passed());
    assert_eq!(
        r.reason, "report old.xml is missing; the test command exited with status 0",
        "the old report is removed before the command runs"
    );
    assert!(!old.exists());
    // Planted with a date in the future, so that it looks fresh: removed
    // all the same.
    std::fs::write(&old, &fixture).unwrap();
    set_mtime(&old, SystemTime::now() + Duration::from_secs(3600));
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "junit", "report": "old.xml", "argv": ["true"]})).await;
    assert_eq!(
        r.reason,
        "report old.xml is missing; the test command exited with status 0"
    );
    // Written by the command, but dated into the future.
    std::fs::write(d.path().join("src.xml"), &fixture).unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "junit", "report": "r.xml",
        "argv": ["sh", "-c", "cp src.xml r.xml && touch -d '+1 hour' r.xml"]}),
    )
    .await;
    assert!(!r.passed());
    assert!(
        r.reason.starts_with("report r.xml is dated ")
            && r.reason
                .contains("after the command that should have written it ended"),
        "{}",
        r.reason
    );
    // Missing.
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "junit", "report": "none.xml", "argv": ["true"]})).await;
    assert_eq!(
        r.reason,
        "report none.xml is missing; the test command exited with status 0"
    );
    // Truncated, written by this run.
    std::fs::write(d.path().join("src.xml"), &fixture[..fixture.len() / 2]).unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "junit", "report": "cut.xml",
        "argv": ["cp", "src.xml", "cut.xml"]}),
    )
    .await;
    assert!(!r.passed());
    assert!(
        r.reason.starts_with("report cut.xml: truncated")
            || r.reason.starts_with("report cut.xml: not valid XML"),
        "{}",
        r.reason
    );
    // Whole and fresh: the failing test is named.
    std::fs::write(d.path().join("src.xml"), &fixture).unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "junit", "report": "fresh.xml",
        "argv": ["cp", "src.xml", "fresh.xml"]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(r.reason, "1 of 3 tests failed: rsdemo::tests::fails");
    assert!(r.feedback().contains("math is broken"));
}

fn write_crate(dir: &Path, lib: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"gatedemo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
}

#[tokio::test]
async fn real_cargo_test_passing_failing_empty_hanging() {
    let d = tempfile::tempdir().unwrap();
    let krate = d.path().join("demo");
    let target = d.path().join("target").to_string_lossy().into_owned();
    let gate = |extra: serde_json::Value| {
        let mut j = serde_json::json!({"kind": "tests", "format": "libtest", "argv": ["cargo", "test", "--quiet"],
            "env": {"CARGO_TARGET_DIR": target, "CARGO_TERM_COLOR": "never"}});
        j.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        j
    };
    write_crate(
        &krate,
        "pub fn add(a: i32, b: i32) -> i32 { a + b }\n#[cfg(test)] mod t {\n #[test] fn adds() { assert_eq!(super::add(2, 2), 4); }\n #[test] #[ignore] fn slow() {}\n}\n",
    );
    let r = check(&krate, gate(serde_json::json!({}))).await;
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.reason, "1 passed, 1 skipped");

    write_crate(
        &krate,
        "#[cfg(test)] mod t {\n #[test] fn ok() {}\n #[test] fn broken() { assert_eq!(1 + 1, 3, \"arithmetic is off\"); }\n}\n",
    );
    let r = check(&krate, gate(serde_json::json!({}))).await;
    assert!(!r.passed());
    assert_eq!(r.reason, "1 of 2 tests failed: t::broken");
    assert!(
        r.evidence.failures[0].message.contains("arithmetic is off"),
        "{:?}",
        r.evidence.failures
    );

    write_crate(&krate, "pub fn nothing() {}\n");
    let r = check(&krate, gate(serde_json::json!({}))).await;
    assert!(!r.passed());
    assert!(r.reason.starts_with("no tests ran"), "{}", r.reason);

    write_crate(
        &krate,
        "pub fn nothing() {}\n#[cfg(test)] mod t { #[test] fn hangs() { std::thread::sleep(std::time::Duration::from_secs(600)); } }\n",
    );
    // Build first so the timeout measures the test, not the compiler.
    let r = check(
        &krate,
        gate(serde_json::json!({"argv": ["cargo", "test", "--no-run", "--quiet"]})),
    )
    .await;
    assert!(!r.passed());
    let r = check(&krate, gate(serde_json::json!({"timeout_secs": 5}))).await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "test command timed out after 5s; it and every process it started were killed"
    );
}

#[tokio::test]
async fn real_cargo_nextest() {
    let probe = std::process::Command::new("cargo")
        .args(["nextest", "--version"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED real_cargo_nextest: cargo-nextest is not installed");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let krate = d.path().join("demo");
    write_crate(
        &krate,
        "#[cfg(test)] mod t {\n #[test] fn ok() {}\n #[test] fn broken() { panic!(\"nextest saw this\"); }\n}\n",
    );
    let target = d.path().join("target").to_string_lossy().into_owned();
    let r = check(&krate, serde_json::json!({"kind": "tests", "format": "nextest",
        "argv": ["cargo", "nextest", "run", "--no-fail-fast"], "env": {"CARGO_TARGET_DIR": target}})).await;
    assert!(!r.passed());
    assert_eq!(r.reason, "1 of 2 tests failed: gatedemo t::broken");
    assert!(
        r.evidence.failures[0].message.contains("nextest saw this"),
        "{:?}",
        r.evidence.failures
    );
}

#[tokio::test]
async fn real_pytest_and_coverage() {
    let Some(python) = std::env::var_os("ORCH_TEST_PYTHON") else {
        eprintln!(
            "SKIPPED real_pytest_and_coverage: set ORCH_TEST_PYTHON to a python with pytest and coverage (.ci/run does)"
        );
        return;
    };
    let python = python.to_string_lossy().into_owned();
    let d = tempfile::tempdir().unwrap();
    let demo = format!("{}/tests/fixtures/pydemo", env!("CARGO_MANIFEST_DIR"));
    for f in ["calc.py", "test_calc.py"] {
        std::fs::copy(format!("{demo}/{f}"), d.path().join(f)).unwrap();
    }
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "junit", "report": "junit.xml",
        "argv": [python, "-m", "coverage", "run", "--branch", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml=junit.xml"]})).await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "2 of 3 tests failed: test_calc::test_div_fails, test_calc::test_error"
    );
    let r = check(d.path(), serde_json::json!({"kind": "coverage", "format": "coverage_py_json", "report": "coverage.json",
        "min_line_percent": 80.0, "argv": [python, "-m", "coverage", "json", "-q", "-o", "coverage.json"]})).await;
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.reason, "line coverage 85.0%, branch coverage 50.0%");
    let r = check(d.path(), serde_json::json!({"kind": "coverage", "format": "lcov", "report": "coverage.lcov",
        "min_line_percent": 90.0, "argv": [python, "-m", "coverage", "lcov", "-q", "-o", "coverage.lcov"]})).await;
    assert!(!r.passed());
    assert_eq!(r.reason, "line coverage 85.0% (17/20 lines) is below 90%");
    // Passing: only the test that passes.
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "junit", "report": "pass.xml",
        "argv": [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_add", "--junitxml=pass.xml"]})).await;
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.reason, "1 passed, 0 skipped");
    // Hanging past the time limit.
    std::fs::write(
        d.path().join("test_slow.py"),
        "import time\n\ndef test_sleeps():\n    time.sleep(600)\n",
    )
    .unwrap();
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "junit", "report": "slow.xml", "timeout_secs": 3,
        "argv": [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_slow.py", "--junitxml=slow.xml"]})).await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "test command timed out after 3s; it and every process it started were killed"
    );
    // No tests collected.
    let empty = tempfile::tempdir().unwrap();
    let r = check(
        empty.path(),
        serde_json::json!({"kind": "tests", "format": "junit", "report": "j.xml",
        "argv": [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml=j.xml"]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(r.reason, "no tests ran (0 skipped); at least 1 must run");
}

#[tokio::test]
async fn coverage_reports_must_be_fresh() {
    let d = tempfile::tempdir().unwrap();
    let lcov = std::fs::read(format!(
        "{}/tests/fixtures/coverage_py.lcov",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    // The source files the report names, from before the report.
    for l in String::from_utf8_lossy(&lcov).lines() {
        if let Some(f) = l.strip_prefix("SF:") {
            let src = d.path().join(f);
            std::fs::create_dir_all(src.parent().unwrap()).unwrap();
            std::fs::write(&src, "# source\n").unwrap();
            set_mtime(&src, SystemTime::now() - Duration::from_secs(120));
        }
    }
    let p = d.path().join("lcov.info");
    std::fs::write(&p, &lcov).unwrap();
    set_mtime(&p, SystemTime::now() - Duration::from_secs(60));
    let r = check(d.path(), serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info", "min_line_percent": 10.0})).await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "report lcov.info is stale: it was written before this check began"
    );
    std::fs::write(&p, &lcov).unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info",
        "min_line_percent": 80.0, "min_branch_percent": 60.0}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "branch coverage 50.0% (1/2 branches) is below 60%"
    );
    // Read as it is (no command): the code changed after the report was
    // made, so it describes code that is no longer there.
    std::fs::write(&p, &lcov).unwrap();
    let src = d.path().join("calc.py");
    std::fs::write(&src, "def add(a, b):\n    return a + b\n").unwrap();
    set_mtime(&src, SystemTime::now() + Duration::from_millis(1500));
    let r = check(d.path(), serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info", "min_line_percent": 10.0})).await;
    assert!(!r.passed());
    assert!(
        r.reason
            .starts_with("report lcov.info is older than the code it describes: calc.py changed"),
        "{}",
        r.reason
    );
    std::fs::write(&src, "def add(a, b):\n    return a + b\n").unwrap();
    set_mtime(&src, SystemTime::now() - Duration::from_secs(120));
    // Figures that cannot be true.
    let text = String::from_utf8_lossy(&lcov).into_owned();
    let lf = text
        .lines()
        .find(|l| l.starts_with("LF:"))
        .unwrap()
        .to_owned();
    let lh = text
        .lines()
        .find(|l| l.starts_with("LH:"))
        .unwrap()
        .to_owned();
    let tricks = [
        (
            text.replacen(&lh, "LH:999", 1),
            "declares LH:999, but its lines show",
        ),
        (
            text.replacen(&lf, "LF:1", 1),
            "declares LF:1, but its lines show",
        ),
        (
            text.replacen("SF:", "SF:elsewhere/", 1),
            "which is not a file of the work tree",
        ),
        (
            text[..text.rfind("end_of_record").unwrap()].to_owned(),
            "ends in the middle of a record",
        ),
    ];
    for (report, why) in tricks {
        std::fs::write(&p, report).unwrap();
        let r = check(d.path(), serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info", "min_line_percent": 1.0})).await;
        assert!(!r.passed());
        assert!(r.reason.contains(why), "{why}: {}", r.reason);
    }
    std::fs::write(&p, b"\x00\x9f garbage").unwrap();
    let r = check(d.path(), serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info", "min_line_percent": 1.0})).await;
    assert!(!r.passed());
    assert!(
        r.reason.starts_with("report lcov.info is unreadable"),
        "{}",
        r.reason
    );
}

#[tokio::test]
async fn forbidden_patterns_respect_gitignore_and_cap_hits() {
    let d = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(".gitignore", "ignored/\n");
    w("ignored/keys.txt", "AKIAABCDEFGHIJKLMNOP\n");
    w(
        "src/config.py",
        "region = 'eu'\naws_key = 'AKIAABCDEFGHIJKLMNOP'\n",
    );
    w(
        "src/deploy.pem",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n",
    );
    w(
        "logs/app.log",
        "user alice@example.com paid with 4111 1111 1111 1111\norder 1234 5678 9012 3456 shipped\n",
    );
    w(
        "src/main.rs",
        "fn main() {\n    log::info!(\"démarrage du service\");\n    println!(\"plain ascii\");\n}\n",
    );
    w("bin/blob", "AKIAABCDEFGHIJKLMNOP\u{0}\u{0}binary");
    let r = check(d.path(), serde_json::json!({"kind": "forbidden_patterns", "builtin": ["secrets", "pii", "non_ascii_logs"]})).await;
    assert!(!r.passed());
    let mut hits: Vec<String> = r
        .evidence
        .hits
        .iter()
        .map(|h| format!("{}:{} {}", h.file, h.line, h.rule))
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            "bin/blob:1 AWS access key id",
            "logs/app.log:1 e-mail address",
            "logs/app.log:1 payment card number",
            "src/config.py:2 AWS access key id",
            "src/deploy.pem:1 private key",
            "src/main.rs:2 non-ASCII in a log message",
        ],
        "ignored files and a non-Luhn number are not hits; binary files are scanned"
    );
    let r = check(d.path(), serde_json::json!({"kind": "forbidden_patterns", "builtin": ["secrets", "pii", "non_ascii_logs"], "max_hits": 2})).await;
    assert_eq!(r.evidence.hits.len(), 2);
    assert!(
        r.reason
            .starts_with("6 forbidden pattern hit(s), first 2 listed: "),
        "{}",
        r.reason
    );
    let r = check(
        d.path(),
        serde_json::json!({"kind": "forbidden_patterns", "include": ["src/*.rs"],
        "patterns": [{"name": "todo", "regex": "TODO"}]}),
    )
    .await;
    assert!(r.passed(), "{r:?}");
    let bad = orch_gates::from_spec(&spec(
        serde_json::json!({"kind": "forbidden_patterns", "patterns": [{"name": "x", "regex": "("}]}),
    ));
    assert_eq!(bad.err().unwrap().kind, orch_core::GateErrorKind::Config);
}

#[tokio::test]
async fn files_word_counts_sections_and_metrics() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("docs/adr")).unwrap();
    let body = "word ".repeat(380);
    std::fs::write(d.path().join("docs/adr/ADR-001.md"), format!("# Context\n{body}\n## Decision\nKeep p99 latency under 100 ms.\n```\nignored code words here\n```\n")).unwrap();
    let adr = serde_json::json!({"kind": "files", "paths": ["docs/adr/ADR-*.md"], "min_words": 350, "max_words": 450,
        "contains": ["latency"], "sections": ["Context", "Decision"]});
    let r = check(d.path(), adr.clone()).await;
    assert!(r.passed(), "{r:?}");
    assert_eq!(
        r.evidence.measured,
        Some(388.0),
        "Context + 380 + Decision + 6 words; '#' and the code fence do not count"
    );
    let mut short = adr.clone();
    short["min_words"] = 400.into();
    short["sections"] = serde_json::json!(["Consequences"]);
    let r = check(d.path(), short).await;
    assert_eq!(
        r.reason,
        "docs/adr/ADR-001.md has 388 words; at least 400 are required; docs/adr/ADR-001.md has no \"Consequences\" heading"
    );
    let r = check(
        d.path(),
        serde_json::json!({"kind": "files", "paths": ["docs/plan/T-1.md", "src/**/*.rs"]}),
    )
    .await;
    assert_eq!(
        r.reason,
        "no file matches docs/plan/T-1.md; no file matches src/**/*.rs"
    );
    std::fs::write(d.path().join("empty.md"), "").unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "files", "paths": ["empty.md"]}),
    )
    .await;
    assert_eq!(r.reason, "empty.md is empty");
    let outside = orch_gates::from_spec(&spec(
        serde_json::json!({"kind": "files", "paths": ["../../etc/passwd"]}),
    ))
    .unwrap();
    assert!(
        outside.check(&ctx(d.path())).await.is_err(),
        "paths may not leave the work tree"
    );

    std::fs::create_dir_all(d.path().join("target")).unwrap();
    std::fs::write(
        d.path().join("target/perf.json"),
        r#"{"p50_ms": 12.5, "p99_ms": 87.0}"#,
    )
    .unwrap();
    let p99 = |max: f64| serde_json::json!({"kind": "metric", "file": "target/perf.json", "pointer": "/p99_ms", "max": max});
    let r = check(d.path(), p99(100.0)).await;
    assert!(r.passed());
    assert_eq!(r.reason, "target/perf.json/p99_ms = 87, at most 100");
    let r = check(d.path(), p99(50.0)).await;
    assert_eq!(
        r.reason,
        "target/perf.json/p99_ms = 87, above the maximum 50"
    );
    let r = check(d.path(), serde_json::json!({"kind": "metric", "file": "target/perf.json", "pointer": "/p999_ms", "max": 1.0})).await;
    assert_eq!(r.reason, "target/perf.json has no value at /p999_ms");
    let mut c = ctx(d.path());
    c.since = SystemTime::now() + Duration::from_secs(5);
    let r = orch_gates::from_spec(&spec(p99(100.0)))
        .unwrap()
        .check(&c)
        .await
        .unwrap();
    assert_eq!(
        r.reason,
        "report target/perf.json is stale: it was written before this check began"
    );
}

#[tokio::test]
async fn groups_run_concurrently_and_combine() {
    let d = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "all", "gates": [
        {"kind": "command", "name": "a", "argv": ["sleep", "1"]},
        {"kind": "command", "name": "b", "argv": ["sleep", "1"]},
        {"kind": "command", "name": "c", "argv": ["false"]}]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(r.reason, "1 of 3 gates failed: c");
    assert_eq!(r.children.len(), 3);
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "two 1 s gates ran side by side"
    );
    assert!(r.feedback().contains("Gate `c` failed"));
    let r = check(
        d.path(),
        serde_json::json!({"kind": "any", "gates": [
        {"kind": "command", "name": "no", "argv": ["false"]},
        {"kind": "command", "name": "yes", "argv": ["true"]}]}),
    )
    .await;
    assert!(r.passed());
    assert_eq!(r.reason, "1 of 2 gates passed");
}

/// Every path a gate reads (a report, a metric file, its working
/// directory) must lead inside the work tree, links followed: an agent
/// that replaces one by a link out of the tree (to a report it did not
/// earn, or to a file of the machine's) fails the gate, and the reason
/// says so. Paths that are absolute or climb out are the spec's fault.
#[tokio::test]
async fn paths_that_lead_out_of_the_work_tree_fail_the_gate() {
    let outside = tempfile::tempdir().unwrap();
    let fixture = std::fs::read(format!(
        "{}/tests/fixtures/nextest_junit.xml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    std::fs::write(outside.path().join("junit.xml"), &fixture).unwrap();
    std::fs::write(outside.path().join("m.json"), r#"{"p99_ms": 1}"#).unwrap();
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("reports")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("m.json"), d.path().join("m.json")).unwrap();
    let cases = [
        serde_json::json!({"kind": "tests", "format": "junit", "report": "reports/junit.xml", "argv": ["touch", "reports/junit.xml"]}),
        serde_json::json!({"kind": "command", "argv": ["true"], "cwd": "reports"}),
        serde_json::json!({"kind": "metric", "file": "m.json", "pointer": "/p99_ms", "max": 100.0}),
    ];
    for case in cases {
        let gate = orch_gates::from_spec(&spec(case.clone())).unwrap();
        let e = gate.check(&ctx(d.path())).await.unwrap_err();
        assert_eq!(e.kind, orch_core::GateErrorKind::Io, "{case}: {e}");
        assert!(
            e.message
                .contains("leads outside the work tree through a symbolic link"),
            "{case}: {e}"
        );
        assert!(e.is_retryable(), "the agent can undo it: {e}");
    }
    for bad in ["/etc/passwd", "../x.xml", "a/../../x.xml"] {
        let case = serde_json::json!({"kind": "tests", "format": "junit", "report": bad, "argv": ["true"]});
        let e = orch_gates::from_spec(&spec(case))
            .unwrap()
            .check(&ctx(d.path()))
            .await
            .unwrap_err();
        assert_eq!(e.kind, orch_core::GateErrorKind::Config, "{bad}: {e}");
    }
}

/// A gate's command that leaves a daemon behind (`setsid`, holding the
/// command's stdout, so waiting for end of output would wait for it)
/// fails, promptly, and the daemon is dead when the verdict is in.
#[tokio::test]
async fn a_setsid_daemon_of_a_gate_command_fails_it_and_does_not_delay_it() {
    let d = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "command", "argv": ["sh", "-c",
            "setsid sh -c 'echo $$ > daemon.pid; exec sleep 300' & while [ ! -s daemon.pid ]; do sleep 0.01; done; echo ok"]}),
    )
    .await;
    let took = started.elapsed();
    assert!(!r.passed(), "{r:?}");
    assert!(r.reason.contains("left processes running"), "{}", r.reason);
    assert!(took < Duration::from_secs(3), "the verdict waited {took:?}");
    let pid = read_pid(&d.path().join("daemon.pid"));
    assert!(!alive(pid), "the daemon outlived the gate");
}

/// `min_tests = 0` is refused unless `allow_no_tests` says it is meant;
/// `max_skipped` bounds what may be skipped; a file of whitespace is not
/// "non-empty".
#[tokio::test]
async fn no_tests_skipped_tests_and_whitespace_files_are_not_work() {
    let d = tempfile::tempdir().unwrap();
    let none = "printf 'running 0 tests\\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'";
    let e = orch_gates::from_spec(&spec(serde_json::json!(
        {"kind": "tests", "format": "libtest", "min_tests": 0, "argv": ["sh", "-c", none]})))
    .err()
    .expect("refused");
    assert_eq!(e.kind, orch_core::GateErrorKind::Config);
    assert!(e.message.contains("set allow_no_tests = true"), "{e}");
    let r = check(d.path(), serde_json::json!(
        {"kind": "tests", "format": "libtest", "min_tests": 0, "allow_no_tests": true, "argv": ["sh", "-c", none]})).await;
    assert!(r.passed(), "{}", r.reason);
    let skipping = "printf 'running 5 tests\\ntest result: ok. 1 passed; 0 failed; 4 ignored; 0 measured; 0 filtered out\\n'";
    let r = check(
        d.path(),
        serde_json::json!(
        {"kind": "tests", "format": "libtest", "max_skipped": 2, "argv": ["sh", "-c", skipping]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(r.reason, "4 tests were skipped; at most 2 may be");
    std::fs::write(d.path().join("plan.md"), " \n\t\n").unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "files", "paths": ["plan.md"], "non_empty": true}),
    )
    .await;
    assert!(!r.passed());
    assert!(
        r.reason.contains("plan.md is empty (only whitespace)"),
        "{}",
        r.reason
    );
}

/// A report larger than a gate reads (a sparse 1 GiB file costs nothing
/// on disk) is refused before it is read, whatever kind of gate reads it.
#[tokio::test]
async fn huge_reports_are_refused_before_they_are_read() {
    let d = tempfile::tempdir().unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "junit", "report": "r.xml",
        "argv": ["truncate", "-s", "1G", "r.xml"]}),
    )
    .await;
    assert!(!r.passed());
    assert!(
        r.reason
            .starts_with("report r.xml is larger than 67108864 bytes"),
        "{}",
        r.reason
    );
    let r = check(
        d.path(),
        serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info",
        "argv": ["truncate", "-s", "1G", "lcov.info"], "min_line_percent": 1.0}),
    )
    .await;
    assert!(!r.passed());
    assert!(
        r.reason.starts_with("report lcov.info is larger than"),
        "{}",
        r.reason
    );
    std::fs::File::create(d.path().join("perf.json"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let r = check(d.path(), serde_json::json!({"kind": "metric", "file": "perf.json", "pointer": "/p99_ms", "max": 100.0})).await;
    assert!(!r.passed());
    assert!(
        r.reason.starts_with("report perf.json is larger than"),
        "{}",
        r.reason
    );
}

/// A heading inside a code fence is quoted, not a section of the
/// document; nor is `#hashtag` a heading.
#[tokio::test]
async fn headings_in_code_fences_are_not_sections() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("ADR.md"),
        "# Context\nwords\n```md\n## Decision\n```\n~~~\n## Consequences\n~~~\n#Alternatives\n",
    )
    .unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "files", "paths": ["ADR.md"],
        "sections": ["Context", "Decision", "Consequences", "Alternatives"]}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "ADR.md has no \"Decision\" heading; ADR.md has no \"Consequences\" heading; ADR.md has no \"Alternatives\" heading"
    );
}

/// The secret scan sees exactly what git would commit: tracked files
/// (force-added ones included) and untracked ones the repository's own
/// `.gitignore` does not ignore. `.ignore` and `.rgignore` files hide
/// nothing; binary and UTF-16 files are scanned; a file too large to scan
/// fails the gate instead of being skipped; a link is not followed (what
/// git commits is its target's name).
#[tokio::test]
async fn the_secret_scan_sees_what_git_would_commit() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(root)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    let w = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    let key = "AKIAABCDEFGHIJKLMNOP";
    w(".gitignore", b"build/\nforced.txt\n");
    w(".ignore", b"hidden-from-rg.txt\n");
    w(".rgignore", b"also-hidden.txt\n");
    w("hidden-from-rg.txt", format!("k = {key}\n").as_bytes());
    w("also-hidden.txt", format!("k = {key}\n").as_bytes());
    w("build/out.txt", format!("k = {key}\n").as_bytes()); // ignored: not committed
    w("forced.txt", format!("k = {key}\n").as_bytes());
    git(&["add", "-f", "forced.txt"]);
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(
            format!("k = {key}\n")
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    w("notes-utf16.txt", &utf16);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), format!("{key}\n")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.join("link")).unwrap();
    let r = check(
        root,
        serde_json::json!({"kind": "forbidden_patterns", "builtin": ["secrets"]}),
    )
    .await;
    let mut files: Vec<&str> = r.evidence.hits.iter().map(|h| h.file.as_str()).collect();
    files.sort_unstable();
    assert_eq!(
        files,
        [
            "also-hidden.txt",
            "forced.txt",
            "hidden-from-rg.txt",
            "notes-utf16.txt"
        ],
        "{}",
        r.reason
    );
    // Too large to scan: the gate fails, it does not skip the file.
    std::fs::File::create(root.join("huge.bin"))
        .unwrap()
        .set_len(orch_gates::MAX_FILE_BYTES + 1)
        .unwrap();
    for f in [
        "also-hidden.txt",
        "forced.txt",
        "hidden-from-rg.txt",
        "notes-utf16.txt",
    ] {
        std::fs::write(root.join(f), "clean\n").unwrap();
    }
    let r = check(
        root,
        serde_json::json!({"kind": "forbidden_patterns", "builtin": ["secrets"]}),
    )
    .await;
    assert!(!r.passed());
    assert!(
        r.reason
            .contains("could not be scanned: huge.bin is larger than"),
        "{}",
        r.reason
    );
}
