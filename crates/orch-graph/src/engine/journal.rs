//! The engine's write-ahead journal: events go to the store first, then
//! into the live [`RunState`] strictly in journal order, then to observers.
//!
//! Appended events are queued in journal order for the fold (the run
//! state's maps, the observers). When they come thick and fast, a thread
//! of its own, the fold thread, takes the queue, so that the dispatcher's
//! thread goes on with the pipelines meanwhile; when they come far apart,
//! the appender folds them itself (waking a thread would cost more).
//! Whoever reads the state first folds what is still queued, under the
//! state's lock, so a reader sees every event absorbed before it asked,
//! in order, as if the fold had been done inline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use orch_core::secrets::Redactor;
use orch_core::{
    AgentId, Budget, Cancellation, Event, EventKind, Expect, Progress, RunId, RunState, StateStore,
    StoreError, StoreErrorKind, TicketId,
};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::Observer;

/// Reads more than this many events per catch-up page.
const PAGE: usize = 10_000;

/// How long the fold thread waits for more events, spinning, before it
/// sleeps: under load events come every microsecond or two, and waking a
/// sleeping thread costs the appender a system call. Short, since a
/// spinning thread takes a core from the others (the SQLite writer's, or
/// a hyperthread's sibling): 5 µs measured best of 5, 15 and 50 on the
/// in-memory benchmark, and 50 µs made the SQLite one ~5% slower.
const SPIN: Duration = Duration::from_micros(5);

/// Appends closer together than this keep the fold thread going; farther
/// apart (a durable store's commits, agents that take seconds) they are
/// folded by the appender, as waking the thread would cost more (on the
/// SQLite benchmark, waking it for every commit made the run ~7% slower).
const BUSY: Duration = Duration::from_micros(20);

pub(crate) struct Journal {
    /// Applied to every event made for this journal, before it is folded
    /// or written ([`Journal::event`]).
    redactor: Redactor,
    store: Arc<dyn StateStore>,
    pub(crate) run: RunId,
    /// What every append expects: the run still held under this driver's
    /// epoch (fencing), when the store fences.
    expect: Expect,
    inner: Mutex<Inner>,
    /// The live state: every event of `Inner::unfolded` taken so far,
    /// folded. Taken before `inner` when both are held.
    state: Mutex<Folded>,
    /// The fold thread, once started (`None` if it could not be: events
    /// are then folded by whoever reads the state, at the latest).
    folder: OnceLock<Option<std::thread::Thread>>,
    /// The fold thread is asleep (or about to be): wake it on an append.
    asleep: AtomicBool,
    /// `Inner::unfolded` has events (set and cleared under its lock; read
    /// without it by the fold thread while it waits).
    queued: AtomicBool,
    /// This journal, for the fold thread (which must not keep it alive).
    me: Weak<Journal>,
    /// When it was made, and the last absorb (nanoseconds since): set by
    /// an absorb that finds the fold thread asleep (or none), and by the
    /// fold thread when it runs out of events.
    born: Instant,
    last: AtomicU64,
    /// [`BUSY`] in nanoseconds (tests set it to always or never).
    busy: AtomicU64,
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

/// The state and the room to fold into it: whoever folds (the fold
/// thread, or a reader) swaps the queue with `buf` under the state's lock,
/// so the queue's room is kept from one fold to the next.
struct Folded {
    state: RunState,
    /// Empty between folds.
    buf: Vec<Event>,
}

struct Inner {
    /// The seq of the last event put in `unfolded`.
    applied: u64,
    /// Events in journal order, not yet folded into the state.
    unfolded: Vec<Event>,
    /// Events appended but not yet queued for the fold, because an earlier
    /// seq (another task's append, or another process's decision) is not
    /// known yet.
    pending: BTreeMap<u64, Event>,
    /// An append is being written; others wait in `next`.
    writing: bool,
    /// Appends that came while one was being written: they go to the store
    /// together, as one append, when it is done.
    next: Vec<Event>,
    /// Who waits for `next`.
    waiting: Vec<oneshot::Sender<Turn>>,
}

impl Inner {
    /// Queues events in journal order, holding back those whose
    /// predecessors are not known yet.
    fn queue(&mut self, events: impl IntoIterator<Item = (u64, Event)>) {
        for (seq, e) in events {
            if seq <= self.applied {
                continue; // already queued (re-read or idempotent re-append)
            }
            if seq == self.applied + 1 && self.pending.is_empty() {
                self.applied = seq;
                self.unfolded.push(e);
            } else {
                self.pending.insert(seq, e);
            }
        }
        while let Some(e) = self.pending.remove(&(self.applied + 1)) {
            self.applied += 1;
            self.unfolded.push(e);
        }
    }

    /// Queues `events`, just appended with `seqs`. The usual case (they
    /// follow the last queued event, one after another) moves them onto
    /// the queue in one copy.
    fn queue_appended(&mut self, seqs: Vec<u64>, mut events: Vec<Event>) {
        let next = self.applied + 1;
        let n = events.len() as u64;
        if self.pending.is_empty()
            && seqs.len() == events.len()
            && seqs.iter().copied().eq(next..next + n)
        {
            self.applied += n;
            self.unfolded.append(&mut events);
        } else {
            self.queue(seqs.into_iter().zip(events));
        }
    }

    /// The write ended: the first waiting append (that is still there)
    /// writes the next group, or no one writes.
    fn hand_over(&mut self) {
        while !self.waiting.is_empty() {
            if self.waiting.remove(0).send(Turn::Lead).is_ok() {
                return;
            }
        }
        // No one waits (any events left in `next` belong to appends that
        // were dropped; the next writer takes them along).
        self.writing = false;
    }
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

impl Writing<'_> {
    /// The write succeeded: queues its `events` for the fold and hands
    /// the write over, under one lock.
    fn done(self, seqs: Vec<u64>, events: Vec<Event>) {
        let j = self.0;
        std::mem::forget(self);
        j.absorb(|g| {
            g.queue_appended(seqs, events);
            g.hand_over();
        });
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.lock().hand_over();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // The fold thread finds the journal gone and ends.
        if let Some(Some(t)) = self.folder.get() {
            t.unpark();
        }
    }
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
        expect: Expect,
        redactor: Redactor,
    ) -> Arc<Journal> {
        Arc::new_cyclic(|me| Journal {
            redactor,
            store,
            run,
            expect,
            inner: Mutex::new(Inner {
                applied: state.events,
                unfolded: Vec::new(),
                pending: BTreeMap::new(),
                writing: false,
                next: Vec::new(),
                waiting: Vec::new(),
            }),
            state: Mutex::new(Folded {
                state,
                buf: Vec::new(),
            }),
            folder: OnceLock::new(),
            asleep: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            me: me.clone(),
            born: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicU64::new(BUSY.as_nanos() as u64),
            observers,
            decisions,
            budget,
            budget_hit: AtomicBool::new(false),
            work,
            refused: std::sync::OnceLock::new(),
        })
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `events` durably, then folds them.
    pub(crate) async fn append(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let seqs = self
            .store()?
            .append_if(&self.run, self.expect, &events)
            .await?;
        self.absorb(|g| g.queue_appended(seqs, events));
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
                // No one waits while no one writes; `next` holds only what
                // dropped appends left.
                g.writing = true;
                let group = if g.next.is_empty() {
                    events
                } else {
                    let mut group = std::mem::take(&mut g.next);
                    group.extend(events);
                    group
                };
                Ok((group, Vec::new()))
            }
        };
        let (group, waiting) = match turn {
            Ok(lead) => lead,
            Err(rx) => match rx.await {
                Ok(Turn::Done(r)) => return r,
                // Our turn: our events are in `next`, with the others'.
                Ok(Turn::Lead) => {
                    let mut g = self.lock();
                    (std::mem::take(&mut g.next), std::mem::take(&mut g.waiting))
                }
                Err(_) => {
                    return Err(StoreError::new(
                        StoreErrorKind::Io,
                        "the journal write this append waited for was abandoned",
                    ));
                }
            },
        };
        let writing = Writing(self);
        let written = match self.store() {
            Ok(store) => store.append_if(&self.run, self.expect, &group).await,
            Err(e) => Err(e),
        };
        // Queued and handed over under one lock, before the fold: the next
        // group is written while this one is folded and its tickets go on.
        let r = match written {
            Ok(seqs) => {
                writing.done(seqs, group);
                Ok(())
            }
            Err(e) => {
                drop(writing);
                Err(e)
            }
        };
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
            self.absorb(|g| g.queue(page.into_iter().map(|s| (s.seq, s.event))));
            if n < PAGE {
                return Ok(());
            }
        }
    }

    /// Queues appended (or re-read) events for the fold by `queue` (in
    /// journal order, see [`Inner::queue`]), then has them folded.
    fn absorb(&self, queue: impl FnOnce(&mut Inner)) {
        {
            let mut g = self.lock();
            queue(&mut g);
            if g.unfolded.is_empty() {
                return;
            }
            self.queued.store(true, Ordering::SeqCst);
        }
        // Events coming thick and fast go to the fold thread (woken, or
        // started, for them); now and then, they are folded here, where
        // waking a thread would cost more than the fold.
        let folder = self.folder.get().and_then(Option::as_ref);
        if folder.is_some() && !self.asleep.load(Ordering::SeqCst) {
            // Awake: it takes them (and keeps `last`, without a clock
            // read here).
            return;
        }
        let now = self.born.elapsed().as_nanos() as u64;
        let gap = now.saturating_sub(self.last.swap(now, Ordering::Relaxed));
        let busy = gap < self.busy.load(Ordering::Relaxed);
        let folder = if busy {
            self.folder.get_or_init(|| self.start_folder()).as_ref()
        } else {
            folder
        };
        match folder {
            Some(t) if busy => {
                if self.asleep.swap(false, Ordering::SeqCst) {
                    t.unpark();
                }
            }
            _ => self.fold_now(),
        }
    }

    /// Starts the fold thread (`None` if the system would not).
    fn start_folder(&self) -> Option<std::thread::Thread> {
        let me = self.me.clone();
        match std::thread::Builder::new()
            .name("orch-fold".into())
            .spawn(move || fold_loop(&me))
        {
            Ok(h) => Some(h.thread().clone()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the fold thread; folding inline");
                None
            }
        }
    }

    /// Folds what is queued into the state (held locked by the caller).
    /// Whether there was anything.
    fn fold_queued(&self, f: &mut Folded) -> bool {
        {
            let mut g = self.lock();
            std::mem::swap(&mut g.unfolded, &mut f.buf);
            self.queued.store(false, Ordering::SeqCst);
        }
        let any = !f.buf.is_empty();
        for e in f.buf.drain(..) {
            self.fold(&mut f.state, e);
        }
        any
    }

    /// The state as folded so far (what is queued not yet in it).
    fn lock_state(&self) -> MutexGuard<'_, Folded> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live state, every event absorbed so far folded in.
    fn state(&self) -> MutexGuard<'_, Folded> {
        let mut s = self.lock_state();
        self.fold_queued(&mut s);
        s
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
                // state or the other observers' (nor the fold thread).
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

    /// Why the budget is spent, once it is. With a budget, every event
    /// absorbed so far is folded first, so the dispatcher starts nothing
    /// once an agent's finish has spent it.
    pub(crate) fn budget_spent(&self) -> Option<(u64, f64, String)> {
        let limited = self.budget.max_tokens.is_some() || self.budget.max_usd.is_some();
        if !limited {
            return None;
        }
        let s = self.state();
        if !self.budget_hit.load(Ordering::SeqCst) {
            return None;
        }
        let u = s.state.usage;
        let why = self.budget.exceeded(&u).unwrap_or_default();
        Some((u.total_tokens(), u.cost_usd, why))
    }

    /// Folds every event absorbed so far (which sends the decisions among
    /// them to the dispatcher) without waiting for the fold thread.
    pub(crate) fn fold_now(&self) {
        drop(self.state());
    }

    /// Reads the live state (every event absorbed so far folded in).
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&RunState) -> R) -> R {
        f(&self.state().state)
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
        let mut s = self.state();
        for o in &self.observers {
            o.finished(&s.state);
        }
        std::mem::take(&mut s.state)
    }
}

/// The fold thread: folds what appends queue until the journal is gone.
fn fold_loop(me: &Weak<Journal>) {
    loop {
        let Some(j) = me.upgrade() else { return };
        let folded = j.fold_queued(&mut j.lock_state());
        if folded {
            continue;
        }
        // Nothing queued: wait a little for more, then sleep until an
        // append wakes us (or the journal is dropped). What it folded last
        // was absorbed just before now: the time of the last absorb, for
        // the next one to measure its gap from (appends do not read the
        // clock while this thread is awake).
        let since = Instant::now();
        let now = since.saturating_duration_since(j.born).as_nanos() as u64;
        j.last.store(now, Ordering::Relaxed);
        while !j.queued.load(Ordering::SeqCst) && since.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
        j.asleep.store(true, Ordering::SeqCst);
        if j.queued.load(Ordering::SeqCst) {
            j.asleep.store(false, Ordering::SeqCst);
            continue;
        }
        drop(j); // not kept alive while asleep
        std::thread::park();
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
        async fn append_if(
            &self,
            _: &RunId,
            _: orch_core::Expect,
            events: &[Event],
        ) -> Result<Vec<u64>, StoreError> {
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
        async fn read(
            &self,
            _: &RunId,
            after: u64,
            limit: usize,
        ) -> Result<Vec<StoredEvent>, StoreError> {
            let j = self.events.lock().unwrap();
            Ok(j.iter()
                .zip(1..)
                .skip(after as usize)
                .take(limit)
                .map(|(e, seq)| StoredEvent {
                    seq,
                    event: e.clone(),
                })
                .collect())
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
        observed(store, Vec::new())
    }

    fn observed(store: Arc<dyn StateStore>, observers: Vec<Arc<dyn Observer>>) -> Arc<Journal> {
        let (decisions, _) = tokio::sync::mpsc::unbounded_channel();
        Journal::new(
            store,
            "r".parse().unwrap(),
            RunState::default(),
            observers,
            decisions,
            Budget::default(),
            Cancellation::new(),
            Expect::Any,
            Redactor::default(),
        )
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

    /// Records the ids of the events it sees, and the count the state had
    /// folded when it saw each.
    #[derive(Default)]
    struct Seen(Mutex<Vec<(orch_core::EventId, u64)>>);

    impl Observer for Seen {
        fn event(&self, event: &Event, state: &RunState) {
            self.0.lock().unwrap().push((event.id, state.events));
        }
    }

    /// A store that takes every append at once.
    fn open() -> Arc<Gated> {
        let store = gated(Vec::new());
        store.gate.add_permits(1 << 20);
        store
    }

    /// Appends `n` events one append each; returns their ids in order.
    async fn append_n(j: &Journal, n: usize) -> Vec<orch_core::EventId> {
        let mut ids = Vec::new();
        for i in 0..n {
            let e = ready(&format!("T-{i}"));
            ids.push(e[0].id);
            j.append_grouped(e).await.unwrap();
        }
        ids
    }

    /// A journal whose appends all go to the fold thread (`thread`) or are
    /// all folded by the appender.
    fn folding(thread: bool, observers: Vec<Arc<dyn Observer>>) -> Arc<Journal> {
        let j = observed(open(), observers);
        j.busy
            .store(if thread { u64::MAX } else { 0 }, Ordering::Relaxed);
        j
    }

    #[tokio::test]
    async fn a_reader_sees_every_event_appended_before_it_asked_in_order() {
        for thread in [true, false] {
            let seen = Arc::new(Seen::default());
            let j = folding(thread, vec![seen.clone()]);
            read_as_appended(&j, &seen).await;
            assert_eq!(j.folder.get().is_some(), thread);
        }
    }

    async fn read_as_appended(j: &Journal, seen: &Seen) {
        for round in 1..=50u64 {
            let ids = append_n(j, 20).await;
            // Whatever the fold thread has done by now, the reader's view
            // holds all of them.
            let (events, last) = j.with_state(|s| (s.events, s.tickets.len()));
            assert_eq!((events, last), (round * 20, 20), "round {round}");
            let seen = seen.0.lock().unwrap();
            let tail: Vec<_> = seen[seen.len() - 20..].iter().map(|&(id, _)| id).collect();
            assert_eq!(tail, ids, "observed in journal order");
        }
        let seen = seen.0.lock().unwrap();
        let counts: Vec<u64> = seen.iter().map(|&(_, n)| n).collect();
        assert_eq!(
            counts,
            (1..=1000).collect::<Vec<_>>(),
            "each once, folded in order"
        );
    }

    /// Another writer's events (a decision recorded by `orch decide`)
    /// land between two of the journal's appends: the append after them is
    /// held back until they are read, then all are folded in journal
    /// order; events queued already are not queued again.
    #[tokio::test]
    async fn an_append_after_anothers_events_waits_for_them_and_nothing_is_folded_twice() {
        let store = open();
        let seen = Arc::new(Seen::default());
        let j = observed(store.clone(), vec![seen.clone()]);
        j.busy.store(0, Ordering::Relaxed); // folded by the appender
        let mut ids = append_n(&j, 3).await;
        let theirs: Vec<Event> = ["O-1", "O-2"].iter().flat_map(|t| ready(t)).collect();
        ids.extend(theirs.iter().map(|e| e.id));
        store.events.lock().unwrap().extend(theirs);
        let mine = ready("X");
        ids.push(mine[0].id);
        j.append_grouped(mine.clone()).await.unwrap();
        assert_eq!(j.with_state(|s| s.events), 3, "seq 6 waits for 4 and 5");
        j.catch_up().await.unwrap();
        assert_eq!(j.with_state(|s| s.events), 6);
        // A re-sent append answered with seqs already queued.
        j.absorb(|g| g.queue_appended(vec![6], mine));
        j.catch_up().await.unwrap();
        assert_eq!(j.with_state(|s| s.events), 6, "nothing folded twice");
        let seen = seen.0.lock().unwrap();
        let order: Vec<_> = seen.iter().map(|&(id, _)| id).collect();
        assert_eq!(order, ids, "folded in journal order");
    }

    #[tokio::test]
    async fn appends_far_apart_are_folded_by_the_appender() {
        let seen = Arc::new(Seen::default());
        let j = folding(false, vec![seen.clone()]);
        for n in 1..=10 {
            append_n(&j, 1).await;
            assert_eq!(seen.0.lock().unwrap().len(), n, "folded before it returned");
        }
        assert!(j.folder.get().is_none(), "no thread was started");
    }

    #[tokio::test]
    async fn the_fold_thread_folds_without_a_reader_and_ends_with_the_journal() {
        let seen = Arc::new(Seen::default());
        let j = folding(true, vec![seen.clone()]);
        append_n(&j, 100).await;
        // No reader: the observer hears of them from the fold thread.
        let t = Instant::now();
        while seen.0.lock().unwrap().len() < 100 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the fold thread folds"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The thread does not keep the journal (and its observers) alive.
        let folder = j.folder.get().cloned().flatten().expect("a fold thread");
        assert_eq!(folder.name(), Some("orch-fold"));
        drop(j);
        let t = Instant::now();
        while Arc::strong_count(&seen) > 1 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the journal is freed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Panics on every event.
    struct Panicky;

    impl Observer for Panicky {
        fn event(&self, _: &Event, _: &RunState) {
            panic!("observer bug");
        }
    }

    #[tokio::test]
    async fn a_panicking_observer_stops_neither_the_fold_nor_the_others() {
        for thread in [true, false] {
            let seen = Arc::new(Seen::default());
            let j = folding(thread, vec![Arc::new(Panicky), seen.clone()]);
            append_n(&j, 30).await;
            assert_eq!(j.with_state(|s| s.events), 30);
            assert_eq!(seen.0.lock().unwrap().len(), 30);
            // The fold thread lives on: later events are folded too.
            append_n(&j, 5).await;
            assert_eq!(j.with_state(|s| s.events), 35);
        }
    }
}
