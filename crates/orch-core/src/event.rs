//! Everything that happens in a run is an [`Event`].
//!
//! The engine emits events, a [`StateStore`](crate::StateStore) appends them
//! durably *before* the engine acts on them, and [`RunState::apply`]
//! (crate::RunState::apply) folds them into the state a person reads.
//! Resuming a run is replaying its journal.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{AgentId, BatchId, GateReport, PhaseName, RoleName, RunId, TicketId, Timestamp, Usage};

/// Unique id of an event, chosen by whoever emits it. Appending an event
/// whose id is already in the journal is a no-op, which makes re-sending
/// after a lost acknowledgement safe.
///
/// Serialized as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u128);

impl EventId {
    /// A fresh id: a version 7 UUID (RFC 9562), whose high bits are the
    /// time in milliseconds (so ids sort roughly by creation) and whose
    /// low bits are random.
    pub fn random() -> Self {
        EventId(uuid::Uuid::now_v7().as_u128())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl FromStr for EventId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(EventId)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid event id {s:?}")))
    }
}

impl JsonSchema for EventId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[0-9a-f]{1,32}$"})
    }
}

/// The fingerprint of each part of a plan, by part name; see
/// [`Plan::fingerprint`](crate::Plan::fingerprint).
pub type FingerprintParts = std::sync::Arc<std::collections::BTreeMap<String, String>>;

fn no_parts(p: &FingerprintParts) -> bool {
    p.is_empty()
}

/// The process that drives a run, recorded with each `RunStarted`: a
/// later driver of the run kills whatever is left of this one's commands
/// before it touches a work tree (see `orch_core::process::kill_scope`,
/// feature `process`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DriverInfo {
    /// The machine's host name.
    pub host: String,
    /// The kernel's boot id: after a reboot nothing of it runs.
    pub boot: String,
    /// Its process id.
    pub pid: u32,
    /// Its start time (clock ticks after boot): with `pid`, names the
    /// process across pid reuse.
    pub start: u64,
    /// Where its commands' processes are kept: `cgroup:<directory>` or
    /// `marker:<token>`.
    pub containment: String,
}

/// One thing that happened, with its id and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Unique id (idempotency key).
    pub id: EventId,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// An event happening now with a fresh id.
    pub fn now(kind: EventKind) -> Self {
        Event {
            id: EventId::random(),
            at: Timestamp::now(),
            kind,
        }
    }
}

/// What a gate was checking: a ticket's phase or a merged batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum GateScope {
    /// A phase of a ticket.
    Phase {
        /// The ticket.
        ticket: TicketId,
        /// The phase.
        phase: PhaseName,
        /// The attempt (1-based).
        attempt: u32,
    },
    /// A batch after its tickets were merged.
    Batch {
        /// The batch.
        batch: BatchId,
    },
}

/// A person's answer to an escalated ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Accept the work as it is and move on.
    Approve,
    /// Try the phase again (with the person's note as feedback).
    Retry,
    /// Skip the ticket; dependents are blocked.
    Skip,
    /// Stop the whole run.
    Abort,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every ticket done and every batch merged.
    Completed,
    /// Some tickets failed or were blocked; nothing more can run.
    Failed,
    /// Waiting for decisions on escalated tickets.
    Paused,
    /// Stopped by the user.
    Cancelled,
    /// The budget was spent.
    BudgetExhausted,
    /// A person aborted the run.
    Aborted,
}

/// Everything that can happen in a run.
///
/// Serialized adjacently tagged: `{"type": "ticket_done", "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A run began (or was resumed with `resumed = true`).
    RunStarted {
        /// The run.
        run: RunId,
        /// The plan's name.
        plan: String,
        /// Fingerprint of the plan and policy the run uses.
        fingerprint: String,
        /// Whether this continues an earlier journal.
        #[serde(default)]
        resumed: bool,
        /// Fingerprint of each part of the plan (`policy`, `ticket:<id>`,
        /// ...), so a changed plan can be told apart part by part. Shared,
        /// not copied, by the store and the state: it has an entry per
        /// ticket.
        #[serde(default, skip_serializing_if = "no_parts")]
        parts: FingerprintParts,
        /// The process driving the run from here on, when it runs
        /// commands of its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        driver: Option<DriverInfo>,
        /// The commit the driver's workspace starts tickets from
        /// ([`Workspace::base`](crate::Workspace::base)), when it keeps
        /// history: every worker of the run must start from the same.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
        /// Where the plan file lies in the repository (relative, with `/`),
        /// when it is committed there: a worker on another machine reads
        /// the plan as committed at `base` in its own clone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan_file: Option<String>,
    },
    /// All dependencies of a ticket are done.
    TicketReady {
        /// The ticket.
        ticket: TicketId,
    },
    /// A ticket's work tree is ready (created, or found after a crash).
    WorkspaceReady {
        /// The ticket.
        ticket: TicketId,
        /// Where it is.
        path: String,
        /// The commit it started from: the rollback point before any phase
        /// passed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
        /// How long preparing it took (a slot switched or a worktree made,
        /// its dependencies merged), in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        took_ms: Option<u64>,
    },
    /// A phase attempt began. The engine no longer writes it: an
    /// [`AgentStarted`](EventKind::AgentStarted) starts the attempt. Kept
    /// so journals that have it still fold the same.
    PhaseStarted {
        /// The ticket.
        ticket: TicketId,
        /// The phase.
        phase: PhaseName,
        /// 1-based attempt.
        attempt: u32,
    },
    /// A phase attempt begins: its agent is about to be started (written
    /// ahead).
    AgentStarted {
        /// The ticket.
        ticket: TicketId,
        /// The phase.
        phase: PhaseName,
        /// 1-based attempt.
        attempt: u32,
        /// The invocation id.
        agent: AgentId,
        /// The role it plays.
        role: RoleName,
        /// The backend's name (shared by the events and records that name
        /// the same backend).
        backend: std::sync::Arc<str>,
        /// The worker that ran it (host and process), when a worker of a
        /// run shared among machines did; `None`: the run's driver.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<DriverInfo>,
    },
    /// Something an agent reported while working.
    AgentOutput {
        /// The invocation id.
        agent: AgentId,
        /// A line of progress.
        text: String,
    },
    /// An agent finished (successfully or not).
    AgentFinished {
        /// The ticket.
        ticket: TicketId,
        /// The invocation id.
        agent: AgentId,
        /// Whether it claims success.
        success: bool,
        /// Its summary, or the error.
        summary: String,
        /// Tokens and cost.
        usage: Usage,
        /// Backend session id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        /// The error kind, when it could not run to the end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<crate::AgentErrorKind>,
    },
    /// A gate began.
    GateStarted {
        /// What it checks.
        scope: GateScope,
        /// The gate's name.
        gate: String,
    },
    /// A gate finished.
    GateFinished {
        /// What it checked.
        scope: GateScope,
        /// Its report (boxed: it is by far the largest event).
        report: Box<GateReport>,
    },
    /// A phase passed its gates; `checkpoint` is the rollback commit.
    PhasePassed {
        /// The ticket.
        ticket: TicketId,
        /// The phase.
        phase: PhaseName,
        /// The attempt that passed.
        attempt: u32,
        /// The checkpoint commit, when the phase checkpoints.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
        /// How long the secret scan and the checkpoint took, in
        /// milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint_ms: Option<u64>,
    },
    /// An attempt failed; `feedback` is what the next attempt is shown.
    AttemptFailed {
        /// The ticket.
        ticket: TicketId,
        /// The phase.
        phase: PhaseName,
        /// The failed attempt.
        attempt: u32,
        /// The failing gate reports, as feedback.
        feedback: String,
    },
    /// The work tree was reset to a checkpoint.
    RolledBack {
        /// The ticket.
        ticket: TicketId,
        /// The phase whose checkpoint it went back to (none: the base).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<PhaseName>,
        /// The commit.
        commit: String,
    },
    /// The pipeline restarts from an earlier phase with a feedback file.
    PhaseRestarted {
        /// The ticket.
        ticket: TicketId,
        /// The phase it restarts from.
        from: PhaseName,
        /// The feedback file written into the work tree.
        feedback_file: String,
    },
    /// A ticket needs a person; it pauses until a decision is recorded.
    Escalated {
        /// The ticket.
        ticket: TicketId,
        /// The phase it stopped in.
        phase: PhaseName,
        /// The question.
        question: String,
        /// What the person needs to know.
        context: String,
        /// The answers that make sense.
        options: Vec<Decision>,
    },
    /// A person answered.
    DecisionRecorded {
        /// The ticket.
        ticket: TicketId,
        /// The answer.
        decision: Decision,
        /// A note (for `retry`, the feedback the agent is shown).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// The decision written down as an architecture decision record,
        /// committed with the ticket's next checkpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adr: Option<Box<crate::Adr>>,
    },
    /// A ticket passed every phase.
    TicketDone {
        /// The ticket.
        ticket: TicketId,
    },
    /// A ticket failed for good.
    TicketFailed {
        /// The ticket.
        ticket: TicketId,
        /// Why.
        reason: String,
    },
    /// A ticket cannot run because a dependency failed or was skipped.
    TicketBlocked {
        /// The ticket.
        ticket: TicketId,
        /// The dependency that failed.
        by: TicketId,
    },
    /// A ticket was skipped by decision.
    TicketSkipped {
        /// The ticket.
        ticket: TicketId,
    },
    /// A batch's tickets are about to be merged (written ahead).
    MergeStarted {
        /// The batch.
        batch: BatchId,
        /// The worker that merges it (host and process), when a worker of
        /// a run shared among machines does; `None`: the run's driver.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<DriverInfo>,
    },
    /// A batch's tickets were merged and its gates passed.
    BatchMerged {
        /// The batch.
        batch: BatchId,
        /// The merge commit.
        commit: String,
        /// How long merging its tickets took (not its gates), in
        /// milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        merge_ms: Option<u64>,
    },
    /// A batch could not be merged or failed its gates.
    BatchFailed {
        /// The batch.
        batch: BatchId,
        /// Why (conflicting files, failing gate).
        reason: String,
    },
    /// The budget was spent; no new work is dispatched.
    BudgetExhausted {
        /// Tokens spent so far.
        tokens: u64,
        /// Dollars spent so far.
        usd: f64,
    },
    /// The run stopped.
    RunFinished {
        /// How.
        outcome: RunOutcome,
    },
    /// The projected finish slipped past the critical path's estimate by
    /// more than `policy.escalate_delay`: a question for a person that
    /// holds nothing up (answered with [`EventKind::Accepted`] of
    /// [`Acceptance::Delay`], or by stopping the run).
    ScheduleSlipped {
        /// How far past the planned finish the run is projected to end.
        delay_minutes: u64,
        /// When the critical path's estimate says the run ends.
        planned_finish: crate::Timestamp,
        /// When the pace so far says it ends.
        projected_finish: crate::Timestamp,
        /// The chain of tickets left that decides the projection.
        path: Vec<TicketId>,
    },
    /// A person accepted something without stopping the run.
    Accepted {
        /// What.
        acceptance: Acceptance,
        /// The batch a residual risk belongs to (`None`: the whole run).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<BatchId>,
        /// What was accepted and why, in the person's words.
        note: String,
    },
}

/// What a person accepts with [`EventKind::Accepted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Acceptance {
    /// The projected delay: answers the open `ScheduleSlipped` questions.
    Delay,
    /// A residual risk, recorded in the go/no-go record of its batch.
    Risk,
}

impl EventKind {
    /// Removes secrets from every text the event carries that came from
    /// outside orch (agent output and summaries, gate reports, feedback,
    /// escalations, decision notes, failure reasons). The engine applies
    /// it to each event before the event is folded or written, so the
    /// journal, the state files and the prompts built from them never hold
    /// a secret the redactor knows.
    ///
    /// ```
    /// use orch_core::{EventKind, secrets::Redactor};
    /// let mut k = EventKind::TicketFailed {
    ///     ticket: "T-1".parse().unwrap(),
    ///     reason: "auth failed for sk-ant-api03-abcdef".into(),
    /// };
    /// k.redact(&Redactor::default());
    /// assert!(matches!(k, EventKind::TicketFailed { reason, .. } if reason == "auth failed for [REDACTED]"));
    /// ```
    pub fn redact(&mut self, r: &crate::secrets::Redactor) {
        use EventKind::*;
        match self {
            AgentOutput { text, .. } => r.redact_in_place(text),
            AgentFinished { summary, .. } => r.redact_in_place(summary),
            GateFinished { report, .. } => report.redact(r),
            AttemptFailed { feedback, .. } => r.redact_in_place(feedback),
            Escalated {
                question, context, ..
            } => {
                r.redact_in_place(question);
                r.redact_in_place(context);
            }
            DecisionRecorded { note, adr, .. } => {
                if let Some(n) = note {
                    r.redact_in_place(n);
                }
                if let Some(a) = adr {
                    a.redact(r);
                }
            }
            TicketFailed { reason, .. } | BatchFailed { reason, .. } => r.redact_in_place(reason),
            Accepted { note, .. } => r.redact_in_place(note),
            // Made by orch from the plan and its own state: ids, paths,
            // commits, counts.
            RunStarted { .. }
            | TicketReady { .. }
            | WorkspaceReady { .. }
            | PhaseStarted { .. }
            | AgentStarted { .. }
            | GateStarted { .. }
            | PhasePassed { .. }
            | RolledBack { .. }
            | PhaseRestarted { .. }
            | TicketDone { .. }
            | TicketBlocked { .. }
            | TicketSkipped { .. }
            | MergeStarted { .. }
            | BatchMerged { .. }
            | BudgetExhausted { .. }
            | ScheduleSlipped { .. }
            | RunFinished { .. } => {}
        }
    }

    /// The kind's name, as its JSON's `type` says (`"ticket_done"`).
    ///
    /// ```
    /// let k = orch_core::EventKind::TicketDone { ticket: "T-1".parse().unwrap() };
    /// assert_eq!(k.name(), "ticket_done");
    /// assert_eq!(serde_json::to_value(&k).unwrap()["type"], k.name());
    /// ```
    pub fn name(&self) -> &'static str {
        use EventKind::*;
        match self {
            RunStarted { .. } => "run_started",
            TicketReady { .. } => "ticket_ready",
            WorkspaceReady { .. } => "workspace_ready",
            PhaseStarted { .. } => "phase_started",
            AgentStarted { .. } => "agent_started",
            AgentOutput { .. } => "agent_output",
            AgentFinished { .. } => "agent_finished",
            GateStarted { .. } => "gate_started",
            GateFinished { .. } => "gate_finished",
            PhasePassed { .. } => "phase_passed",
            AttemptFailed { .. } => "attempt_failed",
            RolledBack { .. } => "rolled_back",
            PhaseRestarted { .. } => "phase_restarted",
            Escalated { .. } => "escalated",
            DecisionRecorded { .. } => "decision_recorded",
            TicketDone { .. } => "ticket_done",
            TicketFailed { .. } => "ticket_failed",
            TicketBlocked { .. } => "ticket_blocked",
            TicketSkipped { .. } => "ticket_skipped",
            MergeStarted { .. } => "merge_started",
            BatchMerged { .. } => "batch_merged",
            BatchFailed { .. } => "batch_failed",
            BudgetExhausted { .. } => "budget_exhausted",
            RunFinished { .. } => "run_finished",
            ScheduleSlipped { .. } => "schedule_slipped",
            Accepted { .. } => "accepted",
        }
    }

    /// The ticket the event is about, if any.
    pub fn ticket(&self) -> Option<&TicketId> {
        use EventKind::*;
        match self {
            TicketReady { ticket }
            | WorkspaceReady { ticket, .. }
            | PhaseStarted { ticket, .. }
            | AgentStarted { ticket, .. }
            | AgentFinished { ticket, .. }
            | PhasePassed { ticket, .. }
            | AttemptFailed { ticket, .. }
            | RolledBack { ticket, .. }
            | PhaseRestarted { ticket, .. }
            | Escalated { ticket, .. }
            | DecisionRecorded { ticket, .. }
            | TicketDone { ticket }
            | TicketFailed { ticket, .. }
            | TicketBlocked { ticket, .. }
            | TicketSkipped { ticket } => Some(ticket),
            GateStarted {
                scope: GateScope::Phase { ticket, .. },
                ..
            }
            | GateFinished {
                scope: GateScope::Phase { ticket, .. },
                ..
            } => Some(ticket),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_32_lowercase_hex_digits_both_ways() {
        for v in [0, 1, 0xabc, u128::MAX, EventId::random().0] {
            let id = EventId(v);
            let want = format!("{v:032x}");
            assert_eq!(id.to_string(), want);
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{want}\""));
            assert_eq!(want.parse::<EventId>().unwrap(), id);
            assert_eq!(
                serde_json::from_str::<EventId>(&format!("\"{want}\"")).unwrap(),
                id
            );
        }
    }
}
