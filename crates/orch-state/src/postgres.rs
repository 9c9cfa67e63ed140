//! [`PgStore`]: the journal in PostgreSQL, for runs that processes on
//! other machines read (`orch status` from anywhere) or that must outlive
//! the machine the run started on.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use orch_core::{
    Cancellation, Claim, Event, EventId, Expect, RunId, RunLock, StateStore, StoreError,
    StoreErrorKind, StoredEvent, Timestamp,
};
use tokio::sync::Mutex;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, Statement};

use crate::codec::{Encoded, changed, conflict, decode, encode, fenced};
use crate::pg_tls;

mod jobs;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The schema version this build writes in PostgreSQL (counted apart from
/// the SQLite file's [`SCHEMA_VERSION`](crate::SCHEMA_VERSION)). Version
/// history: 1 — `orch_runs` (a number and the last seq per run) and
/// `orch_events` (one row per event, its body the event's JSON);
/// 2 — `orch_leases` (ticket claims; dropped by 4) and
/// `orch_now_ms()` (the server's clock in milliseconds, which lease times
/// use); 3 — `orch_epochs` (each run's lock epoch, checked by fenced
/// appends); 4 — `orch_jobs` (the [`JobQueue`](orch_core::JobQueue)); 5 —
/// `orch_jobs_run_open` (a run's open jobs in claim order); 6 —
/// `orch_events.fence` (the [`Fence`] each event was appended under); 7 —
/// `orch_events.writer` (who appended it, as [`Written`] says).
pub const PG_SCHEMA_VERSION: i64 = 7;

/// Migration `i` takes the schema from version `i` to `i + 1`: the
/// tables it makes (a table of such a name that is already there is not
/// orch's, and is refused rather than written into) and its SQL.
const MIGRATIONS: &[(&[&str], &str)] = &[
    // 1
    (
        &["orch_runs", "orch_events"],
        "CREATE TABLE orch_runs (
        n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run text NOT NULL UNIQUE,
        created_at bigint NOT NULL,
        last_seq bigint NOT NULL DEFAULT 0
     );
     CREATE TABLE orch_events (
        run bigint NOT NULL REFERENCES orch_runs (n),
        seq bigint NOT NULL,
        id bytea NOT NULL,
        body text NOT NULL,
        PRIMARY KEY (run, seq),
        UNIQUE (run, id)
     );",
    ),
    // 2
    (
        &["orch_leases"],
        "CREATE TABLE orch_leases (
        run text NOT NULL,
        ticket text NOT NULL,
        worker text NOT NULL,
        token bigint NOT NULL,
        expires_at bigint NOT NULL,
        PRIMARY KEY (run, ticket)
     );
     CREATE FUNCTION orch_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
        AS 'SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint';",
    ),
    // 3: each run's lock epoch, moved on by every lock_run; fenced
    // appends read it FOR SHARE, so a takeover waits for them.
    (
        &["orch_epochs"],
        "CREATE TABLE orch_epochs (
        run text PRIMARY KEY,
        epoch bigint NOT NULL,
        holder text NOT NULL DEFAULT '',
        renewed_at bigint NOT NULL DEFAULT 0
     );",
    ),
    // 4: the job queue, which replaces the ticket leases (nothing used
    // them). `token` fences a claim; `worker` is the claimant's JSON
    // `DriverInfo`; times are `orch_now_ms()`.
    (
        &["orch_jobs"],
        "DROP TABLE IF EXISTS orch_leases;
     CREATE TABLE orch_jobs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run text NOT NULL,
        key text NOT NULL,
        work text NOT NULL,
        role text,
        priority integer NOT NULL,
        max_takeovers integer NOT NULL,
        state text NOT NULL DEFAULT 'available'
           CHECK (state IN ('available', 'running', 'done', 'cancelled')),
        token bigint NOT NULL DEFAULT 0,
        takeovers integer NOT NULL DEFAULT 0,
        worker text,
        renewed_at bigint,
        expires_at bigint NOT NULL DEFAULT 0,
        finished_at bigint,
        UNIQUE (run, key)
     );
     CREATE INDEX orch_jobs_open ON orch_jobs (priority, id)
        WHERE state IN ('available', 'running');",
    ),
    // 5: a worker of one run claims by walking that run's open jobs, not
    // every run's.
    (
        &[],
        "CREATE INDEX orch_jobs_run_open ON orch_jobs (run, priority, id)
        WHERE state IN ('available', 'running');",
    ),
    // 6: what each event was appended under (`Fence`'s text), so that
    // who wrote what can be checked after the fact.
    (&[], "ALTER TABLE orch_events ADD COLUMN fence text;"),
    // 7: who appended each event (the process's JSON `DriverInfo`).
    (&[], "ALTER TABLE orch_events ADD COLUMN writer text;"),
];

/// Who wrote an event, as [`PgStore::fences`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The event's seq.
    pub seq: u64,
    /// What it was appended under: `None` for an append under no fence
    /// (`orch decide`'s answer, say) and for events written before schema
    /// version 6.
    pub fence: Option<Fence>,
    /// The process that appended it (host, pid, start), read in the
    /// append's transaction from the fence's holder: the worker holding
    /// the claim, or the driver holding the epoch: what that process said
    /// of itself when it claimed the job or took the run. `None` with no
    /// fence, and for events written before schema version 7 (or, after
    /// it, by an older orch still connected).
    pub writer: Option<orch_core::DriverInfo>,
}

/// What an event was appended under, as [`PgStore::fences`] reads it
/// back: the run's lock epoch (a driver or coordinator), or a worker's
/// claim of a job. An append under a fence is refused, in its
/// transaction, unless the fence is current then; so along a run's
/// journal the epochs never go back, and a job's claims never do.
///
/// ```
/// use orch_state::Fence;
/// let f: Fence = "job 12 claim 3".parse().unwrap();
/// assert_eq!(f, Fence::Claim { job: 12, token: 3 });
/// assert_eq!(Fence::Epoch(4).to_string(), "epoch 4");
/// assert!("claim 3".parse::<Fence>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fence {
    /// The run's lock epoch its holder appended under.
    Epoch(u64),
    /// A worker's claim: the job and the claim's token.
    Claim {
        /// The job.
        job: u64,
        /// The claim's fencing token.
        token: u64,
    },
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fence::Epoch(e) => write!(f, "epoch {e}"),
            Fence::Claim { job, token } => write!(f, "job {job} claim {token}"),
        }
    }
}

impl std::str::FromStr for Fence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s.split(' ').collect();
        let n = |w: &str| w.parse::<u64>().map_err(|_| format!("not a fence: {s:?}"));
        match words[..] {
            ["epoch", e] => Ok(Fence::Epoch(n(e)?)),
            ["job", j, "claim", t] => Ok(Fence::Claim {
                job: n(j)?,
                token: n(t)?,
            }),
            _ => Err(format!("not a fence: {s:?}")),
        }
    }
}

/// The events of a run among the ids `$2`: an append's look-up of what it
/// may be sending again. One look-up of the index (run, id) an id,
/// whatever the planner thinks of the table: asked for `id = ANY($2)`, a
/// planner that takes the table for small (not analyzed yet) reads all the
/// run's events and filters them by id, and every append reads the whole
/// journal while it holds the run's row.
const KNOWN: &str = "SELECT e.id, e.seq, e.body FROM unnest($2::bytea[]) AS k(id)
    CROSS JOIN LATERAL (
      SELECT id, seq, body FROM orch_events
      WHERE run = (SELECT n FROM orch_runs WHERE run = $1) AND id = k.id
      LIMIT 1) e";

/// How long the server keeps a session of the store that sits idle in a
/// transaction before it ends it. A client stops between the statements
/// of one transaction only when something stopped it (frozen, cut off):
/// a live one sends the next at once. The run's row (an append) or a
/// job's (a claim, a renewal) stays locked that long, and everyone who
/// writes to the run, or would take the job over, waits: well under a
/// job's lease and the run lock's.
const IDLE_IN_TRANSACTION: &str = "5s";

/// How long one store call may wait for the server.
const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// How often the holder of a run's lock renews its lease.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a renewal may take before the holder counts its lock as lost
/// (and stops its agents); also the lock connection's TCP user timeout.
const HEARTBEAT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(4);

/// How long after the last renewal a lease still stands. A new holder
/// waits until then, unless the old holder is known to be dead: by then
/// an old holder cut off from the server has counted its lock lost (at
/// most `HEARTBEAT + HEARTBEAT_DEADLINE` after its last good renewal was
/// sent, which is before the server recorded it), stopped its run (the
/// engine drops a run that has not stopped a second after the loss) and
/// so killed its agents; five seconds to spare.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(12);

/// Key of the advisory lock that serialises schema set-up between
/// processes connecting at once ("orch-pg" in ASCII).
const SETUP_LOCK: i64 = 0x006f_7263_682d_7067;

/// A [`StateStore`] in a PostgreSQL database.
///
/// An append is one transaction, committed before `append` returns, so it
/// is as durable as the server makes a commit (with the default
/// `synchronous_commit = on`: flushed to its WAL). Appends to a run lock
/// that run's row, so processes on several machines can append to one
/// journal and its seqs still have no gaps; appends from one `PgStore`
/// go over one connection, one at a time, each its own transaction (a
/// ticket's pipeline appends about twice a phase, so this is a few
/// milliseconds a phase beside agents that take minutes).
///
/// The tables (`orch_meta`, `orch_runs`, `orch_events`, `orch_epochs`,
/// `orch_jobs`)
/// and the function `orch_now_ms()` are created in the connection's
/// schema on first connect; choose another schema with
/// the connection string's `options`, e.g.
/// `postgres://u@host/db?options=-c%20search_path%3Dorch`. A database
/// whose orch schema is newer than this build, or that holds tables of
/// those names that orch did not make, is refused untouched. A connection
/// lost between calls (a server restart, a failover, an idle timeout) is
/// made again by the next call: appends (idempotent by event id) and
/// reads are tried once more on a new connection if the old one fails
/// under them. A call that still cannot reach the server fails with
/// [`StoreErrorKind::Unavailable`] (retryable); lease calls are not
/// repeated, and the next call connects again.
///
/// Connections use TLS (rustls) as libpq's `sslmode` says: `disable` is
/// plain TCP; `prefer` (the default) and `require` encrypt without
/// checking who the server is (the handshake's signature is checked, the
/// certificate is not), `require` failing when the server offers no TLS;
/// `verify-ca` also checks that the server's certificate chains to the
/// system's roots, or to those in the PEM file `sslrootcert` names, and
/// `verify-full` that it names the host too; under these two a server
/// that offers no TLS is refused. A certificate the handshake refuses is
/// an [`StoreErrorKind::Io`] error, not retryable.
///
/// It also implements [`JobQueue`](orch_core::JobQueue), so workers on
/// several machines can share out a run's work: jobs are claimed with
/// `FOR UPDATE SKIP LOCKED` (racing workers never wait on each other's
/// rows), a claim's writes are checked against its token in the journal
/// append's own transaction, and lease times are the server's clock, so
/// the workers' clocks need not agree.
///
/// ```no_run
/// use orch_core::{Event, EventKind, StateStore};
/// # async fn demo() -> Result<(), orch_core::StoreError> {
/// let store = orch_state::PgStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let run = "r1".parse().unwrap();
/// let e = Event::now(EventKind::TicketReady { ticket: "T-1".parse().unwrap() });
/// assert_eq!(store.append(&run, &[e.clone()]).await?, [1]);
/// assert_eq!(store.read(&run, 0, 10).await?[0].event, e);
/// # Ok(()) }
/// ```
pub struct PgStore {
    config: Config,
    /// Makes each connection's TLS (as the string's `sslmode` says).
    tls: MakeRustlsConnect,
    /// The database as messages name it (never the password).
    name: String,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.name)
            .finish_non_exhaustive()
    }
}

/// The task that drives a connection; stopping it (on drop) closes the
/// connection.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A held run lock: its connection, and the task renewing its lease.
/// Dropped, it ends the lease (so the next holder need not wait for it)
/// and then the connection, which frees the advisory lock.
struct LockSession {
    client: Option<Arc<Client>>,
    driver: Option<Driver>,
    heartbeat: tokio::task::JoinHandle<()>,
    run: String,
    epoch: i64,
}

impl Drop for LockSession {
    fn drop(&mut self) {
        self.heartbeat.abort();
        let (client, driver) = (self.client.take(), self.driver.take());
        let (run, epoch) = (std::mem::take(&mut self.run), self.epoch);
        if let (Some(client), Ok(rt)) = (client, tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let end = "UPDATE orch_epochs SET renewed_at = 0 WHERE run = $1 AND epoch = $2";
                let _ = tokio::time::timeout(
                    HEARTBEAT_DEADLINE,
                    client.execute(end, &[&run as &Param<'_>, &epoch]),
                )
                .await;
                drop((client, driver));
            });
        }
    }
}

/// A connection with its statements prepared.
struct Conn {
    client: Client,
    /// Drives the connection; stopped when the connection is dropped.
    _driver: Driver,
    lock_run: Statement,
    new_run: Statement,
    known: Statement,
    insert: Statement,
    advance: Statement,
    read: Statement,
    runs: Statement,
    jobs: jobs::Statements,
    epoch: Statement,
    new_epoch: Statement,
    next_epoch: Statement,
}

/// Names the database: user, host, port, database and the server options
/// (they may choose the schema), no password.
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let db = config.get_dbname().unwrap_or(user);
    match config.get_options() {
        Some(o) if !o.trim().is_empty() => {
            format!("PostgreSQL database `{db}` at {user}@{host}:{port} (options `{o}`)")
        }
        _ => format!("PostgreSQL database `{db}` at {user}@{host}:{port}"),
    }
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL or a libpq
    /// key-value string) and creates or migrates orch's tables.
    ///
    /// # Errors
    /// [`StoreError`]: an unparsable connection string (the message does
    /// not repeat it: it may hold a password); a server that cannot be
    /// reached ([`StoreErrorKind::Unavailable`]); a schema written by a
    /// newer orch ([`StoreErrorKind::TooNew`]) or tables of orch's names
    /// that orch did not make ([`StoreErrorKind::Corrupt`]), both left
    /// untouched.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let store = PgStore::new(url)?;
        *store.conn.lock().await = Some(store.open().await?);
        Ok(store)
    }

    /// What each of `run`'s events was appended under, and by whom, in
    /// the journal's order. What an auditor of a run done by many
    /// processes reads to see that nothing stale was recorded, and which
    /// process wrote each event.
    ///
    /// # Errors
    /// When the server cannot be reached, or a fence or writer is not one
    /// orch writes ([`StoreErrorKind::Corrupt`]).
    pub async fn fences(&self, run: &RunId) -> Result<Vec<Written>, StoreError> {
        let rows = self
            .with_conn_again(move || {
                self.with_conn(async move |c| {
                    c.client
                        .query(
                            "SELECT e.seq, e.fence, e.writer FROM orch_events e
                             JOIN orch_runs r ON r.n = e.run
                             WHERE r.run = $1 ORDER BY e.seq",
                            &[&run.as_str()],
                        )
                        .await
                        .map_err(|x| self.err(&x))
                })
            })
            .await?;
        rows.iter()
            .map(|r| {
                let (seq, fence, writer): (i64, Option<&str>, Option<&str>) =
                    (r.get(0), r.get(1), r.get(2));
                let corrupt = |e: String| {
                    StoreError::new(
                        StoreErrorKind::Corrupt,
                        format!("{}: event {seq} of run {run}: {e}", self.name),
                    )
                };
                let fence = fence.map(str::parse).transpose().map_err(corrupt)?;
                let writer = writer
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|e| corrupt(format!("not a writer: {e}")))?;
                Ok(Written {
                    seq: seq as u64,
                    fence,
                    writer,
                })
            })
            .collect()
    }

    /// A store for the database at `url` that connects (and creates or
    /// migrates the tables) on its first call, not now: to see which
    /// database a URL names ([`PgStore::database`]) before touching it.
    ///
    /// ```
    /// let store = orch_state::PgStore::new("postgres://me:secret@db.example:5433/orch").unwrap();
    /// assert_eq!(store.database(), "PostgreSQL database `orch` at me@db.example:5433");
    /// ```
    ///
    /// # Errors
    /// An unparsable connection string (the message does not repeat it).
    pub fn new(url: &str) -> Result<PgStore, StoreError> {
        let unusable = |e: &dyn std::fmt::Display| {
            StoreError::new(
                StoreErrorKind::Io,
                format!("the PostgreSQL connection string cannot be used: {e}"),
            )
        };
        let (rest, tls) = pg_tls::split(url).map_err(|e| unusable(&e))?;
        let mut config: Config = rest.parse().map_err(|e| unusable(&e))?;
        if tls.verify != pg_tls::Verify::No {
            // TLS or nothing: under `prefer` a server answering that it
            // has no TLS would be talked to in plain text, unchecked.
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        Ok(PgStore {
            name: describe(&config),
            tls: pg_tls::connector(&tls).map_err(|e| unusable(&e))?,
            config,
            conn: Mutex::new(None),
        })
    }

    /// The database, as error messages name it: user, host, port, database
    /// and server options, never the password.
    pub fn database(&self) -> &str {
        &self.name
    }

    fn err(&self, e: &tokio_postgres::Error) -> StoreError {
        // Lost or refused connections, and what the server asks to be
        // tried again, may succeed on another try.
        // (A certificate the TLS handshake refused is not worth another
        // try; other I/O failures may be.)
        let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
        let tls_refused = io
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>());
        let retry = e.is_closed()
            || (io.is_some() && !tls_refused)
            || e.code().is_some_and(|c| {
                let c = c.code();
                c.starts_with("08")
                    || c.starts_with("40")
                    || c.starts_with("57P")
                    || c.starts_with("53")
            });
        let kind = if retry {
            StoreErrorKind::Unavailable
        } else {
            StoreErrorKind::Io
        };
        let why = match e.as_db_error() {
            Some(db) => db.to_string(),
            None => match std::error::Error::source(e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            },
        };
        StoreError::new(kind, format!("{}: {why}", self.name))
    }

    /// A new connection, and the task that drives it.
    async fn session(&self) -> Result<(Client, Driver), StoreError> {
        self.session_with(&self.config, None).await
    }

    /// A new connection made with `config`, and the task that drives it,
    /// which cancels `ended` if the connection ends while it is driven
    /// (the server closed it, the network failed).
    async fn session_with(
        &self,
        config: &Config,
        ended: Option<Cancellation>,
    ) -> Result<(Client, Driver), StoreError> {
        let (client, connection) = config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.err(&e))?;
        let driver = tokio::spawn(async move {
            // Its error reaches the caller through the client's next call.
            let _ = connection.await;
            if let Some(ended) = ended {
                ended.cancel();
            }
        });
        Ok((client, Driver(driver)))
    }

    async fn open(&self) -> Result<Conn, StoreError> {
        let (mut client, driver) = self.session().await?;
        // A client frozen or cut off in the middle of an append holds its
        // run's row (and the epoch, for a share; a job's row, in a claim):
        // the server ends such a session soon, instead of when TCP notices
        // (hours) or the client goes on, so that the run's other writers,
        // a driver taking over and a worker taking the job over are not
        // held up. Older servers without the setting say so; that is fine.
        let _ = client
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'"
            ))
            .await;
        self.set_up(&mut client).await?;
        let prepare = |sql: &'static str, types: &'static [Type]| {
            let client = &client;
            async move {
                client
                    .prepare_typed(sql, types)
                    .await
                    .map_err(|e| self.err(&e))
            }
        };
        Ok(Conn {
            lock_run: prepare(
                "SELECT n, last_seq FROM orch_runs WHERE run = $1 FOR UPDATE",
                &[Type::TEXT],
            )
            .await?,
            new_run: prepare(
                "INSERT INTO orch_runs (run, created_at) VALUES ($1, $2) ON CONFLICT (run) DO NOTHING",
                &[Type::TEXT, Type::INT8],
            )
            .await?,
            known: prepare(
                KNOWN,
                &[Type::TEXT, Type::BYTEA_ARRAY],
            )
            .await?,
            insert: prepare(
                // The writer: the claim's worker (job $6, token $7) or the
                // epoch's holder (epoch $7), both rows locked by this
                // transaction's check that the fence is current. Matched
                // on the fence again: were that ever not so, the writer
                // is left unknown rather than taken from a successor.
                "INSERT INTO orch_events (run, seq, id, body, fence, writer)
                 SELECT $1, s, i, b, $5, CASE
                     WHEN $6::int8 IS NOT NULL THEN
                       (SELECT worker FROM orch_jobs WHERE id = $6 AND token = $7)
                     WHEN $7::int8 IS NOT NULL THEN
                       (SELECT nullif(holder, '') FROM orch_epochs p
                        JOIN orch_runs r ON r.run = p.run WHERE r.n = $1 AND p.epoch = $7)
                   END
                 FROM unnest($2::int8[], $3::bytea[], $4::text[]) AS u(s, i, b)",
                &[
                    Type::INT8,
                    Type::INT8_ARRAY,
                    Type::BYTEA_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TEXT,
                    Type::INT8,
                    Type::INT8,
                ],
            )
            .await?,
            advance: prepare(
                "UPDATE orch_runs SET last_seq = $2 WHERE n = $1",
                &[Type::INT8, Type::INT8],
            )
            .await?,
            read: prepare(
                "SELECT e.seq, e.body FROM orch_events e
                 WHERE e.run = (SELECT n FROM orch_runs WHERE run = $1) AND e.seq > $2
                 ORDER BY e.seq LIMIT $3",
                &[Type::TEXT, Type::INT8, Type::INT8],
            )
            .await?,
            runs: prepare("SELECT run FROM orch_runs ORDER BY n", &[]).await?,
            epoch: prepare(
                "SELECT coalesce((SELECT epoch FROM orch_epochs WHERE run = $1 FOR SHARE), 0)",
                &[Type::TEXT],
            )
            .await?,
            new_epoch: prepare(
                "INSERT INTO orch_epochs (run, epoch) VALUES ($1, 0) ON CONFLICT (run) DO NOTHING",
                &[Type::TEXT],
            )
            .await?,
            // The next epoch, and the lease of the holder before: who, and
            // when it last renewed (the subquery sees the row as it was).
            next_epoch: prepare(
                "UPDATE orch_epochs e
                   SET epoch = e.epoch + 1, holder = $2, renewed_at = orch_now_ms()
                 FROM (SELECT holder, renewed_at FROM orch_epochs WHERE run = $1 FOR UPDATE) old
                 WHERE e.run = $1
                 RETURNING e.epoch, old.holder, old.renewed_at, orch_now_ms()",
                &[Type::TEXT, Type::TEXT],
            )
            .await?,
            jobs: jobs::Statements::prepare(self, &client).await?,
            client,
            _driver: driver,
        })
    }

    /// Creates or migrates the tables, one process at a time.
    async fn set_up(&self, client: &mut Client) -> Result<(), StoreError> {
        let e = |x: tokio_postgres::Error| self.err(&x);
        let tx = client.transaction().await.map_err(e)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK])
            .await
            .map_err(e)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS orch_meta (key text PRIMARY KEY, value bigint NOT NULL)",
        )
        .await
        .map_err(e)?;
        let version: i64 = tx
            .query_opt(
                "SELECT value FROM orch_meta WHERE key = 'schema_version'",
                &[],
            )
            .await
            .map_err(e)?
            .map_or(0, |r| r.get(0));
        if version > PG_SCHEMA_VERSION {
            return Err(StoreError::new(
                StoreErrorKind::TooNew,
                format!(
                    "{}: orch's tables are at schema version {version}, newer than this build \
                     understands ({PG_SCHEMA_VERSION}); use a newer orch (nothing was changed)",
                    self.name
                ),
            ));
        }
        let to_make: Vec<&str> = MIGRATIONS
            .iter()
            .skip(version as usize)
            .flat_map(|m| m.0.iter().copied())
            .collect();
        let theirs: Vec<String> = tx
            .query(
                "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
                &[&to_make],
            )
            .await
            .map_err(e)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !theirs.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "{}: table(s) {} exist but orch did not make them (orch_meta records schema \
                     version {version}, which has no such table); not touching them (choose \
                     another schema with `options=-c search_path=...`)",
                    self.name,
                    theirs.join(", ")
                ),
            ));
        }
        for (v, (_, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(e)?;
            tx.execute(
                "INSERT INTO orch_meta (key, value) VALUES ('schema_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&(v as i64 + 1)],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)
    }

    /// Appends `events` to `run` in one transaction on `c`, in two round
    /// trips: statements sent together run in order on the server, so the
    /// ids are looked up after the run's row is locked. Returns with the
    /// transaction committed, or open (the caller rolls it back) on error.
    async fn append_in(
        &self,
        c: &Conn,
        run: &RunId,
        check: Check<'_>,
        events: &[Encoded],
    ) -> Result<Vec<u64>, StoreError> {
        let e = |x: tokio_postgres::Error| self.err(&x);
        let client = &c.client;
        let name = run.as_str();
        if events.is_empty()
            && let Check::Claim(claim, finish) = check
        {
            // Nothing for the journal: the claim alone (a job finished
            // with no last events), without taking the run's row from the
            // run's appenders.
            client.batch_execute("BEGIN").await.map_err(e)?;
            self.check_claim(c, claim, finish).await?;
            client.batch_execute("COMMIT").await.map_err(e)?;
            return Ok(Vec::new());
        }
        let ids: Vec<&[u8]> = events.iter().map(|x| &x.id[..]).collect();
        let (by_name, by_ids): ([&Param<'_>; 1], [&Param<'_>; 2]) = ([&name], [&name, &ids]);
        // `biased`: sent in this order, so they run in this order. The
        // run's row is locked until commit: appenders of one run, in any
        // process, take turns; other runs are not held up.
        let (begun, mut row, mut found) = tokio::join!(
            biased;
            client.batch_execute("BEGIN"),
            client.query_opt(&c.lock_run, &by_name),
            client.query(&c.known, &by_ids),
        );
        begun.map_err(e)?;
        if row.as_ref().is_ok_and(Option::is_none) {
            // A new run (or one another process is creating: the insert
            // waits for it, and the look-ups after it see its events).
            let now = Timestamp::now().0 as i64;
            let new: [&Param<'_>; 2] = [&name, &now];
            let created = tokio::join!(
                biased;
                client.execute(&c.new_run, &new),
                client.query_opt(&c.lock_run, &by_name),
                client.query(&c.known, &by_ids),
            );
            created.0.map_err(e)?;
            (row, found) = (created.1, created.2);
        }
        let row = row.map_err(e)?.ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Io,
                format!("{}: run {run} could not be created", self.name),
            )
        })?;
        let (n, last): (i64, i64) = (row.get(0), row.get(1));
        // A claim's job finished before: this is its finish sent again,
        // which may store nothing new.
        let mut finished: Option<&Claim> = None;
        let mut lost: Option<StoreError> = None;
        match check {
            Check::Expect(Expect::LastSeq(seq)) if seq != last as u64 => {
                return Err(changed(run, seq, last as u64));
            }
            Check::Claim(claim, finish) => match self.check_claim(c, claim, finish).await {
                Ok(done) => finished = done.then_some(claim),
                // A record sent again after its commit's answer was lost
                // may find the claim lapsed since: all its events stored
                // is its answer. (A finish that committed finds its job
                // done, which `check_claim` accepts.)
                Err(e) if e.kind == StoreErrorKind::Fenced && !finish => lost = Some(e),
                Err(e) => return Err(e),
            },
            Check::Expect(Expect::Epoch(mine)) => {
                // FOR SHARE: a lock_run moving the epoch on waits for this
                // transaction, and this one sees its move if it came first.
                let current: i64 = client
                    .query_one(&c.epoch, &by_name)
                    .await
                    .map_err(e)?
                    .get(0);
                if current as u64 != mine {
                    return Err(fenced(run, mine, current as u64));
                }
            }
            _ => {}
        }
        // Ids of this append already in the journal: the same event sent
        // again keeps its seq; a different one is a conflict.
        let mut known: HashMap<[u8; 16], (i64, Cow<'_, str>)> = HashMap::new();
        for r in found.map_err(e)? {
            let (id, seq, body): (&[u8], i64, String) = (r.get(0), r.get(1), r.get(2));
            let id = <[u8; 16]>::try_from(id).map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Corrupt,
                    format!("{}: event {seq} of run {run} has a malformed id", self.name),
                )
            })?;
            known.insert(id, (seq, Cow::Owned(body)));
        }
        let mut next = last;
        let (mut seqs, mut new_seqs, mut new_ids, mut bodies) = (
            Vec::with_capacity(events.len()),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for x in events {
            if let Some((seq, body)) = known.get(&x.id) {
                if *body != x.body {
                    return Err(conflict(EventId(u128::from_be_bytes(x.id))));
                }
                seqs.push(*seq as u64);
                continue;
            }
            next += 1;
            // A repeat later in this append finds it here.
            known.insert(x.id, (next, Cow::Borrowed(&x.body)));
            seqs.push(next as u64);
            new_seqs.push(next);
            new_ids.push(&x.id[..]);
            bodies.push(x.body.as_str());
        }
        if let Some(claim) = finished
            && next > last
        {
            return Err(jobs::lost(claim, "its job is already finished"));
        }
        if let Some(e) = lost
            && (next > last || events.is_empty())
        {
            return Err(e);
        }
        // Round trip 2: the rows, the run's last seq, the commit. A failed
        // insert aborts the transaction, and COMMIT then rolls it back.
        if next > last {
            let fence = check.fence();
            let (job, held) = match fence {
                Some(Fence::Claim { job, token }) => (Some(jobs::int(job)), Some(jobs::int(token))),
                Some(Fence::Epoch(e)) => (None, Some(jobs::int(e))),
                None => (None, None),
            };
            let fence = fence.map(|f| f.to_string());
            let rows: [&Param<'_>; 7] = [&n, &new_seqs, &new_ids, &bodies, &fence, &job, &held];
            let advance: [&Param<'_>; 2] = [&n, &next];
            let (inserted, advanced, committed) = tokio::join!(
                biased;
                client.execute(&c.insert, &rows),
                client.execute(&c.advance, &advance),
                client.batch_execute("COMMIT"),
            );
            inserted.map_err(e)?;
            advanced.map_err(e)?;
            committed.map_err(e)?;
        } else {
            client.batch_execute("COMMIT").await.map_err(e)?;
        }
        Ok(seqs)
    }

    /// Runs `f` on the connection, connecting first if there is none; a
    /// connection that failed or closed is dropped, so the next call
    /// connects again.
    async fn with_conn<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = None;
            *guard = Some(self.open().await?);
        }
        // Dropped before `f` is done (the caller's future was cancelled),
        // the connection may be mid-transaction: it goes too.
        let mut busy = Busy(&mut guard, true);
        let conn = busy.0.as_mut().expect("connected above");
        // A server or network that goes silent (no reset, no close) must
        // not hold a run forever: past the deadline the call fails and
        // the connection is dropped.
        let result = match tokio::time::timeout(CALL_DEADLINE, f(conn)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "{}: no answer within {} s; the connection is dropped",
                    self.name,
                    CALL_DEADLINE.as_secs()
                ),
            )),
        };
        // A connection-level failure may be seen before the client knows
        // its connection is gone: start afresh either way.
        let lost = matches!(&result, Err(e) if e.kind == StoreErrorKind::Unavailable);
        busy.1 = lost || busy.0.as_ref().is_some_and(|c| c.client.is_closed());
        result
    }

    /// `call` (a [`PgStore::with_conn`]) for calls that may be made twice (appends
    /// are idempotent by event id; reads change nothing): if the
    /// connection it had before the call fails under it (the server or the
    /// network closed it while it was idle), it connects again and tries
    /// once more, instead of failing a run over a connection that went
    /// stale between calls. (It takes the whole `with_conn` call, not the
    /// async closure given to it: a shared `&impl AsyncFn` makes the
    /// `async_trait` futures of the callers fail to be `Send`.)
    async fn with_conn_again<T, F>(&self, call: impl Fn() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let had = self.conn.lock().await.is_some();
        match call().await {
            Err(e) if had && e.kind == StoreErrorKind::Unavailable => call().await,
            result => result,
        }
    }
}

/// The connection slot while a call uses it: emptied on drop if still
/// set (a call that did not finish, or a connection that failed).
struct Busy<'a, 'b>(&'a mut tokio::sync::MutexGuard<'b, Option<Conn>>, bool);

impl Drop for Busy<'_, '_> {
    fn drop(&mut self) {
        if self.1 {
            **self.0 = None;
        }
    }
}

/// A statement parameter.
type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

/// What an append checks in its transaction, after locking its run.
#[derive(Clone, Copy)]
enum Check<'a> {
    /// The caller's [`Expect`].
    Expect(Expect),
    /// A worker's claim is current; `true`: and its job is now done.
    Claim(&'a Claim, bool),
}

impl Check<'_> {
    /// The fence an append under this check is recorded under.
    fn fence(self) -> Option<Fence> {
        match self {
            Check::Claim(claim, _) => Some(Fence::Claim {
                job: claim.job,
                token: claim.token,
            }),
            Check::Expect(Expect::Epoch(e)) => Some(Fence::Epoch(e)),
            Check::Expect(_) => None,
        }
    }
}

impl PgStore {
    /// Appends `events` to `run` if `check` holds, in one transaction
    /// (tried again on a new connection when the old one was lost).
    async fn append_checked(
        &self,
        run: &RunId,
        check: Check<'_>,
        events: &[Event],
    ) -> Result<Vec<u64>, StoreError> {
        let encoded = encode(events)?;
        let encoded = &encoded;
        self.with_conn_again(move || {
            self.with_conn(async move |c| {
                let result = self.append_in(c, run, check, encoded).await;
                if result.is_err() {
                    // A conflict found nothing to write; a failed statement
                    // left the transaction aborted. Either way, end it (if
                    // this fails too, the connection is dropped).
                    c.client
                        .batch_execute("ROLLBACK")
                        .await
                        .map_err(|x| self.err(&x))?;
                }
                result
            })
        })
        .await
    }
}

#[async_trait]
impl StateStore for PgStore {
    async fn append_if(
        &self,
        run: &RunId,
        expect: Expect,
        events: &[Event],
    ) -> Result<Vec<u64>, StoreError> {
        if events.is_empty() && expect == Expect::Any {
            return Ok(Vec::new());
        }
        self.append_checked(run, Check::Expect(expect), events)
            .await
    }

    async fn read(
        &self,
        run: &RunId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .with_conn_again(move || {
                self.with_conn(async move |c| {
                    c.client
                        .query(&c.read, &[&run.as_str(), &after, &limit])
                        .await
                        .map_err(|x| self.err(&x))
                })
            })
            .await?;
        rows.iter()
            .map(|r| {
                let (seq, body): (i64, &str) = (r.get(0), r.get(1));
                Ok(StoredEvent {
                    seq: seq as u64,
                    event: decode(&self.name, run, seq, body)?,
                })
            })
            .collect()
    }

    /// The run's lock is a PostgreSQL session advisory lock, keyed by the
    /// schema and the run, held by a connection of its own (its
    /// `application_name` says `orch run <run>`, after the connection
    /// string's own name if it has one), and a lease in `orch_epochs`:
    ///
    /// * Taking it moves the run's epoch on (fencing: the appends of
    ///   whoever held it before are refused from then on) and records the
    ///   new holder.
    /// * The holder renews the lease every 2 s on the lock's connection; a
    ///   renewal that fails or finds the epoch moved on, or no good
    ///   renewal within 6 s of the last good one's sending, counts as the
    ///   lock lost: [`RunLock::lost`] says so, and the engine stops its
    ///   agents and the run.
    /// * A new holder that finds the previous lease renewed less than
    ///   [`LEASE`] ago waits until it runs out, unless the previous
    ///   holder is known to be dead (a process of this machine that is
    ///   gone): a holder cut off from the server (a network partition, a
    ///   connection the server dropped but the holder did not see close)
    ///   has by then stopped its agents. Letting go of the lock ends the
    ///   lease at once.
    ///
    /// The server frees the advisory lock when the connection closes.
    async fn lock_run(&self, run: &RunId) -> Result<RunLock, StoreError> {
        let mut config = self.config.clone();
        let name = match config.get_application_name() {
            Some(own) => format!("{own} (orch run {run})"),
            None => format!("orch run {run}"),
        };
        config
            .application_name(&name)
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30))
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(HEARTBEAT_DEADLINE);
        let ended = Cancellation::new();
        // A server or network that goes silent here (no reset, no close)
        // is a failure to take the lock, not a wait without end.
        let taking = async {
            let (client, driver) = self.session_with(&config, Some(ended.clone())).await?;
            // This connection idles between renewals: a server-side
            // `idle_session_timeout` (PostgreSQL 14 on) must not close
            // it. Not for this session (older servers have no such
            // setting, and say so; that is fine).
            let _ = client.batch_execute("SET idle_session_timeout = 0").await;
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('orch/' || s || '/' || $1),
                                                 hashtext($1 || '/' || s))
                     FROM coalesce(current_schema(), '') AS s",
                    &[&run.as_str()],
                )
                .await
                .map_err(|e| self.err(&e))?
                .try_get(0)
                .map_err(|e| self.err(&e))?;
            Ok::<_, StoreError>((client, driver, got))
        };
        let Ok(taken) = tokio::time::timeout(CALL_DEADLINE, taking).await else {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "{}: no answer within {} s taking run {run}'s lock",
                    self.name,
                    CALL_DEADLINE.as_secs()
                ),
            ));
        };
        let (client, driver, got) = taken?;
        if !got {
            return Err(StoreError::new(
                StoreErrorKind::Locked,
                format!(
                    "run {run} is being driven by another engine (a session of {} holds the \
                     run's advisory lock); wait for it to stop, or stop it",
                    self.name
                ),
            ));
        }
        // A new epoch, on the store's own connection (which has set the
        // tables up), with the lease of whoever held the run before.
        let me = orch_core::process::scope().describe();
        let holder = serde_json::to_string(&me).unwrap_or_default();
        let row = self
            .with_conn(async |c| {
                c.client
                    .execute(&c.new_epoch, &[&run.as_str()])
                    .await
                    .map_err(|x| self.err(&x))?;
                c.client
                    .query_one(&c.next_epoch, &[&run.as_str(), &holder])
                    .await
                    .map_err(|x| self.err(&x))
            })
            .await?;
        let (epoch, before, renewed, now): (i64, String, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let before: Option<orch_core::DriverInfo> = serde_json::from_str(&before).ok();
        let dead = before
            .as_ref()
            .and_then(orch_core::process::driver_alive)
            .is_some_and(|alive| !alive);
        let left = renewed + LEASE.as_millis() as i64 - now;
        if renewed > 0 && left > 0 && !dead {
            tracing::warn!(
                run = %run,
                wait_ms = left,
                "the run's previous driver renewed its lease {} ms ago and may still be running \
                 (cut off from the database): waiting until its lease runs out",
                now - renewed
            );
            tokio::time::sleep(std::time::Duration::from_millis(left as u64)).await;
        }
        let renew = "UPDATE orch_epochs SET renewed_at = orch_now_ms() \
                     WHERE run = $1 AND epoch = $2 RETURNING 1";
        // Renewed now (the wait may have outlasted the lease taken with the
        // epoch): the deadlines count from this renewal's sending.
        let sent = tokio::time::Instant::now();
        let renewed = client
            .query_opt(renew, &[&run.as_str() as &Param<'_>, &epoch])
            .await
            .map_err(|e| self.err(&e))?;
        if renewed.is_none() {
            return Err(StoreError::new(
                StoreErrorKind::Locked,
                format!("run {run} was taken by another driver while this one waited for it"),
            ));
        }
        let client = Arc::new(client);
        let heartbeat = {
            let (client, ended, run) = (client.clone(), ended.clone(), run.to_string());
            tokio::spawn(async move {
                // Lost unless a renewal succeeds within HEARTBEAT +
                // HEARTBEAT_DEADLINE of when the last good one was sent.
                let mut last_good = sent;
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    let now = tokio::time::Instant::now();
                    let left =
                        (last_good + HEARTBEAT + HEARTBEAT_DEADLINE).saturating_duration_since(now);
                    let renewed = tokio::time::timeout(
                        left,
                        client.query_opt(renew, &[&run as &Param<'_>, &epoch]),
                    )
                    .await;
                    if matches!(renewed, Ok(Ok(Some(_)))) {
                        last_good = now;
                    } else {
                        ended.cancel();
                        return;
                    }
                }
            })
        };
        let why = format!(
            "the connection to {} that held it closed or stopped answering, or another driver took the run",
            self.name
        );
        Ok(RunLock::new(LockSession {
            client: Some(client),
            driver: Some(driver),
            heartbeat,
            run: run.to_string(),
            epoch,
        })
        .lost_on(ended, why)
        .with_epoch(epoch as u64))
    }

    async fn runs(&self) -> Result<Vec<RunId>, StoreError> {
        let rows = self
            .with_conn_again(|| {
                self.with_conn(async |c| {
                    c.client.query(&c.runs, &[]).await.map_err(|x| self.err(&x))
                })
            })
            .await?;
        rows.iter()
            .map(|r| {
                let name: &str = r.get(0);
                name.parse().map_err(|x| {
                    StoreError::new(
                        StoreErrorKind::Corrupt,
                        format!(
                            "{}: run name {name:?} is not a valid run id: {x}",
                            self.name
                        ),
                    )
                })
            })
            .collect()
    }
}

/// The plans PostgreSQL makes for the statements that run on every append
/// and every claim, on tables as a run leaves them (thousands of events
/// and jobs, most jobs finished, another run's open jobs first in line,
/// never analyzed): each must go to its rows by index, never read the
/// whole journal or every job.
#[cfg(test)]
mod plans {
    use std::time::Duration;

    use orch_core::{DriverInfo, Event, EventId, EventKind, Expect, JobQueue, NewJob, Work};
    use orch_core::{Runs, StateStore, Timestamp};

    use super::{KNOWN, PgStore, jobs};

    fn ready(i: u128) -> Event {
        Event {
            id: EventId(i),
            at: Timestamp(1_700_000_000_000),
            kind: EventKind::TicketReady {
                ticket: format!("T-{i}").parse().expect("id"),
            },
        }
    }

    /// `EXPLAIN ANALYZE` of `execute` (of a statement `prepare` made), as
    /// text, in either plan cache mode.
    async fn explain(c: &tokio_postgres::Client, begin: &str, execute: &str) -> String {
        let mut text = String::new();
        for mode in ["force_generic_plan", "force_custom_plan"] {
            c.batch_execute(&format!("{begin}; SET LOCAL plan_cache_mode = {mode}"))
                .await
                .expect("begin");
            for row in c
                .query(&format!("EXPLAIN (ANALYZE, COSTS OFF) {execute}"), &[])
                .await
                .expect("explain")
            {
                text.push_str(row.get::<_, &str>(0));
                text.push('\n');
            }
            c.batch_execute("ROLLBACK").await.expect("rollback");
        }
        text
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: ORCH_TEST_DATABASE_URL (.ci/run sets it)"]
    async fn appends_and_claims_go_by_index_on_a_run_as_it_stands() {
        let base = std::env::var("ORCH_TEST_DATABASE_URL").expect("ORCH_TEST_DATABASE_URL");
        let schema = format!("orch_plans_{}", std::process::id());
        let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
                 SET search_path = {schema}"
            ))
            .await
            .expect("schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let store = PgStore::connect(&format!("{base}{sep}options=-c%20search_path%3D{schema}"))
            .await
            .expect("store");
        // Another run's open jobs, first in claim order.
        let other = "other".parse().expect("run");
        let held = store.lock_run(&other).await.expect("lock");
        let work = Work::Phase {
            ticket: "T-1".parse().expect("id"),
            phase: "p".parse().expect("phase"),
        };
        let theirs: Vec<NewJob> = (0..2000)
            .map(|i| NewJob::new(format!("k{i}"), work.clone()))
            .collect();
        for chunk in theirs.chunks(500) {
            store
                .enqueue(&other, held.epoch().expect("epoch"), chunk)
                .await
                .expect("enqueue");
        }
        drop(held);
        let run = "r".parse().expect("run");
        for chunk in 0..20u128 {
            let events: Vec<Event> = (0..200).map(|i| ready(1 + chunk * 200 + i)).collect();
            store
                .append_if(&run, Expect::Any, &events)
                .await
                .expect("append");
        }
        let lock = store.lock_run(&run).await.expect("lock");
        let epoch = lock.epoch().expect("epoch");
        let jobs: Vec<NewJob> = (0..3000)
            .map(|i| NewJob::new(format!("k{i}"), work.clone()))
            .collect();
        for chunk in jobs.chunks(500) {
            store.enqueue(&run, epoch, chunk).await.expect("enqueue");
        }
        let me = DriverInfo {
            host: "h".into(),
            boot: "b".into(),
            pid: 1,
            start: 1,
            containment: "none".into(),
        };
        for _ in 0..1000 {
            let job = store
                .claim(&me, Runs::Only(&run), &[], Duration::from_secs(60))
                .await
                .expect("claim")
                .expect("a job");
            store.finish(&job.claim, &[]).await.expect("finish");
        }

        admin
            .batch_execute(&format!(
                "PREPARE known(text, bytea[]) AS {KNOWN};
                 PREPARE claim(text, text[], int8, text) AS {};
                 PREPARE claim_any(text, text[], int8, text[]) AS {}",
                jobs::claim_sql(true),
                jobs::claim_sql(false)
            ))
            .await
            .expect("prepare");
        // An id the journal has and one it has not.
        let had = format!("{:032x}", 1500u128);
        let known = explain(
            &admin,
            "BEGIN",
            &format!(
                "EXECUTE known('r', ARRAY['\\x{had}'::bytea, '\\x{:032x}'::bytea])",
                99_999u128
            ),
        )
        .await;
        assert!(
            known.contains("Index Scan using orch_events_run_id_key")
                && !known.contains("Rows Removed by Filter")
                && !known.contains("Bitmap"),
            "an append's look-up of its ids reads more than its ids:\n{known}"
        );
        let claim = explain(
            &admin,
            jobs::CLAIM_BEGIN,
            "EXECUTE claim('{}', '{}', 60000, 'r')",
        )
        .await;
        assert!(
            claim.contains("Index Scan using orch_jobs_run_open")
                && !claim.contains("Rows Removed by Filter")
                && !claim.contains("Sort")
                && !claim.contains("Bitmap")
                && !claim.contains("Seq Scan"),
            "a claim of run r reads and sorts more than its next job:\n{claim}"
        );
        let any = explain(
            &admin,
            jobs::CLAIM_BEGIN,
            "EXECUTE claim_any('{}', '{}', 60000, '{other}')",
        )
        .await;
        assert!(
            any.contains("Index Scan using orch_jobs_open")
                && !any.contains("Sort")
                && !any.contains("Bitmap")
                && !any.contains("Seq Scan"),
            "a claim of any run reads and sorts more than the next job:\n{any}"
        );
        drop(lock);
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .expect("drop");
    }
}
