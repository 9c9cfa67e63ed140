//! The state files, rendered from a run's events.

use orch_core::*;
use orch_state::views;

fn plan() -> Plan {
    Plan::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/plans/production-readiness.toml"
    ))
    .unwrap()
}

fn events() -> Vec<Event> {
    let mut at = 1_795_400_000_000u64;
    let mut n = 0u128;
    let mut e = |kind| {
        at += 60_000;
        n += 1;
        Event {
            id: EventId(n),
            at: Timestamp(at),
            kind,
        }
    };
    let t = |s: &str| -> TicketId { s.parse().unwrap() };
    let p: PhaseName = "implement".parse().unwrap();
    let tests = |passed: u64, failed: u64| GateReport {
        gate: "cargo test".into(),
        status: if failed == 0 {
            GateStatus::Passed
        } else {
            GateStatus::Failed
        },
        reason: format!("{passed} passed, {failed} failed"),
        evidence: Evidence {
            tests: Some(TestCounts {
                passed,
                failed,
                skipped: 0,
            }),
            ..Evidence::default()
        },
        duration_ms: 900,
        excerpt: String::new(),
        children: vec![],
    };
    let mut v = vec![e(EventKind::RunStarted {
        run: "r1".parse().unwrap(),
        plan: "production-readiness".into(),
        fingerprint: "f".into(),
        resumed: false,
        parts: Default::default(),
        driver: None,
        base: None,
        plan_file: None,
    })];
    for id in [
        "INFRA-002",
        "INFRA-003",
        "SEC-001",
        "SEC-002",
        "SEC-005",
        "PAY-001",
    ] {
        let agent: AgentId = format!("{id}.implement.1").parse().unwrap();
        v.push(e(EventKind::TicketReady { ticket: t(id) }));
        v.push(e(EventKind::WorkspaceReady {
            ticket: t(id),
            path: format!("/repo/.orch/slots/{id}"),
            base: Some("b".into()),
            took_ms: Some(20),
        }));
        v.push(e(EventKind::PhaseStarted {
            ticket: t(id),
            phase: p.clone(),
            attempt: 1,
        }));
        v.push(e(EventKind::AgentStarted {
            ticket: t(id),
            phase: p.clone(),
            attempt: 1,
            agent: agent.clone(),
            role: "backend".parse().unwrap(),
            backend: "claude_code".into(),
            worker: None,
        }));
        v.push(e(EventKind::AgentFinished {
            ticket: t(id),
            agent,
            success: true,
            summary: "done".into(),
            usage: Usage {
                input_tokens: 1000,
                output_tokens: 200,
                cost_usd: 0.05,
            },
            session_id: None,
            error: None,
        }));
        if id == "SEC-001" {
            v.push(e(EventKind::GateFinished {
                scope: GateScope::Phase {
                    ticket: t(id),
                    phase: p.clone(),
                    attempt: 1,
                },
                report: Box::new(tests(7, 1)),
            }));
            v.push(e(EventKind::AttemptFailed {
                ticket: t(id),
                phase: p.clone(),
                attempt: 1,
                feedback: "1 test failed".into(),
            }));
            v.push(e(EventKind::PhaseStarted {
                ticket: t(id),
                phase: p.clone(),
                attempt: 2,
            }));
            v.push(e(EventKind::GateFinished {
                scope: GateScope::Phase {
                    ticket: t(id),
                    phase: p.clone(),
                    attempt: 2,
                },
                report: Box::new(tests(8, 0)),
            }));
        } else {
            v.push(e(EventKind::GateFinished {
                scope: GateScope::Phase {
                    ticket: t(id),
                    phase: p.clone(),
                    attempt: 1,
                },
                report: Box::new(tests(8, 0)),
            }));
        }
        v.push(e(EventKind::PhasePassed {
            ticket: t(id),
            phase: p.clone(),
            attempt: 1,
            checkpoint: Some("abc123".into()),
            checkpoint_ms: Some(40),
        }));
        v.push(e(EventKind::TicketDone { ticket: t(id) }));
    }
    v.push(e(EventKind::GateFinished {
        scope: GateScope::Batch {
            batch: "PR1".parse().unwrap(),
        },
        report: Box::new(tests(47, 0)),
    }));
    v.push(e(EventKind::BatchMerged {
        batch: "PR1".parse().unwrap(),
        commit: "m1".into(),
        merge_ms: Some(250),
    }));
    // SEC-003 escalated; INFRA-004 running.
    v.push(e(EventKind::PhaseStarted {
        ticket: t("SEC-003"),
        phase: p.clone(),
        attempt: 3,
    }));
    v.push(e(EventKind::Escalated {
        ticket: t("SEC-003"),
        phase: p.clone(),
        question: "Three attempts failed: refresh-token rotation test keeps failing".into(),
        context: "Last failure: test auth::refresh_rotates".into(),
        options: vec![Decision::Approve, Decision::Retry, Decision::Skip],
    }));
    v.push(e(EventKind::PhaseStarted {
        ticket: t("INFRA-004"),
        phase: p.clone(),
        attempt: 1,
    }));
    v.push(e(EventKind::AgentStarted {
        ticket: t("INFRA-004"),
        phase: p,
        attempt: 1,
        agent: "INFRA-004.implement.1".parse().unwrap(),
        role: "devops".parse().unwrap(),
        backend: "codex".into(),
        worker: None,
    }));
    v
}

#[test]
fn views_say_where_the_run_stands() {
    let plan = plan();
    let state = RunState::fold(&events());
    let v = views::render(&state, Some(&plan));
    let s = &v["ORCHESTRATOR_STATE.md"];
    assert!(
        s.contains("- Current batch: PR2 auth-hardening — in progress"),
        "{s}"
    );
    assert!(
        s.contains("| PR1 | foundation-security | complete | PR1: 47/47 passed |"),
        "{s}"
    );
    assert!(s.contains("| PR3 | data-layer | in progress | — |"), "{s}");
    assert!(
        s.contains("- SEC-001 Fix XSS in customer autocomplete — 1 phase(s), 1 failed attempt(s)"),
        "{s}"
    );
    assert!(
        s.contains("- INFRA-004 — phase implement attempt 1, agent `INFRA-004.implement.1`"),
        "{s}"
    );
    assert!(
        s.contains("- SEC-003 — waiting for a decision: Three attempts failed"),
        "{s}"
    );
    assert!(
        s.contains("`orch decide SEC-003 --approve|--retry|--skip`"),
        "{s}"
    );
    assert!(s.contains("- Usage: 7200 tokens, $0.3000"), "{s}");
    // Where the time went: each agent ran a minute (the events' times),
    // each work tree took 20 ms, each checkpoint 40 ms, the merge 250 ms.
    assert!(
        s.contains("- SEC-001 Fix XSS in customer autocomplete — 1 phase(s), 1 failed attempt(s), finished 2026-11-23T"),
        "{s}"
    );
    assert!(
        s.contains("; prepare 20 ms, agent 60000 ms, gates 1800 ms, checkpoint 40 ms\n"),
        "{s}"
    );
    assert!(
        s.contains("| preparing work trees (slot or worktree, dependencies merged) | 0.1 s | 20 ms a ticket (6) |"),
        "{s}"
    );
    assert!(
        s.contains("| secret scans and checkpoints | 0.2 s | 40 ms a ticket (6) |"),
        "{s}"
    );
    assert!(
        s.contains("| batch merges | 0.2 s | 250 ms a batch (1) |"),
        "{s}"
    );

    let a = &v["AGENT_REGISTRY.md"];
    assert!(
        a.contains(
            "| INFRA-004.implement.1 | INFRA-004 | implement | 1 | devops | codex | running |"
        ),
        "{a}"
    );
    assert!(
        a.contains(
            "| SEC-001.implement.1 | SEC-001 | implement | 1 | backend | claude_code | succeeded |"
        ),
        "{a}"
    );

    let t = &v["TEST_RESULTS.md"];
    assert!(t.contains("| SEC-001 implement #1 | cargo test | FAILED (fixed on attempt 2) | 7/8 passed | 7 passed, 1 failed |"), "{t}");
    assert!(
        t.contains("| batch PR1 | cargo test | passed | 47/47 passed |"),
        "{t}"
    );

    let d = &v["DECISION_QUEUE.md"];
    assert!(d.contains("### SEC-003 (implement)"), "{d}");
    assert!(
        d.contains(
            "- `orch decide SEC-003 --retry NOTE` — try the phase again; NOTE is shown to the agent"
        ),
        "{d}"
    );

    let j: serde_json::Value = serde_json::from_str(&v["tickets/SEC-001.json"]).unwrap();
    assert_eq!(j["id"], "SEC-001");
    assert_eq!(j["status"], "done");
    assert_eq!(j["checkpoints"]["implement"], "abc123");
    assert_eq!(j["metrics"]["failed_attempts"], 1);
}

#[test]
fn views_are_written_atomically_and_only_when_changed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan();
    let state = RunState::fold(&events());
    views::write_views(dir.path(), &state, Some(&plan)).unwrap();
    let p = dir.path().join("ORCHESTRATOR_STATE.md");
    // Every write renames a new file over the old one: the same inode
    // means the file was not written again.
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let first = inode(&p);
    assert!(dir.path().join("tickets/SEC-001.json").is_file());
    views::write_views(dir.path(), &state, Some(&plan)).unwrap();
    assert_eq!(inode(&p), first, "unchanged files are not rewritten");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left");
    // A file that cannot be written names itself.
    let err =
        views::write_atomic(&dir.path().join("ORCHESTRATOR_STATE.md/inside"), b"x").unwrap_err();
    assert!(
        err.to_string().contains("ORCHESTRATOR_STATE.md/inside"),
        "{err}"
    );
}

/// After a full write, writing with the tickets that changed leaves the
/// directory as a full write would, and renders no other ticket's file.
#[test]
fn writing_what_changed_renders_the_summaries_and_those_tickets_only() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan();
    let mut state = RunState::fold(&events());
    views::write_views(dir.path(), &state, Some(&plan)).unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let (a, b): (TicketId, TicketId) = ("SEC-001".parse().unwrap(), "SEC-002".parse().unwrap());
    let b_before = read("tickets/SEC-002.json");
    for t in [&a, &b] {
        state.apply(&Event::now(EventKind::TicketSkipped { ticket: t.clone() }));
    }
    views::write_views_changed(dir.path(), &state, Some(&plan), [&a]).unwrap();
    assert!(read("tickets/SEC-001.json").contains("\"skipped\""));
    assert_eq!(
        read("tickets/SEC-002.json"),
        b_before,
        "not named, not rendered"
    );
    let full = views::render(&state, Some(&plan));
    assert_eq!(read("ORCHESTRATOR_STATE.md"), full["ORCHESTRATOR_STATE.md"]);
    views::write_views_changed(dir.path(), &state, Some(&plan), [&b]).unwrap();
    for (name, contents) in &full {
        assert_eq!(&read(name), contents, "{name}");
    }
}

/// A batch without batch-scope test counts shows the sum of its tickets'
/// latest counts; a failed gate run is "fixed" only by a later pass of
/// the same gate on the same ticket and phase, or the same batch.
#[test]
fn test_counts_and_fixes_follow_the_latest_run_of_each_gate() {
    let report = |gate: &str, tests: Option<(u64, u64)>, passed: bool| GateReport {
        gate: gate.into(),
        status: if passed {
            GateStatus::Passed
        } else {
            GateStatus::Failed
        },
        reason: String::new(),
        evidence: Evidence {
            tests: tests.map(|(passed, failed)| TestCounts {
                passed,
                failed,
                skipped: 0,
            }),
            ..Evidence::default()
        },
        duration_ms: 1,
        excerpt: String::new(),
        children: vec![],
    };
    let phase = |t: &str, p: &str, attempt: u32| GateScope::Phase {
        ticket: t.parse().unwrap(),
        phase: p.parse().unwrap(),
        attempt,
    };
    let batch = |b: &str| GateScope::Batch {
        batch: b.parse().unwrap(),
    };
    let runs = [
        (
            phase("INFRA-001", "implement", 1),
            report("cargo test", Some((3, 1)), false),
        ),
        // Another gate, and the same gate in another phase: no fix.
        (
            phase("INFRA-001", "implement", 1),
            report("lint", None, true),
        ),
        (
            phase("INFRA-001", "plan", 1),
            report("cargo test", Some((2, 0)), true),
        ),
        (
            phase("INFRA-001", "implement", 2),
            report("cargo test", Some((4, 0)), true),
        ),
        (
            phase("INFRA-004", "implement", 1),
            report("cargo test", Some((5, 2)), false),
        ),
        (batch("PR4"), report("lint", None, false)),
        (batch("PR4"), report("lint", None, true)),
        (batch("PR5"), report("lint", None, false)),
    ];
    let events: Vec<Event> = runs
        .into_iter()
        .enumerate()
        .map(|(i, (scope, report))| Event {
            id: EventId(i as u128 + 1),
            at: Timestamp(1_795_400_000_000 + i as u64),
            kind: EventKind::GateFinished {
                scope,
                report: Box::new(report),
            },
        })
        .collect();
    let v = views::render(&RunState::fold(&events), Some(&plan()));
    let s = &v["ORCHESTRATOR_STATE.md"];
    // INFRA-001's latest counts (4/4) and INFRA-004's (5/7).
    assert!(
        s.contains("| PR3 | data-layer | planning | PR3: 9/11 passed |"),
        "{s}"
    );
    assert!(s.contains("| PR2 | auth-hardening | planning | — |"), "{s}");
    let t = &v["TEST_RESULTS.md"];
    for row in [
        "| INFRA-001 implement #1 | cargo test | FAILED (fixed on attempt 2) | 3/4 passed |",
        "| INFRA-004 implement #1 | cargo test | FAILED | 5/7 passed |",
        "| batch PR4 | lint | FAILED (fixed later) | — |",
        "| batch PR5 | lint | FAILED | — |",
    ] {
        assert!(t.contains(row), "{row}\n{t}");
    }
}
