//! Workers doing a run's phases as jobs from the PostgreSQL job queue
//! ([`Engine::work`]): one phase a job, every write under the job's claim,
//! and a worker that loses its claim stops its agent and writes nothing
//! after another worker took the job over.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::{
    Agent, AgentContext, AgentError, AgentErrorKind, AgentOutcome, AgentTask, BatchId,
    Cancellation, Claim, DriverInfo, Event, EventKind, Job, JobInfo, JobQueue, JobState, Merged,
    NewJob, Plan, Prepared, RoleName, RunId, Runs, SharedDir, StateStore, StoreError,
    StoreErrorKind, StoredEvent, TicketId, Timestamp, Work, Workspace, WorkspaceError,
};
use orch_graph::{Engine, Kept, Worked};
use orch_state::PgStore;
use tokio::time::Instant;

mod common;
use common::Db;

fn plan() -> Plan {
    Plan::from_toml_str(
        r#"
name = "two-phase"
default_role = "dev"
[agents.dev]
backend = { kind = "custom", name = "test" }

[[phases]]
name = "plan"
[[phases]]
name = "build"

[[tickets]]
id = "T1"
title = "one"
effort = "1h"
"#,
    )
    .unwrap()
}

/// What an agent run did, in the order runs started.
#[derive(Debug, Clone)]
struct Ran {
    worker: &'static str,
    phase: String,
    ended: Option<Instant>,
    cancelled: bool,
}

/// An agent that logs its runs, and (when `hold` is set) waits until it is
/// cancelled; with `deaf` it ignores the cancel and returns success once
/// `release` is set (a process stopped with SIGSTOP and let go later).
struct Logged {
    worker: &'static str,
    log: Arc<Mutex<Vec<Ran>>>,
    hold: AtomicBool,
    deaf: bool,
    release: Arc<tokio::sync::Notify>,
}

impl Logged {
    fn new(worker: &'static str, log: &Arc<Mutex<Vec<Ran>>>) -> Self {
        Logged {
            worker,
            log: log.clone(),
            hold: AtomicBool::new(false),
            deaf: false,
            release: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// One that ignores being stopped and runs until `release` (a frozen
    /// process's agent).
    fn deaf(worker: &'static str, log: &Arc<Mutex<Vec<Ran>>>) -> Self {
        let mut agent = Logged::new(worker, log);
        agent.deaf = true;
        agent.hold.store(true, Ordering::SeqCst);
        agent
    }
}

#[async_trait]
impl Agent for Logged {
    fn backend(&self) -> &str {
        "test"
    }
    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let n = {
            let mut log = self.log.lock().unwrap();
            log.push(Ran {
                worker: self.worker,
                phase: task.phase.to_string(),
                ended: None,
                cancelled: false,
            });
            log.len() - 1
        };
        let cancelled = if !self.hold.load(Ordering::SeqCst) {
            false
        } else if self.deaf {
            self.release.notified().await;
            false
        } else {
            ctx.cancel.cancelled().await;
            true
        };
        {
            let mut log = self.log.lock().unwrap();
            log[n].ended = Some(Instant::now());
            log[n].cancelled = cancelled;
        }
        if cancelled {
            return Err(AgentError::new(AgentErrorKind::Cancelled, "stopped"));
        }
        // Its phase's work: which work it found in its tree (its
        // dependencies', its earlier phases').
        let mut seen: Vec<String> = std::fs::read_dir(&task.workdir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|f| f.ends_with(".txt"))
            .collect();
        seen.sort();
        std::fs::write(
            task.workdir
                .join(format!("{}.{}.txt", task.ticket.id, task.phase)),
            seen.join(","),
        )
        .unwrap();
        Ok(AgentOutcome {
            success: true,
            ..Default::default()
        })
    }
}

/// A queue that passes everything to the store, except that once `cut`
/// is set its lease renewals fail (a worker cut off from the database)
/// or, with `hang`, never return.
struct Cut {
    inner: Arc<PgStore>,
    cut: AtomicBool,
    hang: bool,
}

impl Cut {
    /// The queue of a worker cut off from the start: its renewals fail or
    /// (`hang`: a frozen worker's) never come back.
    fn off(store: &Arc<PgStore>, hang: bool) -> Arc<Cut> {
        Arc::new(Cut {
            inner: store.clone(),
            cut: AtomicBool::new(true),
            hang,
        })
    }
}

#[async_trait]
impl JobQueue for Cut {
    async fn enqueue(
        &self,
        run: &RunId,
        epoch: u64,
        jobs: &[NewJob],
    ) -> Result<Vec<u64>, StoreError> {
        self.inner.enqueue(run, epoch, jobs).await
    }
    async fn claim(
        &self,
        who: &DriverInfo,
        run: Runs<'_>,
        roles: &[RoleName],
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        self.inner.claim(who, run, roles, lease).await
    }
    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<Option<Timestamp>, StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            if self.hang {
                std::future::pending::<()>().await;
            }
            return Err(StoreError::new(StoreErrorKind::Unavailable, "cut off"));
        }
        self.inner.renew(claim, lease).await
    }
    async fn record(&self, claim: &Claim, events: &[Event]) -> Result<Vec<u64>, StoreError> {
        self.inner.record(claim, events).await
    }
    async fn finish(&self, claim: &Claim, events: &[Event]) -> Result<Vec<u64>, StoreError> {
        self.inner.finish(claim, events).await
    }
    async fn give_back(&self, claim: &Claim) -> Result<bool, StoreError> {
        self.inner.give_back(claim).await
    }
    async fn cancel(&self, run: &RunId, epoch: u64) -> Result<u64, StoreError> {
        self.inner.cancel(run, epoch).await
    }
    async fn jobs(&self, run: &RunId) -> Result<Vec<JobInfo>, StoreError> {
        self.inner.jobs(run).await
    }
    async fn job(&self, id: u64) -> Result<Option<JobInfo>, StoreError> {
        self.inner.job(id).await
    }
}

fn worker(store: Arc<PgStore>, agent: Arc<dyn Agent>, dir: &Path) -> Engine {
    Engine::new(plan(), agent, store)
        .unwrap()
        .workspace(Arc::new(SharedDir::new(dir)))
}

fn me(pid: u32) -> DriverInfo {
    DriverInfo {
        host: "test".into(),
        boot: "b".into(),
        pid,
        start: 1,
        containment: "none".into(),
    }
}

/// Starts `run` of [`plan`] as a coordinator would; its hold and epoch.
async fn start(store: &PgStore, run: &RunId) -> (orch_core::RunLock, u64) {
    orch_examples::scale::start_run(store, run, &plan())
        .await
        .unwrap()
}

fn phase_job(key: &str, phase: &str) -> NewJob {
    NewJob::new(
        key,
        Work::Phase {
            ticket: "T1".parse().unwrap(),
            phase: phase.parse().unwrap(),
        },
    )
}

async fn journal(store: &PgStore, run: &RunId) -> Vec<StoredEvent> {
    store.read(run, 0, 100_000).await.unwrap()
}

fn count(events: &[StoredEvent], f: impl Fn(&EventKind) -> bool) -> usize {
    events.iter().filter(|e| f(&e.event.kind)).count()
}

const LEASE: Duration = Duration::from_millis(1200);

/// `f`, which must end well within a few leases: a worker that never lets
/// go of its work fails the test instead of hanging it.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LEASE * 10, f)
        .await
        .expect("the worker did not stop its work")
}

/// Claims until a job is there (a lapsed lease is the server's to see).
async fn claim_next(queue: &dyn JobQueue, who: &DriverInfo) -> (Job, Instant) {
    let deadline = Instant::now() + LEASE * 10;
    loop {
        let sent = Instant::now();
        if let Some(job) = queue.claim(who, Runs::Any, &[], LEASE).await.unwrap() {
            return (job, sent);
        }
        assert!(Instant::now() < deadline, "no job to claim");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_job_runs_its_phase_alone_and_a_passed_phase_is_not_run_again() {
    let db = Db::new("phases").await;
    let store = db.store().await;
    let run: RunId = "r".parse().unwrap();
    let (_lock, epoch) = start(&store, &run).await;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    // In git: each phase's checkpoint is the next one's start.
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "start",
    ]);
    let ws =
        orch_state::GitWorkspace::new(orch_state::git::Repo::open(dir.path()).unwrap(), "HEAD")
            .unwrap();
    let w = Engine::new(plan(), Arc::new(Logged::new("a", &log)), store.clone())
        .unwrap()
        .workspace(Arc::new(ws));
    let queue: Arc<dyn JobQueue> = store.clone();

    // A job for a phase the ticket has not reached does nothing.
    queue
        .enqueue(&run, epoch, &[phase_job("T1/build/0/0", "build")])
        .await
        .unwrap();
    let (job, sent) = claim_next(&*queue, &me(1)).await;
    let worked = w.work(queue.clone(), &job, LEASE, sent, Cancellation::new());
    assert_eq!(worked.await.unwrap(), Worked::Superseded);
    // Nor one of the phase the ticket is at, enqueued before questions
    // and answers it has not had (a job taken over after a person
    // answered: the answer's own job runs the phase).
    queue
        .enqueue(&run, epoch, &[phase_job("T1/plan/0/7", "plan")])
        .await
        .unwrap();
    let (job, sent) = claim_next(&*queue, &me(1)).await;
    let worked = w.work(queue.clone(), &job, LEASE, sent, Cancellation::new());
    assert_eq!(worked.await.unwrap(), Worked::Superseded);
    assert!(log.lock().unwrap().is_empty());

    queue
        .enqueue(&run, epoch, &[phase_job("T1/plan/0/0", "plan")])
        .await
        .unwrap();
    let (job, sent) = claim_next(&*queue, &me(1)).await;
    let worked = w
        .work(queue.clone(), &job, LEASE, sent, Cancellation::new())
        .await
        .unwrap();
    assert_eq!(worked, Worked::Finished);
    let events = journal(&store, &run).await;
    let passed = |p: &'static str| move |k: &EventKind| matches!(k, EventKind::PhasePassed { phase, .. } if phase.as_str() == p);
    assert_eq!(count(&events, passed("plan")), 1);
    assert_eq!(
        count(&events, passed("build")),
        0,
        "only the job's phase ran"
    );
    assert_eq!(
        count(&events, |k| matches!(k, EventKind::TicketDone { .. })),
        0
    );
    let jobs = queue.jobs(&run).await.unwrap();
    assert!(jobs.iter().all(|j| j.state == JobState::Done), "{jobs:?}");

    // The next phase, then the first one again (a coordinator that
    // enqueued it twice): the second does not run its agent.
    queue
        .enqueue(&run, epoch, &[phase_job("T1/build/0/0/1", "build")])
        .await
        .unwrap();
    let (job, sent) = claim_next(&*queue, &me(1)).await;
    let worked = w.work(queue.clone(), &job, LEASE, sent, Cancellation::new());
    assert_eq!(worked.await.unwrap(), Worked::Finished);
    queue
        .enqueue(&run, epoch, &[phase_job("T1/plan/0/0/1", "plan")])
        .await
        .unwrap();
    let (job, sent) = claim_next(&*queue, &me(1)).await;
    let worked = w.work(queue.clone(), &job, LEASE, sent, Cancellation::new());
    assert_eq!(worked.await.unwrap(), Worked::Superseded);

    let events = journal(&store, &run).await;
    assert_eq!(count(&events, passed("plan")), 1);
    assert_eq!(count(&events, passed("build")), 1);
    assert_eq!(
        count(&events, |k| matches!(k, EventKind::TicketDone { .. })),
        1
    );
    assert_eq!(
        count(&events, |k| matches!(k, EventKind::RolledBack { .. })),
        0,
        "taking up the next phase throws nothing away"
    );
    let phases: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.phase.clone())
        .collect();
    assert_eq!(phases, ["plan", "build"]);
    // build started from plan's checkpoint, on the ticket's branch.
    let state = store.state(&run).await.unwrap();
    let build = &state.tickets[&"T1".parse::<orch_core::TicketId>().unwrap()].checkpoints
        [&"build".parse::<orch_core::PhaseName>().unwrap()];
    assert_eq!(
        git(&["show", &format!("{build}:T1.build.txt")]),
        "T1.plan.txt"
    );
    assert_eq!(
        state.tickets[&"T1".parse::<orch_core::TicketId>().unwrap()].status,
        orch_core::TicketStatus::Done
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_worker_cut_off_stops_its_agent_before_another_takes_the_job_over() {
    let db = Db::new("cut").await;
    let store = db.store().await;
    let run: RunId = "r".parse().unwrap();
    let (_lock, epoch) = start(&store, &run).await;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let agent_a = Arc::new(Logged::new("a", &log));
    agent_a.hold.store(true, Ordering::SeqCst);
    let a = worker(store.clone(), agent_a, dir.path());
    let b = worker(store.clone(), Arc::new(Logged::new("b", &log)), dir.path());
    let cut = Cut::off(&store, false);
    let queue_a: Arc<dyn JobQueue> = cut.clone();
    let queue_b: Arc<dyn JobQueue> = store.clone();
    queue_b
        .enqueue(&run, epoch, &[phase_job("T1/plan/0/0", "plan")])
        .await
        .unwrap();

    let (job, sent) = claim_next(&*queue_a, &me(1)).await;
    let worked = within(a.work(queue_a.clone(), &job, LEASE, sent, Cancellation::new()))
        .await
        .unwrap();
    let Worked::Lost(Kept::Unanswered(Some(why))) = &worked else {
        panic!("{worked:?}");
    };
    assert!(why.contains("cut off"), "{why}");

    let (job_b, sent) = claim_next(&*queue_b, &me(2)).await;
    let taken_at = Instant::now();
    assert_eq!((job_b.claim.job, job_b.takeovers), (job.claim.job, 1));
    let worked = b.work(queue_b.clone(), &job_b, LEASE, sent, Cancellation::new());
    assert_eq!(worked.await.unwrap(), Worked::Finished);

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!((log[0].worker, log[0].cancelled), ("a", true));
    assert!(
        log[0].ended.unwrap() < taken_at,
        "a's agent was still running when b took the job: {log:?}"
    );
    assert_eq!((log[1].worker, log[1].cancelled), ("b", false));
    let events = journal(&store, &run).await;
    assert_eq!(
        count(&events, |k| matches!(k, EventKind::PhasePassed { .. })),
        1
    );
    assert_eq!(queue_b.jobs(&run).await.unwrap()[0].state, JobState::Done);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_worker_frozen_past_its_lease_writes_nothing_after_the_takeover() {
    let db = Db::new("frozen").await;
    let store = db.store().await;
    let run: RunId = "r".parse().unwrap();
    let (_lock, epoch) = start(&store, &run).await;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let agent_a = Logged::deaf("a", &log);
    let release = agent_a.release.clone();
    let a = worker(store.clone(), Arc::new(agent_a), dir.path());
    let b = worker(store.clone(), Arc::new(Logged::new("b", &log)), dir.path());
    // a's renewals never come back, and its agent ignores being stopped:
    // a frozen process. Its work is left to finish after b took over.
    let cut = Cut::off(&store, true);
    let queue_a: Arc<dyn JobQueue> = cut.clone();
    let queue_b: Arc<dyn JobQueue> = store.clone();
    queue_b
        .enqueue(&run, epoch, &[phase_job("T1/plan/0/0", "plan")])
        .await
        .unwrap();
    let (job, sent) = claim_next(&*queue_a, &me(1)).await;
    let a_work = tokio::spawn({
        let queue_a = queue_a.clone();
        async move {
            a.work(queue_a, &job, LEASE, sent, Cancellation::new())
                .await
        }
    });

    let (job_b, sent) = claim_next(&*queue_b, &me(2)).await;
    assert_eq!(job_b.takeovers, 1);
    let before = journal(&store, &run).await.len();
    // a wakes up while b holds the job: none of its writes may land.
    release.notify_one();
    let worked = within(a_work).await.unwrap().unwrap();
    assert!(matches!(worked, Worked::Lost(_)), "{worked:?}");
    assert_eq!(
        journal(&store, &run).await.len(),
        before,
        "a wrote after the takeover"
    );

    let worked = b.work(queue_b.clone(), &job_b, LEASE, sent, Cancellation::new());
    assert_eq!(worked.await.unwrap(), Worked::Finished);
    let events = journal(&store, &run).await;
    assert_eq!(
        count(&events, |k| matches!(k, EventKind::PhasePassed { .. })),
        1
    );
    // a's agent never had its end recorded: only b's did.
    let finished = count(&events, |k| matches!(k, EventKind::AgentFinished { .. }));
    assert_eq!(finished, 1);
    db.drop().await;
}

/// A worker whose claim lapsed while its job's agent would not stop, and
/// that claims the same job again itself (its other slot was free): the
/// new claim waits, its lease renewed, until the old job's work has wound
/// down, so the ticket's tree is never worked on twice at once in one
/// worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_job_claimed_again_by_its_own_worker_waits_for_the_lost_one() {
    let db = Db::new("again").await;
    let store = db.store().await;
    let run: RunId = "r".parse().unwrap();
    let (_lock, epoch) = start(&store, &run).await;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let agent = Arc::new(Logged::deaf("w", &log));
    let w = Arc::new(worker(store.clone(), agent.clone(), dir.path()));
    // The first claim's renewals never come back.
    let queue_a: Arc<dyn JobQueue> = Cut::off(&store, true);
    let queue_b: Arc<dyn JobQueue> = store.clone();
    queue_b
        .enqueue(&run, epoch, &[phase_job("T1/plan/0/0", "plan")])
        .await
        .unwrap();
    let (job, sent) = claim_next(&*queue_a, &me(1)).await;
    let first = tokio::spawn({
        let (w, queue_a) = (w.clone(), queue_a.clone());
        async move {
            w.work(queue_a, &job, LEASE, sent, Cancellation::new())
                .await
        }
    });
    // Taken again by the same worker once the lease lapsed.
    let (job_b, sent) = claim_next(&*queue_b, &me(1)).await;
    assert_eq!(job_b.takeovers, 1);
    let id = job_b.claim.job;
    let second = tokio::spawn({
        let (w, queue_b) = (w.clone(), queue_b.clone());
        async move {
            w.work(queue_b, &job_b, LEASE, sent, Cancellation::new())
                .await
        }
    });
    // Until the second claim has been renewed twice (it is alive and
    // waiting), or its agent started beside the first's.
    let renewed = || async { store.job(id).await.unwrap().unwrap().renewed_at };
    let mut seen = vec![renewed().await];
    while seen.len() < 3 && log.lock().unwrap().len() < 2 {
        let now = renewed().await;
        if Some(&now) != seen.last() {
            seen.push(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "the second claim ran its agent while the first's still ran"
    );
    // The first agent ends at last: its job is lost, the second does the
    // phase.
    agent.hold.store(false, Ordering::SeqCst);
    agent.release.notify_one();
    let worked = within(first).await.unwrap().unwrap();
    assert!(matches!(worked, Worked::Lost(_)), "{worked:?}");
    assert_eq!(within(second).await.unwrap().unwrap(), Worked::Finished);
    {
        let ran = log.lock().unwrap();
        assert_eq!(ran.len(), 2);
        assert!(ran[0].ended.is_some() && ran[1].ended.is_some());
    }
    let events = journal(&store, &run).await;
    assert_eq!(
        count(&events, |k| matches!(k, EventKind::PhasePassed { .. })),
        1
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_worker_shutting_down_gives_its_job_back() {
    let db = Db::new("shutdown").await;
    let store = db.store().await;
    let run: RunId = "r".parse().unwrap();
    let (_lock, epoch) = start(&store, &run).await;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let agent = Arc::new(Logged::new("a", &log));
    agent.hold.store(true, Ordering::SeqCst);
    let a = worker(store.clone(), agent, dir.path());
    let queue: Arc<dyn JobQueue> = store.clone();
    queue
        .enqueue(&run, epoch, &[phase_job("T1/plan/0/0", "plan")])
        .await
        .unwrap();
    let (job, sent) = claim_next(&*queue, &me(1)).await;
    let cancel = Cancellation::new();
    let stop = {
        let (cancel, log) = (cancel.clone(), log.clone());
        async move {
            while log.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cancel.cancel();
        }
    };
    let (worked, ()) =
        within(async { tokio::join!(a.work(queue.clone(), &job, LEASE, sent, cancel), stop) })
            .await;
    assert_eq!(worked.unwrap(), Worked::GivenBack);
    let jobs = queue.jobs(&run).await.unwrap();
    assert_eq!((jobs[0].state, jobs[0].takeovers), (JobState::Available, 0));
    // Taken up again at once, not after a lease.
    let again = queue.claim(&me(2), Runs::Any, &[], LEASE).await.unwrap();
    assert_eq!(again.map(|j| j.claim.job), Some(job.claim.job));
    db.drop().await;
}

fn wide_plan() -> Plan {
    let mut toml = String::from(
        r#"
name = "wide"
default_role = "dev"
[policy]
max_concurrency = 4
[agents.dev]
backend = { kind = "custom", name = "test" }
[[phases]]
name = "plan"
[[phases]]
name = "build"
"#,
    );
    for i in 0..8 {
        let deps = if i >= 2 {
            format!("depends_on = [\"T{}\"]", i - 2)
        } else {
            String::new()
        };
        toml.push_str(&format!(
            "[[tickets]]\nid = \"T{i}\"\ntitle = \"t{i}\"\neffort = \"1h\"\n{deps}\n"
        ));
    }
    Plan::from_toml_str(&toml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_coordinator_hands_each_phase_to_the_workers_once_in_order() {
    let db = Db::new("coordinator").await;
    let run: RunId = "r".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = db.store().await;
    // The coordinator runs no agent: one that panics shows it would.
    struct NoAgent;
    #[async_trait]
    impl Agent for NoAgent {
        fn backend(&self) -> &str {
            "test"
        }
        async fn run(&self, _: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
            panic!("the coordinator ran an agent")
        }
    }
    let coordinator = Engine::new(wide_plan(), Arc::new(NoAgent), store.clone())
        .unwrap()
        .workspace(Arc::new(SharedDir::new(dir.path())))
        .poll_interval(Duration::from_millis(20))
        .workers(store.clone());
    let stop = Cancellation::new();
    let mut workers = Vec::new();
    for (n, name) in [(1, "a"), (2, "b")] {
        let store = db.store().await;
        let w = Engine::new(
            wide_plan(),
            Arc::new(Logged::new(name, &log)),
            store.clone(),
        )
        .unwrap()
        .workspace(Arc::new(SharedDir::new(dir.path())));
        workers.push(tokio::spawn(work_roles(
            w,
            store,
            me(n),
            Vec::new(),
            true,
            stop.clone(),
        )));
    }
    let report = within(coordinator.run(&run, Cancellation::new()))
        .await
        .unwrap();
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(report.outcome, orch_core::RunOutcome::Completed);
    let events = journal(&store, &run).await;
    let mut passed = std::collections::HashSet::new();
    for e in &events {
        match &e.event.kind {
            EventKind::PhasePassed { ticket, phase, .. } => {
                assert!(
                    passed.insert((ticket.clone(), phase.clone())),
                    "{ticket} {phase} passed twice"
                );
                if phase.as_str() == "build" {
                    assert!(passed.contains(&(ticket.clone(), "plan".parse().unwrap())));
                }
            }
            EventKind::AgentStarted { ticket, phase, .. } if phase.as_str() == "plan" => {
                // A ticket starts only once what it depends on is done.
                let plan = wide_plan();
                let t = plan.tickets.iter().find(|t| t.id == *ticket).unwrap();
                for d in &t.depends_on {
                    assert!(
                        passed.contains(&(d.clone(), "build".parse().unwrap())),
                        "{ticket} started before {d}"
                    );
                }
            }
            _ => {}
        }
    }
    assert_eq!(passed.len(), 16);
    let ran = log.lock().unwrap().clone();
    assert_eq!(ran.len(), 16, "each phase ran once: {ran:?}");
    assert!(
        ran.iter().any(|r| r.worker == "a") && ran.iter().any(|r| r.worker == "b"),
        "{ran:?}"
    );
    let jobs = store.jobs(&run).await.unwrap();
    assert_eq!(jobs.len(), 16);
    assert!(jobs.iter().all(|j| j.state == JobState::Done), "{jobs:?}");
    db.drop().await;
}

/// Runs git in `dir`, panicking with its output when it fails.
fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The remote the machines share work through: a bare `remote.git` in
/// `top` with one commit on `main`.
fn shared_remote(top: &Path) -> std::path::PathBuf {
    git_in(top, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
    git_in(top, &["clone", "-q", "remote.git", "seed"]);
    let seed = top.join("seed");
    std::fs::write(seed.join("README"), "shared\n").unwrap();
    git_in(&seed, &["add", "README"]);
    git_in(&seed, &["commit", "-q", "-m", "start"]);
    git_in(&seed, &["push", "-q", "origin", "main"]);
    top.join("remote.git")
}

/// A machine: its own clone `name` of [`shared_remote`], its git workspace
/// sharing through origin.
fn machine(top: &Path, name: &str) -> orch_state::GitWorkspace {
    git_in(top, &["clone", "-q", "remote.git", name]);
    let repo = orch_state::git::Repo::open(top.join(name)).unwrap();
    orch_state::GitWorkspace::new(repo, "HEAD")
        .unwrap()
        .remote("origin")
}

/// The branch of batch B1 of run `r`.
const BATCH: &str = "refs/heads/orch/r/batch-B1";

/// The commit the journal has batch B1 merged at.
fn merged_commit(events: &[StoredEvent]) -> String {
    let merged: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::BatchMerged { commit, .. } => Some(commit.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(merged.len(), 1, "{merged:?}");
    merged[0].to_owned()
}

/// An engine of [`shared_plan`] with a [`Logged`] agent `name`, working
/// in `ws`.
fn on_machine(
    name: &'static str,
    ws: Arc<dyn Workspace>,
    store: &Arc<PgStore>,
    log: &Arc<Mutex<Vec<Ran>>>,
) -> Engine {
    Engine::new(
        shared_plan(),
        Arc::new(Logged::new(name, log)),
        store.clone(),
    )
    .unwrap()
    .workspace(ws)
}

/// [`on_machine`] made a coordinator of `store`'s queue.
fn coordinating(
    ws: Arc<dyn Workspace>,
    store: &Arc<PgStore>,
    log: &Arc<Mutex<Vec<Ran>>>,
) -> Engine {
    on_machine("c", ws, store, log)
        .poll_interval(Duration::from_millis(20))
        .workers(store.clone())
}

/// A plan whose phases have roles of their own (so a worker for each
/// does every ticket's one phase), in one batch (two tickets listed by
/// it, two naming it).
fn shared_plan() -> Plan {
    let mut toml = String::from(
        r#"
name = "across"
[policy]
max_concurrency = 4
[agents.planner]
backend = { kind = "custom", name = "test" }
[agents.dev]
backend = { kind = "custom", name = "test" }
[[phases]]
name = "plan"
role = "planner"
[[phases]]
name = "build"
role = "dev"
[[batches]]
id = "B1"
title = "all"
tickets = ["T0", "T1"]
"#,
    );
    // T2 and T3 name their batch themselves.
    for i in 0..4 {
        let deps = if i >= 2 {
            format!("depends_on = [\"T{}\"]\nbatch = \"B1\"", i - 2)
        } else {
            String::new()
        };
        toml.push_str(&format!(
            "[[tickets]]\nid = \"T{i}\"\ntitle = \"t{i}\"\neffort = \"1h\"\n{deps}\n"
        ));
    }
    Plan::from_toml_str(&toml).unwrap()
}

/// Claims jobs of `roles` (none: any) and does them until `stop`; without
/// `merges`, the first batch merge it claims is given back, and it stops.
async fn work_roles(
    w: Engine,
    queue: Arc<dyn JobQueue>,
    who: DriverInfo,
    roles: Vec<RoleName>,
    merges: bool,
    stop: Cancellation,
) {
    while !stop.is_cancelled() {
        let sent = Instant::now();
        match queue.claim(&who, Runs::Any, &roles, LEASE).await.unwrap() {
            Some(job) if !merges && matches!(job.work, Work::Merge { .. }) => {
                assert!(queue.give_back(&job.claim).await.unwrap());
                return;
            }
            Some(job) => {
                let worked = w.work(queue.clone(), &job, LEASE, sent, Cancellation::new());
                let worked = worked.await.unwrap();
                assert!(
                    matches!(worked, Worked::Finished | Worked::Superseded),
                    "{worked:?}"
                );
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn work_goes_between_clones_through_the_remote_and_the_journal() {
    let db = Db::new("clones").await;
    let run: RunId = "r".parse().unwrap();
    let top = tempfile::tempdir().unwrap();
    let bare = shared_remote(top.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = db.store().await;
    let coordinator = coordinating(Arc::new(machine(top.path(), "coordinator")), &store, &log);
    let stop = Cancellation::new();
    let mut workers = Vec::new();
    for (n, name, role) in [(1, "a", "planner"), (2, "b", "dev")] {
        let store = db.store().await;
        let w = on_machine(name, Arc::new(machine(top.path(), name)), &store, &log);
        let roles = vec![role.parse().unwrap()];
        workers.push(tokio::spawn(work_roles(
            w,
            store,
            me(n),
            roles,
            true,
            stop.clone(),
        )));
    }
    let report = within(coordinator.run(&run, Cancellation::new()))
        .await
        .unwrap();
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(report.outcome, orch_core::RunOutcome::Completed);
    // The batch merged on a worker, and its branch names the recorded
    // merge, on the remote and in the coordinator's clone.
    let events = journal(&store, &run).await;
    let merges: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event.kind {
            EventKind::MergeStarted { worker, .. } => Some(worker.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(merges, [true], "one merge, by a worker");
    let recorded = merged_commit(&events);
    assert_eq!(git_in(&bare, &["rev-parse", BATCH]), recorded);
    let here = top.path().join("coordinator");
    assert_eq!(git_in(&here, &["rev-parse", BATCH]), recorded);
    // Every phase ran once, plan on a, build on b.
    let ran = log.lock().unwrap().clone();
    assert_eq!(ran.len(), 8, "{ran:?}");
    for r in &ran {
        assert_eq!(r.worker, if r.phase == "plan" { "a" } else { "b" });
    }
    // Every checkpoint the journal has is on the remote.
    let mut checkpoints = 0;
    for e in &events {
        if let EventKind::PhasePassed {
            checkpoint: Some(c),
            ..
        } = &e.event.kind
        {
            git_in(&bare, &["cat-file", "-e", &format!("{c}^{{commit}}")]);
            checkpoints += 1;
        }
    }
    assert_eq!(checkpoints, 8);
    // b built each ticket on a's plan, and on its dependency's work.
    let show = |f: &str| git_in(&bare, &["show", &format!("{BATCH}:{f}")]);
    assert_eq!(show("T0.build.txt"), "T0.plan.txt");
    assert_eq!(show("T2.build.txt"), "T0.build.txt,T0.plan.txt,T2.plan.txt");
    let files = git_in(&bare, &["ls-tree", "--name-only", BATCH]);
    assert_eq!(files.lines().count(), 9, "{files}"); // README and 8 phases' files
    db.drop().await;
}

/// A machine's git workspace that, with `frozen`, waits for `release`
/// the first time it fetches a batch's tickets (a worker frozen by
/// SIGSTOP just before it merges); with `unpublished`, cannot set a
/// batch's branch (the remote down, or a coordinator killed before it
/// did); with `held`, waits for `publish` before it first does.
struct Faulty {
    inner: orch_state::GitWorkspace,
    frozen: AtomicBool,
    release: Arc<tokio::sync::Notify>,
    unpublished: AtomicBool,
    held: AtomicBool,
    publish: Arc<tokio::sync::Notify>,
}

impl Faulty {
    fn new(inner: orch_state::GitWorkspace) -> Faulty {
        Faulty {
            inner,
            frozen: AtomicBool::new(false),
            release: Arc::default(),
            unpublished: AtomicBool::new(false),
            held: AtomicBool::new(false),
            publish: Arc::default(),
        }
    }
}

#[async_trait]
impl Workspace for Faulty {
    async fn prepare(
        &self,
        run: &RunId,
        ticket: &TicketId,
        deps: &[TicketId],
    ) -> Result<Prepared, WorkspaceError> {
        self.inner.prepare(run, ticket, deps).await
    }
    async fn checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &orch_core::PhaseName,
        attempt: u32,
        records: &[String],
        claim: Option<&orch_core::Claim>,
    ) -> Result<Option<String>, WorkspaceError> {
        self.inner
            .checkpoint(run, ticket, phase, attempt, records, claim)
            .await
    }
    async fn find_checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &orch_core::PhaseName,
        attempt: u32,
        claim: Option<&orch_core::Claim>,
    ) -> Result<Option<String>, WorkspaceError> {
        self.inner
            .find_checkpoint(run, ticket, phase, attempt, claim)
            .await
    }
    async fn rollback(
        &self,
        run: &RunId,
        ticket: &TicketId,
        commit: &str,
    ) -> Result<(), WorkspaceError> {
        self.inner.rollback(run, ticket, commit).await
    }
    async fn fetch(&self, run: &RunId, at: &[(TicketId, String)]) -> Result<(), WorkspaceError> {
        if self.frozen.swap(false, Ordering::SeqCst) {
            self.release.notified().await;
        }
        self.inner.fetch(run, at).await
    }
    async fn merge(
        &self,
        run: &RunId,
        batch: &BatchId,
        tickets: &[TicketId],
        claim: Option<&orch_core::Claim>,
    ) -> Result<Merged, WorkspaceError> {
        self.inner.merge(run, batch, tickets, claim).await
    }
    async fn publish(
        &self,
        run: &RunId,
        batch: &BatchId,
        commit: &str,
    ) -> Result<(), WorkspaceError> {
        if self.held.swap(false, Ordering::SeqCst) {
            self.publish.notified().await;
        }
        if self.unpublished.load(Ordering::SeqCst) {
            return Err(WorkspaceError::new(
                orch_core::WorkspaceErrorKind::Tool,
                "the remote is down",
            ));
        }
        self.inner.publish(run, batch, commit).await
    }
    async fn release(&self, run: &RunId, ticket: &TicketId) -> Result<(), WorkspaceError> {
        self.inner.release(run, ticket).await
    }
}

/// A worker frozen just before it merges a batch, past its lease: another
/// worker merges the batch and records it; the frozen one wakes up before
/// the coordinator publishes, merges and shares a merge of its own; the
/// batch's branch names the recorded merge all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_merge_by_a_worker_whose_claim_was_lost_names_no_branch() {
    let db = Db::new("stale_merge").await;
    let run: RunId = "r".parse().unwrap();
    let top = tempfile::tempdir().unwrap();
    let bare = shared_remote(top.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = db.store().await;
    // The coordinator publishes the merge only when let.
    let here = Faulty::new(machine(top.path(), "coordinator"));
    here.held.store(true, Ordering::SeqCst);
    let publish = here.publish.clone();
    let coordinator = coordinating(Arc::new(here), &store, &log);
    let coordinating = tokio::spawn({
        let run = run.clone();
        async move { coordinator.run(&run, Cancellation::new()).await }
    });
    // a and b do the phases and stop at the merge.
    let stop = Cancellation::new();
    let mut phases = Vec::new();
    for (n, name, role) in [(1, "a", "planner"), (2, "b", "dev")] {
        let w = on_machine(name, Arc::new(machine(top.path(), name)), &store, &log);
        let roles = vec![role.parse().unwrap()];
        let stop = stop.clone();
        phases.push(tokio::spawn(work_roles(
            w,
            store.clone(),
            me(n),
            roles,
            false,
            stop,
        )));
    }
    let s_ws = Faulty::new(machine(top.path(), "s"));
    let s_dir = top.path().join("s");
    s_ws.frozen.store(true, Ordering::SeqCst);
    let release = s_ws.release.clone();
    let s = on_machine("s", Arc::new(s_ws), &store, &log);
    // s's renewals never come back: it is frozen.
    let queue_s: Arc<dyn JobQueue> = Cut::off(&store, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (job, sent) = loop {
        // Only the merge is left for s once a and b stopped at it.
        let sent = Instant::now();
        if phases.iter().all(|p| p.is_finished())
            && let Some(job) = queue_s.claim(&me(3), Runs::Any, &[], LEASE).await.unwrap()
        {
            break (job, sent);
        }
        assert!(
            Instant::now() < deadline,
            "the phases did not end in a merge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(job.work, Work::Merge { .. }), "{job:?}");
    let s_claim = job.claim.clone();
    let s_work = tokio::spawn({
        let queue_s = queue_s.clone();
        async move {
            s.work(queue_s, &job, LEASE, sent, Cancellation::new())
                .await
        }
    });
    // b takes the merge over once s's lease lapsed, and records it.
    let b = on_machine("b", Arc::new(machine(top.path(), "b2")), &store, &log);
    let (job_b, sent) = claim_next(&*store, &me(2)).await;
    assert_eq!(job_b.takeovers, 1);
    let worked = b.work(store.clone(), &job_b, LEASE, sent, Cancellation::new());
    assert_eq!(worked.await.unwrap(), Worked::Finished);
    let recorded = merged_commit(&journal(&store, &run).await);

    // Before the coordinator publishes it, s wakes up, merges (from the
    // base: nothing is published yet) and shares its merge; its record is
    // refused, and it moves no branch. It merges a second after b did at
    // least, so its merge is a commit of its own.
    let merged_at: u64 = git_in(&bare, &["show", "-s", "--format=%ct", &recorded])
        .parse()
        .unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() <= merged_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    release.notify_one();
    let worked = within(s_work).await.unwrap().unwrap();
    assert!(matches!(worked, Worked::Lost(_)), "{worked:?}");
    let stale = git_in(&s_dir, &["rev-parse", BATCH]);
    assert_ne!(stale, recorded);
    git_in(&bare, &["cat-file", "-e", &format!("{stale}^{{commit}}")]);
    assert_eq!(git_in(&bare, &["branch", "--list", "orch/r/batch-B1"]), "");
    // Each merge is shared under the claim that made it: the stale one
    // under s's, the recorded one under b's, which took the job over.
    let under = |claim: &orch_core::Claim, c: &str| {
        format!(
            "refs/orch/r/batches/B1/jobs/{}/claims/{}/{c}",
            claim.job, claim.token
        )
    };
    let shared = git_in(
        &bare,
        &[
            "for-each-ref",
            "--format=%(refname)",
            "refs/orch/r/batches/",
        ],
    );
    let mut shared: Vec<&str> = shared.lines().collect();
    shared.sort_unstable();
    let mut expected = [under(&s_claim, &stale), under(&job_b.claim, &recorded)];
    expected.sort_unstable();
    assert_eq!(shared, expected);

    // The coordinator publishes the recorded merge, and the run ends.
    publish.notify_one();
    let report = within(coordinating).await.unwrap().unwrap();
    assert_eq!(report.outcome, orch_core::RunOutcome::Completed);
    // The branch names the recorded merge.
    assert_eq!(git_in(&bare, &["rev-parse", BATCH]), recorded);
    let events = journal(&store, &run).await;
    assert_eq!(merged_commit(&events), recorded);
    stop.cancel();
    db.drop().await;
}

/// A batch merged and recorded whose branch the coordinator could not set
/// (the remote down, or the coordinator killed between the two): the run
/// resumed sets it to the recorded merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_merge_recorded_but_not_published_is_published_on_resume() {
    let db = Db::new("unpublished").await;
    let run: RunId = "r".parse().unwrap();
    let top = tempfile::tempdir().unwrap();
    let bare = shared_remote(top.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = db.store().await;
    let here = Arc::new(Faulty::new(machine(top.path(), "coordinator")));
    here.unpublished.store(true, Ordering::SeqCst);
    let coordinator = || coordinating(here.clone(), &store, &log);
    let stop = Cancellation::new();
    let w = on_machine("w", Arc::new(machine(top.path(), "w")), &store, &log);
    let working = tokio::spawn(work_roles(
        w,
        store.clone(),
        me(1),
        vec![],
        true,
        stop.clone(),
    ));
    let report = within(coordinator().run(&run, Cancellation::new()))
        .await
        .unwrap();
    assert_eq!(report.outcome, orch_core::RunOutcome::Completed);
    let recorded = merged_commit(&journal(&store, &run).await);
    assert_eq!(git_in(&bare, &["branch", "--list", "orch/r/batch-B1"]), "");
    // Resumed, once its hold on the run (let go of in the background) is
    // gone.
    here.unpublished.store(false, Ordering::SeqCst);
    let report = within(async {
        loop {
            match coordinator().run(&run, Cancellation::new()).await {
                Err(orch_graph::EngineError::Store(e)) if e.kind == StoreErrorKind::Locked => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => break r.unwrap(),
            }
        }
    })
    .await;
    assert_eq!(report.outcome, orch_core::RunOutcome::Completed);
    assert_eq!(git_in(&bare, &["rev-parse", BATCH]), recorded);
    assert_eq!(
        git_in(&top.path().join("coordinator"), &["rev-parse", BATCH]),
        recorded
    );
    stop.cancel();
    working.await.unwrap();
    db.drop().await;
}

/// A worker whose clone is at another commit than the run's driver's
/// refuses the run's jobs, naming both commits, and gives each back
/// untouched: machines at different commits would build on different
/// code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_worker_at_another_commit_refuses_the_runs_jobs() {
    let db = Db::new("other_base").await;
    let run: RunId = "r".parse().unwrap();
    let top = tempfile::tempdir().unwrap();
    shared_remote(top.path());
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = db.store().await;
    let here = machine(top.path(), "coordinator");
    let theirs = here.base().to_owned();
    let coordinator = coordinating(Arc::new(here), &store, &log);
    let stop = Cancellation::new();
    let coordinating = tokio::spawn({
        let (run, stop) = (run.clone(), stop.clone());
        async move { coordinator.run(&run, stop).await }
    });
    // A clone that moved on by a commit of its own.
    git_in(top.path(), &["clone", "-q", "remote.git", "moved"]);
    let moved = top.path().join("moved");
    std::fs::write(moved.join("mine.txt"), "mine\n").unwrap();
    git_in(&moved, &["add", "mine.txt"]);
    git_in(&moved, &["commit", "-q", "-m", "mine"]);
    let ws = orch_state::GitWorkspace::new(orch_state::git::Repo::open(&moved).unwrap(), "HEAD")
        .unwrap()
        .remote("origin");
    let mine = ws.base().to_owned();
    assert_ne!(mine, theirs);
    let w = on_machine("w", Arc::new(ws), &store, &log);
    let (job, sent) = claim_next(&*store, &me(1)).await;
    let e = w
        .work(store.clone(), &job, LEASE, sent, Cancellation::new())
        .await
        .unwrap_err();
    let message = e.to_string();
    assert!(matches!(e, orch_graph::EngineError::Job { .. }), "{e:?}");
    assert!(
        message.contains(&mine) && message.contains(&theirs),
        "{message}"
    );
    let info = store.job(job.claim.job).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Available);
    assert!(log.lock().unwrap().is_empty(), "an agent ran");
    stop.cancel();
    within(coordinating).await.unwrap().unwrap();
    db.drop().await;
}

/// An agent that fails its first run (the gate finds no file) and does
/// the work on the next; logs its runs like [`Logged`] and takes its time.
struct SecondTime {
    log: Arc<Mutex<Vec<(Instant, Instant)>>>,
    runs: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl Agent for SecondTime {
    fn backend(&self) -> &str {
        "test"
    }
    async fn run(&self, task: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if self.runs.fetch_add(1, Ordering::SeqCst) > 0 {
            std::fs::write(task.workdir.join(format!("{}.txt", task.ticket.id)), "x").unwrap();
        }
        self.log.lock().unwrap().push((start, Instant::now()));
        Ok(AgentOutcome {
            success: true,
            ..Default::default()
        })
    }
}

/// A phase that restarts from itself when spent: the worker's job ends at
/// the restart, and the restarted phase runs as a job of its own, never
/// beside the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_phase_restarting_from_itself_runs_in_one_place_at_a_time() {
    let db = Db::new("restart").await;
    let run: RunId = "r".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = || {
        Plan::from_toml_str(
            r#"
name = "again"
default_role = "dev"
[agents.dev]
backend = { kind = "custom", name = "test" }
[[phases]]
name = "work"
max_attempts = 1
on_exhausted = "restart"
restart_from = "work"
gates = [{ kind = "command", argv = ["test", "-s", "{ticket}.txt"] }]
[[tickets]]
id = "T1"
title = "one"
effort = "1h"
"#,
        )
        .unwrap()
    };
    let store = db.store().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let agent = Arc::new(SecondTime {
        log: log.clone(),
        runs: Default::default(),
    });
    let coordinator = Engine::new(plan(), agent.clone(), store.clone())
        .unwrap()
        .workspace(Arc::new(SharedDir::new(dir.path())))
        .gates(Arc::new(orch_gates::from_spec))
        .poll_interval(Duration::from_millis(20))
        .workers(store.clone());
    let stop = Cancellation::new();
    let mut workers = Vec::new();
    for n in [1, 2] {
        let store = db.store().await;
        let w = Engine::new(plan(), agent.clone(), store.clone())
            .unwrap()
            .workspace(Arc::new(SharedDir::new(dir.path())))
            .gates(Arc::new(orch_gates::from_spec));
        workers.push(tokio::spawn(work_roles(
            w,
            store,
            me(n),
            Vec::new(),
            true,
            stop.clone(),
        )));
    }
    let report = within(coordinator.run(&run, Cancellation::new()))
        .await
        .unwrap();
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(report.outcome, orch_core::RunOutcome::Completed);
    let runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs[0].1 <= runs[1].0 || runs[1].1 <= runs[0].0,
        "the phase ran in two places at once: {runs:?}"
    );
    let events = journal(&store, &run).await;
    assert_eq!(
        count(&events, |k| matches!(k, EventKind::PhasePassed { .. })),
        1
    );
    db.drop().await;
}

/// A run whose jobs were cancelled (an abort, a spent budget) and which is
/// then resumed: the resumed coordinator puts those phases in the queue
/// again, under keys of a new generation, instead of waiting forever on
/// jobs no worker may claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set ORCH_TEST_DATABASE_URL (.ci/run does)"]
async fn a_run_resumed_after_its_jobs_were_cancelled_puts_them_in_the_queue_again() {
    let db = Db::new("cancelled").await;
    let run: RunId = "r".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = db.store().await;
    let coordinator = || {
        Engine::new(wide_plan(), Arc::new(Logged::new("c", &log)), store.clone())
            .unwrap()
            .workspace(Arc::new(SharedDir::new(dir.path())))
            .poll_interval(Duration::from_millis(20))
            .workers(store.clone())
    };
    // A first coordinator, with no worker yet, puts the first phases in
    // the queue and is stopped.
    let stop = Cancellation::new();
    let first = coordinator();
    let (r, s) = (run.clone(), stop.clone());
    let first = tokio::spawn(async move { first.run(&r, s).await });
    within(async {
        while store.jobs(&run).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.cancel();
    within(first).await.unwrap().unwrap();
    // Its jobs are cancelled, as an abort does (once its hold on the run,
    // let go of in the background, is gone).
    let lock = within(async {
        loop {
            match store.lock_run(&run).await {
                Ok(lock) => break lock,
                Err(e) if e.kind == StoreErrorKind::Locked => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    let cancelled = store.cancel(&run, lock.epoch().unwrap()).await.unwrap();
    assert!(cancelled > 0);
    drop(lock);
    // A worker, and the run resumed: it completes.
    let worker_store = db.store().await;
    let w = Engine::new(
        wide_plan(),
        Arc::new(Logged::new("w", &log)),
        worker_store.clone(),
    )
    .unwrap()
    .workspace(Arc::new(SharedDir::new(dir.path())));
    let stop_worker = Cancellation::new();
    let working = tokio::spawn(work_roles(
        w,
        worker_store,
        me(1),
        Vec::new(),
        true,
        stop_worker.clone(),
    ));
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        coordinator().run(&run, Cancellation::new()),
    )
    .await
    .expect("the resumed run waited on its cancelled jobs")
    .unwrap();
    stop_worker.cancel();
    working.await.unwrap();
    assert_eq!(report.outcome, orch_core::RunOutcome::Completed);
    let jobs = store.jobs(&run).await.unwrap();
    // Each cancelled job was put in the queue again under the next
    // generation's key (ticket/phase/restarts/asked/generation), and done.
    let dropped: Vec<&JobInfo> = jobs
        .iter()
        .filter(|j| j.state == JobState::Cancelled)
        .collect();
    assert_eq!(dropped.len() as u64, cancelled, "{jobs:?}");
    for c in dropped {
        let again = format!("{}/1", c.key);
        assert!(
            jobs.iter()
                .any(|j| j.key == again && j.state == JobState::Done),
            "no {again} done: {jobs:?}"
        );
    }
    assert!(
        jobs.iter()
            .all(|j| matches!(j.state, JobState::Done | JobState::Cancelled)),
        "{jobs:?}"
    );
    // Generations are counted for each job afresh: a later phase's job
    // has a generation only where its own was cancelled (so a coordinator
    // that restarts computes the same keys and adds no job beside them).
    for j in &jobs {
        if let Some(first) = j.key.strip_suffix("/1") {
            assert!(
                jobs.iter()
                    .any(|c| c.key == first && c.state == JobState::Cancelled),
                "{} has a generation, but {first} was not cancelled: {jobs:?}",
                j.key
            );
        }
    }
    // Each phase ran once, on the worker.
    let ran = log.lock().unwrap().clone();
    assert_eq!(ran.len(), 16, "{ran:?}");
    assert!(ran.iter().all(|r| r.worker == "w"), "{ran:?}");
    db.drop().await;
}

/// A checkpoint made just before a crash, before its push: the engine
/// finds it on resume (`find_checkpoint`), and it is on the remote before
/// anything can record it, so no other machine is sent after a commit it
/// cannot fetch.
#[tokio::test]
async fn a_checkpoint_found_after_a_crash_is_pushed_before_it_is_recorded() {
    use orch_core::Workspace;
    let top = tempfile::tempdir().unwrap();
    let bare = shared_remote(top.path());
    let ws = machine(top.path(), "machine");
    let (run, ticket): (RunId, orch_core::TicketId) = ("r".parse().unwrap(), "T1".parse().unwrap());
    let phase: orch_core::PhaseName = "build".parse().unwrap();
    let tree = ws.prepare(&run, &ticket, &[]).await.unwrap();
    std::fs::write(tree.path.join("work.txt"), "done\n").unwrap();
    let claim = |token| orch_core::Claim {
        job: 5,
        run: run.clone(),
        token,
        expires_at: orch_core::Timestamp(0),
    };
    let made = ws
        .checkpoint(&run, &ticket, &phase, 1, &[], Some(&claim(1)))
        .await
        .unwrap()
        .expect("a checkpoint");
    // Pushed under the claim that made it; then the crash: say it came
    // before the push, so the remote does not have it.
    let under = |token| {
        format!("refs/orch/{run}/tickets/{ticket}/phases/{phase}/1/jobs/5/claims/{token}/{made}")
    };
    git_in(&bare, &["update-ref", "-d", &under(1)]);
    let on_remote = |c: &str| {
        std::process::Command::new("git")
            .args(["cat-file", "-e", &format!("{c}^{{commit}}")])
            .current_dir(&bare)
            .status()
            .unwrap()
            .success()
    };
    git_in(&bare, &["gc", "-q", "--prune=now"]);
    assert!(!on_remote(&made), "the crash left it unpushed");
    // The job taken up again, under its next claim.
    let found = ws
        .find_checkpoint(&run, &ticket, &phase, 1, Some(&claim(2)))
        .await
        .unwrap()
        .expect("found after the crash");
    assert_eq!(found, made);
    assert!(on_remote(&found), "found, recorded, and not on the remote");
    let shared = git_in(&bare, &["for-each-ref", "--format=%(refname)"]);
    assert_eq!(
        shared
            .lines()
            .filter(|r| r.contains(&*made))
            .collect::<Vec<_>>(),
        [under(2)],
        "shared under the claim that records it"
    );
}
