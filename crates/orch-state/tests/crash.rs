//! SIGKILL a process that appends in a loop, many times; after reopening,
//! the journal is a gap-free prefix of what was appended, no record is
//! torn, and every append that had returned is present.
//!
//! The child is this test binary re-run with `ORCH_CRASH_CHILD` set: it
//! appends numbered events and prints the seq of each after `append`
//! returned.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use orch_core::{Event, EventId, EventKind, StateStore, Timestamp};
use orch_state::SqliteStore;

fn event(n: u64) -> Event {
    Event {
        id: EventId(u128::from(n)),
        at: Timestamp(n),
        kind: EventKind::AgentOutput {
            agent: "crash-1".parse().unwrap(),
            text: format!("event {n} {}", "x".repeat((n % 300) as usize)),
        },
    }
}

#[test]
fn child_appender() {
    let Some(db) = std::env::var_os("ORCH_CRASH_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = std::sync::Arc::new(SqliteStore::open(db).unwrap());
        let run = "crash".parse().unwrap();
        let start = store.read(&run, 0, usize::MAX).await.unwrap().len() as u64;
        // Four concurrent appenders, so group commit is exercised too.
        let mut tasks = Vec::new();
        for lane in 0..4u64 {
            let (store, run) = (store.clone(), run.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let n = 1_000_000 * (start + 1) + lane * 100_000 + i;
                    let seq = store.append(&run, &[event(n)]).await.unwrap();
                    println!("acked {n} {}", seq[0]);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    if std::env::var_os("ORCH_CRASH_CHILD").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..12 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_appender",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ORCH_CRASH_CHILD", &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let mut p = l.strip_prefix("acked ")?.split(' ');
                    Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
                })
                .collect::<Vec<(u64, u64)>>()
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 400));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        let got = reader.join().unwrap();
        assert!(
            !got.is_empty() || round > 0,
            "the child appended nothing in round {round}"
        );
        acked.extend(got);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let journal = rt.block_on(async {
        let store = SqliteStore::open(&db).unwrap();
        store
            .read(&"crash".parse().unwrap(), 0, usize::MAX)
            .await
            .unwrap()
    });
    assert!(
        journal.len() > 50,
        "too few events to mean anything: {}",
        journal.len()
    );
    for (i, e) in journal.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gap at {i}");
        let n = e.event.id.0 as u64;
        assert_eq!(e.event, event(n), "record {} intact", e.seq);
    }
    for (n, seq) in &acked {
        let e = &journal[*seq as usize - 1];
        assert_eq!(
            e.event.id.0 as u64, *n,
            "acknowledged event {n} at seq {seq} is present"
        );
    }
    eprintln!(
        "{} events survived 12 SIGKILLs; {} acknowledged appends all present",
        journal.len(),
        acked.len()
    );
}
