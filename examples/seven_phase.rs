//! Scenario 2: one ticket through the seven-phase pipeline.
//!
//! Creates a small Rust crate (a price quote service) in a temporary git
//! repository and runs `plans/seven-phase.toml` on it with a scripted
//! agent: planning, test definition, scaffolding, implementation, security,
//! telemetry and documentation, each checked by real gates (`cargo test`,
//! `cargo clippy`, `cargo fmt`, file and word-count checks, forbidden
//! patterns, a latency metric) and each ending in a checkpoint commit. The
//! implementation is wrong twice, so the pipeline writes
//! `docs/feedback/QUOTE-001-implementation.md` and restarts from planning;
//! the second cycle passes.
//!
//! The plan's coverage gate needs `cargo llvm-cov`; when it is not
//! installed the example says so and leaves that gate out.
//!
//! ```text
//! cargo run --release -p orch-examples --example seven_phase
//! ```

use std::path::Path;

use orch_core::{Cancellation, Plan, RunOutcome};
use orch_examples::{Error, Setup, demo, open_store};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/seven-phase.toml");
    let mut plan = Plan::from_path(&path)?;
    if demo::drop_coverage_gates_without_llvm_cov(&mut plan) {
        println!(
            "note: `cargo llvm-cov` is not installed, so the coverage gate is left out \
             (install it with `cargo install cargo-llvm-cov` and `rustup component add llvm-tools`)."
        );
    }
    let root = tempfile_dir()?;
    let repo = root.join("quote-service");
    demo::init_repo(&repo, demo::QUOTE_FILES)?;
    let state_dir = root.join("state");
    println!(
        "Repository: {}\nState:      {}\n",
        repo.display(),
        state_dir.display()
    );

    let setup = Setup::new(plan, &repo, &state_dir, demo::quote_agent());
    let store = open_store(&state_dir)?;
    let run = "seven-phase-demo".parse()?;
    let report = setup.engine(store)?.run(&run, Cancellation::new()).await?;

    let t = &report.state.tickets["QUOTE-001"];
    println!("\n== QUOTE-001: {:?}", t.status);
    println!(
        "restarts: {}; failed attempts: {}; tests: {}",
        t.restarts,
        t.metrics.failed_attempts,
        t.metrics.tests_ran.unwrap_or(0)
    );
    for phase in &t.phases_passed {
        println!(
            "{:<16} checkpoint {}  {} ms",
            phase.as_str(),
            t.checkpoints
                .get(phase)
                .map_or("-", |c| &c[..c.len().min(10)]),
            t.metrics.phase_ms.get(phase).copied().unwrap_or(0)
        );
    }
    let log = demo::git(
        &repo,
        &["log", "--oneline", "orch/seven-phase-demo/QUOTE-001"],
    )?;
    println!("\nBranch orch/seven-phase-demo/QUOTE-001:\n{log}");
    if report.outcome != RunOutcome::Completed {
        return Err(format!("run ended {:?}", report.outcome).into());
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("orch-seven-phase-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(dir)
}
