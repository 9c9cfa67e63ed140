//! Breaker, retries, shared rate-limit pauses, admission, routing, budget.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use orch_agents::{Backend, BreakerConfig, BreakerState, RetryConfig, Router, ScriptedAgent, Step};
use orch_core::{Agent, AgentContext, AgentError, AgentErrorKind, AgentOutcome, AgentTask, Usage};

mod common;

fn task(ticket: &str) -> AgentTask {
    common::task(ticket, "p", "dev", "", &std::env::temp_dir())
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        retries: 3,
        base: Duration::from_millis(10),
        max: Duration::from_millis(50),
    }
}

/// An agent whose n-th call (0-based) does `f(n)`.
fn counting(
    f: impl Fn(u32) -> Result<AgentOutcome, AgentError> + Send + Sync + 'static,
) -> (Arc<dyn Agent>, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let agent = ScriptedAgent::new(
        "fake",
        Step::Run(Arc::new(move |_| f(c.fetch_add(1, Ordering::SeqCst)))),
    );
    (Arc::new(agent), calls)
}

fn ok(cost: f64) -> Result<AgentOutcome, AgentError> {
    Ok(AgentOutcome {
        success: true,
        usage: Usage {
            input_tokens: 100,
            output_tokens: 10,
            cost_usd: cost,
        },
        ..Default::default()
    })
}

fn err(kind: AgentErrorKind) -> Result<AgentOutcome, AgentError> {
    Err(AgentError::new(kind, format!("{kind:?}")))
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() {
    let (agent, calls) = counting(|n| {
        if n < 5 {
            err(AgentErrorKind::Crashed)
        } else {
            ok(0.0)
        }
    });
    let b = Backend::new(
        "x",
        agent,
        4,
        BreakerConfig {
            failures: 5,
            cooldown: Duration::from_millis(300),
        },
        fast_retry(),
    );
    let ctx = AgentContext::detached();
    for _ in 0..5 {
        assert_eq!(
            b.run(task("T-1"), &ctx).await.unwrap_err().kind,
            AgentErrorKind::Crashed
        );
    }
    assert_eq!(b.breaker().state(), BreakerState::Open);
    let e = b.run(task("T-1"), &ctx).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Unavailable);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "an open circuit does not call the agent"
    );
    tokio::time::sleep(Duration::from_millis(299)).await;
    assert_eq!(
        b.breaker().state(),
        BreakerState::Open,
        "still cooling down"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(b.breaker().state(), BreakerState::HalfOpen);
    assert!(
        b.run(task("T-1"), &ctx).await.is_ok(),
        "the probe goes through"
    );
    assert_eq!(b.breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn overloaded_is_retried_other_errors_fail_fast() {
    let (agent, calls) = counting(|n| {
        if n < 2 {
            err(AgentErrorKind::Overloaded)
        } else {
            ok(0.5)
        }
    });
    let b = Backend::new("x", agent, 4, BreakerConfig::default(), fast_retry());
    assert!(b.run(task("T-1"), &AgentContext::detached()).await.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (agent, calls) = counting(|_| err(AgentErrorKind::Auth));
    let b = Backend::new("x", agent, 4, BreakerConfig::default(), fast_retry());
    assert_eq!(
        b.run(task("T-1"), &AgentContext::detached())
            .await
            .unwrap_err()
            .kind,
        AgentErrorKind::Auth
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "4xx other than 429: no retry"
    );

    let (agent, calls) = counting(|_| err(AgentErrorKind::Overloaded));
    let b = Backend::new(
        "x",
        agent,
        4,
        BreakerConfig {
            failures: 100,
            ..Default::default()
        },
        fast_retry(),
    );
    assert_eq!(
        b.run(task("T-1"), &AgentContext::detached())
            .await
            .unwrap_err()
            .kind,
        AgentErrorKind::Overloaded
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4, "1 call + 3 retries");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_pauses_every_task_of_the_backend() {
    let times: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let t = times.clone();
    let agent = ScriptedAgent::new(
        "fake",
        Step::Run(Arc::new(move |task: &AgentTask| {
            let mut v = t.lock().unwrap();
            let first_a = task.ticket.id.as_str() == "A" && !v.iter().any(|(n, _)| n == "A");
            v.push((task.ticket.id.to_string(), Instant::now()));
            if first_a {
                let mut e = AgentError::new(AgentErrorKind::RateLimited, "429");
                e.retry_after = Some(Duration::from_millis(500));
                Err(e)
            } else {
                ok(0.0)
            }
        })),
    );
    let b = Arc::new(Backend::new(
        "x",
        Arc::new(agent),
        4,
        BreakerConfig::default(),
        fast_retry(),
    ));
    let start = Instant::now();
    let a = {
        let b = b.clone();
        tokio::spawn(async move { b.run(task("A"), &AgentContext::detached()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bb = {
        let b = b.clone();
        tokio::spawn(async move { b.run(task("B"), &AgentContext::detached()).await })
    };
    assert!(a.await.unwrap().is_ok() && bb.await.unwrap().is_ok());
    let v = times.lock().unwrap();
    let b_call = v.iter().find(|(n, _)| n == "B").unwrap().1;
    assert!(
        b_call.duration_since(start) >= Duration::from_millis(500),
        "B waited for A's retry-after: {:?}",
        b_call.duration_since(start)
    );
    let a_retry = v.iter().filter(|(n, _)| n == "A").nth(1).unwrap().1;
    assert!(a_retry.duration_since(start) >= Duration::from_millis(500));
}

/// An agent that takes 100 ms (of tokio time) a run and counts how many
/// of its runs overlap.
struct Overlapping {
    running: AtomicU32,
    peak: AtomicU32,
}

#[async_trait::async_trait]
impl Agent for Overlapping {
    fn backend(&self) -> &str {
        "fake"
    }
    async fn run(&self, _: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        ok(0.0)
    }
}

#[tokio::test(start_paused = true)]
async fn admission_limits_concurrent_runs() {
    let agent = Arc::new(Overlapping {
        running: AtomicU32::new(0),
        peak: AtomicU32::new(0),
    });
    let b = Arc::new(Backend::new(
        "x",
        agent.clone(),
        2,
        BreakerConfig::default(),
        fast_retry(),
    ));
    let mut hs = Vec::new();
    for i in 0..6 {
        let b = b.clone();
        hs.push(tokio::spawn(async move {
            b.run(task(&format!("T-{i}")), &AgentContext::detached())
                .await
        }));
    }
    for h in hs {
        h.await.unwrap().unwrap();
    }
    assert_eq!(agent.peak.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_circuit_routes_to_the_fallback_role_and_the_ledger_counts_both() {
    let (down, _) = counting(|_| err(AgentErrorKind::Overloaded));
    let (up, up_calls) = counting(|_| ok(0.6));
    let role = |s: &str| -> orch_core::RoleName { s.parse().unwrap() };
    let backends = BTreeMap::from([
        (
            role("security"),
            Arc::new(Backend::new(
                "security",
                down,
                2,
                BreakerConfig {
                    failures: 2,
                    cooldown: Duration::from_secs(60),
                },
                RetryConfig {
                    retries: 0,
                    ..fast_retry()
                },
            )),
        ),
        (
            role("generalist"),
            Arc::new(Backend::new(
                "generalist",
                up,
                2,
                BreakerConfig::default(),
                fast_retry(),
            )),
        ),
    ]);
    let router = Router::new(
        backends,
        BTreeMap::from([(role("security"), role("generalist"))]),
    );
    let ctx = AgentContext::detached();
    // The first failure is the attempt's: the circuit is still closed.
    assert_eq!(
        router
            .run(&role("security"), task("SEC-1"), &ctx)
            .await
            .unwrap_err()
            .kind,
        AgentErrorKind::Overloaded
    );
    // The second opens it: the same call goes on on the fallback.
    let (used, out) = router
        .run(&role("security"), task("SEC-1"), &ctx)
        .await
        .unwrap();
    assert_eq!(
        used,
        role("generalist"),
        "the failure that opens the circuit sends the task to the fallback"
    );
    assert!(out.success);
    assert_eq!(up_calls.load(Ordering::SeqCst), 1);
    router
        .run(&role("security"), task("SEC-2"), &ctx)
        .await
        .unwrap();
    let ledger = router.ledger();
    assert_eq!(ledger.per_role[&role("generalist")].input_tokens, 200);
    assert_eq!(ledger.per_ticket.len(), 2);
}

#[tokio::test]
async fn prices_fill_in_the_cost_a_backend_does_not_report() {
    let prices = serde_json::json!({"input_per_mtok": 1.25, "output_per_mtok": 10.0});
    let plan: orch_core::Plan = serde_json::from_value(serde_json::json!({
        "name": "p", "default_role": "dev",
        "agents": {
            "dev": {"backend": {"kind": "custom", "name": "tokens-only"}, "prices": prices},
            "priced": {"backend": {"kind": "custom", "name": "reports-cost"}, "prices": prices}
        },
        "phases": [{"name": "work"}],
        "tickets": [{"id": "T-1", "title": "t", "effort": "1h"}]
    }))
    .unwrap();
    let (tokens_only, _) = counting(|_| ok(0.0));
    let (reports_cost, _) = counting(|_| ok(0.5));
    let custom = std::collections::HashMap::from([
        ("tokens-only".to_owned(), tokens_only),
        ("reports-cost".to_owned(), reports_cost),
    ]);
    let router = Router::from_plan(&plan, &Default::default(), &custom).unwrap();
    let ctx = AgentContext::detached();
    let role = |s: &str| -> orch_core::RoleName { s.parse().unwrap() };
    let (_, out) = router.run(&role("dev"), task("T-1"), &ctx).await.unwrap();
    // 100 input and 10 output tokens at $1.25 and $10 per million.
    assert!(
        (out.usage.cost_usd - 0.000_225).abs() < 1e-12,
        "{:?}",
        out.usage
    );
    let (_, out) = router
        .run(&role("priced"), task("T-1"), &ctx)
        .await
        .unwrap();
    assert_eq!(out.usage.cost_usd, 0.5, "a reported cost is kept");
    assert!((router.ledger().total.cost_usd - 0.500_225).abs() < 1e-12);
}

#[test]
fn a_role_can_run_when_its_backend_or_a_fallback_can() {
    let plan: orch_core::Plan = serde_json::from_value(serde_json::json!({
        "name": "p", "default_role": "dev",
        "agents": {
            "dev": {"backend": {"kind": "command", "argv": ["no-such-dev-orch"]}, "fallback": "spare"},
            "spare": {"backend": {"kind": "command", "argv": ["sh"]}},
            "lone": {"backend": {"kind": "command", "argv": ["no-such-lone-orch"]}, "fallback": "broken"},
            "broken": {"backend": {"kind": "command", "argv": ["no-such-broken-orch"]}, "fallback": "lone"}
        },
        "phases": [{"name": "work"}],
        "tickets": [{"id": "T-1", "title": "t", "effort": "1h"}]
    }))
    .unwrap();
    let router = Router::from_plan(&plan, &Default::default(), &Default::default()).unwrap();
    let role = |s: &str| -> orch_core::RoleName { s.parse().unwrap() };
    router.check(&role("dev")).unwrap();
    router.check(&role("spare")).unwrap();
    // The check marks dev as running on its fallback: its first task goes
    // there without trying the missing program.
    assert_eq!(router.route(&role("dev")).unwrap().0, role("spare"));
    assert_eq!(router.backend_for(&role("dev")), "command");
    // A cycle of fallbacks that cannot run ends, naming each once.
    let e = router.check(&role("lone")).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Spawn);
    assert_eq!(
        e.message,
        "no-such-lone-orch is not installed or not on PATH; its fallback broken: \
         no-such-broken-orch is not installed or not on PATH"
    );
    let e = router.check(&role("nobody")).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Config);
}

/// A primary that cannot run at all (its CLI is not installed, its key
/// refused) hands the task to its fallback in the same call: the fallback
/// runs on the first attempt, and later tasks go straight to it while the
/// primary's circuit is open. Without a fallback, the primary's own error
/// is what the caller sees.
#[tokio::test]
async fn a_primary_that_cannot_run_falls_back_at_once() {
    let role = |s: &str| -> orch_core::RoleName { s.parse().unwrap() };
    for kind in [
        AgentErrorKind::Spawn,
        AgentErrorKind::Auth,
        AgentErrorKind::Config,
    ] {
        let (missing, missing_calls) = counting(move |_| err(kind));
        let (up, up_calls) = counting(|_| ok(0.1));
        let backend = |name: &str, agent| {
            Arc::new(Backend::new(
                name,
                agent,
                2,
                BreakerConfig::default(),
                fast_retry(),
            ))
        };
        let router = Router::new(
            BTreeMap::from([
                (role("dev"), backend("claude", missing)),
                (role("backup"), backend("codex", up)),
            ]),
            BTreeMap::from([(role("dev"), role("backup"))]),
        );
        let ctx = AgentContext::detached();
        let (used, out) = router.run(&role("dev"), task("T-1"), &ctx).await.unwrap();
        assert_eq!(
            used,
            role("backup"),
            "{kind:?}: the first attempt ran on the fallback"
        );
        assert!(out.success);
        router.run(&role("dev"), task("T-2"), &ctx).await.unwrap();
        assert_eq!(
            missing_calls.load(Ordering::SeqCst),
            1,
            "{kind:?}: not retried, not asked again"
        );
        assert_eq!(up_calls.load(Ordering::SeqCst), 2);
    }
    let (missing, _) = counting(|_| err(AgentErrorKind::Spawn));
    let alone = Router::new(
        BTreeMap::from([(
            role("dev"),
            Arc::new(Backend::new(
                "claude",
                missing,
                2,
                BreakerConfig::default(),
                fast_retry(),
            )),
        )]),
        BTreeMap::new(),
    );
    let e = alone
        .run(&role("dev"), task("T-1"), &AgentContext::detached())
        .await
        .unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Spawn, "{e}");
}

/// The failure that opens the circuit is returned as itself, at once (no
/// backoff, no "unavailable"); and an agent that runs but reports it did
/// not finish counts against its backend, so a command backend that
/// keeps failing reaches its fallback too.
#[tokio::test]
async fn the_opening_failure_is_reported_as_itself_and_reported_failures_count() {
    let breaker = BreakerConfig {
        failures: 2,
        cooldown: Duration::from_secs(60),
    };
    let (storm, calls) = counting(|_| err(AgentErrorKind::Overloaded));
    let b = Backend::new("x", storm, 1, breaker, fast_retry());
    let e = b
        .run(task("T-1"), &AgentContext::detached())
        .await
        .unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Overloaded, "{e}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "retried until the circuit opened, no further"
    );
    assert_eq!(b.breaker().state(), BreakerState::Open);

    let (gives_up, _) = counting(|_| {
        Ok(AgentOutcome {
            success: false,
            summary: "exit status 1".into(),
            ..Default::default()
        })
    });
    let b = Backend::new("cmd", gives_up, 1, breaker, fast_retry());
    for _ in 0..2 {
        assert!(
            !b.run(task("T-1"), &AgentContext::detached())
                .await
                .unwrap()
                .success
        );
    }
    assert_eq!(b.breaker().state(), BreakerState::Open);
}

/// A role's breaker is what its spec says; without one it opens after as
/// many failures in a row as a phase has attempts (at most 5), so a
/// backend that fails every attempt reaches its fallback in time.
#[tokio::test]
async fn a_roles_breaker_follows_its_spec_or_the_phases_attempts() {
    let plan = orch_core::Plan::from_toml_str(
        r#"
name = "p"
default_role = "dev"
[policy]
max_attempts = 3
[agents.dev]
backend = { kind = "custom", name = "x" }
[agents.ops]
backend = { kind = "custom", name = "x" }
breaker = { failures = 2, cooldown_secs = 120 }
[[phases]]
name = "work"
[[tickets]]
id = "T-1"
title = "t"
effort = "1h"
"#,
    )
    .unwrap();
    let (down, _) = counting(|_| err(AgentErrorKind::Crashed));
    let custom = std::collections::HashMap::from([("x".to_owned(), down)]);
    let router = Router::from_plan(&plan, &orch_agents::AgentDefaults::default(), &custom).unwrap();
    let ctx = AgentContext::detached();
    for (role, opens_after) in [("dev", 3), ("ops", 2)] {
        let role: orch_core::RoleName = role.parse().unwrap();
        let b = router.backend(&role).unwrap();
        for n in 1..=opens_after {
            assert_eq!(
                b.breaker().state(),
                BreakerState::Closed,
                "{role}: before failure {n}"
            );
            let _ = b.run(task("T-1"), &ctx).await;
        }
        assert_eq!(b.breaker().state(), BreakerState::Open, "{role}");
    }
    let bad = orch_core::Plan::from_toml_str(
        "name = \"p\"\ndefault_role = \"dev\"\n[agents.dev]\nbackend = { kind = \"custom\", name = \"x\" }\nbreaker = { failures = 0 }\n[[phases]]\nname = \"w\"\n[[tickets]]\nid = \"T-1\"\ntitle = \"t\"\neffort = \"1h\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("agents.dev.breaker.failures: must be at least 1"),
        "{bad}"
    );
    // More failures than a phase has attempts: the phase would escalate
    // before the fallback is ever tried.
    let above = orch_core::Plan::from_toml_str(
        "name = \"p\"\ndefault_role = \"dev\"\n[agents.dev]\nbackend = { kind = \"custom\", name = \"x\" }\nbreaker = { failures = 4 }\n[[phases]]\nname = \"w\"\nmax_attempts = 3\n[[tickets]]\nid = \"T-1\"\ntitle = \"t\"\neffort = \"1h\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        above.contains("agents.dev.breaker.failures: 4 is more than the 3 attempts of phase \"w\""),
        "{above}"
    );
}

/// What the primary spent before it failed over counts with what the
/// fallback spent: the outcome carries both (the run's budget sees it).
/// And a session made by one backend is not handed to another.
#[tokio::test]
async fn a_fallback_outcome_carries_the_whole_chains_spend_and_sessions_stay_put() {
    let role = |s: &str| -> orch_core::RoleName { s.parse().unwrap() };
    // Each agent notes the session it was asked to resume.
    let asked = |seen: &Arc<Mutex<Vec<Option<String>>>>| {
        let seen = seen.clone();
        move |t: &AgentTask| seen.lock().unwrap().push(t.resume.clone())
    };
    let (down_saw, up_saw) = (Arc::default(), Arc::default());
    let note = asked(&down_saw);
    let down = ScriptedAgent::new(
        "down",
        Step::Run(Arc::new(move |t: &AgentTask| {
            note(t);
            let mut e = AgentError::new(AgentErrorKind::Auth, "key refused");
            e.usage = Usage {
                input_tokens: 1000,
                output_tokens: 0,
                cost_usd: 0.25,
            };
            Err(e)
        })),
    );
    let note = asked(&up_saw);
    let up = ScriptedAgent::new(
        "up",
        Step::Run(Arc::new(move |t: &AgentTask| {
            note(t);
            let mut o = ok(0.5)?;
            o.session_id = Some("up-session".into());
            Ok(o)
        })),
    );
    // No cool-down: the primary is asked again (a probe) on the next call.
    let backend = |name: &str, agent: ScriptedAgent| {
        Arc::new(Backend::new(
            name,
            Arc::new(agent),
            2,
            BreakerConfig {
                failures: 1,
                cooldown: Duration::ZERO,
            },
            fast_retry(),
        ))
    };
    let router = Router::new(
        BTreeMap::from([
            (role("dev"), backend("claude", down)),
            (role("backup"), backend("codex", up)),
        ]),
        BTreeMap::from([(role("dev"), role("backup"))]),
    );
    let ctx = AgentContext::detached();
    let (used, out) = router.run(&role("dev"), task("T-1"), &ctx).await.unwrap();
    assert_eq!(used, role("backup"));
    assert_eq!(
        out.usage.input_tokens, 1100,
        "the primary's tokens count too"
    );
    assert!((out.usage.cost_usd - 0.75).abs() < 1e-12, "{:?}", out.usage);
    // The retry resumes the session the fallback made: the primary (asked
    // first again) is not given it, the fallback is.
    let mut again = task("T-1");
    again.resume = Some("up-session".into());
    router.run(&role("dev"), again, &ctx).await.unwrap();
    assert_eq!(down_saw.lock().unwrap().as_slice(), [None, None]);
    assert_eq!(
        up_saw.lock().unwrap().as_slice(),
        [None, Some("up-session".to_owned())]
    );
}

/// A `retry-after` of an hour pauses the backend for at most
/// `LONGEST_PAUSE`.
#[tokio::test(start_paused = true)]
async fn a_retry_after_is_capped() {
    let (agent, calls) = counting(|n| {
        if n == 0 {
            let mut e = AgentError::new(AgentErrorKind::RateLimited, "429");
            e.retry_after = Some(Duration::from_secs(3600));
            Err(e)
        } else {
            ok(0.0)
        }
    });
    let b = Backend::new("x", agent, 1, BreakerConfig::default(), fast_retry());
    let start = Instant::now();
    b.run(task("T-1"), &AgentContext::detached()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), orch_agents::LONGEST_PAUSE);
}
