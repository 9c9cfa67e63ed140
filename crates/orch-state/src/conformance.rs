//! The conformance suite every [`StateStore`] runs: the memory store, the
//! SQLite and PostgreSQL stores, and any backend you write. Each check
//! panics with a message on the first violation, so call it from a test:
//!
//! ```
//! use std::sync::Arc;
//! use orch_core::StateStore;
//! let store: Arc<dyn StateStore> = Arc::new(orch_state::MemoryStore::new());
//! let open = move || Arc::clone(&store);
//! let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
//! rt.block_on(orch_state::conformance::run_all(&open));
//! ```
//!
//! `open` returns the store; calling it again must give a store over the
//! same data (for disk stores, reopen the file), which is how durability
//! across reopen is checked. [`run_locks`] needs a store whose
//! [`StateStore::lock_run`] excludes a second holder (the trait's default
//! excludes no one); a store only ever used by one engine can run the
//! other checks one by one instead of [`run_all`].

use std::sync::Arc;

use orch_core::{
    Event, EventId, EventKind, Expect, RunId, RunState, StateStore, StoreErrorKind, TicketId,
    TicketStatus, Timestamp,
};

/// Opens the store under test (again).
pub type Open<'a> = &'a (dyn Fn() -> Arc<dyn StateStore> + Send + Sync);

fn run(name: &str) -> RunId {
    RunId::new(name).expect("valid run id")
}

fn t(i: u64) -> TicketId {
    TicketId::new(format!("T-{i}")).expect("valid ticket id")
}

fn ev(id: u128, kind: EventKind) -> Event {
    Event {
        id: EventId(id),
        at: Timestamp(1_700_000_000_000 + id as u64),
        kind,
    }
}

/// Runs every check.
pub async fn run_all(open: Open<'_>) {
    ordering(open).await;
    reopen(open).await;
    idempotent(open).await;
    batches_are_atomic(open).await;
    large_batches(open).await;
    concurrent_appenders(open).await;
    folded_state(open).await;
    listing_runs(open).await;
    run_locks(open).await;
    conditional_appends(open).await;
    racing_conditional_appends(open).await;
    fenced_appends(open).await;
}

/// Events get consecutive seqs from 1 in append order; reads page.
pub async fn ordering(open: Open<'_>) {
    let s = open();
    let r = run("conf-ordering");
    let mut seqs = Vec::new();
    for i in 0..25u64 {
        seqs.extend(
            s.append(
                &r,
                &[ev(
                    u128::from(i) + 1,
                    EventKind::TicketReady { ticket: t(i) },
                )],
            )
            .await
            .unwrap(),
        );
    }
    seqs.extend(
        s.append(
            &r,
            &[
                ev(100, EventKind::TicketDone { ticket: t(0) }),
                ev(101, EventKind::TicketDone { ticket: t(1) }),
            ],
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        seqs,
        (1..=27).collect::<Vec<u64>>(),
        "seqs are consecutive from 1"
    );
    let all = s.read(&r, 0, 1000).await.unwrap();
    assert_eq!(all.len(), 27);
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    assert_eq!(all[25].event.id, EventId(100), "batch order kept");
    let page = s.read(&r, 10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
    assert!(s.read(&r, 27, 10).await.unwrap().is_empty());
    assert!(
        s.read(&run("conf-no-such-run"), 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "unknown run has no events"
    );
}

/// What was appended is there after reopening, byte for byte.
pub async fn reopen(open: Open<'_>) {
    let r = run("conf-reopen");
    let events: Vec<Event> = (0..10u64)
        .map(|i| {
            ev(
                1000 + u128::from(i),
                EventKind::AgentOutput {
                    agent: "a-1".parse().unwrap(),
                    text: format!("line {i} ✓ \"quoted\""),
                },
            )
        })
        .collect();
    {
        let s = open();
        s.append(&r, &events).await.unwrap();
    }
    let s = open();
    let back: Vec<Event> = s
        .read(&r, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(back, events, "journal survives reopen unchanged");
    let more = s
        .append(&r, &[ev(2000, EventKind::TicketReady { ticket: t(1) })])
        .await
        .unwrap();
    assert_eq!(more, [11], "numbering continues after reopen");
}

/// Re-appending an event id is a no-op returning its seq; the same id with
/// different content is a conflict that stores nothing.
pub async fn idempotent(open: Open<'_>) {
    let s = open();
    let r = run("conf-idempotent");
    let a = ev(1, EventKind::TicketReady { ticket: t(1) });
    let b = ev(2, EventKind::TicketReady { ticket: t(2) });
    assert_eq!(s.append(&r, &[a.clone(), b.clone()]).await.unwrap(), [1, 2]);
    assert_eq!(
        s.append(&r, &[b.clone(), a.clone()]).await.unwrap(),
        [2, 1],
        "re-append returns existing seqs"
    );
    assert_eq!(
        s.append(
            &r,
            &[a.clone(), ev(3, EventKind::TicketDone { ticket: t(1) })]
        )
        .await
        .unwrap(),
        [1, 3]
    );
    let mut forged = a.clone();
    forged.kind = EventKind::TicketDone { ticket: t(9) };
    let e = s.append(&r, &[forged]).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}");
    assert_eq!(
        s.read(&r, 0, 100).await.unwrap().len(),
        3,
        "nothing stored by the conflict"
    );
    // The same id twice in one batch is stored once.
    assert_eq!(
        s.append(
            &r,
            &[
                ev(4, EventKind::TicketDone { ticket: t(2) }),
                ev(4, EventKind::TicketDone { ticket: t(2) })
            ]
        )
        .await
        .unwrap(),
        [4, 4]
    );
}

/// A batch with a conflicting event stores none of its events.
pub async fn batches_are_atomic(open: Open<'_>) {
    let s = open();
    let r = run("conf-atomic");
    let a = ev(1, EventKind::TicketReady { ticket: t(1) });
    s.append(&r, std::slice::from_ref(&a)).await.unwrap();
    let mut forged = a.clone();
    forged.kind = EventKind::TicketDone { ticket: t(1) };
    let e = s
        .append(
            &r,
            &[ev(2, EventKind::TicketReady { ticket: t(2) }), forged],
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Conflict);
    let all = s.read(&r, 0, 100).await.unwrap();
    assert_eq!(all.len(), 1, "the failed batch left nothing behind");
    assert_eq!(
        s.append(&r, &[ev(2, EventKind::TicketReady { ticket: t(2) })])
            .await
            .unwrap(),
        [2],
        "no gap"
    );
}

/// The same rules hold for appends of many events (a store may write
/// them many rows at a time): re-sent events scattered among new ones get
/// their old seqs, a repeat within the batch is stored once, and one
/// conflicting event anywhere in a large batch stores none of it.
pub async fn large_batches(open: Open<'_>) {
    let s = open();
    let r = run("conf-large");
    let ready = |i: u64| ev(u128::from(i), EventKind::TicketReady { ticket: t(i) });
    let first: Vec<Event> = (1..=100).map(ready).collect();
    let seqs = s.append(&r, &first).await.unwrap();
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    // Old events (every tenth) among new ones.
    let mixed: Vec<Event> = (101..=170)
        .map(|i| {
            if i % 10 == 3 {
                ready(i - 100)
            } else {
                ready(i)
            }
        })
        .collect();
    let seqs = s.append(&r, &mixed).await.unwrap();
    let mut next = 100;
    for (e, seq) in mixed.iter().zip(&seqs) {
        let want = if e.id.0 <= 100 {
            e.id.0 as u64
        } else {
            next += 1;
            next
        };
        assert_eq!(*seq, want, "seq of event {}", e.id.0);
    }
    let stored = next;
    // A conflict deep in a large batch: nothing of it is stored.
    let mut bad: Vec<Event> = (1000..1080).map(ready).collect();
    bad[77].kind = EventKind::TicketDone { ticket: t(5) };
    bad[77].id = EventId(5);
    let e = s.append(&r, &bad).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}");
    assert_eq!(
        s.read(&r, 0, 1000).await.unwrap().len() as u64,
        stored,
        "the failed batch left nothing behind"
    );
    // A repeat inside a large batch is stored once, the rest after it.
    let mut twice: Vec<Event> = (2000..2020).map(ready).collect();
    twice[9] = twice[2].clone();
    let seqs = s.append(&r, &twice).await.unwrap();
    assert_eq!(seqs[9], seqs[2], "the repeat gets the first one's seq");
    assert_eq!(seqs[19], stored + 19, "19 new events, no gap");
    let all = s.read(&r, 0, 1000).await.unwrap();
    assert_eq!(all.len() as u64, stored + 19);
    assert!(
        all.iter().zip(1..).all(|(e, seq)| e.seq == seq),
        "consecutive seqs"
    );
}

/// Many tasks appending at once: every acknowledged event is stored once,
/// seqs have no gaps, each task's events keep their order.
pub async fn concurrent_appenders(open: Open<'_>) {
    let s = open();
    let r = run("conf-concurrent");
    let tasks = 16u128;
    let per = 40u128;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (s, r) = (Arc::clone(&s), r.clone());
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..per {
                let id = task * 1000 + i + 1;
                let seq = s
                    .append(
                        &r,
                        &[ev(
                            id,
                            EventKind::AgentOutput {
                                agent: "a-1".parse().unwrap(),
                                text: format!("{task}:{i}"),
                            },
                        )],
                    )
                    .await
                    .unwrap();
                acked.push((id, seq[0]));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    let all = s.read(&r, 0, 100_000).await.unwrap();
    assert_eq!(all.len() as u128, tasks * per);
    assert!(
        all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1),
        "no gaps"
    );
    for (id, seq) in acked {
        assert_eq!(
            all[seq as usize - 1].event.id,
            EventId(id),
            "acknowledged seq points at the event"
        );
    }
    for task in 0..tasks {
        let mine: Vec<u128> = all
            .iter()
            .map(|e| e.event.id.0)
            .filter(|id| id / 1000 == task)
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "per-task order kept");
    }
}

/// `state` is the fold of the journal.
pub async fn folded_state(open: Open<'_>) {
    let s = open();
    let r = run("conf-state");
    let mut events = vec![ev(
        1,
        EventKind::RunStarted {
            run: r.clone(),
            plan: "p".into(),
            fingerprint: "f".into(),
            resumed: false,
            parts: Default::default(),
            driver: None,
            base: None,
            plan_file: None,
        },
    )];
    for i in 0..30u64 {
        events.push(ev(
            10 + u128::from(i),
            EventKind::TicketReady { ticket: t(i) },
        ));
        if i % 3 == 0 {
            events.push(ev(
                100 + u128::from(i),
                EventKind::TicketDone { ticket: t(i) },
            ));
        }
    }
    for chunk in events.chunks(7) {
        s.append(&r, chunk).await.unwrap();
    }
    let state = s.state(&r).await.unwrap();
    assert_eq!(state, RunState::fold(&events));
    assert_eq!(state.count(TicketStatus::Done), 10);
    assert_eq!(state.run.as_ref(), Some(&r));
}

/// Every run with a journal is listed, once.
pub async fn listing_runs(open: Open<'_>) {
    let s = open();
    for name in ["conf-list-a", "conf-list-b"] {
        s.append(
            &run(name),
            &[ev(1, EventKind::TicketReady { ticket: t(1) })],
        )
        .await
        .unwrap();
        s.append(
            &run(name),
            &[ev(2, EventKind::TicketReady { ticket: t(2) })],
        )
        .await
        .unwrap();
    }
    let runs = s.runs().await.unwrap();
    for name in ["conf-list-a", "conf-list-b"] {
        assert_eq!(
            runs.iter().filter(|r| r.as_str() == name).count(),
            1,
            "{name} listed once in {runs:?}"
        );
    }
}

/// [`StateStore::lock_run`]: one holder per run, from the same store
/// value or another one over the same data; other runs are free; appends
/// and reads go on while a run is held; dropping the lock frees the run
/// (within a few seconds: a server may notice a closed connection late).
pub async fn run_locks(open: Open<'_>) {
    let (s, other) = (open(), open());
    let (a, b) = (run("conf-lock-a"), run("conf-lock-b"));
    let held = s.lock_run(&a).await.unwrap();
    assert!(held.is_guarded(), "lock_run must exclude other drivers");
    for store in [&s, &other] {
        let e = store.lock_run(&a).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Locked, "{e}");
        assert!(e.message.contains("conf-lock-a"), "names the run: {e}");
    }
    let held_b = other.lock_run(&b).await.unwrap();
    // Whoever holds the run, anyone may append to it (a person's decision).
    let seqs = other
        .append(&a, &[ev(1, EventKind::TicketReady { ticket: t(1) })])
        .await
        .unwrap();
    assert_eq!(seqs, [1]);
    assert_eq!(s.read(&a, 0, 10).await.unwrap().len(), 1);
    drop(held);
    let mut again = other.lock_run(&a).await;
    for _ in 0..100 {
        match &again {
            Err(e) if e.kind == StoreErrorKind::Locked => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                again = other.lock_run(&a).await;
            }
            _ => break,
        }
    }
    let again = again.expect("a dropped lock frees the run");
    assert_eq!(
        s.lock_run(&b).await.unwrap_err().kind,
        StoreErrorKind::Locked,
        "the other run is still held"
    );
    drop((again, held_b));
}

/// [`Expect::LastSeq`]: stored only if the journal still ends where the
/// caller read it (0 for a run with no events); else
/// [`StoreErrorKind::Changed`] and nothing stored, even for an event that
/// is already in the journal.
pub async fn conditional_appends(open: Open<'_>) {
    let s = open();
    let r = run("conf-conditional");
    let first = ev(1, EventKind::TicketReady { ticket: t(1) });
    let e = s
        .append_if(&r, Expect::LastSeq(1), std::slice::from_ref(&first))
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Changed, "{e}");
    assert!(
        s.read(&r, 0, 10).await.unwrap().is_empty(),
        "nothing stored"
    );
    assert_eq!(
        s.append_if(&r, Expect::LastSeq(0), std::slice::from_ref(&first))
            .await
            .unwrap(),
        [1]
    );
    let second = ev(2, EventKind::TicketReady { ticket: t(2) });
    let e = s
        .append_if(&r, Expect::LastSeq(0), std::slice::from_ref(&second))
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Changed, "{e}");
    assert!(e.message.contains("conf-conditional"), "names the run: {e}");
    let e = s
        .append_if(&r, Expect::LastSeq(0), std::slice::from_ref(&first))
        .await
        .unwrap_err();
    assert_eq!(
        e.kind,
        StoreErrorKind::Changed,
        "checked before idempotency"
    );
    assert_eq!(
        s.append_if(&r, Expect::LastSeq(1), &[second, first])
            .await
            .unwrap(),
        [2, 1]
    );
    assert_eq!(open().read(&r, 0, 10).await.unwrap().len(), 2);
}

/// Many writers read the journal's end and append against it at the same
/// moment, each from a store value of its own (separate processes share
/// the data the same way): exactly one of each round is stored.
pub async fn racing_conditional_appends(open: Open<'_>) {
    let r = run("conf-racing");
    let writers: Vec<Arc<dyn StateStore>> = (0..6).map(|_| open()).collect();
    for round in 0..5u128 {
        let seq = writers[0].read(&r, 0, 1000).await.unwrap().len() as u64;
        let barrier = Arc::new(tokio::sync::Barrier::new(writers.len()));
        let mut handles = Vec::new();
        for (w, store) in writers.iter().enumerate() {
            let (store, r, barrier) = (Arc::clone(store), r.clone(), Arc::clone(&barrier));
            handles.push(tokio::spawn(async move {
                let e = ev(
                    round * 100 + w as u128 + 1,
                    EventKind::TicketSkipped {
                        ticket: t(w as u64),
                    },
                );
                barrier.wait().await;
                store.append_if(&r, Expect::LastSeq(seq), &[e]).await
            }));
        }
        let mut won = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok(seqs) => {
                    assert_eq!(seqs, [seq + 1]);
                    won += 1;
                }
                Err(e) => assert_eq!(e.kind, StoreErrorKind::Changed, "{e}"),
            }
        }
        assert_eq!(
            won, 1,
            "round {round}: exactly one conditional append is stored"
        );
        assert_eq!(
            writers[0].read(&r, 0, 1000).await.unwrap().len() as u64,
            seq + 1
        );
    }
}

/// Fencing: every [`StateStore::lock_run`] gives the run a larger epoch;
/// an append under an older epoch ([`Expect::Epoch`]) is refused with
/// [`StoreErrorKind::Fenced`] and stores nothing, from any store value.
pub async fn fenced_appends(open: Open<'_>) {
    let (s, other) = (open(), open());
    let r = run("conf-fenced");
    let first = s.lock_run(&r).await.unwrap();
    let old = first.epoch().expect("a shared store fences its locks");
    assert!(old > 0, "a locked run's epoch is above 0");
    let a = ev(1, EventKind::TicketReady { ticket: t(1) });
    assert_eq!(
        s.append_if(&r, Expect::Epoch(old), &[a]).await.unwrap(),
        [1]
    );
    // The old holder's lock goes (a crash, a lost connection), a new
    // driver takes the run.
    drop(first);
    let mut second = other.lock_run(&r).await;
    for _ in 0..100 {
        match &second {
            Err(e) if e.kind == StoreErrorKind::Locked => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                second = other.lock_run(&r).await;
            }
            _ => break,
        }
    }
    let second = second.expect("a dropped lock frees the run");
    let new = second.epoch().expect("fenced");
    assert!(new > old, "epochs grow: {old} then {new}");
    let late = ev(
        2,
        EventKind::TicketFailed {
            ticket: t(1),
            reason: "stale".into(),
        },
    );
    for store in [&s, &other] {
        let e = store
            .append_if(&r, Expect::Epoch(old), std::slice::from_ref(&late))
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Fenced, "{e}");
        assert!(!e.is_retryable());
    }
    assert_eq!(s.read(&r, 0, 10).await.unwrap().len(), 1, "nothing stored");
    let b = ev(3, EventKind::TicketDone { ticket: t(1) });
    assert_eq!(
        other.append_if(&r, Expect::Epoch(new), &[b]).await.unwrap(),
        [2]
    );
    drop(second);
}
