//! Progress for a person watching a run (the state files are
//! `orch_state::StateFiles`).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use orch_core::{Event, EventKind, GateScope, Plan, RunState};
use orch_graph::Observer;

/// Progress: a bar of finished tickets on a terminal, one line per step
/// otherwise (logs, CI).
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Tickets finished so far (kept here: counting the state's tickets
    /// on every finish would make a large run quadratic).
    finished: std::sync::atomic::AtomicU64,
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
        Progress {
            bar,
            finished: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn line(&self, s: String) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }
}

/// The first line of `s` that is not blank.
fn first_line(s: &str) -> Option<&str> {
    s.lines().find(|l| !l.trim().is_empty())
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
            first_line(feedback).unwrap_or("(no reason given)")
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
        K::MergeStarted { batch, .. } => format!("{batch}: merging"),
        K::BatchMerged { batch, commit, .. } => {
            format!("{batch}: merged at {}", &commit[..commit.len().min(10)])
        }
        K::BatchFailed { batch, reason } => format!("{batch}: FAILED: {reason}"),
        K::BudgetExhausted { tokens, usd } => {
            format!("budget spent ({tokens} tokens, ${usd:.4}); stopping")
        }
        K::RunFinished { outcome } => format!("run finished: {outcome:?}"),
        _ => return None,
    })
}

/// How many tickets are finished after `event`, given `before` finished
/// before it; `None` when `event` does not change that. A run that starts
/// (or resumes) counts what its state already has once; after that each
/// ticket that becomes final adds one, without a look at the others.
fn finished_after(before: u64, event: &EventKind, state: &RunState) -> Option<u64> {
    match event {
        EventKind::RunStarted { .. } => Some(
            state
                .tickets
                .values()
                .filter(|t| t.status.is_final())
                .count() as u64,
        ),
        EventKind::TicketDone { .. }
        | EventKind::TicketFailed { .. }
        | EventKind::TicketBlocked { .. }
        | EventKind::TicketSkipped { .. } => Some(before + 1),
        _ => None,
    }
}

/// Most characters of an agent's progress shown on the bar.
const MAX_PROGRESS: usize = 100;

/// One short line for what an agent is doing, for the progress bar's
/// message; `None` for what is not worth showing (a tool that answered
/// without error).
pub fn describe_progress(agent: &orch_core::AgentId, p: &orch_core::Progress) -> Option<String> {
    use orch_core::Progress as P;
    let first_line = |s: &str| first_line(s).unwrap_or("").trim().to_owned();
    let what = match p {
        P::Text { text } => first_line(text),
        P::ToolUse { name, input } => format!("{name} {}", first_line(input)),
        P::ToolResult {
            is_error: true,
            excerpt,
        } => format!("tool error: {}", first_line(excerpt)),
        P::ToolResult {
            is_error: false, ..
        } => return None,
        P::System { message } => first_line(message),
        _ => return None,
    };
    if what.is_empty() {
        return None;
    }
    let mut line = format!("{agent}: {what}");
    if line.chars().count() > MAX_PROGRESS {
        line = line.chars().take(MAX_PROGRESS - 1).collect();
        line.push('…');
    }
    Some(line)
}

impl Observer for Progress {
    fn event(&self, event: &Event, state: &RunState) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(n) = finished_after(self.finished.load(Relaxed), &event.kind, state) {
            self.finished.store(n, Relaxed);
            if let Some(bar) = &self.bar {
                bar.set_position(n);
            }
        }
        if let Some(s) = describe(&event.kind) {
            if let Some(bar) = &self.bar {
                bar.set_message(s.clone());
            }
            self.line(s);
        }
    }

    /// On a terminal, what the agent is doing becomes the bar's message
    /// (a line each would flood a log).
    fn progress(&self, agent: &orch_core::AgentId, p: &orch_core::Progress) {
        if let Some(bar) = &self.bar
            && let Some(s) = describe_progress(agent, p)
        {
            bar.set_message(s);
        }
    }

    fn finished(&self, _: &RunState) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_core::Progress as P;

    #[test]
    fn finished_tickets_are_counted_once_at_the_start_then_one_by_one() {
        let mut state = RunState::default();
        for k in [
            EventKind::TicketDone {
                ticket: "A".parse().unwrap(),
            },
            EventKind::TicketReady {
                ticket: "B".parse().unwrap(),
            },
            EventKind::TicketFailed {
                ticket: "C".parse().unwrap(),
                reason: "x".into(),
            },
        ] {
            state.apply(&Event::now(k));
        }
        let started = EventKind::RunStarted {
            run: "r".parse().unwrap(),
            plan: "p".into(),
            fingerprint: String::new(),
            resumed: true,
            parts: Default::default(),
            driver: None,
            base: None,
            plan_file: None,
        };
        assert_eq!(finished_after(7, &started, &state), Some(2), "A and C");
        let done = EventKind::TicketDone {
            ticket: "B".parse().unwrap(),
        };
        assert_eq!(finished_after(2, &done, &state), Some(3));
        let blocked = EventKind::TicketBlocked {
            ticket: "D".parse().unwrap(),
            by: "C".parse().unwrap(),
        };
        assert_eq!(finished_after(3, &blocked, &state), Some(4));
        let ready = EventKind::TicketReady {
            ticket: "E".parse().unwrap(),
        };
        assert_eq!(finished_after(4, &ready, &state), None);
    }

    #[test]
    fn agent_progress_is_one_short_line() {
        let a: orch_core::AgentId = "T-1.implement.1".parse().unwrap();
        let show = |p: P| describe_progress(&a, &p);
        assert_eq!(
            show(P::ToolUse {
                name: "Bash".into(),
                input: "cargo test\n--all".into()
            })
            .as_deref(),
            Some("T-1.implement.1: Bash cargo test")
        );
        assert_eq!(
            show(P::Text {
                text: "\n  Reading the failing test first.\nThen...".into()
            })
            .as_deref(),
            Some("T-1.implement.1: Reading the failing test first.")
        );
        assert_eq!(
            show(P::ToolResult {
                is_error: true,
                excerpt: "no such file".into()
            })
            .as_deref(),
            Some("T-1.implement.1: tool error: no such file")
        );
        assert_eq!(
            show(P::ToolResult {
                is_error: false,
                excerpt: "ok".into()
            }),
            None
        );
        assert_eq!(
            show(P::Text {
                text: " \n ".into()
            }),
            None
        );
        let long = show(P::Text {
            text: "é".repeat(300),
        })
        .unwrap();
        assert_eq!(long.chars().count(), MAX_PROGRESS);
        assert!(long.ends_with('…'));
    }
}
