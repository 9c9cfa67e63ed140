//! A real agent: one ticket done by Claude Code (`claude -p --output-format
//! stream-json`) in a fresh Rust crate, checked by a real `cargo test` gate.
//!
//! Needs the `claude` command and an API key (or a `claude login`):
//!
//! ```text
//! npm install -g @anthropic-ai/claude-code
//! export ANTHROPIC_API_KEY=...
//! cargo run -p orch-examples --example claude_code
//! ```
//!
//! Without `claude` on the PATH it says how to install it and stops.
//! `ANTHROPIC_BASE_URL` is honoured, so a local stand-in API works too.

use std::process::Command;

use orch_core::{Cancellation, Plan};
use orch_examples::{Error, Setup, demo, open_store, plan_agents};

const PLAN: &str = r#"
name = "claude-demo"
default_role = "developer"

[agents.developer]
backend = { kind = "claude_code", model = "sonnet", max_turns = 20, permission_mode = "acceptEdits", allowed_tools = ["Read", "Edit", "Write", "Bash(cargo test:*)"] }
timeout_secs = 900

[[phases]]
name = "implement"
instructions = "Implement the ticket in src/lib.rs with unit tests. Run `cargo test` before you finish."
max_attempts = 2
on_exhausted = "fail"

[[phases.gates]]
kind = "tests"
argv = ["cargo", "test"]
format = "libtest"
min_tests = 3

[[tickets]]
id = "FIZZ-1"
title = "FizzBuzz"
effort = "15m"
description = "Add `pub fn fizzbuzz(n: u32) -> String` to the library."
acceptance_criteria = [
    "multiples of 3 give Fizz, of 5 give Buzz, of both give FizzBuzz, others the number",
    "at least three unit tests",
]
"#;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let plan = Plan::from_toml_str(PLAN)?;
    let version = Command::new("claude").arg("--version").output();
    match version {
        Ok(o) if o.status.success() => {
            println!(
                "Using Claude Code {}",
                String::from_utf8_lossy(&o.stdout).trim()
            );
        }
        _ => {
            println!(
                "This example drives the Claude Code CLI, and `claude` was not found on the PATH.\n\
                 Install it and give it a key, then run the example again:\n\n  \
                 npm install -g @anthropic-ai/claude-code\n  \
                 export ANTHROPIC_API_KEY=sk-ant-...   # or run `claude` once and log in\n  \
                 cargo run -p orch-examples --example claude_code\n\n\
                 The scripted examples need nothing: \
                 cargo run --release -p orch-examples --example production_readiness"
            );
            return Ok(());
        }
    }
    let root = std::env::temp_dir().join(format!("orch-claude-{}", std::process::id()));
    let repo = root.join("fizz");
    demo::init_repo(
        &repo,
        &[
            (".gitignore", "/target\n"),
            (
                "Cargo.toml",
                "[package]\nname = \"fizz\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
            ),
            ("src/lib.rs", "//! FizzBuzz.\n"),
        ],
    )?;
    let state_dir = root.join("state");
    let agent = plan_agents(&plan, &state_dir, &Default::default())?;
    let setup = Setup::new(plan, repo, &state_dir, agent);
    let report = setup
        .engine(open_store(&state_dir)?)?
        .run(&"claude-demo".parse()?, Cancellation::new())
        .await?;
    let t = &report.state.tickets["FIZZ-1"];
    println!(
        "{:?}: {} tokens, ${:.4}; transcripts in {}",
        report.outcome,
        t.usage.total_tokens(),
        t.usage.cost_usd,
        state_dir.join("transcripts").display()
    );
    Ok(())
}
