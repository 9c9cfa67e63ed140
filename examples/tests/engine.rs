//! The engine end to end, in process: both bundled plans on real git and
//! real `cargo` gates, and the paths a run can take (retry, escalation and
//! decisions, restart, failure, budget, cancellation and resume, changed
//! plans, cycles, a failing store).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use orch_agents::{ScriptedAgent, Step};
use orch_core::{
    Agent, AgentContext, AgentError, AgentErrorKind, AgentOutcome, AgentTask, BatchStatus,
    Cancellation, Decision, Event, EventKind, Plan, RunId, RunOutcome, RunState, SharedDir,
    StateStore, StoreError, StoreErrorKind, StoredEvent, TicketStatus, Usage,
};
use orch_examples::{Setup, demo, open_store};
use orch_graph::{Engine, EngineError, decide};
use orch_state::MemoryStore;

const PLANS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plans");

fn run_id(s: &str) -> RunId {
    s.parse().unwrap()
}

async fn journal(store: &dyn StateStore, run: &RunId) -> Vec<StoredEvent> {
    store.read(run, 0, 1_000_000).await.unwrap()
}

/// The live state the engine reports equals folding its journal.
async fn assert_live_equals_fold(store: &dyn StateStore, run: &RunId, live: &RunState) {
    let folded = RunState::fold(journal(store, run).await.iter().map(|s| &s.event));
    assert_eq!(
        &folded, live,
        "live state differs from the fold of the journal"
    );
}

/// No phase that passed ran its agent again later in the journal.
fn assert_no_passed_phase_reran(events: &[StoredEvent]) {
    let mut passed = std::collections::HashSet::new();
    for e in events {
        match &e.event.kind {
            EventKind::PhasePassed { ticket, phase, .. } => {
                passed.insert((ticket.clone(), phase.clone()));
            }
            EventKind::PhaseRestarted { ticket, .. } => passed.retain(|(t, _)| t != ticket),
            EventKind::AgentStarted { ticket, phase, .. } => assert!(
                !passed.contains(&(ticket.clone(), phase.clone())),
                "{ticket} {phase} ran again after it passed (seq {})",
                e.seq
            ),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_readiness_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("shop");
    demo::init_repo(&repo, demo::BACKEND_FILES).unwrap();
    let plan = Plan::from_path(format!("{PLANS}/production-readiness.toml")).unwrap();
    let state_dir = dir.path().join("state");
    let agent = demo::backend_agent();
    let mut setup = Setup::new(plan.clone(), &repo, &state_dir, agent.clone());
    setup.progress = false;
    let store = open_store(&state_dir).unwrap();
    let run = run_id("pr");

    // First pass: everything but the escalated ticket and QA-002 (which
    // depends on it) finishes; the run pauses on the question.
    let first = setup.engine(store.clone()).unwrap();
    let report = first.run(&run, Cancellation::new()).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Paused);
    let s = &report.state;
    assert_eq!(s.count(TicketStatus::Done), 16, "{:#?}", s.tickets);
    assert_eq!(s.tickets["SEC-006"].status, TicketStatus::AwaitingDecision);
    assert!(
        !s.tickets.contains_key("QA-002"),
        "QA-002 waits for SEC-006"
    );
    let open: Vec<_> = s.open_decisions().collect();
    assert_eq!(open.len(), 1);
    assert!(
        open[0].context.contains("policy decision"),
        "{}",
        open[0].context
    );
    for b in ["PR1", "PR2", "PR3", "PR4"] {
        assert_eq!(s.batches[b].status, BatchStatus::Merged, "{b}");
    }
    assert!(!s.batches.contains_key("PR5"));
    let queue = std::fs::read_to_string(state_dir.join("DECISION_QUEUE.md")).unwrap();
    assert!(queue.contains("orch decide SEC-006"), "{queue}");
    assert!(queue.contains("[PR1: GO](go-no-go/PR1.md)"), "{queue}");
    // The status report: waiting on a person is YELLOW.
    let status = std::fs::read_to_string(state_dir.join("STATUS_REPORT.md")).unwrap();
    assert!(status.contains("## Go/No-Go: **YELLOW**"), "{status}");
    assert!(
        status.contains("- YELLOW `decision_open`: SEC-006 waits"),
        "{status}"
    );
    assert!(status.contains("16/18 tickets done"), "{status}");

    // A person approves; the run resumes and completes.
    decide(
        store.as_ref(),
        &run,
        &"SEC-006".parse().unwrap(),
        Decision::Approve,
        None,
    )
    .await
    .unwrap();
    let report = setup
        .engine(store.clone())
        .unwrap()
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    let s = &report.state;
    assert_eq!(s.count(TicketStatus::Done), 18);
    // Done, every batch merged, the one decision answered: GREEN, and
    // each batch's record says GO with its gates' evidence.
    let status = std::fs::read_to_string(state_dir.join("STATUS_REPORT.md")).unwrap();
    assert!(
        status.contains("## Go/No-Go: **GREEN**\n\nNo rule fired."),
        "{status}"
    );
    assert!(status.contains("18/18 tickets done"), "{status}");
    let pr5 = std::fs::read_to_string(state_dir.join("go-no-go/PR5.md")).unwrap();
    assert!(pr5.starts_with("# Batch PR5: GO\n"), "{pr5}");
    assert!(pr5.contains("4/4 batch gates passed"), "{pr5}");
    // The person's approval of SEC-006 is a risk they accepted for PR5.
    assert!(
        pr5.contains("## Residual risks accepted\n\n- SEC-006: `"),
        "{pr5}"
    );
    for b in ["PR1", "PR2", "PR3", "PR4", "PR5"] {
        let batch = &s.batches[b];
        assert_eq!(batch.status, BatchStatus::Merged, "{b}");
        assert_eq!((batch.gates_passed, batch.gates_total), (4, 4), "{b}");
    }
    assert_live_equals_fold(store.as_ref(), &run, s).await;
    let events = journal(store.as_ref(), &run).await;
    assert_no_passed_phase_reran(&events);

    // The retried ticket failed its test gate once, and the second attempt
    // was shown the failing test.
    let retried = &s.tickets[demo::RETRIED];
    assert_eq!((retried.attempt, retried.metrics.failed_attempts), (2, 1));
    let second = agent
        .calls()
        .into_iter()
        .find(|t| t.ticket.id.as_str() == demo::RETRIED && t.attempt == 2)
        .unwrap();
    assert!(
        second.prompt.contains("failing test `backoff_doubles`"),
        "{}",
        second.prompt
    );
    // 18 tickets, 1 retry, 3 attempts of the escalated ticket.
    assert_eq!(agent.calls().len(), 21);

    // Git: a checkpoint per ticket, five batch branches holding their work.
    // (Ticket branches are gone once their batch merged.)
    let implement: orch_core::PhaseName = "implement".parse().unwrap();
    let checkpoint = &s.tickets["INFRA-006"].checkpoints[&implement];
    let log = demo::git(&repo, &["log", "-1", "--format=%B", checkpoint]).unwrap();
    assert!(
        log.contains("Orch-Checkpoint: pr/INFRA-006/implement/2"),
        "{log}"
    );
    let files = demo::git(
        &repo,
        &["ls-tree", "-r", "--name-only", "orch/pr5-governance-tests"],
    )
    .unwrap();
    for f in [
        "tests/qa_002.rs",
        "tests/sec_006.rs",
        "tests/sec_004.rs",
        "tests/infra_004.rs",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in PR5:\n{files}");
    }
    let pr2 = demo::git(
        &repo,
        &["ls-tree", "-r", "--name-only", "orch/pr2-auth-hardening"],
    )
    .unwrap();
    assert!(
        pr2.contains("tests/sec_003.rs") && !pr2.contains("tests/qa_002.rs"),
        "{pr2}"
    );

    // The state files a person reads.
    let state = std::fs::read_to_string(state_dir.join("ORCHESTRATOR_STATE.md")).unwrap();
    assert!(
        state.contains("| PR5 | governance-tests | complete | PR5: 20/20 passed |"),
        "{state}"
    );
    let results = std::fs::read_to_string(state_dir.join("TEST_RESULTS.md")).unwrap();
    assert!(results.contains("FAILED (fixed on attempt 2)"), "{results}");
    let ticket: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state_dir.join("tickets/INFRA-006.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ticket["status"], "done");
    // Written piecemeal (only what changed, every 200 ms), the files end
    // as a full render of the final state.
    for (name, contents) in orch_state::views::render(s, Some(&plan)) {
        let on_disk = std::fs::read_to_string(state_dir.join(&name)).unwrap();
        assert_eq!(on_disk, contents, "{name}");
    }
}

/// The bundled seven-phase plan without its coverage gate (which needs
/// `cargo llvm-cov`; the test with it is ignored by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_phase_without_coverage_restarts_from_planning_and_completes() {
    seven_phase_restarts_from_planning_and_completes(false).await;
}

/// The bundled seven-phase plan as it is, coverage gate included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs cargo-llvm-cov and the llvm-tools-preview component"]
async fn seven_phase_with_coverage_restarts_from_planning_and_completes() {
    assert!(
        demo::has_llvm_cov(),
        "this test needs `cargo llvm-cov` (cargo install cargo-llvm-cov; rustup component add llvm-tools-preview)"
    );
    seven_phase_restarts_from_planning_and_completes(true).await;
}

async fn seven_phase_restarts_from_planning_and_completes(coverage: bool) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("quote");
    demo::init_repo(&repo, demo::QUOTE_FILES).unwrap();
    let mut plan = Plan::from_path(format!("{PLANS}/seven-phase.toml")).unwrap();
    if !coverage {
        demo::drop_coverage_gates(&mut plan);
    }
    let state_dir = dir.path().join("state");
    let mut setup = Setup::new(plan, &repo, &state_dir, demo::quote_agent());
    setup.progress = false;
    let store = open_store(&state_dir).unwrap();
    let run = run_id("seven");
    let report = setup
        .engine(store.clone())
        .unwrap()
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    // The threat model lists a critical finding still open: the security
    // phase halts the ticket for a person.
    assert_eq!(report.outcome, RunOutcome::Paused);
    let halted: Vec<_> = report.state.open_decisions().collect();
    assert_eq!(halted.len(), 1);
    assert_eq!(halted[0].phase.as_str(), "security");
    assert!(
        halted[0].context.contains("open critical finding"),
        "{}",
        halted[0].context
    );
    // A person approves and writes down why (`orch decide QUOTE-001
    // --approve --adr ...`).
    let adr = orch_graph::decide_with_adr(
        store.as_ref(),
        &run,
        &"QUOTE-001".parse().unwrap(),
        Decision::Approve,
        None,
        orch_graph::AdrDraft::titled("Ship with the cache admin finding open"),
    )
    .await
    .unwrap();
    assert_eq!(
        adr.path(),
        "docs/adr/ADR-001-ship-with-the-cache-admin-finding-open.md"
    );
    let report = setup
        .engine(store.clone())
        .unwrap()
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    let t = &report.state.tickets["QUOTE-001"];
    assert_eq!(t.restarts, 1);
    assert_eq!(t.metrics.failed_attempts, 4);
    // The record is committed with the security checkpoint; the
    // documentation gate checked the ticket's own ADR, not it.
    let security = t.checkpoints.get("security").unwrap();
    let record = demo::git(&repo, &["show", &format!("{security}:{}", adr.path())]).unwrap();
    assert!(
        record.starts_with("# ADR-001: Ship with the cache admin finding open\n"),
        "{record}"
    );
    assert!(record.contains("open critical finding"), "{record}");
    assert_eq!(t.phases_passed.len(), 7);
    assert_eq!(t.checkpoints.len(), 7);
    assert_eq!(t.metrics.tests_ran, Some(3));
    // Seven checkpoint commits on top of the initial one, and the feedback
    // file the restart wrote is in the planning checkpoint.
    let log = demo::git(&repo, &["log", "--format=%s", "orch/seven/QUOTE-001"]).unwrap();
    assert_eq!(log.lines().count(), 8, "{log}");
    let planning = t
        .checkpoints
        .get("planning")
        .expect("planning checkpointed");
    let feedback = demo::git(
        &repo,
        &[
            "show",
            &format!("{planning}:docs/feedback/QUOTE-001-implementation.md"),
        ],
    )
    .unwrap();
    assert!(feedback.contains("the_window_moves_on"), "{feedback}");
    let events = journal(store.as_ref(), &run).await;
    assert_no_passed_phase_reran(&events);
    assert!(events.iter().any(|e| matches!(&e.event.kind,
        EventKind::PhaseRestarted { from, .. } if from.as_str() == "planning")));
    assert_live_equals_fold(store.as_ref(), &run, &report.state).await;

    // The recorded journal, folded into the status report: done well
    // inside its 6h estimate, two unreviewed failed attempts (under
    // `retries_warn`), the escalation answered: GREEN.
    let plan = &setup.plan;
    let report_of = |events: &[Event]| {
        let state = RunState::fold(events);
        let at = state.updated_at.unwrap();
        orch_graph::status::StatusReport::new(plan, &state, at, None).unwrap()
    };
    let recorded: Vec<Event> = events.iter().map(|e| e.event.clone()).collect();
    let r = report_of(&recorded);
    assert_eq!(
        r.colour,
        orch_graph::status::Colour::Green,
        "{:#?}",
        r.fired
    );
    assert_eq!(r.health.decision_wait.count, 1);
    // The same run with a delay injected: the journal stretched to span
    // 12 hours, so the run took 6h longer than its estimate, more than
    // `policy.escalate_delay` (4h): RED, by the critical-path rule alone.
    let t0 = recorded[0].at.0;
    let span = (recorded.last().unwrap().at.0 - t0).max(1);
    let late: Vec<Event> = recorded
        .iter()
        .map(|e| Event {
            at: orch_core::Timestamp(t0 + (e.at.0 - t0) * (12 * 3_600_000) / span),
            ..e.clone()
        })
        .collect();
    let r = report_of(&late);
    assert!(r.schedule.delay_ms > 4 * 3_600_000, "{:?}", r.schedule);
    let fired: Vec<_> = r.fired.iter().map(|f| f.rule).collect();
    assert_eq!(
        fired,
        [orch_graph::status::Rule::CriticalPathSlip],
        "{:#?}",
        r.fired
    );
    assert_eq!(r.colour, orch_graph::status::Colour::Red);
}

/// A small plan: tickets A..=D, C and D depend on A, one phase with a
/// command gate checking that the agent wrote `<ticket>.txt`.
fn small_plan(extra: &str) -> Plan {
    Plan::from_toml_str(&format!(
        r#"
name = "small"
default_role = "dev"
{extra}
[agents.dev]
backend = {{ kind = "custom", name = "scripted" }}

[[phases]]
name = "work"
max_attempts = 2
on_exhausted = "escalate"
gates = [{{ kind = "command", argv = ["test", "-s", "{{ticket}}.txt"] }}]

[[tickets]]
id = "A"
title = "a"
effort = "1h"
[[tickets]]
id = "B"
title = "b"
effort = "1h"
[[tickets]]
id = "C"
title = "c"
effort = "1h"
depends_on = ["A"]
[[tickets]]
id = "D"
title = "d"
effort = "1h"
depends_on = ["A"]
"#
    ))
    .unwrap()
}

fn writes() -> Step {
    Step::Write(vec![("{ticket}.txt".into(), "done\n".into())])
}

fn engine(plan: Plan, agent: Arc<dyn Agent>, store: Arc<dyn StateStore>, dir: &Path) -> Engine {
    Engine::new(plan, agent, store)
        .unwrap()
        .workspace(Arc::new(SharedDir::new(dir)))
        .gates(Arc::new(orch_gates::from_spec))
        .poll_interval(Duration::from_millis(20))
}

#[tokio::test]
async fn escalations_pause_only_their_tickets_and_are_answered_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    // A and B never write their file: both escalate after two attempts.
    let agent = Arc::new(
        ScriptedAgent::new("s", writes())
            .on("A", "work", 1, Step::Fail("no".into()))
            .on("A", "work", 2, Step::Fail("no".into()))
            .on("B", "work", 1, Step::Fail("no".into()))
            .on("B", "work", 2, Step::Fail("no".into())),
    );
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let report = engine(small_plan(""), agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Paused);
    let s = &report.state;
    assert_eq!(s.tickets["A"].status, TicketStatus::AwaitingDecision);
    assert_eq!(s.tickets["B"].status, TicketStatus::AwaitingDecision);
    assert!(!s.tickets.contains_key("C"), "C depends on A and must wait");
    assert_eq!(s.open_decisions().count(), 2);

    // Not waiting, or not an option: refused with the reason.
    let err = decide(
        store.as_ref(),
        &run,
        &"C".parse().unwrap(),
        Decision::Approve,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "C is not waiting for a decision (waiting: A, B)"
    );

    // Answer B first (retry with a note), then A (approve).
    decide(
        store.as_ref(),
        &run,
        &"B".parse().unwrap(),
        Decision::Retry,
        Some("write B.txt".into()),
    )
    .await
    .unwrap();
    decide(
        store.as_ref(),
        &run,
        &"A".parse().unwrap(),
        Decision::Approve,
        None,
    )
    .await
    .unwrap();
    let report = engine(small_plan(""), agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        RunOutcome::Completed,
        "{:#?}",
        report.state.tickets
    );
    // B's retry ran attempt 3 with the person's note; A was not run again.
    let calls = agent.calls();
    let b3 = calls
        .iter()
        .find(|t| t.ticket.id.as_str() == "B" && t.attempt == 3)
        .unwrap();
    assert!(
        b3.prompt
            .contains("A person asked for another attempt: write B.txt"),
        "{}",
        b3.prompt
    );
    assert_eq!(
        calls.iter().filter(|t| t.ticket.id.as_str() == "A").count(),
        2
    );
    assert_live_equals_fold(store.as_ref(), &run, &report.state).await;
}

#[tokio::test]
async fn a_decision_recorded_while_the_run_goes_on_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(
        ScriptedAgent::new("s", writes())
            .on("B", "work", 1, Step::Fail("no".into()))
            .on("B", "work", 2, Step::Fail("no".into())),
    );
    // A waits until B's escalation is answered, so the run is still
    // going when it is.
    let (release, released) = tokio::sync::watch::channel(false);
    let slow: Arc<dyn Agent> = Arc::new(Held {
        inner: agent.clone(),
        ticket: "A",
        until: released,
    });
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let e = engine(small_plan(""), slow, store.clone(), dir.path());
    let answer = {
        let store = store.clone();
        let run = run.clone();
        async move {
            loop {
                let s = store.state(&run).await.unwrap();
                if s.open_decisions().any(|d| d.ticket.as_str() == "B") {
                    decide(
                        store.as_ref(),
                        &run,
                        &"B".parse().unwrap(),
                        Decision::Skip,
                        None,
                    )
                    .await
                    .unwrap();
                    release.send_replace(true);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let (report, ()) = tokio::join!(e.run(&run, Cancellation::new()), answer);
    let report = report.unwrap();
    // A skipped ticket leaves the run incomplete.
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(report.state.tickets["B"].status, TicketStatus::Skipped);
    assert_eq!(report.state.count(TicketStatus::Done), 3);
}

/// Holds one ticket's agent until `until` turns true.
struct Held {
    inner: Arc<ScriptedAgent>,
    ticket: &'static str,
    until: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl Agent for Held {
    fn backend(&self) -> &str {
        "held"
    }
    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        if task.ticket.id.as_str() == self.ticket {
            let mut until = self.until.clone();
            tokio::select! {
                r = until.wait_for(|released| *released) => { r.unwrap(); }
                () = ctx.cancel.cancelled() => {
                    return Err(AgentError::new(AgentErrorKind::Cancelled, "cancelled"));
                }
            }
        }
        self.inner.run(task, ctx).await
    }
}

#[tokio::test]
async fn a_failed_ticket_blocks_its_dependents_and_fails_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = small_plan(
        r#"
[[batches]]
id = "P1"
title = "one"
tickets = ["A", "C"]
[[batches]]
id = "P2"
title = "two"
tickets = ["B", "D"]
"#,
    );
    plan.phases[0].on_exhausted = orch_core::ExhaustAction::Fail;
    let agent = Arc::new(
        ScriptedAgent::new("s", writes())
            .on("A", "work", 1, Step::Fail("no".into()))
            .on(
                "A",
                "work",
                2,
                Step::Error(AgentErrorKind::Crashed, "segfault".into()),
            ),
    );
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let report = engine(plan, agent, store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    let s = &report.state;
    assert_a_failed_and_blocked_c_and_d(&report, "work failed 2 attempts");
    assert_eq!(s.batches["P1"].status, BatchStatus::Failed);
    assert_eq!(
        s.batches["P1"].reason.as_deref(),
        Some("not merged: a failed, c blocked")
    );
    assert_eq!(s.batches["P2"].status, BatchStatus::Failed);
}

/// In `small_plan`: the run failed, A failed for `why`, its dependents C
/// and D are blocked, and B (independent) is done.
fn assert_a_failed_and_blocked_c_and_d(report: &orch_graph::RunReport, why: &str) {
    assert_eq!(report.outcome, RunOutcome::Failed);
    let s = &report.state;
    assert_eq!(s.tickets["A"].status, TicketStatus::Failed);
    let reason = s.tickets["A"].reason.as_deref().unwrap_or_default();
    assert!(reason.contains(why), "{reason}");
    assert_eq!(s.tickets["C"].status, TicketStatus::Blocked);
    assert_eq!(s.tickets["D"].status, TicketStatus::Blocked);
    assert_eq!(s.tickets["B"].status, TicketStatus::Done);
}

#[tokio::test]
async fn the_budget_stops_dispatching() {
    let dir = tempfile::tempdir().unwrap();
    let plan = small_plan("[policy]\nmax_concurrency = 1\nbudget = { max_usd = 1.0 }");
    let agent = Arc::new(ScriptedAgent::new("s", writes()).with_usage(Usage {
        input_tokens: 1000,
        output_tokens: 100,
        cost_usd: 0.6,
    }));
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let report = engine(plan.clone(), agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::BudgetExhausted);
    assert_eq!(agent.calls().len(), 2, "the second agent spent the budget");
    assert!(report.state.budget_exhausted);
    let events = journal(store.as_ref(), &run).await;
    assert!(events.iter().any(|e| matches!(
        e.event.kind,
        EventKind::BudgetExhausted { tokens: 2200, .. }
    )));
    // Resuming does not spend more.
    let again = engine(plan, agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(again.outcome, RunOutcome::BudgetExhausted);
    assert_eq!(agent.calls().len(), 2);
}

/// Waits until cancelled, the first time; succeeds afterwards.
#[derive(Default)]
struct HangOnce {
    started: Arc<tokio::sync::Notify>,
    calls: AtomicU32,
}

#[async_trait]
impl Agent for HangOnce {
    fn backend(&self) -> &str {
        "hang-once"
    }
    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.started.notify_one();
            ctx.cancel.cancelled().await;
            return Err(AgentError::new(AgentErrorKind::Cancelled, "stopped"));
        }
        std::fs::write(task.workdir.join(format!("{}.txt", task.ticket.id)), "x").unwrap();
        Ok(AgentOutcome {
            success: true,
            ..Default::default()
        })
    }
}

#[tokio::test]
async fn cancellation_records_the_stop_and_resume_reruns_only_that_phase() {
    let dir = tempfile::tempdir().unwrap();
    let plan = small_plan("[policy]\nmax_concurrency = 1");
    let agent = Arc::new(HangOnce::default());
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let cancel = Cancellation::new();
    let e = engine(plan.clone(), agent.clone(), store.clone(), dir.path());
    let second = engine(plan.clone(), agent.clone(), store.clone(), dir.path());
    let stop = {
        let (cancel, started) = (cancel.clone(), agent.started.clone());
        let (store, run) = (store.clone(), run.clone());
        async move {
            started.notified().await;
            // A second engine on the running run is refused, and writes
            // nothing.
            let before = journal(store.as_ref(), &run).await.len();
            match second.run(&run, Cancellation::new()).await {
                Err(EngineError::Store(e)) => {
                    assert_eq!(e.kind, orch_core::StoreErrorKind::Locked, "{e}");
                }
                other => panic!("a second engine must be refused: {other:?}"),
            }
            assert_eq!(journal(store.as_ref(), &run).await.len(), before);
            cancel.cancel();
        }
    };
    let (report, ()) = tokio::join!(e.run(&run, cancel), stop);
    let report = report.unwrap();
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    let first = report.state.agents.values().next().unwrap();
    assert_eq!(first.error, Some(AgentErrorKind::Cancelled));
    assert_eq!(report.state.count(TicketStatus::Running), 1);

    let report = engine(plan, agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(
        agent.calls.load(Ordering::SeqCst),
        5,
        "1 interrupted + 4 tickets"
    );
    assert_no_passed_phase_reran(&journal(store.as_ref(), &run).await);
}

#[tokio::test]
async fn resuming_with_a_changed_plan_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let agent = Arc::new(ScriptedAgent::new("s", writes()));
    engine(small_plan(""), agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    let mut changed = small_plan("[policy]\nmax_attempts = 5");
    changed.tickets[1].title = "b, reworded".into();
    let err = engine(changed.clone(), agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::PlanChanged { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("  - policy changed\n  - ticket:B changed"),
        "{msg}"
    );
    assert!(msg.contains("--allow-plan-change"), "{msg}");
    let ok = engine(changed, agent, store.clone(), dir.path())
        .allow_plan_change(true)
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(ok.outcome, RunOutcome::Completed);
}

#[tokio::test]
async fn a_cycle_is_refused_before_anything_runs() {
    let mut plan = small_plan("");
    plan.tickets[0].depends_on = vec!["C".parse().unwrap()];
    let store = Arc::new(MemoryStore::new());
    let err = Engine::new(
        plan,
        Arc::new(ScriptedAgent::new("s", writes())),
        store.clone(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string().lines().next().unwrap(),
        "dependency cycle: A -> C -> A"
    );
    assert!(store.runs().await.unwrap().is_empty());
}

/// An agent whose program is missing for role `dev` (and only there).
struct Missing;

#[async_trait]
impl Agent for Missing {
    fn backend(&self) -> &str {
        "missing"
    }
    async fn run(&self, _: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        panic!("a role that cannot run must not be run");
    }
    fn check(&self, role: &orch_core::RoleName) -> Result<(), AgentError> {
        match role.as_str() {
            "dev" => Err(AgentError::new(
                AgentErrorKind::Spawn,
                "dev-cli is not installed",
            )),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_role_whose_agent_cannot_run_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = small_plan("");
    // B works as `ops`, which can run; the rest as `dev`, which cannot.
    plan.agents.insert(
        "ops".parse().unwrap(),
        plan.agents.values().next().unwrap().clone(),
    );
    plan.tickets[1].role = Some("ops".parse().unwrap());
    let store = Arc::new(MemoryStore::new());
    let e = engine(plan, Arc::new(Missing), store.clone(), dir.path());
    assert!(e.check().is_err());
    match e.run(&run_id("r"), Cancellation::new()).await {
        Err(EngineError::Agents(failed)) => {
            let roles: Vec<&str> = failed.iter().map(|(r, _)| r.as_str()).collect();
            assert_eq!(roles, ["dev"]);
            assert_eq!(failed[0].1.message, "dev-cli is not installed");
        }
        other => panic!("must be refused: {other:?}"),
    }
    assert!(store.runs().await.unwrap().is_empty(), "nothing written");
}

/// A memory store with faults: its appends fail after the first `ok`
/// calls, and hold the agent start of `slow_on` until ticket A's agent
/// has panicked (see [`Handshake`]); its run
/// lock is lost when `gone` is cancelled, as a lock held by a database
/// connection is when that connection goes. Like `PgStore` on its one
/// connection, it serves one call at a time, holding `serial` across a
/// call's awaits.
struct Faulty {
    inner: MemoryStore,
    ok: AtomicU32,
    slow_on: Option<(&'static str, Arc<Handshake>)>,
    gone: Cancellation,
    serial: tokio::sync::Mutex<()>,
}

/// Orders a slow store write and a panicking agent: the write of B's agent
/// start begins, then A's agent panics, then the write ends.
#[derive(Default)]
struct Handshake {
    b_writing: tokio::sync::watch::Sender<bool>,
    a_panicking: tokio::sync::watch::Sender<bool>,
}

/// Waits until `flag` is true.
async fn raised(flag: &tokio::sync::watch::Sender<bool>) {
    flag.subscribe().wait_for(|up| *up).await.unwrap();
}

impl Faulty {
    fn new(ok: u32, slow_on: Option<(&'static str, Arc<Handshake>)>) -> Self {
        Faulty {
            inner: MemoryStore::new(),
            ok: AtomicU32::new(ok),
            slow_on,
            gone: Cancellation::new(),
            serial: tokio::sync::Mutex::new(()),
        }
    }
}

#[async_trait]
impl StateStore for Faulty {
    async fn append_if(
        &self,
        run: &RunId,
        expect: orch_core::Expect,
        events: &[Event],
    ) -> Result<Vec<u64>, StoreError> {
        let _one_at_a_time = self.serial.lock().await;
        if let Some((slow, order)) = &self.slow_on
            && events.iter().any(|e| {
                matches!(&e.kind, EventKind::AgentStarted { ticket, .. } if ticket.as_str() == *slow)
            })
        {
            order.b_writing.send_replace(true);
            raised(&order.a_panicking).await;
        }
        if self
            .ok
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(StoreError::new(StoreErrorKind::Io, "disk full"));
        }
        self.inner.append_if(run, expect, events).await
    }
    async fn read(
        &self,
        run: &RunId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let _one_at_a_time = self.serial.lock().await;
        self.inner.read(run, after, limit).await
    }
    async fn runs(&self) -> Result<Vec<RunId>, StoreError> {
        self.inner.runs().await
    }
    async fn lock_run(&self, run: &RunId) -> Result<orch_core::RunLock, StoreError> {
        let lock = self.inner.lock_run(run).await?;
        Ok(lock.lost_on(self.gone.clone(), "its connection closed"))
    }
}

#[tokio::test]
async fn a_failing_store_stops_the_run_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(4, None));
    let agent = Arc::new(ScriptedAgent::new("s", writes()));
    let err = engine(small_plan(""), agent.clone(), store.clone(), dir.path())
        .run(&run_id("r"), Cancellation::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "state store: disk full");
    // What was appended is intact and folds.
    let events = store.inner.read(&run_id("r"), 0, 100).await.unwrap();
    assert!(events.len() >= 4, "{events:#?}");
    let state = RunState::fold(events.iter().map(|e| &e.event));
    assert_eq!(state.count(TicketStatus::Done), 0);
}

#[tokio::test]
async fn a_lost_run_lock_stops_the_run_and_nothing_more_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let plan = small_plan("[policy]\nmax_concurrency = 1");
    let agent = Arc::new(HangOnce::default());
    let store = Arc::new(Faulty::new(u32::MAX, None));
    let run = run_id("r");
    let e = engine(plan, agent.clone(), store.clone(), dir.path());
    let before = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lose = {
        let (started, store, run, before) = (
            agent.started.clone(),
            store.clone(),
            run.clone(),
            before.clone(),
        );
        async move {
            // The first agent is working: the lock goes.
            started.notified().await;
            *before.lock().unwrap() = journal(&store.inner, &run).await;
            store.gone.cancel();
        }
    };
    let (result, ()) = tokio::join!(e.run(&run, Cancellation::new()), lose);
    match result {
        Err(EngineError::Store(e)) => {
            assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
            assert!(
                e.message.contains("lock was lost (its connection closed)"),
                "{e}"
            );
        }
        other => panic!("the run must stop with the loss: {other:?}"),
    }
    // The working agent was stopped, and nothing was written after the
    // loss: not its end, not the run's.
    assert_eq!(agent.calls.load(Ordering::SeqCst), 1);
    let after = journal(&store.inner, &run).await;
    let before = before.lock().unwrap().clone();
    assert!(
        matches!(
            before.last().map(|e| &e.event.kind),
            Some(EventKind::AgentStarted { .. })
        ),
        "{before:#?}"
    );
    assert_eq!(after, before);
}

/// On its first call, another driver takes the run (this engine's lock
/// was lost without it knowing: a partitioned connection) and the agent
/// notes the journal as it was then; then it finishes its work.
struct TakenOver {
    store: Arc<MemoryStore>,
    at_takeover: std::sync::Mutex<Option<Vec<StoredEvent>>>,
}

#[async_trait]
impl Agent for TakenOver {
    fn backend(&self) -> &str {
        "taken-over"
    }
    async fn run(&self, task: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let first = self.at_takeover.lock().unwrap().is_none();
        if first {
            self.store.steal_run(&task.run);
            let now = self.store.read(&task.run, 0, 10_000).await.unwrap();
            *self.at_takeover.lock().unwrap() = Some(now);
        }
        std::fs::write(task.workdir.join(format!("{}.txt", task.ticket.id)), "x").unwrap();
        Ok(AgentOutcome {
            success: true,
            ..Default::default()
        })
    }
}

/// Fencing: once a newer driver holds the run, the old one's appends are
/// refused by the store, so it stops with that error and the journal has
/// nothing from it after the takeover (not its agent's end, not a
/// `run_finished`).
#[tokio::test]
async fn a_driver_whose_run_was_taken_over_writes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let plan = small_plan("[policy]\nmax_concurrency = 1");
    let store = Arc::new(MemoryStore::new());
    let agent = Arc::new(TakenOver {
        store: store.clone(),
        at_takeover: Default::default(),
    });
    let run = run_id("r");
    let result = engine(plan, agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await;
    match result {
        Err(EngineError::Store(e)) => {
            assert_eq!(e.kind, StoreErrorKind::Fenced, "{e}");
            assert!(e.message.contains("taken over by a newer driver"), "{e}");
        }
        other => panic!("the run must stop, fenced: {other:?}"),
    }
    let before = agent.at_takeover.lock().unwrap().clone().unwrap();
    assert!(!before.is_empty());
    assert_eq!(
        journal(&*store, &run).await,
        before,
        "nothing written after the takeover"
    );
}

/// Fails its first attempt; records the session each attempt was given.
struct Sessions(std::sync::Mutex<Vec<(u32, Option<String>)>>);

#[async_trait]
impl Agent for Sessions {
    fn backend(&self) -> &str {
        "sessions"
    }
    async fn run(&self, task: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        self.0
            .lock()
            .unwrap()
            .push((task.attempt, task.resume.clone()));
        if task.attempt > 1 {
            std::fs::write(task.workdir.join(format!("{}.txt", task.ticket.id)), "x").unwrap();
        }
        Ok(AgentOutcome {
            success: true,
            session_id: Some(format!("session-{}", task.attempt)),
            ..Default::default()
        })
    }
}

#[tokio::test]
async fn a_retry_continues_the_previous_attempts_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = small_plan("");
    plan.tickets.truncate(1);
    let agent = Arc::new(Sessions(Default::default()));
    let store = Arc::new(MemoryStore::new());
    let report = engine(plan, agent.clone(), store, dir.path())
        .run(&run_id("r"), Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(
        *agent.0.lock().unwrap(),
        [(1, None), (2, Some("session-1".to_owned()))]
    );
}

#[tokio::test]
async fn an_agent_that_cancels_itself_is_a_failure_to_escalate_not_an_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(ScriptedAgent::new("s", writes()).on(
        "B",
        "work",
        1,
        Step::Error(AgentErrorKind::Cancelled, "the CLI stopped itself".into()),
    ));
    let store = Arc::new(MemoryStore::new());
    let report = engine(small_plan(""), agent.clone(), store, dir.path())
        .run(&run_id("r"), Cancellation::new())
        .await
        .unwrap();
    // Not retryable, so no second attempt.
    assert_b_escalated_after_one_attempt(&report, &agent, "the CLI stopped itself");
}

/// B failed in a way no retry can fix: it waits for a person after one
/// attempt (`why` in the question's context), the other three finish, and
/// the agent ran once per ticket.
fn assert_b_escalated_after_one_attempt(
    report: &orch_graph::RunReport,
    agent: &ScriptedAgent,
    why: &str,
) {
    assert_eq!(report.outcome, RunOutcome::Paused);
    let b = &report.state.tickets["B"];
    assert_eq!(b.status, TicketStatus::AwaitingDecision);
    assert_eq!(b.metrics.failed_attempts, 1);
    let q = report.state.open_decisions().next().unwrap();
    assert!(q.context.contains(why), "{}", q.context);
    assert_eq!(report.state.count(TicketStatus::Done), 3);
    assert_eq!(agent.calls().len(), 4, "one call per ticket");
}

/// The Gate contract: a non-retryable Err is a failure no retry can fix,
/// so B (whose gate cannot be evaluated: its configuration is wrong for
/// that ticket) goes to its phase's exhaustion action (escalate) after one
/// attempt instead of spending its second on the agent.
#[tokio::test]
async fn a_gate_that_cannot_be_evaluated_is_not_retried_away() {
    let gates = gates_around(&[("B", Before::Unevaluable)], &GateLog::default());
    let (report, agent) = run_small_with_gates(gates).await;
    assert_b_escalated_after_one_attempt(&report, &agent, "outside the work tree");
}

#[tokio::test]
async fn a_restart_writes_the_feedback_file_into_the_work_tree() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan::from_toml_str(
        r#"
name = "restart"
default_role = "dev"
agents.dev.backend = { kind = "custom", name = "scripted" }
[[phases]]
name = "plan"
[[phases]]
name = "build"
max_attempts = 1
on_exhausted = "restart"
restart_from = "plan"
feedback_file = "feedback/{ticket}.md"
gates = [{ kind = "command", argv = ["test", "-s", "{ticket}.txt"] }]
[[tickets]]
id = "R-1"
title = "r"
effort = "1h"
"#,
    )
    .unwrap();
    // The first plan and build write nothing; after the restart they do.
    let agent = Arc::new(ScriptedAgent::new("s", Step::Write(vec![])));
    let agent: Arc<dyn Agent> = Arc::new(OnceThen {
        first: agent,
        calls: AtomicU32::new(0),
    });
    let store = Arc::new(MemoryStore::new());
    let report = engine(plan, agent, store, dir.path())
        .run(&run_id("r"), Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.state.tickets["R-1"].restarts, 1);
    let text = std::fs::read_to_string(dir.path().join("feedback/R-1.md")).unwrap();
    assert!(text.contains("Gate `test -s R-1.txt` failed"), "{text}");
}

/// The feedback file's directory replaced by a link out of the work tree
/// (by the agent, say): the file is not written through it; the ticket
/// fails, saying why. A feedback file path that climbs out is refused
/// when the plan is loaded.
#[tokio::test]
async fn a_feedback_file_is_never_written_outside_the_work_tree() {
    let plan = |feedback: &str| {
        format!(
            r#"
name = "restart"
default_role = "dev"
agents.dev.backend = {{ kind = "custom", name = "scripted" }}
[[phases]]
name = "plan"
[[phases]]
name = "build"
max_attempts = 1
on_exhausted = "restart"
restart_from = "plan"
feedback_file = "{feedback}"
gates = [{{ kind = "command", argv = ["test", "-s", "{{ticket}}.txt"] }}]
[[tickets]]
id = "R-1"
title = "r"
effort = "1h"
"#
        )
    };
    let err = Plan::from_toml_str(&plan("../feedback.md")).unwrap_err();
    assert!(
        err.to_string()
            .contains("phases[1].feedback_file: path \"../feedback.md\" leaves the work tree"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("feedback")).unwrap();
    let plan = Plan::from_toml_str(&plan("feedback/{ticket}.md")).unwrap();
    let agent = Arc::new(ScriptedAgent::new("s", Step::Write(vec![])));
    let report = engine(plan, agent, Arc::new(MemoryStore::new()), dir.path())
        .run(&run_id("r"), Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Failed);
    let reason = report.state.tickets["R-1"]
        .reason
        .clone()
        .unwrap_or_default();
    assert!(
        reason.contains("cannot write the feedback file")
            && reason.contains("leads outside the work tree through a symbolic link"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
}

/// Runs `first` for the first two calls (plan, build), then writes the
/// ticket's file for every later one.
struct OnceThen {
    first: Arc<ScriptedAgent>,
    calls: AtomicU32,
}

#[async_trait]
impl Agent for OnceThen {
    fn backend(&self) -> &str {
        "once-then"
    }
    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < 2 {
            return self.first.run(task, ctx).await;
        }
        std::fs::write(task.workdir.join(format!("{}.txt", task.ticket.id)), "x").unwrap();
        Ok(AgentOutcome {
            success: true,
            ..Default::default()
        })
    }
}

/// An agent with a bug: it panics on ticket A (once B's agent start is
/// being written, given a [`Handshake`]).
struct PanicsOnA(ScriptedAgent, Option<Arc<Handshake>>);

#[async_trait]
impl Agent for PanicsOnA {
    fn backend(&self) -> &str {
        "buggy"
    }
    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        if task.ticket.id.as_str() == "A" {
            if let Some(order) = &self.1 {
                raised(&order.b_writing).await;
                order.a_panicking.send_replace(true);
            }
            panic!("a bug in the agent");
        }
        self.0.run(task, ctx).await
    }
}

/// Runs the small plan as run `r`; fails the test if it does not end
/// within a minute (the engine waiting for work that will never end).
async fn run_small_within_a_minute(
    agent: Arc<dyn Agent>,
    store: Arc<dyn StateStore>,
) -> (RunId, orch_graph::RunReport) {
    let dir = tempfile::tempdir().unwrap();
    let run = run_id("r");
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        engine(small_plan(""), agent, store, dir.path()).run(&run, Cancellation::new()),
    )
    .await
    .expect("the run ends")
    .unwrap();
    (run, report)
}

/// A panic inside one ticket's pipeline fails that ticket (and blocks its
/// dependents), with the panic's message as the reason; the run does not
/// wait for it forever, the rest go on.
#[tokio::test]
async fn a_panicking_agent_fails_its_ticket_instead_of_hanging_the_run() {
    let agent = Arc::new(PanicsOnA(ScriptedAgent::new("s", writes()), None));
    let store = Arc::new(MemoryStore::new());
    let (run, report) = run_small_within_a_minute(agent, store.clone()).await;
    assert_a_failed_and_blocked_c_and_d(&report, "its pipeline panicked");
    assert_a_failed_and_blocked_c_and_d(&report, "a bug in the agent");
    assert_live_equals_fold(store.as_ref(), &run, &report.state).await;
}

/// The dispatcher records A's failure (and C and D blocked) while B's
/// pipeline is half-way through writing to a slow store: the dispatcher
/// must not wait on a write that only it can drive.
#[tokio::test]
async fn the_dispatcher_records_while_a_ticket_is_writing_to_a_slow_store() {
    // A fails while B's agent start is being written.
    let order = Arc::new(Handshake::default());
    let agent = Arc::new(PanicsOnA(
        ScriptedAgent::new("s", writes()),
        Some(order.clone()),
    ));
    let store = Arc::new(Faulty::new(u32::MAX, Some(("B", order))));
    let (run, report) = run_small_within_a_minute(agent, store.clone()).await;
    assert_a_failed_and_blocked_c_and_d(&report, "a bug in the agent");
    assert_live_equals_fold(&store.inner, &run, &report.state).await;
}

/// A workspace with a bug: merging panics.
struct MergePanics(SharedDir);

#[async_trait]
impl orch_core::Workspace for MergePanics {
    async fn prepare(
        &self,
        run: &RunId,
        ticket: &orch_core::TicketId,
        deps: &[orch_core::TicketId],
    ) -> Result<orch_core::Prepared, orch_core::WorkspaceError> {
        self.0.prepare(run, ticket, deps).await
    }
    async fn checkpoint(
        &self,
        run: &RunId,
        ticket: &orch_core::TicketId,
        phase: &orch_core::PhaseName,
        attempt: u32,
        records: &[String],
        claim: Option<&orch_core::Claim>,
    ) -> Result<Option<String>, orch_core::WorkspaceError> {
        self.0
            .checkpoint(run, ticket, phase, attempt, records, claim)
            .await
    }
    async fn find_checkpoint(
        &self,
        run: &RunId,
        ticket: &orch_core::TicketId,
        phase: &orch_core::PhaseName,
        attempt: u32,
        claim: Option<&orch_core::Claim>,
    ) -> Result<Option<String>, orch_core::WorkspaceError> {
        self.0
            .find_checkpoint(run, ticket, phase, attempt, claim)
            .await
    }
    async fn rollback(
        &self,
        run: &RunId,
        ticket: &orch_core::TicketId,
        commit: &str,
    ) -> Result<(), orch_core::WorkspaceError> {
        self.0.rollback(run, ticket, commit).await
    }
    async fn merge(
        &self,
        _: &RunId,
        _: &orch_core::BatchId,
        _: &[orch_core::TicketId],
        _: Option<&orch_core::Claim>,
    ) -> Result<orch_core::Merged, orch_core::WorkspaceError> {
        panic!("a bug in the workspace")
    }
    async fn release(
        &self,
        run: &RunId,
        ticket: &orch_core::TicketId,
    ) -> Result<(), orch_core::WorkspaceError> {
        self.0.release(run, ticket).await
    }
}

#[tokio::test]
async fn a_panicking_merge_fails_its_batch_instead_of_hanging_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let plan = small_plan(
        r#"
[[batches]]
id = "P1"
title = "one"
tickets = ["A", "B", "C", "D"]
"#,
    );
    let agent = Arc::new(ScriptedAgent::new("s", writes()));
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let engine = engine(plan, agent, store.clone(), dir.path())
        .workspace(Arc::new(MergePanics(SharedDir::new(dir.path()))));
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        engine.run(&run, Cancellation::new()),
    )
    .await
    .expect("the run ends")
    .unwrap();
    assert_eq!(report.outcome, RunOutcome::Failed);
    let s = &report.state;
    assert_eq!(s.count(TicketStatus::Done), 4);
    assert_eq!(s.batches["P1"].status, BatchStatus::Failed);
    assert!(
        s.batches["P1"]
            .reason
            .as_deref()
            .unwrap()
            .contains("the merge panicked"),
        "{:?}",
        s.batches["P1"].reason
    );
    assert!(
        s.batches["P1"]
            .reason
            .as_deref()
            .unwrap()
            .contains("a bug in the workspace"),
        "the panic's message: {:?}",
        s.batches["P1"].reason
    );
    assert_live_equals_fold(store.as_ref(), &run, s).await;
}

/// What a test gate does before the plan's real gate checks.
#[derive(Clone, Copy)]
enum Before {
    /// Blocks its thread (as parsing a large report would) until another
    /// ticket's gate has checked, for at most 30 s.
    Block,
    /// Nothing.
    Check,
    /// Panics (a bug in the gate).
    Panic,
    /// Cannot be evaluated: a non-retryable `Err` instead of checking.
    Unevaluable,
}

type GateLog = Arc<std::sync::Mutex<Vec<(&'static str, std::time::Instant)>>>;

/// A plan's real gate, with `before` done first for `ticket`; notes when
/// that was done.
struct Around {
    real: Arc<dyn orch_core::Gate>,
    ticket: &'static str,
    before: Before,
    log: GateLog,
}

#[async_trait]
impl orch_core::Gate for Around {
    fn name(&self) -> &str {
        self.real.name()
    }
    async fn check(
        &self,
        ctx: &orch_core::GateContext,
    ) -> Result<orch_core::GateReport, orch_core::GateError> {
        match self.before {
            Before::Block => {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while std::time::Instant::now() < deadline
                    && !self
                        .log
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|(t, _)| *t != self.ticket)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Before::Check => {}
            Before::Panic => panic!("a bug in the gate"),
            Before::Unevaluable => {
                return Err(orch_core::GateError {
                    kind: orch_core::GateErrorKind::Config,
                    gate: "report".into(),
                    message: format!(
                        "report path ../{}.xml is outside the work tree",
                        self.ticket
                    ),
                });
            }
        }
        let now = std::time::Instant::now();
        self.log.lock().unwrap().push((self.ticket, now));
        self.real.check(ctx).await
    }
}

/// Builds the plan's gates, each ticket of `before` wrapped in [`Around`].
fn gates_around(
    before: &'static [(&'static str, Before)],
    log: &GateLog,
) -> orch_graph::GateFactory {
    let log = log.clone();
    Arc::new(move |spec: &orch_core::GateSpec| {
        let real = orch_gates::from_spec(spec)?;
        let text = serde_json::to_string(spec).unwrap();
        Ok(
            match before
                .iter()
                .find(|(t, _)| text.contains(&format!("{t}.txt")))
            {
                Some(&(ticket, before)) => Arc::new(Around {
                    real,
                    ticket,
                    before,
                    log: log.clone(),
                }) as Arc<dyn orch_core::Gate>,
                None => real,
            },
        )
    })
}

async fn run_small_with_gates(
    gates: orch_graph::GateFactory,
) -> (orch_graph::RunReport, Arc<ScriptedAgent>) {
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(ScriptedAgent::new("s", writes()));
    let report = engine(
        small_plan(""),
        agent.clone(),
        Arc::new(MemoryStore::new()),
        dir.path(),
    )
    .gates(gates)
    .run(&run_id("r"), Cancellation::new())
    .await
    .unwrap();
    (report, agent)
}

/// A gate busy on its thread (ticket A's, until another gate has checked)
/// does not hold up the other tickets: B's gate checks while A's is still
/// busy. (The dispatcher polls all pipelines on one task;
/// each gate check runs on a task of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_busy_on_its_thread_does_not_hold_up_other_tickets() {
    let log = GateLog::default();
    let gates = gates_around(&[("A", Before::Block), ("B", Before::Check)], &log);
    let (report, _) = run_small_with_gates(gates).await;
    assert_eq!(report.outcome, RunOutcome::Completed);
    let order: Vec<&str> = log.lock().unwrap().iter().map(|(t, _)| *t).collect();
    assert_eq!(order, ["B", "A"], "B's gate is done while A's is busy");
}

/// A panic in a gate (on its own task) fails that ticket with the panic's
/// message, like a panic anywhere else in its pipeline.
#[tokio::test]
async fn a_panicking_gate_fails_its_ticket() {
    let (report, _) =
        run_small_with_gates(gates_around(&[("A", Before::Panic)], &GateLog::default())).await;
    assert_a_failed_and_blocked_c_and_d(&report, "a bug in the gate");
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_event_is_traced_in_the_spans_of_its_run_ticket_phase_and_attempt() {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .with_ansi(false)
        .finish();
    // Process-wide: tracing caches whether a call site is wanted across
    // threads, and a subscriber for this thread alone loses events that
    // other tests' threads reach first. Other tests' lines are left out
    // below by their run's span.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent =
        Arc::new(ScriptedAgent::new("s", writes()).on("A", "work", 1, Step::Fail("no".into())));
    let store = Arc::new(MemoryStore::new());
    let run = run_id("traced");
    let report = engine(small_plan(""), agent, store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    let all = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let text: String = all
        .lines()
        .filter(|l| l.contains("run{run=traced plan=small}"))
        .flat_map(|l| [l, "\n"])
        .collect();
    // The retry of A: run, ticket, phase and attempt on the line.
    assert!(
        text.lines().any(|l| l
            .contains("run{run=traced plan=small}:ticket{ticket=A}:phase{phase=work attempt=2}:")
            && l.ends_with("event=\"agent_started\"")),
        "{text}"
    );
    // Each journal event once, by its name.
    let journal = journal(store.as_ref(), &run).await;
    let mut names: Vec<&str> = journal.iter().map(|e| e.event.kind.name()).collect();
    let mut traced: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("event=\"").nth(1)?.split('"').next())
        .collect();
    names.sort_unstable();
    traced.sort_unstable();
    assert_eq!(traced, names);
    for e in &journal {
        let json = serde_json::to_value(&e.event.kind).unwrap();
        assert_eq!(
            json["type"],
            e.event.kind.name(),
            "name() is the JSON's type"
        );
    }
}

/// The no-op agent of the benchmarks, naming its backend by `name` (given
/// the role), as a router does.
struct Names<F>(F);

#[async_trait]
impl<F: Fn(&orch_core::RoleName) -> &'static str + Send + Sync> Agent for Names<F> {
    fn backend(&self) -> &str {
        "router"
    }
    fn backend_for(&self, role: &orch_core::RoleName) -> &str {
        (self.0)(role)
    }
    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        orch_examples::scale::Noop.run(task, ctx).await
    }
}

/// Runs `plan` (TOML, one `dev` role and `extra`) with `agent`; returns
/// every agent record as "ticket/phase role=backend", sorted, and every
/// `AgentStarted` in the journal as "role=backend".
async fn backends_recorded(
    agent: Arc<dyn Agent>,
    extra: &str,
    tickets: &str,
) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan::from_toml_str(&format!(
        "name = \"backends\"\ndefault_role = \"dev\"\n\
         agents.dev.backend = {{ kind = \"custom\", name = \"a\" }}\n{extra}\n{tickets}"
    ))
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let run = run_id("backends");
    let report = engine(plan, agent, store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    let mut records: Vec<String> = report
        .state
        .agents
        .values()
        .map(|a| format!("{}/{} {}={}", a.ticket, a.phase, a.role, a.backend))
        .collect();
    records.sort();
    let started = journal(&*store, &run)
        .await
        .into_iter()
        .filter_map(|s| match s.event.kind {
            EventKind::AgentStarted { role, backend, .. } => Some(format!("{role}={backend}")),
            _ => None,
        })
        .collect();
    (records, started)
}

/// A plan's tickets: `T-1` .. `T-n`, each after the one before.
fn chain(n: usize, role_of_2: &str) -> String {
    (1..=n)
        .map(|i| {
            let dep = if i > 1 {
                format!("depends_on = [\"T-{}\"]\n", i - 1)
            } else {
                String::new()
            };
            let role = if i == 2 { role_of_2 } else { "" };
            format!("[[tickets]]\nid = \"T-{i}\"\ntitle = \"t\"\neffort = \"1h\"\n{dep}{role}\n")
        })
        .collect()
}

/// Every agent record (and `AgentStarted` event) names the backend of its
/// own role, set by the phase or by the ticket; the names are shared, not
/// copied, per attempt.
#[tokio::test]
async fn every_agent_record_names_the_backend_of_its_role() {
    let agent = Names(|r: &orch_core::RoleName| {
        if r.as_str() == "review" {
            "reviewer-cli"
        } else {
            "builder-cli"
        }
    });
    let extra = "agents.review.backend = { kind = \"custom\", name = \"b\" }\n\
                 [[phases]]\nname = \"build\"\n[[phases]]\nname = \"review\"\nrole = \"review\"";
    let (records, started) =
        backends_recorded(Arc::new(agent), extra, &chain(2, "role = \"review\"\n")).await;
    assert_eq!(
        records,
        [
            "T-1/build dev=builder-cli",
            "T-1/review review=reviewer-cli",
            "T-2/build review=reviewer-cli",
            "T-2/review review=reviewer-cli",
        ]
    );
    let mut started = started;
    started.sort();
    assert_eq!(
        started,
        [
            "dev=builder-cli",
            "review=reviewer-cli",
            "review=reviewer-cli",
            "review=reviewer-cli"
        ]
    );
}

/// The backend name is asked per attempt, so the registry follows a
/// router that fails over mid-run (here after two attempts).
#[tokio::test]
async fn agent_records_follow_a_backend_that_changes_mid_run() {
    let asked = AtomicU32::new(0);
    let agent = Names(move |_: &orch_core::RoleName| {
        if asked.fetch_add(1, Ordering::SeqCst) < 2 {
            "primary-cli"
        } else {
            "fallback-cli"
        }
    });
    let (records, started) = backends_recorded(
        Arc::new(agent),
        "[[phases]]\nname = \"build\"",
        &chain(4, ""),
    )
    .await;
    assert_eq!(
        records,
        [
            "T-1/build dev=primary-cli",
            "T-2/build dev=primary-cli",
            "T-3/build dev=fallback-cli",
            "T-4/build dev=fallback-cli",
        ]
    );
    assert_eq!(
        started,
        [
            "dev=primary-cli",
            "dev=primary-cli",
            "dev=fallback-cli",
            "dev=fallback-cli"
        ]
    );
}

/// A run that has gone slower than its estimate: its journal (A and B
/// done, C and D waiting for a person) moved ten hours into the past. On
/// resume the engine raises the schedule question (more than the default
/// four hours late) without holding anything up; a person accepts the
/// delay, which closes it, and a residual risk, which is refused for a
/// batch the plan does not have.
#[tokio::test]
async fn a_run_behind_its_estimate_raises_a_schedule_question_that_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(
        ScriptedAgent::new("s", writes())
            .on("C", "work", 1, Step::Fail("no".into()))
            .on("C", "work", 2, Step::Fail("no".into())),
    );
    let first = Arc::new(MemoryStore::new());
    let run = run_id("late");
    let report = engine(small_plan(""), agent.clone(), first.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Paused);
    assert!(report.state.slips.is_empty(), "on time so far");

    const HOURS_10: u64 = 10 * 3_600_000;
    let store = Arc::new(MemoryStore::new());
    let moved: Vec<Event> = journal(first.as_ref(), &run)
        .await
        .into_iter()
        .map(|s| Event {
            at: orch_core::Timestamp(s.event.at.0 - HOURS_10),
            ..s.event
        })
        .collect();
    store
        .append_if(&run, orch_core::Expect::Any, &moved)
        .await
        .unwrap();
    let err = orch_graph::accept(
        store.as_ref(),
        &run,
        orch_core::Acceptance::Delay,
        None,
        "later".into(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "no projected delay waits for acceptance");
    decide(
        store.as_ref(),
        &run,
        &"C".parse().unwrap(),
        Decision::Approve,
        None,
    )
    .await
    .unwrap();

    let report = engine(small_plan(""), agent.clone(), store.clone(), dir.path())
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    // Nothing waited for it.
    assert_eq!(report.outcome, RunOutcome::Completed);
    let slips = &report.state.slips;
    assert_eq!(slips.len(), 1, "{slips:?}");
    // Started ten hours ago with a two-hour critical path (A, then C),
    // the work left done at the pace of the first run: about eight hours
    // late.
    assert!(
        (470..=481).contains(&slips[0].delay_minutes),
        "{:?}",
        slips[0]
    );
    assert!(slips[0].accepted.is_none());
    let queue = orch_state::views::render(&report.state, None)["DECISION_QUEUE.md"].clone();
    assert!(queue.contains("## Open, not blocking"), "{queue}");
    assert!(queue.contains("orch accept --delay NOTE"), "{queue}");

    orch_graph::accept(
        store.as_ref(),
        &run,
        orch_core::Acceptance::Delay,
        None,
        "new date: Friday".into(),
    )
    .await
    .unwrap();
    let err = orch_graph::accept(
        store.as_ref(),
        &run,
        orch_core::Acceptance::Risk,
        Some("NOPE".parse().unwrap()),
        "fine".into(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "the plan of run late has no batch NOPE");
    let state = store.state(&run).await.unwrap();
    let (at, note) = state.slips[0].accepted.clone().unwrap();
    assert_eq!(note, "new date: Friday");
    assert!(at >= slips[0].at);
    assert!(state.risks.is_empty());
    let queue = orch_state::views::render(&state, None)["DECISION_QUEUE.md"].clone();
    assert!(!queue.contains("## Open, not blocking"), "{queue}");
    assert!(queue.contains("| new date: Friday |"), "{queue}");
}

/// Ticket A through `design` (checkpointed), `notes` (no checkpoint) and
/// `build`, whose gate wants `build.txt`; a failing `build` restarts from
/// itself.
fn made_plan() -> Plan {
    Plan::from_toml_str(
        r#"
name = "made"
default_role = "dev"
[agents.dev]
backend = { kind = "custom", name = "phases" }
[[phases]]
name = "design"
[[phases]]
name = "notes"
checkpoint = false
[[phases]]
name = "build"
max_attempts = 1
on_exhausted = "restart"
restart_from = "build"
max_restarts = 1
gates = [{ kind = "command", argv = ["test", "-s", "build.txt"] }]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
"#,
    )
    .unwrap()
}

/// Writes `<phase>.txt`; its first `build` hangs until cancelled (with
/// `hang`) or writes nothing (without); a later `build` notes whether
/// `design.txt` was there.
#[derive(Default)]
struct Phases {
    hang: bool,
    builds: AtomicU32,
    started: Arc<tokio::sync::Notify>,
    saw_design: std::sync::Mutex<Vec<bool>>,
}

#[async_trait]
impl Agent for Phases {
    fn backend(&self) -> &str {
        "phases"
    }
    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let phase = task.phase.as_str();
        let write = |name: &str| std::fs::write(task.workdir.join(name), "x\n").unwrap();
        if phase == "build" {
            if self.builds.fetch_add(1, Ordering::SeqCst) == 0 {
                write("partial.txt");
                if self.hang {
                    self.started.notify_one();
                    ctx.cancel.cancelled().await;
                    return Err(AgentError::new(AgentErrorKind::Cancelled, "stopped"));
                }
                return Ok(AgentOutcome {
                    success: true,
                    ..Default::default()
                });
            }
            let there = task.workdir.join("design.txt").is_file();
            self.saw_design.lock().unwrap().push(there);
        }
        write(&format!("{phase}.txt"));
        Ok(AgentOutcome {
            success: true,
            ..Default::default()
        })
    }
}

/// A git repository with one commit, and a workspace on it.
fn git_workspace(dir: &Path) -> Arc<orch_state::GitWorkspace> {
    demo::init_repo(dir, &[("README", "made\n")]).unwrap();
    let repo = orch_state::git::Repo::open(dir).unwrap();
    Arc::new(orch_state::GitWorkspace::new(repo, "HEAD").unwrap())
}

/// The checkpoint `phase` of A passed with, and the one rollback.
fn design_and_rollback(events: &[StoredEvent]) -> (String, (Option<String>, String)) {
    let design = events
        .iter()
        .find_map(|e| match &e.event.kind {
            EventKind::PhasePassed {
                phase,
                checkpoint: Some(c),
                ..
            } if phase.as_str() == "design" => Some(c.clone()),
            _ => None,
        })
        .expect("design passed with a checkpoint");
    let rolled: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::RolledBack { phase, commit, .. } => {
                Some((phase.as_ref().map(|p| p.to_string()), commit.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    (design, rolled[0].clone())
}

/// A build that fails restarts from itself: back to the last checkpoint
/// made (design's), not to the ticket's start, since the phase before
/// build (notes) made none; design's work is still there to build on.
#[tokio::test]
async fn a_restart_goes_back_to_the_last_checkpoint_made() {
    let dir = tempfile::tempdir().unwrap();
    let ws = git_workspace(&dir.path().join("repo"));
    let agent = Arc::new(Phases::default());
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let report = Engine::new(made_plan(), agent.clone(), store.clone())
        .unwrap()
        .workspace(ws)
        .gates(Arc::new(orch_gates::from_spec))
        .run(&run, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    let events = journal(store.as_ref(), &run).await;
    let (design, rolled) = design_and_rollback(&events);
    assert_eq!(rolled, (Some("design".to_owned()), design));
    assert_eq!(*agent.saw_design.lock().unwrap(), [true]);
}

/// The run stopped in the middle of build (after notes passed without a
/// checkpoint): resumed, A goes back to design's checkpoint, the last one
/// made, with design's work in it and build's half-done work gone.
#[tokio::test]
async fn a_resumed_ticket_goes_back_to_the_last_checkpoint_made() {
    let dir = tempfile::tempdir().unwrap();
    let ws = git_workspace(&dir.path().join("repo"));
    let agent = Arc::new(Phases {
        hang: true,
        ..Default::default()
    });
    let store = Arc::new(MemoryStore::new());
    let run = run_id("r");
    let engine = || {
        Engine::new(made_plan(), agent.clone(), store.clone())
            .unwrap()
            .workspace(ws.clone())
            .gates(Arc::new(orch_gates::from_spec))
    };
    let cancel = Cancellation::new();
    let stop = {
        let (cancel, started) = (cancel.clone(), agent.started.clone());
        async move {
            started.notified().await;
            cancel.cancel();
        }
    };
    let first = engine();
    let (report, ()) = tokio::join!(first.run(&run, cancel), stop);
    assert_eq!(report.unwrap().outcome, RunOutcome::Cancelled);
    let report = engine().run(&run, Cancellation::new()).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    let events = journal(store.as_ref(), &run).await;
    let (design, rolled) = design_and_rollback(&events);
    assert_eq!(rolled, (Some("design".to_owned()), design));
    assert_eq!(*agent.saw_design.lock().unwrap(), [true]);
    let build = &report.state.tickets["A"].checkpoints[&"build".parse().unwrap()];
    let files = demo::git(&dir.path().join("repo"), &["ls-tree", "--name-only", build]).unwrap();
    assert!(files.contains("design.txt"), "{files}");
    assert!(!files.contains("partial.txt"), "{files}");
}
