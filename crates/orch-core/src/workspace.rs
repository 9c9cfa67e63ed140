//! The [`Workspace`] contract: where a ticket's work happens, its
//! checkpoints and rollbacks, and the merge of a batch.
//!
//! orch-state implements it with git (a worktree and branch per ticket);
//! [`SharedDir`] is the trivial implementation for agents that need no
//! isolation (and for benchmarks).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::{BatchId, Claim, PhaseName, RunId, TicketId};

/// A ticket's prepared work tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Where the agent and the gates work (handed to each attempt's agent
    /// and gates, which share it).
    pub path: Arc<Path>,
    /// The commit the work tree started from (after merging the ticket's
    /// dependencies), the rollback point before any phase passed. `None`
    /// when the workspace keeps no history.
    pub base: Option<String>,
}

/// The result of merging a batch's tickets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// Every ticket merged; the batch gates run in `path`, at `commit`.
    Clean {
        /// The merge result (`None` when the workspace keeps no history).
        commit: Option<String>,
        /// Where the merged tree is checked out.
        path: Arc<Path>,
    },
    /// `ticket`'s work conflicts in `files`; nothing was lost.
    Conflict {
        /// The ticket whose branch could not be merged.
        ticket: TicketId,
        /// The conflicting files.
        files: Vec<String>,
    },
}

/// Files of a work tree that differ from a commit, and how
/// ([`Workspace::changed_since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// Changed, added or removed files, relative to the work tree.
    pub files: Vec<String>,
    /// The differences, as a unified diff (capped).
    pub diff: String,
}

impl Changes {
    /// Changes of `files`, with `diff`.
    pub fn new(files: Vec<String>, diff: String) -> Changes {
        Changes { files, diff }
    }
}

/// A workspace operation failed (git missing, disk full, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace: {message}")]
#[non_exhaustive]
pub struct WorkspaceError {
    /// What kind of failure.
    pub kind: WorkspaceErrorKind,
    /// What failed, naming the command or path.
    pub message: String,
}

/// What kind of failure a [`WorkspaceError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkspaceErrorKind {
    /// The tool behind the workspace (git) could not run, or failed.
    Tool,
    /// Reading or writing a file or directory failed.
    Io,
    /// Branches could not be merged without conflicts.
    Conflict,
    /// Refused: the commit or merge would store a secret.
    Secrets,
    /// Refused: the settings (a pattern, a branch) or the state found (a
    /// work tree orch did not make) do not allow it.
    Refused,
}

impl WorkspaceError {
    /// An error of `kind` with this message.
    pub fn new(kind: WorkspaceErrorKind, message: impl Into<String>) -> Self {
        WorkspaceError {
            kind,
            message: message.into(),
        }
    }
}

/// Isolation and history for tickets.
///
/// # Contract
///
/// Every operation is **idempotent**, because after a crash the engine
/// repeats the step it was in: preparing a ticket that already has a work
/// tree returns it; a checkpoint whose `key` is already the head returns
/// that commit; merging a batch whose tickets are already merged merges
/// nothing again.
///
/// # Errors
///
/// [`WorkspaceError`] when the underlying tool fails; the engine treats it
/// as fatal for the ticket (not for the run).
///
/// # Example
///
/// ```
/// use orch_core::{SharedDir, Workspace};
/// let ws = SharedDir::new(std::env::temp_dir());
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(async {
///     let run = "r1".parse().unwrap();
///     let t = "T-1".parse().unwrap();
///     let p = ws.prepare(&run, &t, &[]).await.unwrap();
///     assert_eq!(&*p.path, std::env::temp_dir());
///     let plan = "plan".parse().unwrap();
///     assert_eq!(ws.checkpoint(&run, &t, &plan, 1, &[], None).await.unwrap(), None);
/// });
/// ```
#[async_trait]
pub trait Workspace: Send + Sync {
    /// Creates (or finds again) the work tree of `ticket`, starting from
    /// the base with the work of `deps` (finished tickets it depends on)
    /// merged in.
    async fn prepare(
        &self,
        run: &RunId,
        ticket: &TicketId,
        deps: &[TicketId],
    ) -> Result<Prepared, WorkspaceError>;

    /// Records the work tree's content as the checkpoint of `phase`
    /// passing on `attempt` and returns its commit (`None` when the
    /// workspace keeps no history). `records` (paths relative to the work
    /// tree: the ticket's decision records, which orch wrote) must be in
    /// it even where the repository's ignore rules would leave them out;
    /// one that is not is an error. Called again for the same run, ticket,
    /// phase and attempt (the engine resuming after a crash), it returns
    /// the checkpoint made the first time instead of making another.
    /// `claim` is the worker's claim on the job the attempt is done under
    /// (a run whose phases workers do; `None` for a run's own driver): a
    /// workspace that shares its checkpoints with other machines names it
    /// where it shares them, so that what a worker whose claim was lost
    /// pushed is told apart from what the journal recorded.
    async fn checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &PhaseName,
        attempt: u32,
        records: &[String],
        claim: Option<&Claim>,
    ) -> Result<Option<String>, WorkspaceError>;

    /// The checkpoint of `phase` passing on `attempt`, if
    /// [`Workspace::checkpoint`] made it: the engine asks before it rolls
    /// back a ticket that a crash interrupted, since the checkpoint may be
    /// made and the pass not yet recorded. `None` when there is none (the
    /// default, for workspaces that keep no history). A checkpoint found
    /// is shared, where the workspace shares them, under `claim` (as for
    /// [`Workspace::checkpoint`]): the claim that will record it.
    ///
    /// # Errors
    /// When the workspace cannot be read.
    async fn find_checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &PhaseName,
        attempt: u32,
        claim: Option<&Claim>,
    ) -> Result<Option<String>, WorkspaceError> {
        let _ = (run, ticket, phase, attempt, claim);
        Ok(None)
    }

    /// Resets the work tree to `commit`, dropping changes made since.
    async fn rollback(
        &self,
        run: &RunId,
        ticket: &TicketId,
        commit: &str,
    ) -> Result<(), WorkspaceError>;

    /// What differs in `ticket`'s work tree from `commit` under `paths`
    /// (globs relative to the work tree): changed, added and removed
    /// files, and the diff, for frozen paths (`PhaseSpec::freeze`). The
    /// default (a workspace without history) sees no change.
    ///
    /// # Errors
    /// When the work tree cannot be compared.
    async fn changed_since(
        &self,
        run: &RunId,
        ticket: &TicketId,
        commit: &str,
        paths: &[String],
    ) -> Result<Changes, WorkspaceError> {
        let _ = (run, ticket, commit, paths);
        Ok(Changes::default())
    }

    /// Where what `ticket`'s checkpoint would commit holds a secret (see
    /// [`crate::secrets`]): its changed and new files, and what its
    /// branch's commits added since the ticket began. Each finding names
    /// the place and the kind of secret, never the secret. The engine runs
    /// it after an attempt's gates pass and fails the attempt on a finding,
    /// before anything is committed. The default (a workspace without
    /// history, which commits nothing) finds nothing.
    ///
    /// # Errors
    /// When the work tree cannot be read.
    async fn secrets(&self, run: &RunId, ticket: &TicketId) -> Result<Vec<String>, WorkspaceError> {
        let _ = (run, ticket);
        Ok(Vec::new())
    }

    /// Makes each ticket's work (`at`: ticket and commit, as the journal
    /// has them) the ticket's here, fetching what other machines made (a
    /// run whose phases workers do): the ticket's branch is set to its
    /// commit, and a work tree that has it checked out is reset to it.
    /// The engine calls it before a ticket's work tree is prepared (for
    /// the ticket and its dependencies) and before a batch merges. The
    /// default (one machine) has everything already.
    ///
    /// # Errors
    /// When a commit cannot be fetched or a branch set.
    async fn fetch(&self, run: &RunId, at: &[(TicketId, String)]) -> Result<(), WorkspaceError> {
        let _ = (run, at);
        Ok(())
    }

    /// The commit tickets start from (before their dependencies are
    /// merged in), when the workspace keeps history. A run records its
    /// driver's, and a worker whose own differs refuses the run's jobs:
    /// machines at different commits would build on different code. The
    /// default: `None` (no history).
    fn base(&self) -> Option<String> {
        None
    }

    /// Merges the work of `tickets` for `batch`. `claim`: the worker's
    /// claim on the merge's job, as for [`Workspace::checkpoint`].
    async fn merge(
        &self,
        run: &RunId,
        batch: &BatchId,
        tickets: &[TicketId],
        claim: Option<&Claim>,
    ) -> Result<Merged, WorkspaceError>;

    /// Moves `batch`'s branch forward to `commit`, the merge the journal
    /// recorded for it, here and (a run whose merges workers do) on the
    /// shared remote. [`Workspace::merge`] shares its commit but leaves
    /// the shared branch alone: the merge may be done on a worker whose
    /// claim is already lost, and only a recorded merge may name the
    /// batch. The engine calls it once the merge is recorded, and again on
    /// resume: a branch that already holds the commit stays, and none is
    /// ever rewound. The default (a workspace whose merge is the branch)
    /// does nothing.
    ///
    /// # Errors
    /// When the commit cannot be fetched or the branch set (a work tree
    /// orch did not make has it checked out, say).
    async fn publish(
        &self,
        run: &RunId,
        batch: &BatchId,
        commit: &str,
    ) -> Result<(), WorkspaceError> {
        let _ = (run, batch, commit);
        Ok(())
    }

    /// The ticket is finished; its work tree may go (its history stays).
    async fn release(&self, run: &RunId, ticket: &TicketId) -> Result<(), WorkspaceError>;

    /// Every batch in `merged` is merged with its tickets listed, and no
    /// ticket still to start needs those tickets' work by name (the engine
    /// calls it as each batch merges, for the tickets whose dependents have
    /// all started, and when the run completes, for the rest): what kept
    /// their work apart (a branch each) may go; their history stays in the
    /// batch's. A ticket found again later (a resumed run) must not need
    /// them either. The default keeps everything.
    ///
    /// # Errors
    /// When the workspace cannot be changed; the run's outcome stands.
    async fn finish(
        &self,
        run: &RunId,
        merged: &[(BatchId, Vec<TicketId>)],
    ) -> Result<(), WorkspaceError> {
        let _ = (run, merged);
        Ok(())
    }
}

/// Every ticket works in the same directory, with no history: checkpoints
/// and rollbacks do nothing, merges are trivially clean.
#[derive(Debug, Clone)]
pub struct SharedDir {
    path: Arc<Path>,
}

impl SharedDir {
    /// All work happens in `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        SharedDir {
            path: Arc::from(path.as_ref()),
        }
    }
}

#[async_trait]
impl Workspace for SharedDir {
    async fn prepare(
        &self,
        _: &RunId,
        _: &TicketId,
        _: &[TicketId],
    ) -> Result<Prepared, WorkspaceError> {
        Ok(Prepared {
            path: self.path.clone(),
            base: None,
        })
    }
    async fn checkpoint(
        &self,
        _: &RunId,
        _: &TicketId,
        _: &PhaseName,
        _: u32,
        _: &[String],
        _: Option<&Claim>,
    ) -> Result<Option<String>, WorkspaceError> {
        Ok(None)
    }
    async fn rollback(&self, _: &RunId, _: &TicketId, _: &str) -> Result<(), WorkspaceError> {
        Ok(())
    }
    async fn merge(
        &self,
        _: &RunId,
        _: &BatchId,
        _: &[TicketId],
        _: Option<&Claim>,
    ) -> Result<Merged, WorkspaceError> {
        Ok(Merged::Clean {
            commit: None,
            path: self.path.clone(),
        })
    }
    async fn release(&self, _: &RunId, _: &TicketId) -> Result<(), WorkspaceError> {
        Ok(())
    }
}

/// Why a path a plan or an agent names is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// An absolute path: only paths inside the work tree are taken.
    #[error("path {0:?} must be relative to the work tree")]
    Absolute(String),
    /// `..` that climbs out of the work tree.
    #[error("path {0:?} leaves the work tree")]
    Leaves(String),
    /// It leads outside the work tree through a symbolic link.
    #[error("path {path:?} leads outside the work tree through a symbolic link (to {target})")]
    Symlink {
        /// The path as given.
        path: String,
        /// Where it really leads.
        target: String,
    },
}

/// Checks `rel` without looking at the disk: relative, and no `..` that
/// climbs out. For checking a plan before anything exists.
///
/// # Errors
/// [`PathError::Absolute`] or [`PathError::Leaves`].
pub fn check_relative(rel: &str) -> Result<(), PathError> {
    let mut depth = 0i32;
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(rel.to_owned()));
            }
        }
        if depth < 0 {
            return Err(PathError::Leaves(rel.to_owned()));
        }
    }
    Ok(())
}

/// `rel` resolved inside the work tree `root`, symbolic links followed: a
/// path that a plan names (a gate's report, its working directory, a
/// feedback file) or that an agent could have replaced by a link must
/// lead to something inside the work tree. The part of the path that
/// exists is resolved; what does not exist yet cannot be a link. Returns
/// `root` joined with `rel` (not the resolved path, so that messages show
/// what the plan said).
///
/// ```
/// use orch_core::{PathError, resolve_within};
/// let root = std::env::temp_dir().join(format!("orch-doc-{}", std::process::id()));
/// std::fs::create_dir_all(root.join("reports")).unwrap();
/// assert_eq!(resolve_within(&root, "reports/junit.xml").unwrap(), root.join("reports/junit.xml"));
/// assert!(matches!(resolve_within(&root, "../x"), Err(PathError::Leaves(_))));
/// std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
/// assert!(matches!(resolve_within(&root, "out/passwd"), Err(PathError::Symlink { .. })));
/// // A link to a file that does not exist yet, outside: refused too.
/// std::os::unix::fs::symlink("/tmp/orch-doc-nowhere/x", root.join("report.xml")).unwrap();
/// assert!(matches!(resolve_within(&root, "report.xml"), Err(PathError::Symlink { .. })));
/// # std::fs::remove_dir_all(&root).unwrap();
/// ```
///
/// # Errors
/// [`PathError`] saying how it would leave.
pub fn resolve_within(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    check_relative(rel)?;
    let joined = root.join(rel);
    let Ok(real_root) = root.canonicalize() else {
        // No work tree yet: nothing in it can be a link.
        return Ok(joined);
    };
    // The deepest part of the path that exists, resolved.
    let mut probe = joined.as_path();
    let real = loop {
        match probe.canonicalize() {
            Ok(real) => break real,
            // A link to nowhere: writing through it would create its
            // target, wherever that is.
            Err(_) if probe.symlink_metadata().is_ok_and(|m| m.is_symlink()) => {
                return Err(PathError::Symlink {
                    path: rel.to_owned(),
                    target: std::fs::read_link(probe)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default(),
                });
            }
            Err(_) => match probe.parent() {
                Some(parent) => probe = parent,
                None => return Ok(joined),
            },
        }
    };
    if real.starts_with(&real_root) {
        Ok(joined)
    } else {
        Err(PathError::Symlink {
            path: rel.to_owned(),
            target: real.display().to_string(),
        })
    }
}
