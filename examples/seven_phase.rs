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
//! the second cycle passes. The threat model then lists a critical finding
//! still open, so the security phase halts the ticket for a person: the
//! example answers as one would (`orch decide QUOTE-001 --approve --adr
//! "..."`), approving with an architecture decision record, and the run
//! goes on. The record is committed as `docs/adr/ADR-001-<slug>.md` with
//! the security checkpoint.
//!
//! The plan's coverage gate needs `cargo llvm-cov`; when it is not
//! installed the example says so and leaves that gate out.
//!
//! ```text
//! cargo run --release -p orch-examples --example seven_phase
//! ```

use std::path::Path;

use orch_core::{Cancellation, Decision, Plan, RunOutcome};
use orch_examples::{Error, Setup, demo, open_store};
use orch_graph::{AdrDraft, decide_with_adr};

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
    let mut report = setup
        .engine(store.clone())?
        .run(&run, Cancellation::new())
        .await?;
    if report.outcome == RunOutcome::Paused {
        // The security phase halted on the open critical finding: a
        // person approves, and writes down why.
        for d in report.state.open_decisions() {
            println!("\n== halted: {}\n{}", d.question, d.context.trim());
        }
        let mut draft =
            AdrDraft::titled("Ship the quote endpoint with the cache admin finding open");
        draft.deciders = vec!["security lead".into(), "service owner".into()];
        draft.consequences = Some(
            "The endpoint ships on time. The cache admin endpoint stays reachable without \
             authentication until the cache rewrite lands; it is only bound to the internal \
             network, and the finding is tracked as a release blocker for the next version."
                .into(),
        );
        let adr = decide_with_adr(
            store.as_ref(),
            &run,
            &"QUOTE-001".parse()?,
            Decision::Approve,
            None,
            draft,
        )
        .await?;
        println!("\n== approved, recorded as {}", adr.path());
        report = setup
            .engine(store.clone())?
            .run(&run, Cancellation::new())
            .await?;
    }

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
    let adrs = demo::git(
        &repo,
        &[
            "ls-tree",
            "--name-only",
            "orch/seven-phase-demo/QUOTE-001",
            "docs/adr/",
        ],
    )?;
    println!("Decision records on the branch:\n{adrs}");
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
