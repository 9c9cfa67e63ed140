//! The [`JobQueue`] contract: work a run's coordinator hands to workers on
//! other machines, claimed under leases and fenced by claim tokens.
//!
//! A coordinator puts jobs in the queue under its hold on the run (its
//! [`RunLock::epoch`](crate::RunLock::epoch)); a worker claims the next
//! one it can do, renews its lease while it works, appends what happens to
//! the run's journal under its claim, and finishes the job in the same
//! transaction as its last append. A worker that lost its claim (its lease
//! lapsed and another worker took the job, or the job was cancelled)
//! writes nothing more: every write checks the claim's token where the
//! journal is written, not in the worker's memory.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    BatchId, DriverInfo, Event, PhaseName, RoleName, RunId, StoreError, TicketId, Timestamp,
};

/// What a job asks a worker to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Work {
    /// Run one phase of a ticket (its attempts, retries with feedback,
    /// gates and checkpoint) from the ticket's last checkpoint.
    Phase {
        /// The ticket.
        ticket: TicketId,
        /// The phase.
        phase: PhaseName,
    },
    /// Merge a batch's tickets and run its gates.
    Merge {
        /// The batch.
        batch: BatchId,
    },
}

impl std::fmt::Display for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Phase { ticket, phase } => write!(f, "{ticket}/{phase}"),
            Work::Merge { batch } => write!(f, "merge {batch}"),
        }
    }
}

/// A job to put in the queue ([`JobQueue::enqueue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Names the job within its run: enqueueing a key the run already has
    /// adds nothing (so a coordinator that restarts may enqueue again).
    pub key: String,
    /// What to do.
    pub work: Work,
    /// The role a worker must serve to take it; `None`: any worker.
    pub role: Option<RoleName>,
    /// Lower goes first (the coordinator's dispatch order).
    pub priority: i32,
    /// How many times the job may be taken over after a worker's lease
    /// lapsed; after that it is [`JobState::Abandoned`], for the
    /// coordinator to fail or escalate, rather than killing every worker
    /// that takes it.
    pub max_takeovers: u32,
}

impl NewJob {
    /// A job for `work` keyed by `key`, for any role, priority 0, taken
    /// over at most 3 times.
    pub fn new(key: impl Into<String>, work: Work) -> Self {
        NewJob {
            key: key.into(),
            work,
            role: None,
            priority: 0,
            max_takeovers: 3,
        }
    }
}

/// Whose jobs a [`JobQueue::claim`] may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs<'a> {
    /// Any run's.
    Any,
    /// Only this run's.
    Only(&'a RunId),
    /// Any run's but these (runs the worker cannot do, such as one whose
    /// plan its clone does not have).
    Except(&'a [RunId]),
}

/// One worker's hold on one job. Every write the worker makes names it,
/// and is refused ([`StoreErrorKind::Fenced`](crate::StoreErrorKind::Fenced))
/// once the claim is no longer current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The job.
    pub job: u64,
    /// Its run.
    pub run: RunId,
    /// Fencing token: grows with every claim of the job, so a worker whose
    /// lease lapsed is told apart from the one that took the job over.
    pub token: u64,
    /// When the lease lapses unless renewed (the store's clock).
    pub expires_at: Timestamp,
}

/// A claimed job: the claim, and the work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The claim; pass it to every write.
    pub claim: Claim,
    /// The job's key in its run.
    pub key: String,
    /// What to do.
    pub work: Work,
    /// The role it was enqueued for.
    pub role: Option<RoleName>,
    /// How many times it was taken over from a worker whose lease lapsed
    /// (a job given back is not taken over).
    pub takeovers: u32,
}

/// Where a job stands ([`JobInfo::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a worker.
    Available,
    /// Claimed, its lease current.
    Running,
    /// Claimed, its lease lapsed: the next claim takes it over.
    Lapsed,
    /// Lapsed with no takeovers left: no worker will take it.
    Abandoned,
    /// Finished by its worker.
    Done,
    /// Cancelled by the coordinator.
    Cancelled,
}

/// A job as [`JobQueue::jobs`] lists it, for `orch status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// The job.
    pub id: u64,
    /// Its key in its run.
    pub key: String,
    /// What it does.
    pub work: Work,
    /// Where it stands.
    pub state: JobState,
    /// The worker that claimed it last, if any.
    pub worker: Option<DriverInfo>,
    /// The current claim's token (0: never claimed).
    pub token: u64,
    /// Takeovers so far.
    pub takeovers: u32,
    /// When the last claim renewed its lease (or claimed).
    pub renewed_at: Option<Timestamp>,
    /// When the lease lapses.
    pub expires_at: Timestamp,
    /// The store's clock when this was read: lease ages are measured
    /// against it, not against the reader's clock.
    pub now: Timestamp,
}

/// A queue of jobs beside the journal, in the same store, so that a job's
/// outcome and its journal entry are one transaction.
///
/// # Contract
///
/// * [`enqueue`](JobQueue::enqueue) stores jobs only while `epoch` is
///   the run's latest (no later [`lock_run`](crate::StateStore::lock_run)
///   took it; else `Fenced`), and is idempotent by key: the same job again
///   adds nothing, another job under a key the run has is a `Conflict`.
/// * [`claim`](JobQueue::claim) gives a job to at most one worker at a
///   time (workers racing on separate connections included): an available
///   job, or one whose lease lapsed with takeovers left, with a larger
///   token than any claim of it before. Times are the store's clock.
/// * [`renew`](JobQueue::renew) extends the lease only while the claim
///   is current and its lease has not lapsed.
/// * [`record`](JobQueue::record) appends to the claim's run only while
///   the claim is current and its lease has not lapsed, checked in the
///   append's transaction; [`finish`](JobQueue::finish) does the same and
///   marks the job done in that transaction. Sent again after a lost
///   answer, either returns the events' seqs and stores nothing twice.
/// * [`give_back`](JobQueue::give_back) makes a claimed job available at
///   once, not counted as a takeover, while its lease has not lapsed (a
///   worker that hung past its lease cannot revive an abandoned job).
/// * A call sent again after its answer was lost (the store may repeat
///   it on a new connection) is answered as the first one was, where it
///   can be told: a `record` or `finish` whose events are all stored
///   returns their seqs even if the claim has lapsed since.
/// * [`cancel`](JobQueue::cancel) ends a run's unfinished jobs (their
///   claims stop being current).
///
/// # Example
///
/// A worker's loop (`store` is a [`PgStore`], orch-state's implementation):
///
/// ```no_run
/// use std::time::Duration;
/// use orch_core::{Event, EventKind, JobQueue, Runs, Work};
/// # async fn work(store: &dyn JobQueue, me: &orch_core::DriverInfo) -> Result<(), orch_core::StoreError> {
/// let lease = Duration::from_secs(30);
/// while let Some(job) = store.claim(me, Runs::Any, &[], lease).await? {
///     // ... run the work, calling `store.renew(&job.claim, lease)` every
///     // few seconds and stopping at once if it returns `None` ...
///     if let Work::Phase { ticket, .. } = &job.work {
///         let done = Event::now(EventKind::TicketDone { ticket: ticket.clone() });
///         store.finish(&job.claim, &[done]).await?;
///     }
/// }
/// # Ok(()) }
/// ```
///
/// [`PgStore`]: https://docs.rs/orch-state/latest/orch_state/struct.PgStore.html
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Adds `jobs` to `run`'s queue, if `run` is still held under `epoch`,
    /// and returns each job's id (the existing one for a key the run
    /// already has).
    ///
    /// # Errors
    /// [`StoreErrorKind::Fenced`](crate::StoreErrorKind::Fenced) when a
    /// newer holder took the run; [`StoreError`] otherwise. On error
    /// nothing was added.
    async fn enqueue(
        &self,
        run: &RunId,
        epoch: u64,
        jobs: &[NewJob],
    ) -> Result<Vec<u64>, StoreError>;

    /// Claims the next job (lowest priority, then oldest) of `runs` that
    /// `worker` can do (`roles` empty: any), for `lease`. `Ok(None)` when
    /// there is none.
    ///
    /// # Errors
    /// [`StoreErrorKind::TooNew`](crate::StoreErrorKind::TooNew) when the
    /// next job's work is of a kind this build does not know (the job is
    /// left unclaimed, for a newer worker; claiming from more than one
    /// run, a store may pass over that run and claim another's instead);
    /// [`StoreError`] when the store cannot be reached.
    async fn claim(
        &self,
        worker: &DriverInfo,
        runs: Runs<'_>,
        roles: &[RoleName],
        lease: Duration,
    ) -> Result<Option<Job>, StoreError>;

    /// Extends `claim`'s lease to `lease` from now; `Ok(None)` when the
    /// claim is no longer current (the worker must stop the work at once).
    ///
    /// A worker renews on a store value of its own (a connection not busy
    /// with its appends), and counts its lease as ending `lease` after it
    /// *sent* its last good renewal, on its own clock: past that it stops
    /// its work whether or not the store answered.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached: the worker cannot
    /// tell whether it still holds the job, and must stop before its
    /// lease lapses.
    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<Option<Timestamp>, StoreError>;

    /// Appends `events` to the claim's run while the claim is current.
    ///
    /// # Errors
    /// [`StoreErrorKind::Fenced`](crate::StoreErrorKind::Fenced) when it
    /// is not; [`StoreError`] otherwise. On error nothing was stored.
    async fn record(&self, claim: &Claim, events: &[Event]) -> Result<Vec<u64>, StoreError>;

    /// Appends `events` and marks the job done, in one transaction, while
    /// the claim is current.
    ///
    /// # Errors
    /// As [`record`](JobQueue::record); on error the job is not done.
    async fn finish(&self, claim: &Claim, events: &[Event]) -> Result<Vec<u64>, StoreError>;

    /// Makes the job available again at once (a worker shutting down);
    /// `Ok(false)` when the claim was no longer current or its lease had
    /// lapsed.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    async fn give_back(&self, claim: &Claim) -> Result<bool, StoreError>;

    /// Cancels `run`'s unfinished jobs, if `run` is still held under
    /// `epoch`, and returns how many.
    ///
    /// # Errors
    /// As [`enqueue`](JobQueue::enqueue).
    async fn cancel(&self, run: &RunId, epoch: u64) -> Result<u64, StoreError>;

    /// `run`'s jobs, oldest first.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn jobs(&self, run: &RunId) -> Result<Vec<JobInfo>, StoreError>;

    /// Job `id`, if there is one.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    async fn job(&self, id: u64) -> Result<Option<JobInfo>, StoreError>;
}
