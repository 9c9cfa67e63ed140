//! The engine's write-ahead journal: events go to the store first, then
//! into the live [`RunState`] strictly in journal order, then to observers.
//!
//! Each append is one store call; the store groups concurrent calls into
//! one commit where that pays (SQLite's writer thread does). The appender
//! folds what it appended, under the state's lock, once every earlier
//! event is known: appends that finish out of order, or events another
//! process appended (a decision recorded by `orch decide`), are held back
//! until the gap before them is read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use orch_core::secrets::Redactor;
use orch_core::{
    AgentId, Budget, Cancellation, Claim, Event, EventKind, Expect, JobQueue, Progress, RunId,
    RunState, StateStore, StoreError, TicketId,
};
use tokio::sync::mpsc::UnboundedSender;

use super::Observer;

/// Reads at most this many events per catch-up page.
const PAGE: usize = 10_000;

pub(crate) struct Journal {
    /// Applied to every event made for this journal, before it is folded
    /// or written ([`Journal::event`]).
    redactor: Redactor,
    store: Arc<dyn StateStore>,
    pub(crate) run: RunId,
    /// How appends are fenced: by the driver's hold on the run, or by a
    /// worker's claim on its job.
    writer: Writer,
    /// The live state and the events not yet folded into it.
    folded: Mutex<Folded>,
    observers: Vec<Arc<dyn Observer>>,
    /// Decisions recorded (by anyone) reach the dispatcher through here.
    decisions: UnboundedSender<TicketId>,
    budget: Budget,
    budget_hit: AtomicBool,
    /// Cancelled when the budget is spent: running work stops.
    work: Cancellation,
    /// Set when the run's lock is lost: every append fails with it from
    /// then on, since another engine may be driving the run.
    refused: std::sync::OnceLock<StoreError>,
}

/// Who appends, and what fences their appends.
pub(crate) enum Writer {
    /// The run's driver: every append expects this (the run still held
    /// under its epoch, when the store fences).
    Driver(Expect),
    /// A worker doing one job: every append goes through its claim, and
    /// is refused once the claim is no longer current. The worker (this
    /// process) is named in the events that start work.
    Worker(Arc<dyn JobQueue>, Claim, orch_core::DriverInfo),
}

struct Folded {
    state: RunState,
    /// The seq of the last event folded into `state`.
    applied: u64,
    /// Events stored but not yet folded, because an earlier seq (another
    /// task's append, or another process's decision) is not known yet.
    held: BTreeMap<u64, Event>,
}

impl Journal {
    #[allow(clippy::too_many_arguments)] // crate-private; each is a distinct part of a run
    pub(crate) fn new(
        store: Arc<dyn StateStore>,
        run: RunId,
        state: RunState,
        observers: Vec<Arc<dyn Observer>>,
        decisions: UnboundedSender<TicketId>,
        budget: Budget,
        work: Cancellation,
        writer: Writer,
        redactor: Redactor,
    ) -> Arc<Journal> {
        Arc::new(Journal {
            redactor,
            store,
            run,
            writer,
            folded: Mutex::new(Folded {
                applied: state.events,
                state,
                held: BTreeMap::new(),
            }),
            observers,
            decisions,
            budget,
            budget_hit: AtomicBool::new(false),
            work,
            refused: std::sync::OnceLock::new(),
        })
    }

    /// The worker appending, when a worker of a fleet is ([`Writer::Worker`]).
    pub(crate) fn worker(&self) -> Option<orch_core::DriverInfo> {
        match &self.writer {
            Writer::Worker(_, _, me) => Some(me.clone()),
            Writer::Driver(_) => None,
        }
    }

    /// The claim appends go through, when a worker of a fleet appends
    /// ([`Writer::Worker`]).
    pub(crate) fn claim(&self) -> Option<&Claim> {
        match &self.writer {
            Writer::Worker(_, claim, _) => Some(claim),
            Writer::Driver(_) => None,
        }
    }

    /// An event of `kind`, now, with the secrets it quotes removed: the
    /// one way the engine makes events, so nothing the journal, the state
    /// files or a prompt holds carries a secret the redactor knows.
    pub(crate) fn event(&self, mut kind: EventKind) -> Event {
        kind.redact(&self.redactor);
        Event::now(kind)
    }

    /// `text` without the secrets the journal's redactor knows, for a log
    /// line that quotes something from outside.
    pub(crate) fn redacted(&self, text: String) -> String {
        match self.redactor.redact(&text) {
            std::borrow::Cow::Borrowed(_) => text,
            std::borrow::Cow::Owned(r) => r,
        }
    }

    /// Fails every append from now on with `e`.
    pub(crate) fn refuse(&self, e: StoreError) {
        let _ = self.refused.set(e);
    }

    /// The store, unless appends are refused.
    fn store(&self) -> Result<&dyn StateStore, StoreError> {
        match self.refused.get() {
            Some(e) => Err(e.clone()),
            None => Ok(&*self.store),
        }
    }

    /// The live state, every event known in order folded in.
    fn lock(&self) -> MutexGuard<'_, Folded> {
        self.folded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `events` durably, then folds them (and any held back events
    /// they complete).
    pub(crate) async fn append(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let store = self.store()?;
        let seqs = match &self.writer {
            Writer::Driver(expect) => store.append_if(&self.run, *expect, &events).await?,
            Writer::Worker(queue, claim, _) => queue.record(claim, &events).await?,
        };
        self.absorb(seqs.into_iter().zip(events));
        Ok(())
    }

    /// Reads events appended by others (a decision recorded by `orch
    /// decide` in another process) and folds them.
    pub(crate) async fn catch_up(&self) -> Result<(), StoreError> {
        loop {
            let after = self.lock().applied;
            let page = self.store.read(&self.run, after, PAGE).await?;
            let n = page.len();
            self.absorb(page.into_iter().map(|s| (s.seq, s.event)));
            if n < PAGE {
                return Ok(());
            }
        }
    }

    /// Folds stored events in journal order: those whose predecessors are
    /// not known yet are held back until they are.
    fn absorb(&self, events: impl IntoIterator<Item = (u64, Event)>) {
        let mut f = self.lock();
        for (seq, e) in events {
            if seq <= f.applied {
                continue; // folded already (re-read, or an idempotent re-append)
            }
            if seq == f.applied + 1 {
                self.fold(&mut f.state, e);
                f.applied = seq;
            } else {
                f.held.insert(seq, e);
            }
            while let Some(e) = {
                let next = f.applied + 1;
                f.held.remove(&next)
            } {
                self.fold(&mut f.state, e);
                f.applied += 1;
            }
        }
    }

    fn fold(&self, state: &mut RunState, e: Event) {
        let check_budget = matches!(e.kind, EventKind::AgentFinished { .. });
        if let EventKind::DecisionRecorded { ticket, .. } = &e.kind {
            let _ = self.decisions.send(ticket.clone());
        }
        if self.observers.is_empty() {
            state.apply_owned(e);
        } else {
            state.apply(&e);
            for o in &self.observers {
                // A bug in an observer costs its view, not the run's
                // state or the other observers'.
                let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    o.event(&e, state);
                }));
                if let Err(payload) = seen {
                    tracing::error!(
                        event = e.kind.name(),
                        "an observer panicked: {}",
                        super::panic_text(&*payload)
                    );
                }
            }
        }
        if check_budget
            && self.budget.exceeded(&state.usage).is_some()
            && !self.budget_hit.swap(true, Ordering::SeqCst)
        {
            self.work.cancel();
        }
    }

    /// Why the budget is spent, once it is (checked as each agent's finish
    /// is folded, so the dispatcher starts nothing once it is spent).
    pub(crate) fn budget_spent(&self) -> Option<(u64, f64, String)> {
        if !self.budget_hit.load(Ordering::SeqCst) {
            return None;
        }
        let u = self.lock().state.usage;
        let why = self.budget.exceeded(&u).unwrap_or_default();
        Some((u.total_tokens(), u.cost_usd, why))
    }

    /// The state folded so far, taken out (the journal is done with):
    /// what it folded, up to its last event in order (events held back
    /// behind a missing one are not in it; a reader catching up from it
    /// reads them again).
    pub(crate) fn take_state(&self) -> RunState {
        std::mem::take(&mut self.lock().state)
    }

    /// Reads the live state (every event known in order folded in).
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&RunState) -> R) -> R {
        f(&self.lock().state)
    }

    /// Forwards an agent's progress, redacted, to the observers (not
    /// persisted: the transcript has it).
    pub(crate) fn progress(&self, agent: &AgentId, p: &Progress) {
        if self.observers.is_empty() {
            return;
        }
        let mut p = p.clone();
        p.redact(&self.redactor);
        for o in &self.observers {
            o.progress(agent, &p);
        }
    }

    /// The run stopped: tells the observers, and hands the state over.
    pub(crate) fn finished(&self) -> RunState {
        let mut f = self.lock();
        for o in &self.observers {
            o.finished(&f.state);
        }
        std::mem::take(&mut f.state)
    }
}

#[cfg(test)]
mod tests {
    //! The journal against the real stores (orch-state's in-memory and
    //! SQLite ones).

    use super::*;
    use orch_core::EventId;
    use orch_state::{MemoryStore, SqliteStore};

    /// Records the ids of the events it sees, and the count the state had
    /// folded when it saw each.
    #[derive(Default)]
    struct Seen(Mutex<Vec<(EventId, u64)>>);

    impl Observer for Seen {
        fn event(&self, event: &Event, state: &RunState) {
            self.0.lock().unwrap().push((event.id, state.events));
        }
    }

    /// Panics on every event.
    struct Panicky;

    impl Observer for Panicky {
        fn event(&self, _: &Event, _: &RunState) {
            panic!("observer bug");
        }
    }

    fn journal(
        store: Arc<dyn StateStore>,
        expect: Expect,
        observers: Vec<Arc<dyn Observer>>,
    ) -> Arc<Journal> {
        let (decisions, _) = tokio::sync::mpsc::unbounded_channel();
        Journal::new(
            store,
            "r".parse().unwrap(),
            RunState::default(),
            observers,
            decisions,
            Budget::default(),
            Cancellation::new(),
            Writer::Driver(expect),
            Redactor::default(),
        )
    }

    fn ready(t: &str) -> Vec<Event> {
        vec![Event::now(EventKind::TicketReady {
            ticket: t.parse().unwrap(),
        })]
    }

    /// Each real store, named; the SQLite one in `dir`.
    fn stores(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn StateStore>)> {
        vec![
            ("memory", Arc::new(MemoryStore::new())),
            (
                "sqlite",
                Arc::new(SqliteStore::open(dir.join("orch.db")).unwrap()),
            ),
        ]
    }

    /// Many tasks append at once; the store may answer them in any order.
    /// Every event is folded once, in the order the store holds them, and
    /// observed in that order with the state up to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_folded_once_each_in_journal_order() {
        let dir = tempfile::tempdir().unwrap();
        for (name, store) in stores(dir.path()) {
            let seen = Arc::new(Seen::default());
            let j = journal(store.clone(), Expect::Any, vec![seen.clone()]);
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let j = j.clone();
                    tokio::spawn(async move { j.append(ready(&format!("T-{i}"))).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let stored: Vec<EventId> = store
                .read(&j.run, 0, 1000)
                .await
                .unwrap()
                .iter()
                .map(|e| e.event.id)
                .collect();
            let seen = seen.0.lock().unwrap();
            assert_eq!(
                seen.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
                stored,
                "{name}: observed in journal order"
            );
            assert_eq!(
                seen.iter().map(|&(_, n)| n).collect::<Vec<_>>(),
                (1..=200).collect::<Vec<_>>(),
                "{name}: each folded once, in order"
            );
            assert_eq!(j.with_state(|s| s.tickets.len()), 200, "{name}");
        }
    }

    /// Another writer's events (a decision recorded by `orch decide`)
    /// land between two of the journal's appends: the append after them is
    /// held back until they are read, then all are folded in journal
    /// order; events folded already are not folded again.
    #[tokio::test]
    async fn an_append_after_anothers_events_waits_for_them_and_nothing_is_folded_twice() {
        let dir = tempfile::tempdir().unwrap();
        for (name, store) in stores(dir.path()) {
            let seen = Arc::new(Seen::default());
            let j = journal(store.clone(), Expect::Any, vec![seen.clone()]);
            let mut ids = Vec::new();
            for t in ["A", "B", "C"] {
                let e = ready(t);
                ids.push(e[0].id);
                j.append(e).await.unwrap();
            }
            let theirs: Vec<Event> = ["O-1", "O-2"].iter().flat_map(|t| ready(t)).collect();
            ids.extend(theirs.iter().map(|e| e.id));
            store.append(&j.run, &theirs).await.unwrap();
            let mine = ready("X");
            ids.push(mine[0].id);
            j.append(mine.clone()).await.unwrap();
            assert_eq!(
                j.with_state(|s| s.events),
                3,
                "{name}: seq 6 waits for 4 and 5"
            );
            j.catch_up().await.unwrap();
            assert_eq!(j.with_state(|s| s.events), 6, "{name}");
            // A re-sent append answered with a seq folded already.
            j.absorb([(6, mine[0].clone())]);
            j.catch_up().await.unwrap();
            assert_eq!(
                j.with_state(|s| s.events),
                6,
                "{name}: nothing folded twice"
            );
            let seen = seen.0.lock().unwrap();
            let order: Vec<_> = seen.iter().map(|&(id, _)| id).collect();
            assert_eq!(order, ids, "{name}: folded in journal order");
        }
    }

    /// A driver whose run was taken over (a later lock, a higher epoch)
    /// has its append refused by the store, and folds nothing of it.
    #[tokio::test]
    async fn a_fenced_append_is_refused_and_not_folded() {
        let dir = tempfile::tempdir().unwrap();
        for (name, store) in stores(dir.path()) {
            let run: RunId = "r".parse().unwrap();
            let mine = store.lock_run(&run).await.unwrap();
            let j = journal(
                store.clone(),
                Expect::Epoch(mine.epoch().expect("the store fences")),
                Vec::new(),
            );
            j.append(ready("A")).await.unwrap();
            drop(mine);
            let _theirs = store.lock_run(&run).await.unwrap();
            let e = j.append(ready("B")).await.unwrap_err();
            assert_eq!(e.kind, orch_core::StoreErrorKind::Fenced, "{name}: {e}");
            assert_eq!(j.with_state(|s| s.events), 1, "{name}");
            assert_eq!(store.read(&run, 0, 10).await.unwrap().len(), 1, "{name}");
        }
    }

    #[tokio::test]
    async fn a_panicking_observer_stops_neither_the_fold_nor_the_others() {
        let seen = Arc::new(Seen::default());
        let j = journal(
            Arc::new(MemoryStore::new()),
            Expect::Any,
            vec![Arc::new(Panicky), seen.clone()],
        );
        for i in 0..30 {
            j.append(ready(&format!("T-{i}"))).await.unwrap();
        }
        assert_eq!(j.with_state(|s| s.events), 30);
        assert_eq!(seen.0.lock().unwrap().len(), 30);
    }
}
