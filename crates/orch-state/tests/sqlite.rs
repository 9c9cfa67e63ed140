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
    assert!(
        err.message
            .contains("newer orch (schema version 2; this build knows up to 1)"),
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
