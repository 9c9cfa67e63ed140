//! The demo projects the bundled examples run on, and the scripted agents
//! that work on them.
//!
//! The agents are stand-ins for Claude Code or Codex: they really write
//! code and tests into the ticket's work tree, so the gates (real `cargo`
//! runs), the checkpoints and the merges see real changes. Their behaviour
//! is scripted to show the engine's paths: a failure fixed on retry with
//! the feedback, an escalation, a restart from an earlier phase.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use orch_agents::{ScriptedAgent, Step};
use orch_core::{AgentError, AgentErrorKind, AgentOutcome, AgentTask, Usage};

use crate::Error;

/// Runs git in `dir`.
///
/// # Errors
/// When git fails.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes `files` (relative path, contents) under `dir`.
fn write_files(dir: &Path, files: &[(String, String)]) -> Result<(), AgentError> {
    for (rel, text) in files {
        let path = dir.join(rel);
        let r = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        r.map_err(|e| {
            AgentError::new(AgentErrorKind::Crashed, format!("{}: {e}", path.display()))
        })?;
    }
    Ok(())
}

/// Creates a git repository in `dir` holding `files`, committed on `main`.
///
/// # Errors
/// When git fails.
pub fn init_repo(dir: &Path, files: &[(&str, &str)]) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let owned: Vec<(String, String)> = files
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    write_files(dir, &owned).map_err(|e| e.message)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    git(dir, &["add", "-A"])?;
    git(
        dir,
        &[
            "-c",
            "user.name=orch demo",
            "-c",
            "user.email=demo@localhost",
            "commit",
            "-q",
            "-m",
            "Initial commit",
        ],
    )?;
    Ok(())
}

fn done(summary: String, usage: Usage) -> Result<AgentOutcome, AgentError> {
    Ok(AgentOutcome {
        success: true,
        summary,
        usage,
        ..AgentOutcome::default()
    })
}

fn snake(id: &str) -> String {
    id.to_lowercase().replace(['-', '.'], "_")
}

// ------------------------------------------------------------------------
// Scenario 1: production readiness of a web backend.

/// The web backend of scenario 1: a small Rust crate with a `--check`
/// start-up probe, a unit test and an integration test.
pub const BACKEND_FILES: &[(&str, &str)] = &[
    (".gitignore", "/target\n"),
    (
        "Cargo.toml",
        "[package]\nname = \"shop-backend\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    ),
    (
        "src/lib.rs",
        "//! The shop's web backend.\n\n/// The health probe's answer.\npub fn health() -> &'static str {\n    \"ok\"\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn health_is_ok() {\n        assert_eq!(super::health(), \"ok\");\n    }\n}\n",
    ),
    (
        "src/main.rs",
        "fn main() {\n    if std::env::args().any(|a| a == \"--check\") {\n        println!(\"{}\", shop_backend::health());\n        return;\n    }\n    println!(\"shop-backend: listening (demo)\");\n}\n",
    ),
    (
        "tests/smoke.rs",
        "#[test]\nfn the_backend_is_healthy() {\n    assert_eq!(shop_backend::health(), \"ok\");\n}\n",
    ),
];

/// The ticket that fails its test gate once and is fixed on retry.
pub const RETRIED: &str = "INFRA-006";
/// The ticket whose agent asks for a decision (escalated, then approved).
pub const ESCALATED: &str = "SEC-006";

/// The change and the test a ticket's agent writes.
fn ticket_change(task: &AgentTask, body: &str, test: &str) -> Vec<(String, String)> {
    let id = task.ticket.id.as_str();
    let s = snake(id);
    vec![
        (
            format!("src/changes/{s}.rs"),
            format!("//! {id}: {}\n\n{body}", task.ticket.title),
        ),
        (
            format!("tests/{s}.rs"),
            format!("#[path = \"../src/changes/{s}.rs\"]\nmod change;\n\n{test}"),
        ),
    ]
}

/// The agent of scenario 1. Every ticket gets a change and a test; the
/// retry-logic ticket ([`RETRIED`]) first gets its backoff wrong, and fixes
/// it only when shown the failing test; the key-rotation ticket
/// ([`ESCALATED`]) does its work but reports that it needs a person's
/// decision, every time.
pub fn backend_agent() -> Arc<ScriptedAgent> {
    let usage = Usage {
        input_tokens: 18_000,
        output_tokens: 2_400,
        cost_usd: 0.09,
    };
    let step = Step::Run(Arc::new(move |task: &AgentTask| {
        let id = task.ticket.id.as_str();
        let files = if id == RETRIED {
            let fixed = task.feedback.iter().any(|f| f.contains("backoff_doubles"));
            if task.attempt > 1 && !fixed {
                return Ok(AgentOutcome {
                    success: false,
                    summary: "retried without being told what failed".into(),
                    usage,
                    ..AgentOutcome::default()
                });
            }
            let exp = if fixed { "attempt" } else { "attempt - 1" };
            ticket_change(
                task,
                &format!(
                    "/// Milliseconds to wait before retry `attempt` (1-based).\npub fn backoff_ms(attempt: u32) -> u64 {{\n    100 * 2u64.pow({exp})\n}}\n"
                ),
                "#[test]\nfn backoff_doubles() {\n    assert_eq!(change::backoff_ms(1), 200);\n    assert_eq!(change::backoff_ms(3), 800);\n}\n",
            )
        } else {
            ticket_change(
                task,
                &format!(
                    "/// The ticket this change implements.\npub const TICKET: &str = \"{id}\";\n\n/// Whether the change is in.\npub fn applied() -> bool {{\n    true\n}}\n"
                ),
                &format!(
                    "#[test]\nfn {}_is_applied() {{\n    assert_eq!(change::TICKET, \"{id}\");\n    assert!(change::applied());\n}}\n",
                    snake(id)
                ),
            )
        };
        write_files(&task.workdir, &files)?;
        if id == ESCALATED {
            return Ok(AgentOutcome {
                success: false,
                summary: "Wrote the key rotation runbook with a 90-day period, but the period is a policy decision: please confirm 90 days (or ask for 30).".into(),
                usage,
                ..AgentOutcome::default()
            });
        }
        done(
            format!("{id}: wrote src/changes/{0}.rs and tests/{0}.rs", snake(id)),
            usage,
        )
    }));
    Arc::new(ScriptedAgent::new("scripted", step))
}

// ------------------------------------------------------------------------
// Scenario 2: one ticket through seven phases.

/// The crate of scenario 2: a price quote service with its first function.
pub const QUOTE_FILES: &[(&str, &str)] = &[
    (".gitignore", "/target\n"),
    (
        "Cargo.toml",
        "[package]\nname = \"quote-service\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    ),
    (
        "src/lib.rs",
        "//! Price quotes.\n\n/// The price of `sku` in cents, if it is known.\npub fn quote(sku: &str) -> Option<u64> {\n    match sku {\n        \"tea\" => Some(350),\n        \"coffee\" => Some(420),\n        _ => None,\n    }\n}\n",
    ),
];

const PLAN_DOC: &str = "# Plan for QUOTE-001\n\n## Public interfaces\n\n- `quote_service::limiter::Limiter::new(per_second: u32) -> Limiter`\n- `Limiter::allow(&mut self, client: &str, now_ms: u64) -> bool`\n\n## Files\n\n- src/limiter.rs\n- tests/limiter.rs\n\n## Threats\n\n| threat | impact | mitigation |\n|---|---|---|\n| one client floods the endpoint | others are starved | per-client limit of 10 per second |\n";

const LIMITER_TESTS: &str = "use quote_service::limiter::Limiter;\n\n#[test]\nfn allows_ten_per_second() {\n    let mut l = Limiter::new(10);\n    for i in 0..10 {\n        assert!(l.allow(\"a\", i), \"request {i}\");\n    }\n    assert!(!l.allow(\"a\", 10));\n}\n\n#[test]\nfn clients_are_limited_apart() {\n    let mut l = Limiter::new(1);\n    assert!(l.allow(\"a\", 0));\n    assert!(l.allow(\"b\", 0));\n    assert!(!l.allow(\"a\", 1));\n}\n\n#[test]\nfn the_window_moves_on() {\n    let mut l = Limiter::new(1);\n    assert!(l.allow(\"a\", 0));\n    assert!(l.allow(\"a\", 1000));\n}\n";

const LIB_WITH_LIMITER: &str = "//! Price quotes.\n\npub mod limiter;\n\n/// The price of `sku` in cents, if it is known.\npub fn quote(sku: &str) -> Option<u64> {\n    match sku {\n        \"tea\" => Some(350),\n        \"coffee\" => Some(420),\n        _ => None,\n    }\n}\n";

fn limiter(window_check: &str) -> String {
    format!(
        "//! A per-client rate limiter over one-second windows.\n\nuse std::collections::HashMap;\n\n/// Allows each client `per_second` requests per second.\npub struct Limiter {{\n    per_second: u32,\n    windows: HashMap<String, (u64, u32)>,\n}}\n\nimpl Limiter {{\n    /// A limiter allowing `per_second` requests per client per second.\n    pub fn new(per_second: u32) -> Limiter {{\n        Limiter {{\n            per_second,\n            windows: HashMap::new(),\n        }}\n    }}\n\n    /// Whether `client` may make a request at `now_ms`.\n    pub fn allow(&mut self, client: &str, now_ms: u64) -> bool {{\n        let window = now_ms / 1000;\n        let entry = self.windows.entry(client.to_owned()).or_insert((window, 0));\n        if {window_check} {{\n            *entry = (window, 0);\n        }}\n        if entry.1 >= self.per_second {{\n            return false;\n        }}\n        entry.1 += 1;\n        true\n    }}\n}}\n"
    )
}

const STUB_LIMITER: &str = "//! A per-client rate limiter over one-second windows.\n\n/// Allows each client `per_second` requests per second.\npub struct Limiter {\n    per_second: u32,\n}\n\nimpl Limiter {\n    /// A limiter allowing `per_second` requests per client per second.\n    pub fn new(per_second: u32) -> Limiter {\n        Limiter { per_second }\n    }\n\n    /// Whether `client` may make a request at `now_ms`.\n    pub fn allow(&mut self, client: &str, now_ms: u64) -> bool {\n        let _ = (client, now_ms);\n        self.per_second > 0\n    }\n}\n";

/// The ADR of scenario 2 (about 400 words).
fn adr() -> String {
    let mut s = String::from(
        "# ADR QUOTE-001: a per-client limit in front of the quote endpoint\n\n## Context\n\n",
    );
    let context = "The quote endpoint answers the current price of a product. It is cheap to call and it is called often, by our own pages and by partners. A single partner that loops on the endpoint can starve everyone else, and the endpoint has a latency target of one hundred milliseconds at the ninety-ninth percentile at two hundred requests per second. We need a limit that is fair between clients, that costs almost nothing per request, and that tells a client when it may try again.";
    let decision = "We count requests per client in one-second windows and allow ten per window. A request over the limit is answered with status 429 and a retry-after header that names the start of the next window. The counter lives in memory, in a map from client to window and count, so the check costs one lookup. We chose fixed windows over a token bucket because they are simpler to explain to partners and to test, and the burst they allow at a window edge is small at ten requests.";
    let consequences = "Clients that stay under ten requests per second see no change. A client that bursts is told exactly when to come back, which keeps well-behaved retry loops from making things worse. The latency of the endpoint stays well under the target: the measured p99 latency is forty-one milliseconds at two hundred requests per second, and the limiter adds under a microsecond. Counters are per process, so with several workers the real limit is ten per worker; we accept this for now and will move the counters to the shared cache if partners learn to spread their calls.";
    let alternatives = "A token bucket would smooth bursts better but needs a refill rate and a capacity to tune. A limit at the load balancer would protect every endpoint at once, but it cannot tell our partners apart by their keys, and it would answer without the retry-after header that partners asked for. No limit at all was rejected: one partner already caused an outage last quarter.";
    for (title, text) in [
        ("", context),
        ("## Decision\n\n", decision),
        ("## Consequences\n\n", consequences),
        ("## Alternatives\n\n", alternatives),
    ] {
        s.push_str(title);
        s.push_str(text);
        s.push_str("\n\n");
    }
    s
}

/// The agent of scenario 2. It plans, writes tests, scaffolds, implements
/// (wrong twice, so the pipeline restarts from planning with the feedback
/// file, then right), models threats, measures and documents.
pub fn quote_agent() -> Arc<ScriptedAgent> {
    let implementations = Arc::new(AtomicU32::new(0));
    let usage = Usage {
        input_tokens: 25_000,
        output_tokens: 4_000,
        cost_usd: 0.21,
    };
    let step = Step::Run(Arc::new(move |task: &AgentTask| {
        let id = task.ticket.id.as_str();
        let files: Vec<(String, String)> = match task.phase.as_str() {
            "planning" => {
                let feedback = task
                    .workdir
                    .join(format!("docs/feedback/{id}-implementation.md"));
                let mut plan = PLAN_DOC.to_owned();
                if feedback.exists() {
                    plan.push_str("\n## Lessons from the last cycle\n\nThe window must restart when a new second begins, not only when the client is new (see the feedback file).\n");
                }
                vec![(format!("docs/plan/{id}.md"), plan)]
            }
            // Tests must compile, so the interfaces they name come as stubs.
            "test-definition" | "scaffolding" => vec![
                ("tests/limiter.rs".into(), LIMITER_TESTS.into()),
                ("src/lib.rs".into(), LIB_WITH_LIMITER.into()),
                ("src/limiter.rs".into(), STUB_LIMITER.into()),
            ],
            "implementation" => {
                // The first cycle's two attempts forget to move the window on.
                let n = implementations.fetch_add(1, Ordering::SeqCst);
                let check = if n < 2 {
                    "entry.0 > window"
                } else {
                    "entry.0 != window"
                };
                vec![("src/limiter.rs".into(), limiter(check))]
            }
            "security" => vec![(
                format!("docs/security/{id}.md"),
                "# Threat model for QUOTE-001\n\n## Threats\n\n| threat | severity | status |\n|---|---|---|\n| flooding by one client | high | mitigated by the per-client limit |\n| client id spoofing | medium | ids come from the authenticated key |\n| price cache admin endpoint reachable without auth | critical | open |\n".into(),
            )],
            "telemetry" => vec![(
                "target/perf.json".into(),
                "{\"p50_ms\": 3.1, \"p99_ms\": 41.0, \"rps\": 200}\n".into(),
            )],
            "documentation" => vec![(format!("docs/adr/ADR-{id}.md"), adr())],
            other => {
                return Err(AgentError::new(
                    AgentErrorKind::Config,
                    format!("no script for phase {other}"),
                ));
            }
        };
        write_files(&task.workdir, &files)?;
        done(
            format!(
                "{}: wrote {}",
                task.phase,
                files
                    .iter()
                    .map(|f| f.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            usage,
        )
    }));
    Arc::new(ScriptedAgent::new("scripted", step))
}

/// Whether `cargo llvm-cov` is installed (the seven-phase plan's coverage
/// gate needs it).
pub fn has_llvm_cov() -> bool {
    Command::new("cargo")
        .args(["llvm-cov", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Leaves the plan's coverage gates out when `cargo llvm-cov` is not
/// installed; says whether it did.
pub fn drop_coverage_gates_without_llvm_cov(plan: &mut orch_core::Plan) -> bool {
    if has_llvm_cov() {
        return false;
    }
    drop_coverage_gates(plan);
    true
}

/// Leaves the plan's coverage gates out.
pub fn drop_coverage_gates(plan: &mut orch_core::Plan) {
    for p in &mut plan.phases {
        p.gates
            .retain(|g| !matches!(g, orch_core::GateSpec::Coverage(_)));
    }
}
