//! [`GitWorkspace`]: the engine's [`Workspace`] on a git repository.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orch_core::{
    BatchId, Changes, Claim, Merged, PhaseName, Prepared, RunId, TicketId, Workspace,
    WorkspaceError, WorkspaceErrorKind, WorkspaceSpec, Worktrees,
};

use orch_core::secrets::Redactor;

use crate::git::{GitError, MergeOutcome, Repo, Shared, Worktree};

/// Each ticket on its own branch `orch/<run>/<ticket>`, started from the
/// base commit with its dependencies' branches merged in, checked out in a
/// worktree of its own while it works; checkpoints are commits; a batch is
/// the merge of its tickets' branches into the batch's branch.
///
/// Worktrees are slots by default ([`WorkspaceSpec`]): a pool under
/// `.orch/slots`, shared by the runs in the repository, each held by one
/// ticket at a time: its owner is named in `.orch/slots/<n>.owner`, and a
/// lock file, `.orch/slots/<n>.lock`, is locked while a process holds it,
/// so not even two processes share one. A ticket takes the slot it owns
/// (after a crash) or a free one (no owner), which is switched to its
/// branch and cleaned, keeping only the spec's `keep` caches; when the
/// ticket is done its slot's head is detached and its owner forgotten. With [`Worktrees::Fresh`] each
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
    /// Where each ticket prepared in this process started (by branch):
    /// the history its secret scan reads begins there, not at the run's
    /// base (its dependencies' commits were scanned when they were
    /// made, and reading them again grows with the run).
    starts: Arc<Mutex<HashMap<String, String>>>,
    /// The remote other machines of the run share commits through
    /// ([`GitWorkspace::remote`]).
    remote: Option<Arc<str>>,
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

/// The slot table of each repository (by its slots directory) in this
/// process.
fn slot_table(repo: &Repo) -> Arc<Mutex<SlotTable>> {
    static TABLES: std::sync::OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<SlotTable>>>>> =
        std::sync::OnceLock::new();
    let mut tables = lock(TABLES.get_or_init(Mutex::default));
    tables.entry(repo.slots_dir()).or_default().clone()
}

#[derive(Debug, Default)]
struct SlotTable {
    /// What this process holds, by ticket branch.
    held: HashMap<String, Held>,
}

/// The most slots a repository has (numbers at or above it are not
/// orch's).
const MAX_SLOTS: usize = 4096;

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
            starts: Arc::default(),
            remote: None,
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

    /// Shares the run's work with other machines through the repository's
    /// remote `name` (a run whose phases workers do): a ticket's start,
    /// each checkpoint and each batch merge are pushed there (under
    /// [`Repo::shared_ref`], before the engine records them), and what the
    /// journal says other machines made is fetched from there
    /// ([`Workspace::fetch`]).
    pub fn remote(mut self, name: impl Into<String>) -> Self {
        self.remote = Some(name.into().into());
        self
    }

    /// Pushes `commit` of `run`'s `ticket` to the remote, if there is one,
    /// under its [`Repo::shared_ref`]: the ticket's start, or its
    /// checkpoint after `phase`'s `attempt` (under the claim, if any).
    async fn share(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: Option<(&PhaseName, u32, Option<&Claim>)>,
        commit: &str,
    ) -> Result<(), WorkspaceError> {
        let Some(remote) = self.remote.clone() else {
            return Ok(());
        };
        let (run, ticket, commit) = (run.clone(), ticket.clone(), commit.to_owned());
        let phase = phase.map(|(p, a, c)| (p.clone(), a, c.cloned()));
        self.blocking(false, move |repo| {
            let what = match &phase {
                Some((p, a, c)) => Shared::Checkpoint(&ticket, p, *a, c.as_ref()),
                None => Shared::Start(&ticket),
            };
            repo.push_commits(&remote, &run, &[(what, &commit)])
        })
        .await
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
            let _guard = exclusive.then(|| lock(&shared));
            f(&repo)
        })
        .await
        .map_err(|e| {
            WorkspaceError::new(WorkspaceErrorKind::Tool, format!("git task failed: {e}"))
        })?
        .map_err(ws_err)
    }

    /// Prepares `ticket`'s work tree: a slot (or a fresh worktree)
    /// switched to its branch, its dependencies merged.
    async fn prepare_tree(
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
                    let branch = Repo::ticket_branch(&run, &ticket);
                    if repo.resolve(&branch).is_ok() {
                        let wt = repo.worktree(&run, &ticket, &base)?;
                        return merged_head(repo, &wt, &still_there(repo, deps));
                    }
                    // A new ticket: its start made in the object database,
                    // as for a slot (a merge in the work tree walks the
                    // whole history each time), then checked out once.
                    let start = repo.start_commit(&base, &deps, &branch)?;
                    let wt = repo.worktree(&run, &ticket, &start)?;
                    Ok(Prepared {
                        path: wt.path.into(),
                        base: Some(start),
                    })
                })
                .await;
        };
        let (fresh, shared) = (self.fresh(&run, &ticket), self.shared.clone());
        self.blocking(false, move |repo| {
            let (wt, switch) = slots.claim(repo, &shared, &fresh, &base)?;
            let ready = match switch {
                // A new ticket: its start made in the object database,
                // then checked out once.
                Some(mark) if repo.resolve(&wt.branch).is_err() => repo
                    .start_commit(&base, &deps, &wt.branch)
                    .and_then(|start| {
                        repo.switch_slot(&wt, Some(&start), &slots.keep, &mark)?;
                        Ok(Prepared {
                            path: wt.path.clone().into(),
                            base: Some(start),
                        })
                    }),
                Some(mark) => repo
                    .switch_slot(&wt, None, &slots.keep, &mark)
                    .and_then(|()| merged_head(repo, &wt, &still_there(repo, deps))),
                None => repo
                    .recover_worktree(&wt)
                    .and_then(|_| merged_head(repo, &wt, &still_there(repo, deps))),
            };
            if ready.is_err() {
                // Not held by this process (the slot stays the ticket's:
                // a later attempt switches it again).
                let _ = slots.unclaim(repo, &shared, &wt.branch, false);
            }
            ready
        })
        .await
    }

    /// The branch `batch` is merged into.
    fn batch_branch(&self, run: &RunId, batch: &BatchId) -> String {
        self.batch_branches
            .get(batch)
            .cloned()
            .unwrap_or_else(|| format!("orch/{run}/batch-{batch}"))
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
        let table = lock(&slots.table);
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

/// `m`, locked: a panic while another holder had it leaves nothing half
/// done in what these mutexes guard (a table of who holds what, or
/// nothing).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// the slot it owns (after a crash), a free slot, or a new slot;
    /// returns it and, when it must be switched to the branch, the file
    /// that marks the switch.
    ///
    /// A slot's owner is the branch in `.orch/slots/<n>.owner`, written
    /// (while its lock is held) before the slot is switched and removed
    /// after its head is detached on release: not what the slot has
    /// checked out, which its agent can change.
    fn claim(
        &self,
        repo: &Repo,
        shared: &Mutex<()>,
        fresh: &Worktree,
        base: &str,
    ) -> Result<(Worktree, Option<PathBuf>), GitError> {
        let branch = &fresh.branch;
        let mut t = lock(&self.table);
        let found = |path: &Path| Worktree {
            path: path.to_path_buf(),
            branch: branch.clone(),
        };
        if let Some(h) = t.held.get(branch) {
            return Ok((found(&h.path), None));
        }
        if repo.usable(&fresh.path, branch)? {
            t.held.insert(
                branch.clone(),
                Held {
                    path: fresh.path.clone(),
                    slot: None,
                },
            );
            return Ok((fresh.clone(), None));
        }
        let dir = repo.slots_dir();
        let held: Vec<usize> = t
            .held
            .values()
            .filter_map(|h| Some(h.slot.as_ref()?.0))
            .collect();
        let existing = slot_numbers(&dir);
        // The slot it owns first (after a crash), then free ones, then new
        // numbers.
        let (own, free): (Vec<(usize, bool)>, Vec<_>) = existing
            .iter()
            .filter(|n| !held.contains(n))
            .filter_map(|&n| match owner(&dir, n) {
                Some(o) if &o == branch => Some((n, true)),
                Some(_) => None,
                None => Some((n, false)),
            })
            .partition(|(_, mine)| *mine);
        let new = (0..MAX_SLOTS).filter(|n| !existing.contains(n));
        let order = own.into_iter().chain(free).map(|(n, _)| n).chain(new);
        for n in order {
            let Some(slot_lock) = lock_slot(&dir, n)? else {
                continue; // another process holds it
            };
            // Read again under the lock: another process may have taken
            // it since.
            let mine = match owner(&dir, n) {
                Some(o) if &o == branch => true,
                Some(_) => continue,
                None => false,
            };
            let path = dir.join(n.to_string());
            let made = {
                let _guard = lock(shared);
                repo.make_slot(&path, base)
            };
            if let Err(e) = made {
                tracing::warn!(slot = n, error = %e, "a slot that cannot be used is passed over");
                continue;
            }
            // Marked as switching before it is recorded as the ticket's:
            // a crash in between (while the ticket's start is made) leaves
            // a slot that is switched again, not one taken for switched.
            let mark = switching(&dir, n);
            if !mine {
                crate::views::write_atomic(&mark, b"").map_err(|e| GitError {
                    kind: WorkspaceErrorKind::Io,
                    command: "mark the slot switch".into(),
                    message: format!("{}: {e}", mark.display()),
                })?;
            }
            set_owner(&dir, n, branch)?;
            // Its own slot needs no switch only when it was switched whole
            // and its branch exists (a slot recorded as the ticket's by an
            // earlier orch that died before the branch was made has none).
            let switch = !mine || mark.exists() || repo.resolve(branch).is_err();
            // Its own slot, switched whole: what is in it is the ticket's
            // work (an escalated ticket's, for a person to approve), even
            // if its agent moved the head; the head goes back to the
            // branch, the files stay.
            if !switch && repo.slot_head(&path).ok().flatten().as_ref() != Some(branch) {
                repo.attach_head(&path, branch)?;
            }
            t.held.insert(
                branch.clone(),
                Held {
                    path: path.clone(),
                    slot: Some((n, slot_lock)),
                },
            );
            return Ok((found(&path), switch.then_some(mark)));
        }
        Err(GitError {
            kind: WorkspaceErrorKind::Refused,
            command: "take a slot".into(),
            message: format!("all {MAX_SLOTS} slots under {} are held", dir.display()),
        })
    }

    /// Gives up `branch`'s work tree: when its ticket is done (`free`),
    /// a slot's head is detached and its owner forgotten (a fresh worktree
    /// is removed); after a failed switch the slot stays the ticket's.
    fn unclaim(
        &self,
        repo: &Repo,
        shared: &Mutex<()>,
        branch: &str,
        free: bool,
    ) -> Result<(), GitError> {
        let mut t = lock(&self.table);
        let Some(h) = t.held.remove(branch) else {
            return Ok(());
        };
        match h.slot {
            Some((n, _lock)) if free => {
                // Detached, its branch may be checked out elsewhere (or
                // deleted when the run finishes); a switch sets the head
                // anyway, so a slot that cannot be detached is still free.
                if let Err(e) = repo.free_slot(&h.path) {
                    tracing::warn!(slot = n, error = %e, "could not detach the slot's head");
                }
                let _ = std::fs::remove_file(owner_file(&repo.slots_dir(), n));
                Ok(())
            }
            Some(_) => Ok(()),
            None if free => {
                let _guard = lock(shared);
                repo.remove_worktree(&Worktree {
                    path: h.path,
                    branch: branch.to_owned(),
                })
            }
            None => Ok(()),
        }
    }
}

/// The numbers of the slots under `dir`, ascending.
fn slot_numbers(dir: &Path) -> Vec<usize> {
    let mut numbers: Vec<usize> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|n| *n < MAX_SLOTS)
        .collect();
    numbers.sort_unstable();
    numbers
}

fn owner_file(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{n}.owner"))
}

/// The mark of a switch in progress: a slot found with it was cut short
/// by a crash and is switched again.
fn switching(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{n}.switching"))
}

/// The branch that owns slot `n`, if any.
fn owner(dir: &Path, n: usize) -> Option<String> {
    let text = std::fs::read_to_string(owner_file(dir, n)).ok()?;
    Some(text.trim().to_owned()).filter(|b| !b.is_empty())
}

/// Records `branch` as slot `n`'s owner (written whole, then renamed).
fn set_owner(dir: &Path, n: usize, branch: &str) -> Result<(), GitError> {
    let file = owner_file(dir, n);
    crate::views::write_atomic(&file, branch.as_bytes()).map_err(|e| GitError {
        kind: WorkspaceErrorKind::Io,
        command: "record the slot's owner".into(),
        message: format!("{}: {e}", file.display()),
    })
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
    // Not through a link (to a FIFO, say, whose open would block).
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        return Err(GitError {
            kind: WorkspaceErrorKind::Refused,
            command: "lock the slot".into(),
            message: format!("{} is not a regular file", path.display()),
        });
    }
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

/// The branches of `deps` that still exist, for a ticket found again:
/// its start merged them all, and a dependency's branch is dropped once
/// its batch merged and every ticket depending on it has started
/// (`Workspace::finish`), so one that is gone is in the ticket already.
fn still_there(repo: &Repo, deps: Vec<String>) -> Vec<String> {
    deps.into_iter()
        .filter(|d| repo.resolve(d).is_ok())
        .collect()
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
        let prepared = self.prepare_tree(run, ticket, deps).await?;
        if let Some(start) = &prepared.base {
            // Another machine may take the ticket up from its start.
            self.share(run, ticket, None, start).await?;
            let mut starts = lock(&self.starts);
            starts.insert(Repo::ticket_branch(run, ticket), start.clone());
        }
        Ok(prepared)
    }

    async fn checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &PhaseName,
        attempt: u32,
        records: &[String],
        claim: Option<&Claim>,
    ) -> Result<Option<String>, WorkspaceError> {
        let wt = self.worktree(run, ticket)?;
        let records = records.to_vec();
        // The key, recorded in the commit, is what recognises a repeat.
        let key = checkpoint_key(run, ticket, phase, attempt);
        let message = format!("{ticket}: {phase} passed (attempt {attempt})");
        let redactor = self.redactor.clone();
        // The last guard (the engine asked `secrets` after the gates):
        // nothing with a secret is added, so no object holds one.
        let commit = self
            .blocking(false, move |repo| {
                repo.checkpoint_without_secrets(&wt, &key, &message, &redactor, &records)
            })
            .await?;
        // On the remote before the journal records it.
        self.share(run, ticket, Some((phase, attempt, claim)), &commit)
            .await?;
        Ok(Some(commit))
    }

    async fn fetch(&self, run: &RunId, at: &[(TicketId, String)]) -> Result<(), WorkspaceError> {
        let Some(remote) = self.remote.clone() else {
            return Ok(());
        };
        let (run, at) = (run.clone(), at.to_vec());
        self.blocking(true, move |repo| repo.fetch_at(&remote, &run, &at))
            .await
    }

    async fn secrets(&self, run: &RunId, ticket: &TicketId) -> Result<Vec<String>, WorkspaceError> {
        let wt = self.worktree(run, ticket)?;
        let since = {
            let starts = lock(&self.starts);
            starts.get(&wt.branch).cloned()
        };
        let since = since.unwrap_or_else(|| self.base.clone());
        let redactor = self.redactor.clone();
        self.blocking(false, move |repo| repo.secrets(&wt, &since, &redactor))
            .await
    }

    async fn find_checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &PhaseName,
        attempt: u32,
        claim: Option<&Claim>,
    ) -> Result<Option<String>, WorkspaceError> {
        let wt = self.worktree(run, ticket)?;
        let key = checkpoint_key(run, ticket, phase, attempt);
        let found = self
            .blocking(false, move |repo| repo.find_checkpoint(&wt, &key))
            .await?;
        // Made just before a crash, maybe not pushed: on the remote
        // before the engine records it.
        if let Some(c) = &found {
            self.share(run, ticket, Some((phase, attempt, claim)), c)
                .await?;
        }
        Ok(found)
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
        claim: Option<&Claim>,
    ) -> Result<Merged, WorkspaceError> {
        let branch = self.batch_branch(run, batch);
        let branches: Vec<String> = tickets
            .iter()
            .map(|t| Repo::ticket_branch(run, t))
            .collect();
        let (run, batch, base) = (run.clone(), batch.clone(), self.base.clone());
        let redactor = self.redactor.clone();
        let (remote, claim) = (self.remote.clone(), claim.cloned());
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
            // On a machine of many, a merge starts from the merges the
            // journal recorded (the remote's branch), not from one of this
            // machine's that was never recorded.
            let start = match &remote {
                Some(remote) => Some(repo.batch_start(remote, &branch, &base)?),
                None => None,
            };
            let start = start.as_deref();
            Ok(
                match repo.merge_batch(&run, &batch, &branch, &base, &branches, start)? {
                    MergeOutcome::Merged { commit } => {
                        // Shared before the journal records it; the
                        // branch names it once recorded (`publish`).
                        if let Some(remote) = &remote {
                            let what = Shared::Merge(&batch, claim.as_ref());
                            repo.push_commits(remote, &run, &[(what, &commit)])?;
                        }
                        Merged::Clean {
                            commit: Some(commit),
                            path: repo.batch_worktree(&run, &batch).into(),
                        }
                    }
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

    fn base(&self) -> Option<String> {
        Some(self.base.clone())
    }

    async fn publish(
        &self,
        run: &RunId,
        batch: &BatchId,
        commit: &str,
    ) -> Result<(), WorkspaceError> {
        let branch = self.batch_branch(run, batch);
        let (run, batch, commit) = (run.clone(), batch.clone(), commit.to_owned());
        let remote = self.remote.clone();
        self.blocking(true, move |repo| {
            let merged_in = repo.batch_worktree(&run, &batch);
            repo.publish(
                remote.as_deref(),
                &run,
                &batch,
                &branch,
                &merged_in,
                &commit,
            )
        })
        .await
    }

    /// Deletes the branches of `merged`'s tickets that their batch's
    /// branch holds (git checks each), so neither a long run nor a
    /// repository that runs plan after plan gathers a branch per ticket; a
    /// ticket in no batch keeps its branch, its work's only name.
    async fn finish(
        &self,
        run: &RunId,
        merged: &[(BatchId, Vec<TicketId>)],
    ) -> Result<(), WorkspaceError> {
        let batches: Vec<(String, Vec<String>)> = merged
            .iter()
            .map(|(b, tickets)| {
                let ids = tickets
                    .iter()
                    .map(|t| Repo::ticket_branch(run, t))
                    .collect();
                (self.batch_branch(run, b), ids)
            })
            .collect();
        self.blocking(true, move |repo| {
            for (batch, tickets) in batches {
                repo.delete_merged_branches(&batch, &tickets)?;
            }
            Ok(())
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
