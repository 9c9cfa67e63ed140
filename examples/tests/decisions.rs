//! Two people answering the same escalation at the same moment: exactly
//! one answer is recorded, on every store, and the others are told what
//! was decided instead. Each writer has a store value of its own over the
//! same data, as separate `orch decide` processes do.

use std::sync::Arc;

use orch_core::{Decision, Event, EventKind, RunId, RunState, StateStore};
use orch_graph::{EngineError, decide};

mod common;

fn run_id() -> RunId {
    "race".parse().unwrap()
}

/// A run with `tickets` escalated tickets, T0..
async fn escalated(store: &dyn StateStore, tickets: usize) {
    let mut events = vec![Event::now(EventKind::RunStarted {
        run: run_id(),
        plan: "p".into(),
        fingerprint: "f".into(),
        resumed: false,
        parts: Default::default(),
        driver: None,
        base: None,
        plan_file: None,
    })];
    for i in 0..tickets {
        events.push(Event::now(EventKind::Escalated {
            ticket: format!("T{i}").parse().unwrap(),
            phase: "build".parse().unwrap(),
            question: "approve?".into(),
            context: String::new(),
            options: vec![
                Decision::Approve,
                Decision::Retry,
                Decision::Skip,
                Decision::Abort,
            ],
        }));
    }
    store.append(&run_id(), &events).await.unwrap();
}

/// Races `writers.len()` different answers to each of 5 tickets.
async fn race(writers: Vec<Arc<dyn StateStore>>) {
    const TICKETS: usize = 5;
    escalated(&*writers[0], TICKETS).await;
    let answers = [
        Decision::Approve,
        Decision::Retry,
        Decision::Skip,
        Decision::Abort,
    ];
    for i in 0..TICKETS {
        let ticket: orch_core::TicketId = format!("T{i}").parse().unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(writers.len()));
        let mut handles = Vec::new();
        for (w, store) in writers.iter().enumerate() {
            let (store, barrier, ticket) = (store.clone(), barrier.clone(), ticket.clone());
            handles.push(tokio::spawn(async move {
                let answer = answers[w % answers.len()];
                barrier.wait().await;
                let r = decide(&*store, &run_id(), &ticket, answer, Some(format!("w{w}"))).await;
                (answer, r)
            }));
        }
        let mut accepted = Vec::new();
        for h in handles {
            match h.await.unwrap() {
                (answer, Ok(())) => accepted.push(answer),
                (_, Err(EngineError::Decision(m))) => assert!(
                    m.contains(&format!("{ticket} was already answered")),
                    "the refusal says what happened: {m}"
                ),
                (_, Err(e)) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(
            accepted.len(),
            1,
            "{ticket}: exactly one answer is accepted"
        );
        let state = writers[0].state(&run_id()).await.unwrap();
        let recorded: Vec<Decision> = state
            .decisions
            .iter()
            .filter(|d| d.ticket == ticket)
            .filter_map(|d| d.answer)
            .collect();
        assert_eq!(recorded, accepted, "{ticket}: the journal holds that one");
        let events = writers[0].read(&run_id(), 0, 1000).await.unwrap();
        let answers_in_journal = events
            .iter()
            .filter(|e| matches!(&e.event.kind, EventKind::DecisionRecorded { ticket: t, .. } if *t == ticket))
            .count();
        assert_eq!(answers_in_journal, 1);
        // And the fold agrees with the journal.
        let folded = RunState::fold(events.iter().map(|e| &e.event));
        assert_eq!(folded.open_decisions().count(), TICKETS - i - 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_on_the_memory_store_accept_exactly_one() {
    let store: Arc<dyn StateStore> = Arc::new(orch_state::MemoryStore::new());
    race((0..6).map(|_| store.clone()).collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_on_sqlite_accept_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let writers = (0..6)
        .map(|_| Arc::new(orch_state::SqliteStore::open(&path).unwrap()) as Arc<dyn StateStore>)
        .collect();
    race(writers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn concurrent_decisions_on_postgres_accept_exactly_one() {
    let db = common::Db::new("decide_race").await;
    let mut writers: Vec<Arc<dyn StateStore>> = Vec::new();
    for _ in 0..6 {
        writers.push(db.store().await);
    }
    race(writers).await;
    db.drop().await;
}
