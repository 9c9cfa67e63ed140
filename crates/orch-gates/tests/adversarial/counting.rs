//! Test counts that claim more than really ran.

use crate::support::*;

const OK3: &str = "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out";

fn libtest(script: &str) -> serde_json::Value {
    serde_json::json!({"kind": "tests", "format": "libtest", "argv": ["sh", "-c", script]})
}

/// The output says all passed; the exit status says otherwise.
#[tokio::test]
async fn a_passing_summary_from_a_command_that_failed() {
    let d = tempfile::tempdir().unwrap();
    let script = format!("printf 'running 3 tests\\n...\\n{OK3}\\n'; exit 1");
    fails(
        d.path(),
        libtest(&script),
        "the results show no failures, but the test command exited with status 1",
    )
    .await;
}

/// No summary at all, exit status 0.
#[tokio::test]
async fn no_test_output_at_all() {
    let d = tempfile::tempdir().unwrap();
    fails(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "libtest", "argv": ["echo", "all good!"]}),
        "no `test result:` line in the output",
    )
    .await;
}

/// A program prints a summary of its own after a real block of one test.
#[tokio::test]
async fn a_raw_summary_line_printed_after_a_real_block() {
    let d = tempfile::tempdir().unwrap();
    let script = "printf 'running 1 test\\ntest a ... ok\\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\ntest result: ok. 99 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'";
    fails(
        d.path(),
        libtest(script),
        "a `test result:` line with no `running N tests` before it",
    )
    .await;
}

/// A summary that claims more tests than its block announced.
#[tokio::test]
async fn a_summary_claiming_more_than_its_block_ran() {
    let d = tempfile::tempdir().unwrap();
    let script = "printf 'running 2 tests\\ntest result: ok. 50 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'";
    fails(
        d.path(),
        libtest(script),
        "the result counts 50 tests, but the block announced 2",
    )
    .await;
}

/// Per-test lines that do not add up to the summary.
#[tokio::test]
async fn per_test_lines_that_do_not_add_up() {
    let d = tempfile::tempdir().unwrap();
    let script = format!("printf 'running 3 tests\\ntest a ... ok\\ntest b ... ok\\n{OK3}\\n'");
    fails(
        d.path(),
        libtest(&script),
        "the block announced 3 and listed 2",
    )
    .await;
}

/// A real crate whose test calls `exit(0)` while others are running:
/// cargo exits 0, the block has no result line.
#[tokio::test]
async fn a_real_test_that_exits_the_binary_with_status_zero() {
    let d = tempfile::tempdir().unwrap();
    let krate = d.path().join("demo");
    write_crate(
        &krate,
        "#[cfg(test)] mod t {\n #[test] fn fails() { std::thread::sleep(std::time::Duration::from_millis(500)); panic!(\"never seen\"); }\n #[test] fn exits() { std::process::exit(0); }\n}\n",
    );
    let target = d.path().join("target").to_string_lossy().into_owned();
    fails(
        &krate,
        serde_json::json!({"kind": "tests", "format": "libtest", "argv": ["cargo", "test", "--quiet"],
            "env": {"CARGO_TARGET_DIR": target, "CARGO_TERM_COLOR": "never"}}),
        "`running 2 tests` has no `test result:` line",
    )
    .await;
}

/// No tests at all.
#[tokio::test]
async fn zero_tests() {
    let d = tempfile::tempdir().unwrap();
    let script = "printf 'running 0 tests\\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\\n'";
    fails(
        d.path(),
        libtest(script),
        "no tests ran (0 skipped); at least 1 must run",
    )
    .await;
}

/// Every test but one marked ignored.
#[tokio::test]
async fn all_but_one_test_ignored() {
    let d = tempfile::tempdir().unwrap();
    let script = "printf 'running 6 tests\\ntest result: ok. 1 passed; 0 failed; 5 ignored; 0 measured; 0 filtered out\\n'";
    let mut gate = libtest(script);
    gate["min_tests"] = 2.into();
    fails(d.path(), gate, "only 1 tests ran; at least 2 must run").await;
}

/// More skipped than the plan allows.
#[tokio::test]
async fn more_skipped_than_allowed() {
    let d = tempfile::tempdir().unwrap();
    let script = "printf 'running 5 tests\\ntest result: ok. 1 passed; 0 failed; 4 ignored; 0 measured; 0 filtered out\\n'";
    let mut gate = libtest(script);
    gate["max_skipped"] = 2.into();
    fails(d.path(), gate, "4 tests were skipped; at most 2 may be").await;
}

/// `min_tests = 0` slipped into a plan: refused unless `allow_no_tests`
/// says it is meant.
#[tokio::test]
async fn min_tests_zero_without_saying_so() {
    let gate =
        serde_json::json!({"kind": "tests", "format": "libtest", "min_tests": 0, "argv": ["true"]});
    let e = orch_gates::from_spec(&spec(gate)).err().expect("refused");
    assert_eq!(e.kind, orch_core::GateErrorKind::Config);
    assert!(e.message.contains("set allow_no_tests = true"), "{e}");
}

fn junit_from(d: &std::path::Path, text: &str) -> serde_json::Value {
    write(d, "src.xml", text);
    serde_json::json!({"kind": "tests", "format": "junit", "report": "r.xml", "argv": ["cp", "src.xml", "r.xml"]})
}

/// A real nextest JUnit report edited to declare more tests.
#[tokio::test]
async fn junit_totals_raised_above_the_test_cases() {
    let d = tempfile::tempdir().unwrap();
    let edited = fixture("nextest_junit.xml").replacen(
        r#"name="rsdemo" tests="3""#,
        r#"name="rsdemo" tests="30""#,
        1,
    );
    fails(
        d.path(),
        junit_from(d.path(), &edited),
        "suite \"rsdemo\" declares 30 tests but its test cases hold 3",
    )
    .await;
}

/// A real pytest JUnit report with the failing case removed and the
/// totals left as they were.
#[tokio::test]
async fn junit_failing_case_removed() {
    let d = tempfile::tempdir().unwrap();
    let real = fixture("pytest_junit.xml");
    let start = real.find("<testcase").unwrap();
    let failing = real[start..].find("<failure").map(|i| start + i).unwrap();
    let case_start = real[..failing].rfind("<testcase").unwrap();
    let case_end = failing + real[failing..].find("</testcase>").unwrap() + "</testcase>".len();
    let edited = format!("{}{}", &real[..case_start], &real[case_end..]);
    fails(
        d.path(),
        junit_from(d.path(), &edited),
        "but its test cases hold",
    )
    .await;
}

/// A real JUnit report cut off half-way.
#[tokio::test]
async fn junit_report_cut_off() {
    let d = tempfile::tempdir().unwrap();
    let real = fixture("nextest_junit.xml");
    let r = check(d.path(), junit_from(d.path(), &real[..real.len() / 2])).await;
    assert!(!r.passed());
    assert!(
        r.reason.starts_with("report r.xml: truncated")
            || r.reason.starts_with("report r.xml: not valid XML at byte "),
        "{}",
        r.reason
    );
}

/// Random bytes where the report should be.
#[tokio::test]
async fn junit_report_of_garbage() {
    let d = tempfile::tempdir().unwrap();
    let garbage: Vec<u8> = (0..2000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(d.path(), "src.xml", garbage);
    let r = check(d.path(), serde_json::json!({"kind": "tests", "format": "junit", "report": "r.xml", "argv": ["cp", "src.xml", "r.xml"]})).await;
    assert!(!r.passed());
    assert!(r.reason.starts_with("report r.xml: "), "{}", r.reason);
}

fn nextest_printing(text: &str, d: &std::path::Path) -> serde_json::Value {
    write(d, "out.txt", text);
    serde_json::json!({"kind": "tests", "format": "nextest", "argv": ["cat", "out.txt"]})
}

/// Real nextest output whose summary was edited to claim 30 passes.
#[tokio::test]
async fn nextest_summary_that_does_not_add_up() {
    let d = tempfile::tempdir().unwrap();
    let lying = fixture("nextest_human.txt").replace(
        "3 tests run: 2 passed, 1 failed, 1 skipped",
        "3 tests run: 30 passed, 1 skipped",
    );
    fails(
        d.path(),
        nextest_printing(&lying, d.path()),
        "says 3 tests ran, but counts 30 passed and 0 failed",
    )
    .await;
}

/// A nextest run cancelled after its first failure (`--fail-fast`): it
/// fails, naming the failing test, and says the run stopped.
#[tokio::test]
async fn nextest_run_cancelled_after_a_failure() {
    let d = tempfile::tempdir().unwrap();
    let cancelled = fixture("nextest_human.txt").replace(
        "3 tests run: 2 passed, 1 failed, 1 skipped",
        "2/3 tests run: 1 passed, 1 failed, 1 skipped",
    );
    let r = fails(
        d.path(),
        nextest_printing(&cancelled, d.path()),
        "rsdemo tests::fails",
    )
    .await;
    assert!(r.reason.contains("2 of 3"), "{}", r.reason);
}
