//! Reports the gate's own command did not write during this check.

use std::time::{Duration, SystemTime};

use crate::support::*;

fn junit_gate(report: &str, argv: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"kind": "tests", "format": "junit", "report": report, "argv": argv})
}

/// A passing report left from an earlier run, and a command that writes
/// nothing: the old report is removed before the command runs.
#[tokio::test]
async fn a_report_left_from_an_earlier_run() {
    let d = tempfile::tempdir().unwrap();
    let old = d.path().join("old.xml");
    write(d.path(), "old.xml", fixture("pytest_junit.xml"));
    set_mtime(&old, SystemTime::now() - Duration::from_secs(3600));
    fails(
        d.path(),
        junit_gate("old.xml", serde_json::json!(["true"])),
        "report old.xml is missing",
    )
    .await;
    assert!(!old.exists(), "removed before the command ran");
}

/// The same, dated an hour ahead so that it looks fresher than the check.
#[tokio::test]
async fn a_report_planted_with_a_date_in_the_future() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "r.xml", fixture("nextest_junit.xml"));
    set_mtime(
        &d.path().join("r.xml"),
        SystemTime::now() + Duration::from_secs(3600),
    );
    fails(
        d.path(),
        junit_gate("r.xml", serde_json::json!(["true"])),
        "report r.xml is missing",
    )
    .await;
}

/// The command copies in a report and dates it into the future.
#[tokio::test]
async fn a_report_the_command_dates_into_the_future() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "src.xml", fixture("nextest_junit.xml"));
    fails(
        d.path(),
        junit_gate("r.xml", serde_json::json!(["sh", "-c", "cp src.xml r.xml && touch -d '+1 hour' r.xml"])),
        "after the command that should have written it ended (written later, or dated into the future)",
    )
    .await;
}

/// A coverage gate with a command that writes nothing, and a passing
/// report from before: removed first, so missing.
#[tokio::test]
async fn a_coverage_report_left_for_a_command_that_writes_none() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "lcov.info",
        "SF:a.py\nDA:1,1\nLF:1\nLH:1\nend_of_record\n",
    );
    write(d.path(), "a.py", "x = 1\n");
    fails(
        d.path(),
        serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info",
            "argv": ["true"], "min_line_percent": 90.0}),
        "report lcov.info is missing",
    )
    .await;
}

/// A coverage report read as it is, written before the phase began: the
/// message says how long before, and before what.
#[tokio::test]
async fn a_coverage_report_from_before_the_phase() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.py", "x = 1\n");
    set_mtime(
        &d.path().join("a.py"),
        SystemTime::now() - Duration::from_secs(120),
    );
    write(
        d.path(),
        "lcov.info",
        "SF:a.py\nDA:1,1\nLF:1\nLH:1\nend_of_record\n",
    );
    set_mtime(
        &d.path().join("lcov.info"),
        SystemTime::now() - Duration::from_secs(60),
    );
    let r = fails(
        d.path(),
        serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info", "min_line_percent": 90.0}),
        "is stale",
    )
    .await;
    let ago = stale_by(&r.reason, "lcov.info");
    assert!((50.0..=60.5).contains(&ago), "{}", r.reason);
}

/// A coverage report made, then the code changed: it describes code that
/// is no longer there.
#[tokio::test]
async fn a_coverage_report_older_than_the_code() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "lcov.info",
        "SF:a.py\nDA:1,1\nLF:1\nLH:1\nend_of_record\n",
    );
    write(d.path(), "a.py", "x = 1\ny = 2\n");
    set_mtime(
        &d.path().join("a.py"),
        SystemTime::now() + Duration::from_millis(1500),
    );
    fails(
        d.path(),
        serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info", "min_line_percent": 90.0}),
        "report lcov.info is older than the code it describes: a.py changed",
    )
    .await;
}

/// A metric file from an earlier benchmark run.
#[tokio::test]
async fn a_metric_file_from_before_the_phase() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "perf.json", r#"{"p99_ms": 3}"#);
    set_mtime(
        &d.path().join("perf.json"),
        SystemTime::now() - Duration::from_secs(30),
    );
    let r = fails(
        d.path(),
        serde_json::json!({"kind": "metric", "file": "perf.json", "pointer": "/p99_ms", "max": 100.0}),
        "is stale",
    )
    .await;
    let ago = stale_by(&r.reason, "perf.json");
    assert!((20.0..=30.5).contains(&ago), "{}", r.reason);
}
