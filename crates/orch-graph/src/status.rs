//! [`StatusReport`]: where a run stands, in the remediation campaign's
//! shape, with a go/no-go call and the rule that made it.
//!
//! Everything in it is a function of the plan, the folded journal and the
//! time it is made at, so a report can be made again from any journal,
//! for any moment of the run.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use orch_core::{
    AgentId, AgentStatus, BatchStatus, Plan, RoleName, RunState, TicketId, TicketStatus, Timestamp,
};
use serde::Serialize;

use crate::{Analysis, GraphError, Ix, PlanGraph};

/// The go/no-go colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Colour {
    /// No rule fired: go on.
    Green,
    /// Go on, and look at what fired.
    Yellow,
    /// Stop and decide.
    Red,
}

impl Colour {
    /// `GREEN`, `YELLOW` or `RED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Green => "GREEN",
            Colour::Yellow => "YELLOW",
            Colour::Red => "RED",
        }
    }
}

/// The go/no-go rules, each with its colour. [`StatusReport::rules`]
/// writes them out with the thresholds of the plan's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// RED: a batch's gates failed after its tickets were merged.
    BatchGateFailed,
    /// RED: a ticket failed (its attempts ran out, or a person aborted it).
    TicketFailed,
    /// RED: the budget is spent.
    BudgetExhausted,
    /// RED: an escalation has waited longer than `policy.decision_age`.
    DecisionOverdue,
    /// RED: the projected finish is past the critical path's estimate by
    /// more than `policy.escalate_delay`, beyond any delay a person
    /// accepted (`orch accept --delay`).
    CriticalPathSlip,
    /// YELLOW: an escalation waits for its answer.
    DecisionOpen,
    /// YELLOW: the projected finish is past the estimate, by less than
    /// `policy.escalate_delay`.
    BehindSchedule,
    /// YELLOW: more failed attempts than `policy.retries_warn` that no
    /// person has reviewed (answered an escalation of their ticket after
    /// them).
    Retries,
}

impl Rule {
    /// The colour the rule gives when it fires.
    pub fn colour(self) -> Colour {
        match self {
            Rule::BatchGateFailed
            | Rule::TicketFailed
            | Rule::BudgetExhausted
            | Rule::DecisionOverdue
            | Rule::CriticalPathSlip => Colour::Red,
            Rule::DecisionOpen | Rule::BehindSchedule | Rule::Retries => Colour::Yellow,
        }
    }

    /// Its name in reports and metrics (`batch_gate_failed`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Rule::BatchGateFailed => "batch_gate_failed",
            Rule::TicketFailed => "ticket_failed",
            Rule::BudgetExhausted => "budget_exhausted",
            Rule::DecisionOverdue => "decision_overdue",
            Rule::CriticalPathSlip => "critical_path_slip",
            Rule::DecisionOpen => "decision_open",
            Rule::BehindSchedule => "behind_schedule",
            Rule::Retries => "retries",
        }
    }

    /// Every rule, RED ones first.
    pub const ALL: [Rule; 8] = [
        Rule::BatchGateFailed,
        Rule::TicketFailed,
        Rule::BudgetExhausted,
        Rule::DecisionOverdue,
        Rule::CriticalPathSlip,
        Rule::DecisionOpen,
        Rule::BehindSchedule,
        Rule::Retries,
    ];
}

/// A rule that fired, and on what.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fired {
    /// The rule.
    pub rule: Rule,
    /// Its colour.
    pub colour: Colour,
    /// What made it fire, for a person.
    pub detail: String,
}

/// Tickets by where they stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// In the plan.
    pub total: usize,
    /// Done.
    pub done: usize,
    /// Skipped by a person.
    pub skipped: usize,
    /// Failed.
    pub failed: usize,
    /// Blocked (a dependency failed or was aborted).
    pub blocked: usize,
    /// An agent or gate on them now.
    pub running: usize,
    /// Waiting for a person.
    pub awaiting_decision: usize,
    /// Not started yet.
    pub waiting: usize,
}

/// The estimate against what happened, in minutes of the plan's efforts
/// and milliseconds of wall time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Schedule {
    /// Every ticket's effort, summed (minutes).
    pub estimated_minutes: u64,
    /// The efforts of the tickets done (minutes).
    pub done_estimated_minutes: u64,
    /// What the tickets done took, each from its start to its end, less
    /// the time it waited for a person's answer (ms).
    pub done_took_ms: u64,
    /// Agent time over the run (ms).
    pub agent_ms: u64,
    /// Time taken over time estimated, from the tickets done (1 before
    /// any is).
    pub pace: f64,
    /// The critical path's length (minutes of effort).
    pub critical_path_minutes: u64,
    /// The critical path, first ticket first.
    pub critical_path: Vec<TicketId>,
    /// The longest chain of work left, each ticket's effort at the pace
    /// so far, less what a running ticket has already taken (ms).
    pub remaining_ms: u64,
    /// When the run started.
    pub started_at: Option<Timestamp>,
    /// Start plus the critical path's estimate.
    pub planned_finish: Option<Timestamp>,
    /// The report's time plus `remaining_ms`.
    pub projected_finish: Timestamp,
    /// Projected finish less planned finish (ms; negative is ahead).
    pub delay_ms: i64,
}

/// A ticket being worked on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InProgress {
    /// The ticket.
    pub ticket: TicketId,
    /// Its phase, if one started.
    pub phase: Option<String>,
    /// The phase's attempt.
    pub attempt: u32,
    /// When the ticket started.
    pub since: Option<Timestamp>,
    /// What holds it up: a question for a person, failed attempts.
    pub blockers: Vec<String>,
}

/// A ticket ready to start, in the order the dispatcher takes them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Next {
    /// The ticket.
    pub ticket: TicketId,
    /// Its priority (`P0`..`P3`).
    pub priority: String,
    /// Its effort plus the longest chain of dependents after it
    /// (minutes).
    pub path_minutes: u64,
    /// How long it can slip without moving the end (minutes).
    pub slack_minutes: u64,
}

/// Figures from the gates' evidence and the decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Tests the tickets' gates ran, summed over tickets.
    pub tests_ran: u64,
    /// Lowest line coverage a ticket's gates measured.
    pub coverage_min: Option<f64>,
    /// Gate runs that passed.
    pub gates_passed: u64,
    /// Gate runs that failed.
    pub gates_failed: u64,
    /// Failed attempts over the run.
    pub failed_attempts: u64,
    /// Rollbacks over the run.
    pub rollbacks: u64,
    /// Escalations waiting, with how long each has waited (ms).
    pub open_decisions: Vec<(TicketId, u64)>,
}

/// One role on one backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoleHealth {
    /// The role.
    pub role: String,
    /// The backend its agents ran on.
    pub backend: String,
    /// Agent runs.
    pub runs: u64,
    /// Runs that failed, errored or were lost.
    pub failed_runs: u64,
    /// Attempts that did not pass (the agent's or its gates' fault).
    pub failed_attempts: u64,
    /// Time its agents ran, summed (ms).
    pub busy_ms: u64,
    /// Agents busy on average over the run (busy time over the run's
    /// time so far).
    pub utilisation: f64,
}

/// How the agents and the people answering them are doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Health {
    /// By role and backend.
    pub roles: Vec<RoleHealth>,
    /// From a ticket's start to its end, over the tickets done: count,
    /// mean and longest (ms).
    pub lead_time: Summary,
    /// From an escalation to its answer, over the answered ones.
    pub decision_wait: Summary,
}

/// Count, sum, mean and largest of some durations (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// How many.
    pub count: u64,
    /// Their sum.
    pub sum_ms: u64,
    /// The largest.
    pub max_ms: u64,
}

impl Summary {
    fn add(&mut self, ms: u64) {
        self.count += 1;
        self.sum_ms += ms;
        self.max_ms = self.max_ms.max(ms);
    }

    /// The mean, 0 when empty.
    pub fn mean_ms(&self) -> u64 {
        self.sum_ms.checked_div(self.count).unwrap_or(0)
    }
}

/// A batch's go/no-go, as its gates decided it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchCall {
    /// The batch.
    pub batch: String,
    /// `GO` (merged, gates green), `NO-GO` (gates failed) or `OPEN`.
    pub call: &'static str,
    /// Gates passed of gates run.
    pub gates: (u32, u32),
    /// Why not, for a NO-GO.
    pub reason: Option<String>,
}

/// Where a run stands: progress, schedule, what is in progress and next,
/// risks, metrics, agent health, batches, and the go/no-go call with the
/// rules that made it.
///
/// ```
/// use orch_core::{Event, EventKind, Plan, RunState, Timestamp};
/// use orch_graph::status::{Colour, StatusReport};
/// let plan = Plan::from_toml_str(r#"
///     name = "p"
///     default_role = "dev"
///     [agents.dev]
///     backend = { kind = "command", argv = ["true"] }
///     [[phases]]
///     name = "work"
///     [[tickets]]
///     id = "T-1"
///     title = "t"
///     effort = "1h"
/// "#).unwrap();
/// let failed = Event::now(EventKind::TicketFailed {
///     ticket: "T-1".parse().unwrap(),
///     reason: "tests fail".into(),
/// });
/// let state = RunState::fold([&failed]);
/// let report = StatusReport::new(&plan, &state, Timestamp::now(), None).unwrap();
/// assert_eq!(report.colour, Colour::Red);
/// assert!(report.to_markdown().contains("**RED**"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// The plan's name.
    pub plan: String,
    /// The run, once started.
    pub run: Option<String>,
    /// The time the report is for.
    pub at: Timestamp,
    /// The previous report's time: "completed since" starts there.
    pub since: Option<Timestamp>,
    /// The call.
    pub colour: Colour,
    /// The rules that fired, RED ones first.
    pub fired: Vec<Fired>,
    /// Every rule, written out with the policy's thresholds.
    pub rules: Vec<(Rule, String)>,
    /// Tickets by status.
    pub progress: Progress,
    /// Estimate against time taken, and the projection.
    pub schedule: Schedule,
    /// Done since `since`, in the order they finished.
    pub completed: Vec<TicketId>,
    /// Being worked on, with what holds them up.
    pub in_progress: Vec<InProgress>,
    /// Ready, in dispatch order.
    pub next: Vec<Next>,
    /// Failed and blocked tickets, failed batches, spent budget, tickets
    /// that needed more than one attempt.
    pub risks: Vec<String>,
    /// From the gates' evidence.
    pub metrics: Metrics,
    /// Agents and decisions.
    pub health: Health,
    /// Each batch's call.
    pub batches: Vec<BatchCall>,
}

/// How the dispatcher orders ready tickets, for a person.
pub const DISPATCH_ORDER: &str = "P0 first, then the longest chain of work from the ticket to the end (the critical path before tickets with slack), then plan order";

impl StatusReport {
    /// The report for `state` (the fold of the run's journal) of `plan`
    /// at `at`, counting tickets completed after `since`.
    ///
    /// # Errors
    /// When the plan's tickets do not form a graph (a cycle, a dependency
    /// on no ticket).
    pub fn new(
        plan: &Plan,
        state: &RunState,
        at: Timestamp,
        since: Option<Timestamp>,
    ) -> Result<StatusReport, GraphError> {
        let graph = PlanGraph::from_plan(plan)?;
        let analysis = Analysis::new(&graph);
        let n = graph.len();
        let status = |t: Ix| {
            state
                .tickets
                .get(graph.id(t))
                .map_or(TicketStatus::Pending, |s| s.status)
        };

        let mut progress = Progress {
            total: n,
            ..Progress::default()
        };
        for t in 0..n as Ix {
            match status(t) {
                TicketStatus::Done => progress.done += 1,
                TicketStatus::Skipped => progress.skipped += 1,
                TicketStatus::Failed => progress.failed += 1,
                TicketStatus::Blocked => progress.blocked += 1,
                TicketStatus::Running => progress.running += 1,
                TicketStatus::AwaitingDecision => progress.awaiting_decision += 1,
                TicketStatus::Pending | TicketStatus::Ready => progress.waiting += 1,
            }
        }

        let schedule = schedule(&graph, &analysis, state, at);
        let metrics = metrics(state, at);
        let failed = failed_runs(state);
        let health = health(state, &failed, at);

        // Dispatch order among the ready ones, as the scheduler ranks.
        let mut ready: Vec<Ix> = (0..n as Ix)
            .filter(|&t| matches!(status(t), TicketStatus::Pending | TicketStatus::Ready))
            .filter(|&t| {
                graph
                    .dependencies(t)
                    .iter()
                    .all(|&d| status(d) == TicketStatus::Done)
            })
            .collect();
        ready.sort_unstable_by_key(|&t| (graph.priority(t), Reverse(analysis.tail[t as usize]), t));
        let next = ready
            .into_iter()
            .map(|t| Next {
                ticket: graph.ticket_id(t),
                priority: format!("{:?}", graph.priority(t)),
                path_minutes: analysis.tail[t as usize],
                slack_minutes: analysis.slack(t),
            })
            .collect();

        let mut completed: Vec<(Timestamp, TicketId)> = state
            .tickets
            .iter()
            .filter(|(_, t)| t.status == TicketStatus::Done)
            .filter_map(|(id, t)| Some((t.finished_at?, id.clone())))
            .filter(|(f, _)| since.is_none_or(|s| *f > s))
            .collect();
        completed.sort();

        let in_progress = state
            .tickets_by_id()
            .into_iter()
            .filter(|(_, t)| {
                matches!(
                    t.status,
                    TicketStatus::Running | TicketStatus::AwaitingDecision
                )
            })
            .map(|(id, t)| {
                let mut blockers = Vec::new();
                if t.status == TicketStatus::AwaitingDecision
                    && let Some(d) = state.open_decisions().filter(|d| &d.ticket == id).last()
                {
                    blockers.push(format!(
                        "waiting {} for a decision: {}",
                        ms(at.millis_since(d.asked_at)),
                        first_line(&d.question)
                    ));
                }
                if t.failed_in_phase > 0 {
                    blockers.push(format!(
                        "{} failed attempt(s) in this phase{}",
                        t.failed_in_phase,
                        t.feedback
                            .last()
                            .map(|f| format!(": {}", first_line(f)))
                            .unwrap_or_default()
                    ));
                }
                InProgress {
                    ticket: id.clone(),
                    phase: t.phase.as_ref().map(ToString::to_string),
                    attempt: t.attempt,
                    since: t.started_at,
                    blockers,
                }
            })
            .collect();

        let mut risks = Vec::new();
        for (id, t) in state.tickets_by_id() {
            let why = t.reason.as_deref().map(first_line).unwrap_or_default();
            match t.status {
                TicketStatus::Failed => risks.push(format!("{id} failed: {why}")),
                TicketStatus::Blocked => risks.push(format!("{id} is blocked: {why}")),
                _ if t.metrics.failed_attempts > 0 => risks.push(format!(
                    "{id}: {} failed attempt(s)",
                    t.metrics.failed_attempts
                )),
                _ => {}
            }
        }
        for (id, b) in &state.batches {
            if b.status == BatchStatus::Failed {
                risks.push(format!(
                    "batch {id} was not merged: {}",
                    b.reason.as_deref().map(first_line).unwrap_or_default()
                ));
            }
        }
        if state.budget_exhausted {
            risks.push("the budget is spent: no ticket starts".into());
        }
        for slip in state.slips.iter().filter(|s| s.accepted.is_none()) {
            risks.push(format!(
                "the projected finish slipped {} past the estimate (raised {}): waits for a person to accept the delay (`orch accept --delay NOTE`)",
                orch_core::format_minutes(slip.delay_minutes),
                slip.at
            ));
        }
        for r in &state.risks {
            risks.push(format!(
                "accepted by a person{}: {}",
                r.batch
                    .as_ref()
                    .map(|b| format!(" for batch {b}"))
                    .unwrap_or_default(),
                first_line(&r.note)
            ));
        }

        let batches = plan
            .batches
            .iter()
            .map(|b| {
                let s = state.batches.get(&b.id);
                BatchCall {
                    batch: b.id.to_string(),
                    call: match s.map(|s| s.status) {
                        Some(BatchStatus::Merged) => "GO",
                        Some(BatchStatus::Failed) => "NO-GO",
                        Some(BatchStatus::Open) | None => "OPEN",
                    },
                    gates: s.map_or((0, 0), |s| (s.gates_passed, s.gates_total)),
                    reason: s.and_then(|s| s.reason.clone()),
                }
            })
            .collect();

        // The rules.
        let policy = &plan.policy;
        let delay_bound_ms = policy.escalate_delay_minutes() * 60_000;
        let age_bound_ms = policy.decision_age_minutes() * 60_000;
        let rules = Rule::ALL
            .iter()
            .map(|&r| (r, rule_text(r, policy)))
            .collect();
        let mut fired = Vec::new();
        let mut fire = |rule: Rule, detail: String| {
            fired.push(Fired {
                rule,
                colour: rule.colour(),
                detail,
            });
        };
        for (id, b) in &state.batches {
            if b.status == BatchStatus::Failed {
                fire(
                    Rule::BatchGateFailed,
                    format!(
                        "batch {id}: {}",
                        b.reason.as_deref().map(first_line).unwrap_or_default()
                    ),
                );
            }
        }
        for (id, t) in state.tickets_by_id() {
            if t.status == TicketStatus::Failed {
                fire(
                    Rule::TicketFailed,
                    format!(
                        "{id}: {}",
                        t.reason.as_deref().map(first_line).unwrap_or_default()
                    ),
                );
            }
        }
        if state.budget_exhausted {
            fire(Rule::BudgetExhausted, "the budget is spent".into());
        }
        for (ticket, waited) in &metrics.open_decisions {
            if *waited > age_bound_ms {
                fire(
                    Rule::DecisionOverdue,
                    format!("{ticket} has waited {} for a decision", ms(*waited)),
                );
            } else {
                fire(
                    Rule::DecisionOpen,
                    format!("{ticket} waits for a decision ({} so far)", ms(*waited)),
                );
            }
        }
        if schedule.delay_ms > 0 {
            let delay = schedule.delay_ms.unsigned_abs();
            // A delay a person accepted is the new baseline: only slip
            // past it counts toward RED.
            let accepted_ms = state
                .slips
                .iter()
                .filter(|s| s.accepted.is_some())
                .map(|s| s.delay_minutes * 60_000)
                .max()
                .unwrap_or(0);
            let projection = format!(
                "projected finish {} is {} past the critical path's estimate{}",
                schedule.projected_finish,
                ms(delay),
                if accepted_ms > 0 {
                    format!(
                        " ({} of it accepted by a person)",
                        ms(accepted_ms.min(delay))
                    )
                } else {
                    String::new()
                }
            );
            if delay.saturating_sub(accepted_ms) > delay_bound_ms {
                fire(Rule::CriticalPathSlip, projection);
            } else {
                fire(Rule::BehindSchedule, projection);
            }
        }
        let unseen = unreviewed(state, &failed);
        if unseen > u64::from(policy.retries_warn()) {
            fire(
                Rule::Retries,
                format!("{unseen} failed attempts no person has reviewed"),
            );
        }
        fired.sort_by_key(|f| Reverse(f.colour));
        let colour = fired.first().map_or(Colour::Green, |f| f.colour);

        Ok(StatusReport {
            plan: plan.name.clone(),
            run: state.run.as_ref().map(ToString::to_string),
            at,
            since,
            colour,
            fired,
            rules,
            progress,
            schedule,
            completed: completed.into_iter().map(|(_, id)| id).collect(),
            in_progress,
            next,
            risks,
            metrics,
            health,
            batches,
        })
    }

    /// The report in Markdown (`STATUS_REPORT.md`, `orch status
    /// --report`).
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Status report: {}\n", self.plan);
        let _ = writeln!(
            s,
            "Run `{}`, as of {}.\n",
            self.run.as_deref().unwrap_or("(not started)"),
            self.at
        );
        let _ = writeln!(s, "## Go/No-Go: **{}**\n", self.colour.as_str());
        if self.fired.is_empty() {
            s.push_str("No rule fired.\n");
        }
        for f in &self.fired {
            let _ = writeln!(
                s,
                "- {} `{}`: {}",
                f.colour.as_str(),
                f.rule.name(),
                md(&f.detail)
            );
        }
        s.push_str("\nThe rules (thresholds from the plan's `policy`):\n\n");
        for (r, text) in &self.rules {
            let _ = writeln!(s, "- {} `{}`: {text}", r.colour().as_str(), r.name());
        }
        s.push_str("- GREEN: no rule fired.\n");

        let p = &self.progress;
        let _ = writeln!(
            s,
            "\n## Progress\n\n{}/{} tickets done; {} in progress, {} waiting for a decision, {} not started, {} failed, {} blocked, {} skipped.",
            p.done,
            p.total,
            p.running,
            p.awaiting_decision,
            p.waiting,
            p.failed,
            p.blocked,
            p.skipped
        );

        let sc = &self.schedule;
        s.push_str("\n## Schedule\n\n| | |\n|---|---|\n");
        let _ = writeln!(
            s,
            "| effort estimated, all tickets | {} |",
            orch_core::format_minutes(sc.estimated_minutes)
        );
        let _ = writeln!(
            s,
            "| effort estimated, tickets done | {} |",
            orch_core::format_minutes(sc.done_estimated_minutes)
        );
        let _ = writeln!(
            s,
            "| time the tickets done took | {} |",
            ms(sc.done_took_ms)
        );
        let _ = writeln!(s, "| agent time | {} |", ms(sc.agent_ms));
        let _ = writeln!(s, "| pace (time taken / estimated) | {:.3} |", sc.pace);
        let _ = writeln!(
            s,
            "| critical path | {} ({}) |",
            orch_core::format_minutes(sc.critical_path_minutes),
            sc.critical_path
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" → ")
        );
        let _ = writeln!(
            s,
            "| longest chain of work left, at the pace so far | {} |",
            ms(sc.remaining_ms)
        );
        if let Some(p) = sc.planned_finish {
            let _ = writeln!(s, "| planned finish | {p} |");
        }
        let _ = writeln!(s, "| projected finish | {} |", sc.projected_finish);
        let _ = writeln!(
            s,
            "| projected delay | {} |",
            if sc.delay_ms > 0 {
                ms(sc.delay_ms.unsigned_abs())
            } else {
                format!("none ({} ahead)", ms(sc.delay_ms.unsigned_abs()))
            }
        );

        let _ = writeln!(
            s,
            "\n## Completed{}\n",
            self.since
                .map(|t| format!(" since {t}"))
                .unwrap_or_default()
        );
        list(&mut s, self.completed.iter().map(ToString::to_string));

        s.push_str("\n## In progress\n\n");
        if self.in_progress.is_empty() {
            s.push_str("None.\n");
        } else {
            s.push_str("| ticket | phase | attempt | since | blockers |\n|---|---|---|---|---|\n");
            for t in &self.in_progress {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    t.ticket,
                    t.phase.as_deref().unwrap_or("-"),
                    t.attempt,
                    t.since.map(|t| t.to_string()).unwrap_or_default(),
                    md(&t.blockers.join("; "))
                );
            }
        }

        let _ = writeln!(s, "\n## Next\n\nIn dispatch order: {DISPATCH_ORDER}.\n");
        if self.next.is_empty() {
            s.push_str("None ready.\n");
        } else {
            s.push_str("| # | ticket | priority | chain of work to the end | slack |\n|---|---|---|---|---|\n");
            for (i, t) in self.next.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    i + 1,
                    t.ticket,
                    t.priority,
                    orch_core::format_minutes(t.path_minutes),
                    if t.slack_minutes == 0 {
                        "none (critical)".to_owned()
                    } else {
                        orch_core::format_minutes(t.slack_minutes)
                    }
                );
            }
        }

        s.push_str("\n## Risks and issues\n\n");
        list(&mut s, self.risks.iter().map(|r| md(r)));

        let m = &self.metrics;
        s.push_str("\n## Metrics\n\n| | |\n|---|---|\n");
        let _ = writeln!(s, "| tests run by the tickets' gates | {} |", m.tests_ran);
        let _ = writeln!(
            s,
            "| lowest line coverage | {} |",
            m.coverage_min
                .map_or_else(|| "not measured".to_owned(), |c| format!("{c:.1}%"))
        );
        let _ = writeln!(
            s,
            "| gate runs passed / failed | {} / {} |",
            m.gates_passed, m.gates_failed
        );
        let _ = writeln!(s, "| failed attempts | {} |", m.failed_attempts);
        let _ = writeln!(s, "| rollbacks | {} |", m.rollbacks);
        let _ = writeln!(
            s,
            "| open decisions | {} |",
            if m.open_decisions.is_empty() {
                "none".to_owned()
            } else {
                m.open_decisions
                    .iter()
                    .map(|(t, w)| format!("{t} ({} old)", ms(*w)))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );

        let h = &self.health;
        s.push_str("\n## Agent health\n\n");
        if h.roles.is_empty() {
            s.push_str("No agent has run.\n");
        } else {
            s.push_str("| role | backend | runs | failed runs | failed attempts | busy | utilisation |\n|---|---|---|---|---|---|---|\n");
            for r in &h.roles {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {:.2} |",
                    r.role,
                    md(&r.backend),
                    r.runs,
                    r.failed_runs,
                    r.failed_attempts,
                    ms(r.busy_ms),
                    r.utilisation
                );
            }
        }
        let summary = |what: &str, x: &Summary| {
            if x.count == 0 {
                format!("none {what}")
            } else {
                format!(
                    "{} {what}, mean {}, longest {}",
                    x.count,
                    ms(x.mean_ms()),
                    ms(x.max_ms)
                )
            }
        };
        let _ = writeln!(
            s,
            "\nFrom a ticket's start to its end: {}. From an escalation to its answer: {}.",
            summary("done", &h.lead_time),
            summary("answered", &h.decision_wait)
        );

        if !self.batches.is_empty() {
            s.push_str(
                "\n## Batches\n\n| batch | call | gates passed | record |\n|---|---|---|---|\n",
            );
            for b in &self.batches {
                let _ = writeln!(
                    s,
                    "| {} | {} | {}/{} | {} |",
                    b.batch,
                    b.call,
                    b.gates.0,
                    b.gates.1,
                    if b.call == "OPEN" {
                        "-".to_owned()
                    } else {
                        format!("[go-no-go/{0}.md](go-no-go/{0}.md)", b.batch)
                    }
                );
            }
        }
        s
    }

    /// The report's figures as OpenMetrics text (`orch status --metrics`),
    /// for Prometheus to scrape or a textfile collector to read.
    pub fn to_openmetrics(&self) -> String {
        let mut s = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(s, "# TYPE {name} {kind}");
            let _ = writeln!(s, "# HELP {name} {help}");
            for (suffix_labels, value) in samples {
                let _ = writeln!(s, "{name}{suffix_labels} {value}");
            }
        };
        let p = &self.progress;
        family(
            "orch_tickets",
            "gauge",
            "Tickets by status.",
            &[
                ("done", p.done),
                ("skipped", p.skipped),
                ("failed", p.failed),
                ("blocked", p.blocked),
                ("running", p.running),
                ("awaiting_decision", p.awaiting_decision),
                ("waiting", p.waiting),
            ]
            .map(|(k, v)| (format!("{{status=\"{k}\"}}"), v.to_string())),
        );
        family(
            "orch_go_no_go",
            "stateset",
            "The status report's call.",
            &[Colour::Green, Colour::Yellow, Colour::Red].map(|c| {
                (
                    format!("{{orch_go_no_go=\"{}\"}}", c.as_str()),
                    u8::from(c == self.colour).to_string(),
                )
            }),
        );
        let fired: Vec<(String, String)> = Rule::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{rule=\"{}\"}}", r.name()),
                    self.fired
                        .iter()
                        .filter(|f| f.rule == *r)
                        .count()
                        .to_string(),
                )
            })
            .collect();
        family(
            "orch_rule_fired",
            "gauge",
            "How many times each go/no-go rule fires now.",
            &fired,
        );
        let sc = &self.schedule;
        family(
            "orch_projected_delay_seconds",
            "gauge",
            "Projected finish less planned finish (negative: ahead).",
            &[(String::new(), secs_signed(sc.delay_ms))],
        );
        family(
            "orch_remaining_work_seconds",
            "gauge",
            "The longest chain of work left, at the pace so far.",
            &[(String::new(), secs(sc.remaining_ms))],
        );
        family(
            "orch_pace_ratio",
            "gauge",
            "Time the tickets done took over their estimate.",
            &[(String::new(), format!("{}", sc.pace))],
        );
        let m = &self.metrics;
        family(
            "orch_failed_attempts",
            "counter",
            "Failed attempts over the run.",
            &[("_total".into(), m.failed_attempts.to_string())],
        );
        family(
            "orch_gate_runs",
            "counter",
            "Gate runs by result.",
            &[
                (
                    "_total{result=\"passed\"}".into(),
                    m.gates_passed.to_string(),
                ),
                (
                    "_total{result=\"failed\"}".into(),
                    m.gates_failed.to_string(),
                ),
            ],
        );
        family(
            "orch_tests_ran",
            "gauge",
            "Tests the tickets' gates ran.",
            &[(String::new(), m.tests_ran.to_string())],
        );
        family(
            "orch_open_decisions",
            "gauge",
            "Escalations waiting for a person.",
            &[(String::new(), m.open_decisions.len().to_string())],
        );
        let h = &self.health;
        let role = |r: &RoleHealth| {
            format!(
                "role=\"{}\",backend=\"{}\"",
                label(&r.role),
                label(&r.backend)
            )
        };
        let per_role = |f: &dyn Fn(&RoleHealth) -> String, total: bool| -> Vec<(String, String)> {
            h.roles
                .iter()
                .map(|r| {
                    (
                        format!("{}{{{}}}", if total { "_total" } else { "" }, role(r)),
                        f(r),
                    )
                })
                .collect()
        };
        family(
            "orch_agent_runs",
            "counter",
            "Agent runs by role and backend.",
            &per_role(&|r| r.runs.to_string(), true),
        );
        family(
            "orch_agent_failed_runs",
            "counter",
            "Agent runs that failed, errored or were lost.",
            &per_role(&|r| r.failed_runs.to_string(), true),
        );
        family(
            "orch_role_failed_attempts",
            "counter",
            "Attempts that did not pass, by role and backend.",
            &per_role(&|r| r.failed_attempts.to_string(), true),
        );
        family(
            "orch_agent_busy_seconds",
            "counter",
            "Time agents ran, by role and backend.",
            &per_role(&|r| secs(r.busy_ms), true),
        );
        family(
            "orch_agent_utilisation_ratio",
            "gauge",
            "Agents busy on average over the run, by role and backend.",
            &per_role(&|r| format!("{}", r.utilisation), false),
        );
        for (name, help, sum) in [
            (
                "orch_ticket_lead_time_seconds",
                "From a ticket's start to its end, over the tickets done.",
                h.lead_time,
            ),
            (
                "orch_decision_wait_seconds",
                "From an escalation to its answer, over the answered ones.",
                h.decision_wait,
            ),
        ] {
            family(
                name,
                "summary",
                help,
                &[
                    ("_count".into(), sum.count.to_string()),
                    ("_sum".into(), secs(sum.sum_ms)),
                ],
            );
        }
        s.push_str("# EOF\n");
        s
    }
}

/// A rule written out with the policy's thresholds.
fn rule_text(r: Rule, policy: &orch_core::Policy) -> String {
    let delay = orch_core::format_minutes(policy.escalate_delay_minutes());
    let age = orch_core::format_minutes(policy.decision_age_minutes());
    match r {
        Rule::BatchGateFailed => "a batch's gates failed after its tickets were merged".into(),
        Rule::TicketFailed => "a ticket failed".into(),
        Rule::BudgetExhausted => "the budget is spent".into(),
        Rule::DecisionOverdue => {
            format!("an escalation has waited more than {age} (`policy.decision_age`)")
        }
        Rule::CriticalPathSlip => format!(
            "the projected finish is more than {delay} past the critical path's estimate (`policy.escalate_delay`), beyond any delay a person accepted"
        ),
        Rule::DecisionOpen => format!("an escalation has waited up to {age}"),
        Rule::BehindSchedule => format!(
            "the projected finish is past the critical path's estimate by up to {delay} more than a person accepted"
        ),
        Rule::Retries => format!(
            "more than {} failed attempts no person has reviewed by answering an escalation of their ticket (`policy.retries_warn`)",
            policy.retries_warn()
        ),
    }
}

/// The schedule: the pace of the tickets done, and the longest chain of
/// work left at that pace.
fn schedule(
    graph: &PlanGraph,
    analysis: &Analysis<'_>,
    state: &RunState,
    at: Timestamp,
) -> Schedule {
    let p = project(graph, analysis.length, state, at);
    Schedule {
        estimated_minutes: graph.total_effort(),
        done_estimated_minutes: p.done_minutes,
        done_took_ms: p.done_ms,
        agent_ms: state
            .tickets
            .values()
            .map(|t| t.metrics.work.agent_ms)
            .sum(),
        pace: p.pace,
        critical_path_minutes: analysis.length,
        critical_path: analysis
            .critical_path
            .iter()
            .map(|&t| graph.ticket_id(t))
            .collect(),
        remaining_ms: p.remaining_ms,
        started_at: state.started_at,
        planned_finish: p.planned_finish,
        projected_finish: p.projected_finish,
        delay_ms: p.delay_ms,
    }
}

/// Where the run is headed at `at`, at the pace of its done tickets.
struct Projection {
    done_minutes: u64,
    done_ms: u64,
    pace: f64,
    remaining_ms: u64,
    /// The chain of tickets left that makes `remaining_ms`, in order.
    path: Vec<Ix>,
    planned_finish: Option<Timestamp>,
    projected_finish: Timestamp,
    delay_ms: i64,
}

/// The pace so far (done tickets' time against their efforts) applied to
/// the work left, whose longest chain gives the projected finish; against
/// the start plus `critical_path_minutes`, the delay. O(tickets + edges).
fn project(
    graph: &PlanGraph,
    critical_path_minutes: u64,
    state: &RunState,
    at: Timestamp,
) -> Projection {
    let n = graph.len();
    let ticket = |t: Ix| state.tickets.get(graph.id(t));
    // Time waiting for a person is not the pace of the work.
    let mut waited: std::collections::HashMap<&orch_core::TicketId, u64> =
        std::collections::HashMap::new();
    for d in &state.decisions {
        if let Some(answered) = d.answered_at {
            *waited.entry(&d.ticket).or_default() += answered.millis_since(d.asked_at);
        }
    }
    let (mut done_min, mut done_ms) = (0u64, 0u64);
    for t in 0..n as Ix {
        if let Some(s) = ticket(t)
            && s.status == TicketStatus::Done
            && let (Some(a), Some(b)) = (s.started_at, s.finished_at)
        {
            done_min += u64::from(graph.effort(t));
            let wait = waited.get(&graph.ticket_id(t)).copied().unwrap_or(0);
            done_ms += b.millis_since(a).saturating_sub(wait);
        }
    }
    let pace = if done_min == 0 {
        1.0
    } else {
        done_ms as f64 / (done_min as f64 * 60_000.0)
    };
    // Each ticket's work left (ms at the pace so far), then the longest
    // chain of it.
    let left: Vec<u64> = (0..n as Ix)
        .map(|t| {
            let whole = (f64::from(graph.effort(t)) * 60_000.0 * pace) as u64;
            match ticket(t) {
                Some(s) if matches!(s.status, TicketStatus::Done | TicketStatus::Skipped) => 0,
                Some(s) if s.started_at.is_some() && !s.status.is_final() => {
                    whole.saturating_sub(at.millis_since(s.started_at.unwrap_or(at)))
                }
                _ => whole,
            }
        })
        .collect();
    let tail = crate::analysis::tails(graph, |t| left[t]);
    let remaining_ms = tail.iter().copied().max().unwrap_or(0);
    // The chain: from the first ticket whose tail is the whole, each time
    // the first dependent that continues it.
    let mut path = Vec::new();
    let mut next = (0..n).find(|&t| remaining_ms > 0 && tail[t] == remaining_ms);
    while let Some(t) = next {
        if left[t] > 0 {
            path.push(t as Ix);
        }
        let rest = tail[t] - left[t];
        next = graph
            .dependents(t as Ix)
            .iter()
            .map(|&d| d as usize)
            .find(|&d| rest > 0 && tail[d] == rest);
    }
    let projected_finish = Timestamp(at.0.saturating_add(remaining_ms));
    let planned_finish = state
        .started_at
        .map(|s| Timestamp(s.0.saturating_add(critical_path_minutes * 60_000)));
    let delay_ms = planned_finish.map_or(0, |p| projected_finish.0 as i64 - p.0 as i64);
    Projection {
        done_minutes: done_min,
        done_ms,
        pace,
        remaining_ms,
        path,
        planned_finish,
        projected_finish,
        delay_ms,
    }
}

/// The non-blocking question to raise at `at`, if the projected finish
/// is more than `policy.escalate_delay` past the critical path's estimate
/// (`critical_path_minutes` after the start) and has slipped by another
/// `escalate_delay` since the last time it was raised: a
/// [`orch_core::EventKind::ScheduleSlipped`] for a person to accept (or to stop the
/// run over). The engine asks after each ticket it finishes.
///
/// ```
/// use orch_core::{Plan, RunState, Timestamp};
/// use orch_graph::{Analysis, PlanGraph, status};
/// let plan = Plan::from_toml_str(r#"
///     name = "p"
///     default_role = "dev"
///     [policy]
///     escalate_delay = "1h"
///     [agents.dev]
///     backend = { kind = "command", argv = ["true"] }
///     [[phases]]
///     name = "work"
///     [[tickets]]
///     id = "A"
///     title = "a"
///     effort = "2h"
/// "#).unwrap();
/// let graph = PlanGraph::from_plan(&plan).unwrap();
/// let length = Analysis::new(&graph).length;
/// let mut state = RunState::default();
/// state.started_at = Some(Timestamp(0));
/// // An hour in, nothing done: the two hours left end an hour late, not more.
/// assert!(status::slip(&graph, length, &state, &plan.policy, Timestamp(3_600_000)).is_none());
/// // Two hours in: two hours late.
/// let raised = status::slip(&graph, length, &state, &plan.policy, Timestamp(7_200_000)).unwrap();
/// assert!(matches!(raised, orch_core::EventKind::ScheduleSlipped { delay_minutes: 120, .. }));
/// ```
pub fn slip(
    graph: &PlanGraph,
    critical_path_minutes: u64,
    state: &RunState,
    policy: &orch_core::Policy,
    at: Timestamp,
) -> Option<orch_core::EventKind> {
    let bound = policy.escalate_delay_minutes();
    let p = project(graph, critical_path_minutes, state, at);
    let delay_minutes = u64::try_from(p.delay_ms).ok()? / 60_000;
    let last = state.slips.last().map(|s| s.delay_minutes);
    if delay_minutes <= bound || last.is_some_and(|l| delay_minutes < l + bound.max(1)) {
        return None;
    }
    Some(orch_core::EventKind::ScheduleSlipped {
        delay_minutes,
        planned_finish: p.planned_finish?,
        projected_finish: p.projected_finish,
        path: p.path.iter().map(|&t| graph.ticket_id(t)).collect(),
    })
}

fn metrics(state: &RunState, at: Timestamp) -> Metrics {
    let mut m = Metrics::default();
    for t in state.tickets.values() {
        m.tests_ran += t.metrics.tests_ran.unwrap_or(0);
        if let Some(c) = t.metrics.coverage {
            m.coverage_min = Some(m.coverage_min.map_or(c, |x: f64| x.min(c)));
        }
        m.failed_attempts += u64::from(t.metrics.failed_attempts);
        m.rollbacks += u64::from(t.metrics.rollbacks);
    }
    for g in &state.gate_runs {
        if g.report.passed() {
            m.gates_passed += 1;
        } else {
            m.gates_failed += 1;
        }
    }
    m.open_decisions = state
        .open_decisions()
        .map(|d| (d.ticket.clone(), at.millis_since(d.asked_at)))
        .collect();
    m
}

/// The agent runs whose attempt did not pass: the agent failed, a gate
/// failed, a later attempt at the same phase followed, or the ticket
/// failed in that phase.
fn failed_runs(state: &RunState) -> Vec<(&AgentId, &orch_core::AgentRecord)> {
    let gate_failed: std::collections::HashSet<(&TicketId, &str, u32)> = state
        .gate_runs
        .iter()
        .filter(|g| !g.report.passed())
        .filter_map(|g| match &g.scope {
            orch_core::GateScope::Phase {
                ticket,
                phase,
                attempt,
            } => Some((ticket, phase.as_str(), *attempt)),
            orch_core::GateScope::Batch { .. } => None,
        })
        .collect();
    let mut last: BTreeMap<(&TicketId, &str), u32> = BTreeMap::new();
    for a in state.agents.values() {
        let e = last.entry((&a.ticket, a.phase.as_str())).or_default();
        *e = (*e).max(a.attempt);
    }
    state
        .agents
        .iter()
        .filter(|(_, a)| {
            matches!(
                a.status,
                AgentStatus::Failed | AgentStatus::Errored | AgentStatus::Lost
            ) || gate_failed.contains(&(&a.ticket, a.phase.as_str(), a.attempt))
                || last
                    .get(&(&a.ticket, a.phase.as_str()))
                    .is_some_and(|&l| l > a.attempt)
                || state.tickets.get(&a.ticket).is_some_and(|t| {
                    t.status == TicketStatus::Failed && t.phase.as_ref() == Some(&a.phase)
                })
        })
        .collect()
}

/// Failed runs no person has looked at: none answered an escalation of
/// their ticket after they ended.
fn unreviewed(state: &RunState, failed: &[(&AgentId, &orch_core::AgentRecord)]) -> u64 {
    failed
        .iter()
        .filter(|(_, a)| {
            !state
                .decisions
                .iter()
                .any(|d| d.ticket == a.ticket && d.answered_at.is_some_and(|t| t >= a.updated_at))
        })
        .count() as u64
}

fn health(
    state: &RunState,
    failed: &[(&AgentId, &orch_core::AgentRecord)],
    at: Timestamp,
) -> Health {
    let mut roles: BTreeMap<(RoleName, String), RoleHealth> = BTreeMap::new();
    let failed: std::collections::HashSet<&AgentId> = failed.iter().map(|(id, _)| *id).collect();
    for (id, a) in &state.agents {
        let r = roles
            .entry((a.role.clone(), a.backend.to_string()))
            .or_insert_with(|| RoleHealth {
                role: a.role.to_string(),
                backend: a.backend.to_string(),
                ..RoleHealth::default()
            });
        r.runs += 1;
        r.failed_runs += u64::from(matches!(
            a.status,
            AgentStatus::Failed | AgentStatus::Errored | AgentStatus::Lost
        ));
        r.failed_attempts += u64::from(failed.contains(id));
        let end = if a.status == AgentStatus::Running {
            at
        } else {
            a.updated_at
        };
        r.busy_ms += end.millis_since(a.started_at);
    }
    let run_ms = state.started_at.map_or(0, |s| at.millis_since(s));
    let mut roles: Vec<RoleHealth> = roles.into_values().collect();
    for r in &mut roles {
        r.utilisation = if run_ms == 0 {
            0.0
        } else {
            r.busy_ms as f64 / run_ms as f64
        };
    }
    let mut h = Health {
        roles,
        ..Health::default()
    };
    for t in state.tickets.values() {
        if t.status == TicketStatus::Done
            && let (Some(a), Some(b)) = (t.started_at, t.finished_at)
        {
            h.lead_time.add(b.millis_since(a));
        }
    }
    for d in &state.decisions {
        if let Some(answered) = d.answered_at {
            h.decision_wait.add(answered.millis_since(d.asked_at));
        }
    }
    h
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// Text safe in a Markdown table cell or list item.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn list(s: &mut String, items: impl Iterator<Item = String>) {
    let mut any = false;
    for i in items {
        any = true;
        let _ = writeln!(s, "- {i}");
    }
    if !any {
        s.push_str("None.\n");
    }
}

/// A duration for a person: `42s`, `3m05s`, `2h10m`.
fn ms(ms: u64) -> String {
    let s = ms / 1000;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, _) if ms < 1000 => format!("{ms}ms"),
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn secs_signed(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    format!("{sign}{}", secs(ms.unsigned_abs()))
}

/// An OpenMetrics label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
