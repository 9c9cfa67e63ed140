//! # orch-state
//!
//! Where a run lives, so it survives a crash and a person can read where it
//! stands:
//!
//! * [`StateStore`](orch_core::StateStore) backends: [`SqliteStore`] (the
//!   embedded default: WAL, fsync per commit, group commit of concurrent
//!   appends, versioned schema), `PgStore` (PostgreSQL, feature `postgres`,
//!   on by default: one journal that processes on many machines append to
//!   and read) and [`MemoryStore`]; all pass the shared [`conformance`]
//!   suite.
//! * [`views`]: `ORCHESTRATOR_STATE.md`, `AGENT_REGISTRY.md`,
//!   `TEST_RESULTS.md`, `DECISION_QUEUE.md` and one JSON file per ticket,
//!   rendered from the folded state and written atomically.
//! * [`git`]: a worktree per ticket, checkpoint commits as rollback points,
//!   batch merges that report conflicts as a result; [`GitWorkspace`] is
//!   the engine's [`Workspace`](orch_core::Workspace) on top of it.

mod codec;
pub mod conformance;
pub mod git;
mod memory;
#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
mod state_files;
pub mod views;
mod workspace;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PG_SCHEMA_VERSION, PgStore};
pub use sqlite::{SCHEMA_VERSION, SqliteStore, Stats, fsync_latency};
pub use state_files::StateFiles;
pub use workspace::GitWorkspace;
