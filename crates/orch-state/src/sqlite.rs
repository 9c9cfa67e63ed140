//! [`SqliteStore`]: the embedded default. WAL, `synchronous = FULL`, one
//! writer thread that commits concurrent appends together (group commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use orch_core::{
    Event, EventId, Expect, RunId, RunLock, StateStore, StoreError, StoreErrorKind, StoredEvent,
    Timestamp,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::codec::{Encoded, changed, conflict, decode, encode, fenced};

/// The schema version this build writes. Version history:
/// 1 — `runs` and `events` keyed by run name and seq.
/// 2 — runs numbered; an event's key packs run number and seq into one
///     integer (`pos`), so appending is a rowid append (about a third
///     cheaper than a text-keyed row); `at` dropped (the body has it).
/// 3 — `epochs`: each run's lock epoch, checked by fenced appends.
pub const SCHEMA_VERSION: i64 = 3;

/// Most appends committed in one transaction.
const GROUP_MAX: usize = 1024;

/// Bits of `events.pos` that hold the seq; the run number is above them.
const SEQ_BITS: u32 = 40;
/// Largest seq of one run (about 10^12 events).
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// Largest run number (the sign bit stays clear).
const MAX_RUN: i64 = (1 << (63 - SEQ_BITS)) - 1;

const MIGRATIONS: &[&str] = &[
    // 1
    "CREATE TABLE runs (
        run TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE events (
        run TEXT NOT NULL,
        seq INTEGER NOT NULL,
        id BLOB NOT NULL,
        at INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (run, seq)
     ) STRICT, WITHOUT ROWID;
     CREATE UNIQUE INDEX events_by_id ON events (run, id);",
    // 2
    "CREATE TABLE runs2 (
        n INTEGER PRIMARY KEY,
        run TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
     ) STRICT;
     INSERT INTO runs2 (run, created_at)
        SELECT run, created_at FROM runs ORDER BY created_at, run;
     INSERT OR IGNORE INTO runs2 (run, created_at)
        SELECT run, min(at) FROM events GROUP BY run ORDER BY min(at), run;
     CREATE TABLE events2 (
        pos INTEGER PRIMARY KEY,
        run INTEGER NOT NULL,
        id BLOB NOT NULL,
        body TEXT NOT NULL
     ) STRICT;
     INSERT INTO events2 (pos, run, id, body)
        SELECT (r.n << 40) | e.seq, r.n, e.id, e.body
        FROM events e JOIN runs2 r ON r.run = e.run ORDER BY 1;
     DROP TABLE events;
     DROP TABLE runs;
     ALTER TABLE runs2 RENAME TO runs;
     ALTER TABLE events2 RENAME TO events;
     CREATE UNIQUE INDEX events_by_id ON events (run, id);",
    // 3: each run's epoch, moved on by every lock_run (fencing).
    "CREATE TABLE epochs (
        run TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL
     ) STRICT;",
];

struct Request {
    run: RunId,
    expect: Expect,
    events: Vec<Encoded>,
    reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

/// Counters of the writer: how well appends are grouped, and how busy it
/// is.
#[derive(Debug, Default)]
pub struct Stats {
    commits: std::sync::atomic::AtomicU64,
    appends: std::sync::atomic::AtomicU64,
    busy_nanos: std::sync::atomic::AtomicU64,
}

impl Stats {
    /// Time the writer spent writing and committing (fsync included); the
    /// rest of the time it waited for appends. Against a run's wall time
    /// this says whether the store or its callers set the pace.
    pub fn busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.busy_nanos.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Transactions committed (each one fsync).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `append` calls committed.
    pub fn appends(&self) -> u64 {
        self.appends.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A [`StateStore`] in one SQLite file.
///
/// An append returns only after its transaction is committed with
/// `synchronous = FULL` in WAL mode, i.e. after fsync: it survives a crash
/// of the process and of the machine. Appends from concurrent tasks are
/// queued to one writer thread, which commits everything queued in one
/// transaction (one fsync), each append in its own savepoint so that a
/// failing append fails alone.
///
/// Opening a file written by a newer schema, or a file that is not an orch
/// database, fails with a clear error and changes nothing.
///
/// ```
/// use orch_core::{Event, EventKind, StateStore};
/// let dir = tempfile::tempdir().unwrap();
/// let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
/// rt.block_on(async {
///     let run = "r1".parse().unwrap();
///     let store = orch_state::SqliteStore::open(dir.path().join("orch.db")).unwrap();
///     let e = Event::now(EventKind::TicketReady { ticket: "T-1".parse().unwrap() });
///     store.append(&run, &[e.clone()]).await.unwrap();
///     drop(store);
///     let again = orch_state::SqliteStore::open(dir.path().join("orch.db")).unwrap();
///     assert_eq!(again.read(&run, 0, 10).await.unwrap()[0].event, e);
/// });
/// ```
pub struct SqliteStore {
    path: PathBuf,
    stats: Arc<Stats>,
    writer: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn err(path: &Path, e: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseCorrupt, DatabaseLocked, NotADatabase};
    let kind = match e.sqlite_error_code() {
        Some(NotADatabase | DatabaseCorrupt) => StoreErrorKind::Corrupt,
        Some(DatabaseBusy | DatabaseLocked) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Io,
    };
    let what = match kind {
        StoreErrorKind::Corrupt => "is damaged or not an orch database",
        _ => "failed",
    };
    StoreError::new(kind, format!("{} {what}: {e}", path.display()))
}

fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| err(path, &e))?;
    // Reading the schema first makes SQLite read the header: a damaged or
    // foreign file fails here, before anything is written.
    let _: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(|e| err(path, &e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| err(path, &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::new(
            StoreErrorKind::Io,
            format!("{}: cannot switch to WAL mode (got {mode})", path.display()),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| err(path, &e))?;
    Ok(())
}

/// The writer thread's connection: the file opened (created if new),
/// configured and migrated to the current schema.
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut writer = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| err(path, &e))?;
    configure(&writer, path)?;
    // The writer's statements, with one INSERT per `CHUNKS` size.
    writer.set_prepared_statement_cache_capacity(32);
    migrate(&mut writer, path)?;
    Ok(writer)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| err(path, &e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::new(
            StoreErrorKind::TooNew,
            format!(
                "{} was written by a newer orch (schema version {version}; this build knows up to {SCHEMA_VERSION}); upgrade orch to open it",
                path.display()
            ),
        ));
    }
    if version == 0 {
        // A non-empty database without our version is someone else's.
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(|e| err(path, &e))?;
        if tables > 0 {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "{} is an SQLite database, but not an orch journal",
                    path.display()
                ),
            ));
        }
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(|e| err(path, &e))?;
        tx.execute_batch(sql).map_err(|e| err(path, &e))?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(|e| err(path, &e))?;
        tx.commit().map_err(|e| err(path, &e))?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the journal at `path`.
    ///
    /// # Errors
    /// [`StoreErrorKind::TooNew`] for a newer schema,
    /// [`StoreErrorKind::Corrupt`] for a damaged or foreign file (nothing is
    /// written to it), [`StoreErrorKind::Io`] otherwise.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let writer = open_writer(&path)?;
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err(&path, &e))?;
        reader
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| err(&path, &e))?;
        let (tx, rx) = mpsc::channel::<Request>();
        let wpath = path.clone();
        let stats = Arc::new(Stats::default());
        let wstats = Arc::clone(&stats);
        let handle = thread::Builder::new()
            .name("orch-sqlite-writer".into())
            .spawn(move || writer_loop(writer, &wpath, &rx, &wstats))
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Io,
                    format!("cannot start the writer thread: {e}"),
                )
            })?;
        Ok(SqliteStore {
            path,
            stats,
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(handle)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Writer counters (commits, appends).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = Arc::clone(&self.reader);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn, &path)
        })
        .await
        .map_err(|e| StoreError::new(StoreErrorKind::Io, format!("reader task failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer once the queue is drained.
        drop(self.writer.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(h) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// How long the writer waits for a group to fill up to the size of the
/// previous one. Appenders that just got their answer append again within
/// this time, so under load each fsync carries about one append per
/// appender; a lone appender never waits (its groups have size 1).
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_micros(300);

/// A held run lock file; removed when let go (before the lock is
/// released, so no one can lock the removed file after us unawares).
struct LockFile {
    path: PathBuf,
    file: std::fs::File,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

fn writer_loop(mut conn: Connection, path: &Path, rx: &mpsc::Receiver<Request>, stats: &Stats) {
    let mut last_size = 1;
    let mut numbers = RunNumbers::new();
    while let Ok(first) = rx.recv() {
        let deadline = std::time::Instant::now() + GROUP_WAIT;
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        while group.len() < last_size.min(GROUP_MAX) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        last_size = group.len();
        let started = std::time::Instant::now();
        let results = commit_group(&mut conn, path, &group, &mut numbers);
        stats.busy_nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        stats
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats
            .appends
            .fetch_add(group.len() as u64, std::sync::atomic::Ordering::Relaxed);
        match results {
            Ok(results) => {
                for (req, res) in group.into_iter().zip(results) {
                    let _ = req.reply.send(res);
                }
            }
            Err(e) => {
                for req in group {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Run numbers already committed; a number never changes once assigned,
/// so the writer keeps them across groups.
type RunNumbers = HashMap<RunId, i64>;

/// Appends every request of the group in one transaction (one fsync).
/// The last seq of each run is read once per group, under the write lock,
/// so other processes writing the same file are safe. A single-event
/// append is one INSERT; a multi-event append runs in a savepoint so it is
/// all or nothing. Returns per-request results once committed.
fn commit_group(
    conn: &mut Connection,
    path: &Path,
    group: &[Request],
    numbers: &mut RunNumbers,
) -> Result<Vec<Result<Vec<u64>, StoreError>>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| err(path, &e))?;
    let mut fresh = Vec::new();
    let mut results = Vec::with_capacity(group.len());
    {
        // Per run of this group: its number and last seq.
        let mut last: HashMap<&RunId, (i64, u64)> = HashMap::new();
        for req in group {
            let (n, before) = match last.get(&req.run) {
                Some(&v) => v,
                None => {
                    let n = match numbers.get(&req.run) {
                        Some(&n) => n,
                        None => {
                            let n = run_number(&tx, path, &req.run)?;
                            fresh.push((req.run.clone(), n));
                            n
                        }
                    };
                    let lo = n << SEQ_BITS;
                    let max: i64 = tx
                        .prepare_cached(
                            "SELECT coalesce(max(pos), ?1) FROM events WHERE pos BETWEEN ?1 AND ?2",
                        )
                        .and_then(|mut s| s.query_row([lo, lo | MAX_SEQ as i64], |r| r.get(0)))
                        .map_err(|e| err(path, &e))?;
                    (n, (max - lo) as u64)
                }
            };
            let mut next = before;
            let res = match req.expect {
                Expect::LastSeq(seq) if seq != before => Err(changed(&req.run, seq, before)),
                Expect::Epoch(e) => match epoch_of(&tx, path, &req.run)? {
                    current if current != e => Err(fenced(&req.run, e, current)),
                    _ => Ok(()),
                },
                _ => Ok(()),
            };
            let res = if let Err(e) = res {
                Err(e)
            } else if req.events.len() == 1 {
                append_events(&tx, path, req, n, &mut next)
            } else {
                // Prepared once (a savepoint per multi-event append is hot).
                let sql = |s: &str| {
                    tx.prepare_cached(s)
                        .and_then(|mut s| s.execute([]))
                        .map_err(|e| err(path, &e))
                };
                sql("SAVEPOINT append")?;
                let r = append_events(&tx, path, req, n, &mut next);
                if r.is_err() {
                    sql("ROLLBACK TO append")?;
                }
                sql("RELEASE append")?;
                r
            };
            if res.is_err() {
                next = before;
            }
            last.insert(&req.run, (n, next));
            results.push(res);
        }
    }
    tx.commit().map_err(|e| err(path, &e))?;
    numbers.extend(fresh);
    Ok(results)
}

/// The epoch of `run`: how many times it was locked.
fn epoch_of(conn: &Connection, path: &Path, run: &RunId) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT epoch FROM epochs WHERE run = ?1")
        .and_then(|mut s| {
            s.query_row([run.as_str()], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|e| e.map_or(0, |e| e as u64))
        .map_err(|e| err(path, &e))
}

/// Moves `run` on to its next epoch, durably, and returns it.
fn next_epoch(path: &Path, run: &RunId) -> Result<u64, StoreError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| err(path, &e))?;
    configure(&conn, path)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| err(path, &e))?;
    let epoch: i64 = tx
        .query_row(
            "INSERT INTO epochs (run, epoch) VALUES (?1, 1) \
             ON CONFLICT (run) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
            [run.as_str()],
            |r| r.get(0),
        )
        .map_err(|e| err(path, &e))?;
    tx.commit().map_err(|e| err(path, &e))?;
    Ok(epoch as u64)
}

/// The number of `run`, assigned on its first append.
fn run_number(conn: &Connection, path: &Path, run: &RunId) -> Result<i64, StoreError> {
    if let Some(n) = known_number(conn, path, run)? {
        return Ok(n);
    }
    let n: i64 = conn
        .prepare_cached("INSERT INTO runs (run, created_at) VALUES (?1, ?2) RETURNING n")
        .and_then(|mut s| {
            s.query_row(params![run.as_str(), Timestamp::now().0 as i64], |r| {
                r.get(0)
            })
        })
        .map_err(|e| err(path, &e))?;
    if n > MAX_RUN {
        return Err(StoreError::new(
            StoreErrorKind::Io,
            format!(
                "{}: cannot start run {run}: the journal holds the most runs one file can ({MAX_RUN})",
                path.display()
            ),
        ));
    }
    Ok(n)
}

/// The number of `run`, or `None` for a run never appended to.
fn known_number(conn: &Connection, path: &Path, run: &RunId) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT n FROM runs WHERE run = ?1")
        .and_then(|mut s| {
            s.query_row([run.as_str()], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map_err(|e| err(path, &e))
}

/// Where the events of `run` start in `events.pos` (seq 0), or `None`
/// for a run never appended to.
fn first_pos(conn: &Connection, path: &Path, run: &RunId) -> Result<Option<i64>, StoreError> {
    Ok(known_number(conn, path, run)?.map(|n| n << SEQ_BITS))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

/// Rows per multi-row INSERT, largest first: a request's events go in as
/// few statements as these sizes allow. One statement for many rows keeps
/// its cursors on the end of the table and of the id index, where every
/// new row goes (positions increase, and so do ids, which start with
/// their time), instead of seeking from the root for each row; it also
/// pays the statement's start and end once.
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// The INSERT of `rows` rows (each `CHUNKS` size has its cached statement).
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO events (pos, run, id, body) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?)");
    }
    sql
}

/// Inserts the request's events after seq `*next` of run number `n`, many
/// rows per statement.
fn append_events(
    conn: &Connection,
    path: &Path,
    req: &Request,
    n: i64,
    next: &mut u64,
) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::with_capacity(req.events.len());
    insert_rows(conn, path, req, &req.events, n, next, &mut seqs)?;
    Ok(seqs)
}

/// Inserts `events` (of `req`) after seq `*next`, pushing their seqs. A
/// statement is all or nothing: when one fails on an id already in the
/// journal, its rows go in again one at a time, so that a re-sent event
/// gets its old seq and a different event with a used id fails the
/// request (the caller rolls back its savepoint).
fn insert_rows(
    conn: &Connection,
    path: &Path,
    req: &Request,
    events: &[Encoded],
    n: i64,
    next: &mut u64,
    seqs: &mut Vec<u64>,
) -> Result<(), StoreError> {
    static SQL: std::sync::LazyLock<[String; CHUNKS.len()]> =
        std::sync::LazyLock::new(|| CHUNKS.map(insert_sql));
    let lo = n << SEQ_BITS;
    let mut rest = events;
    while !rest.is_empty() {
        let c = CHUNKS
            .iter()
            .position(|&k| k <= rest.len())
            .unwrap_or(CHUNKS.len() - 1);
        let rows = CHUNKS[c];
        if *next + rows as u64 > MAX_SEQ {
            return Err(StoreError::new(
                StoreErrorKind::Io,
                format!(
                    "{}: run {} holds the most events one run can ({MAX_SEQ})",
                    path.display(),
                    req.run
                ),
            ));
        }
        let (chunk, after) = rest.split_at(rows);
        let mut insert = conn.prepare_cached(&SQL[c]).map_err(|e| err(path, &e))?;
        for (i, e) in chunk.iter().enumerate() {
            let (p, pos) = (4 * i, lo | (*next + 1 + i as u64) as i64);
            insert
                .raw_bind_parameter(p + 1, pos)
                .and_then(|()| insert.raw_bind_parameter(p + 2, n))
                .and_then(|()| insert.raw_bind_parameter(p + 3, &e.id[..]))
                .and_then(|()| insert.raw_bind_parameter(p + 4, e.body.as_str()))
                .map_err(|x| err(path, &x))?;
        }
        match insert.raw_execute() {
            Ok(_) => {
                seqs.extend(*next + 1..=*next + rows as u64);
                *next += rows as u64;
            }
            Err(x) if is_unique_violation(&x) && rows > 1 => {
                for e in chunk {
                    insert_rows(conn, path, req, std::slice::from_ref(e), n, next, seqs)?;
                }
            }
            Err(x) if is_unique_violation(&x) => seqs.push(known_seq(conn, path, &chunk[0], n)?),
            Err(x) => return Err(err(path, &x)),
        }
        rest = after;
    }
    Ok(())
}

/// The seq of an event whose id is already in run number `n`: it is the
/// same event re-sent (its old seq), or a different one (a conflict).
fn known_seq(conn: &Connection, path: &Path, e: &Encoded, n: i64) -> Result<u64, StoreError> {
    let (pos, old): (i64, String) = conn
        .prepare_cached("SELECT pos, body FROM events WHERE run = ?1 AND id = ?2")
        .and_then(|mut s| s.query_row(params![n, &e.id[..]], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(|x| err(path, &x))?;
    if old != e.body {
        return Err(conflict(EventId(u128::from_be_bytes(e.id))));
    }
    Ok((pos - (n << SEQ_BITS)) as u64)
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn append_if(
        &self,
        run: &RunId,
        expect: Expect,
        events: &[Event],
    ) -> Result<Vec<u64>, StoreError> {
        if events.is_empty() && expect == Expect::Any {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StoreError::new(StoreErrorKind::Io, "store is closed"))?;
        // Encoded here, so the writer thread only writes.
        let encoded = encode(events)?;
        sender
            .send(Request {
                run: run.clone(),
                expect,
                events: encoded,
                reply,
            })
            .map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Io,
                    format!("{}: the writer stopped", self.path.display()),
                )
            })?;
        rx.await.map_err(|_| {
            StoreError::new(
                StoreErrorKind::Io,
                format!("{}: the writer stopped", self.path.display()),
            )
        })?
    }

    async fn read(
        &self,
        run: &RunId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let run = run.clone();
        self.blocking(move |conn, path| {
            let Some(lo) = first_pos(conn, path, &run)? else {
                return Ok(Vec::new());
            };
            let mut stmt = conn
                .prepare_cached(
                    "SELECT pos - ?1, body FROM events WHERE pos > ?2 AND pos <= ?3 ORDER BY pos LIMIT ?4",
                )
                .map_err(|e| err(path, &e))?;
            let from = lo + after.min(MAX_SEQ) as i64;
            let limit = limit.min(i64::MAX as usize) as i64;
            let rows = stmt
                .query_map(params![lo, from, lo | MAX_SEQ as i64, limit], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(|e| err(path, &e))?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, body) = row.map_err(|e| err(path, &e))?;
                out.push(StoredEvent {
                    seq: seq as u64,
                    event: decode(path.display(), &run, seq, &body)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Reads and folds on two threads: one reads rows in order and decodes
    /// every other chunk; the other decodes the rest and folds, in order.
    async fn state(&self, run: &RunId) -> Result<orch_core::RunState, StoreError> {
        const CHUNK: usize = 2048;
        enum Chunk {
            Raw(Vec<(i64, String)>),
            Decoded(Vec<Event>),
        }
        let reader = Arc::clone(&self.reader);
        let path = self.path.clone();
        let run = run.clone();
        tokio::task::spawn_blocking(move || {
            let (dpath, drun) = (path.clone(), run.clone());
            let decode = move |rows: Vec<(i64, String)>| -> Result<Vec<Event>, StoreError> {
                rows.into_iter()
                    .map(|(seq, body)| decode(dpath.display(), &drun, seq, &body))
                    .collect()
            };
            let (tx, rx) = mpsc::sync_channel::<Chunk>(8);
            let (ppath, prun, pdecode) = (path.clone(), run.clone(), decode.clone());
            let producer = thread::spawn(move || -> Result<(), StoreError> {
                let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
                let Some(lo) = first_pos(&conn, &ppath, &prun)? else {
                    return Ok(());
                };
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT pos - ?1, body FROM events WHERE pos > ?1 AND pos <= ?2 ORDER BY pos",
                    )
                    .map_err(|e| err(&ppath, &e))?;
                let mut rows = stmt
                    .query([lo, lo | MAX_SEQ as i64])
                    .map_err(|e| err(&ppath, &e))?;
                let mut chunk = Vec::with_capacity(CHUNK);
                let mut n = 0usize;
                let send = |rows: Vec<(i64, String)>, n: &mut usize| -> Result<bool, StoreError> {
                    *n += 1;
                    let c = if (*n).is_multiple_of(2) {
                        Chunk::Decoded(pdecode(rows)?)
                    } else {
                        Chunk::Raw(rows)
                    };
                    Ok(tx.send(c).is_ok())
                };
                while let Some(row) = rows.next().map_err(|e| err(&ppath, &e))? {
                    chunk.push((
                        row.get(0).map_err(|e| err(&ppath, &e))?,
                        row.get(1).map_err(|e| err(&ppath, &e))?,
                    ));
                    if chunk.len() == CHUNK
                        && !send(
                            std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)),
                            &mut n,
                        )?
                    {
                        return Ok(()); // the folder stopped on an error
                    }
                }
                send(chunk, &mut n)?;
                Ok(())
            });
            let mut state = orch_core::RunState::default();
            let mut failure = None;
            for chunk in rx {
                let events = match chunk {
                    Chunk::Decoded(events) => Ok(events),
                    Chunk::Raw(rows) => decode(rows),
                };
                match events {
                    Ok(events) => events.into_iter().for_each(|e| state.apply_owned(e)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let produced = producer
                .join()
                .map_err(|_| StoreError::new(StoreErrorKind::Io, "the reader thread panicked"))?;
            match (failure, produced) {
                (Some(e), _) | (None, Err(e)) => Err(e),
                (None, Ok(())) => Ok(state),
            }
        })
        .await
        .map_err(|e| StoreError::new(StoreErrorKind::Io, format!("fold task failed: {e}")))?
    }

    /// The run's lock is an OS file lock (`flock`) on `<database>-run-<run>.lock`
    /// beside the database: the kernel frees it when the holder's process
    /// dies, however it dies, so a crashed run can be resumed at once. The
    /// holder removes the file when it lets go (a crashed one leaves it for
    /// the next); a file locked just as it was removed is let go and made
    /// again, so two holders never lock two files.
    async fn lock_run(&self, run: &RunId) -> Result<RunLock, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(format!("-run-{run}.lock"));
        let path = self.path.with_file_name(name);
        let io = |what: &str, e: std::io::Error| {
            StoreError::new(
                StoreErrorKind::Io,
                format!("cannot {what} the run's lock file {}: {e}", path.display()),
            )
        };
        for _ in 0..100 {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io("open", e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::new(
                        StoreErrorKind::Locked,
                        format!(
                            "run {run} is being driven by another engine (it holds {}); \
                             wait for it to stop, or stop it",
                            path.display()
                        ),
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", e)),
            }
            let held = file.metadata().map_err(|e| io("read", e))?;
            let named = std::fs::metadata(&path).ok();
            if named.is_some_and(|m| (m.dev(), m.ino()) == (held.dev(), held.ino())) {
                let lock = LockFile { path, file };
                let (db, r) = (self.path.clone(), run.clone());
                let epoch = tokio::task::spawn_blocking(move || next_epoch(&db, &r))
                    .await
                    .map_err(|e| {
                        StoreError::new(StoreErrorKind::Io, format!("epoch task failed: {e}"))
                    })??;
                return Ok(RunLock::new(lock).with_epoch(epoch));
            }
            // Removed by the holder before us while we opened it: again.
        }
        Err(io(
            "keep",
            std::io::Error::other("it was removed or replaced 100 times while being locked"),
        ))
    }

    async fn runs(&self) -> Result<Vec<RunId>, StoreError> {
        self.blocking(|conn, path| {
            let mut stmt = conn
                .prepare_cached("SELECT run FROM runs ORDER BY created_at, run")
                .map_err(|e| err(path, &e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| err(path, &e))?;
            let mut out = Vec::new();
            for r in rows {
                let name = r.map_err(|e| err(path, &e))?;
                out.push(RunId::new(&name).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Corrupt,
                        format!("{}: bad run id: {e}", path.display()),
                    )
                })?);
            }
            Ok(out)
        })
        .await
    }
}

/// Mean time of one 4 KiB appending write + `fdatasync` in `dir`, over `n`
/// writes (at least one): the floor under every durable commit on that
/// disk, since a commit returns only after its fsync. Figures on durable
/// SQLite follow it more than anything else (the benchmarks print it with
/// them); it is also a quick way to compare places for a state directory.
///
/// ```
/// let dir = std::env::temp_dir();
/// let per = orch_state::fsync_latency(&dir, 3).unwrap();
/// assert!(per > std::time::Duration::ZERO);
/// ```
///
/// # Errors
/// When the probe file in `dir` cannot be written, synced or removed.
pub fn fsync_latency(dir: &Path, n: u32) -> std::io::Result<std::time::Duration> {
    use std::io::Write;
    let path = dir.join(format!("fsync-probe-{}", EventId::random()));
    let mut f = std::fs::File::create(&path)?;
    let buf = [7u8; 4096];
    let n = n.max(1);
    let start = std::time::Instant::now();
    for _ in 0..n {
        f.write_all(&buf)?;
        f.sync_data()?;
    }
    let per = start.elapsed() / n;
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(run: &str, id: u8, body: &str) -> Request {
        Request {
            run: run.parse().unwrap(),
            expect: Expect::Any,
            events: vec![Encoded {
                id: [id; 16],
                body: body.into(),
            }],
            reply: oneshot::channel().0,
        }
    }

    fn stored(conn: &Connection, n: i64) -> Vec<(i64, String)> {
        conn.prepare(&format!(
            "SELECT pos - (run << {SEQ_BITS}), body FROM events WHERE run = ?1 ORDER BY pos"
        ))
        .unwrap()
        .query_map([n], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Appends committed together (one group, one transaction) stay
    /// separate: a conflict fails that append alone, a re-sent event keeps
    /// its seq (also when sent twice in one group), runs keep their own
    /// seqs, and the others are written in order.
    #[test]
    fn appends_of_a_group_fail_alone_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut conn = open_writer(&path).unwrap();
        let mut numbers = RunNumbers::new();
        let seqs = |r: Vec<Result<Vec<u64>, StoreError>>| -> Vec<Result<Vec<u64>, StoreErrorKind>> {
            r.into_iter().map(|r| r.map_err(|e| e.kind)).collect()
        };

        let first = [single("b", 1, "e1"), single("b", 2, "e2")];
        let r = commit_group(&mut conn, &path, &first, &mut numbers).unwrap();
        assert_eq!(seqs(r), [Ok(vec![1]), Ok(vec![2])]);

        let second = [
            single("b", 3, "e3"),
            single("b", 1, "e1"),     // re-sent: its old seq
            single("b", 2, "not e2"), // a used id, another event: fails
            single("b", 4, "e4"),
            single("c", 5, "c1"), // another run between
            single("b", 6, "e6"),
            single("b", 6, "e6"), // the same event twice in one group
        ];
        let r = commit_group(&mut conn, &path, &second, &mut numbers).unwrap();
        assert_eq!(
            seqs(r),
            [
                Ok(vec![3]),
                Ok(vec![1]),
                Err(StoreErrorKind::Conflict),
                Ok(vec![4]),
                Ok(vec![1]),
                Ok(vec![5]),
                Ok(vec![5]),
            ]
        );
        let b = numbers[&"b".parse::<RunId>().unwrap()];
        let c = numbers[&"c".parse::<RunId>().unwrap()];
        let bodies = |n| {
            stored(&conn, n)
                .into_iter()
                .map(|(s, b)| format!("{s}:{b}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(bodies(b), ["1:e1", "2:e2", "3:e3", "4:e4", "5:e6"]);
        assert_eq!(bodies(c), ["1:c1"]);
    }

    #[test]
    fn the_fsync_probe_times_its_writes_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let per = fsync_latency(dir.path(), 3).unwrap();
        assert!(per > std::time::Duration::ZERO);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let gone = dir.path().join("no-such-dir");
        assert!(fsync_latency(&gone, 1).is_err());
    }
}
