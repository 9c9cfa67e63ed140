//! The `orch` command: check, analyse and run plans.
//!
//! ```text
//! orch validate PLAN...                      check plans; print a one-line summary each
//! orch analyze PLAN [--agents N] [--format text|json|mermaid|dot]
//! orch schema                                print the JSON Schema of plan files
//! orch run PLAN [--repo DIR] [--state DIR] [--database-url URL] [--concurrency N] [--run ID] [--allow-plan-change]
//! orch run PLAN --workers [--remote NAME] --database-url URL ...   coordinate: workers run the phases
//! orch worker [PLAN] [--run ID] --database-url URL [--repo DIR] [--roles R,...] [--concurrency N] [--remote NAME] [--lease-secs S]
//! orch resume [--state DIR] [--database-url URL] [--allow-plan-change] [--standby]
//! orch status [--state DIR] [--database-url URL] [--json] [--report [--since DURATION]] [--metrics]
//! orch accept (--delay NOTE | --risk NOTE [--batch BATCH]) [--state DIR] [--database-url URL]
//! orch decide TICKET (--approve | --retry NOTE | --skip | --abort) [--adr TITLE [--context TEXT] [--consequences TEXT] [--alternative TEXT]... [--decider NAME]...] [--state DIR] [--database-url URL]
//! ```
//!
//! `run` works in the git repository `--repo` (default: the current
//! directory), each ticket in a worktree under `.orch/worktrees`, with the
//! agents the plan names by role. The journal (SQLite, `state.db`) and the
//! state files go to `--state` (default `<repo>/.orch/state`); with
//! `--database-url` (or `ORCH_DATABASE_URL`) the journal goes to that
//! PostgreSQL database instead, and `run.json` records which one (without
//! the password: `resume`, `status` and `decide` need the URL again).
//! `resume`, `status`, `accept` and `decide` find the latest run in the
//! state directory.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `run`/`resume`: every ticket done and every batch merged |
//! | 1 | `validate`: a plan is invalid; `run`: tickets failed or were blocked, or a batch failed |
//! | 2 | bad input: usage, a plan the engine refuses (a cycle, a gate it cannot build, an agent that cannot run), a changed plan on resume, not a git repository, a refused decision |
//! | 3 | paused: tickets wait for decisions (`orch decide`, then `orch resume`) |
//! | 4 | the budget is spent |
//! | 5 | a person aborted the run |
//! | 6 | the state store failed (nothing persisted is lost; resume later) |
//! | 7 | `run`/`resume`: another `orch` is driving this run (it holds the run's lock); nothing was done (`resume --standby` waits instead) |
//! | 130, 143, 129 | stopped by SIGINT (Ctrl-C), SIGTERM or SIGHUP (128 + the signal's number): agents and gates killed, nothing lost; resume continues |

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand, ValueEnum};
use orch_core::{Cancellation, Decision, Plan, RunOutcome, StateStore};
use orch_examples::{RunInfo, Setup, open_store, plan_agents};

#[derive(Parser)]
#[command(
    name = "orch",
    version,
    about = "Orchestrate AI coding agents through a plan of tickets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check plan files (TOML, YAML or JSON) and their dependency graphs.
    Validate {
        /// Plan files.
        #[arg(required = true)]
        plans: Vec<PathBuf>,
    },
    /// Critical path, slack, waves and simulated schedules of a plan.
    Analyze {
        /// The plan file.
        plan: PathBuf,
        /// Simulate 1..=N agents working in parallel.
        #[arg(long, default_value_t = 6)]
        agents: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Print the JSON Schema of plan files.
    Schema,
    /// Run a plan in a git repository with the agents it names.
    Run {
        /// The plan file.
        plan: PathBuf,
        /// The git repository the tickets work in.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[command(flatten)]
        state: StateArg,
        /// At most this many tickets at once, 1 or more (default: the
        /// plan's policy).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: Option<u32>,
        /// The run's id; a run with a journal continues. Default: the plan's
        /// name and the time.
        #[arg(long)]
        run: Option<orch_core::RunId>,
        /// Continue even though the plan changed since the run started.
        #[arg(long)]
        allow_plan_change: bool,
        /// Coordinate: plan, decide and merge here, and put each ticket's
        /// phases in the PostgreSQL job queue for `orch worker`s on any
        /// machine (needs `--database-url`).
        #[arg(long)]
        workers: bool,
        /// With `--workers`: the git remote the machines share their work
        /// through.
        #[arg(long, default_value = "origin", requires = "workers")]
        remote: String,
    },
    /// Do the phases of the runs `orch run --workers` coordinates, one run
    /// at a time, in this machine's clone of the repository, until stopped
    /// (SIGTERM or Ctrl-C hand the jobs in progress back).
    Worker {
        /// The plan file (default: each run's own, the file it names in the
        /// repository, as committed at the run's commit in this clone).
        plan: Option<PathBuf>,
        /// Only this run's jobs (default: any run's).
        #[arg(long)]
        run: Option<orch_core::RunId>,
        /// This machine's clone of the repository.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// The PostgreSQL database of the run.
        #[arg(long, env = "ORCH_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Only phases of these roles (default: any).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<orch_core::RoleName>,
        /// Jobs at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: u32,
        /// The git remote the machines share their work through.
        #[arg(long, default_value = "origin")]
        remote: String,
        /// A job's lease: renewed every third of it; a worker that cannot
        /// renew stops its agent within three quarters of it, and another
        /// worker takes the job over after it.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        lease_secs: u64,
        /// Where transcripts and the worker's record go (default
        /// `.orch/worker` in the repository).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Continue the latest run (after a crash, Ctrl-C or a decision).
    Resume {
        #[command(flatten)]
        state: StateArg,
        /// Continue even though the plan changed since the run started.
        #[arg(long)]
        allow_plan_change: bool,
        /// Stand by while another `orch` drives the run, and take it over
        /// when that one stops (killed, cut off from the database, its
        /// machine gone, or stopped on purpose): a standby coordinator.
        /// Until it takes the run it also waits out a database it cannot
        /// reach; once it drove the run, it stops as any driver does.
        #[arg(long)]
        standby: bool,
    },
    /// Where the latest run stands.
    Status {
        #[command(flatten)]
        state: StateArg,
        /// The folded state as JSON (with `--report`: the report).
        #[arg(long)]
        json: bool,
        /// The status report: progress, schedule, risks, metrics, agent
        /// health and the go/no-go call with the rules that made it.
        #[arg(long, conflicts_with = "metrics")]
        report: bool,
        /// The report's figures as OpenMetrics text, for Prometheus.
        #[arg(long, conflicts_with = "json")]
        metrics: bool,
        /// With `--report`: the report's "completed" lists what finished
        /// in this last stretch (e.g. `24h` for a daily report, `7d`, `90m`)
        /// instead of everything done.
        #[arg(long, requires = "report", value_name = "DURATION", value_parser = since_minutes)]
        since: Option<u32>,
    },
    /// Accept, without stopping the latest run, the projected delay it
    /// raised or a residual risk (listed in the go/no-go records).
    #[command(group(clap::ArgGroup::new("what").required(true)))]
    Accept {
        /// Accept the projected delay (the open schedule question), saying
        /// what changes, e.g. the new date.
        #[arg(long, value_name = "NOTE", group = "what")]
        delay: Option<String>,
        /// Accept a residual risk: what it is and why it is accepted.
        #[arg(long, value_name = "NOTE", group = "what")]
        risk: Option<String>,
        /// The batch the risk belongs to (default: the whole run).
        #[arg(long, requires = "risk")]
        batch: Option<orch_core::BatchId>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Show the runs of a journal in the browser, live while they go:
    /// the plan's graph by status, every ticket's attempts and gates, and
    /// the decision queue (answering needs the token printed at start).
    Serve {
        #[command(flatten)]
        state: StateArg,
        /// Where to listen. Anything but loopback lets anyone who reaches
        /// it read the runs, and the token travels in clear unless TLS is
        /// put in front.
        #[arg(long, default_value = "127.0.0.1:7777")]
        bind: std::net::SocketAddr,
        /// The plan file of a run to draw (default: the latest run's);
        /// repeat for more.
        #[arg(long = "plan", value_name = "FILE")]
        plans: Vec<PathBuf>,
        /// The token that lets a browser answer decisions (16 or more
        /// letters, digits, '-', '_', '.'; default: a random one).
        #[arg(long, env = "ORCH_SERVE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Answer an escalated ticket of the latest run.
    Decide {
        /// The ticket.
        ticket: orch_core::TicketId,
        #[command(flatten)]
        answer: Answer,
        #[command(flatten)]
        adr: AdrArgs,
        #[command(flatten)]
        state: StateArg,
    },
}

/// The decision record that may go with an answer.
#[derive(Args)]
struct AdrArgs {
    /// Write the answer down as an architecture decision record with this
    /// title: `docs/adr/ADR-NNN-<slug>.md`, committed with the ticket's
    /// next checkpoint (and kept in the state directory's `adr/`).
    #[arg(long, value_name = "TITLE")]
    adr: Option<String>,
    /// The record's context (default: the escalation's question and what
    /// the last attempt left).
    #[arg(long, requires = "adr", value_name = "TEXT")]
    context: Option<String>,
    /// The record's consequences (default: what the answer does).
    #[arg(long, requires = "adr", value_name = "TEXT")]
    consequences: Option<String>,
    /// An alternative considered and its trade-offs; repeat for each
    /// (default: the escalation's other answers).
    #[arg(long = "alternative", requires = "adr", value_name = "TEXT")]
    alternatives: Vec<String>,
    /// Who decided; repeat for each.
    #[arg(long = "decider", requires = "adr", value_name = "NAME")]
    deciders: Vec<String>,
}

#[derive(Args)]
struct StateArg {
    /// Where the journal and state files are (default `.orch/state` in the
    /// repository).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Keep the journal in this PostgreSQL database instead of SQLite in
    /// the state directory (`postgres://user:password@host:port/db`).
    #[arg(long, env = "ORCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl Cli {
    /// The database URL the command was given, if any.
    fn database_url(&self) -> Option<&str> {
        match &self.command {
            Command::Run { state, .. }
            | Command::Resume { state, .. }
            | Command::Status { state, .. }
            | Command::Accept { state, .. }
            | Command::Decide { state, .. }
            | Command::Serve { state, .. } => state.database_url.as_deref(),
            Command::Worker { database_url, .. } => Some(database_url),
            _ => None,
        }
    }
}

impl StateArg {
    fn dir(&self, repo: &std::path::Path) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| repo.join(".orch").join("state"))
    }
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Answer {
    /// Accept the work as it is and go on.
    #[arg(long)]
    approve: bool,
    /// Try the phase again, showing the agent this note.
    #[arg(long, value_name = "NOTE")]
    retry: Option<String>,
    /// Skip the ticket (its dependents are blocked).
    #[arg(long)]
    skip: bool,
    /// Stop the whole run.
    #[arg(long)]
    abort: bool,
}

/// `--since`: a duration (`7d`, `24h`, `90m`, `1h30m`) in minutes.
fn since_minutes(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a duration like 7d, 24h, 90m or 1h30m");
    let t = s.trim();
    if let Some(days) = t.strip_suffix('d') {
        return days
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=3650).contains(d))
            .map(|d| d * 24 * 60)
            .ok_or_else(bad);
    }
    if !t.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    t.parse::<orch_core::Effort>()
        .map(|e| e.minutes())
        .map_err(|_| bad())
}

/// A failure with its exit code.
struct Fail(u8, String);

impl From<orch_examples::Error> for Fail {
    fn from(e: orch_examples::Error) -> Self {
        Fail(2, e.to_string())
    }
}

fn exit_code(o: RunOutcome) -> u8 {
    match o {
        RunOutcome::Completed => 0,
        RunOutcome::Failed => 1,
        RunOutcome::Paused => 3,
        RunOutcome::BudgetExhausted => 4,
        RunOutcome::Aborted => 5,
        RunOutcome::Cancelled => 130,
    }
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Opens the journal of `info`'s run: SQLite in `state_dir`, or the
/// PostgreSQL database at `url`. A new run (`fresh`) records which; a run
/// that exists must be opened where it was started.
async fn journal(
    info: &mut RunInfo,
    state_dir: &std::path::Path,
    url: Option<&str>,
    fresh: bool,
) -> Result<Arc<dyn StateStore>, Fail> {
    // Which database the URL names, found before connecting: a run is
    // never opened (nor tables made) in a database it does not live in.
    let given = match url {
        Some(url) => Some(
            orch_state::PgStore::new(url)
                .map_err(|e| Fail(2, e.to_string()))?
                .database()
                .to_owned(),
        ),
        None => None,
    };
    if fresh {
        info.database.clone_from(&given);
    } else if info.database != given {
        let sqlite = || format!("SQLite ({})", state_dir.join("state.db").display());
        let (kept, asked) = (
            info.database.clone().unwrap_or_else(sqlite),
            given.unwrap_or_else(sqlite),
        );
        let how = if info.database.is_some() {
            "pass that database's URL with --database-url or ORCH_DATABASE_URL"
        } else {
            "drop --database-url and unset ORCH_DATABASE_URL"
        };
        return Err(Fail(
            2,
            format!(
                "run {} keeps its journal in {kept}, not in {asked}: {how}",
                info.run
            ),
        ));
    }
    Ok(match url {
        Some(url) => Arc::new(
            orch_state::PgStore::connect(url)
                .await
                .map_err(|e| Fail(6, e.to_string()))?,
        ),
        None => open_store(state_dir).map_err(|e| Fail(6, e.to_string()))?,
    })
}

/// Records the run in `run.json` once the engine has it (its `RunStarted`
/// is durable): a command the engine refuses (another `orch` drives the
/// run, the plan changed) leaves the record as it was.
struct Record {
    info: RunInfo,
    dir: PathBuf,
    done: AtomicBool,
}

impl orch_graph::Observer for Record {
    fn event(&self, event: &orch_core::Event, _: &orch_core::RunState) {
        if matches!(event.kind, orch_core::EventKind::RunStarted { .. })
            && !self.done.swap(true, Ordering::SeqCst)
            && let Err(e) = self.info.save(&self.dir)
        {
            eprintln!(
                "warning: the run goes on, but cannot be recorded for `orch resume`/`status`/`decide`: {e}"
            );
        }
    }
}

/// Cancels `cancel` on SIGINT (Ctrl-C), SIGTERM or SIGHUP, whichever
/// comes first, and says which (its number) in the returned cell: the
/// run stops its agents and gates, records where it stopped, and exits
/// with 128 + the signal's number (130, 143, 129).
/// `then` says what happens next (printed after the signal's name).
fn stop_on_signals(
    cancel: Cancellation,
    then: &'static str,
) -> Result<Arc<std::sync::atomic::AtomicU8>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let which = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|e| format!("cannot listen for signal {}: {e}", kind.as_raw_value()))
    };
    let mut streams = [
        (listen(SignalKind::interrupt())?, 2u8, "interrupted"),
        (listen(SignalKind::terminate())?, 15, "terminated (SIGTERM)"),
        (listen(SignalKind::hangup())?, 1, "hung up (SIGHUP)"),
    ];
    let seen = which.clone();
    tokio::spawn(async move {
        let [(int, ..), (term, ..), (hup, ..)] = &mut streams;
        let i = tokio::select! {
            _ = int.recv() => 0,
            _ = term.recv() => 1,
            _ = hup.recv() => 2,
        };
        let (_, number, what) = &streams[i];
        seen.store(*number, Ordering::SeqCst);
        eprintln!("{what}: {then}");
        cancel.cancel();
    });
    Ok(which)
}

/// How [`execute`] starts.
struct Start {
    /// `orch run`: a new journal.
    fresh: bool,
    /// Go on though the plan changed.
    allow_plan_change: bool,
    /// Wait while another engine holds the run, then take it over.
    standby: bool,
}

/// Runs (or resumes) `info` until it stops.
fn execute(
    mut info: RunInfo,
    state_dir: PathBuf,
    url: Option<&str>,
    how: Start,
) -> Result<(), Fail> {
    let Start {
        fresh,
        allow_plan_change,
        standby,
    } = how;
    let plan = Plan::from_path(&info.plan).map_err(|e| Fail(2, e.to_string()))?;
    // Refuse a bad plan before anything is written.
    plan.validate()
        .map_err(|p| Fail(2, orch_graph::EngineError::Plan(p).to_string()))?;
    orch_graph::PlanGraph::from_plan(&plan)
        .map_err(|e| Fail(2, format!("{}: {e}", info.plan.display())))?;
    let agent = plan_agents(&plan, &state_dir, &Default::default())?;
    let mut setup = Setup::new(plan, &info.repo, &state_dir, agent);
    setup.concurrency = info.concurrency;
    setup.remote.clone_from(&info.workers);
    let url = match (&info.workers, url) {
        (Some(_), None) => {
            return Err(Fail(
                2,
                format!(
                    "run {} is coordinated for workers: its jobs are in PostgreSQL; pass --database-url or ORCH_DATABASE_URL",
                    info.run
                ),
            ));
        }
        (_, url) => url,
    };
    setup.allow_plan_change = allow_plan_change;
    if let Some(url) = url {
        setup.redactor = setup.redactor.clone().with_url(url);
    }
    // A state directory that cannot be written stops the run (exit 6).
    let cancel = Cancellation::new();
    let state_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    setup.stop_on_state_failure = Some((cancel.clone(), state_failure.clone()));
    // Refuse a directory that is not a repository, gates that cannot be
    // built and agents that cannot run (a CLI not installed) before
    // anything is written, the state directory included: the engine is
    // built and checked on a store in memory, then given the journal.
    let engine = setup.engine(Arc::new(orch_state::MemoryStore::new()))?;
    // Where workers on other machines find the plan in their clones.
    let plan_file = info
        .workers
        .as_ref()
        .map(|_| orch_examples::committed_plan(&info.repo, &info.plan));
    let engine = match &plan_file {
        Some(Ok(rel)) => engine.plan_file(rel.clone()),
        _ => engine,
    };
    if info.workers.is_none() {
        // (A coordinator runs no agent: its workers check theirs.)
        engine.check().map_err(orch_examples::Error::from)?;
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| Fail(2, e.to_string()))?;
    let store = rt.block_on(journal(&mut info, &state_dir, url, fresh))?;
    let engine = match (&info.workers, url) {
        (Some(_), Some(url)) => {
            let queue = rt
                .block_on(orch_state::PgStore::connect(url))
                .map_err(|e| Fail(6, e.to_string()))?;
            if !standby {
                // A plan the workers' clones do not have committed is
                // given to them.
                match plan_file {
                    Some(Err(why)) => eprintln!(
                        "coordinating run {run}: workers cannot read its plan in their clones ({why}): start them with `orch worker {} --run {run} --database-url … --repo CLONE`",
                        info.plan.display(),
                        run = info.run,
                    ),
                    _ => eprintln!(
                        "coordinating run {}: start workers with `orch worker --database-url … --repo CLONE`",
                        info.run,
                    ),
                }
            }
            engine.workers(Arc::new(queue))
        }
        _ => engine,
    };
    let record = Arc::new(Record {
        info: info.clone(),
        dir: state_dir.clone(),
        done: AtomicBool::new(false),
    });
    let engine = engine.store(store).observe(record.clone());
    rt.block_on(async move {
        let stopped_by = stop_on_signals(
            cancel.clone(),
            "stopping running agents (resume with `orch resume`)",
        )
        .map_err(|e| Fail(2, e))?;
        // A standby waits while another engine holds the run, and while
        // the database cannot be reached, until it takes the run (its
        // `RunStarted` recorded). Until then nothing was started, so
        // trying again is safe; once it drove the run, it stops as any
        // driver does.
        let mut said = String::new();
        let report = loop {
            use orch_core::StoreErrorKind::{Fenced, Locked, Unavailable};
            match engine.run(&info.run, cancel.clone()).await {
                Err(orch_graph::EngineError::Store(e))
                    if standby
                        && matches!(e.kind, Locked | Fenced | Unavailable)
                        && !record.done.load(Ordering::SeqCst) =>
                {
                    let say = format!("standing by: {e}");
                    if say != said {
                        eprintln!("{say}");
                        said = say;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = cancel.cancelled() => break Ok(None),
                    }
                }
                r => break r.map(Some),
            }
        };
        let report = report.map_err(|e| match e {
            orch_graph::EngineError::Store(e) if e.kind == orch_core::StoreErrorKind::Locked => {
                Fail(7, e.to_string())
            }
            orch_graph::EngineError::Store(e) => Fail(6, e.to_string()),
            e => Fail(2, e.to_string()),
        })?;
        // The state directory's failure, which cancelled the run.
        let failed = || {
            let why = state_failure.lock().unwrap_or_else(|e| e.into_inner()).take()?;
            Some(Fail(
                6,
                format!("{why}; the run stopped (its journal is intact: fix the directory, then `orch resume`)"),
            ))
        };
        let Some(report) = report else {
            // Stopped while standing by.
            let signal = Fail(128 + stopped_by.load(Ordering::SeqCst), String::new());
            return Err(failed().unwrap_or(signal));
        };
        let s = &report.state;
        eprintln!(
            "\n{:?}: {} done, {} failed, {} blocked, {} waiting for a decision; {} tokens, ${:.4}; state files in {}",
            report.outcome,
            s.count(orch_core::TicketStatus::Done),
            s.count(orch_core::TicketStatus::Failed),
            s.count(orch_core::TicketStatus::Blocked),
            s.count(orch_core::TicketStatus::AwaitingDecision),
            s.usage.total_tokens(),
            s.usage.cost_usd,
            state_dir.display()
        );
        for d in s.open_decisions() {
            eprintln!("decide: orch decide {} --approve|--retry NOTE|--skip|--abort [--adr TITLE]   ({})", d.ticket, d.question);
        }
        if let Some(fail) = failed() {
            return Err(fail);
        }
        // Stopped by a signal: 128 + its number, as shells report it.
        let code = match (report.outcome, stopped_by.load(Ordering::SeqCst)) {
            (RunOutcome::Cancelled, sig) if sig > 0 => 128 + sig,
            (outcome, _) => exit_code(outcome),
        };
        match code {
            0 => Ok(()),
            code => Err(Fail(code, String::new())),
        }
    })
}

/// The latest run in a state directory, its journal and its plan (if the
/// plan file is still there).
async fn latest(
    state: &StateArg,
    state_dir: &std::path::Path,
) -> Result<(RunInfo, Arc<dyn StateStore>, Option<Plan>), Fail> {
    let mut info = RunInfo::load(state_dir)?;
    let store = journal(&mut info, state_dir, state.database_url.as_deref(), false).await?;
    let plan = Plan::from_path(&info.plan).ok();
    Ok((info, store, plan))
}

/// Appends a person's answer to the latest run through `answer`, then
/// writes the state files again: what `accept` and `decide` share.
/// Returns the run, the state directory and what `answer` returned.
fn answer_latest<T>(
    state: &StateArg,
    answer: impl AsyncFnOnce(&dyn StateStore, &orch_core::RunId) -> Result<T, orch_graph::EngineError>,
) -> Result<(RunInfo, PathBuf, T), Fail> {
    let dir = state.dir(std::path::Path::new("."));
    let rt = tokio::runtime::Runtime::new().map_err(|e| Fail(2, e.to_string()))?;
    let (info, store, plan) = rt.block_on(latest(state, &dir))?;
    let out = rt
        .block_on(async {
            let out = answer(store.as_ref(), &info.run).await?;
            let st = store.state(&info.run).await?;
            let _ = orch_state::views::write_views(&dir, &st, plan.as_ref());
            Ok::<_, orch_graph::EngineError>(out)
        })
        .map_err(|e| match e {
            orch_graph::EngineError::Store(e) => Fail(6, e.to_string()),
            e => Fail(2, e.to_string()),
        })?;
    Ok((info, dir, out))
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
    Mermaid,
    Dot,
}

/// Loads a plan and checks its graph (cycles, batch order).
fn load(path: &PathBuf) -> Result<(Plan, orch_graph::Report), String> {
    let plan = Plan::from_path(path).map_err(|e| e.to_string())?;
    let report = orch_graph::analyze(&plan, 1).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((plan, report))
}

/// "1 ticket", "2 tickets", "0 batches".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn run(cli: Cli) -> Result<(), Fail> {
    match cli.command {
        Command::Validate { plans } => {
            let mut failed = false;
            for path in &plans {
                match load(path) {
                    Ok((plan, r)) => println!(
                        "{}: ok — plan {:?}: {}, {}, {}, {} of effort, critical path {}",
                        path.display(),
                        plan.name,
                        count(plan.tickets.len(), "ticket", "tickets"),
                        count(plan.batches.len(), "batch", "batches"),
                        count(plan.phases.len(), "phase", "phases"),
                        orch_core::format_minutes(r.total_effort_minutes),
                        orch_core::format_minutes(r.critical_path_minutes),
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(Fail(1, String::new()));
            }
        }
        Command::Analyze {
            plan,
            agents,
            format,
        } => {
            let p = Plan::from_path(&plan).map_err(|e| Fail(1, e.to_string()))?;
            let report = orch_graph::analyze(&p, agents.clamp(1, 1024))
                .map_err(|e| Fail(1, format!("{}: {e}", plan.display())))?;
            match format {
                OutputFormat::Text => print!("{}", report.text()),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| Fail(1, e.to_string()))?
                ),
                OutputFormat::Mermaid => print!("{}", report.mermaid()),
                OutputFormat::Dot => print!("{}", report.dot()),
            }
        }
        Command::Schema => print!("{}", orch_core::plan::json_schema()),
        Command::Run {
            plan,
            repo,
            state,
            concurrency,
            run,
            allow_plan_change,
            workers,
            remote,
        } => {
            let p = Plan::from_path(&plan).map_err(|e| Fail(2, e.to_string()))?;
            let repo = absolute(&repo);
            let info = RunInfo {
                run: run.unwrap_or_else(|| orch_examples::new_run_id(&p)),
                plan: absolute(&plan),
                repo: repo.clone(),
                concurrency,
                database: None,
                workers: workers.then_some(remote),
            };
            let dir = absolute(&state.dir(&repo));
            let how = Start {
                fresh: true,
                allow_plan_change,
                standby: false,
            };
            execute(info, dir, state.database_url.as_deref(), how)?;
        }
        Command::Worker {
            plan,
            run,
            repo,
            database_url,
            roles,
            concurrency,
            remote,
            lease_secs,
            state,
        } => {
            let repo = absolute(&repo);
            let dir = absolute(&state.unwrap_or_else(|| repo.join(".orch").join("worker")));
            let worker = orch_examples::worker::Worker {
                plan: plan.as_deref().map(absolute),
                run,
                repo,
                state_dir: dir,
                roles,
                concurrency: concurrency as usize,
                remote,
                lease: std::time::Duration::from_secs(lease_secs),
            };
            let rt = tokio::runtime::Runtime::new().map_err(|e| Fail(2, e.to_string()))?;
            rt.block_on(async {
                let cancel = Cancellation::new();
                let stopped_by = stop_on_signals(
                    cancel.clone(),
                    "stopping running agents and handing their jobs back to the queue",
                )
                .map_err(|e| Fail(2, e))?;
                worker
                    .run(&database_url, cancel)
                    .await
                    .map_err(|e| Fail(e.code(), e.to_string()))?;
                match stopped_by.load(Ordering::SeqCst) {
                    0 => Ok(()),
                    sig => Err(Fail(128 + sig, String::new())),
                }
            })?;
        }
        Command::Resume {
            state,
            allow_plan_change,
            standby,
        } => {
            let dir = absolute(&state.dir(std::path::Path::new(".")));
            let info = RunInfo::load(&dir)?;
            let how = Start {
                fresh: false,
                allow_plan_change,
                standby,
            };
            execute(info, dir, state.database_url.as_deref(), how)?;
        }
        Command::Status {
            state,
            json,
            report,
            metrics,
            since,
        } => {
            let dir = state.dir(std::path::Path::new("."));
            let rt = tokio::runtime::Runtime::new().map_err(|e| Fail(2, e.to_string()))?;
            let (info, store, plan) = rt.block_on(latest(&state, &dir))?;
            let st = rt
                .block_on(store.state(&info.run))
                .map_err(|e| Fail(6, e.to_string()))?;
            if report || metrics {
                let plan = plan.ok_or_else(|| {
                    Fail(
                        2,
                        format!(
                            "the report needs the run's plan, and {} cannot be read",
                            info.plan.display()
                        ),
                    )
                })?;
                let now = orch_core::Timestamp::now();
                let since = since
                    .map(|m| orch_core::Timestamp(now.0.saturating_sub(u64::from(m) * 60_000)));
                let r = orch_graph::status::StatusReport::new(&plan, &st, now, since)
                    .map_err(|e| Fail(2, e.to_string()))?;
                if metrics {
                    print!("{}", r.to_openmetrics());
                } else if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&r).map_err(|e| Fail(2, e.to_string()))?
                    );
                } else {
                    print!("{}", r.to_markdown());
                }
            } else if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&st).map_err(|e| Fail(2, e.to_string()))?
                );
            } else {
                let views = orch_state::views::render_summaries(&st, plan.as_ref());
                print!(
                    "{}",
                    views
                        .get("ORCHESTRATOR_STATE.md")
                        .cloned()
                        .unwrap_or_default()
                );
                // A run with workers: who holds which phase, and leases.
                if let (Some(_), Some(url)) = (&info.workers, state.database_url.as_deref()) {
                    let jobs = rt
                        .block_on(async {
                            let q = orch_state::PgStore::connect(url).await?;
                            orch_core::JobQueue::jobs(&q, &info.run).await
                        })
                        .map_err(|e| Fail(6, e.to_string()))?;
                    print!("{}", orch_examples::worker::workers_section(&jobs));
                }
            }
        }
        Command::Serve {
            state,
            bind,
            plans,
            token,
        } => serve(&state, bind, &plans, token)?,
        Command::Accept {
            delay,
            risk,
            batch,
            state,
        } => {
            let (what, note) = match (delay, risk) {
                (Some(n), _) => (orch_core::Acceptance::Delay, n),
                (None, n) => (orch_core::Acceptance::Risk, n.unwrap_or_default()),
            };
            let b = batch.clone();
            let (info, _, answered) = answer_latest(&state, async |store, run| {
                orch_graph::accept(store, run, what, b, note).await
            })?;
            match (what, batch) {
                (orch_core::Acceptance::Delay, _) => {
                    for s in &answered {
                        println!(
                            "Accepted: the finish projected {} past the estimate (raised {}).",
                            orch_core::format_minutes(s.delay_minutes),
                            s.at
                        );
                    }
                    println!("The run goes on against the accepted delay ({}).", info.run);
                }
                (_, Some(b)) => println!(
                    "Risk accepted in run {}; batch {b}'s go/no-go record lists it.",
                    info.run
                ),
                (_, None) => println!(
                    "Risk accepted in run {}; every batch's go/no-go record lists it.",
                    info.run
                ),
            }
        }
        Command::Decide {
            ticket,
            answer,
            adr,
            state,
        } => {
            let (decision, note) = match answer {
                Answer { approve: true, .. } => (Decision::Approve, None),
                Answer { retry: Some(n), .. } => (Decision::Retry, Some(n)),
                Answer { skip: true, .. } => (Decision::Skip, None),
                _ => (Decision::Abort, None),
            };
            let draft = adr.adr.map(|title| {
                let mut d = orch_graph::AdrDraft::titled(title);
                d.context = adr.context;
                d.consequences = adr.consequences;
                d.alternatives = adr.alternatives;
                d.deciders = adr.deciders;
                d
            });
            let t = &ticket;
            let (info, dir, recorded) = answer_latest(&state, async |s, r| match draft {
                Some(d) => Ok(Some(
                    orch_graph::decide_with_adr(s, r, t, decision, note, d).await?,
                )),
                None => orch_graph::decide(s, r, t, decision, note)
                    .await
                    .map(|()| None),
            })?;
            println!(
                "{ticket}: {decision:?} recorded in run {}. A running `orch run` picks it up; otherwise `orch resume`.",
                info.run
            );
            if let Some(a) = recorded {
                let copy = dir.join(orch_state::views::adr_file(&info.run, &a));
                let committed = match decision {
                    Decision::Approve | Decision::Retry => {
                        format!("committed with {ticket}'s next checkpoint; ")
                    }
                    // Nothing more is committed for the ticket, or at all.
                    Decision::Skip | Decision::Abort => "not committed: ".into(),
                };
                println!(
                    "ADR-{:03} recorded: {} ({committed}the state directory keeps it: {})",
                    a.number,
                    a.path(),
                    copy.display()
                );
            }
        }
    }
    Ok(())
}

/// `orch serve`: the runs of a state directory's journal (or a
/// PostgreSQL database's) on `bind`, until a signal.
fn serve(
    state: &StateArg,
    bind: std::net::SocketAddr,
    plans: &[PathBuf],
    token: Option<String>,
) -> Result<(), Fail> {
    use orch_examples::serve::{Site, Token};
    let dir = absolute(&state.dir(std::path::Path::new(".")));
    let token = match token {
        Some(t) => Token::new(t).map_err(|e| Fail(2, format!("--token: {e}")))?,
        None => Token::random().map_err(|e| Fail(2, e.to_string()))?,
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| Fail(2, e.to_string()))?;
    rt.block_on(async {
        let store: Arc<dyn StateStore> = match state.database_url.as_deref() {
            Some(url) => Arc::new(
                orch_state::PgStore::connect(url)
                    .await
                    .map_err(|e| Fail(6, e.to_string()))?,
            ),
            None => {
                let db = dir.join("state.db");
                if !db.is_file() {
                    return Err(Fail(
                        2,
                        format!(
                            "no journal in {} ({} is not there): pass --state DIR of a run, or --database-url",
                            dir.display(),
                            db.display()
                        ),
                    ));
                }
                open_store(&dir).map_err(|e| Fail(6, e.to_string()))?
            }
        };
        let mut files: Vec<PathBuf> = plans.iter().map(|p| absolute(p)).collect();
        if let Ok(info) = RunInfo::load(&dir)
            && !files.contains(&info.plan)
        {
            files.push(info.plan);
        }
        let mut site = Site::new(store, token.clone())
            .map_err(|e| Fail(2, e.to_string()))?
            .state_dir(&dir);
        if let Some(url) = state.database_url.as_deref() {
            site = site.with_url(url);
        }
        for f in &files {
            match Plan::from_path(f) {
                Ok(p) => {
                    site = site
                        .plan(p)
                        .map_err(|e| Fail(2, format!("{}: {e}", f.display())))?;
                }
                // The latest run's plan may be gone; one named is needed.
                Err(e) if plans.iter().any(|g| absolute(g) == *f) => {
                    return Err(Fail(2, e.to_string()));
                }
                Err(e) => eprintln!("warning: the latest run is not drawn: {e}"),
            }
        }
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| Fail(2, format!("cannot listen on {bind}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Fail(2, e.to_string()))?;
        if !addr.ip().to_canonical().is_loopback() {
            eprintln!(
                "warning: serving on {addr}, not loopback: anyone who can reach it reads the runs, and the token travels in clear unless TLS is put in front of it (a reverse proxy)"
            );
        }
        let site = site.at(addr);
        println!(
            "orch serve: the runs in {} at http://{addr}/\nTo answer decisions from a browser, open http://{addr}/login?token={}",
            state
                .database_url
                .as_deref()
                .map_or_else(|| dir.display().to_string(), |_| "the PostgreSQL database".into()),
            token.as_str()
        );
        let cancel = Cancellation::new();
        let stopped_by =
            stop_on_signals(cancel.clone(), "stopping the server").map_err(|e| Fail(2, e))?;
        orch_examples::serve::serve(listener, site, cancel)
            .await
            .map_err(|e| Fail(2, format!("serving on {addr}: {e}")))?;
        match stopped_by.load(Ordering::SeqCst) {
            0 => Ok(()),
            sig => Err(Fail(128 + sig, String::new())),
        }
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // An error may quote what it failed on (a database URL, an agent's
    // output): no secret of this process, nor the URL's password, is shown.
    let mut redactor = orch_core::secrets::Redactor::from_process_env();
    if let Some(url) = cli.database_url() {
        redactor = redactor.with_url(url);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, e)) => {
            if !e.is_empty() {
                eprintln!("{}", redactor.redact(&e));
            }
            ExitCode::from(code)
        }
    }
}
