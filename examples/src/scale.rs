//! The engine-overhead workload: a random DAG of tickets with one phase, a
//! no-op agent and no gates, so what is measured is the engine itself
//! (scheduling, journalling, folding) and the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_core::{
    Agent, AgentContext, AgentError, AgentOutcome, AgentTask, Cancellation, RunOutcome, SharedDir,
    StateStore,
};
use orch_graph::Engine;

/// An agent that does nothing and succeeds.
#[derive(Debug, Default)]
pub struct Noop;

#[async_trait]
impl Agent for Noop {
    fn backend(&self) -> &str {
        "noop"
    }
    async fn run(&self, _: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        Ok(AgentOutcome {
            success: true,
            ..AgentOutcome::default()
        })
    }
}

/// How long one no-op run took.
#[derive(Debug, Clone, Copy)]
pub struct NoopRun {
    /// `Engine::new`: validating the plan, building its graph, fingerprinting it.
    pub built: Duration,
    /// `Engine::run`: the run itself (what the overhead figures are).
    pub ran: Duration,
    /// Minor page faults of the process during the run (first touches of
    /// fresh memory), where the system tells (`/proc/self/stat`).
    pub faults: Option<u64>,
}

/// The process's minor page faults so far, from `/proc/self/stat` (Linux).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (in parentheses, which may hold spaces):
    // state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// Runs `n` tickets (about `deps` dependencies each, seed 42) through the
/// engine on `store` with `concurrency` tickets at once; returns how long
/// building the engine and the run took.
///
/// # Panics
/// If the run does not complete (a benchmark has nothing to measure then).
pub async fn run_noop(
    n: usize,
    deps: u32,
    concurrency: u32,
    store: Arc<dyn StateStore>,
) -> NoopRun {
    let plan = orch_graph::random::random_plan(n, deps, 42);
    let t = Instant::now();
    let engine = Engine::new(plan, Arc::new(Noop), store)
        .expect("random plans are valid")
        .workspace(Arc::new(SharedDir::new(std::env::temp_dir())))
        .max_concurrency(concurrency);
    let run = format!("bench-{}", orch_core::EventId::random())
        .parse()
        .expect("valid id");
    let built = t.elapsed();
    let faults = minor_faults();
    let t = Instant::now();
    let report = engine
        .run(&run, Cancellation::new())
        .await
        .expect("the run completes");
    let ran = t.elapsed();
    let faults = minor_faults()
        .zip(faults)
        .map(|(after, before)| after - before);
    assert_eq!(report.outcome, RunOutcome::Completed);
    NoopRun { built, ran, faults }
}

/// Starts `run` of `plan` as a coordinator does, without an engine: takes
/// the run's hold on PostgreSQL and appends its `RunStarted` under the
/// hold's epoch, so jobs can be put in the queue for it. Returns the hold
/// (the run is held until it is dropped) and the epoch.
///
/// # Errors
/// The store's.
pub async fn start_run(
    store: &orch_state::PgStore,
    run: &orch_core::RunId,
    plan: &orch_core::Plan,
) -> Result<(orch_core::RunLock, u64), orch_core::StoreError> {
    let lock = store.lock_run(run).await?;
    // (PostgreSQL fences every hold with an epoch.)
    let epoch = lock.epoch().unwrap_or_default();
    let (fingerprint, parts) = plan.fingerprint();
    let started = orch_core::Event::now(orch_core::EventKind::RunStarted {
        run: run.clone(),
        plan: plan.name.clone(),
        fingerprint,
        resumed: false,
        parts: Arc::new(parts),
        driver: None,
        base: None,
        plan_file: None,
    });
    store
        .append_if(run, orch_core::Expect::Epoch(epoch), &[started])
        .await?;
    Ok((lock, epoch))
}
