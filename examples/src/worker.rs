//! `orch worker`: one long-running process per machine doing the phases of
//! the runs `orch run --workers` coordinates, as jobs claimed from the
//! PostgreSQL job queue, in the machine's own clone of the repository.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orch_core::process;
use orch_core::{Cancellation, DriverInfo, JobQueue, Plan, RoleName, RunId, Runs};
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

/// A worker: does the jobs of the runs `orch run --workers` coordinates,
/// one run at a time (it turns to another run only when it has no job of
/// the one it serves running).
#[derive(Debug, Clone)]
pub struct Worker {
    /// The plan file; `None`: each run's own, the file its `RunStarted`
    /// names, as committed at the run's base commit in this clone.
    pub plan: Option<PathBuf>,
    /// Only this run's jobs; `None`: any run's.
    pub run: Option<RunId>,
    /// This machine's clone of the repository.
    pub repo: PathBuf,
    /// Transcripts (a directory per run) and the worker's record.
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

/// Why a worker has no engine for a run ([`Worker::serve`]'s `engines`).
#[derive(Debug)]
pub enum NoEngine {
    /// This worker cannot do the run (its plan is not in this clone, or
    /// differs from the run's): the worker leaves the run alone for a
    /// while, or stops when it serves that run only.
    Cannot(String),
    /// The database failed: the job is handed back, and the worker tries
    /// again later.
    Store(orch_core::StoreError),
}

/// Where [`Worker::serve`] gets the engine that does a run's jobs.
#[async_trait::async_trait]
pub trait Engines: Send + Sync {
    /// The engine for `run`'s jobs.
    ///
    /// # Errors
    /// [`NoEngine`] when there is none.
    async fn engine(&self, run: &RunId) -> Result<Arc<Engine>, NoEngine>;
}

/// One engine for every run (of its plan).
#[async_trait::async_trait]
impl Engines for Arc<Engine> {
    async fn engine(&self, _: &RunId) -> Result<Arc<Engine>, NoEngine> {
        Ok(self.clone())
    }
}

/// Each run's engine as `orch worker` makes it ([`Worker::engine`]).
struct InClone<'a> {
    worker: &'a Worker,
    store: Arc<PgStore>,
    database_url: &'a str,
}

#[async_trait::async_trait]
impl Engines for InClone<'_> {
    async fn engine(&self, run: &RunId) -> Result<Arc<Engine>, NoEngine> {
        let engine = (self.worker)
            .engine(run, self.store.clone(), self.database_url)
            .await?;
        Ok(Arc::new(engine))
    }
}

/// How long a worker leaves a run alone after finding it cannot do it.
const CANNOT_RETRY: Duration = Duration::from_secs(60);

impl Worker {
    /// The plan of `run`: the worker's, or the file the run names as
    /// committed at the run's base commit in this clone (a git object:
    /// no untracked file, no symbolic link followed, nothing an agent
    /// wrote in a work tree).
    async fn plan_of(&self, run: &RunId, store: &PgStore) -> Result<Plan, NoEngine> {
        let cannot = |why: String| NoEngine::Cannot(format!("run {run}: {why}"));
        if let Some(plan) = &self.plan {
            return Plan::from_path(plan).map_err(|e| cannot(e.to_string()));
        }
        let state = match orch_core::StateStore::state(store, run).await {
            Ok(state) => state,
            Err(e) if e.kind == orch_core::StoreErrorKind::Unavailable => {
                return Err(NoEngine::Store(e));
            }
            // A journal this worker cannot read will not read better soon.
            Err(e) => return Err(cannot(e.to_string())),
        };
        let Some(file) = state.plan_file else {
            return Err(cannot(format!(
                "it does not name its plan file in the repository (a plan outside it, or not committed when the run started): start a worker for it with the plan, `orch worker PLAN --run {run}`"
            )));
        };
        let Some(rel) = inside(&file) else {
            return Err(cannot(format!(
                "its plan file {file:?} is not a path inside the repository"
            )));
        };
        let Some(base) = state.base.filter(|b| orch_state::git::is_commit_id(b)) else {
            return Err(cannot("it records no commit its tickets start from".into()));
        };
        let format = orch_core::Format::from_path(rel)
            .ok_or_else(|| cannot(format!("its plan file {file:?} is of no known format")))?;
        let repo = orch_state::git::Repo::open(&self.repo).map_err(|e| cannot(e.to_string()))?;
        let bytes = repo.blob(&base, &file).map_err(|e| {
            cannot(format!(
                "this clone has no {file} at the run's commit {base} (fetch it, and check it out): {e}"
            ))
        })?;
        Plan::from_bytes(&bytes, format, Some(&self.repo.join(rel)))
            .map_err(|e| cannot(e.to_string()))
    }

    /// The engine that does `run`'s jobs here, its redactor knowing
    /// `database_url`.
    ///
    /// # Errors
    /// [`NoEngine::Cannot`] for a plan, repository or agent that cannot
    /// work; [`NoEngine::Store`] when the database cannot be reached.
    pub async fn engine(
        &self,
        run: &RunId,
        store: Arc<PgStore>,
        database_url: &str,
    ) -> Result<Engine, NoEngine> {
        let plan = self.plan_of(run, &store).await?;
        let dir = self.state_dir.join(run.as_str());
        (self.build(plan, &dir, store, database_url))
            .map_err(|e| NoEngine::Cannot(format!("run {run}: {e}")))
    }

    /// The engine of `plan`: its agents (transcripts in `dir`) and gates,
    /// in the clone's git workspace sharing through the remote.
    fn build(
        &self,
        plan: Plan,
        dir: &Path,
        store: Arc<PgStore>,
        database_url: &str,
    ) -> Result<Engine, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        let agent = plan_agents(&plan, dir, &Default::default()).map_err(|e| text(&e))?;
        let mut setup = Setup::new(plan.clone(), &self.repo, dir, agent.clone());
        setup.remote = Some(self.remote.clone());
        setup.redactor = setup.redactor.clone().with_url(database_url);
        let workspace = setup.workspace().map_err(|e| text(&e))?;
        let engine = Engine::new(plan, agent, store)
            .map_err(|e| text(&e))?
            .workspace(Arc::new(workspace))
            .gates(Arc::new(orch_gates::from_spec))
            .redactor(setup.redactor);
        engine.check().map_err(|e| text(&e))?;
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

    /// Claims and does jobs until `cancel`, then hands back what it holds.
    ///
    /// # Errors
    /// A plan file that cannot be read or a repository that cannot work
    /// (checked at the start when the worker is given the plan); the
    /// database unreachable at the start; with [`Worker::run`] set, that
    /// run's jobs not being this worker's to do.
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
        // A plan given is checked before any job is claimed: a typo in
        // it stops the worker at once.
        if let Some(path) = &self.plan {
            let check = Plan::from_path(path)
                .map_err(|e| e.to_string())
                .and_then(|plan| self.build(plan, &self.state_dir, store.clone(), database_url));
            check.map_err(|e| WorkerError::Setup(format!("{}: {e}", path.display())))?;
        }
        let me = process::scope().describe();
        self.take_over_clone(&me).await?;
        // Claims on a connection of their own; each job runs as a task of
        // its own, its journal appends and lease renewals on the engine's
        // connection (a job half-way through a call on a connection must
        // be polled for any other call on it to go on).
        let claims = PgStore::connect(database_url).await?;
        eprintln!(
            "worker {} (pid {}) doing {} in {}",
            me.host,
            me.pid,
            self.run.as_ref().map_or_else(
                || "the runs coordinated for workers".to_owned(),
                |r| format!("run {r}")
            ),
            self.repo.display()
        );
        let engines = InClone {
            worker: self,
            store: store.clone(),
            database_url,
        };
        self.serve(&engines, store, &claims, &me, cancel).await
    }

    /// The claim loop: claims jobs (of [`Worker::run`], or of the run it
    /// serves while it has a job of it running, or of any run it has not
    /// found it cannot do; of `roles`; up to `concurrency` at once) on
    /// `claims`, does each with the run's engine from `engines` as a task
    /// of its own writing through `queue`, until `cancel`; then waits for
    /// the jobs to hand themselves back.
    ///
    /// # Errors
    /// With [`Worker::run`] set, a job of it this worker cannot do: the
    /// worker stops.
    pub async fn serve(
        &self,
        engines: &dyn Engines,
        queue: Arc<dyn JobQueue>,
        claims: &dyn JobQueue,
        me: &DriverInfo,
        cancel: Cancellation,
    ) -> Result<(), WorkerError> {
        let mut running = tokio::task::JoinSet::new();
        // The run whose jobs are running (no other run's run with them),
        // and its engine: `None` once this worker found it cannot do the
        // run (made again when it tries the run again).
        let mut serving: Option<(RunId, Option<Arc<Engine>>)> = None;
        let mut refused = Refused {
            only: self.run.is_some(),
            until: Default::default(),
            fatal: None,
        };
        loop {
            if running.is_empty() && serving.as_ref().is_some_and(|(_, e)| e.is_none()) {
                serving = None;
            }
            while running.len() < self.concurrency.max(1) && !cancel.is_cancelled() {
                let except = refused.current();
                let runs = match (&self.run, &serving) {
                    (Some(run), _) => Runs::Only(run),
                    // No more of a run it cannot do; another run's jobs
                    // wait until this one's are done.
                    (None, Some((_, None))) if !running.is_empty() => break,
                    (None, Some((run, _))) if !running.is_empty() => Runs::Only(run),
                    (None, _) => Runs::Except(&except),
                };
                let sent = Instant::now();
                let job = match claims.claim(me, runs, &self.roles, self.lease).await {
                    Ok(Some(job)) => job,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("cannot claim a job (trying again): {e}");
                        break;
                    }
                };
                let run = job.claim.run.clone();
                // An engine made for this job (not one an earlier job used).
                let mut fresh = false;
                let engine = match &serving {
                    Some((r, Some(engine))) if *r == run => Ok(engine.clone()),
                    // Nothing of the run served is running (else the job
                    // would be of it): turn to this one.
                    _ => {
                        fresh = true;
                        engines.engine(&run).await
                    }
                };
                let engine = match engine {
                    Ok(engine) if !cancel.is_cancelled() => engine,
                    no => {
                        if let Err(e) = queue.give_back(&job.claim).await {
                            eprintln!("cannot hand {} back (it lapses): {e}", job.key);
                        }
                        match no {
                            Err(NoEngine::Cannot(why)) => refused.run(&run, why, &cancel),
                            Err(NoEngine::Store(e)) => {
                                eprintln!("cannot read run {run} (trying again): {e}");
                            }
                            Ok(_) => {} // stopping
                        }
                        break;
                    }
                };
                if serving.as_ref().is_none_or(|(r, _)| *r != run) {
                    eprintln!("serving run {run}");
                }
                serving = Some((run, Some(engine.clone())));
                eprintln!("claimed {} (job {})", job.key, job.claim.job);
                let (queue, cancel) = (queue.clone(), cancel.clone());
                let lease = self.lease;
                running.spawn(async move {
                    let worked = engine.work(queue, &job, lease, sent, cancel).await;
                    (job, worked, fresh, engine)
                });
            }
            if cancel.is_cancelled() && running.is_empty() {
                return refused.fatal.map_or(Ok(()), Err);
            }
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => match done {
                    Ok((job, Ok(Worked::Lost(why)), ..)) => eprintln!("lost {}: {why:?}", job.key),
                    Ok((job, Ok(w), ..)) => eprintln!("{}: {w:?}", job.key),
                    // Not this worker's to do (its clone at another
                    // commit, another plan): it was given back. Its
                    // engine is not used again: the run may have moved
                    // on (resumed at another commit) since it was made, or
                    // the clone or plan be put right before the run is
                    // tried again. Made for this job, it says this worker
                    // cannot do the run: claiming it again would spin.
                    Ok((job, Err(e @ (EngineError::PlanChanged { .. } | EngineError::Job { .. })), fresh, used)) => {
                        if fresh {
                            refused.run(&job.claim.run, format!("{}: {e}", job.key), &cancel);
                        } else {
                            eprintln!("{}: {e}; making the run's engine again", job.key);
                        }
                        // (Not one made since, for a later job.)
                        if let Some((_, engine)) = &mut serving
                            && engine.as_ref().is_some_and(|e| Arc::ptr_eq(e, &used))
                        {
                            *engine = None;
                        }
                    }
                    Ok((job, Err(e), ..)) => eprintln!("{}: {e}", job.key),
                    Err(e) => eprintln!("a job's task failed: {e}"),
                },
                () = tokio::time::sleep(IDLE) => {}
                () = cancel.cancelled(), if !cancel.is_cancelled() => {}
            }
        }
    }
}

/// `file` as a path inside a repository: names only (no root, no `..`),
/// whatever the journal says.
fn inside(file: &str) -> Option<&Path> {
    let path = Path::new(file);
    let names = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    (names && !file.is_empty()).then_some(path)
}

/// The runs a worker found it cannot do.
struct Refused {
    /// The worker serves one run only: it stops instead.
    only: bool,
    /// Until when it leaves each alone.
    until: std::collections::HashMap<RunId, Instant>,
    /// Why it stops.
    fatal: Option<WorkerError>,
}

impl Refused {
    /// The worker cannot do `run`, for `why`: says so once, and leaves it
    /// alone for a while (or stops, serving only it).
    fn run(&mut self, run: &RunId, why: String, cancel: &Cancellation) {
        if self.only {
            eprintln!("{why}; stopping");
            self.fatal.get_or_insert(WorkerError::Setup(why));
            cancel.cancel();
        } else if (self.until)
            .insert(run.clone(), Instant::now() + CANNOT_RETRY)
            .is_none()
        {
            eprintln!(
                "leaving run {run} alone for {} s: {why}",
                CANNOT_RETRY.as_secs()
            );
        }
    }

    /// The runs left alone now.
    fn current(&mut self) -> Vec<RunId> {
        let now = Instant::now();
        self.until.retain(|_, until| *until > now);
        self.until.keys().cloned().collect()
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
    fn a_plan_file_outside_the_repository_is_refused() {
        assert_eq!(
            super::inside("plans/p.toml"),
            Some(std::path::Path::new("plans/p.toml"))
        );
        for bad in [
            "",
            "/etc/p.toml",
            "../p.toml",
            "plans/../../p.toml",
            "./p.toml",
        ] {
            assert_eq!(super::inside(bad), None, "{bad:?}");
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
