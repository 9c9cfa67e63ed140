//! Gates against real processes, real cargo and (when available) real
//! pytest: what each gate reports. The tricks that must never pass are in
//! the adversarial suite (`tests/adversarial/`).

use std::time::{Duration, SystemTime};

use orch_core::Cancellation;

mod support;
use support::*;

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
    assert!(!alive(child), "the background child {child} must be gone");
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
#[ignore = "needs cargo-nextest (.ci/run installs it)"]
async fn real_cargo_nextest() {
    let probe = std::process::Command::new("cargo")
        .args(["nextest", "--version"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "real_cargo_nextest needs cargo-nextest (`cargo install cargo-nextest`)"
    );
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
#[ignore = "needs pytest and coverage.py: ORCH_TEST_PYTHON (.ci/run makes a venv)"]
async fn real_pytest_and_coverage() {
    let python = std::env::var("ORCH_TEST_PYTHON").expect(
        "real_pytest_and_coverage needs ORCH_TEST_PYTHON, a python with pytest and coverage",
    );
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
    // Between letters of other scripts (no spaces in Japanese text).
    w(
        "docs/contact.md",
        "連絡先はmarie@example.comです\n社会保障番号123-45-6789。\n",
    );
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
            "docs/contact.md:1 e-mail address",
            "docs/contact.md:2 US social security number",
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
            .starts_with("8 forbidden pattern hit(s), first 2 listed: "),
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
    let ago = stale_by(&r.reason, "target/perf.json");
    assert!((4.0..=5.0).contains(&ago), "{}", r.reason);
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

/// A fresh, whole JUnit report written by the gate's command: the failing
/// test is named, with its message for the agent. (Tricks with reports
/// are in the adversarial suite.)
#[tokio::test]
async fn a_fresh_junit_report_names_the_failing_test() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "src.xml", fixture("nextest_junit.xml"));
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

/// Report paths that are absolute or climb out of the work tree are the
/// plan's fault: a config error, not a failing report.
#[tokio::test]
async fn report_paths_outside_the_work_tree_are_config_errors() {
    let d = tempfile::tempdir().unwrap();
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

/// `allow_no_tests = true` with `min_tests = 0`: a run of no tests passes,
/// as the plan says it may.
#[tokio::test]
async fn no_tests_pass_when_the_plan_allows_it() {
    let d = tempfile::tempdir().unwrap();
    let none = "printf 'running 0 tests\\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'";
    let r = check(d.path(), serde_json::json!(
        {"kind": "tests", "format": "libtest", "min_tests": 0, "allow_no_tests": true, "argv": ["sh", "-c", none]})).await;
    assert!(r.passed(), "{}", r.reason);
}

/// The secret scan does not follow a link out of the work tree: git
/// commits the link's target name, not the file it points to. Real
/// output passes where nothing is committed.
#[tokio::test]
async fn the_secret_scan_does_not_follow_links() {
    let d = tempfile::tempdir().unwrap();
    git(d.path(), &["init", "-q"]);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "AKIAABCDEFGHIJKLMNOP\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), d.path().join("link")).unwrap();
    let r = check(
        d.path(),
        serde_json::json!({"kind": "forbidden_patterns", "builtin": ["secrets"]}),
    )
    .await;
    assert!(r.passed(), "{}", r.reason);
    assert_eq!(r.reason, "no forbidden patterns in 1 files");
}

/// Coverage below a branch threshold fails, naming both figures.
#[tokio::test]
async fn branch_coverage_below_the_threshold() {
    let d = tempfile::tempdir().unwrap();
    let lcov = fixture("coverage_py.lcov");
    for l in lcov.lines() {
        if let Some(f) = l.strip_prefix("SF:") {
            write(d.path(), f, "# source\n");
        }
    }
    write(d.path(), "made.lcov", &lcov);
    let r = check(
        d.path(),
        serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info",
        "argv": ["cp", "made.lcov", "lcov.info"], "min_line_percent": 80.0, "min_branch_percent": 60.0}),
    )
    .await;
    assert!(!r.passed());
    assert_eq!(
        r.reason,
        "branch coverage 50.0% (1/2 branches) is below 60%"
    );
}

/// A gate's command starts from a clean environment: PATH and HOME pass,
/// a variable of the test process that is not in the base set does not
/// (cargo sets `CARGO_PKG_NAME` for tests), unless the spec names it.
#[tokio::test]
async fn gate_commands_get_a_clean_environment() {
    assert!(
        std::env::var_os("CARGO_PKG_NAME").is_some(),
        "cargo runs the tests"
    );
    let d = tempfile::tempdir().unwrap();
    let dump = |file: &str, allow: serde_json::Value| {
        serde_json::json!({"kind": "command", "argv": ["sh", "-c", format!("env > {file}")],
            "env": {"MINE": "set-by-the-plan"}, "env_allow": allow})
    };
    assert!(
        check(d.path(), dump("plain.txt", serde_json::json!([])))
            .await
            .passed()
    );
    let plain = std::fs::read_to_string(d.path().join("plain.txt")).unwrap();
    assert!(
        plain.contains("PATH=") && plain.contains("MINE=set-by-the-plan"),
        "{plain}"
    );
    assert!(!plain.contains("CARGO_PKG_NAME="), "{plain}");
    assert!(
        check(
            d.path(),
            dump("allowed.txt", serde_json::json!(["CARGO_PKG_*"]))
        )
        .await
        .passed()
    );
    let allowed = std::fs::read_to_string(d.path().join("allowed.txt")).unwrap();
    assert!(allowed.contains("CARGO_PKG_NAME=orch-gates"), "{allowed}");
}
