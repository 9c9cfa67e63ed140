//! [`GitWorkspace`]: the engine's [`Workspace`] on a git repository.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use orch_core::{
    BatchId, Changes, Merged, PhaseName, Prepared, RunId, TicketId, Workspace, WorkspaceError,
    WorkspaceErrorKind,
};

use orch_core::secrets::Redactor;

use crate::git::{GitError, MergeOutcome, Repo, Worktree};

/// Each ticket in its own worktree on `orch/<run>/<ticket>`, started from
/// the base commit with its dependencies' branches merged in; checkpoints
/// are commits; a batch is the merge of its tickets' branches into the
/// batch's branch.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let git = |a: &[&str]| std::process::Command::new("git").args(a).current_dir(dir.path()).output();
/// # git(&["init", "-q", "-b", "main"])?;
/// # git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init"])?;
/// use orch_core::Workspace;
/// let repo = orch_state::git::Repo::open(dir.path())?;
/// let ws = orch_state::GitWorkspace::new(repo, "HEAD")?;
/// let rt = tokio::runtime::Runtime::new()?;
/// let p = rt.block_on(ws.prepare(&"r1".parse()?, &"T-1".parse()?, &[]))?;
/// assert!(p.path.ends_with(".orch/worktrees/r1/T-1"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct GitWorkspace {
    repo: Arc<Repo>,
    /// Serialises what changes the repository's shared state (adding,
    /// pruning and removing worktrees, batch merges): a `git worktree
    /// prune` racing a `git worktree add` can unregister the new worktree.
    shared: Arc<std::sync::Mutex<()>>,
    base: String,
    batch_branches: HashMap<BatchId, String>,
    redactor: Redactor,
}

/// The key a checkpoint commit carries in its trailer: what recognises it
/// after a crash.
fn checkpoint_key(run: &RunId, ticket: &TicketId, phase: &PhaseName, attempt: u32) -> String {
    format!("{run}/{ticket}/{phase}/{attempt}")
}

fn ws_err(e: GitError) -> WorkspaceError {
    WorkspaceError::new(e.kind, e.to_string())
}

impl GitWorkspace {
    /// Tickets start from `base` (a commit, branch or `HEAD`, resolved now).
    ///
    /// # Errors
    /// When `base` names no commit.
    pub fn new(repo: Repo, base: &str) -> Result<GitWorkspace, GitError> {
        let base = repo.resolve(base)?;
        Ok(GitWorkspace {
            repo: Arc::new(repo),
            shared: Arc::default(),
            base,
            batch_branches: HashMap::new(),
            redactor: Redactor::from_process_env(),
        })
    }

    /// What finds secrets before a checkpoint or merge commits them:
    /// [`orch_core::secrets::SECRET_PATTERNS`] and the values this
    /// redactor knows (default: the secrets of this process's
    /// environment).
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// The branch each batch is merged into (default `orch/<run>/batch-<id>`);
    /// usually `plan.batches` with [`Batch::branch_name`](orch_core::Batch::branch_name).
    pub fn batch_branches(mut self, b: impl IntoIterator<Item = (BatchId, String)>) -> Self {
        self.batch_branches.extend(b);
        self
    }

    /// The repository.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The commit tickets start from.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Runs `f` on a blocking thread; `exclusive`: one at a time.
    async fn blocking<T: Send + 'static>(
        &self,
        exclusive: bool,
        f: impl FnOnce(&Repo) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, WorkspaceError> {
        let (repo, shared) = (self.repo.clone(), self.shared.clone());
        tokio::task::spawn_blocking(move || {
            let _guard = exclusive.then(|| shared.lock().unwrap_or_else(|e| e.into_inner()));
            f(&repo)
        })
        .await
        .map_err(|e| {
            WorkspaceError::new(WorkspaceErrorKind::Tool, format!("git task failed: {e}"))
        })?
        .map_err(ws_err)
    }

    fn worktree(&self, run: &RunId, ticket: &TicketId) -> Worktree {
        Worktree {
            path: self
                .repo
                .root()
                .join(".orch/worktrees")
                .join(run.as_str())
                .join(ticket.as_str()),
            branch: Repo::ticket_branch(run, ticket),
        }
    }
}

#[async_trait]
impl Workspace for GitWorkspace {
    async fn prepare(
        &self,
        run: &RunId,
        ticket: &TicketId,
        deps: &[TicketId],
    ) -> Result<Prepared, WorkspaceError> {
        let (run, ticket, base) = (run.clone(), ticket.clone(), self.base.clone());
        let deps: Vec<String> = deps.iter().map(|d| Repo::ticket_branch(&run, d)).collect();
        self.blocking(true, move |repo| {
            let wt = repo.worktree(&run, &ticket, &base)?;
            repo.merge_into(&wt, &deps)?;
            let head = repo.git(&["-C", &wt.path.to_string_lossy(), "rev-parse", "HEAD"])?;
            Ok(Prepared {
                path: wt.path.into(),
                base: Some(head),
            })
        })
        .await
    }

    async fn checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &PhaseName,
        attempt: u32,
    ) -> Result<Option<String>, WorkspaceError> {
        let wt = self.worktree(run, ticket);
        // The key, recorded in the commit, is what recognises a repeat.
        let key = checkpoint_key(run, ticket, phase, attempt);
        let message = format!("{ticket}: {phase} passed (attempt {attempt})");
        let redactor = self.redactor.clone();
        // The last guard (the engine asked `secrets` after the gates):
        // nothing with a secret is added, so no object holds one.
        self.blocking(false, move |repo| {
            repo.checkpoint_without_secrets(&wt, &key, &message, &redactor)
                .map(Some)
        })
        .await
    }

    async fn secrets(&self, run: &RunId, ticket: &TicketId) -> Result<Vec<String>, WorkspaceError> {
        let wt = self.worktree(run, ticket);
        let (base, redactor) = (self.base.clone(), self.redactor.clone());
        self.blocking(false, move |repo| repo.secrets(&wt, &base, &redactor))
            .await
    }

    async fn find_checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &PhaseName,
        attempt: u32,
    ) -> Result<Option<String>, WorkspaceError> {
        let wt = self.worktree(run, ticket);
        let key = checkpoint_key(run, ticket, phase, attempt);
        self.blocking(false, move |repo| repo.find_checkpoint(&wt, &key))
            .await
    }

    async fn changed_since(
        &self,
        run: &RunId,
        ticket: &TicketId,
        commit: &str,
        paths: &[String],
    ) -> Result<Changes, WorkspaceError> {
        let wt = self.worktree(run, ticket);
        let (commit, paths) = (commit.to_owned(), paths.to_vec());
        self.blocking(false, move |repo| {
            repo.changed_since(&wt, &commit, &paths)
                .map(|(files, diff)| Changes::new(files, diff))
        })
        .await
    }

    async fn rollback(
        &self,
        run: &RunId,
        ticket: &TicketId,
        commit: &str,
    ) -> Result<(), WorkspaceError> {
        let wt = self.worktree(run, ticket);
        let commit = commit.to_owned();
        self.blocking(false, move |repo| repo.rollback(&wt, &commit))
            .await
    }

    async fn merge(
        &self,
        run: &RunId,
        batch: &BatchId,
        tickets: &[TicketId],
    ) -> Result<Merged, WorkspaceError> {
        let branch = self
            .batch_branches
            .get(batch)
            .cloned()
            .unwrap_or_else(|| format!("orch/{run}/batch-{batch}"));
        let branches: Vec<String> = tickets
            .iter()
            .map(|t| Repo::ticket_branch(run, t))
            .collect();
        let (run, batch, base) = (run.clone(), batch.clone(), self.base.clone());
        let redactor = self.redactor.clone();
        self.blocking(true, move |repo| {
            // What each branch brings must hold no secret (its checkpoints
            // were scanned; a branch changed outside orch may not be).
            for b in &branches {
                let found = repo.branch_secrets(&base, b, &redactor)?;
                if !found.is_empty() {
                    return Err(GitError {
                        kind: WorkspaceErrorKind::Secrets,
                        command: format!("merge {b}"),
                        message: format!(
                            "refused: it would bring in secrets: {}",
                            found.join(", ")
                        ),
                    });
                }
            }
            Ok(
                match repo.merge_batch(&run, &batch, &branch, &base, &branches)? {
                    MergeOutcome::Merged { commit } => Merged::Clean {
                        commit: Some(commit),
                        path: repo.batch_worktree(&run, &batch).into(),
                    },
                    MergeOutcome::Conflict { branch, files } => Merged::Conflict {
                        ticket: branch
                            .rsplit('/')
                            .next()
                            .and_then(|t| t.parse().ok())
                            .unwrap_or_else(|| "unknown".parse().expect("valid id")),
                        files,
                    },
                },
            )
        })
        .await
    }

    async fn release(&self, run: &RunId, ticket: &TicketId) -> Result<(), WorkspaceError> {
        let wt = self.worktree(run, ticket);
        if !wt.path.exists() {
            return Ok(());
        }
        self.blocking(true, move |repo| repo.remove_worktree(&wt))
            .await
    }
}
