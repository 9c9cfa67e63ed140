//! [`StateFiles`]: the state files a person reads, kept up to date by
//! watching a run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_core::{Event, EventKind, Observer, Plan, RunState};

/// Keeps `ORCHESTRATOR_STATE.md`, `AGENT_REGISTRY.md`, `TEST_RESULTS.md`,
/// `DECISION_QUEUE.md` and `tickets/*.json` in a directory up to date:
/// re-rendered from the state at most every 200 ms (or ten times as long
/// as the last write took, so that writing them never holds up more than
/// about a tenth of a large run: it happens under the journal's lock),
/// on an escalation, and when the run stops. After the first write only
/// the files of tickets that changed since the last one are rendered
/// again, besides the summaries.
///
/// ```
/// use orch_core::{Event, EventKind, Observer, Plan, RunState};
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
/// let dir = std::env::temp_dir().join(format!("orch-state-files-{}", std::process::id()));
/// // Given to the engine with `Engine::observe(Arc::new(...))`.
/// let files = orch_state::StateFiles::new(&dir, &plan);
/// let done = Event::now(EventKind::TicketDone { ticket: "T-1".parse().unwrap() });
/// let state = RunState::fold([&done]);
/// files.event(&done, &state);
/// files.finished(&state);
/// let summary = std::fs::read_to_string(dir.join("ORCHESTRATOR_STATE.md")).unwrap();
/// assert!(summary.contains("T-1"));
/// assert!(dir.join("tickets/T-1.json").exists());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct StateFiles {
    dir: PathBuf,
    plan: Plan,
    pending: Mutex<Pending>,
    /// The first write that failed, and whom to tell (the run's
    /// cancellation: a state directory that cannot be written stops the
    /// run, as a store would).
    failed: Arc<Mutex<Option<String>>>,
    stop: Option<orch_core::Cancellation>,
    also: Vec<(String, Render)>,
}

/// A file rendered from the state, besides the built-in ones.
type Render = Box<dyn Fn(&RunState) -> String + Send + Sync>;

/// What changed since the views were last written.
#[derive(Default)]
struct Pending {
    /// When they were last written; `None` before the first write, which
    /// writes every file.
    last: Option<Instant>,
    /// How long the last write took.
    took: Duration,
    tickets: std::collections::HashSet<orch_core::TicketId>,
}

/// The shortest time between two writes of the state files.
const EVERY: Duration = Duration::from_millis(200);

impl Pending {
    /// Whether the files are due at `now`: always for the first write and
    /// for an `important` event, else once `EVERY` and ten times the last
    /// write's time have passed since it.
    fn due(&self, now: Instant, important: bool) -> bool {
        important
            || self
                .last
                .is_none_or(|last| now.saturating_duration_since(last) >= EVERY.max(self.took * 10))
    }
}

impl StateFiles {
    /// State files in `dir`, for `plan`.
    pub fn new(dir: &Path, plan: &Plan) -> StateFiles {
        StateFiles {
            dir: dir.to_path_buf(),
            plan: plan.clone(),
            pending: Mutex::default(),
            failed: Arc::default(),
            stop: None,
            also: Vec::new(),
        }
    }

    /// Also keeps the file `name` (in the state directory) up to date,
    /// its contents `render`ed from the state with the others' (a status
    /// report, say, which needs more than this crate knows).
    ///
    /// ```
    /// # let plan = orch_core::Plan::from_toml_str("name = \"p\"\ndefault_role = \"dev\"\n[agents.dev]\nbackend = { kind = \"command\", argv = [\"true\"] }\n[[phases]]\nname = \"w\"\n[[tickets]]\nid = \"T-1\"\ntitle = \"t\"\neffort = \"1h\"\n").unwrap();
    /// use orch_core::Observer as _;
    /// let dir = tempfile::tempdir().unwrap();
    /// let files = orch_state::StateFiles::new(dir.path(), &plan)
    ///     .also("EVENTS.txt", |s| format!("{} events\n", s.events));
    /// files.finished(&orch_core::RunState::default());
    /// assert_eq!(std::fs::read_to_string(dir.path().join("EVENTS.txt")).unwrap(), "0 events\n");
    /// ```
    pub fn also(
        mut self,
        name: &str,
        render: impl Fn(&RunState) -> String + Send + Sync + 'static,
    ) -> StateFiles {
        self.also.push((name.to_owned(), Box::new(render)));
        self
    }

    /// Stops the run (cancels `run`) when the state files cannot be
    /// written, and notes why in `failed`: a state directory that became
    /// unwritable is a store failure, not something to warn about and go
    /// on (the transcripts go there too).
    pub fn stop_on_failure(
        mut self,
        run: orch_core::Cancellation,
        failed: Arc<Mutex<Option<String>>>,
    ) -> StateFiles {
        self.stop = Some(run);
        self.failed = failed;
        self
    }

    fn write(&self, p: &mut Pending, state: &RunState) {
        let started = Instant::now();
        let first = p.last.is_none();
        let written = if first {
            crate::views::write_views(&self.dir, state, Some(&self.plan))
        } else {
            crate::views::write_views_changed(&self.dir, state, Some(&self.plan), &p.tickets)
        }
        .and_then(|()| {
            crate::views::write_files(
                &self.dir,
                self.also
                    .iter()
                    .map(|(name, render)| (name.clone(), render(state)))
                    .collect(),
            )
        });
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write the state files");
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            if failed.is_none() {
                *failed = Some(format!(
                    "cannot write the state files in {}: {e}",
                    self.dir.display()
                ));
                if let Some(stop) = &self.stop {
                    stop.cancel();
                }
            }
        }
        let now = Instant::now();
        // The first write renders every ticket's file (all of a resumed
        // large run's): a one-off that says nothing about the next ones,
        // which would otherwise wait ten times as long.
        p.took = if first { Duration::ZERO } else { now - started };
        p.last = Some(now);
        p.tickets.clear();
    }
}

impl Observer for StateFiles {
    fn event(&self, event: &Event, state: &RunState) {
        let important = matches!(
            event.kind,
            EventKind::Escalated { .. } | EventKind::RunStarted { .. }
        );
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = event.kind.ticket() {
            p.tickets.insert(t.clone());
        }
        if p.due(Instant::now(), important) {
            self.write(&mut p, state);
        }
    }

    fn finished(&self, state: &RunState) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.write(&mut p, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_full_write_does_not_hold_back_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let plan = orch_core::Plan::from_toml_str(
            "name = \"p\"\ndefault_role = \"dev\"\n[agents.dev]\nbackend = { kind = \"command\", argv = [\"true\"] }\n[[phases]]\nname = \"w\"\n[[tickets]]\nid = \"T-1\"\ntitle = \"t\"\neffort = \"1h\"\n",
        )
        .unwrap();
        let id = plan.tickets[0].id.clone();
        let views = StateFiles::new(dir.path(), &plan);
        let done = Event::now(EventKind::TicketDone { ticket: id.clone() });
        let state = RunState::fold([&done]);
        views.event(&done, &state);
        let p = views.pending.lock().unwrap();
        assert!(p.last.is_some(), "the first event writes the files");
        assert_eq!(p.took, Duration::ZERO);
        drop(p);
        assert!(dir.path().join(format!("tickets/{id}.json")).exists());
        views.finished(&state);
        assert!(views.pending.lock().unwrap().took > Duration::ZERO);
    }

    #[test]
    fn state_files_wait_ten_times_as_long_as_the_last_write_took() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        assert!(p.due(t0, false), "the first write is always due");
        p.last = Some(t0);
        p.took = Duration::from_millis(5);
        assert!(!p.due(t0 + Duration::from_millis(199), false));
        assert!(p.due(t0 + EVERY, false), "a quick write: every 200 ms");
        p.took = Duration::from_millis(300);
        assert!(!p.due(t0 + Duration::from_millis(2_999), false));
        assert!(p.due(t0 + Duration::from_secs(3), false), "a slow one: 10x");
        assert!(p.due(t0, true), "an escalation is written at once");
    }
}
