//! The [`StateStore`] contract: a durable, ordered journal of events per run.

use async_trait::async_trait;

use crate::{Event, RunId, RunState};

/// An event as stored: its position in the run's journal and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// 1-based position in the run's journal, without gaps.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The storage could not be read or written (disk full, connection lost).
    Io,
    /// The stored data is damaged or not a journal of this program.
    Corrupt,
    /// The database was written by a newer version of orch.
    TooNew,
    /// An event id was re-used for a different event.
    Conflict,
    /// The run does not exist.
    NotFound,
    /// The store is busy or temporarily unreachable.
    Unavailable,
    /// The run is being driven by someone else: another engine (in this
    /// process or another) holds its [`RunLock`].
    Locked,
    /// A conditional append ([`StateStore::append_if`]) found the journal
    /// changed since the state it was decided against was read
    /// ([`Expect::LastSeq`]): nothing was stored; read again and decide
    /// again.
    Changed,
    /// A write from a holder that is no longer current: a driver whose
    /// run a newer driver took ([`Expect::Epoch`]), or a worker whose claim
    /// on a job lapsed, was taken over or cancelled
    /// ([`JobQueue`](crate::JobQueue)). Nothing was stored, and the holder
    /// must stop.
    Fenced,
}

/// What must hold, checked by the store in the same transaction as the
/// append, for [`StateStore::append_if`] to store anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expect {
    /// Nothing: a plain append.
    Any,
    /// The run's journal ends at this seq (0: it has no events): nothing
    /// was appended since the state the append was decided against was
    /// read. Else [`StoreErrorKind::Changed`].
    LastSeq(u64),
    /// The run is held under this epoch ([`RunLock::epoch`]): no later
    /// [`StateStore::lock_run`] took it since. Else
    /// [`StoreErrorKind::Fenced`]. A run never locked has epoch 0.
    Epoch(u64),
}

/// A store operation failed. Nothing already persisted is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state store: {message}")]
pub struct StoreError {
    /// What went wrong, for the engine.
    pub kind: StoreErrorKind,
    /// What went wrong, for a person (names the file or database).
    pub message: String,
}

impl StoreError {
    /// An error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Unavailable)
    }
}

/// A durable, ordered journal of events, one per run.
///
/// # Contract
///
/// * **Durable**: when `append` returns `Ok`, the events survive a crash of
///   the process (and, for disk-backed stores, of the machine).
/// * **Ordered, no gaps**: events of a run get consecutive `seq` numbers
///   from 1 in the order of `append` calls; a batch is appended atomically,
///   all or nothing.
/// * **Idempotent**: appending an event whose [`EventId`](crate::EventId) is
///   already in the run's journal stores nothing and returns the `seq` it
///   already has; re-using an id for a different event is
///   [`StoreErrorKind::Conflict`].
/// * `state` equals folding `read(run, 0, ..)` with [`RunState::apply`].
/// * **Conditional**: [`append_if`](StateStore::append_if) checks its
///   [`Expect`] atomically with the append (a decision is recorded only
///   against the journal it was decided on; a driver whose lock a newer
///   one took writes nothing). The condition is checked first, even for
///   events already stored.
/// * **Fenced locks**: every [`lock_run`](StateStore::lock_run) of a store
///   that can be shared gives the run a new, larger epoch
///   ([`RunLock::epoch`]).
///
/// # Cancellation
///
/// Dropping an `append` future before it completes may or may not have
/// persisted the batch (never part of it); re-appending the same events is
/// safe because of idempotency.
///
/// # Example
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::Mutex;
/// use async_trait::async_trait;
/// use orch_core::*;
///
/// /// A minimal in-memory store (orch-state has a complete one).
/// #[derive(Default)]
/// struct VecStore(Mutex<BTreeMap<RunId, Vec<Event>>>);
///
/// #[async_trait]
/// impl StateStore for VecStore {
///     async fn append_if(&self, run: &RunId, expect: Expect, events: &[Event]) -> Result<Vec<u64>, StoreError> {
///         let mut runs = self.0.lock().unwrap();
///         let journal = runs.entry(run.clone()).or_default();
///         match expect {
///             Expect::LastSeq(seq) if seq != journal.len() as u64 => {
///                 return Err(StoreError::new(StoreErrorKind::Changed, "the journal moved on"));
///             }
///             // This store has no locks: every run stays at epoch 0.
///             Expect::Epoch(e) if e != 0 => {
///                 return Err(StoreError::new(StoreErrorKind::Fenced, "not the current epoch"));
///             }
///             _ => {}
///         }
///         let mut seqs = Vec::new();
///         for e in events {
///             match journal.iter().position(|x| x.id == e.id) {
///                 Some(i) if journal[i] == *e => seqs.push(i as u64 + 1),
///                 Some(_) => return Err(StoreError::new(StoreErrorKind::Conflict, "id reused")),
///                 None => { journal.push(e.clone()); seqs.push(journal.len() as u64) }
///             }
///         }
///         Ok(seqs)
///     }
///     async fn read(&self, run: &RunId, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
///         let runs = self.0.lock().unwrap();
///         Ok(runs.get(run).into_iter().flatten().enumerate()
///             .map(|(i, e)| StoredEvent { seq: i as u64 + 1, event: e.clone() })
///             .filter(|s| s.seq > after).take(limit).collect())
///     }
///     async fn runs(&self) -> Result<Vec<RunId>, StoreError> {
///         Ok(self.0.lock().unwrap().keys().cloned().collect())
///     }
/// }
///
/// let store: std::sync::Arc<dyn StateStore> = std::sync::Arc::new(VecStore::default());
/// let run: RunId = "r1".parse().unwrap();
/// let done = Event::now(EventKind::TicketDone { ticket: "T-1".parse().unwrap() });
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(async {
///     assert_eq!(store.append(&run, &[done.clone()]).await.unwrap(), [1]);
///     assert_eq!(store.append(&run, &[done.clone()]).await.unwrap(), [1]); // idempotent
///     // Decided against a journal of one event: refused once it has more.
///     let skip = Event::now(EventKind::TicketSkipped { ticket: "T-2".parse().unwrap() });
///     assert_eq!(store.append_if(&run, Expect::LastSeq(1), &[skip.clone()]).await.unwrap(), [2]);
///     let late = store.append_if(&run, Expect::LastSeq(1), &[done]).await.unwrap_err();
///     assert_eq!(late.kind, StoreErrorKind::Changed);
///     let state = store.state(&run).await.unwrap();
///     assert_eq!(state.count(TicketStatus::Done), 1);
/// });
/// ```
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Appends `events` to `run`'s journal, atomically and durably, if
    /// `expect` holds at that moment, and returns each event's `seq`.
    ///
    /// # Errors
    /// [`StoreErrorKind::Changed`] or [`StoreErrorKind::Fenced`] when
    /// `expect` does not hold; [`StoreError`] otherwise. On error nothing
    /// of the batch was stored.
    async fn append_if(
        &self,
        run: &RunId,
        expect: Expect,
        events: &[Event],
    ) -> Result<Vec<u64>, StoreError>;

    /// Appends `events` to `run`'s journal, atomically and durably, and
    /// returns each event's `seq`: [`append_if`](StateStore::append_if)
    /// with [`Expect::Any`].
    ///
    /// # Errors
    /// [`StoreError`]; on error nothing of the batch was stored.
    async fn append(&self, run: &RunId, events: &[Event]) -> Result<Vec<u64>, StoreError> {
        self.append_if(run, Expect::Any, events).await
    }

    /// Reads up to `limit` events of `run` with `seq > after`, in order. An
    /// unknown run has no events.
    ///
    /// # Errors
    /// [`StoreError`] when the journal cannot be read.
    async fn read(
        &self,
        run: &RunId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The runs that have a journal.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn runs(&self) -> Result<Vec<RunId>, StoreError>;

    /// Takes `run` for one driver: while the returned [`RunLock`] is held,
    /// another `lock_run` of the same run (from this process or another
    /// one sharing the store) fails with [`StoreErrorKind::Locked`].
    /// Dropping the lock, or the holder's process dying, frees the run.
    /// The engine holds it for the whole of [`Engine::run`], so that two
    /// engines never carry the same tickets at once.
    ///
    /// Reading and appending do not need the lock: `orch decide` appends
    /// to a run that an engine holds, and the engine picks it up.
    ///
    /// The default implementation excludes no one; stores that can be
    /// shared implement it (orch-state's all do).
    ///
    /// [`Engine::run`]: https://docs.rs/orch-graph/latest/orch_graph/struct.Engine.html#method.run
    ///
    /// # Errors
    /// [`StoreErrorKind::Locked`], naming the run and what holds it, when
    /// the run is taken; [`StoreError`] when the store cannot be reached.
    async fn lock_run(&self, run: &RunId) -> Result<RunLock, StoreError> {
        let _ = run;
        Ok(RunLock::unguarded())
    }

    /// The folded state of `run`. The default implementation reads the
    /// whole journal in pages and folds it; stores may keep a snapshot.
    ///
    /// # Errors
    /// [`StoreError`] when the journal cannot be read.
    async fn state(&self, run: &RunId) -> Result<RunState, StoreError> {
        let mut state = RunState::default();
        self.catch_up(run, &mut state, 0).await?;
        Ok(state)
    }

    /// Folds the events of `run` after seq `after` into `state`, and
    /// returns the seq of the last event folded (`after` if there were
    /// none): with [`Expect::LastSeq`], what a conditional append is
    /// decided against. Reads in pages.
    ///
    /// # Errors
    /// [`StoreError`] when the journal cannot be read.
    async fn catch_up(
        &self,
        run: &RunId,
        state: &mut RunState,
        mut after: u64,
    ) -> Result<u64, StoreError> {
        const PAGE: usize = 10_000;
        loop {
            let page = self.read(run, after, PAGE).await?;
            let len = page.len();
            for e in page {
                after = e.seq;
                state.apply_owned(e.event);
            }
            if len < PAGE {
                return Ok(after);
            }
        }
    }
}

/// Proof that one driver has a run: see [`StateStore::lock_run`]. The run
/// is free again when this is dropped.
///
/// A lock held through a connection (PostgreSQL's advisory locks) can be
/// lost while it is held, when that connection goes; a store says so with
/// [`RunLock::lost_on`], and the holder hears of it through
/// [`RunLock::lost`] (the engine stops the run, since another engine may
/// take it from then on).
///
/// ```
/// use orch_core::{Cancellation, RunLock, StoreErrorKind};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let gone = Cancellation::new();
/// let lock = RunLock::new(()).lost_on(gone.clone(), "the database connection closed");
/// assert!(lock.can_be_lost());
/// gone.cancel(); // what the store does when the connection goes
/// let e = lock.lost().await;
/// assert_eq!(e.kind, StoreErrorKind::Unavailable);
/// assert!(e.message.contains("the database connection closed"), "{e}");
/// # });
/// ```
#[must_use = "the run is free again as soon as the lock is dropped"]
pub struct RunLock {
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The run's epoch under this lock, for stores that fence.
    epoch: Option<u64>,
    /// Cancelled by the store when the lock is lost while held, and why.
    lost: Option<(crate::Cancellation, String)>,
}

impl RunLock {
    /// A lock that lasts as long as `held` (a file lock, a database
    /// connection, a guard that takes an entry out of a set on drop).
    pub fn new(held: impl std::any::Any + Send + Sync) -> Self {
        RunLock {
            held: Some(Box::new(held)),
            epoch: None,
            lost: None,
        }
    }

    /// A lock that excludes no one (stores used by one driver only).
    pub fn unguarded() -> Self {
        RunLock {
            held: None,
            epoch: None,
            lost: None,
        }
    }

    /// The run's epoch under this lock: appends made with
    /// [`Expect::Epoch`] of it are stored only while no later lock of the
    /// run was taken (fencing: a driver that lost its lock without
    /// knowing writes nothing).
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// The epoch under which this lock holds the run, if the store fences.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// This lock can be lost while held: the store cancels `signal` when
    /// it is (the connection that holds it closed), `why` saying how.
    pub fn lost_on(mut self, signal: crate::Cancellation, why: impl Into<String>) -> Self {
        self.lost = Some((signal, why.into()));
        self
    }

    /// Whether this lock excludes other drivers.
    pub fn is_guarded(&self) -> bool {
        self.held.is_some()
    }

    /// Whether this lock can be lost while held ([`RunLock::lost_on`]).
    pub fn can_be_lost(&self) -> bool {
        self.lost.is_some()
    }

    /// Completes when the lock is lost while held, with an error of kind
    /// [`StoreErrorKind::Unavailable`] saying how; never, for a lock that
    /// cannot be lost.
    pub async fn lost(&self) -> StoreError {
        match &self.lost {
            Some((signal, why)) => {
                signal.cancelled().await;
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!(
                        "the run's lock was lost ({why}); another engine may drive the run \
                         from now on, so this one stops"
                    ),
                )
            }
            None => std::future::pending().await,
        }
    }
}

impl std::fmt::Debug for RunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLock")
            .field("guarded", &self.is_guarded())
            .field("epoch", &self.epoch)
            .field("can_be_lost", &self.can_be_lost())
            .finish()
    }
}
