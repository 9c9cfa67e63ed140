//! The SQLite store refuses what it must not touch, and says which file.

use orch_core::{Event, EventKind, StateStore, StoreErrorKind};
use orch_state::SqliteStore;

#[tokio::test]
async fn newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let c = rusqlite_free_set_version(&path, orch_state::SCHEMA_VERSION + 1);
        assert!(c, "could not bump the version");
    }
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::TooNew);
    assert!(err.message.contains(&path.display().to_string()), "{err}");
    let v = orch_state::SCHEMA_VERSION;
    assert!(
        err.message.contains(&format!(
            "newer orch (schema version {}; this build knows up to {v})",
            v + 1
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
}

/// Sets the database's `user_version` by patching the file header (offset
/// 60, big-endian), as a newer orch would have left it.
fn rusqlite_free_set_version(path: &std::path::Path, v: i64) -> bool {
    let mut bytes = std::fs::read(path).unwrap();
    if bytes.len() < 100 {
        return false;
    }
    bytes[60..64].copy_from_slice(&(v as u32).to_be_bytes());
    std::fs::write(path, bytes).is_ok()
}

#[tokio::test]
async fn damaged_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // A real journal, then truncated in the middle of its header.
    let path = dir.path().join("orch.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        let run = "r".parse().unwrap();
        s.append(
            &run,
            &[Event::now(EventKind::TicketReady {
                ticket: "T-1".parse().unwrap(),
            })],
        )
        .await
        .unwrap();
    }
    for (name, bytes) in [
        ("truncated.db", std::fs::read(&path).unwrap()[..50].to_vec()),
        (
            "garbage.db",
            b"this is not a database, it is a shopping list\n".repeat(200),
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let err = SqliteStore::open(&p).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Corrupt, "{name}: {err}");
        assert!(
            err.message.starts_with(&format!(
                "{} is damaged or not an orch database",
                p.display()
            )),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&p).unwrap(),
            bytes,
            "{name} was not overwritten"
        );
    }
}

#[tokio::test]
async fn someone_elses_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    // Make a valid SQLite database with another schema through our own store
    // type's file, then drop our tables' version marker.
    drop(SqliteStore::open(&path).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[60..64].copy_from_slice(&0u32.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Corrupt);
    assert!(
        err.message
            .ends_with("is an SQLite database, but not an orch journal"),
        "{err}"
    );
}

/// A journal written by schema version 1 (run names as keys) opens under
/// this build: the migration keeps every event, its seq and body, the run
/// order, and appends continue the numbering.
#[tokio::test]
async fn a_version_1_journal_is_migrated_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orch.db");
    let ev = |t: &str, at: u64| {
        let mut e = Event::now(EventKind::TicketReady {
            ticket: t.parse().unwrap(),
        });
        e.at = orch_core::Timestamp(at);
        e
    };
    // (run, seq, event) as version 1 stored them; run "b" started first.
    let rows = [
        ("b", 1i64, ev("T-1", 1_000)),
        ("a", 1, ev("T-2", 2_000)),
        ("b", 2, ev("T-3", 3_000)),
        ("a", 2, ev("T-4", 4_000)),
        ("b", 3, ev("T-5", 5_000)),
    ];
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE runs (run TEXT PRIMARY KEY, created_at INTEGER NOT NULL) STRICT;
             CREATE TABLE events (
                run TEXT NOT NULL, seq INTEGER NOT NULL, id BLOB NOT NULL,
                at INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (run, seq)
             ) STRICT, WITHOUT ROWID;
             CREATE UNIQUE INDEX events_by_id ON events (run, id);
             INSERT INTO runs VALUES ('b', 1000), ('a', 2000);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        for (run, seq, e) in &rows {
            c.execute(
                "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    run,
                    seq,
                    &e.id.0.to_be_bytes()[..],
                    e.at.0 as i64,
                    serde_json::to_string(e).unwrap()
                ],
            )
            .unwrap();
        }
    }
    let s = SqliteStore::open(&path).unwrap();
    let names: Vec<String> = s
        .runs()
        .await
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(names, ["b", "a"], "run order kept");
    for name in ["a", "b"] {
        let run = name.parse().unwrap();
        let got = s.read(&run, 0, 100).await.unwrap();
        let want: Vec<(u64, &Event)> = rows
            .iter()
            .filter(|(r, ..)| *r == name)
            .map(|(_, seq, e)| (*seq as u64, e))
            .collect();
        assert_eq!(
            got.iter().map(|g| (g.seq, &g.event)).collect::<Vec<_>>(),
            want,
            "run {name}"
        );
        assert_eq!(s.state(&run).await.unwrap().events, want.len() as u64);
    }
    // A re-send of a migrated event is recognised; new events continue.
    let b = "b".parse().unwrap();
    assert_eq!(s.append(&b, &[rows[2].2.clone()]).await.unwrap(), [2]);
    assert_eq!(s.append(&b, &[ev("T-6", 6_000)]).await.unwrap(), [4]);
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, orch_state::SCHEMA_VERSION);
}

/// The writer's counters: every append is counted once, appends share
/// commits, and the time spent committing is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_counts_its_appends_commits_and_busy_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(SqliteStore::open(dir.path().join("s.db")).unwrap());
    assert_eq!((s.stats().appends(), s.stats().commits()), (0, 0));
    assert_eq!(s.stats().busy(), std::time::Duration::ZERO);
    let run: orch_core::RunId = "r".parse().unwrap();
    let appends: Vec<_> = (0..32)
        .map(|i| {
            let (s, run) = (s.clone(), run.clone());
            tokio::spawn(async move {
                let e = Event::now(EventKind::TicketReady {
                    ticket: format!("T-{i}").parse().unwrap(),
                });
                s.append(&run, &[e]).await.unwrap()
            })
        })
        .collect();
    for a in appends {
        a.await.unwrap();
    }
    let st = s.stats();
    assert_eq!(st.appends(), 32);
    assert!((1..=32).contains(&st.commits()), "{}", st.commits());
    assert!(st.busy() > std::time::Duration::ZERO);
}

#[tokio::test]
async fn a_run_lock_file_lives_as_long_as_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("state.db")).unwrap();
    let run: orch_core::RunId = "r1".parse().unwrap();
    let file = dir.path().join("state.db-run-r1.lock");
    // A file left by a crashed holder locks nothing.
    std::fs::write(&file, "").unwrap();
    let held = store.lock_run(&run).await.unwrap();
    assert!(file.exists());
    let again = SqliteStore::open(dir.path().join("state.db")).unwrap();
    let e = again.lock_run(&run).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Locked);
    assert!(e.message.contains("state.db-run-r1.lock"), "{e}");
    drop(held);
    assert!(!file.exists(), "let go, the file goes too");
    // The next holder makes it again.
    let next = again.lock_run(&run).await.unwrap();
    assert!(file.exists());
    drop(next);
    assert!(!file.exists());
}

/// Holders that take and let go of one run's lock as fast as they can,
/// each through its own store (its own file descriptions): never two at
/// once, although each holder removes the file as it lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_lock_holders_never_overlap() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let holding = Arc::new(AtomicU32::new(0));
    let taken = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = SqliteStore::open(dir.path().join("state.db")).unwrap();
        let (holding, taken) = (holding.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            let run: orch_core::RunId = "r1".parse().unwrap();
            for _ in 0..300 {
                match store.lock_run(&run).await {
                    Ok(lock) => {
                        assert_eq!(holding.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        taken.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        holding.fetch_sub(1, Ordering::SeqCst);
                        drop(lock);
                    }
                    Err(e) => assert_eq!(e.kind, StoreErrorKind::Locked, "{e}"),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(taken.load(Ordering::SeqCst) > 0);
}
