//! Observers: the state files, and progress for a person watching.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use orch_core::{Event, EventKind, GateScope, Plan, RunState};
use orch_graph::Observer;

/// Keeps `ORCHESTRATOR_STATE.md`, `AGENT_REGISTRY.md`, `TEST_RESULTS.md`,
/// `DECISION_QUEUE.md` and `tickets/*.json` in a directory up to date:
/// re-rendered from the state at most every 200 ms, and when the run stops.
pub struct Views {
    dir: PathBuf,
    plan: Plan,
    last: Mutex<Option<Instant>>,
}

impl Views {
    /// State files in `dir`, for `plan`.
    pub fn new(dir: &Path, plan: &Plan) -> Views {
        Views {
            dir: dir.to_path_buf(),
            plan: plan.clone(),
            last: Mutex::new(None),
        }
    }

    fn write(&self, state: &RunState) {
        if let Err(e) = orch_state::views::write_views(&self.dir, state, Some(&self.plan)) {
            tracing::warn!(error = %e, "cannot write the state files");
        }
    }
}

impl Observer for Views {
    fn event(&self, event: &Event, state: &RunState) {
        let important = matches!(
            event.kind,
            EventKind::Escalated { .. } | EventKind::RunStarted { .. }
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if important || last.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            *last = Some(Instant::now());
            self.write(state);
        }
    }

    fn finished(&self, state: &RunState) {
        self.write(state);
    }
}

/// Progress: a bar of finished tickets on a terminal, one line per step
/// otherwise (logs, CI).
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Progress over the tickets of `plan`.
    pub fn new(plan: &Plan) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(plan.tickets.len() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tickets  {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn line(&self, s: String) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }
}

/// One line for the events a person wants to see.
pub fn describe(e: &EventKind) -> Option<String> {
    use EventKind as K;
    Some(match e {
        K::RunStarted { run, resumed, .. } => {
            format!("run {run} {}", if *resumed { "resumed" } else { "started" })
        }
        K::PhaseStarted {
            ticket,
            phase,
            attempt,
        }
        | K::AgentStarted {
            ticket,
            phase,
            attempt,
            ..
        } => format!("{ticket}: {phase} (attempt {attempt})"),
        K::GateFinished { scope, report } => {
            let what = match scope {
                GateScope::Phase { ticket, .. } => ticket.to_string(),
                GateScope::Batch { batch } => batch.to_string(),
            };
            format!(
                "{what}: gate `{}` {}: {}",
                report.gate,
                if report.passed() { "passed" } else { "FAILED" },
                report.reason
            )
        }
        K::AttemptFailed {
            ticket,
            phase,
            attempt,
            feedback,
        } => format!(
            "{ticket}: {phase} attempt {attempt} failed: {}",
            feedback
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(no reason given)")
        ),
        K::PhaseRestarted {
            ticket,
            from,
            feedback_file,
        } => format!("{ticket}: restarting from {from} with {feedback_file}"),
        K::RolledBack { ticket, commit, .. } => {
            format!(
                "{ticket}: rolled back to {}",
                &commit[..commit.len().min(10)]
            )
        }
        K::Escalated {
            ticket, question, ..
        } => format!("{ticket}: ESCALATED: {question}"),
        K::DecisionRecorded {
            ticket, decision, ..
        } => format!("{ticket}: decision recorded: {decision:?}"),
        K::TicketDone { ticket } => format!("{ticket}: done"),
        K::TicketFailed { ticket, reason } => format!("{ticket}: FAILED: {reason}"),
        K::TicketBlocked { ticket, by } => format!("{ticket}: blocked by {by}"),
        K::TicketSkipped { ticket } => format!("{ticket}: skipped"),
        K::MergeStarted { batch } => format!("{batch}: merging"),
        K::BatchMerged { batch, commit } => {
            format!("{batch}: merged at {}", &commit[..commit.len().min(10)])
        }
        K::BatchFailed { batch, reason } => format!("{batch}: FAILED: {reason}"),
        K::BudgetExhausted { tokens, usd } => {
            format!("budget spent ({tokens} tokens, ${usd:.2}); stopping")
        }
        K::RunFinished { outcome } => format!("run finished: {outcome:?}"),
        _ => return None,
    })
}

impl Observer for Progress {
    fn event(&self, event: &Event, state: &RunState) {
        // Only these change how many tickets are finished; counting on every
        // event would make a large run quadratic.
        let settles = matches!(
            event.kind,
            EventKind::TicketDone { .. }
                | EventKind::TicketFailed { .. }
                | EventKind::TicketBlocked { .. }
                | EventKind::TicketSkipped { .. }
                | EventKind::RunStarted { .. }
        );
        if let Some(bar) = self.bar.as_ref().filter(|_| settles) {
            let finished = state
                .tickets
                .values()
                .filter(|t| t.status.is_final())
                .count();
            bar.set_position(finished as u64);
        }
        if let Some(s) = describe(&event.kind) {
            if let Some(bar) = &self.bar {
                bar.set_message(s.clone());
            }
            self.line(s);
        }
    }

    fn finished(&self, _: &RunState) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
