//! The README's main job: scenario 1 end to end.
//!
//! Makes a fresh git repository holding a small Rust web backend, then runs
//! `plans/production-readiness.toml` on it: 18 tickets in 5 pull requests,
//! each ticket in its own worktree, done by a scripted agent that writes
//! real code and tests, checked by real `cargo test` gates; each batch is
//! merged into its branch and gated by the full suite, clippy, a secret
//! scan and a start-up check. One ticket fails its gate once and passes on
//! retry with the feedback; one escalates, the run pauses on it while the
//! rest go on, this program approves it (as `orch decide` would) and the run
//! resumes to the end. The journal is SQLite; the state files stay behind
//! for a person to read.
//!
//! ```text
//! cargo run --release -p orch-examples --example production_readiness [-- DIR]
//! ```

use std::path::{Path, PathBuf};

use orch_core::{Cancellation, Decision, Plan, RunOutcome, TicketStatus};
use orch_examples::{Error, Setup, demo, open_store};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let plan_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/production-readiness.toml");
    let plan = Plan::from_path(&plan_path)?;
    print!("{}", orch_graph::analyze(&plan, 4)?.text());

    // A fresh repository (or the directory given).
    let root = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("orch-demo-{}", std::process::id())),
    };
    if root.exists() {
        return Err(format!("{} exists; give a new directory", root.display()).into());
    }
    let repo = root.join("shop-backend");
    demo::init_repo(&repo, demo::BACKEND_FILES)?;
    let state_dir = root.join("state");
    println!(
        "\nRepository: {}\nState:      {}\n",
        repo.display(),
        state_dir.display()
    );

    let agent = demo::backend_agent();
    let setup = Setup::new(plan.clone(), &repo, &state_dir, agent.clone());
    let store = open_store(&state_dir)?;
    let run = "production-readiness-demo".parse()?;
    let started = std::time::Instant::now();

    let report = setup
        .engine(store.clone())?
        .run(&run, Cancellation::new())
        .await?;
    println!("\nRun paused: {:?}", report.outcome);
    if report.outcome != RunOutcome::Paused {
        return Err(format!("expected the run to pause on {}", demo::ESCALATED).into());
    }
    for q in report.state.open_decisions() {
        println!("Decision queue: {}\n  {}", q.ticket, q.question);
    }
    // What a person would do with `orch decide SEC-006 --approve`.
    let ticket = demo::ESCALATED.parse()?;
    orch_graph::decide(store.as_ref(), &run, &ticket, Decision::Approve, None).await?;
    println!("Approved {ticket}; resuming.\n");
    let report = setup
        .engine(store.clone())?
        .run(&run, Cancellation::new())
        .await?;

    let s = &report.state;
    println!("\n== Summary ({:.1} s)", started.elapsed().as_secs_f64());
    println!("outcome:  {:?}", report.outcome);
    println!(
        "tickets:  {} done, {} failed, {} blocked",
        s.count(TicketStatus::Done),
        s.count(TicketStatus::Failed),
        s.count(TicketStatus::Blocked)
    );
    for (id, b) in &s.batches {
        println!(
            "batch {id}: {:?}, {}/{} gates passed, commit {}",
            b.status,
            b.gates_passed,
            b.gates_total,
            b.commit.as_deref().unwrap_or("-")
        );
    }
    let retried = &s.tickets[demo::RETRIED];
    println!(
        "{}: passed on attempt {} after feedback",
        demo::RETRIED,
        retried.attempt
    );
    println!(
        "agent calls: {}; usage: {} tokens, ${:.2}",
        agent.calls().len(),
        s.usage.total_tokens(),
        s.usage.cost_usd
    );
    println!(
        "journal: {} events; state files in {}",
        s.events,
        state_dir.display()
    );
    let status = std::fs::read_to_string(state_dir.join("STATUS_REPORT.md"))?;
    if let Some(call) = status.lines().find(|l| l.starts_with("## Go/No-Go")) {
        println!("{} (STATUS_REPORT.md)", call.trim_start_matches("## "));
    }
    if report.outcome != RunOutcome::Completed {
        return Err(format!("run ended {:?}", report.outcome).into());
    }
    Ok(())
}
