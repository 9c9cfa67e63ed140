//! The README's main job: load and check the bundled plans, then print the
//! analysis of scenario 1 (production readiness, 18 tickets in 5 pull
//! requests): critical path, slack, waves, simulated wall clock with 1-6
//! agents, and the batch-level view.
//!
//! ```text
//! cargo run -p orch-examples --example production_readiness
//! ```

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plans = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
    for name in ["production-readiness.toml", "seven-phase.toml"] {
        let plan = orch_core::Plan::from_path(plans.join(name))?;
        let report = orch_graph::analyze(&plan, 1)?;
        println!(
            "{name}: valid — {} tickets, {} batches, {} phases, {} gates",
            plan.tickets.len(),
            plan.batches.len(),
            plan.phases.len(),
            plan.phases.iter().map(|p| p.gates.len()).sum::<usize>() + plan.batch_gates.len()
        );
        let _ = report;
    }
    println!();
    let plan = orch_core::Plan::from_path(plans.join("production-readiness.toml"))?;
    let report = orch_graph::analyze(&plan, 6)?;
    print!("{}", report.text());
    Ok(())
}
