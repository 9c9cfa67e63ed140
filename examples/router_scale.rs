//! The cost of one attempt through the real agent path, as the run grows:
//! single-phase tickets on a random DAG, each run by the plan's `command`
//! agent (`true`, a real process in its own cell) through the `Router` and
//! its backend (admission, breaker, retries, ledger) that `orch run` uses,
//! journalled to SQLite. Work trees are not made (their cost is git's, not
//! the agent path's). Prints the time per ticket at each size, in one run,
//! so a cost that grows with the run shows as a growing figure.
//!
//! ```text
//! cargo run --release -p orch-examples --example router_scale -- [SIZES...] [--concurrency N]
//! ```
//! (default sizes 1000 3000 10000, concurrency 16).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use orch_core::{Cancellation, RunOutcome, SharedDir};

fn main() -> Result<(), orch_examples::Error> {
    let mut sizes: Vec<usize> = Vec::new();
    let mut concurrency = 16u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--concurrency" {
            concurrency = args.next().ok_or("--concurrency needs a number")?.parse()?;
        } else {
            sizes.push(a.parse()?);
        }
    }
    if sizes.is_empty() {
        sizes = vec![1_000, 3_000, 10_000];
    }
    let rt = tokio::runtime::Runtime::new()?;
    println!("tickets | per ticket (agent process, router, engine, SQLite)");
    for n in sizes {
        let dir = tempfile::tempdir()?;
        let plan = orch_graph::random::random_plan(n, 3, 42);
        let agent = orch_examples::plan_agents(&plan, dir.path(), &HashMap::new())?;
        let store = orch_examples::open_store(dir.path())?;
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work)?;
        let engine = orch_graph::Engine::new(plan, agent, store)?
            .workspace(Arc::new(SharedDir::new(&work)))
            .max_concurrency(concurrency);
        let t = Instant::now();
        let report = rt.block_on(engine.run(&"router-scale".parse()?, Cancellation::new()))?;
        let took = t.elapsed();
        assert_eq!(report.outcome, RunOutcome::Completed);
        println!(
            "{n:>7} | {:.2} ms ({:.1} s in all)",
            took.as_secs_f64() * 1e3 / n as f64,
            took.as_secs_f64()
        );
    }
    Ok(())
}
