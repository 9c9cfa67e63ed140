//! The engine's write-ahead journal: events go to the store first, then
//! into the live [`RunState`] strictly in journal order, then to observers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use orch_core::{
    AgentId, Budget, Cancellation, Event, EventKind, Progress, RunId, RunState, StateStore,
    StoreError, StoreErrorKind, TicketId,
};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::Observer;

/// Reads more than this many events per catch-up page.
const PAGE: usize = 10_000;

pub(crate) struct Journal {
    store: Arc<dyn StateStore>,
    pub(crate) run: RunId,
    inner: Mutex<Inner>,
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

struct Inner {
    state: RunState,
    /// The seq of the last event folded into `state`.
    applied: u64,
    /// Events appended but not yet folded, because an earlier seq (another
    /// task's append, or another process's decision) is not known yet.
    pending: BTreeMap<u64, Event>,
    /// An append is being written; others wait in `next`.
    writing: bool,
    /// Appends that came while one was being written: they go to the store
    /// together, as one append, when it is done.
    next: Vec<Event>,
    /// Who waits for `next`.
    waiting: Vec<oneshot::Sender<Turn>>,
}

/// What an append waiting in `next` hears.
enum Turn {
    /// Its events were written with the others (or the write failed).
    Done(Result<(), StoreError>),
    /// The write before ended: this one writes `next` now.
    Lead,
}

/// Held by the append that writes: when it is done, or dropped half-way,
/// the first waiting append is told to write the next group.
struct Writing<'a>(&'a Journal);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        while !g.waiting.is_empty() {
            if g.waiting.remove(0).send(Turn::Lead).is_ok() {
                return;
            }
        }
        // No one waits (any events left in `next` belong to appends that
        // were dropped; the next writer takes them along).
        g.writing = false;
    }
}

impl Journal {
    pub(crate) fn new(
        store: Arc<dyn StateStore>,
        run: RunId,
        state: RunState,
        observers: Vec<Arc<dyn Observer>>,
        decisions: UnboundedSender<TicketId>,
        budget: Budget,
        work: Cancellation,
    ) -> Journal {
        Journal {
            store,
            run,
            inner: Mutex::new(Inner {
                applied: state.events,
                state,
                pending: BTreeMap::new(),
                writing: false,
                next: Vec::new(),
                waiting: Vec::new(),
            }),
            observers,
            decisions,
            budget,
            budget_hit: AtomicBool::new(false),
            work,
            refused: std::sync::OnceLock::new(),
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `events` durably, then folds them.
    pub(crate) async fn append(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let seqs = self.store()?.append(&self.run, &events).await?;
        self.absorb(seqs.into_iter().zip(events));
        Ok(())
    }

    /// [`Journal::append`] for the tickets' pipelines, which the
    /// dispatcher polls together.
    ///
    /// One such append is written at a time; those made meanwhile (by
    /// other tickets' pipelines) wait and then go to the store together,
    /// as one append, written by the first of them. Under load a store
    /// call carries many tickets' events (one writer hand-over, one fsync,
    /// one round trip) instead of one call each. A store error fails every
    /// append of its group; for the engine any store error is fatal to the
    /// run anyway.
    ///
    /// Only for futures polled by the dispatcher: a waiting append needs
    /// the one writing to be polled. Other tasks' appends (a batch merge)
    /// go through [`Journal::append`], straight to the store, and so do
    /// the dispatcher's own (which poll the pipelines while they wait).
    pub(crate) async fn append_grouped(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let turn = {
            let mut g = self.lock();
            if g.writing {
                let (tx, rx) = oneshot::channel();
                g.next.extend(events);
                g.waiting.push(tx);
                Err(rx)
            } else {
                g.writing = true;
                Ok(events)
            }
        };
        let events = match turn {
            Ok(events) => events,
            Err(rx) => match rx.await {
                Ok(Turn::Done(r)) => return r,
                // Our turn: our events are in `next`, with the others'.
                Ok(Turn::Lead) => Vec::new(),
                Err(_) => {
                    return Err(StoreError::new(
                        StoreErrorKind::Io,
                        "the journal write this append waited for was abandoned",
                    ));
                }
            },
        };
        let writing = Writing(self);
        let (group, waiting) = {
            let mut g = self.lock();
            let mut group = std::mem::take(&mut g.next);
            if group.is_empty() {
                group = events;
            } else {
                group.extend(events);
            }
            (group, std::mem::take(&mut g.waiting))
        };
        let written = match self.store() {
            Ok(store) => store.append(&self.run, &group).await,
            Err(e) => Err(e),
        };
        // The next group goes to the store first, so that it is written
        // while this one is folded and its tickets go on.
        drop(writing);
        let r = written.map(|seqs| self.absorb(seqs.into_iter().zip(group)));
        for w in waiting {
            let _ = w.send(Turn::Done(r.clone()));
        }
        r
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

    fn absorb(&self, events: impl IntoIterator<Item = (u64, Event)>) {
        let mut g = self.lock();
        let g = &mut *g;
        for (seq, e) in events {
            if seq <= g.applied {
                continue; // already folded (re-read or idempotent re-append)
            }
            if seq == g.applied + 1 && g.pending.is_empty() {
                g.applied = seq;
                self.fold(&mut g.state, e);
            } else {
                g.pending.insert(seq, e);
            }
        }
        while let Some(e) = g.pending.remove(&(g.applied + 1)) {
            g.applied += 1;
            self.fold(&mut g.state, e);
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
                o.event(&e, state);
            }
        }
        if check_budget
            && self.budget.exceeded(&state.usage).is_some()
            && !self.budget_hit.swap(true, Ordering::SeqCst)
        {
            self.work.cancel();
        }
    }

    /// Why the budget is spent, once it is.
    pub(crate) fn budget_spent(&self) -> Option<(u64, f64, String)> {
        if !self.budget_hit.load(Ordering::SeqCst) {
            return None;
        }
        let g = self.lock();
        let u = g.state.usage;
        let why = self.budget.exceeded(&u).unwrap_or_default();
        Some((u.total_tokens(), u.cost_usd, why))
    }

    /// Reads the live state.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&RunState) -> R) -> R {
        f(&self.lock().state)
    }

    /// Forwards an agent's progress to the observers (not persisted: the
    /// transcript has it).
    pub(crate) fn progress(&self, agent: &AgentId, p: &Progress) {
        for o in &self.observers {
            o.progress(agent, p);
        }
    }

    /// The run stopped: tells the observers, and hands the state over.
    pub(crate) fn finished(&self) -> RunState {
        let mut g = self.lock();
        for o in &self.observers {
            o.finished(&g.state);
        }
        std::mem::take(&mut g.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use futures_util::FutureExt;
    use orch_core::StoredEvent;
    use tokio::sync::Semaphore;

    /// A store whose appends each wait for a permit; it records the size
    /// of every call, and fails the calls whose number is in `fail`.
    struct Gated {
        events: Mutex<Vec<Event>>,
        calls: Mutex<Vec<usize>>,
        gate: Semaphore,
        fail: Vec<usize>,
    }

    #[async_trait]
    impl StateStore for Gated {
        async fn append(&self, _: &RunId, events: &[Event]) -> Result<Vec<u64>, StoreError> {
            let call = {
                let mut c = self.calls.lock().unwrap();
                c.push(events.len());
                c.len()
            };
            self.gate.acquire().await.unwrap().forget();
            if self.fail.contains(&call) {
                return Err(StoreError::new(StoreErrorKind::Io, "disk full"));
            }
            let mut j = self.events.lock().unwrap();
            Ok(events
                .iter()
                .map(|e| {
                    j.push(e.clone());
                    j.len() as u64
                })
                .collect())
        }
        async fn read(&self, _: &RunId, _: u64, _: usize) -> Result<Vec<StoredEvent>, StoreError> {
            Ok(Vec::new())
        }
        async fn runs(&self) -> Result<Vec<RunId>, StoreError> {
            Ok(Vec::new())
        }
    }

    fn gated(fail: Vec<usize>) -> Arc<Gated> {
        Arc::new(Gated {
            events: Mutex::default(),
            calls: Mutex::default(),
            gate: Semaphore::new(0),
            fail,
        })
    }

    fn journal(store: Arc<Gated>) -> Arc<Journal> {
        let (decisions, _) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Journal::new(
            store,
            "r".parse().unwrap(),
            RunState::default(),
            Vec::new(),
            decisions,
            Budget::default(),
            Cancellation::new(),
        ))
    }

    fn ready(t: &str) -> Vec<Event> {
        vec![Event::now(EventKind::TicketReady {
            ticket: t.parse().unwrap(),
        })]
    }

    /// The task's result, failing the test if it never ends (an append
    /// stranded in the queue).
    async fn ended<T>(t: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), t)
            .await
            .expect("the append is not stranded")
            .unwrap()
    }

    /// A task per ticket appending its `TicketReady`, the first started
    /// first (it writes; the others wait).
    fn appending(
        j: &Arc<Journal>,
        tickets: &[&'static str],
    ) -> Vec<tokio::task::JoinHandle<Result<(), StoreError>>> {
        tickets
            .iter()
            .map(|&t| {
                let j = j.clone();
                tokio::spawn(async move { j.append_grouped(ready(t)).await })
            })
            .collect()
    }

    /// Waits until `n` appends wait behind the one being written.
    async fn waiting(j: &Journal, n: usize) {
        while j.lock().waiting.len() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn appends_made_while_one_is_written_go_to_the_store_together() {
        let store = gated(Vec::new());
        let j = journal(store.clone());
        let mut rest = appending(&j, &["A", "B", "C", "D"]);
        let first = rest.remove(0);
        waiting(&j, 3).await;
        assert_eq!(*store.calls.lock().unwrap(), [1], "the others wait");
        store.gate.add_permits(2);
        ended(first).await.unwrap();
        for r in rest {
            ended(r).await.unwrap();
        }
        assert_eq!(*store.calls.lock().unwrap(), [1, 3]);
        let folded = j.with_state(|s| {
            let mut t: Vec<String> = s.tickets.keys().map(|t| t.to_string()).collect();
            t.sort();
            (s.events, t)
        });
        assert_eq!(
            folded,
            (4, vec!["A".into(), "B".into(), "C".into(), "D".into()])
        );
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_append_of_its_group_and_no_other() {
        let store = gated(vec![2]);
        let j = journal(store.clone());
        let mut rest = appending(&j, &["A", "B", "C"]);
        let first = rest.remove(0);
        waiting(&j, 2).await;
        store.gate.add_permits(3);
        ended(first).await.unwrap();
        for r in rest {
            let e = ended(r).await.unwrap_err();
            assert_eq!(e.message, "disk full");
        }
        // The journal goes on: a later append is written on its own.
        j.append_grouped(ready("D")).await.unwrap();
        assert_eq!(*store.calls.lock().unwrap(), [1, 2, 1]);
        assert_eq!(j.with_state(|s| s.events), 2);
    }

    #[tokio::test]
    async fn a_write_dropped_half_way_hands_the_next_group_on() {
        let store = gated(Vec::new());
        let j = journal(store.clone());
        let mut first = Box::pin(j.append_grouped(ready("A")));
        assert!(
            first.as_mut().now_or_never().is_none(),
            "waits for the store"
        );
        let next = tokio::spawn({
            let j = j.clone();
            async move { j.append_grouped(ready("B")).await }
        });
        waiting(&j, 1).await;
        // The writing append goes away (its task was dropped) before the
        // store answered: the waiting one writes its group itself.
        drop(first);
        store.gate.add_permits(1);
        ended(next).await.unwrap();
        assert_eq!(*store.calls.lock().unwrap(), [1, 1]);
        assert!(j.with_state(|s| s.tickets.contains_key("B")));
    }
}
