//! Status reports folded from journals with known times: each go/no-go
//! rule fires on its own, with the colour it gives, and the Markdown is
//! compared with the expected file in `tests/status/` (regenerate with
//! `ORCH_BLESS=1 cargo test -p orch-graph --test status`).

use orch_core::{
    AgentId, BatchId, Decision, Event, EventId, EventKind, GateReport, GateScope, GateStatus, Plan,
    RunState, TicketId, Timestamp,
};
use orch_graph::status::{Colour, Rule, StatusReport};

const PLAN: &str = r#"
name = "campaign"
default_role = "dev"
[policy]
escalate_delay = "4h"
decision_age = "2h"
retries_warn = 2
[agents.dev]
backend = { kind = "command", argv = ["true"] }
[[phases]]
name = "implement"
[[batches]]
id = "B1"
title = "first"
tickets = ["A", "B"]
[[tickets]]
id = "A"
title = "a"
effort = "1h"
priority = "P0"
[[tickets]]
id = "B"
title = "b"
effort = "2h"
priority = "P1"
depends_on = ["A"]
[[tickets]]
id = "C"
title = "c"
effort = "1h"
priority = "P2"
[[tickets]]
id = "D"
title = "d"
effort = "30m"
priority = "P1"
depends_on = ["B", "C"]
[[tickets]]
id = "E"
title = "e"
effort = "1h"
priority = "P1"
"#;

/// 2026-12-01T09:00:00Z, the run's start.
const T0: u64 = 1_796_115_600_000;
const MIN: u64 = 60_000;

/// A journal written at known times (minutes after `T0`).
#[derive(Default)]
struct Journal(Vec<Event>);

impl Journal {
    fn at(&mut self, min: u64, kind: EventKind) -> &mut Self {
        self.0.push(Event {
            id: EventId::random(),
            at: Timestamp(T0 + min * MIN),
            kind,
        });
        self
    }

    fn started() -> Journal {
        let mut j = Journal::default();
        j.at(
            0,
            EventKind::RunStarted {
                run: "r1".parse().unwrap(),
                plan: "campaign".into(),
                fingerprint: String::new(),
                resumed: false,
                parts: Default::default(),
                driver: None,
                base: None,
                plan_file: None,
            },
        );
        j
    }

    /// One attempt at `ticket` from `from` to `to`: its agent, its gate
    /// (with `tests` passing ones), then passed or failed.
    fn attempt(&mut self, ticket: &str, attempt: u32, from: u64, to: u64, pass: bool) -> &mut Self {
        let t: TicketId = ticket.parse().unwrap();
        let phase = "implement".parse().unwrap();
        let agent = AgentId::for_attempt(&t, &phase, attempt);
        self.at(
            from,
            EventKind::AgentStarted {
                ticket: t.clone(),
                phase: phase.clone(),
                attempt,
                agent: agent.clone(),
                role: "dev".parse().unwrap(),
                backend: "command".into(),
                worker: None,
            },
        );
        self.at(
            to,
            EventKind::AgentFinished {
                ticket: t.clone(),
                agent,
                success: true,
                summary: String::new(),
                usage: Default::default(),
                session_id: None,
                error: None,
            },
        );
        let mut report = GateReport {
            gate: "tests".into(),
            status: if pass {
                GateStatus::Passed
            } else {
                GateStatus::Failed
            },
            reason: if pass { "passed" } else { "2 tests failed" }.into(),
            evidence: Default::default(),
            duration_ms: 1000,
            excerpt: String::new(),
            children: Vec::new(),
        };
        report.evidence.tests = Some(orch_core::TestCounts {
            passed: if pass { 12 } else { 10 },
            failed: if pass { 0 } else { 2 },
            skipped: 0,
        });
        self.at(
            to,
            EventKind::GateFinished {
                scope: GateScope::Phase {
                    ticket: t.clone(),
                    phase: phase.clone(),
                    attempt,
                },
                report: Box::new(report),
            },
        );
        if pass {
            self.at(
                to,
                EventKind::PhasePassed {
                    ticket: t,
                    phase,
                    attempt,
                    checkpoint: None,
                    checkpoint_ms: None,
                },
            )
        } else {
            self.at(
                to,
                EventKind::AttemptFailed {
                    ticket: t,
                    phase,
                    attempt,
                    feedback: "Gate `tests` failed: 2 tests failed".into(),
                },
            )
        }
    }

    /// `ticket` done in one attempt from `from` to `to`.
    fn done(&mut self, ticket: &str, from: u64, to: u64) -> &mut Self {
        self.attempt(ticket, 1, from, to, true);
        self.at(
            to,
            EventKind::TicketDone {
                ticket: ticket.parse().unwrap(),
            },
        )
    }

    fn batch_merged(&mut self, min: u64) -> &mut Self {
        self.at(
            min,
            EventKind::BatchMerged {
                batch: BatchId::new("B1").unwrap(),
                commit: "abc123".into(),
                merge_ms: Some(40),
            },
        )
    }
}

/// The report at `min` minutes after the start, checked against its
/// expected file, with the colour and the rules that fired.
fn check(name: &str, j: &Journal, min: u64, colour: Colour, rules: &[Rule]) -> StatusReport {
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let state = RunState::fold(j.0.iter());
    let report = StatusReport::new(&plan, &state, Timestamp(T0 + min * MIN), None).unwrap();
    let fired: Vec<Rule> = report.fired.iter().map(|f| f.rule).collect();
    assert_eq!(fired, rules, "{name}: {:#?}", report.fired);
    assert_eq!(report.colour, colour, "{name}");
    let md = report.to_markdown();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/status")
        .join(format!("{name}.md"));
    if std::env::var_os("ORCH_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &md).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (ORCH_BLESS=1 writes it)", path.display()));
    assert_eq!(
        md,
        expected,
        "{name}: the report differs from {}",
        path.display()
    );
    report
}

/// Everything done well ahead of the estimates, the batch merged: GREEN.
#[test]
fn green_when_no_rule_fires() {
    let mut j = Journal::started();
    j.done("A", 0, 2)
        .done("C", 0, 3)
        .done("E", 1, 4)
        .done("B", 2, 6)
        .batch_merged(7)
        .done("D", 7, 9);
    let r = check("green", &j, 9, Colour::Green, &[]);
    assert_eq!(r.progress.done, 5);
    assert!(r.schedule.delay_ms < 0, "{:?}", r.schedule);
    assert_eq!(r.batches[0].call, "GO");
    assert_eq!(r.metrics.tests_ran, 60);
    // Since minute 5: only what finished after it.
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let state = RunState::fold(j.0.iter());
    let since = Some(Timestamp(T0 + 5 * MIN));
    let r = StatusReport::new(&plan, &state, Timestamp(T0 + 9 * MIN), since).unwrap();
    let completed: Vec<&str> = r.completed.iter().map(|t| t.as_str()).collect();
    assert_eq!(completed, ["B", "D"]);
    assert!(
        r.to_markdown()
            .contains("## Completed since 2026-12-01T09:05:00.000Z\n\n- B\n- D\n"),
        "{}",
        r.to_markdown()
    );
}

/// Mid-run: the order of what is ready is the dispatcher's (P0 first,
/// then the longest chain to the end).
#[test]
fn next_is_in_dispatch_order_with_the_critical_path_first() {
    let j = Journal::started();
    let r = check("not_started", &j, 0, Colour::Green, &[]);
    let next: Vec<String> = r.next.iter().map(|n| n.ticket.to_string()).collect();
    // A is P0; E and C: E is P1, C is P2; B and D wait for A.
    assert_eq!(next, ["A", "E", "C"]);
    assert_eq!(r.next[0].slack_minutes, 0, "A is on the critical path");
}

/// A batch whose gates failed after the merge: RED, with its reason.
#[test]
fn red_when_a_batch_gate_fails() {
    let mut j = Journal::started();
    j.done("A", 0, 2).done("B", 2, 6).at(
        7,
        EventKind::BatchFailed {
            batch: BatchId::new("B1").unwrap(),
            reason: "batch gate `integration` failed: 1 test failed".into(),
        },
    );
    let r = check("red_batch", &j, 8, Colour::Red, &[Rule::BatchGateFailed]);
    assert!(r.fired[0].detail.contains("integration"), "{:?}", r.fired);
    assert_eq!(r.batches[0].call, "NO-GO");
}

/// A ticket whose attempts ran out: RED; its retries alone, under the
/// threshold, fire nothing more (A done in a minute keeps the schedule
/// ahead).
#[test]
fn red_when_a_ticket_fails() {
    let mut j = Journal::started();
    j.done("A", 0, 1)
        .attempt("C", 1, 0, 5, false)
        .attempt("C", 2, 5, 10, false)
        .at(
            10,
            EventKind::TicketFailed {
                ticket: "C".parse().unwrap(),
                reason: "attempts exhausted: 2 tests failed".into(),
            },
        );
    let r = check("red_ticket", &j, 10, Colour::Red, &[Rule::TicketFailed]);
    assert_eq!(r.health.roles[0].failed_attempts, 2);
}

/// More failed attempts than `policy.retries_warn`: YELLOW.
#[test]
fn yellow_when_retries_pass_the_threshold() {
    let mut j = Journal::started();
    j.attempt("A", 1, 0, 2, false)
        .attempt("A", 2, 2, 4, false)
        .attempt("A", 3, 4, 6, false)
        .attempt("A", 4, 6, 8, true)
        .at(
            8,
            EventKind::TicketDone {
                ticket: "A".parse().unwrap(),
            },
        );
    let r = check("yellow_retries", &j, 8, Colour::Yellow, &[Rule::Retries]);
    assert_eq!(r.metrics.failed_attempts, 3);
}

/// A and B done in a minute each (ahead of the schedule), then E
/// escalated at `min`.
fn escalated(j: &mut Journal, min: u64) {
    j.done("A", 0, 1)
        .done("B", 1, 2)
        .attempt("E", 1, 0, min, false)
        .at(
            min,
            EventKind::Escalated {
                ticket: "E".parse().unwrap(),
                phase: "implement".parse().unwrap(),
                question: "The tests keep failing: retry, skip or abort?".into(),
                context: String::new(),
                options: vec![Decision::Retry, Decision::Skip, Decision::Abort],
            },
        );
}

/// An escalation younger than `policy.decision_age`: YELLOW; older: RED;
/// answered, neither, and its wait is in the decision velocity.
#[test]
fn an_escalation_is_yellow_then_red_until_answered() {
    let mut j = Journal::started();
    escalated(&mut j, 5);
    check(
        "yellow_decision",
        &j,
        65,
        Colour::Yellow,
        &[Rule::DecisionOpen],
    );
    let r = check(
        "red_decision",
        &j,
        5 + 121,
        Colour::Red,
        &[Rule::DecisionOverdue],
    );
    assert_eq!(r.in_progress[0].ticket.as_str(), "E");
    assert!(
        r.in_progress[0].blockers[0].contains("retry, skip or abort"),
        "{:?}",
        r.in_progress
    );
    j.at(
        5 + 130,
        EventKind::DecisionRecorded {
            ticket: "E".parse().unwrap(),
            decision: Decision::Skip,
            note: None,
            adr: None,
        },
    );
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let state = RunState::fold(j.0.iter());
    let r = StatusReport::new(&plan, &state, Timestamp(T0 + 140 * MIN), None).unwrap();
    assert!(
        !r.fired
            .iter()
            .any(|f| matches!(f.rule, Rule::DecisionOpen | Rule::DecisionOverdue)),
        "{:?}",
        r.fired
    );
    assert_eq!(r.health.decision_wait.count, 1);
    assert_eq!(r.health.decision_wait.max_ms, 130 * MIN);
}

/// Tickets taking longer than their estimates: the projected finish
/// moves past the critical path's (A 1h, B 2h, D 30m: 3h30m); by less
/// than `policy.escalate_delay` YELLOW, by more RED.
#[test]
fn a_slipping_critical_path_is_yellow_then_red() {
    // A took 2h for its 1h: pace 2, so B (2h) is projected at 4h and D
    // at 1h, from A's end at 2h: finish at 7h, 3h30m past 3h30m.
    let mut j = Journal::started();
    j.done("A", 0, 120);
    let r = check(
        "yellow_slip",
        &j,
        120,
        Colour::Yellow,
        &[Rule::BehindSchedule],
    );
    assert_eq!(r.schedule.delay_ms, (210 * MIN) as i64);
    // A took 3h: pace 3, B projected at 6h, D at 1h30m, from 3h: 10h30m,
    // 7h past the estimate.
    let mut j = Journal::started();
    j.done("A", 0, 180);
    let r = check("red_slip", &j, 180, Colour::Red, &[Rule::CriticalPathSlip]);
    assert_eq!(r.schedule.delay_ms, (420 * MIN) as i64);
}

/// The budget spent: RED.
#[test]
fn red_when_the_budget_is_spent() {
    let mut j = Journal::started();
    j.done("A", 0, 2).at(
        3,
        EventKind::BudgetExhausted {
            tokens: 1_000_000,
            usd: 12.5,
        },
    );
    check("red_budget", &j, 3, Colour::Red, &[Rule::BudgetExhausted]);
}

/// `--metrics` output parses as OpenMetrics, and its figures are the
/// report's.
#[test]
fn metrics_parse_as_openmetrics() {
    let mut j = Journal::started();
    escalated(&mut j, 4);
    j.attempt("C", 1, 0, 3, false);
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let state = RunState::fold(j.0.iter());
    let r = StatusReport::new(&plan, &state, Timestamp(T0 + 10 * MIN), None).unwrap();
    let text = r.to_openmetrics();
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let family = |name: &str| {
        parsed
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"))
    };
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let f = family(name);
        let values: Vec<String> = f
            .get_label_names()
            .iter()
            .map(|n| {
                let (_, v) = labels
                    .iter()
                    .find(|(k, _)| k == n)
                    .expect("every label given");
                (*v).to_owned()
            })
            .collect();
        let s = f
            .get_sample_by_label_values(&values)
            .unwrap_or_else(|| panic!("no sample {labels:?} of {name} in\n{text}"));
        match &s.value {
            openmetrics_parser::OpenMetricsValue::Gauge(n)
            | openmetrics_parser::OpenMetricsValue::Unknown(n) => n.as_f64(),
            openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
            openmetrics_parser::OpenMetricsValue::StateSet(n) => n.as_f64(),
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(value("orch_tickets", &[("status", "done")]), 2.0);
    assert_eq!(
        value("orch_tickets", &[("status", "awaiting_decision")]),
        1.0
    );
    assert_eq!(value("orch_go_no_go", &[("orch_go_no_go", "YELLOW")]), 1.0);
    assert_eq!(value("orch_go_no_go", &[("orch_go_no_go", "GREEN")]), 0.0);
    assert_eq!(value("orch_failed_attempts", &[]), 2.0);
    assert_eq!(value("orch_open_decisions", &[]), 1.0);
    assert_eq!(
        value(
            "orch_agent_runs",
            &[("role", "dev"), ("backend", "command")]
        ),
        4.0
    );
}

/// Failed attempts a person has reviewed (answered an escalation of
/// their ticket after them) do not count towards `policy.retries_warn`.
#[test]
fn reviewed_retries_do_not_make_it_yellow() {
    let mut j = Journal::started();
    j.attempt("A", 1, 0, 2, false)
        .attempt("A", 2, 2, 4, false)
        .attempt("A", 3, 4, 6, false)
        .at(
            6,
            EventKind::Escalated {
                ticket: "A".parse().unwrap(),
                phase: "implement".parse().unwrap(),
                question: "retry?".into(),
                context: String::new(),
                options: vec![Decision::Retry],
            },
        )
        .at(
            7,
            EventKind::DecisionRecorded {
                ticket: "A".parse().unwrap(),
                decision: Decision::Retry,
                note: Some("mock the clock".into()),
                adr: None,
            },
        )
        .attempt("A", 4, 7, 8, true)
        .at(
            8,
            EventKind::TicketDone {
                ticket: "A".parse().unwrap(),
            },
        );
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let state = RunState::fold(j.0.iter());
    let r = StatusReport::new(&plan, &state, Timestamp(T0 + 8 * MIN), None).unwrap();
    assert_eq!(r.metrics.failed_attempts, 3);
    assert_eq!(r.colour, Colour::Green, "{:?}", r.fired);
}

/// The schedule question: raised once the projected finish is more than
/// `policy.escalate_delay` (4h) past the critical path's estimate (3h 30m:
/// A, B, D), naming the chain left; raised again only after another 4h
/// of slip, and shown among the report's risks until a person accepts it.
#[test]
fn a_slip_is_raised_once_per_escalate_delay_with_the_chain_left() {
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let graph = orch_graph::PlanGraph::from_plan(&plan).unwrap();
    let length = orch_graph::Analysis::new(&graph).length;
    assert_eq!(length, 210);
    let mut j = Journal::started();
    // A took two hours for its one: the pace is 2, so B (2h) and D (30m)
    // take 5h from here.
    j.done("A", 0, 120);
    let slip = |j: &Journal, min: u64| {
        let state = RunState::fold(j.0.iter());
        orch_graph::status::slip(
            &graph,
            length,
            &state,
            &plan.policy,
            Timestamp(T0 + min * MIN),
        )
    };
    // At 2h: 2h + 5h - 3h30 = 3h30 late, within the bound.
    assert_eq!(slip(&j, 120), None);
    let raised = slip(&j, 180).expect("4h30 late");
    let EventKind::ScheduleSlipped {
        delay_minutes,
        planned_finish,
        projected_finish,
        ref path,
    } = raised
    else {
        panic!("{raised:?}")
    };
    assert_eq!(delay_minutes, 270);
    assert_eq!(planned_finish, Timestamp(T0 + 210 * MIN));
    assert_eq!(projected_finish, Timestamp(T0 + 480 * MIN));
    let path: Vec<&str> = path.iter().map(|t| t.as_str()).collect();
    assert_eq!(path, ["B", "D"]);
    j.at(180, raised);
    // Not again for the same slip, nor for less than another 4h of it.
    assert_eq!(slip(&j, 180), None);
    assert_eq!(slip(&j, 419), None);
    assert!(matches!(
        slip(&j, 420),
        Some(EventKind::ScheduleSlipped {
            delay_minutes: 510,
            ..
        })
    ));
    // Open, it is among the risks; accepted, it is not.
    let risks = |j: &Journal| {
        let state = RunState::fold(j.0.iter());
        StatusReport::new(&plan, &state, Timestamp(T0 + 200 * MIN), None)
            .unwrap()
            .risks
    };
    assert!(
        risks(&j)
            .iter()
            .any(|r| r.starts_with("the projected finish slipped 4h30m past the estimate")),
        "{:?}",
        risks(&j)
    );
    j.at(
        190,
        EventKind::Accepted {
            acceptance: orch_core::Acceptance::Delay,
            batch: None,
            note: "new date: Friday".into(),
        },
    );
    assert!(
        !risks(&j).iter().any(|r| r.contains("slipped")),
        "{:?}",
        risks(&j)
    );
    // The accepted 4h30m is the new baseline: at 3h20m, 4h50m late is
    // YELLOW; RED again only past 4h30m + 4h.
    check_rules(&j, 200, Colour::Yellow, &[Rule::BehindSchedule]);
    check_rules(&j, 420, Colour::Yellow, &[Rule::BehindSchedule]);
    check_rules(&j, 421, Colour::Red, &[Rule::CriticalPathSlip]);
}

/// The report at `min` has `colour` by exactly `rules`.
fn check_rules(j: &Journal, min: u64, colour: Colour, rules: &[Rule]) {
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let state = RunState::fold(j.0.iter());
    let r = StatusReport::new(&plan, &state, Timestamp(T0 + min * MIN), None).unwrap();
    let fired: Vec<Rule> = r.fired.iter().map(|f| f.rule).collect();
    assert_eq!(fired, rules, "at {min}: {:#?}", r.fired);
    assert_eq!(r.colour, colour, "at {min}");
}

/// Time a ticket waited for a person is not the pace of the work: A, an
/// hour's effort, failed for 10 minutes, waited 10 hours for its answer,
/// then passed in 10: a pace of a third, not of ten.
#[test]
fn the_pace_leaves_out_waiting_for_a_person() {
    let mut j = Journal::started();
    j.attempt("A", 1, 0, 10, false)
        .at(
            10,
            EventKind::Escalated {
                ticket: "A".parse().unwrap(),
                phase: "implement".parse().unwrap(),
                question: "retry?".into(),
                context: String::new(),
                options: vec![Decision::Retry, Decision::Skip],
            },
        )
        .at(
            610,
            EventKind::DecisionRecorded {
                ticket: "A".parse().unwrap(),
                decision: Decision::Retry,
                note: None,
                adr: None,
            },
        )
        .attempt("A", 2, 610, 620, true)
        .at(
            620,
            EventKind::TicketDone {
                ticket: "A".parse().unwrap(),
            },
        );
    let plan = Plan::from_toml_str(PLAN).unwrap();
    let state = RunState::fold(j.0.iter());
    let r = StatusReport::new(&plan, &state, Timestamp(T0 + 620 * MIN), None).unwrap();
    assert_eq!(r.schedule.done_took_ms, 20 * MIN, "{:?}", r.schedule);
    assert!(
        (r.schedule.pace - 1.0 / 3.0).abs() < 1e-9,
        "{:?}",
        r.schedule
    );
}
