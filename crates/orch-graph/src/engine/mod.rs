//! The run engine; see [`Engine`].

mod decide;
mod job;
mod journal;
mod prompt;
mod ticket;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

use orch_core::process;
use orch_core::secrets::Redactor;
use orch_core::{
    Agent, AgentContext, AgentId, BatchId, Cancellation, Decision, EventKind, Expect, Gate,
    GateError, GateSpec, Plan, Problem, Progress, RoleName, RunId, RunOutcome, RunState, RunStatus,
    SharedDir, StateStore, StoreError, TicketId, TicketStatus, Workspace,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::graph::{GraphError, Ix, PlanGraph};
use crate::scheduler::Scheduler;
pub use decide::{AdrDraft, accept, decide, decide_with_adr};
pub use job::Worked;
use journal::{Journal, Writer};
pub use prompt::prompt;
use ticket::End;

/// A scheduler transition the engine makes only from the state it knows
/// the ticket is in: failing means the two are out of step, a bug. It is
/// logged (and fails debug builds, so tests catch it), not dropped.
fn in_step<T>(r: Result<T, crate::scheduler::SchedulerError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "the scheduler is out of step with the run (a bug)");
        debug_assert!(false, "the scheduler is out of step with the run: {e}");
    }
}

/// Builds a gate from a spec (with `{ticket}` and `{phase}` already filled
/// in). orch-gates' `from_spec` is one.
pub type GateFactory =
    Arc<dyn Fn(&GateSpec) -> Result<Arc<dyn Gate>, GateError> + Send + Sync + 'static>;

pub use orch_core::Observer;

/// Why a run could not be started or went on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The plan has problems (nothing ran).
    #[error("the plan is invalid:\n{}", list(.0.iter().map(|p| format!("{}: {}", p.path, p.message))))]
    Plan(Vec<Problem>),
    /// The plan's graph is invalid, e.g. a cycle (nothing ran).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A gate of the plan cannot be built (nothing ran).
    #[error("phase {phase:?}: {error}")]
    Gate {
        /// The phase (or `batch`).
        phase: String,
        /// Why.
        error: GateError,
    },
    /// Roles of the plan cannot run: their backend's program is not
    /// installed, their API key is not set ([`Agent::check`]; nothing ran).
    #[error("the plan's agents cannot run:\n{}", list(.0.iter().map(|(r, e)| format!("role {r}: {}", e.message))))]
    Agents(Vec<(RoleName, orch_core::AgentError)>),
    /// The run's journal was started with a different plan.
    #[error(
        "run {run} was started with a different plan; changed since:\n{}\nresume with the plan it started with, or allow the change explicitly (`--allow-plan-change`)",
        list(.changes.iter().cloned())
    )]
    PlanChanged {
        /// The run.
        run: RunId,
        /// What changed, part by part.
        changes: Vec<String>,
    },
    /// The state store failed; the run stopped. Nothing already persisted
    /// is lost; resume when the store is back.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A decision was refused.
    #[error("{0}")]
    Decision(String),
    /// A worker was given a job it cannot do (its run, ticket or phase is
    /// not in this engine's plan, or it is work this worker does not do);
    /// the job was given back.
    #[error("job {key:?} of run {run}: {message}")]
    Job {
        /// The run.
        run: RunId,
        /// The job's key.
        key: String,
        /// Why.
        message: String,
    },
    /// Processes that an earlier driver of the run started could not be
    /// stopped; nothing was rolled back or run (they could still write
    /// into the work trees).
    #[error("run {run}: cannot stop what an earlier driver left running: {message}")]
    Leftovers {
        /// The run.
        run: RunId,
        /// Why.
        message: String,
    },
}

fn list(items: impl Iterator<Item = String>) -> String {
    items
        .map(|s| format!("  - {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How a run ended, and its final state.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub outcome: RunOutcome,
    /// The folded state (equal to folding the journal).
    pub state: RunState,
}

/// The run engine: dispatches ready tickets to agents, carries each through
/// the plan's phases with gates, retries, restarts and escalations, merges
/// batches, and writes every step to the journal before it acts.
///
/// The engine is generic over the core contracts: any [`Agent`] (usually a
/// router that picks a backend by `task.role`), any [`Gate`] (built from the
/// plan's [`GateSpec`]s by a [`GateFactory`]), any [`StateStore`] and any
/// [`Workspace`].
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use orch_core::*;
/// use orch_graph::{Engine, decide};
///
/// /// An agent that always succeeds.
/// struct Done;
/// #[async_trait]
/// impl Agent for Done {
///     fn backend(&self) -> &str { "done" }
///     async fn run(&self, t: AgentTask, _: &AgentContext) -> Result<AgentOutcome, AgentError> {
///         Ok(AgentOutcome { success: true, summary: format!("did {}", t.ticket.id), ..Default::default() })
///     }
/// }
/// # #[derive(Default)] struct Mem(std::sync::Mutex<Vec<Event>>);
/// # #[async_trait] impl StateStore for Mem {
/// #   async fn append_if(&self, _: &RunId, _: Expect, ev: &[Event]) -> Result<Vec<u64>, StoreError> {
/// #     let mut j = self.0.lock().unwrap(); let mut s = vec![];
/// #     for e in ev { match j.iter().position(|x| x.id == e.id) { Some(i) => s.push(i as u64 + 1), None => { j.push(e.clone()); s.push(j.len() as u64) } } }
/// #     Ok(s) }
/// #   async fn read(&self, _: &RunId, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
/// #     Ok(self.0.lock().unwrap().iter().enumerate().map(|(i, e)| StoredEvent { seq: i as u64 + 1, event: e.clone() })
/// #       .filter(|s| s.seq > after).take(limit).collect()) }
/// #   async fn runs(&self) -> Result<Vec<RunId>, StoreError> { Ok(vec![]) }
/// # }
///
/// let plan = Plan::from_toml_str(r#"
///     name = "demo"
///     default_role = "dev"
///     agents.dev.backend = { kind = "custom", name = "done" }
///     [[phases]]
///     name = "implement"
///     [[tickets]]
///     id = "A"
///     title = "First"
///     effort = "1h"
///     [[tickets]]
///     id = "B"
///     title = "Second"
///     effort = "1h"
///     depends_on = ["A"]
/// "#).unwrap();
/// let store = Arc::new(Mem::default()); // orch-state has MemoryStore and SqliteStore
/// let engine = Engine::new(plan, Arc::new(Done), store).unwrap();
/// let rt = tokio::runtime::Runtime::new().unwrap();
/// let report = rt.block_on(engine.run(&"r1".parse().unwrap(), Cancellation::new())).unwrap();
/// assert_eq!(report.outcome, RunOutcome::Completed);
/// assert_eq!(report.state.count(TicketStatus::Done), 2);
/// ```
pub struct Engine {
    plan: Arc<Plan>,
    /// The plan's tickets (in plan order, as the graph indexes them),
    /// shared with every agent task: made once here, not per run.
    tickets: Arc<[Arc<orch_core::Ticket>]>,
    graph: Arc<PlanGraph>,
    /// The scheduler of a run that has not started, without limits: each
    /// run starts from a copy (ranking the tickets is done once, here).
    sched: Scheduler,
    /// The plan's fingerprint and its parts' (the plan cannot change
    /// after [`Engine::new`], so they are made once there, not per run).
    fingerprint: (String, orch_core::FingerprintParts),
    /// Every role the plan's tickets use, checked before a run starts.
    roles: Vec<RoleName>,
    agent: Arc<dyn Agent>,
    store: Arc<dyn StateStore>,
    workspace: Arc<dyn Workspace>,
    gates: Option<GateFactory>,
    observers: Vec<Arc<dyn Observer>>,
    max_concurrency: u32,
    allow_plan_change: bool,
    /// Where the plan file lies in the repository, for `RunStarted`.
    plan_file: Option<String>,
    poll: Duration,
    redactor: Redactor,
    /// Where the run's phases go as jobs, for workers to do
    /// ([`Engine::workers`]); `None`: this engine runs them.
    workers: Option<Arc<dyn orch_core::JobQueue>>,
    /// The run states a worker's jobs left ([`Engine::work`]), one a job
    /// done at once: each job takes one and reads only what was appended
    /// since.
    folded: std::sync::Mutex<Vec<orch_core::RunState>>,
    /// What a worker's jobs work on now (a ticket's tree, a batch's
    /// merge), each held by one job at a time ([`Engine::work`]).
    working: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("plan", &self.plan.name)
            .field("tickets", &self.graph.len())
            .field("agent", &self.agent.backend())
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine for `plan` (validated here: problems and cycles are
    /// refused before anything runs), sending every phase to `agent` (with
    /// the phase's role in the task) and journalling to `store`. Work
    /// happens in the current directory until [`Engine::workspace`] says
    /// otherwise.
    ///
    /// # Errors
    /// [`EngineError::Plan`] or [`EngineError::Graph`].
    pub fn new(
        plan: Plan,
        agent: Arc<dyn Agent>,
        store: Arc<dyn StateStore>,
    ) -> Result<Engine, EngineError> {
        plan.validate().map_err(EngineError::Plan)?;
        let graph = Arc::new(PlanGraph::from_plan(&plan)?);
        let sched = Scheduler::new(graph.clone());
        let (fingerprint, parts) = plan.fingerprint();
        let mut roles: Vec<RoleName> = Vec::new();
        for p in &plan.phases {
            for t in &plan.tickets {
                // (Valid plans give every ticket a role in every phase.)
                if let Some(r) = plan.role_for(t, p)
                    && !roles.contains(r)
                {
                    roles.push(r.clone());
                }
                if p.role.is_some() {
                    break; // the phase's role is every ticket's
                }
            }
        }
        Ok(Engine {
            roles,
            fingerprint: (fingerprint, Arc::new(parts)),
            max_concurrency: plan.policy.max_concurrency.max(1),
            tickets: plan.tickets.iter().cloned().map(Arc::new).collect(),
            sched,
            graph,
            agent,
            store,
            workspace: Arc::new(SharedDir::new(".")),
            gates: None,
            observers: Vec::new(),
            allow_plan_change: false,
            plan_file: None,
            poll: Duration::from_millis(250),
            redactor: Redactor::for_plan(&plan),
            workers: None,
            folded: std::sync::Mutex::new(Vec::new()),
            working: std::sync::Mutex::default(),
            plan: Arc::new(plan),
        })
    }

    /// What removes secrets from every event before it is folded or
    /// journalled (agent output and summaries, gate reports, feedback,
    /// escalations, notes, failure reasons), and so from the state files
    /// and the prompts made from them. Default: the secrets of this
    /// process's environment ([`Redactor::from_process_env`]) and those the
    /// plan makes known ([`Plan::known_secrets`]); add the
    /// ones it cannot see with [`Redactor::with_values`] (a password given
    /// on the command line).
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Journals to `store` instead of the store given to [`Engine::new`]:
    /// a command can build and [`check`](Engine::check) the engine on a
    /// store in memory, refuse before it writes anything (a state
    /// directory, a database schema), and only then open the real one.
    pub fn store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = store;
        self
    }

    /// Where tickets work: orch-state's git workspace gives each its own
    /// worktree and branch.
    pub fn workspace(mut self, ws: Arc<dyn Workspace>) -> Self {
        self.workspace = ws;
        self
    }

    /// How gates are built from the plan's specs (required when the plan
    /// has gates).
    pub fn gates(mut self, factory: GateFactory) -> Self {
        self.gates = Some(factory);
        self
    }

    /// Adds an observer (state files, progress bars, logs).
    pub fn observe(mut self, o: Arc<dyn Observer>) -> Self {
        self.observers.push(o);
        self
    }

    /// Makes this engine a coordinator: [`Engine::run`] plans and decides,
    /// but puts each ticket's phases in `queue` as jobs, one at a time, and
    /// each batch's merge as a job once its tickets are done, instead of
    /// running agents and gates itself; workers on any machine do them
    /// ([`Engine::work`]) and write to the same journal. The coordinator
    /// sets each batch's branch to the merge the journal records. The store
    /// must fence its driver (PostgreSQL does: `PgStore` is both the store
    /// and the queue), so that a coordinator that another one replaced
    /// adds no job. `max_concurrency` bounds the tickets in the queue at
    /// once.
    ///
    /// A coordinator that is cancelled leaves the jobs to the workers (a
    /// standby or a restarted coordinator carries on with them); an
    /// aborted run, or one whose budget is spent, cancels them.
    pub fn workers(mut self, queue: Arc<dyn orch_core::JobQueue>) -> Self {
        self.workers = Some(queue);
        self
    }

    /// Overrides the plan's `max_concurrency`.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Resume even if the plan changed since the run started.
    pub fn allow_plan_change(mut self, yes: bool) -> Self {
        self.allow_plan_change = yes;
        self
    }

    /// Records in each `RunStarted` where the plan file lies in the
    /// repository (relative, with `/`; name it only when the file is
    /// committed at the workspace's base as the engine's plan): a worker
    /// that is not given the plan reads it as committed there in its own
    /// clone.
    pub fn plan_file(mut self, path: impl Into<String>) -> Self {
        self.plan_file = Some(path.into());
        self
    }

    /// How often the journal is read for decisions recorded by other
    /// processes (default 250 ms).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Checks what a run needs before it starts, as [`Engine::run`] does
    /// first: every gate of the plan can be built, and every role's agent
    /// can run ([`Agent::check`]: its program is installed, its API key
    /// set). For callers that want to refuse before they write anything
    /// of their own.
    ///
    /// # Errors
    /// [`EngineError::Gate`] or [`EngineError::Agents`] (every role that cannot run).
    pub fn check(&self) -> Result<(), EngineError> {
        self.check_gates()?;
        let failed: Vec<_> = self
            .roles
            .iter()
            .filter_map(|r| self.agent.check(r).err().map(|e| (r.clone(), e)))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Agents(failed))
        }
    }

    /// Checks that every gate of the plan can be built.
    fn check_gates(&self) -> Result<(), EngineError> {
        let specs = self
            .plan
            .phases
            .iter()
            .flat_map(|p| p.gates.iter().map(move |g| (p.name.to_string(), g)))
            .chain(self.plan.batch_gates.iter().map(|g| ("batch".into(), g)))
            .chain(
                self.plan
                    .batches
                    .iter()
                    .flat_map(|b| b.gates.iter().map(move |g| (format!("batch {}", b.id), g))),
            );
        let first = self.plan.tickets.first().map_or("", |t| t.id.as_str());
        for (phase, spec) in specs {
            let Some(f) = &self.gates else {
                return Err(EngineError::Gate {
                    phase,
                    error: GateError {
                        kind: orch_core::GateErrorKind::Config,
                        gate: spec.display_name(),
                        message: "the plan has gates but the engine was given no gate factory"
                            .into(),
                    },
                });
            };
            f(&spec.substitute(&[("ticket", first), ("phase", &phase)]))
                .map_err(|error| EngineError::Gate { phase, error })?;
        }
        Ok(())
    }

    /// Runs (or resumes) `run` until every ticket is finished, or only
    /// tickets waiting for a decision are left ([`RunOutcome::Paused`]), or
    /// `cancel` fires, the budget is spent, or a person aborts.
    ///
    /// A run whose journal exists continues where it stopped: finished
    /// phases are not run again, a phase that was interrupted restarts from
    /// its checkpoint, and answered decisions take effect.
    ///
    /// # Errors
    /// [`EngineError`]: a plan that differs from the one the run started
    /// with (unless allowed), a gate that cannot be built, a role whose
    /// agent cannot run ([`Agent::check`]), a run that
    /// another engine is driving ([`EngineError::Store`] of kind
    /// [`StoreErrorKind::Locked`](orch_core::StoreErrorKind::Locked), from
    /// [`StateStore::lock_run`]; nothing was read or written), or a failing
    /// store (the run stops; running agents are cancelled).
    pub async fn run(&self, run: &RunId, cancel: Cancellation) -> Result<RunReport, EngineError> {
        if self.workers.is_some() {
            // Agents, gates and merges run on the workers; a gate that
            // cannot be built still fails the run here, before any job.
            self.check_gates()?;
        } else {
            self.check()?;
        }
        // One driver per run: held until this returns, so a second engine
        // (another `orch resume`, say) is refused before it reads or
        // writes anything, instead of carrying the same tickets again.
        let lock = self.store.lock_run(run).await?;
        let remote = match (&self.workers, lock.epoch()) {
            (None, _) => None,
            (Some(queue), Some(epoch)) => Some(job::Remote {
                queue: queue.clone(),
                epoch,
                poll: self.poll,
            }),
            (Some(_), None) => {
                return Err(EngineError::Store(StoreError::new(
                    orch_core::StoreErrorKind::Conflict,
                    format!(
                        "run {run}: a run with workers needs a store that fences its \
                         coordinator (PostgreSQL); this one does not"
                    ),
                )));
            }
        };
        let mut state = self.store.state(run).await?;
        // Whatever an earlier driver left running (its watchdog was killed
        // with it, say) dies before any work tree is rolled back or run in.
        for d in &state.drivers {
            match process::kill_scope(d).await {
                Ok(process::Killed::Some(n)) => tracing::warn!(
                    pid = d.pid,
                    killed = n,
                    "killed processes left running by an earlier driver of the run"
                ),
                Ok(process::Killed::Elsewhere) => tracing::info!(
                    host = %d.host,
                    pid = d.pid,
                    "an earlier driver ran on another machine or before a reboot"
                ),
                Ok(_) => {}
                Err(message) => {
                    return Err(EngineError::Leftovers {
                        run: run.clone(),
                        message,
                    });
                }
            }
        }
        // Every ticket gets an entry, and an agent record per phase at
        // least: room for them now, not rehashing as the run goes.
        let n = self.plan.tickets.len();
        state.tickets.reserve(n.saturating_sub(state.tickets.len()));
        let agents = n * self.plan.phases.len();
        state
            .agents
            .reserve(agents.saturating_sub(state.agents.len()));
        let (fingerprint, parts) = &self.fingerprint;
        let resumed = state.status != RunStatus::NotStarted;
        if resumed && let Some(e) = self.plan_changed(run, &state) {
            return Err(e);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (dtx, drx) = mpsc::unbounded_channel();
        let work = Cancellation::new();
        let journal = Journal::new(
            self.store.clone(),
            run.clone(),
            state,
            self.observers.clone(),
            dtx,
            self.plan.policy.budget.clone(),
            work.clone(),
            // Fenced: once another driver takes the run (this one lost its
            // lock without knowing), the store refuses this one's appends.
            Writer::Driver(lock.epoch().map_or(Expect::Any, Expect::Epoch)),
            self.redactor.clone(),
        );
        let span = tracing::info_span!("run", run = %run, plan = %self.plan.name);
        let started = EventKind::RunStarted {
            run: run.clone(),
            plan: self.plan.name.clone(),
            fingerprint: fingerprint.clone(),
            resumed,
            parts: parts.clone(),
            driver: Some(process::scope().describe()),
            base: self.workspace.base(),
            plan_file: self.plan_file.clone(),
        };
        span.in_scope(|| tracing::info!(event = started.name(), resumed));
        journal.append(vec![journal.event(started)]).await?;
        let shared = self.shared(journal, work);
        let mut d = Dispatcher::new(self, shared, tx);
        d.remote = remote;
        let running = d.run(rx, drx, cancel, &lock).instrument(span);
        if !lock.can_be_lost() {
            return running.await;
        }
        // A lost lock stops the run through the dispatcher (it cancels
        // the agents and writes nothing more); but the store may be cut
        // off too, with calls that never return. Then the run is dropped
        // whole after a moment: that kills every agent and gate it
        // started, which must be done before another driver can take the
        // run.
        tokio::select! {
            biased;
            report = running => report,
            e = async {
                let e = lock.lost().await;
                tokio::time::sleep(LOST_LOCK_GRACE).await;
                e
            } => {
                tracing::error!(error = %e, "the run's lock was lost and the run did not stop in time; dropping it");
                Err(EngineError::Store(e))
            }
        }
    }
}

/// Why a ticket failed when its pipeline panicked.
fn pipeline_panicked(payload: &(dyn std::any::Any + Send)) -> String {
    format!(
        "its pipeline panicked (a bug in an agent, gate or workspace implementation): {}",
        panic_text(payload)
    )
}

impl Engine {
    /// [`EngineError::PlanChanged`] when `state`'s run was started with a
    /// plan other than this engine's (unless that is allowed).
    fn plan_changed(&self, run: &RunId, state: &RunState) -> Option<EngineError> {
        if state.fingerprint == self.fingerprint.0 || self.allow_plan_change {
            return None;
        }
        let mut changes = self.plan.changes_since(&state.fingerprint_parts);
        if changes.is_empty() {
            changes.push("the plan's fingerprint differs".into());
        }
        Some(EngineError::PlanChanged {
            run: run.clone(),
            changes,
        })
    }

    /// What every ticket pipeline of a run (or a worker's job) shares:
    /// its journal, and `work`, which stops its agents and gates.
    fn shared(&self, journal: Arc<Journal>, work: Cancellation) -> Arc<ticket::Shared> {
        let agent_ctx = AgentContext {
            cancel: work.clone(),
            progress: Arc::new({
                let journal = journal.clone();
                move |a: &AgentId, p: Progress| journal.progress(a, &p)
            }),
        };
        Arc::new(ticket::Shared {
            agent_ctx,
            tickets: self.tickets.clone(),
            plan: self.plan.clone(),
            graph: self.graph.clone(),
            agent: self.agent.clone(),
            workspace: self.workspace.clone(),
            gates: self.gates.clone(),
            journal,
            work,
            backends: Default::default(),
        })
    }
}

/// How long a run whose lock was lost may take to stop by itself before
/// it is dropped whole (see [`Engine::run`]).
const LOST_LOCK_GRACE: Duration = Duration::from_secs(1);

enum Msg {
    /// A batch merge ended; with the store's error if the store failed.
    Batch(Option<StoreError>),
    /// A batch merge panicked (a bug in a workspace or gate), with the
    /// panic's message.
    BatchPanicked(BatchId, String),
}

// `Engine::run` (and `decide`) can be spawned on a multi-thread runtime:
// checked here, at compile time, for every build.
const _: () = {
    fn send<T: Send>(_: &T) {}
    #[allow(dead_code)]
    fn run_is_send(e: &Engine, run: &RunId, store: &dyn StateStore) {
        send(&e.run(run, Cancellation::new()));
        send(&decide(
            store,
            run,
            &"T-1".parse().expect("valid id"),
            Decision::Skip,
            None,
        ));
    }
};

/// One ticket's pipeline; it ends with the ticket and how its pipeline
/// ended, or the panic's payload if it panicked.
type TicketRun = Pin<Box<dyn Future<Output = (Ix, std::thread::Result<End>)> + Send>>;

/// The text of a panic's payload (what `panic!` was given).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

struct Dispatcher {
    shared: Arc<ticket::Shared>,
    sched: Scheduler,
    tx: mpsc::UnboundedSender<Msg>,
    poll: Duration,
    /// Per ticket, its batch; per batch, its tickets and how many are not
    /// final yet.
    batch_of: Vec<Option<u32>>,
    batches: Vec<(BatchId, Vec<Ix>, usize)>,
    /// Per ticket: it may have events in the journal (it had at the start,
    /// or has been started since). A ticket without starts from an empty
    /// state, not read from the journal.
    known: Vec<bool>,
    /// Tickets and merges running.
    tasks: usize,
    /// The running tickets' pipelines, polled by the dispatcher itself:
    /// a pipeline spends its life waiting on an agent or a gate (a child
    /// process, an HTTP call), and the engine's own work between waits is
    /// microseconds, so one task polls them all, with no hand-over to a
    /// worker task and back (and no wake-up of another thread) per ticket.
    running: FuturesUnordered<TicketRun>,
    /// Pipelines that ended while the dispatcher waited on the store
    /// ([`Dispatcher::store_call`]), handled by the loop next.
    ended: std::collections::VecDeque<(Ix, std::thread::Result<End>)>,
    stop: Option<RunOutcome>,
    fatal: Option<StoreError>,
    /// The critical path's length (minutes), for the schedule check.
    critical_path_minutes: u64,
    /// When the schedule was last checked: a check is a pass over the
    /// whole plan, and delays are counted in minutes, so at most one every
    /// [`SCHEDULE_CHECK_EVERY`].
    schedule_checked: Option<std::time::Instant>,
    /// A coordinator's queue: tickets' phases go there as jobs.
    remote: Option<job::Remote>,
}

/// See `Dispatcher::schedule_checked`.
const SCHEDULE_CHECK_EVERY: Duration = Duration::from_secs(5);

impl Dispatcher {
    fn new(
        engine: &Engine,
        shared: Arc<ticket::Shared>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Dispatcher {
        let plan = &engine.plan;
        // Role classes: the role of each ticket's first phase.
        let mut roles: Vec<&RoleName> = plan.policy.role_concurrency.keys().collect();
        roles.sort();
        let mut limits = vec![None];
        limits.extend(
            roles
                .iter()
                .map(|r| plan.policy.role_concurrency.get(*r).copied()),
        );
        let first = plan.phases.first();
        let class_of: Vec<u16> = plan
            .tickets
            .iter()
            .map(|t| {
                first
                    .and_then(|p| plan.role_for(t, p))
                    .and_then(|r| roles.binary_search(&r).ok())
                    .map_or(0, |i| i as u16 + 1)
            })
            .collect();
        let mut sched = engine
            .sched
            .clone()
            .with_max_running(engine.max_concurrency);
        if !roles.is_empty() {
            sched = sched.with_classes(class_of, limits);
        }
        // The remaining counts are set by `restore`.
        let mut batches: Vec<(BatchId, Vec<Ix>, usize)> = plan
            .batches
            .iter()
            .map(|b| (b.id.clone(), Vec::new(), 0))
            .collect();
        let index: std::collections::HashMap<&BatchId, u32> = plan
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| (&b.id, i as u32))
            .collect();
        let of = plan.batch_of();
        let batch_of: Vec<Option<u32>> = plan
            .tickets
            .iter()
            .map(|t| of.get(&t.id).and_then(|b| index.get(b)).copied())
            .collect();
        for (t, b) in batch_of.iter().enumerate() {
            if let Some(b) = b {
                batches[*b as usize].1.push(t as Ix);
            }
        }
        let shared_graph = shared.graph.clone();
        Dispatcher {
            shared,
            sched,
            tx,
            poll: engine.poll,
            known: vec![false; batch_of.len()],
            batch_of,
            batches,
            tasks: 0,
            running: FuturesUnordered::new(),
            ended: std::collections::VecDeque::new(),
            stop: None,
            fatal: None,
            critical_path_minutes: crate::Analysis::new(&shared_graph).length,
            schedule_checked: None,
            remote: None,
        }
    }

    /// Raises the non-blocking schedule question when the projected
    /// finish has slipped too far (see [`crate::status::slip`]): at the
    /// start, as tickets finish and on the dispatcher's ticks.
    async fn check_schedule(&mut self) {
        let now = std::time::Instant::now();
        if self
            .schedule_checked
            .is_some_and(|t| now.duration_since(t) < SCHEDULE_CHECK_EVERY)
        {
            return;
        }
        self.schedule_checked = Some(now);
        let raised = self.shared.journal.with_state(|s| {
            crate::status::slip(
                &self.shared.graph,
                self.critical_path_minutes,
                s,
                &self.shared.plan.policy,
                orch_core::Timestamp::now(),
            )
        });
        if let Some(e) = raised {
            self.append(vec![e]).await;
        }
    }

    fn id(&self, t: Ix) -> TicketId {
        self.shared.plan.tickets[t as usize].id.clone()
    }

    async fn append(&mut self, kinds: Vec<EventKind>) {
        if kinds.is_empty() || self.fatal.is_some() {
            return;
        }
        let journal = self.shared.journal.clone();
        let events = kinds
            .into_iter()
            .map(|k| {
                tracing::info!(event = k.name());
                journal.event(k)
            })
            .collect();
        if let Err(e) = self.store_call(journal.append(events)).await {
            self.fail_store(e);
        }
    }

    /// Awaits a store call of the dispatcher's own while still polling
    /// the running pipelines (those that end wait in `ended`). A store
    /// may serve one call at a time and hold that turn across awaits
    /// (`PgStore` on its one connection): a pipeline half-way through its
    /// append must go on, or the dispatcher's call would wait for it
    /// forever, since only the dispatcher polls it.
    async fn store_call<T>(&mut self, call: impl Future<Output = T>) -> T {
        let mut call = std::pin::pin!(call);
        loop {
            tokio::select! {
                biased;
                out = &mut call => return out,
                Some(end) = self.running.next(), if !self.running.is_empty() => {
                    self.ended.push_back(end);
                }
            }
        }
    }

    fn fail_store(&mut self, e: StoreError) {
        tracing::error!(error = %e, "state store failed; stopping the run");
        self.fatal.get_or_insert(e);
        self.halt(RunOutcome::Failed);
    }

    fn halt(&mut self, outcome: RunOutcome) {
        self.stop.get_or_insert(outcome);
        self.shared.work.cancel();
    }

    /// Restores the scheduler from the journal's state.
    async fn restore(&mut self) {
        let st = self.shared.journal.with_state(|s| s.tickets.clone());
        let mut blocked = Vec::new();
        let mut decided = Vec::new();
        for &t in self.shared.graph.topological_order() {
            let Some(ts) = st.get(&self.id(t)) else {
                continue;
            };
            self.known[t as usize] = true;
            if self.sched.status(t).is_final() {
                continue;
            }
            let r = match ts.status {
                TicketStatus::Done => self.sched.restore_done(t).map(|_| Vec::new()),
                TicketStatus::Failed => self.sched.fail(t),
                TicketStatus::Skipped => self.sched.skip(t),
                TicketStatus::AwaitingDecision => self.sched.pause(t).map(|_| Vec::new()),
                _ => {
                    if ts.pending_decision.is_some() {
                        decided.push(t);
                    }
                    Ok(Vec::new())
                }
            };
            if let Ok(b) = r {
                blocked.extend(b.into_iter().map(|x| (x, t)));
            }
        }
        self.block(blocked, &st).await;
        for t in decided {
            in_step(self.sched.pause(t));
            self.decision(t).await;
        }
        for b in 0..self.batches.len() {
            let members = self.batches[b].1.clone();
            let left = members
                .iter()
                .filter(|&&m| !self.sched.status(m).is_final())
                .count();
            self.batches[b].2 = left;
            if left == 0 {
                self.batch_ready(b).await;
            }
        }
    }

    /// Records `blocked` (ticket, by) unless the journal already has them,
    /// and counts them off their batches.
    async fn block(
        &mut self,
        blocked: Vec<(Ix, Ix)>,
        known: &orch_core::IdMap<TicketId, orch_core::TicketState>,
    ) {
        let mut events = Vec::new();
        let mut done_batches = Vec::new();
        for (t, by) in blocked {
            let id = self.id(t);
            if known
                .get(&id)
                .is_none_or(|s| s.status != TicketStatus::Blocked)
            {
                events.push(EventKind::TicketBlocked {
                    ticket: id,
                    by: self.id(by),
                });
            }
            done_batches.extend(self.count_off(t));
        }
        self.append(events).await;
        for b in done_batches {
            self.batch_ready(b).await;
        }
    }

    /// Ticket `t` is final, and `blocked` with it: records the blocked
    /// ones, counts them all off their batches, merges batches now complete.
    async fn settle(&mut self, t: Ix, blocked: Vec<Ix>) {
        let b = self.count_off(t);
        if !blocked.is_empty() {
            self.block(
                blocked.into_iter().map(|x| (x, t)).collect(),
                &Default::default(),
            )
            .await;
        }
        if let Some(b) = b {
            self.batch_ready(b).await;
        }
    }

    /// Counts a finished ticket off its batch; returns the batch if that
    /// was its last.
    fn count_off(&mut self, t: Ix) -> Option<usize> {
        let b = self.batch_of[t as usize]? as usize;
        let left = &mut self.batches[b].2;
        *left = left.saturating_sub(1);
        (*left == 0).then_some(b)
    }

    /// Every ticket of batch `b` is final: merge it, or say why not.
    async fn batch_ready(&mut self, b: usize) {
        let (id, members, _) = self.batches[b].clone();
        let status = self
            .shared
            .journal
            .with_state(|s| s.batches.get(&id).map(|b| b.status));
        // Found merged (a resumed run): its branch may not name the merge
        // yet, if the driver stopped between the two; it is published
        // below, merged no more.
        let merged = status == Some(orch_core::BatchStatus::Merged);
        if status == Some(orch_core::BatchStatus::Failed) || members.is_empty() {
            return;
        }
        let not_done: Vec<String> = members
            .iter()
            .filter(|&&m| self.sched.status(m) != TicketStatus::Done)
            .map(|&m| format!("{} {:?}", self.id(m), self.sched.status(m)).to_lowercase())
            .collect();
        if !merged && !not_done.is_empty() {
            let reason = format!("not merged: {}", not_done.join(", "));
            self.append(vec![EventKind::BatchFailed { batch: id, reason }])
                .await;
            return;
        }
        if !merged && self.stop.is_some() {
            return;
        }
        let tickets: Vec<TicketId> = members.iter().map(|&m| self.id(m)).collect();
        let (shared, tx) = (self.shared.clone(), self.tx.clone());
        let remote = self.remote.clone();
        let span = tracing::info_span!("batch", batch = %id);
        self.tasks += 1;
        tokio::spawn(
            async move {
                let merging = async {
                    match &remote {
                        _ if merged => {}
                        None => ticket::merge_batch(&shared, id.clone(), tickets.clone()).await?,
                        // Merged by a worker.
                        Some(remote) => job::remote_merge(&shared, remote, &id).await?,
                    }
                    ticket::merged(&shared, id.clone(), &tickets).await;
                    Ok(())
                };
                // Caught like a ticket pipeline's panic, so the dispatcher
                // hears of it instead of waiting for that merge forever.
                let msg = match AssertUnwindSafe(merging).catch_unwind().await {
                    Ok(r) => Msg::Batch(r.err()),
                    Err(payload) => Msg::BatchPanicked(id, panic_text(&*payload).to_owned()),
                };
                let _ = tx.send(msg);
            }
            .instrument(span),
        );
    }

    /// A recorded decision for paused ticket `t` takes effect.
    async fn decision(&mut self, t: Ix) {
        if self.sched.status(t) != TicketStatus::AwaitingDecision {
            return;
        }
        let id = self.id(t);
        let d = self
            .shared
            .journal
            .with_state(|s| s.tickets.get(&id).and_then(|t| t.pending_decision));
        match d {
            Some(Decision::Approve | Decision::Retry) => {
                in_step(self.sched.requeue(t));
            }
            Some(Decision::Skip) => {
                self.append(vec![EventKind::TicketSkipped { ticket: id }])
                    .await;
                let blocked = self.sched.skip(t).unwrap_or_default();
                self.settle(t, blocked).await;
            }
            Some(Decision::Abort) => self.halt(RunOutcome::Aborted),
            None => {}
        }
    }

    /// Starts ticket `t`'s pipeline (the scheduler keeps the running
    /// tickets within the limits). A panic in it (a bug in an agent, gate
    /// or workspace implementation) is caught and fails the ticket alone.
    fn spawn_ticket(&mut self, t: Ix) {
        self.tasks += 1;
        let known = std::mem::replace(&mut self.known[t as usize], true);
        let shared = self.shared.clone();
        let remote = self.remote.clone();
        let span = tracing::info_span!("ticket", ticket = %shared.graph.id(t));
        self.running.push(Box::pin(
            async move {
                let end = match &remote {
                    None => {
                        AssertUnwindSafe(ticket::run_ticket(&shared, t, known, None))
                            .catch_unwind()
                            .await
                    }
                    Some(remote) => Ok(job::remote_ticket(&shared, remote, t).await),
                };
                (t, end)
            }
            .instrument(span),
        ));
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Batch(failed) => {
                self.tasks -= 1;
                if let Some(e) = failed
                    && self.fatal.is_none()
                {
                    self.fail_store(e);
                }
            }
            Msg::BatchPanicked(batch, message) => {
                self.tasks -= 1;
                // A worker may have recorded the merge (a run with
                // workers) before this engine read it.
                if let Err(e) = self.shared.journal.catch_up().await {
                    tracing::warn!(error = %e, "cannot read the journal");
                }
                let merged = self.shared.journal.with_state(|s| {
                    s.batches
                        .get(&batch)
                        .is_some_and(|b| b.status == orch_core::BatchStatus::Merged)
                });
                if merged {
                    // Publishing it panicked: the merge stands.
                    tracing::error!(%batch, "publishing the merge panicked: {message}");
                    return;
                }
                let reason = format!(
                    "not merged: the merge panicked (a bug in a workspace or gate \
                     implementation): {message}"
                );
                let reason = self.shared.journal.redacted(reason);
                tracing::error!(%batch, "{reason}");
                self.append(vec![EventKind::BatchFailed { batch, reason }])
                    .await;
            }
        }
    }

    /// Ticket `t`'s pipeline returned, or panicked.
    async fn ticket_returned(&mut self, t: Ix, end: std::thread::Result<End>) {
        self.tasks -= 1;
        let end = match end {
            Ok(end) => end,
            Err(payload) => {
                let reason = self.shared.journal.redacted(pipeline_panicked(&*payload));
                tracing::error!(ticket = %self.id(t), "{reason}");
                self.append(vec![EventKind::TicketFailed {
                    ticket: self.id(t),
                    reason,
                }])
                .await;
                End::Failed
            }
        };
        self.ticket_ended(t, end).await;
    }

    /// Ticket `t`'s pipeline ended with `end`: update the scheduler, and
    /// settle what follows from it.
    async fn ticket_ended(&mut self, t: Ix, end: End) {
        match end {
            End::Done => {
                in_step(self.sched.complete(t));
                self.settle(t, Vec::new()).await;
                self.check_schedule().await;
            }
            End::Failed => {
                let blocked = self.sched.fail(t).unwrap_or_default();
                self.settle(t, blocked).await;
            }
            End::Escalated => {
                in_step(self.sched.pause(t));
                // Answered already (e.g. by an observer)?
                self.decision(t).await;
            }
            // (A driver runs whole tickets: no handoff.)
            End::Interrupted | End::Handoff => {
                in_step(self.sched.requeue(t));
            }
            End::Store(e) => {
                if self.fatal.is_none() {
                    self.fail_store(e);
                }
                in_step(self.sched.requeue(t));
            }
        }
    }

    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut decisions: mpsc::UnboundedReceiver<TicketId>,
        cancel: Cancellation,
        lock: &orch_core::RunLock,
    ) -> Result<RunReport, EngineError> {
        // Watched only where it can be lost (a lock held by a database
        // connection): no cost per turn of the loop otherwise.
        let mut watch_lock = lock.can_be_lost();
        self.restore().await;
        self.check_schedule().await;
        if let Some(why) = self
            .shared
            .plan
            .policy
            .budget
            .exceeded(&self.shared.journal.with_state(|s| s.usage))
        {
            tracing::warn!(%why, "budget already spent");
            self.halt(RunOutcome::BudgetExhausted);
        }
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Pipelines that ended while the dispatcher waited on the store.
            while let Some((t, end)) = self.ended.pop_front() {
                self.ticket_returned(t, end).await;
            }
            if self.stop.is_none() && self.fatal.is_none() {
                while let Some(t) = self.sched.next() {
                    self.spawn_ticket(t);
                }
            }
            if self.tasks == 0 {
                // Read what others appended since the last tick (a decision
                // recorded by `orch decide`): the fold releases any event
                // of the run's own held back behind it, and sends the
                // decisions to act on before the run ends.
                if self.fatal.is_none()
                    && let Err(e) = self.shared.journal.catch_up().await
                {
                    self.fail_store(e);
                }
                let mut more = false;
                while let Ok(t) = decisions.try_recv() {
                    if let Some(ix) = self.shared.graph.index_of(t.as_str()) {
                        self.decision(ix).await;
                        more = true;
                    }
                }
                if !more || self.stop.is_some() {
                    break;
                }
                continue;
            }
            tokio::select! {
                Some((t, end)) = self.running.next(), if !self.running.is_empty() => {
                    self.ticket_returned(t, end).await;
                    // The others that ended meanwhile, without a turn of
                    // the whole loop each.
                    while let Some(Some((t, end))) = self.running.next().now_or_never() {
                        self.ticket_returned(t, end).await;
                    }
                }
                Some(msg) = rx.recv() => {
                    self.handle(msg).await;
                    while let Ok(msg) = rx.try_recv() {
                        self.handle(msg).await;
                    }
                }
                Some(t) = decisions.recv() => {
                    if let Some(ix) = self.shared.graph.index_of(t.as_str()) {
                        self.decision(ix).await;
                    }
                }
                _ = tick.tick() => {
                    let journal = self.shared.journal.clone();
                    if let Err(e) = self.store_call(journal.catch_up()).await {
                        self.fail_store(e);
                    }
                    // A run held up (one long ticket, escalations) slips
                    // with no ticket finishing.
                    self.check_schedule().await;
                }
                () = cancel.cancelled(), if self.stop.is_none() => {
                    tracing::warn!("cancelled; stopping running agents");
                    self.halt(RunOutcome::Cancelled);
                }
                e = lock.lost(), if watch_lock => {
                    // Another engine may take the run from now on: stop as
                    // for a failed store, and write nothing more (the
                    // stopped agents' ends included).
                    watch_lock = false;
                    self.shared.journal.refuse(e.clone());
                    if self.fatal.is_none() {
                        self.fail_store(e);
                    }
                }
            }
            if self.stop.is_none()
                && let Some((tokens, usd, why)) = self.shared.journal.budget_spent()
            {
                tracing::warn!(%why, "budget spent; stopping");
                self.halt(RunOutcome::BudgetExhausted);
                self.append(vec![EventKind::BudgetExhausted { tokens, usd }])
                    .await;
            }
        }
        if let Some(e) = self.fatal.take() {
            self.shared.journal.finished();
            return Err(EngineError::Store(e));
        }
        let outcome = match self.stop {
            Some(o) => o,
            None => {
                let c = self.sched.counts();
                let batches_ok = self.shared.journal.with_state(|s| {
                    self.batches.iter().all(|(b, m, _)| {
                        m.is_empty()
                            || s.batches
                                .get(b)
                                .is_some_and(|b| b.status == orch_core::BatchStatus::Merged)
                    })
                });
                if c.paused > 0 {
                    RunOutcome::Paused
                } else if c.done == self.shared.graph.len() && batches_ok {
                    RunOutcome::Completed
                } else {
                    RunOutcome::Failed
                }
            }
        };
        if let Some(remote) = &self.remote
            && matches!(outcome, RunOutcome::Aborted | RunOutcome::BudgetExhausted)
        {
            let run = &self.shared.journal.run;
            match remote.queue.cancel(run, remote.epoch).await {
                Ok(n) => tracing::info!(jobs = n, "cancelled the run's jobs"),
                Err(e) => tracing::warn!(error = %e, "could not cancel the run's jobs"),
            }
        }
        if outcome == RunOutcome::Completed {
            let merged: Vec<(BatchId, Vec<TicketId>)> = self
                .batches
                .iter()
                .filter(|(_, m, _)| !m.is_empty())
                .map(|(b, m, _)| {
                    let ids = m
                        .iter()
                        .map(|&t| self.shared.tickets[t as usize].id.clone());
                    (b.clone(), ids.collect())
                })
                .collect();
            let run = &self.shared.journal.run;
            if let Err(e) = self.shared.workspace.finish(run, &merged).await {
                tracing::warn!(error = %e, "could not tidy the workspace after the run");
            }
        }
        self.append(vec![EventKind::RunFinished { outcome }]).await;
        let state = self.shared.journal.finished();
        if let Some(e) = self.fatal.take() {
            return Err(EngineError::Store(e));
        }
        Ok(RunReport { outcome, state })
    }
}
