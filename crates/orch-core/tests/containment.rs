//! Nothing a command starts outlives it: `setsid` and double-forked
//! descendants are found and killed when the command ends, times out, is
//! cancelled or dropped, and the runner does not wait on pipes they hold.
//! Each test runs twice: with cgroups (where this machine allows them)
//! and, in a child process of this test binary, with the marker fallback
//! (`ORCH_CGROUP=off`).
#![cfg(feature = "process")]

use std::path::Path;
use std::time::{Duration, Instant};

use orch_core::Cancellation;
use orch_core::process::{self, Command, Exit};

/// Whether `pid` is a live process (a zombie is not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// The pids written to `dir/pids` (one a line) by the script.
fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits (bounded) until the script has written `n` pids.
async fn wait_for_pids(dir: &Path, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = pids(dir);
        if p.len() >= n || Instant::now() > deadline {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts that `dir/pids` names `n` processes and none runs any more.
fn assert_all_dead(dir: &Path, n: usize, after: &str) {
    let p = pids(dir);
    assert_eq!(p.len(), n, "{p:?}");
    for pid in p {
        assert!(!running(pid), "{pid} survived {after}");
    }
}

fn shell(dir: &Path, script: &str, timeout: Duration) -> Command {
    Command {
        argv: vec![script.to_owned()],
        shell: true,
        cwd: dir.to_path_buf(),
        timeout,
        ..Command::default()
    }
}

/// A descendant that calls `setsid` (a new session and process group, out
/// of reach of a process-group kill) and keeps stdout open.
const SETSID: &str = r#"setsid sh -c 'echo $$ >> pids; exec sleep 300' & "#;
/// A double fork: the middle process exits, the grandchild is orphaned.
const DOUBLE_FORK: &str = r#"sh -c 'sh -c "echo \$\$ >> pids; exec sleep 300" & exit 0'; "#;

/// Runs `test` here, and again in a child process with the marker
/// fallback, where it must pass too.
fn both_modes(name: &str, test: impl FnOnce()) {
    test();
    if std::env::var("ORCH_CGROUP").as_deref() == Ok("off") {
        assert!(!process::scope().is_cgroup());
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("ORCH_CGROUP", "off")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "with the marker fallback:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn escaped_descendants_of_a_finished_command_are_killed_and_not_waited_for() {
    both_modes(
        "escaped_descendants_of_a_finished_command_are_killed_and_not_waited_for",
        || {
            rt().block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let script = format!("{SETSID}{DOUBLE_FORK} while [ \"$(cat pids 2>/dev/null | wc -l)\" -lt 2 ]; do sleep 0.01; done; echo done");
                let started = Instant::now();
                let out = process::run(
                    &shell(dir.path(), &script, Duration::from_secs(60)),
                    &Cancellation::new(),
                )
                .await;
                let took = started.elapsed();
                assert_eq!(out.exit, Exit::Code(0), "{}", out.describe());
                assert!(out.lingering, "the escaped processes are reported");
                assert!(!out.success());
                assert!(out.describe().contains("left processes running"), "{}", out.describe());
                assert_eq!(out.stdout.text().trim(), "done");
                // The setsid child held stdout open: not waited for.
                assert!(took < Duration::from_secs(3), "took {took:?}");
                assert_all_dead(dir.path(), 2, "the command");
            });
        },
    );
}

#[test]
fn a_timeout_kills_escaped_descendants_too() {
    both_modes("a_timeout_kills_escaped_descendants_too", || {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let script = format!("{SETSID}{DOUBLE_FORK} sleep 300");
            let out = process::run(
                &shell(dir.path(), &script, Duration::from_secs(2)),
                &Cancellation::new(),
            )
            .await;
            assert_eq!(out.exit, Exit::TimedOut(Duration::from_secs(2)));
            assert!(out.duration < Duration::from_secs(5), "{:?}", out.duration);
            assert_all_dead(dir.path(), 2, "the timeout");
        });
    });
}

#[test]
fn cancelling_or_dropping_a_command_kills_escaped_descendants() {
    both_modes(
        "cancelling_or_dropping_a_command_kills_escaped_descendants",
        || {
            rt().block_on(async {
                // Cancelled.
                let dir = tempfile::tempdir().unwrap();
                let cmd = shell(
                    dir.path(),
                    &format!("{SETSID}{DOUBLE_FORK} sleep 300"),
                    Duration::from_secs(60),
                );
                let cancel = Cancellation::new();
                let running_cmd = process::run(&cmd, &cancel);
                let p = tokio::join!(running_cmd, async {
                    let p = wait_for_pids(dir.path(), 2).await;
                    cancel.cancel();
                    p
                });
                assert_eq!(p.0.exit, Exit::Cancelled);
                assert_eq!(p.1.len(), 2);
                assert_all_dead(dir.path(), 2, "cancellation");

                // Dropped half-way (the future is dropped, as when a run's
                // pipeline is dropped).
                let dir = tempfile::tempdir().unwrap();
                let cmd = shell(
                    dir.path(),
                    &format!("{SETSID}{DOUBLE_FORK} sleep 300"),
                    Duration::from_secs(60),
                );
                let cancel = Cancellation::new();
                let p = tokio::select! {
                    _ = process::run(&cmd, &cancel) => panic!("ended by itself"),
                    p = wait_for_pids(dir.path(), 2) => p,
                };
                assert_eq!(p.len(), 2);
                // The kill on drop is sent at once; the kernel takes a
                // moment to end them.
                let deadline = Instant::now() + Duration::from_secs(5);
                while p.iter().any(|&pid| running(pid)) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for pid in p {
                    assert!(!running(pid), "{pid} survived the dropped command");
                }
            });
        },
    );
}

#[test]
fn a_command_that_leaves_nothing_behind_is_not_lingering() {
    both_modes(
        "a_command_that_leaves_nothing_behind_is_not_lingering",
        || {
            rt().block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let out = process::run(
                    &shell(
                        dir.path(),
                        "sleep 0.05 & wait; echo ok",
                        Duration::from_secs(60),
                    ),
                    &Cancellation::new(),
                )
                .await;
                assert!(out.success(), "{}", out.describe());
                assert_eq!(out.stdout.text().trim(), "ok");
            });
        },
    );
}

#[test]
fn missing_programs_and_directories_are_told_apart() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let run = |argv: &[&str], cwd: &Path| {
            let cmd = Command {
                argv: argv.iter().map(|s| (*s).to_owned()).collect(),
                cwd: cwd.to_path_buf(),
                ..Command::default()
            };
            async move { process::run(&cmd, &Cancellation::new()).await.exit }
        };
        assert_eq!(
            run(&["no-such-program-orch"], dir.path()).await,
            Exit::NotFound("no-such-program-orch".into())
        );
        assert_eq!(
            run(&["./missing.sh"], dir.path()).await,
            Exit::NotFound("./missing.sh".into())
        );
        std::fs::write(dir.path().join("plain.txt"), "x").unwrap();
        assert!(matches!(
            run(&["./plain.txt"], dir.path()).await,
            Exit::SpawnFailed(m) if m.contains("not an executable")
        ));
        assert!(matches!(
            run(&["true"], &dir.path().join("nope")).await,
            Exit::SpawnFailed(m) if m.contains("does not exist")
        ));
        // A relative program is found in the working directory.
        let script = dir.path().join("hello.sh");
        std::fs::write(&script, "#!/bin/sh\necho \"hi $1\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cmd = Command {
            argv: vec!["./hello.sh".into(), "there".into()],
            cwd: dir.path().to_path_buf(),
            ..Command::default()
        };
        let out = process::run(&cmd, &Cancellation::new()).await;
        assert!(out.success(), "{}", out.describe());
        assert_eq!(out.stdout.text(), "hi there\n");
    });
}

/// On this machine (root, cgroup v2 mounted) commands get cgroups; the
/// recorded scope says so.
#[test]
#[ignore = "needs a writable cgroup v2 hierarchy (root, or a delegated subtree)"]
fn cgroups_are_used_where_the_machine_allows() {
    let scope = process::scope();
    assert!(scope.is_cgroup(), "{:?}", scope.describe());
    assert!(scope.describe().containment.starts_with("cgroup:"));
}

/// A journal is data anyone with access to the store can append to: a
/// recorded driver whose containment names a cgroup orch did not make
/// for it (the machine's own services, say) or another driver's marker
/// is refused, and nothing is killed.
#[test]
fn a_recorded_scope_that_orch_did_not_make_is_not_killed() {
    rt().block_on(async {
        let me = process::scope().describe();
        let forged = |containment: &str| orch_core::DriverInfo {
            pid: 1,
            start: 1,
            containment: containment.to_owned(),
            ..me.clone()
        };
        for containment in [
            "cgroup:/sys/fs/cgroup/unified",
            "cgroup:/sys/fs/cgroup/system.slice",
            "cgroup:/sys/fs/cgroup/unified/../unified/orch-1-1",
            "marker:12345-678",
        ] {
            let e = process::kill_scope(&forged(containment)).await.unwrap_err();
            assert!(e.contains("nothing was killed"), "{containment}: {e}");
        }
        // Its own record is left alone (its commands are its own to stop).
        assert_eq!(process::kill_scope(&me).await, Ok(process::Killed::Ours));
    });
}

/// A helper orch waits for itself (`git`, with the repository's hooks,
/// which an agent can change) leaves nothing running, and its output is
/// not held up by a daemon that keeps the pipe open.
#[test]
fn a_helpers_daemon_ends_with_the_helper() {
    both_modes("a_helpers_daemon_ends_with_the_helper", || {
        let dir = tempfile::tempdir().unwrap();
        let mut script = std::process::Command::new("sh");
        script
            .args([
                "-c",
                &format!("{SETSID} while [ ! -s pids ]; do sleep 0.01; done; echo out"),
            ])
            .current_dir(dir.path());
        let started = Instant::now();
        let out = process::output(&script).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"out\n");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_all_dead(dir.path(), 1, "its helper");
    });
}
