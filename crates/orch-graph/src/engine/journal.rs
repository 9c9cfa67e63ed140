//! The engine's write-ahead journal: events go to the store first, then
//! into the live [`RunState`] strictly in journal order, then to observers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use orch_core::{
    AgentId, Budget, Cancellation, Event, EventKind, Progress, RunId, RunState, StateStore,
    StoreError, TicketId,
};
use tokio::sync::mpsc::UnboundedSender;

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
}

struct Inner {
    state: RunState,
    /// The seq of the last event folded into `state`.
    applied: u64,
    /// Events appended but not yet folded, because an earlier seq (another
    /// task's append, or another process's decision) is not known yet.
    pending: BTreeMap<u64, Event>,
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
            }),
            observers,
            decisions,
            budget,
            budget_hit: AtomicBool::new(false),
            work,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `events` durably, then folds them.
    pub(crate) async fn append(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let seqs = self.store.append(&self.run, &events).await?;
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
