//! `orch worker`: one long-running process per machine doing the phases of
//! a run that `orch run --workers` coordinates, as jobs claimed from the
//! PostgreSQL job queue, in the machine's own clone of the repository.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use orch_core::process;
use orch_core::{Cancellation, DriverInfo, JobQueue, Plan, RoleName, RunId};
use orch_graph::{Engine, EngineError, Worked};
use orch_state::PgStore;
use tokio::time::Instant;

use crate::{Setup, plan_agents};

/// How often an idle worker asks the queue for a job.
const IDLE: Duration = Duration::from_millis(200);

/// The file in the worker's state directory naming the process that last
/// worked in this clone: a worker killed with `kill -9` leaves its agents
/// running, and the next one kills them before it touches a work tree.
const WORKER_FILE: &str = "worker.json";

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// What it was given cannot work (exit code 2).
    #[error("{0}")]
    Setup(String),
    /// The database failed (exit code 6).
    #[error(transparent)]
    Store(#[from] orch_core::StoreError),
}

impl WorkerError {
    /// The `orch` exit code for it.
    pub fn code(&self) -> u8 {
        match self {
            WorkerError::Setup(_) => 2,
            WorkerError::Store(_) => 6,
        }
    }
}

/// A worker of one run.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The plan file the run was started with.
    pub plan: PathBuf,
    /// The run.
    pub run: RunId,
    /// This machine's clone of the repository.
    pub repo: PathBuf,
    /// Transcripts and the worker's record.
    pub state_dir: PathBuf,
    /// Only phases of these roles (empty: any).
    pub roles: Vec<RoleName>,
    /// Jobs at once.
    pub concurrency: usize,
    /// The git remote the machines share their work through.
    pub remote: String,
    /// A job's lease.
    pub lease: Duration,
}

impl Worker {
    /// The engine that does this worker's jobs: the plan's agents and
    /// gates, in the clone's git workspace sharing through the remote.
    fn engine(&self, store: Arc<PgStore>) -> Result<Engine, WorkerError> {
        let setup_err = |e: &dyn std::fmt::Display| WorkerError::Setup(e.to_string());
        let plan = Plan::from_path(&self.plan).map_err(|e| setup_err(&e))?;
        let agent =
            plan_agents(&plan, &self.state_dir, &Default::default()).map_err(|e| setup_err(&e))?;
        let mut setup = Setup::new(plan.clone(), &self.repo, &self.state_dir, agent.clone());
        setup.remote = Some(self.remote.clone());
        let workspace = setup.workspace().map_err(|e| setup_err(&e))?;
        let engine = Engine::new(plan, agent, store)
            .map_err(|e| setup_err(&e))?
            .workspace(Arc::new(workspace))
            .gates(Arc::new(orch_gates::from_spec))
            .redactor(setup.redactor);
        engine.check().map_err(|e| setup_err(&e))?;
        Ok(engine)
    }

    /// Kills what the last worker in this clone left running, and records
    /// this one in its place.
    async fn take_over_clone(&self, me: &DriverInfo) -> Result<(), WorkerError> {
        let path = self.state_dir.join(WORKER_FILE);
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(before) = serde_json::from_str::<DriverInfo>(&text)
        {
            match process::kill_scope(&before).await {
                Ok(process::Killed::Some(n)) => {
                    eprintln!("killed {n} processes an earlier worker left running in this clone");
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(WorkerError::Setup(format!(
                        "cannot stop what an earlier worker (pid {}) left running in this clone: {e}",
                        before.pid
                    )));
                }
            }
        }
        let json =
            serde_json::to_string_pretty(me).map_err(|e| WorkerError::Setup(e.to_string()))?;
        std::fs::create_dir_all(&self.state_dir)
            .and_then(|()| orch_state::views::write_atomic(&path, json.as_bytes()))
            .map_err(|e| WorkerError::Setup(format!("{}: {e}", path.display())))
    }

    /// Claims and does the run's jobs until `cancel`, then hands back what
    /// it holds.
    ///
    /// # Errors
    /// A plan, repository or agent that cannot work; a database that
    /// cannot be reached at the start.
    pub async fn run(&self, database_url: &str, cancel: Cancellation) -> Result<(), WorkerError> {
        // Frozen (SIGSTOP, a suspended machine), this process cannot stop
        // its agents before its leases lapse: its watchdog does, after
        // half a lease of silence.
        if !process::deadman(self.lease / 2) {
            return Err(WorkerError::Setup(
                "commands were started before the worker's watchdog was set up".into(),
            ));
        }
        let store = Arc::new(PgStore::connect(database_url).await?);
        let engine = Arc::new(self.engine(store.clone())?);
        let me = process::scope().describe();
        self.take_over_clone(&me).await?;
        // Claims on a connection of their own; each job runs as a task of
        // its own, its journal appends and lease renewals on the engine's
        // connection (a job half-way through a call on a connection must
        // be polled for any other call on it to go on).
        let claims = PgStore::connect(database_url).await?;
        eprintln!(
            "worker {} (pid {}) doing run {} in {}",
            me.host,
            me.pid,
            self.run,
            self.repo.display()
        );
        self.serve(engine, store, &claims, &me, cancel).await
    }

    /// The claim loop: claims jobs of the run (of `roles`, up to
    /// `concurrency` at once) on `claims`, does each with `engine` as a
    /// task of its own writing through `queue`, until `cancel`; then waits
    /// for the jobs to hand themselves back.
    ///
    /// # Errors
    /// A job of a plan other than the engine's: the worker stops.
    pub async fn serve(
        &self,
        engine: Arc<Engine>,
        queue: Arc<dyn JobQueue>,
        claims: &dyn JobQueue,
        me: &DriverInfo,
        cancel: Cancellation,
    ) -> Result<(), WorkerError> {
        let mut running = tokio::task::JoinSet::new();
        let mut fatal = None;
        loop {
            while running.len() < self.concurrency.max(1) && !cancel.is_cancelled() {
                let sent = Instant::now();
                match claims
                    .claim(me, Some(&self.run), &self.roles, self.lease)
                    .await
                {
                    Ok(Some(job)) => {
                        eprintln!("claimed {} (job {})", job.key, job.claim.job);
                        let (engine, queue, cancel) =
                            (engine.clone(), queue.clone(), cancel.clone());
                        let lease = self.lease;
                        running.spawn(async move {
                            let worked = engine.work(queue, &job, lease, sent, cancel).await;
                            (job, worked)
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("cannot claim a job (trying again): {e}");
                        break;
                    }
                }
            }
            if cancel.is_cancelled() && running.is_empty() {
                return fatal.map_or(Ok(()), Err);
            }
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => match done {
                    Ok((job, Ok(Worked::Lost(why)))) => eprintln!("lost {}: {why:?}", job.key),
                    Ok((job, Ok(w))) => eprintln!("{}: {w:?}", job.key),
                    // Not this worker's to do (another plan, say): it was
                    // given back; claiming it again would spin. Stop.
                    Ok((job, Err(e @ (EngineError::PlanChanged { .. } | EngineError::Job { .. })))) => {
                        eprintln!("{}: {e}; stopping", job.key);
                        fatal.get_or_insert(WorkerError::Setup(e.to_string()));
                        cancel.cancel();
                    }
                    Ok((job, Err(e))) => eprintln!("{}: {e}", job.key),
                    Err(e) => eprintln!("a job's task failed: {e}"),
                },
                () = tokio::time::sleep(IDLE) => {}
                () = cancel.cancelled(), if !cancel.is_cancelled() => {}
            }
        }
    }
}

/// The workers of a run as `orch status` shows them: how many jobs stand
/// where, and each claimed job's worker (running or lapsed), how long ago
/// its lease was renewed and how long it has left (the database's clock).
pub fn workers_section(jobs: &[orch_core::JobInfo]) -> String {
    use orch_core::JobState;
    use std::fmt::Write as _;
    let count = |s: JobState| jobs.iter().filter(|j| j.state == s).count();
    let mut out = format!(
        "\n## Workers\n\njobs: {} available, {} running, {} lapsed, {} done, {} cancelled, {} abandoned; {} taken over\n",
        count(JobState::Available),
        count(JobState::Running),
        count(JobState::Lapsed),
        count(JobState::Done),
        count(JobState::Cancelled),
        count(JobState::Abandoned),
        jobs.iter().map(|j| u64::from(j.takeovers)).sum::<u64>(),
    );
    // A lapsed job is still its worker's until another claims it: the
    // one a person looks for when a worker went quiet.
    let claimed: Vec<_> = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Running | JobState::Lapsed))
        .collect();
    if claimed.is_empty() {
        return out;
    }
    out.push_str("\n| worker | job | renewed | lease left |\n|---|---|---|---|\n");
    let secs = |ms: i128| format!("{:.1} s", ms as f64 / 1000.0);
    for j in claimed {
        let who = j
            .worker
            .as_ref()
            .map_or_else(|| "?".to_owned(), |w| format!("{} pid {}", w.host, w.pid));
        let renewed = j.renewed_at.map_or_else(
            || "never".to_owned(),
            |r| format!("{} ago", secs(i128::from(j.now.0) - i128::from(r.0))),
        );
        let left = i128::from(j.expires_at.0) - i128::from(j.now.0);
        let left = if left > 0 {
            secs(left)
        } else {
            "lapsed".to_owned()
        };
        let _ = writeln!(out, "| {who} | {} | {renewed} | {left} |", j.key);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::workers_section;
    use orch_core::{DriverInfo, JobInfo, JobState, Timestamp, Work};

    fn job(key: &str, state: JobState, takeovers: u32, expires_in_ms: i64) -> JobInfo {
        let now = 1_000_000;
        JobInfo {
            id: 1,
            key: key.to_owned(),
            work: Work::Phase {
                ticket: "T1".parse().unwrap(),
                phase: "build".parse().unwrap(),
            },
            state,
            worker: Some(DriverInfo {
                host: "box".into(),
                boot: String::new(),
                pid: 42,
                start: 0,
                containment: String::new(),
            }),
            token: 1,
            takeovers,
            renewed_at: Some(Timestamp(now - 2_500)),
            expires_at: Timestamp(now.saturating_add_signed(expires_in_ms)),
            now: Timestamp(now),
        }
    }

    #[test]
    fn a_lapsed_job_is_counted_and_listed_with_its_worker() {
        let jobs = [
            job("T1/build", JobState::Running, 0, 7_500),
            job("T2/build", JobState::Lapsed, 2, -1_000),
            job("T3/build", JobState::Done, 1, 0),
        ];
        let text = workers_section(&jobs);
        assert!(
            text.contains(
                "jobs: 0 available, 1 running, 1 lapsed, 1 done, 0 cancelled, 0 abandoned; 3 taken over"
            ),
            "{text}"
        );
        assert!(
            text.contains("| box pid 42 | T1/build | 2.5 s ago | 7.5 s |"),
            "{text}"
        );
        assert!(
            text.contains("| box pid 42 | T2/build | 2.5 s ago | lapsed |"),
            "{text}"
        );
        assert!(!text.contains("T3/build"), "{text}");
    }
}
