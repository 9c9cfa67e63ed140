//! A run's phases done by workers through the PostgreSQL job queue,
//! measured beside PostgreSQL's own floor for such a queue, in one
//! invocation; and how long a job of a dead worker waits before it runs
//! elsewhere.
//!
//! ```text
//! ORCH_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p orch-examples --example fleet_scale -- queue [JOBS] [WORKERS] [--only pgbench|queue|path]
//! ORCH_TEST_DATABASE_URL=... cargo run --release -p orch-examples --example fleet_scale -- takeover [LEASE_SECS] [SAMPLES]
//! ```
//!
//! - `queue` (default 2,000 jobs, 8 workers), each worker on connections
//!   of its own, every figure a job claimed and completed:
//!   1. `pgbench`: the bare `FOR UPDATE SKIP LOCKED` dequeue loop (claim
//!      a row, mark it done) on a table of JOBS rows, one client a worker;
//!   2. orch's queue alone: `JobQueue::claim` then `JobQueue::finish`;
//!   3. the whole path: a coordinator (`Engine::workers`) putting the
//!      phases of a plan of JOBS independent one-phase tickets in the
//!      queue as they become ready (64 at once), workers doing them with
//!      `orch worker`'s claim loop (`Worker::serve`, `Engine::work`: the
//!      journal read, the phase's events appended under the claim, the
//!      lease renewed) and a no-op agent, no work tree.
//! - `takeover` (default a 3 s lease, 5 samples): a coordinator and two
//!   workers; the worker doing the job is killed (its task dropped, its
//!   connections closed: the database sees what it sees of `kill -9`)
//!   and the time until the job's agent runs on the other worker is
//!   measured. A lease lapses between two thirds of a lease and a whole
//!   one after the kill (renewals go every third), then an idle worker
//!   sees it at its next poll.
//!
//! Each part works in a schema of its own, dropped at the end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_core::{
    Agent, AgentContext, AgentError, AgentOutcome, AgentTask, Cancellation, DriverInfo, JobQueue,
    NewJob, Plan, RunId, RunOutcome, Runs, SharedDir, Work,
};
use orch_examples::Error;
use orch_examples::scale::{Noop, start_run};
use orch_examples::worker::Worker;
use orch_graph::Engine;
use orch_state::PgStore;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = std::env::var("ORCH_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("ORCH_DATABASE_URL"))
        .map_err(|_| "set ORCH_TEST_DATABASE_URL to a PostgreSQL database to work in")?;
    let num = |i: usize, default: u64| -> Result<u64, Error> {
        Ok(args
            .get(i)
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    };
    if let Ok(f) = tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(f)
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("queue") | None => {
            let (jobs, workers) = (num(1, 2_000)?, num(2, 8)?);
            let only = args
                .iter()
                .position(|a| a == "--only")
                .map(|i| args.get(i + 1));
            let part = |name: &str| only.is_none_or(|o| o.is_some_and(|o| o == name));
            println!(
                "{jobs} jobs, {workers} workers, PostgreSQL at {}",
                host(&url)
            );
            println!("| what | jobs claimed and completed a second |");
            println!("|---|---|");
            if part("pgbench") {
                let per = pgbench(&url, jobs, workers)?;
                println!("| pgbench: bare SKIP LOCKED claim + done | {per:.0} |");
            }
            if part("queue") {
                let per = rt.block_on(queue_alone(&url, jobs, workers))?;
                println!("| orch's queue alone: claim + finish | {per:.0} |");
            }
            if part("path") {
                let per = rt.block_on(whole_path(&url, jobs, workers))?;
                println!("| coordinator + workers, a phase a job (no-op agent) | {per:.0} |");
            }
        }
        Some("takeover") => {
            let (lease, samples) = (num(1, 3)?, num(2, 5)?);
            let lease = Duration::from_secs(lease);
            println!(
                "a worker killed mid-job, lease {} s: time until its job runs elsewhere",
                lease.as_secs()
            );
            let mut took = Vec::new();
            for i in 0..samples {
                let t = rt.block_on(takeover(&url, lease, i))?;
                println!("  {:.2} s", t.as_secs_f64());
                took.push(t.as_secs_f64());
            }
            took.sort_by(f64::total_cmp);
            println!(
                "min {:.2} s, median {:.2} s, max {:.2} s ({:.2}–{:.2} leases)",
                took[0],
                took[took.len() / 2],
                took[took.len() - 1],
                took[0] / lease.as_secs_f64(),
                took[took.len() - 1] / lease.as_secs_f64()
            );
        }
        Some(other) => return Err(format!("unknown part {other:?}: queue or takeover").into()),
    }
    Ok(())
}

/// The server part of a database URL (no password) for the heading.
fn host(url: &str) -> &str {
    url.rsplit('@').next().unwrap_or(url)
}

/// A schema of its own in the database: a URL whose connections work in
/// it, dropped with everything in it when this goes.
struct Schema {
    name: String,
    url: String,
    base: String,
}

impl Schema {
    fn new(base: &str, part: &str) -> Result<Schema, Error> {
        let name = format!("orch_bench_{part}_{}", std::process::id());
        psql(
            base,
            &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"),
        )?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Ok(Schema {
            name,
            url,
            base: base.to_owned(),
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

/// Runs `sql` with `psql`.
fn psql(url: &str, sql: &str) -> Result<(), Error> {
    let out = std::process::Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// The bare dequeue loop with `pgbench`: a job a transaction, `workers`
/// clients; returns its jobs a second.
fn pgbench(url: &str, jobs: u64, workers: u64) -> Result<f64, Error> {
    let schema = Schema::new(url, "pgbench")?;
    let s = &schema.name;
    // As orch_jobs stands: a partial index of the open jobs in claim order.
    psql(
        url,
        &format!(
            "CREATE TABLE {s}.jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               state text NOT NULL DEFAULT 'available', worker int, expires_at timestamptz);
             CREATE INDEX ON {s}.jobs (id) WHERE state IN ('available', 'running');
             INSERT INTO {s}.jobs (state) SELECT 'available' FROM generate_series(1, {jobs});
             ANALYZE {s}.jobs"
        ),
    )?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("dequeue.sql");
    std::fs::write(
        &script,
        format!(
            "WITH next AS (SELECT id FROM {s}.jobs WHERE state = 'available'
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
             UPDATE {s}.jobs j SET state = 'running', worker = :client_id,
                    expires_at = now() + interval '30 seconds'
             FROM next WHERE j.id = next.id RETURNING j.id AS job \\gset
             UPDATE {s}.jobs SET state = 'done' WHERE id = :job;\n"
        ),
    )?;
    let out = std::process::Command::new("pgbench")
        .args(["-n", "-c", &workers.to_string(), "-j", "2"])
        .args(["-t", &(jobs / workers).to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| format!("pgbench (postgresql-client): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("pgbench: {text}{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    // "tps = 4321.123456 (without initial connection time)"
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output: {text}").into())
}

fn me(n: u64) -> DriverInfo {
    DriverInfo {
        host: format!("bench-{n}"),
        boot: "bench".into(),
        pid: std::process::id(),
        start: n,
        containment: "none".into(),
    }
}

/// A plan of `n` independent tickets of one phase, `at_once` at a time,
/// for the in-process no-op agent.
fn plan(n: u64, at_once: u32) -> Plan {
    let mut toml = format!(
        "name = \"fleet\"\ndefault_role = \"dev\"\n[policy]\nmax_concurrency = {at_once}\n\
         [agents.dev]\nbackend = {{ kind = \"custom\", name = \"noop\" }}\n\
         [[phases]]\nname = \"build\"\n"
    );
    for i in 0..n {
        toml.push_str(&format!(
            "[[tickets]]\nid = \"T{i}\"\ntitle = \"t{i}\"\neffort = \"1h\"\n"
        ));
    }
    Plan::from_toml_str(&toml).expect("a valid plan")
}

/// `workers` tasks, each on a connection of its own, claiming and
/// finishing `jobs` jobs; returns jobs a second.
async fn queue_alone(url: &str, jobs: u64, workers: u64) -> Result<f64, Error> {
    let schema = Schema::new(url, "queue")?;
    let store = PgStore::connect(&schema.url).await?;
    let run: RunId = "fleet".parse()?;
    let (_lock, epoch) = start_run(&store, &run, &plan(1, 1)).await?;
    let new: Vec<NewJob> = (0..jobs)
        .map(|i| {
            NewJob::new(
                format!("T{i}"),
                Work::Phase {
                    ticket: "T0".parse().expect("id"),
                    phase: "build".parse().expect("name"),
                },
            )
        })
        .collect();
    for chunk in new.chunks(500) {
        store.enqueue(&run, epoch, chunk).await?;
    }
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..workers {
        let (url, run) = (schema.url.clone(), run.clone());
        tasks.spawn(async move {
            let q = PgStore::connect(&url).await?;
            let who = me(n);
            while let Some(job) = q
                .claim(&who, Runs::Only(&run), &[], Duration::from_secs(30))
                .await?
            {
                q.finish(&job.claim, &[]).await?;
            }
            Ok::<_, orch_core::StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(jobs as f64 / t.elapsed().as_secs_f64())
}

/// A coordinator and `workers` workers doing a plan of `jobs` one-phase
/// tickets; returns jobs a second.
async fn whole_path(url: &str, jobs: u64, workers: u64) -> Result<f64, Error> {
    let schema = Schema::new(url, "fleet")?;
    let run: RunId = "fleet".parse()?;
    let plan = plan(jobs, 64);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(PgStore::connect(&schema.url).await?);
    let coordinator = Engine::new(plan.clone(), Arc::new(Noop), store.clone())?
        .workspace(Arc::new(SharedDir::new(dir.path())))
        .workers(store);
    let stop = Cancellation::new();
    let mut fleet = tokio::task::JoinSet::new();
    for n in 0..workers {
        fleet.spawn(serve(
            worker(&run, Duration::from_secs(30)),
            schema.url.clone(),
            plan.clone(),
            Arc::new(Noop),
            dir.path().to_owned(),
            n,
            stop.clone(),
        ));
    }
    let t = Instant::now();
    let report = coordinator.run(&run, Cancellation::new()).await?;
    let took = t.elapsed();
    stop.cancel();
    while let Some(done) = fleet.join_next().await {
        done??;
    }
    if report.outcome != RunOutcome::Completed {
        return Err(format!("the run ended {:?}", report.outcome).into());
    }
    Ok(jobs as f64 / took.as_secs_f64())
}

/// `orch worker`'s claim loop for `run`, one job at a time; the paths are
/// `Worker::run`'s, which this does not call.
fn worker(run: &RunId, lease: Duration) -> Worker {
    Worker {
        plan: Some("fleet.toml".into()),
        run: Some(run.clone()),
        repo: ".".into(),
        state_dir: ".orch/state".into(),
        roles: Vec::new(),
        concurrency: 1,
        remote: "origin".into(),
        lease,
    }
}

/// Worker `n` in this process: `orch worker`'s claim loop (`worker`) on
/// connections of its own to `url`, doing the jobs of `plan` with `agent`
/// in `dir`, until `stop`.
async fn serve(
    worker: Worker,
    url: String,
    plan: Plan,
    agent: Arc<dyn Agent>,
    dir: std::path::PathBuf,
    n: u64,
    stop: Cancellation,
) -> Result<(), Error> {
    let store = Arc::new(PgStore::connect(&url).await?);
    let claims = PgStore::connect(&url).await?;
    let engine =
        Arc::new(Engine::new(plan, agent, store.clone())?.workspace(Arc::new(SharedDir::new(dir))));
    worker.serve(&engine, store, &claims, &me(n), stop).await?;
    Ok(())
}

/// An agent that never ends the first time it runs (the worker doing it
/// is killed) and ends at once after; it notes when each run began.
struct Stuck(Mutex<Vec<Instant>>);

#[async_trait]
impl Agent for Stuck {
    fn backend(&self) -> &str {
        "noop"
    }
    async fn run(&self, _: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let first = {
            let mut began = self.0.lock().expect("not poisoned");
            began.push(Instant::now());
            began.len() == 1
        };
        if first {
            std::future::pending::<()>().await;
        }
        Ok(AgentOutcome {
            success: true,
            ..AgentOutcome::default()
        })
    }
}

/// One ticket, two workers: the one that takes it is killed once its agent
/// runs; returns the time from the kill to the agent running again.
async fn takeover(url: &str, lease: Duration, sample: u64) -> Result<Duration, Error> {
    let schema = Schema::new(url, &format!("takeover{sample}"))?;
    let run: RunId = "fleet".parse()?;
    let plan = plan(1, 1);
    let dir = tempfile::tempdir()?;
    let agent = Arc::new(Stuck(Mutex::new(Vec::new())));
    let store = Arc::new(PgStore::connect(&schema.url).await?);
    let coordinator = Engine::new(plan.clone(), agent.clone(), store.clone())?
        .workspace(Arc::new(SharedDir::new(dir.path())))
        .workers(store);
    let coordinating =
        tokio::spawn(async move { coordinator.run(&run, Cancellation::new()).await });
    let stop = Cancellation::new();
    let mut fleet = Vec::new();
    for n in 0..2 {
        fleet.push(tokio::spawn(serve(
            worker(&"fleet".parse()?, lease),
            schema.url.clone(),
            plan.clone(),
            agent.clone(),
            dir.path().to_owned(),
            n,
            stop.clone(),
        )));
    }
    let began = |n: usize| agent.0.lock().expect("not poisoned").get(n).copied();
    let deadline = Instant::now() + lease * 10 + Duration::from_secs(10);
    while began(0).is_none() {
        if Instant::now() > deadline {
            return Err("no worker started the job".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let a renewal go by, then kill the worker whose job it is, at a
    // point of the next third of a lease that differs from sample to
    // sample (the lease lapses a third of a lease after each renewal's
    // expiry moves on).
    let at = lease / 2 + lease / 3 * u32::try_from(sample % 5).unwrap_or(0) / 5;
    tokio::time::sleep(at).await;
    let store = PgStore::connect(&schema.url).await?;
    let job = store.jobs(&"fleet".parse()?).await?;
    let holder = job
        .first()
        .and_then(|j| j.worker.as_ref())
        .ok_or("the job has no worker")?;
    let which = usize::from(holder.host != "bench-0");
    fleet[which].abort();
    let killed = Instant::now();
    while began(1).is_none() {
        if Instant::now() > deadline {
            return Err("the job did not run again".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = began(1).ok_or("ran")? - killed;
    let report = coordinating.await??;
    stop.cancel();
    for w in fleet {
        match w.await {
            Ok(done) => done?,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if report.outcome != RunOutcome::Completed {
        return Err(format!("the run ended {:?}", report.outcome).into());
    }
    Ok(took)
}
