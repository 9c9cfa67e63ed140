//! [`RunState`]: the pure fold of a run's events.

use std::collections::BTreeMap;

use litemap::LiteMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    AgentErrorKind, AgentId, BatchId, Decision, Event, EventKind, GateReport, GateScope, PhaseName,
    RoleName, RunId, RunOutcome, TicketId, Timestamp, Usage,
};

/// Where a ticket stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// Waiting for dependencies.
    #[default]
    Pending,
    /// Dependencies done; waiting for an agent.
    Ready,
    /// A phase is running.
    Running,
    /// Escalated; waiting for a person's decision.
    AwaitingDecision,
    /// Every phase passed.
    Done,
    /// Failed for good.
    Failed,
    /// A dependency failed or was skipped.
    Blocked,
    /// Skipped by decision.
    Skipped,
}

impl TicketStatus {
    /// Done, failed, blocked or skipped: nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TicketStatus::Done
                | TicketStatus::Failed
                | TicketStatus::Blocked
                | TicketStatus::Skipped
        )
    }
}

/// Measurements of one ticket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct TicketMetrics {
    /// Wall time of each passed phase (last attempt's start to pass), ms.
    /// A map kept as one sorted vector (a ticket has a few phases).
    #[schemars(with = "BTreeMap<PhaseName, u64>")]
    pub phase_ms: LiteMap<PhaseName, u64>,
    /// Tests that ran in the latest test gate.
    pub tests_ran: Option<u64>,
    /// Line coverage from the latest coverage gate, percent.
    pub coverage: Option<f64>,
    /// Failed attempts over all phases.
    pub failed_attempts: u32,
    /// Times the work tree was rolled back.
    pub rollbacks: u32,
    /// Where its time went, by kind of work.
    #[serde(default)]
    pub work: WorkTimes,
}

/// Where a ticket's time went, by kind of work, in milliseconds summed
/// over its attempts ([`TicketMetrics::work`]); the part that is not the
/// agent's or the gates' is orch's own overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct WorkTimes {
    /// Preparing its work tree: a slot switched (or a worktree made), its
    /// dependencies merged.
    pub prepare_ms: u64,
    /// Its agents running.
    pub agent_ms: u64,
    /// Its gates running.
    pub gates_ms: u64,
    /// The secret scan and checkpoint commit of each passed phase.
    pub checkpoint_ms: u64,
}

impl WorkTimes {
    /// The sum of `self` and `other`.
    pub fn plus(self, other: WorkTimes) -> WorkTimes {
        WorkTimes {
            prepare_ms: self.prepare_ms + other.prepare_ms,
            agent_ms: self.agent_ms + other.agent_ms,
            gates_ms: self.gates_ms + other.gates_ms,
            checkpoint_ms: self.checkpoint_ms + other.checkpoint_ms,
        }
    }
}

/// Everything known about one ticket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct TicketState {
    /// Where it stands.
    pub status: TicketStatus,
    /// The current (or last) phase.
    pub phase: Option<PhaseName>,
    /// The current attempt of that phase (1-based; 0 before the first).
    pub attempt: u32,
    /// Phases passed, in order.
    pub phases_passed: Vec<PhaseName>,
    /// Rollback commit of each passed phase that checkpointed (one sorted
    /// vector, like `metrics.phase_ms`).
    #[schemars(with = "BTreeMap<PhaseName, String>")]
    pub checkpoints: LiteMap<PhaseName, String>,
    /// Gates passed over all attempts.
    pub gates_passed: u32,
    /// Gates failed over all attempts.
    pub gates_failed: u32,
    /// The agent currently working on it.
    pub agent: Option<AgentId>,
    /// Why it failed, is blocked or is waiting.
    pub reason: Option<String>,
    /// Feedback for the next attempt of the current phase.
    pub feedback: Vec<String>,
    /// When the current phase attempt started.
    pub phase_started_at: Option<Timestamp>,
    /// When work on it started.
    pub started_at: Option<Timestamp>,
    /// When it reached a final status.
    pub finished_at: Option<Timestamp>,
    /// Tokens and cost.
    pub usage: Usage,
    /// Measurements.
    pub metrics: TicketMetrics,
    /// Where the ticket's work tree is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The commit its work tree started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Failed attempts of the current phase since it last started afresh
    /// (reset when a phase passes or the pipeline restarts).
    #[serde(default)]
    pub failed_in_phase: u32,
    /// How many times the pipeline restarted from an earlier phase.
    #[serde(default)]
    pub restarts: u32,
    /// A person's answer that the engine has not acted on yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_decision: Option<Decision>,
}

/// Status of one agent invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Running.
    Running,
    /// Ran to the end and claims success.
    Succeeded,
    /// Ran to the end and reports failure.
    Failed,
    /// Could not run to the end.
    Errored,
    /// Its driver stopped (a crash, a lost lock) before it finished: a
    /// later driver of the run killed what was left of it, and the
    /// attempt runs again.
    Lost,
}

/// One row of the agent registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct AgentRecord {
    /// The ticket.
    pub ticket: TicketId,
    /// The phase.
    pub phase: PhaseName,
    /// The attempt.
    pub attempt: u32,
    /// The role.
    pub role: RoleName,
    /// The backend's name.
    pub backend: std::sync::Arc<str>,
    /// Status.
    pub status: AgentStatus,
    /// Started.
    pub started_at: Timestamp,
    /// Last event about it.
    pub updated_at: Timestamp,
    /// Tokens and cost.
    pub usage: Usage,
    /// The error kind, when it errored.
    pub error: Option<AgentErrorKind>,
    /// The summary or error message.
    pub summary: String,
    /// The worker that ran it, in a run shared among machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<crate::DriverInfo>,
}

/// One gate result, for the test log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct GateRun {
    /// What it checked.
    pub scope: GateScope,
    /// When it finished.
    pub at: Timestamp,
    /// Its report.
    pub report: GateReport,
}

/// One question for a person, with its answer once given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct DecisionItem {
    /// The ticket.
    pub ticket: TicketId,
    /// The phase it stopped in.
    pub phase: PhaseName,
    /// The question.
    pub question: String,
    /// Context.
    pub context: String,
    /// The answers that make sense.
    pub options: Vec<Decision>,
    /// When it was asked.
    pub asked_at: Timestamp,
    /// The answer, once given.
    pub answer: Option<Decision>,
    /// The note given with the answer.
    pub note: Option<String>,
    /// When it was answered.
    pub answered_at: Option<Timestamp>,
    /// The answer written down as a decision record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adr: Option<Box<crate::Adr>>,
}

/// Where a batch stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Tickets still in progress.
    #[default]
    Open,
    /// Merged and gated.
    Merged,
    /// Merge conflict or failed gates.
    Failed,
}

/// Everything known about one batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct BatchState {
    /// Where it stands.
    pub status: BatchStatus,
    /// The merge commit.
    pub commit: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Batch gate results: (passed, total) of the latest run of gates.
    pub gates_passed: u32,
    /// Gates run on the batch.
    pub gates_total: u32,
    /// How long merging its tickets took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_ms: Option<u64>,
}

/// Where the run stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// No `RunStarted` yet.
    #[default]
    NotStarted,
    /// Running.
    Running,
    /// Stopped.
    Finished(RunOutcome),
}

/// The map [`RunState`] keeps its tickets and agents in: values in one
/// vector in the order they were first inserted, found through a hash
/// table of positions (`indexmap`, with the Fx hasher: ids come from the
/// plan and the engine, so a hasher that resists chosen keys buys
/// nothing). Folding is the hot path of the engine and of reopening a
/// journal, and a run's events name tickets and agents in about the order
/// they were first seen: each insert appends to the vector, where a hash
/// map would write a 350-byte state to a random slot of a table as large
/// as the run. Equality ignores the order.
pub type IdMap<K, V> = indexmap::IndexMap<K, V, rustc_hash::FxBuildHasher>;

/// The state of a run: the fold of its events.
///
/// `apply` is pure and total: any event sequence can be folded (events about
/// unknown tickets create them), and folding the persisted journal gives
/// exactly the live state.
///
/// ```
/// use orch_core::{Event, EventKind, RunState, TicketStatus};
/// let t: orch_core::TicketId = "T-1".parse().unwrap();
/// let mut s = RunState::default();
/// s.apply(&Event::now(EventKind::TicketReady { ticket: t.clone() }));
/// s.apply(&Event::now(EventKind::TicketDone { ticket: t.clone() }));
/// assert_eq!(s.tickets[&t].status, TicketStatus::Done);
/// assert_eq!(s.events, 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct RunState {
    /// The run, once started.
    pub run: Option<RunId>,
    /// The plan's name.
    pub plan: String,
    /// The fingerprint recorded when the run started.
    pub fingerprint: String,
    /// Fingerprint of each part of the plan.
    #[serde(default)]
    pub fingerprint_parts: crate::FingerprintParts,
    /// Where the run stands.
    pub status: RunStatus,
    /// First `RunStarted`.
    pub started_at: Option<Timestamp>,
    /// Last event.
    pub updated_at: Option<Timestamp>,
    /// Events folded.
    pub events: u64,
    /// Tickets that have had any event, in the order of their first
    /// event (an [`IdMap`]); iterate it in id order with
    /// [`RunState::tickets_by_id`]. Serialized sorted by id.
    #[serde(serialize_with = "sorted")]
    pub tickets: IdMap<TicketId, TicketState>,
    /// Batches that have had any event.
    pub batches: BTreeMap<BatchId, BatchState>,
    /// Every agent invocation, in the order they started (an [`IdMap`],
    /// like `tickets`; serialized sorted by id).
    #[serde(serialize_with = "sorted")]
    pub agents: IdMap<AgentId, AgentRecord>,
    /// Every gate result, in order.
    pub gate_runs: Vec<GateRun>,
    /// Every escalation, in order, with answers.
    pub decisions: Vec<DecisionItem>,
    /// Tokens and cost of the whole run.
    pub usage: Usage,
    /// Whether the budget was spent.
    pub budget_exhausted: bool,
    /// Every process that has driven the run, in order (from the
    /// `RunStarted` events): a new driver kills what is left of the
    /// earlier ones' commands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<crate::DriverInfo>,
    /// The commit the run's driver starts tickets from, as its latest
    /// `RunStarted` says (`None`: a workspace without history, or a
    /// journal from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Where the run's plan file lies in the repository, as the latest
    /// `RunStarted` that names one says (`None`: none did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_file: Option<String>,
    /// Every time the projected finish slipped too far, in order, with
    /// the person's acceptance once given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slips: Vec<Slip>,
    /// Residual risks a person accepted, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub risks: Vec<AcceptedRisk>,
}

/// The projected finish slipped too far (`ScheduleSlipped`): a
/// non-blocking question, open until a person accepts the delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct Slip {
    /// When it was raised.
    pub at: Timestamp,
    /// How far past the planned finish, then.
    pub delay_minutes: u64,
    /// The critical path's estimate of the finish.
    pub planned_finish: Timestamp,
    /// The projected finish.
    pub projected_finish: Timestamp,
    /// The chain of tickets left that decides the projection.
    pub path: Vec<TicketId>,
    /// When a person accepted the delay, and their note.
    pub accepted: Option<(Timestamp, String)>,
}

/// A residual risk a person accepted (`Accepted` of `Acceptance::Risk`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct AcceptedRisk {
    /// When.
    pub at: Timestamp,
    /// Its batch (`None`: the whole run).
    pub batch: Option<BatchId>,
    /// The risk and why it is accepted.
    pub note: String,
}

/// Serializes a map sorted by key, so a state's JSON is the same every time.
fn sorted<S: serde::Serializer, K: Ord + Serialize, V: Serialize>(
    m: &IdMap<K, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    m.iter().collect::<BTreeMap<_, _>>().serialize(s)
}

impl RunState {
    /// Folds a sequence of events from scratch.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> RunState {
        let mut s = RunState::default();
        for e in events {
            s.apply(e);
        }
        s
    }

    /// The tickets in id order (for display; `tickets` itself is unordered).
    pub fn tickets_by_id(&self) -> Vec<(&TicketId, &TicketState)> {
        let mut v: Vec<_> = self.tickets.iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// The agent invocations in id order (for display).
    pub fn agents_by_id(&self) -> Vec<(&AgentId, &AgentRecord)> {
        let mut v: Vec<_> = self.agents.iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// The open questions (escalations not yet answered).
    pub fn open_decisions(&self) -> impl Iterator<Item = &DecisionItem> {
        self.decisions.iter().filter(|d| d.answer.is_none())
    }

    /// Number of tickets in each status.
    pub fn count(&self, status: TicketStatus) -> usize {
        self.tickets.values().filter(|t| t.status == status).count()
    }

    /// Folds one event into the state.
    pub fn apply(&mut self, event: &Event) {
        self.apply_owned(event.clone());
    }

    /// Folds one event into the state, taking it (no copies: the fastest
    /// way to replay a journal).
    ///
    /// The ticket the event names (if any) folds it with
    /// [`TicketState::apply`]; what is left here is the run's own part:
    /// the agent registry, usage, gate log, decisions and batches.
    pub fn apply_owned(&mut self, event: Event) {
        let at = event.at;
        self.events += 1;
        self.updated_at = Some(self.updated_at.map_or(at, |u| u.max(at)));
        if let Some(id) = event.kind.ticket() {
            match self.tickets.get_mut(id) {
                Some(t) => t.apply(&event),
                None => {
                    let mut t = TicketState::default();
                    t.apply(&event);
                    self.tickets.insert(id.clone(), t);
                }
            }
        }
        match event.kind {
            EventKind::RunStarted {
                run,
                plan,
                fingerprint,
                parts,
                driver,
                base,
                plan_file,
                ..
            } => {
                // A new driver: agents the journal still has running
                // belonged to one that stopped without recording their end.
                for a in self.agents.values_mut() {
                    if a.status == AgentStatus::Running {
                        a.status = AgentStatus::Lost;
                        a.updated_at = at;
                        a.summary = "its driver stopped before it finished".into();
                    }
                }
                self.drivers.extend(driver);
                if base.is_some() {
                    self.base = base;
                }
                // A driver that names no plan file (its plan not
                // committed) leaves the one named before: the plan's
                // fingerprint is checked against the run's anyway.
                if plan_file.is_some() {
                    self.plan_file = plan_file;
                }
                self.run = Some(run);
                self.plan = plan;
                self.fingerprint = fingerprint;
                self.fingerprint_parts = parts;
                self.status = RunStatus::Running;
                self.started_at.get_or_insert(at);
            }
            EventKind::AgentStarted {
                ticket,
                phase,
                attempt,
                agent,
                role,
                backend,
                worker,
            } => {
                self.agents.insert(
                    agent,
                    AgentRecord {
                        ticket,
                        phase,
                        attempt,
                        role,
                        backend,
                        status: AgentStatus::Running,
                        started_at: at,
                        updated_at: at,
                        usage: Usage::default(),
                        error: None,
                        summary: String::new(),
                        worker,
                    },
                );
            }
            EventKind::AgentOutput { agent, .. } => {
                if let Some(a) = self.agents.get_mut(&agent) {
                    a.updated_at = at;
                }
            }
            EventKind::AgentFinished {
                agent,
                success,
                summary,
                usage,
                error,
                ..
            } => {
                self.usage += usage;
                if let Some(a) = self.agents.get_mut(&agent) {
                    a.updated_at = at;
                    a.usage += usage;
                    a.error = error;
                    a.summary = summary;
                    a.status = match (error, success) {
                        (Some(_), _) => AgentStatus::Errored,
                        (None, true) => AgentStatus::Succeeded,
                        (None, false) => AgentStatus::Failed,
                    };
                }
            }
            EventKind::GateFinished { scope, report } => {
                if let GateScope::Batch { batch } = &scope {
                    let b = self.batches.entry(batch.clone()).or_default();
                    b.gates_total += 1;
                    b.gates_passed += u32::from(report.passed());
                }
                self.gate_runs.push(GateRun {
                    scope,
                    at,
                    report: *report,
                });
            }
            EventKind::Escalated {
                ticket,
                phase,
                question,
                context,
                options,
            } => {
                self.decisions.push(DecisionItem {
                    ticket,
                    phase,
                    question,
                    context,
                    options,
                    asked_at: at,
                    answer: None,
                    note: None,
                    answered_at: None,
                    adr: None,
                });
            }
            EventKind::DecisionRecorded {
                ticket,
                decision,
                note,
                adr,
            } => {
                if let Some(d) = self
                    .decisions
                    .iter_mut()
                    .rev()
                    .find(|d| d.ticket == ticket && d.answer.is_none())
                {
                    d.answer = Some(decision);
                    d.note = note;
                    d.answered_at = Some(at);
                    d.adr = adr;
                }
            }
            EventKind::BatchMerged {
                batch,
                commit,
                merge_ms,
            } => {
                let b = self.batches.entry(batch).or_default();
                b.merge_ms = merge_ms;
                b.status = BatchStatus::Merged;
                b.commit = Some(commit);
                b.reason = None;
            }
            EventKind::BatchFailed { batch, reason } => {
                let b = self.batches.entry(batch).or_default();
                b.status = BatchStatus::Failed;
                b.reason = Some(reason);
            }
            EventKind::BudgetExhausted { .. } => self.budget_exhausted = true,
            EventKind::ScheduleSlipped {
                delay_minutes,
                planned_finish,
                projected_finish,
                path,
            } => self.slips.push(Slip {
                at,
                delay_minutes,
                planned_finish,
                projected_finish,
                path,
                accepted: None,
            }),
            EventKind::Accepted {
                acceptance: crate::Acceptance::Delay,
                note,
                ..
            } => {
                for s in self.slips.iter_mut().filter(|s| s.accepted.is_none()) {
                    s.accepted = Some((at, note.clone()));
                }
            }
            EventKind::Accepted {
                acceptance: crate::Acceptance::Risk,
                batch,
                note,
            } => self.risks.push(AcceptedRisk { at, batch, note }),
            EventKind::RunFinished { outcome } => self.status = RunStatus::Finished(outcome),
            _ => {}
        }
    }
}

impl TicketState {
    /// The ticket's part of the fold: what `event` changes about this
    /// ticket (events about other tickets, or none, change nothing here).
    /// [`RunState::apply`] calls it for the ticket each event names; the
    /// engine uses it alone to keep one ticket's view while it works.
    ///
    /// ```
    /// use orch_core::{Event, EventKind, TicketState, TicketStatus};
    /// let t: orch_core::TicketId = "T-1".parse().unwrap();
    /// let mut s = TicketState::default();
    /// s.apply(&Event::now(EventKind::TicketDone { ticket: t }));
    /// assert_eq!(s.status, TicketStatus::Done);
    /// ```
    pub fn apply(&mut self, event: &Event) {
        let at = event.at;
        let t = self;
        match &event.kind {
            EventKind::TicketReady { .. } if t.status == TicketStatus::Pending => {
                t.status = TicketStatus::Ready;
            }
            EventKind::WorkspaceReady {
                path,
                base,
                took_ms,
                ..
            } => {
                t.workdir = Some(path.clone());
                t.base.clone_from(base);
                t.metrics.work.prepare_ms += took_ms.unwrap_or(0);
            }
            // An agent starting is a phase attempt starting (the engine
            // writes no separate `PhaseStarted`; older journals have both).
            EventKind::PhaseStarted { phase, attempt, .. }
            | EventKind::AgentStarted { phase, attempt, .. } => {
                t.phase_started_at = Some(at);
                t.pending_decision = None;
                t.status = TicketStatus::Running;
                t.phase = Some(phase.clone());
                t.attempt = *attempt;
                t.started_at.get_or_insert(at);
                t.reason = None;
                if let EventKind::AgentStarted { agent, .. } = &event.kind {
                    t.agent = Some(agent.clone());
                }
            }
            EventKind::AgentFinished { agent, usage, .. } => {
                t.usage += *usage;
                if t.agent.as_ref() == Some(agent) {
                    t.agent = None;
                    // The attempt started with this agent.
                    if let Some(start) = t.phase_started_at {
                        t.metrics.work.agent_ms += at.millis_since(start);
                    }
                }
            }
            EventKind::GateFinished {
                scope: GateScope::Phase { .. },
                report,
            } => {
                if report.passed() {
                    t.gates_passed += 1;
                } else {
                    t.gates_failed += 1;
                }
                t.metrics.work.gates_ms += report.duration_ms;
                if let Some(c) = report.evidence.tests {
                    t.metrics.tests_ran = Some(c.ran());
                }
                if let Some(c) = report.evidence.line_coverage {
                    t.metrics.coverage = Some(c);
                }
            }
            EventKind::PhasePassed {
                phase,
                checkpoint,
                checkpoint_ms,
                ..
            } => {
                t.metrics.work.checkpoint_ms += checkpoint_ms.unwrap_or(0);
                if let Some(start) = t.phase_started_at {
                    t.metrics
                        .phase_ms
                        .insert(phase.clone(), at.millis_since(start));
                }
                if let Some(c) = checkpoint {
                    t.checkpoints.insert(phase.clone(), c.clone());
                }
                if !t.phases_passed.contains(phase) {
                    t.phases_passed.push(phase.clone());
                }
                t.feedback.clear();
                t.failed_in_phase = 0;
                t.pending_decision = None;
                if t.status == TicketStatus::AwaitingDecision {
                    t.status = TicketStatus::Running;
                }
            }
            EventKind::AttemptFailed { feedback, .. } => {
                t.metrics.failed_attempts += 1;
                t.failed_in_phase += 1;
                t.feedback.push(feedback.clone());
            }
            EventKind::RolledBack { .. } => t.metrics.rollbacks += 1,
            EventKind::PhaseRestarted { from, .. } => {
                // Phases from `from` on must pass again.
                if let Some(pos) = t.phases_passed.iter().position(|p| p == from) {
                    for p in t.phases_passed.split_off(pos) {
                        t.checkpoints.remove(&p);
                    }
                }
                t.feedback.clear();
                t.failed_in_phase = 0;
                t.restarts += 1;
            }
            EventKind::Escalated { question, .. } => {
                t.status = TicketStatus::AwaitingDecision;
                t.reason = Some(question.clone());
                t.agent = None;
            }
            EventKind::DecisionRecorded { decision, note, .. } => {
                if t.status == TicketStatus::AwaitingDecision {
                    t.status = TicketStatus::Ready;
                    t.reason = None;
                    t.pending_decision = Some(*decision);
                }
                if let (Decision::Retry, Some(n)) = (decision, note) {
                    t.feedback
                        .push(format!("A person asked for another attempt: {n}"));
                }
            }
            EventKind::TicketDone { .. } => {
                t.pending_decision = None;
                t.status = TicketStatus::Done;
                t.finished_at = Some(at);
                t.agent = None;
                t.reason = None;
            }
            EventKind::TicketFailed { reason, .. } => {
                t.pending_decision = None;
                t.status = TicketStatus::Failed;
                t.finished_at = Some(at);
                t.agent = None;
                t.reason = Some(reason.clone());
            }
            EventKind::TicketBlocked { by, .. } => {
                t.status = TicketStatus::Blocked;
                t.finished_at = Some(at);
                t.reason = Some(format!("blocked by {by}"));
            }
            EventKind::TicketSkipped { .. } => {
                t.pending_decision = None;
                t.status = TicketStatus::Skipped;
                t.finished_at = Some(at);
                t.reason = Some("skipped by decision".into());
            }
            _ => {}
        }
    }
}
