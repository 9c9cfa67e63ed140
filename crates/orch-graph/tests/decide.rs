//! `decide` takes only an answer the question offered, and records it
//! once.

use orch_core::{Decision, Event, EventKind, RunId, StateStore, TicketId};
use orch_state::MemoryStore;

#[tokio::test]
async fn an_answer_the_question_did_not_offer_is_refused_and_not_recorded() {
    let store = MemoryStore::new();
    let run: RunId = "r1".parse().unwrap();
    let t: TicketId = "T-1".parse().unwrap();
    store
        .append(
            &run,
            &[
                Event::now(EventKind::RunStarted {
                    run: run.clone(),
                    plan: "p".into(),
                    fingerprint: String::new(),
                    resumed: false,
                    parts: Default::default(),
                    driver: None,
                    base: None,
                    plan_file: None,
                }),
                Event::now(EventKind::Escalated {
                    ticket: t.clone(),
                    phase: "implement".parse().unwrap(),
                    question: "retry or skip?".into(),
                    context: String::new(),
                    options: vec![Decision::Retry, Decision::Skip],
                }),
            ],
        )
        .await
        .unwrap();
    for refused in [Decision::Approve, Decision::Abort] {
        let e = orch_graph::decide(&store, &run, &t, refused, None)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("{refused:?} is not an option for T-1 (options: [Retry, Skip])"),
        );
    }
    assert_eq!(store.read(&run, 0, 10).await.unwrap().len(), 2);
    orch_graph::decide(&store, &run, &t, Decision::Skip, None)
        .await
        .unwrap();
    let state = store.state(&run).await.unwrap();
    assert_eq!(state.open_decisions().count(), 0);
    assert_eq!(store.read(&run, 0, 10).await.unwrap().len(), 3);
}
