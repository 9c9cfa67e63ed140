//! [`GitWorkspace`]: the engine's [`Workspace`] on a git repository.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orch_core::{
    BatchId, Changes, Merged, PhaseName, Prepared, RunId, TicketId, Workspace, WorkspaceError,
    WorkspaceErrorKind, WorkspaceSpec, Worktrees,
};

use orch_core::secrets::Redactor;

use crate::git::{GitError, MergeOutcome, Repo, Worktree};

/// Each ticket on its own branch `orch/<run>/<ticket>`, started from the
/// base commit with its dependencies' branches merged in, checked out in a
/// worktree of its own while it works; checkpoints are commits; a batch is
/// the merge of its tickets' branches into the batch's branch.
///
/// Worktrees are slots by default ([`WorkspaceSpec`]): a pool under
/// `.orch/slots`, shared by the runs in the repository, each held by one
/// ticket at a time (a lock file, `.orch/slots/<n>.lock`, locked while a
/// process holds it, so not even two processes share one). A ticket
/// takes the slot its branch is checked out in (its own, after a
/// crash) or a free one (head detached), which is switched to its branch
/// and cleaned, keeping only the spec's `keep` caches; when the ticket is
/// done its slot's head is detached again. With [`Worktrees::Fresh`] each
/// ticket gets a new worktree under `.orch/worktrees/<run>/<ticket>`,
/// removed when it is done.
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
/// let (run, t1, t2) = ("r1".parse()?, "T-1".parse()?, "T-2".parse()?);
/// let p = rt.block_on(ws.prepare(&run, &t1, &[]))?;
/// assert!(p.path.ends_with(".orch/slots/0"));
/// rt.block_on(ws.release(&run, &t1))?;
/// // The next ticket reuses the slot, cleaned.
/// let p = rt.block_on(ws.prepare(&run, &t2, &[t1]))?;
/// assert!(p.path.ends_with(".orch/slots/0"));
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
    /// The slot pool; `None`: a fresh worktree per ticket.
    slots: Option<Arc<Slots>>,
    /// Tickets released, for writing the commit graph every
    /// [`GRAPH_EVERY`] of them.
    released: Arc<AtomicUsize>,
}

/// Released tickets between two writes of the commit graph.
const GRAPH_EVERY: usize = 64;

/// The slots of a [`GitWorkspace`]: what they keep, and which this
/// process holds.
#[derive(Debug)]
struct Slots {
    keep: Vec<String>,
    /// This process's view of the repository's slots, shared by every
    /// workspace on the repository in this process (as the slots' locks
    /// are the process's): a ticket held by one is found by the next.
    table: Arc<Mutex<SlotTable>>,
}

/// The slot table of each repository (by its shared git directory) in
/// this process.
fn slot_table(repo: &Repo) -> Arc<Mutex<SlotTable>> {
    static TABLES: std::sync::OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<SlotTable>>>>> =
        std::sync::OnceLock::new();
    let mut tables = TABLES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    tables.entry(repo.slots_dir()).or_default().clone()
}

#[derive(Debug, Default)]
struct SlotTable {
    /// Whether `heads` was read from the disk yet.
    scanned: bool,
    /// Each slot's branch as last seen (`None`: free, head detached),
    /// by slot number.
    heads: Vec<Option<String>>,
    /// What this process holds, by ticket branch.
    held: HashMap<String, Held>,
}

/// A work tree a ticket of this process holds.
#[derive(Debug)]
struct Held {
    path: PathBuf,
    /// The slot's number and its lock (`None`: a fresh worktree, found
    /// from a run begun with fresh worktrees).
    slot: Option<(usize, std::fs::File)>,
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
            slots: None,
            released: Arc::default(),
        }
        .spec(&WorkspaceSpec::default()))
    }

    /// How tickets get work trees: the plan's `[workspace]` (default:
    /// slots keeping `target/`, `node_modules/` and `.venv/`).
    pub fn spec(mut self, spec: &WorkspaceSpec) -> Self {
        self.slots = match spec.worktrees {
            Worktrees::Fresh => None,
            _ => Some(Arc::new(Slots {
                keep: spec.keep.clone(),
                table: slot_table(&self.repo),
            })),
        };
        self
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

    /// The fresh worktree of a ticket (where it is, made or not).
    fn fresh(&self, run: &RunId, ticket: &TicketId) -> Worktree {
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

    /// The work tree `ticket` holds (prepared in this process).
    fn worktree(&self, run: &RunId, ticket: &TicketId) -> Result<Worktree, WorkspaceError> {
        let Some(slots) = &self.slots else {
            return Ok(self.fresh(run, ticket));
        };
        let branch = Repo::ticket_branch(run, ticket);
        let table = slots.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.held.get(&branch) {
            Some(h) => Ok(Worktree {
                path: h.path.clone(),
                branch,
            }),
            None => Err(WorkspaceError::new(
                WorkspaceErrorKind::Refused,
                format!("{ticket} holds no work tree: it was not prepared (or was released)"),
            )),
        }
    }
}

/// After each [`GRAPH_EVERY`] released tickets, the commit graph.
fn count_release(released: &AtomicUsize, repo: &Repo) {
    if (released.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(GRAPH_EVERY)
        && let Err(e) = repo.write_commit_graph()
    {
        tracing::warn!(error = %e, "could not write the commit graph");
    }
}

impl Slots {
    /// Takes a work tree for `branch`: the one this process holds for it,
    /// a fresh worktree of it left by a run begun with fresh worktrees,
    /// the slot its branch is checked out in, a free slot, or a new slot;
    /// returns it and whether it needs switching to the branch.
    fn claim(
        &self,
        repo: &Repo,
        shared: &Mutex<()>,
        fresh: &Worktree,
        base: &str,
    ) -> Result<(Worktree, bool), GitError> {
        let branch = &fresh.branch;
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let found = |path: &Path| Worktree {
            path: path.to_path_buf(),
            branch: branch.clone(),
        };
        if let Some(h) = t.held.get(branch) {
            return Ok((found(&h.path), false));
        }
        if repo.usable_worktree(&fresh.path, branch)? {
            t.held.insert(
                branch.clone(),
                Held {
                    path: fresh.path.clone(),
                    slot: None,
                },
            );
            return Ok((fresh.clone(), false));
        }
        let dir = repo.slots_dir();
        if !t.scanned {
            t.heads = scan_slots(repo, &dir);
            t.scanned = true;
        }
        let held: Vec<usize> = t
            .held
            .values()
            .filter_map(|h| Some(h.slot.as_ref()?.0))
            .collect();
        // Its own slot first (after a crash), then free ones.
        let order: Vec<usize> = (0..t.heads.len())
            .filter(|n| t.heads[*n].as_ref() == Some(branch))
            .chain((0..t.heads.len()).filter(|n| t.heads[*n].is_none()))
            .filter(|n| !held.contains(n))
            .collect();
        for n in order {
            let Some(lock) = lock_slot(&dir, n)? else {
                continue; // another process holds it
            };
            let path = dir.join(n.to_string());
            repo.make_slot(&path, base)?;
            // Read again now that it is locked: another process may have
            // used it since the scan.
            let head = repo.slot_head(&path)?;
            let mine = head.as_ref() == Some(branch);
            let take = mine || head.is_none();
            t.heads[n] = head;
            if take {
                let switch = !mine || repo.slot_switching(&path);
                t.heads[n] = Some(branch.clone());
                t.held.insert(
                    branch.clone(),
                    Held {
                        path: path.clone(),
                        slot: Some((n, lock)),
                    },
                );
                return Ok((found(&path), switch));
            }
        }
        // A new slot, at the first number without one.
        let mut n = t.heads.len();
        let lock = loop {
            if let Some(lock) = lock_slot(&dir, n)? {
                break lock;
            }
            n += 1;
        };
        let path = dir.join(n.to_string());
        {
            let _guard = shared.lock().unwrap_or_else(|e| e.into_inner());
            repo.make_slot(&path, base)?;
        }
        if t.heads.len() <= n {
            t.heads.resize(n + 1, None);
        }
        t.heads[n] = Some(branch.clone());
        t.held.insert(
            branch.clone(),
            Held {
                path: path.clone(),
                slot: Some((n, lock)),
            },
        );
        Ok((found(&path), true))
    }

    /// Gives up `branch`'s work tree (after a failed switch, or when its
    /// ticket is done: then `free` detaches a slot's head first).
    fn unclaim(
        &self,
        repo: &Repo,
        shared: &Mutex<()>,
        branch: &str,
        free: bool,
    ) -> Result<(), GitError> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = t.held.remove(branch) else {
            return Ok(());
        };
        match h.slot {
            Some((n, _lock)) => {
                if free {
                    repo.free_slot(&h.path)?;
                    t.heads[n] = None;
                } else {
                    // Read again when next locked.
                    t.heads[n] = None;
                }
                Ok(())
            }
            None if free => {
                let _guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                repo.remove_worktree(&Worktree {
                    path: h.path,
                    branch: branch.to_owned(),
                })
            }
            None => Ok(()),
        }
    }
}

/// The branch of each slot under `dir` (`None`: free, or not readable:
/// it is looked at again when locked), by number.
fn scan_slots(repo: &Repo, dir: &Path) -> Vec<Option<String>> {
    let numbers: Vec<usize> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let len = numbers.iter().max().map_or(0, |m| m + 1);
    let mut heads = vec![None; len];
    for n in numbers {
        heads[n] = repo.slot_head(&dir.join(n.to_string())).unwrap_or(None);
    }
    heads
}

/// Slot `n`'s lock, taken, or `None` when another process holds it.
fn lock_slot(dir: &Path, n: usize) -> Result<Option<std::fs::File>, GitError> {
    let path = dir.join(format!("{n}.lock"));
    let io = |e: std::io::Error| GitError {
        kind: WorkspaceErrorKind::Io,
        command: "lock the slot".into(),
        message: format!("{}: {e}", path.display()),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// `deps` merged into `wt`; its head then, the ticket's base.
fn merged_head(repo: &Repo, wt: &Worktree, deps: &[String]) -> Result<Prepared, GitError> {
    repo.merge_into(wt, deps)?;
    let head = repo.git(&["-C", &wt.path.to_string_lossy(), "rev-parse", "HEAD"])?;
    Ok(Prepared {
        path: wt.path.clone().into(),
        base: Some(head),
    })
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
        let Some(slots) = self.slots.clone() else {
            return self
                .blocking(true, move |repo| {
                    let wt = repo.worktree(&run, &ticket, &base)?;
                    merged_head(repo, &wt, &deps)
                })
                .await;
        };
        let (fresh, shared) = (self.fresh(&run, &ticket), self.shared.clone());
        self.blocking(false, move |repo| {
            let (wt, switch) = slots.claim(repo, &shared, &fresh, &base)?;
            let ready = if repo.resolve(&wt.branch).is_err() {
                // A new ticket: its start made in the object database,
                // then checked out once.
                repo.start_commit(&base, &deps, &wt.branch)
                    .and_then(|start| {
                        repo.switch_slot(&wt, Some(&start), &slots.keep)?;
                        Ok(Prepared {
                            path: wt.path.clone().into(),
                            base: Some(start),
                        })
                    })
            } else {
                if switch {
                    repo.switch_slot(&wt, None, &slots.keep)
                } else {
                    repo.recover_worktree(&wt).map(drop)
                }
                .and_then(|()| merged_head(repo, &wt, &deps))
            };
            if ready.is_err() {
                // Not held by a ticket that could not start in it.
                let _ = slots.unclaim(repo, &shared, &wt.branch, false);
            }
            ready
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
        let wt = self.worktree(run, ticket)?;
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
        let wt = self.worktree(run, ticket)?;
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
        let wt = self.worktree(run, ticket)?;
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
        let wt = self.worktree(run, ticket)?;
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
        let wt = self.worktree(run, ticket)?;
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
        let released = self.released.clone();
        let Some(slots) = self.slots.clone() else {
            let wt = self.fresh(run, ticket);
            if !wt.path.exists() {
                return Ok(());
            }
            return self
                .blocking(true, move |repo| {
                    repo.remove_worktree(&wt)?;
                    count_release(&released, repo);
                    Ok(())
                })
                .await;
        };
        let (branch, shared) = (Repo::ticket_branch(run, ticket), self.shared.clone());
        self.blocking(false, move |repo| {
            slots.unclaim(repo, &shared, &branch, true)?;
            count_release(&released, repo);
            Ok(())
        })
        .await
    }
}
