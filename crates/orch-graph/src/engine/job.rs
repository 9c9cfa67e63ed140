//! A worker's side of a run shared among machines: one job, claimed from a
//! [`JobQueue`] by the worker, done under its claim ([`Engine::work`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use orch_core::{
    BatchId, Cancellation, EventKind, Job, JobQueue, JobState, NewJob, PhaseName, RunStatus,
    StoreError, StoreErrorKind, TicketId, TicketStatus, Work,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::journal::{Journal, Writer};
use super::ticket::{self, End};
use super::{Engine, EngineError, pipeline_panicked};
use crate::worker::{Kept, keep_claim};

/// How a job a worker took on ([`Engine::work`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Worked {
    /// Done, and marked so in the queue: its phase passed (or had passed
    /// before), or its ticket failed or waits for a person; or its batch
    /// merged or failed. The journal says which.
    Finished,
    /// Finished without doing anything: the journal has the ticket past
    /// the job's phase (it passed, the ticket ended, or it waits for a
    /// person), or the batch merged or failed, so the job was out of date (a coordinator that enqueued
    /// it again, say).
    Superseded,
    /// Handed back unfinished (the caller's `cancel` fired: the worker is
    /// shutting down); another worker takes it up from the last
    /// checkpoint.
    GivenBack,
    /// The claim was lost (taken over, cancelled by the coordinator, or no
    /// renewal answered in time): the work was stopped, and nothing more
    /// was written for it.
    Lost(Kept),
}

/// The claim is no longer current: the store refused a write under it.
fn lost(e: &StoreError) -> bool {
    e.kind == StoreErrorKind::Fenced
}

impl Engine {
    /// Does `job`, which this worker claimed from `queue` (`since`: when
    /// the claim was sent) for a lease of `lease`: one phase of one ticket,
    /// with its agents and gates, or the merge of a batch, with its gates,
    /// in this engine's workspace, writing the run's journal through the
    /// claim, so nothing is written once the claim is lost. The lease is
    /// renewed while the work runs ([`keep_claim`]); the agents and gates
    /// are stopped before it could lapse.
    ///
    /// A phase starts from the ticket's last checkpoint (a job taken over
    /// from a worker that died goes on from there); a phase that passed
    /// already is not run again, nor a batch merged or failed already. A
    /// merge shares its commit through the workspace's remote but leaves
    /// the batch's branch alone: the coordinator sets it to the merge the
    /// journal records ([`Workspace::publish`](orch_core::Workspace::publish)),
    /// so a worker whose claim was lost cannot move it. The engine's store
    /// must be the queue's database: the run's journal is read from it.
    ///
    /// `cancel` stops the work and hands the job back (a worker shutting
    /// down).
    ///
    /// # Errors
    /// [`EngineError::Job`] when the job is not this engine's to do (its
    /// run not started, its ticket, phase or batch not in the plan, or
    /// this engine's workspace at another commit than the run's driver's),
    /// [`EngineError::PlanChanged`] when the run was started with another
    /// plan (in both cases the job is given back first), and
    /// [`EngineError::Store`] when the store fails (the job is left to
    /// lapse, then taken over).
    pub async fn work(
        &self,
        queue: Arc<dyn JobQueue>,
        job: &Job,
        lease: Duration,
        since: Instant,
        cancel: Cancellation,
    ) -> Result<Worked, EngineError> {
        let run = &job.claim.run;
        let refuse = async |message: String| {
            queue.give_back(&job.claim).await?;
            Err(EngineError::Job {
                run: run.clone(),
                key: job.key.clone(),
                message,
            })
        };
        let task = match &job.work {
            Work::Phase { ticket, phase } => {
                let Some(t) = self.graph.index_of(ticket.as_str()) else {
                    return refuse(format!("ticket {ticket} is not in plan {}", self.plan.name))
                        .await;
                };
                if !self.plan.phases.iter().any(|p| p.name == *phase) {
                    return refuse(format!("phase {phase} is not in plan {}", self.plan.name))
                        .await;
                }
                Task::Phase(t, ticket, phase)
            }
            Work::Merge { batch } => {
                if !self.plan.batches.iter().any(|b| b.id == *batch) {
                    return refuse(format!("batch {batch} is not in plan {}", self.plan.name))
                        .await;
                }
                // Its tickets as the coordinator counts them (those it
                // lists and those that name it), in the plan's order.
                let of = self.plan.batch_of();
                let tickets: Vec<TicketId> = (self.plan.tickets.iter())
                    .filter(|t| of.get(&t.id) == Some(&batch))
                    .map(|t| t.id.clone())
                    .collect();
                if tickets.is_empty() {
                    return refuse(format!("batch {batch} has no tickets")).await;
                }
                Task::Merge(batch, tickets)
            }
            other => return refuse(format!("this worker does not do {other}")).await,
        };
        let state = self.journal_now(run).await?;
        if state.status == RunStatus::NotStarted {
            return refuse("the run has not started".into()).await;
        }
        if let Some(e) = self.plan_changed(run, &state) {
            queue.give_back(&job.claim).await?;
            return Err(e);
        }
        // Machines at different commits would build on different code.
        if let (Some(theirs), Some(mine)) = (&state.base, self.workspace.base())
            && *theirs != mine
        {
            let theirs = theirs.clone();
            self.put_back(state);
            return refuse(format!(
                "this machine starts tickets from commit {mine}, the run's driver from \
                 {theirs}: check out {theirs} in this machine's repository"
            ))
            .await;
        }
        if !task.current(&self.plan, &state, &job.key) {
            tracing::info!(%run, key = %job.key, "the job is out of date; finishing it");
            self.put_back(state);
            return finish(&*queue, job, &[], Worked::Superseded).await;
        }
        // Stops the agents and gates: the caller's cancel, a lost claim,
        // the budget; and tells `keep_claim` that the work ended.
        let work = Cancellation::new();
        let (decisions, _) = mpsc::unbounded_channel();
        let journal = Journal::new(
            self.store.clone(),
            run.clone(),
            state,
            self.observers.clone(),
            decisions,
            self.plan.policy.budget.clone(),
            work.clone(),
            Writer::Worker(
                queue.clone(),
                job.claim.clone(),
                orch_core::process::scope().describe(),
            ),
            self.redactor.clone(),
        );
        let shared = self.shared(journal.clone(), work.clone());
        let span = tracing::info_span!("job", run = %run, job = job.claim.job, work = %job.work);
        let doing = async {
            // A job of this worker whose claim was lost may still be
            // winding down (a git its pipeline waits for) on the tree this
            // job is about to take up, say the same ticket's, claimed again
            // by this worker: this one waits for it, its lease renewed.
            let _alone = tokio::select! {
                alone = self.hold(run, &task) => alone,
                // Stopped, or the claim lost, while it waited.
                () = cancel.cancelled() => {
                    work.cancel();
                    return Ok(End::Interrupted);
                }
                () = work.cancelled() => return Ok(End::Interrupted),
            };
            let pipeline: Pin<Box<dyn Future<Output = End> + Send + '_>> = match &task {
                Task::Phase(t, _, phase) => {
                    Box::pin(ticket::run_ticket(&shared, *t, true, Some(phase)))
                }
                Task::Merge(batch, tickets) => Box::pin(async {
                    let merged =
                        ticket::merge_batch(&shared, (*batch).clone(), tickets.clone()).await;
                    match merged {
                        Err(e) => End::Store(e),
                        // Merged or failed; or stopped (gates cancelled)
                        // with neither recorded.
                        Ok(()) if shared.journal.with_state(|s| ended(s, batch)) => End::Done,
                        Ok(()) => End::Interrupted,
                    }
                }),
            };
            let pipeline = AssertUnwindSafe(pipeline).catch_unwind();
            tokio::pin!(pipeline);
            let end = tokio::select! {
                end = &mut pipeline => end,
                () = cancel.cancelled() => {
                    work.cancel();
                    pipeline.await
                }
            };
            work.cancel(); // the work ended: `keep_claim` returns
            end
        };
        let (kept, end) = tokio::join!(
            keep_claim(&*queue, &job.claim, lease, since, &work),
            doing.instrument(span)
        );
        self.put_back(journal.take_state());
        if kept != Kept::Stopped {
            return Ok(Worked::Lost(kept));
        }
        let last = match end {
            Ok(End::Done | End::Failed | End::Escalated | End::Handoff) => Vec::new(),
            // A bug in an agent, gate or workspace fails the ticket (or
            // the batch) alone, as in a driver's run.
            Err(payload) => {
                let reason = journal.redacted(pipeline_panicked(&*payload));
                tracing::error!(work = %job.work, "{reason}");
                vec![journal.event(match &task {
                    Task::Phase(_, ticket, _) => EventKind::TicketFailed {
                        ticket: (*ticket).clone(),
                        reason,
                    },
                    Task::Merge(batch, _) => EventKind::BatchFailed {
                        batch: (*batch).clone(),
                        reason,
                    },
                })]
            }
            Ok(End::Interrupted) => {
                // Cancelled by the caller, or the budget is spent (the
                // coordinator stops the run then): another worker, or a
                // resumed run, takes it up.
                return match queue.give_back(&job.claim).await {
                    Ok(true) => Ok(Worked::GivenBack),
                    Ok(false) => Ok(Worked::Lost(Kept::Taken)),
                    Err(e) => Err(e.into()),
                };
            }
            Ok(End::Store(e)) if lost(&e) => return Ok(Worked::Lost(Kept::Taken)),
            Ok(End::Store(e)) => return Err(e.into()),
        };
        finish(&*queue, job, &last, Worked::Finished).await
    }
}

/// The work of a job, as this engine's plan has it.
enum Task<'a> {
    /// Ticket (index and id) and phase.
    Phase(crate::Ix, &'a TicketId, &'a PhaseName),
    /// Batch and its tickets.
    Merge(&'a BatchId, Vec<TicketId>),
}

impl Task<'_> {
    /// Whether a job of this work keyed `key` is still to do as the
    /// journal (`s`) stands: a job enqueued before a restart or an answer
    /// (taken over after its worker died), or for work the journal has
    /// done, is not.
    fn current(&self, plan: &orch_core::Plan, s: &orch_core::RunState, key: &str) -> bool {
        let of = |now: &str| key == now || key.starts_with(&format!("{now}/"));
        match self {
            &Task::Phase(_, ticket, phase) => {
                // Only the phase the ticket is at: running any other would
                // touch a tree another job may be working in.
                let at = next_job(plan, s, ticket).is_some_and(|(p, now)| p == *phase && of(&now));
                let st = s.tickets.get(ticket);
                let status = st.map(|t| t.status).unwrap_or_default();
                at && !status.is_final()
                    && !(status == TicketStatus::AwaitingDecision
                        && st.is_some_and(|t| t.pending_decision.is_none()))
            }
            Task::Merge(batch, tickets) => {
                of(&merge_key(batch))
                    && !ended(s, batch)
                    && tickets.iter().all(|t| {
                        s.tickets
                            .get(t)
                            .is_some_and(|t| t.status == TicketStatus::Done)
                    })
            }
        }
    }
}

/// Whether the journal has `batch` merged or failed.
fn ended(s: &orch_core::RunState, batch: &BatchId) -> bool {
    s.batches.get(batch).is_some_and(|b| {
        matches!(
            b.status,
            orch_core::BatchStatus::Merged | orch_core::BatchStatus::Failed
        )
    })
}

impl Engine {
    /// Waits until no other job of this engine works on what `task` works
    /// on (a ticket's tree, or a batch's merge), and holds it until the
    /// guard is dropped.
    async fn hold(
        &self,
        run: &orch_core::RunId,
        task: &Task<'_>,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let key = match task {
            Task::Phase(_, ticket, _) => format!("{run}/tickets/{ticket}"),
            Task::Merge(batch, _) => format!("{run}/batches/{batch}"),
        };
        let one = {
            let mut working = self.working.lock().unwrap_or_else(|p| p.into_inner());
            // What no job holds or waits for any more.
            working.retain(|_, m| Arc::strong_count(m) > 1);
            working.entry(key).or_default().clone()
        };
        one.lock_owned().await
    }

    /// `run`'s state as its journal has it now: a state an earlier job of
    /// this engine left ([`Engine::put_back`]) caught up with what was
    /// appended since, so a worker's job reads the events since its last
    /// job, not the whole run, and copies nothing.
    async fn journal_now(&self, run: &orch_core::RunId) -> Result<orch_core::RunState, StoreError> {
        let left = {
            let mut left = self.folded.lock().unwrap_or_else(|p| p.into_inner());
            // The furthest of this run's (one a job at once).
            left.iter()
                .enumerate()
                .filter(|(_, s)| s.run.as_ref() == Some(run))
                .max_by_key(|(_, s)| s.events)
                .map(|(i, _)| i)
                .map(|i| left.swap_remove(i))
        };
        let mut state = left.unwrap_or_default();
        let after = state.events;
        self.store.catch_up(run, &mut state, after).await?;
        Ok(state)
    }

    /// Keeps `state`, as a job's journal left it, for the next job.
    fn put_back(&self, state: orch_core::RunState) {
        let mut left = self.folded.lock().unwrap_or_else(|p| p.into_inner());
        // Another run's states are of no more use.
        left.retain(|s| s.run == state.run);
        left.push(state);
    }
}

/// Finishes `job` with `events`: `done` then, or lost when the claim no
/// longer is current.
async fn finish(
    queue: &dyn JobQueue,
    job: &Job,
    events: &[orch_core::Event],
    done: Worked,
) -> Result<Worked, EngineError> {
    match queue.finish(&job.claim, events).await {
        Ok(_) => Ok(done),
        Err(e) if lost(&e) => Ok(Worked::Lost(Kept::Taken)),
        Err(e) => Err(e.into()),
    }
}

/// A coordinator's hold on the job queue: where it puts the run's phases,
/// under its epoch.
#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) queue: Arc<dyn JobQueue>,
    pub(crate) epoch: u64,
    /// How often the journal is looked at for the ticket's progress.
    pub(crate) poll: Duration,
}

/// Where the journal has work that workers do ([`follow`]).
enum Now<T> {
    /// This job is the one to do.
    Next(NewJob),
    /// Done; its end is being written.
    Wait,
    /// Ended so.
    End(T),
}

/// The key of the job for `ticket`'s `phase`: the same for as long as the
/// phase is the one to do (a coordinator that restarts enqueues nothing
/// new), another once it must be done again (after a restart of the
/// ticket's phases, or a person's answer to an escalation).
fn key(ticket: &TicketId, phase: &PhaseName, restarts: u32, asked: usize) -> String {
    format!("{ticket}/{phase}/{restarts}/{asked}")
}

/// `key` for the `generation`th job of the same work (see [`follow`]).
fn generation_key(key: &str, generation: u32) -> String {
    if generation == 0 {
        key.to_owned()
    } else {
        format!("{key}/{generation}")
    }
}

/// The phase the journal has `ticket` at (its first not passed) and the
/// key of its job; `None` once every phase passed.
fn next_job(
    plan: &orch_core::Plan,
    s: &orch_core::RunState,
    ticket: &TicketId,
) -> Option<(PhaseName, String)> {
    let passed = s.tickets.get(ticket).map(|t| &t.phases_passed[..]);
    let restarts = s.tickets.get(ticket).map_or(0, |t| t.restarts);
    // How many questions the ticket has put to a person.
    let asked = s.decisions.iter().filter(|d| d.ticket == *ticket).count();
    plan.phases
        .iter()
        .find(|p| !passed.unwrap_or_default().contains(&p.name))
        .map(|p| (p.name.clone(), key(ticket, &p.name, restarts, asked)))
}

/// A coordinator's hold on work that workers do: puts the job `now` (the
/// journal's state, and how many of the work's jobs were found cancelled)
/// names in the queue, watching the journal (read by the dispatcher) until
/// `now` says the work ended, which it returns; `None` when the run's
/// work was cancelled. A job that ended (the journal caught up first, so
/// that what its worker recorded counts) with the journal still naming it
/// is followed by one under a key of its own when it was cancelled (a run
/// resumed after an abort or a spent budget cancelled them) or finished
/// without its work recorded; one that workers died doing too often
/// ([`JobState::Abandoned`]) is recorded by the event `abandoned` makes of
/// the reason, which must end the work.
async fn follow<T>(
    sh: &ticket::Shared,
    remote: &Remote,
    now: impl Fn(&orch_core::RunState) -> Now<T>,
    abandoned: impl Fn(String) -> EventKind,
) -> Result<Option<T>, StoreError> {
    let run = &sh.journal.run;
    let mut enqueued: Option<(String, u64)> = None;
    // The job `now` names (its key as `now` gives it), and which of its
    // generations: counted afresh for each new job, so that a coordinator
    // that restarts walks through the same keys, not a new one beside
    // them.
    let mut generation: (String, u32) = (String::new(), 0);
    let now = |generation: &mut (String, u32)| {
        let next = sh.journal.with_state(&now);
        match next {
            Now::Next(mut job) => {
                if job.key != generation.0 {
                    *generation = (job.key.clone(), 0);
                }
                job.key = generation_key(&job.key, generation.1);
                Now::Next(job)
            }
            other => other,
        }
    };
    let mut tick = tokio::time::interval(remote.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match now(&mut generation) {
            Now::End(end) => return Ok(Some(end)),
            Now::Wait => {}
            Now::Next(job) if enqueued.as_ref().is_none_or(|(e, _)| *e != job.key) => {
                let key = job.key.clone();
                let ids = remote.queue.enqueue(run, remote.epoch, &[job]).await?;
                tracing::info!(%key, job = ids[0], "enqueued");
                enqueued = Some((key, ids[0]));
            }
            Now::Next(_) => {
                let job = enqueued.as_ref().map_or(0, |(_, j)| *j);
                let info = remote.queue.job(job).await?;
                let ended = info.as_ref().map(|i| i.state).filter(|s| {
                    matches!(
                        s,
                        JobState::Cancelled | JobState::Abandoned | JobState::Done
                    )
                });
                if let (Some(state), Some(info)) = (ended, info) {
                    // What its last worker recorded may not be read yet:
                    // the job's end is judged on the journal as it is now.
                    sh.journal.catch_up().await?;
                    let key = enqueued.as_ref().map(|(k, _)| k.clone());
                    match now(&mut generation) {
                        Now::Next(job) if Some(&job.key) == key.as_ref() => {}
                        // Moved on: the loop takes it from there.
                        _ => continue,
                    }
                    if state == JobState::Abandoned {
                        let reason = format!(
                            "job {} ({}) was abandoned: the workers doing it stopped \
                             answering {} times",
                            info.key,
                            info.work,
                            info.takeovers + 1
                        );
                        sh.journal
                            .append(vec![sh.journal.event(abandoned(reason))])
                            .await?;
                        continue;
                    }
                    // Cancelled (a run resumed after an abort or a spent
                    // budget cancelled it), or finished without the work
                    // being recorded: another job does it, under a key of
                    // its own.
                    generation.1 += 1;
                }
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = sh.work.cancelled() => return Ok(None),
        }
    }
}

/// A coordinator's stand-in for ticket `t`'s pipeline ([`follow`]): puts
/// the phase it is at in the queue as a job, and the next one when that
/// one passed, until the journal shows the ticket ended, failed, or
/// waiting for a person, which it returns as the pipeline would.
pub(crate) async fn remote_ticket(sh: &ticket::Shared, remote: &Remote, t: crate::Ix) -> End {
    let ticket = &sh.tickets[t as usize];
    let id = &ticket.id;
    let now = |s: &orch_core::RunState| {
        if let Some(st) = s.tickets.get(id) {
            match st.status {
                TicketStatus::Done => return Now::End(End::Done),
                s if s.is_final() => return Now::End(End::Failed),
                TicketStatus::AwaitingDecision if st.pending_decision.is_none() => {
                    return Now::End(End::Escalated);
                }
                _ => {}
            }
        }
        let Some((phase, key)) = next_job(&sh.plan, s, id) else {
            return Now::Wait; // every phase passed; its last job ends it
        };
        let spec = sh.plan.phases.iter().find(|p| p.name == phase);
        let role = spec.and_then(|p| sh.plan.role_for(ticket, p)).cloned();
        let mut job = NewJob::new(
            key,
            Work::Phase {
                ticket: id.clone(),
                phase,
            },
        );
        job.role = role;
        Now::Next(job)
    };
    let failed = |reason| EventKind::TicketFailed {
        ticket: id.clone(),
        reason,
    };
    match follow(sh, remote, now, failed).await {
        Ok(Some(end)) => end,
        Ok(None) => End::Interrupted,
        Err(e) => End::Store(e),
    }
}

/// The key of the job that merges `batch`.
fn merge_key(batch: &BatchId) -> String {
    format!("merge/{batch}")
}

/// A coordinator's stand-in for the merge of `batch` ([`follow`]): puts
/// it in the queue as a job, for any worker, until the journal has the
/// batch merged or failed.
pub(crate) async fn remote_merge(
    sh: &ticket::Shared,
    remote: &Remote,
    batch: &BatchId,
) -> Result<(), StoreError> {
    let now = |s: &orch_core::RunState| {
        if ended(s, batch) {
            return Now::End(());
        }
        Now::Next(NewJob::new(
            merge_key(batch),
            Work::Merge {
                batch: batch.clone(),
            },
        ))
    };
    let failed = |reason| EventKind::BatchFailed {
        batch: batch.clone(),
        reason,
    };
    follow(sh, remote, now, failed).await.map(|_| ())
}
