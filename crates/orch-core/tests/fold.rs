//! Properties of `RunState::apply`: the fold is a pure function of the
//! event sequence, so live state, replayed state and resumed state agree.

use orch_core::*;
use proptest::prelude::*;

fn ticket() -> impl Strategy<Value = TicketId> {
    prop::sample::select(vec!["T-1", "T-2", "T-3", "T-4"]).prop_map(|s| s.parse().unwrap())
}
fn phase() -> impl Strategy<Value = PhaseName> {
    prop::sample::select(vec!["plan", "build", "docs"]).prop_map(|s| s.parse().unwrap())
}
fn agent() -> impl Strategy<Value = AgentId> {
    prop::sample::select(vec!["a1", "a2", "a3"]).prop_map(|s| s.parse().unwrap())
}
fn decision() -> impl Strategy<Value = Decision> {
    prop::sample::select(vec![
        Decision::Approve,
        Decision::Retry,
        Decision::Skip,
        Decision::Abort,
    ])
}
fn usage() -> impl Strategy<Value = Usage> {
    (0u64..10_000, 0u64..10_000, 0u32..500).prop_map(|(i, o, c)| Usage {
        input_tokens: i,
        output_tokens: o,
        cost_usd: f64::from(c) / 100.0,
    })
}
fn report() -> impl Strategy<Value = GateReport> {
    (
        any::<bool>(),
        0u64..50,
        0u64..5,
        prop::option::of(0u32..=100),
    )
        .prop_map(|(ok, p, f, cov)| GateReport {
            gate: "tests".into(),
            status: if ok {
                GateStatus::Passed
            } else {
                GateStatus::Failed
            },
            reason: format!("{p} passed, {f} failed"),
            evidence: Evidence {
                tests: Some(TestCounts {
                    passed: p,
                    failed: f,
                    skipped: 0,
                }),
                line_coverage: cov.map(f64::from),
                ..Evidence::default()
            },
            duration_ms: p * 3,
            excerpt: String::new(),
            children: vec![],
        })
}

fn kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        Just(EventKind::RunStarted {
            run: "r".parse().unwrap(),
            plan: "p".into(),
            fingerprint: "f".into(),
            resumed: false,
            parts: Default::default(),
            driver: None,
            base: None,
            plan_file: None,
        }),
        ticket().prop_map(|ticket| EventKind::TicketReady { ticket }),
        (ticket(), phase(), 1u32..4).prop_map(|(ticket, phase, attempt)| EventKind::PhaseStarted {
            ticket,
            phase,
            attempt
        }),
        (ticket(), phase(), 1u32..4, agent()).prop_map(|(ticket, phase, attempt, agent)| {
            EventKind::AgentStarted {
                ticket,
                phase,
                attempt,
                agent,
                role: "dev".parse().unwrap(),
                backend: "scripted".into(),
                worker: None,
            }
        }),
        (agent(), "[a-z ]{0,10}").prop_map(|(agent, text)| EventKind::AgentOutput { agent, text }),
        (ticket(), agent(), any::<bool>(), usage(), any::<bool>()).prop_map(
            |(ticket, agent, success, usage, err)| EventKind::AgentFinished {
                ticket,
                agent,
                success,
                summary: "did it".into(),
                usage,
                session_id: None,
                error: err.then_some(AgentErrorKind::Crashed)
            }
        ),
        (ticket(), phase(), 1u32..4, report()).prop_map(|(ticket, phase, attempt, report)| {
            EventKind::GateFinished {
                scope: GateScope::Phase {
                    ticket,
                    phase,
                    attempt,
                },
                report: Box::new(report),
            }
        }),
        report().prop_map(|report| EventKind::GateFinished {
            scope: GateScope::Batch {
                batch: "PR1".parse().unwrap()
            },
            report: Box::new(report)
        }),
        (
            ticket(),
            phase(),
            1u32..4,
            prop::option::of("[0-9a-f]{8}"),
            prop::option::of(0u64..10_000)
        )
            .prop_map(|(ticket, phase, attempt, checkpoint, checkpoint_ms)| {
                EventKind::PhasePassed {
                    ticket,
                    phase,
                    attempt,
                    checkpoint,
                    checkpoint_ms,
                }
            }),
        (ticket(), prop::option::of(0u64..10_000)).prop_map(|(ticket, took_ms)| {
            EventKind::WorkspaceReady {
                path: format!("/w/{ticket}"),
                ticket,
                base: Some("b".into()),
                took_ms,
            }
        }),
        (ticket(), phase(), 1u32..4).prop_map(|(ticket, phase, attempt)| {
            EventKind::AttemptFailed {
                ticket,
                phase,
                attempt,
                feedback: "tests failed".into(),
            }
        }),
        (ticket(), phase()).prop_map(|(ticket, phase)| EventKind::RolledBack {
            ticket,
            phase: Some(phase),
            commit: "abc".into()
        }),
        (ticket(), phase()).prop_map(|(ticket, from)| EventKind::PhaseRestarted {
            ticket,
            from,
            feedback_file: "f.md".into()
        }),
        (ticket(), phase()).prop_map(|(ticket, phase)| EventKind::Escalated {
            ticket,
            phase,
            question: "q?".into(),
            context: "c".into(),
            options: vec![Decision::Approve, Decision::Skip]
        }),
        (
            ticket(),
            decision(),
            prop::option::of("[a-z]{1,8}"),
            prop::option::of(1u32..20)
        )
            .prop_map(
                |(ticket, decision, note, adr)| EventKind::DecisionRecorded {
                    ticket,
                    decision,
                    note,
                    adr: adr.map(|number| Box::new(orch_core::Adr {
                        number,
                        title: format!("record {number}"),
                        deciders: Vec::new(),
                        context: "c".into(),
                        decision: "d".into(),
                        consequences: "e".into(),
                        alternatives: vec!["f".into()],
                    })),
                }
            ),
        ticket().prop_map(|ticket| EventKind::TicketDone { ticket }),
        ticket().prop_map(|ticket| EventKind::TicketFailed {
            ticket,
            reason: "gates".into()
        }),
        (ticket(), ticket()).prop_map(|(ticket, by)| EventKind::TicketBlocked { ticket, by }),
        ticket().prop_map(|ticket| EventKind::TicketSkipped { ticket }),
        prop::option::of(0u64..10_000).prop_map(|merge_ms| EventKind::BatchMerged {
            batch: "PR1".parse().unwrap(),
            commit: "m".into(),
            merge_ms
        }),
        Just(EventKind::BatchFailed {
            batch: "PR1".parse().unwrap(),
            reason: "conflict in a.rs".into()
        }),
        Just(EventKind::BudgetExhausted {
            tokens: 10,
            usd: 1.0
        }),
        Just(EventKind::RunFinished {
            outcome: RunOutcome::Completed
        }),
    ]
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((kind(), 0u64..1_000_000), 0..120).prop_map(|ks| {
        ks.into_iter()
            .enumerate()
            .map(|(i, (kind, t))| Event {
                id: EventId(i as u128),
                at: Timestamp(1_700_000_000_000 + t),
                kind,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn folding_twice_gives_equal_states(evs in events()) {
        prop_assert_eq!(RunState::fold(&evs), RunState::fold(&evs));
    }

    #[test]
    fn prefix_then_rest_equals_all(evs in events(), cut in any::<prop::sample::Index>()) {
        let k = cut.index(evs.len() + 1);
        let mut s = RunState::fold(&evs[..k]);
        for e in &evs[k..] {
            s.apply(e);
        }
        prop_assert_eq!(s, RunState::fold(&evs));
    }

    /// What a store persists (JSON) folds to exactly the live state.
    #[test]
    fn persisted_journal_folds_to_live_state(evs in events()) {
        let live = RunState::fold(&evs);
        let journal: Vec<String> = evs.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        let replayed: Vec<Event> = journal.iter().map(|j| serde_json::from_str(j).unwrap()).collect();
        prop_assert_eq!(&replayed, &evs);
        prop_assert_eq!(RunState::fold(&replayed), live);
    }

    /// A ticket's own fold (what the engine keeps per task) is the run
    /// fold's view of that ticket.
    #[test]
    fn ticket_fold_is_the_run_folds_ticket(evs in events()) {
        let s = RunState::fold(&evs);
        for (id, t) in &s.tickets {
            let mut mine = TicketState::default();
            for e in evs.iter().filter(|e| e.kind.ticket() == Some(id)) {
                mine.apply(e);
            }
            prop_assert_eq!(&mine, t);
        }
    }

    #[test]
    fn counts_match_ticket_map(evs in events()) {
        let s = RunState::fold(&evs);
        let total: usize = [TicketStatus::Pending, TicketStatus::Ready, TicketStatus::Running,
            TicketStatus::AwaitingDecision, TicketStatus::Done, TicketStatus::Failed,
            TicketStatus::Blocked, TicketStatus::Skipped].iter().map(|st| s.count(*st)).sum();
        prop_assert_eq!(total, s.tickets.len());
        prop_assert_eq!(s.events, evs.len() as u64);
    }
}

#[test]
fn a_ticket_through_retry_and_escalation() {
    let t: TicketId = "SEC-001".parse().unwrap();
    let p: PhaseName = "implement".parse().unwrap();
    let a1: AgentId = "SEC-001.implement.1".parse().unwrap();
    let mut at = 1_000;
    let mut ev = |kind| {
        at += 1_000;
        Event {
            id: EventId(at as u128),
            at: Timestamp(at),
            kind,
        }
    };
    let evs = vec![
        ev(EventKind::TicketReady { ticket: t.clone() }),
        ev(EventKind::PhaseStarted {
            ticket: t.clone(),
            phase: p.clone(),
            attempt: 1,
        }),
        ev(EventKind::AgentStarted {
            ticket: t.clone(),
            phase: p.clone(),
            attempt: 1,
            agent: a1.clone(),
            role: "security".parse().unwrap(),
            backend: "claude_code".into(),
            worker: None,
        }),
        ev(EventKind::AgentFinished {
            ticket: t.clone(),
            agent: a1.clone(),
            success: true,
            summary: "fixed".into(),
            usage: Usage {
                input_tokens: 100,
                output_tokens: 50,
                cost_usd: 0.25,
            },
            session_id: None,
            error: None,
        }),
        ev(EventKind::AttemptFailed {
            ticket: t.clone(),
            phase: p.clone(),
            attempt: 1,
            feedback: "1 test failed".into(),
        }),
        ev(EventKind::Escalated {
            ticket: t.clone(),
            phase: p.clone(),
            question: "Retries spent".into(),
            context: "ctx".into(),
            options: vec![Decision::Approve],
        }),
    ];
    let s = RunState::fold(&evs);
    assert_eq!(s.tickets[&t].status, TicketStatus::AwaitingDecision);
    assert_eq!(s.tickets[&t].feedback, ["1 test failed"]);
    assert_eq!(s.open_decisions().count(), 1);
    assert_eq!(s.agents[&a1].status, AgentStatus::Succeeded);
    assert_eq!(s.usage.total_tokens(), 150);
    let mut s2 = s.clone();
    s2.apply(&Event {
        id: EventId(99_999),
        at: Timestamp(99_999),
        kind: EventKind::DecisionRecorded {
            ticket: t.clone(),
            decision: Decision::Retry,
            note: Some("check the escaping".into()),
            adr: None,
        },
    });
    assert_eq!(s2.tickets[&t].status, TicketStatus::Ready);
    assert_eq!(s2.open_decisions().count(), 0);
    assert_eq!(s2.decisions[0].answer, Some(Decision::Retry));
    assert_eq!(
        s2.tickets[&t].feedback.last().unwrap(),
        "A person asked for another attempt: check the escaping"
    );
}

/// Tickets and agents are kept in hash maps (the fold is hot), but a
/// state's JSON and its display order are by id, the same every time.
#[test]
fn state_json_and_display_order_are_by_id() {
    let mut s = RunState::default();
    for (n, id) in ["T-9", "T-10", "A-2", "Z-1", "B-7"].iter().enumerate() {
        s.apply(&Event {
            id: EventId(n as u128 + 1),
            at: Timestamp(n as u64),
            kind: EventKind::TicketReady {
                ticket: id.parse().unwrap(),
            },
        });
    }
    let want = ["A-2", "B-7", "T-10", "T-9", "Z-1"];
    let shown: Vec<&str> = s
        .tickets_by_id()
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(shown, want);
    let json = serde_json::to_string(&s).unwrap();
    let at: Vec<usize> = want
        .iter()
        .map(|id| json.find(&format!("\"{id}\":")).unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
    assert_eq!(json, serde_json::to_string(&s.clone()).unwrap());
    let back: RunState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}
