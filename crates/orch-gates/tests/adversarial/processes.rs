//! Helpers a gate's command leaves behind to outlive the check.

use std::time::Duration;

use crate::support::*;

/// A `setsid` daemon holding the command's stdout (so waiting for the
/// end of output would wait for it): the gate fails at once and the
/// daemon is dead when the verdict is in.
#[tokio::test]
async fn a_setsid_daemon() {
    let d = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    fails(
        d.path(),
        serde_json::json!({"kind": "command", "argv": ["sh", "-c",
            "setsid sh -c 'echo $$ > daemon.pid; exec sleep 300' & while [ ! -s daemon.pid ]; do sleep 0.01; done; echo ok"]}),
        "left processes running",
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the verdict waited {took:?}");
    assert!(
        !alive(read_pid(&d.path().join("daemon.pid"))),
        "the daemon outlived the gate"
    );
}

/// A background child with its output closed, orphaned when the command
/// exits 0.
#[tokio::test]
async fn an_orphaned_child() {
    let d = tempfile::tempdir().unwrap();
    fails(
        d.path(),
        serde_json::json!({"kind": "command",
            "argv": ["sh", "-c", "(sleep 300 >/dev/null 2>&1 & echo $! > orphan.pid); exit 0"]}),
        "exited with status 0, but left processes running (they were killed)",
    )
    .await;
    assert!(
        !alive(read_pid(&d.path().join("orphan.pid"))),
        "the orphan outlived the gate"
    );
}

/// A daemon started by the test command to write a passing report after
/// the command ends: the gate fails, and the daemon never writes it.
#[tokio::test]
async fn a_daemon_that_writes_the_report_later() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "pass.xml",
        r#"<testsuite name="s" tests="1" failures="0"><testcase name="a"/></testsuite>"#,
    );
    fails(
        d.path(),
        serde_json::json!({"kind": "tests", "format": "junit", "report": "r.xml", "argv": ["sh", "-c",
            "setsid sh -c 'echo $$ > daemon.pid; sleep 1; cp pass.xml r.xml' >/dev/null 2>&1 & while [ ! -s daemon.pid ]; do sleep 0.01; done; exit 0"]}),
        "left processes running",
    )
    .await;
    let pid = read_pid(&d.path().join("daemon.pid"));
    assert!(!alive(pid), "the daemon outlived the gate");
    // Dead, it cannot write the report later; it has not yet.
    assert!(
        !d.path().join("r.xml").exists(),
        "the daemon wrote the report"
    );
}
