//! Files too large to read, and paths that lead out of the work tree.

use crate::support::*;

/// A sparse 1 GiB JUnit report (it costs nothing on disk).
#[tokio::test]
async fn a_huge_junit_report() {
    let d = tempfile::tempdir().unwrap();
    fails(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "junit", "report": "r.xml", "argv": ["truncate", "-s", "1G", "r.xml"]}),
        "report r.xml is larger than 67108864 bytes",
    )
    .await;
}

/// A sparse 1 GiB coverage report.
#[tokio::test]
async fn a_huge_coverage_report() {
    let d = tempfile::tempdir().unwrap();
    fails(
        d.path(),
        serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info",
            "argv": ["truncate", "-s", "1G", "lcov.info"], "min_line_percent": 1.0}),
        "report lcov.info is larger than",
    )
    .await;
}

/// A sparse 1 GiB metric file.
#[tokio::test]
async fn a_huge_metric_file() {
    let d = tempfile::tempdir().unwrap();
    std::fs::File::create(d.path().join("perf.json"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    fails(
        d.path(),
        serde_json::json!({"kind": "metric", "file": "perf.json", "pointer": "/p99_ms", "max": 100.0}),
        "report perf.json is larger than",
    )
    .await;
}

/// The gate's path replaced by a link out of the work tree: an error
/// the agent is shown (it can undo it), not a report read from elsewhere.
async fn leads_out(link: &str, target_is_dir: bool, gate: serde_json::Value) {
    let outside = tempfile::tempdir().unwrap();
    write(
        outside.path(),
        "junit.xml",
        fixture("nextest_junit.xml").replace("failures=\"1\"", "failures=\"0\""),
    );
    write(outside.path(), "m.json", r#"{"p99_ms": 1}"#);
    let d = tempfile::tempdir().unwrap();
    let target = if target_is_dir {
        outside.path().to_path_buf()
    } else {
        outside.path().join(link)
    };
    std::os::unix::fs::symlink(target, d.path().join(link)).unwrap();
    let e = orch_gates::from_spec(&spec(gate.clone()))
        .unwrap()
        .check(&ctx(d.path()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, orch_core::GateErrorKind::Io, "{gate}: {e}");
    assert!(
        e.message
            .contains("leads outside the work tree through a symbolic link"),
        "{gate}: {e}"
    );
    assert!(e.is_retryable(), "{e}");
}

/// The report directory is a link to a directory outside.
#[tokio::test]
async fn a_report_directory_linked_out_of_the_tree() {
    leads_out(
        "reports",
        true,
        serde_json::json!({"kind": "tests", "format": "junit", "report": "reports/junit.xml", "argv": ["touch", "reports/junit.xml"]}),
    )
    .await;
}

/// The metric file is a link to a file outside.
#[tokio::test]
async fn a_metric_file_linked_out_of_the_tree() {
    leads_out(
        "m.json",
        false,
        serde_json::json!({"kind": "metric", "file": "m.json", "pointer": "/p99_ms", "max": 100.0}),
    )
    .await;
}

/// The gate's working directory is a link to a directory outside.
#[tokio::test]
async fn a_working_directory_linked_out_of_the_tree() {
    leads_out(
        "reports",
        true,
        serde_json::json!({"kind": "command", "argv": ["true"], "cwd": "reports"}),
    )
    .await;
}

/// The coverage command itself makes the report a link to a file outside
/// the work tree: refused after the command, as before it.
#[tokio::test]
async fn a_coverage_report_the_command_links_out_of_the_tree() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("lcov.info");
    write(
        outside.path(),
        "lcov.info",
        "SF:a.py\nDA:1,1\nLF:1\nLH:1\nend_of_record\n",
    );
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.py", "x = 1\n");
    let gate = serde_json::json!({"kind": "coverage", "format": "lcov", "report": "lcov.info",
        "argv": ["ln", "-s", target.to_str().unwrap(), "lcov.info"], "min_line_percent": 1.0});
    let e = orch_gates::from_spec(&spec(gate))
        .unwrap()
        .check(&ctx(d.path()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, orch_core::GateErrorKind::Io, "{e}");
    assert!(
        e.message
            .contains("leads outside the work tree through a symbolic link"),
        "{e}"
    );
}
