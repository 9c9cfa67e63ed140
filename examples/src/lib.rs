//! What the `orch` command and the bundled examples share: wiring the five
//! crates into an [`Engine`], observers that keep the state files and show
//! progress, and the demo projects the examples run on.

pub mod demo;
mod observe;
pub mod scale;
pub mod serve;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orch_agents::{AgentDefaults, Router};
use orch_core::secrets::Redactor;
use orch_core::{Agent, Cancellation, Plan, RunId, StateStore};
use orch_graph::Engine;
use orch_state::git::Repo;
use orch_state::{GitWorkspace, SqliteStore};

pub use observe::Progress;
pub use orch_state::StateFiles;

/// The error type of the wiring: every failure as a readable message.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The file in the state directory that names the latest run.
pub const RUN_FILE: &str = "run.json";

/// Where a run is and what it runs: saved as `run.json` in the state
/// directory so `orch resume`, `orch status` and `orch decide` find it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// The run's id.
    pub run: RunId,
    /// The plan file (absolute).
    pub plan: PathBuf,
    /// The repository the tickets work in (absolute).
    pub repo: PathBuf,
    /// The concurrency asked for, if not the plan's.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// The PostgreSQL database that holds the journal, as
    /// [`PgStore::database`](orch_state::PgStore::database) names it (never
    /// the password, so never enough to connect); `None`: SQLite in the
    /// state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// A run whose phases workers do (`orch run --workers`): the git
    /// remote the machines share work through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<String>,
}

impl RunInfo {
    /// Reads `run.json` from `state_dir`.
    ///
    /// # Errors
    /// When there is none (no run started there) or it is damaged.
    pub fn load(state_dir: &Path) -> Result<RunInfo, Error> {
        let path = state_dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no run in {} ({}: {e}); start one with `orch run PLAN`",
                state_dir.display(),
                path.display()
            )
        })?;
        Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
    }

    /// Writes `run.json` into `state_dir` (atomically).
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn save(&self, state_dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(state_dir)?;
        let json = serde_json::to_string_pretty(self)?;
        orch_state::views::write_atomic(&state_dir.join(RUN_FILE), json.as_bytes())
            .map_err(|e| format!("{}: {e}", state_dir.join(RUN_FILE).display()))?;
        Ok(())
    }
}

/// Opens the SQLite journal of a state directory (`<dir>/state.db`).
///
/// # Errors
/// When the directory cannot be made or the database opened.
pub fn open_store(state_dir: &Path) -> Result<Arc<SqliteStore>, Error> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    Ok(Arc::new(SqliteStore::open(state_dir.join("state.db"))?))
}

/// The agents of a plan, by role (with fallbacks, retries, breakers and the
/// budget), transcripts written under `<state_dir>/transcripts`.
///
/// # Errors
/// When a role's backend cannot be built.
pub fn plan_agents(
    plan: &Plan,
    state_dir: &Path,
    custom: &HashMap<String, Arc<dyn Agent>>,
) -> Result<Arc<dyn Agent>, Error> {
    let defaults = AgentDefaults {
        timeout: Duration::from_secs(plan.policy.timeouts.agent_secs),
        stall: Duration::from_secs(plan.policy.timeouts.stall_secs),
        transcripts: Some(state_dir.join("transcripts")),
        redactor: Redactor::for_plan(plan),
    };
    Ok(Arc::new(Router::from_plan(plan, &defaults, custom)?))
}

/// Where `file` lies inside the repository at `repo`: its path from the
/// repository's top, with `/` between names (`None`: outside it, or a
/// name that is not UTF-8). What a run records as its plan file, for
/// workers to find the plan in their own clones.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// std::fs::create_dir_all(dir.path().join("plans")).unwrap();
/// std::fs::write(dir.path().join("plans/p.toml"), "").unwrap();
/// let inside = orch_examples::path_in(dir.path(), &dir.path().join("plans/p.toml"));
/// assert_eq!(inside.as_deref(), Some("plans/p.toml"));
/// assert_eq!(orch_examples::path_in(&dir.path().join("plans"), dir.path()), None);
/// ```
pub fn path_in(repo: &Path, file: &Path) -> Option<String> {
    let (repo, file) = (repo.canonicalize().ok()?, file.canonicalize().ok()?);
    let names: Option<Vec<&str>> = file
        .strip_prefix(&repo)
        .ok()?
        .components()
        .map(|c| match c {
            std::path::Component::Normal(name) => name.to_str(),
            _ => None,
        })
        .collect();
    names.filter(|n| !n.is_empty()).map(|n| n.join("/"))
}

/// Where the plan file `plan` lies in the git repository at `repo`, for a
/// run to record ([`orch_graph::Engine::plan_file`]) so that workers read
/// the plan in their own clones, at the run's base commit: only when the
/// file is committed at `HEAD` byte for byte as it is on disk, else why
/// not.
///
/// # Errors
/// Why workers could not read this plan in their clones: the repository
/// cannot be opened, the plan lies outside it, is not committed, or
/// differs from what is committed.
pub fn committed_plan(repo: &Path, plan: &Path) -> Result<String, String> {
    let repo = orch_state::git::Repo::open(repo).map_err(|e| e.to_string())?;
    let rel = path_in(repo.root(), plan).ok_or("it lies outside the repository")?;
    // The very bytes workers read: no filter (line endings, LFS) between.
    let committed = (repo.blob("HEAD", &rel)).map_err(|_| format!("{rel} is not committed"))?;
    let on_disk = std::fs::read(plan).map_err(|e| format!("{}: {e}", plan.display()))?;
    if committed == on_disk {
        Ok(rel)
    } else {
        Err(format!("{rel} differs from the committed one"))
    }
}

/// Everything a run needs.
pub struct Setup {
    /// The plan.
    pub plan: Plan,
    /// The git repository tickets work in.
    pub repo: PathBuf,
    /// Where the journal and the state files go.
    pub state_dir: PathBuf,
    /// The agent (usually [`plan_agents`]).
    pub agent: Arc<dyn Agent>,
    /// Overrides the plan's concurrency.
    pub concurrency: Option<u32>,
    /// Resume even though the plan changed.
    pub allow_plan_change: bool,
    /// Show progress (bars on a terminal, lines otherwise); `false`: quiet.
    pub progress: bool,
    /// When set, a state directory that cannot be written cancels this
    /// (the run) and says why in the shared cell.
    pub stop_on_state_failure: Option<(Cancellation, Arc<std::sync::Mutex<Option<String>>>)>,
    /// What removes secrets from the journal, the state files, the prompts
    /// and what is committed. Default: the secrets of this process's
    /// environment; add others (a database URL's password given as an
    /// argument) with [`Redactor::with_url`] or [`Redactor::with_values`].
    pub redactor: Redactor,
    /// The git remote machines of a run with workers share work through
    /// ([`GitWorkspace::remote`]); `None`: one machine.
    pub remote: Option<String>,
}

impl Setup {
    /// A setup with the plan's own concurrency, refusing a changed plan on
    /// resume, and showing progress; set the fields to change that.
    pub fn new(
        plan: Plan,
        repo: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        agent: Arc<dyn Agent>,
    ) -> Setup {
        Setup {
            repo: repo.into(),
            state_dir: state_dir.into(),
            agent,
            concurrency: None,
            allow_plan_change: false,
            progress: true,
            stop_on_state_failure: None,
            redactor: Redactor::for_plan(&plan),
            remote: None,
            plan,
        }
    }

    /// The git workspace of the repository (a worktree per ticket, the
    /// plan's batch branches).
    ///
    /// # Errors
    /// A directory that is not a git repository, or one with no commit.
    pub fn workspace(&self) -> Result<GitWorkspace, Error> {
        let repo = Repo::open(&self.repo)
            .map_err(|e| format!("{} is not a git repository: {e}", self.repo.display()))?;
        let ws = GitWorkspace::new(repo, "HEAD")
            .map_err(|e| format!("{}: no commit to start from: {e}", self.repo.display()))?;
        let ws = match &self.remote {
            Some(r) => ws.remote(r.clone()),
            None => ws,
        };
        Ok(ws
            .redactor(self.redactor.clone())
            .spec(&self.plan.workspace)
            // Batches that name a branch; the others get one per run.
            .batch_branches(
                self.plan
                    .batches
                    .iter()
                    .filter_map(|b| Some((b.id.clone(), b.branch.as_ref()?.to_string()))),
            ))
    }

    /// The engine: SQLite journal in the state directory, a git worktree per
    /// ticket, the gates of orch-gates, state files kept up to date.
    ///
    /// # Errors
    /// A plan the engine refuses (cycle, bad gate), a repository that is not
    /// git, a store that cannot be opened.
    pub fn engine(&self, store: Arc<dyn StateStore>) -> Result<Engine, Error> {
        let mut engine = Engine::new(self.plan.clone(), self.agent.clone(), store)?
            .workspace(Arc::new(self.workspace()?))
            .gates(Arc::new(orch_gates::from_spec))
            .redactor(self.redactor.clone())
            .allow_plan_change(self.allow_plan_change)
            .observe(Arc::new({
                let files = StateFiles::new(&self.state_dir, &self.plan)
                    .also("STATUS_REPORT.md", status_report(&self.plan));
                match &self.stop_on_state_failure {
                    Some((run, failed)) => files.stop_on_failure(run.clone(), failed.clone()),
                    None => files,
                }
            }));
        if self.progress {
            engine = engine.observe(Arc::new(Progress::new(&self.plan)));
        }
        if let Some(n) = self.concurrency {
            engine = engine.max_concurrency(n);
        }
        Ok(engine)
    }
}

/// A fresh run id for `plan`: its name and the time.
pub fn new_run_id(plan: &Plan) -> RunId {
    let now = orch_core::Timestamp::now().to_string();
    let stamp: String = now.chars().filter(char::is_ascii_digit).take(14).collect();
    let name: String = plan
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{}-{stamp}", name.trim_matches('-'))
        .parse()
        .unwrap_or_else(|_| format!("run-{stamp}").parse().expect("valid id"))
}

/// `STATUS_REPORT.md` for runs of `plan`: the report as of the run's last
/// event (so the file is a function of the journal).
fn status_report(plan: &Plan) -> impl Fn(&orch_core::RunState) -> String + Send + Sync + 'static {
    let plan = plan.clone();
    move |state| {
        let at = state.updated_at.unwrap_or_else(orch_core::Timestamp::now);
        match orch_graph::status::StatusReport::new(&plan, state, at, None) {
            Ok(r) => r.to_markdown(),
            Err(e) => format!("# Status report: {}\n\nNo report: {e}\n", plan.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::committed_plan;

    /// Workers read a plan in their clones only as committed: a run names
    /// its plan file only when the file on disk is that.
    #[test]
    fn a_plan_file_is_named_only_as_committed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        crate::demo::init_repo(&repo, &[("plans/p.toml", "name = \"p\"\n")]).unwrap();
        let plan = repo.join("plans/p.toml");
        assert_eq!(committed_plan(&repo, &plan), Ok("plans/p.toml".into()));
        // From a directory inside the repository, the path is still the
        // repository's.
        assert_eq!(
            committed_plan(&repo.join("plans"), &plan),
            Ok("plans/p.toml".into())
        );
        std::fs::write(&plan, "name = \"changed\"\n").unwrap();
        assert_eq!(
            committed_plan(&repo, &plan),
            Err("plans/p.toml differs from the committed one".into())
        );
        let new = repo.join("plans/new.toml");
        std::fs::write(&new, "name = \"new\"\n").unwrap();
        assert_eq!(
            committed_plan(&repo, &new),
            Err("plans/new.toml is not committed".into())
        );
        let outside = dir.path().join("p.toml");
        std::fs::write(&outside, "name = \"p\"\n").unwrap();
        assert_eq!(
            committed_plan(&repo, &outside),
            Err("it lies outside the repository".into())
        );
    }
}
