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
//! * [`StateFiles`]: the observer that keeps the state files up to date
//!   while a run goes.
//!
//! # Running a plan from your own program
//!
//! What `orch run` assembles, from the published crates: orch-graph's
//! engine, orch-agents' backends (a [`Router`](https://docs.rs/orch-agents)
//! over the plan's roles), orch-gates' gates, and this crate's store, git
//! work trees and state files.
//!
//! ```
//! # use std::collections::HashMap;
//! # use std::sync::Arc;
//! # use orch_agents::{AgentDefaults, Router};
//! # use orch_core::{Cancellation, Plan, RunOutcome};
//! # use orch_state::{GitWorkspace, SqliteStore, StateFiles, git::Repo};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let (repo_dir, state_dir) = (tmp.path().join("repo"), tmp.path().join("state"));
//! # std::fs::create_dir_all(&repo_dir)?;
//! # for args in [&["init", "-q", "-b", "main"][..], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start"]] {
//! #     assert!(std::process::Command::new("git").args(args).current_dir(&repo_dir).status()?.success());
//! # }
//! # std::fs::write(repo_dir.join("plan.toml"), r#"
//! #     name = "hello"
//! #     default_role = "dev"
//! #     agents.dev.backend = { kind = "command", argv = ["sh", "-c", "echo hello from $ORCH_TICKET > hello.txt"] }
//! #     phases = [{ name = "write", gates = [{ kind = "files", paths = ["hello.txt"] }] }]
//! #     tickets = [{ id = "T-1", title = "Say hello", effort = "5m" }]
//! # "#)?;
//! # std::fs::create_dir_all(&state_dir)?;
//! let plan = Plan::from_path(repo_dir.join("plan.toml"))?;
//! let agent = Arc::new(Router::from_plan(&plan, &AgentDefaults::default(), &HashMap::new())?);
//! let store = Arc::new(SqliteStore::open(state_dir.join("orch.db"))?);
//! let engine = orch_graph::Engine::new(plan.clone(), agent, store)? // refuses cycles and bad plans
//!     .workspace(Arc::new(GitWorkspace::new(Repo::open(&repo_dir)?, "HEAD")?))
//!     .gates(Arc::new(orch_gates::from_spec))
//!     .observe(Arc::new(StateFiles::new(&state_dir, &plan)));
//! let report = engine.run(&"my-run".parse()?, Cancellation::new()).await?;
//! assert_eq!(report.outcome, RunOutcome::Completed);
//! assert!(std::fs::read_to_string(state_dir.join("ORCHESTRATOR_STATE.md"))?.contains("T-1"));
//! # Ok(())
//! # }
//! ```

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
pub use postgres::{Fence, PG_SCHEMA_VERSION, PgStore, Written};
pub use sqlite::{SCHEMA_VERSION, SqliteStore, Stats, fsync_latency};
pub use state_files::StateFiles;
pub use workspace::GitWorkspace;
