//! The [`Workspace`] contract: where a ticket's work happens, its
//! checkpoints and rollbacks, and the merge of a batch.
//!
//! orch-state implements it with git (a worktree and branch per ticket);
//! [`SharedDir`] is the trivial implementation for agents that need no
//! isolation (and for benchmarks).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{BatchId, PhaseName, RunId, TicketId};

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

/// A workspace operation failed (git missing, disk full, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace: {message}")]
pub struct WorkspaceError {
    /// What failed, naming the command or path.
    pub message: String,
}

impl WorkspaceError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        WorkspaceError {
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
///     assert_eq!(ws.checkpoint(&run, &t, &plan, 1).await.unwrap(), None);
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
    /// workspace keeps no history). Called again for the same run, ticket,
    /// phase and attempt (the engine resuming after a crash), it returns
    /// the checkpoint made the first time instead of making another.
    async fn checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &PhaseName,
        attempt: u32,
    ) -> Result<Option<String>, WorkspaceError>;

    /// The checkpoint of `phase` passing on `attempt`, if
    /// [`Workspace::checkpoint`] made it: the engine asks before it rolls
    /// back a ticket that a crash interrupted, since the checkpoint may be
    /// made and the pass not yet recorded. `None` when there is none (the
    /// default, for workspaces that keep no history).
    ///
    /// # Errors
    /// When the workspace cannot be read.
    async fn find_checkpoint(
        &self,
        run: &RunId,
        ticket: &TicketId,
        phase: &PhaseName,
        attempt: u32,
    ) -> Result<Option<String>, WorkspaceError> {
        let _ = (run, ticket, phase, attempt);
        Ok(None)
    }

    /// Resets the work tree to `commit`, dropping changes made since.
    async fn rollback(
        &self,
        run: &RunId,
        ticket: &TicketId,
        commit: &str,
    ) -> Result<(), WorkspaceError>;

    /// Merges the work of `tickets` for `batch`.
    async fn merge(
        &self,
        run: &RunId,
        batch: &BatchId,
        tickets: &[TicketId],
    ) -> Result<Merged, WorkspaceError>;

    /// The ticket is finished; its work tree may go (its history stays).
    async fn release(&self, run: &RunId, ticket: &TicketId) -> Result<(), WorkspaceError>;
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
