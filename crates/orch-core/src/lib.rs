//! # orch-core
//!
//! The traits and plain data that every part of orch shares: tickets and
//! plans, the [`Agent`], [`Gate`] and [`StateStore`] contracts, the [`Event`]
//! stream and [`RunState`], its pure fold.
//!
//! orch-core needs no async runtime (its cancellation signal is tokio-util's,
//! which uses tokio's synchronisation types only), no graph library and no
//! database driver.
//! Backend authors depend on it alone: an agent backend implements
//! [`Agent`], a quality gate implements [`Gate`], a storage backend
//! implements [`StateStore`]. All traits are object safe and their futures
//! are `Send`, so they are used as `Arc<dyn Agent>` and friends.
//!
//! ## Loading a plan
//!
//! ```
//! let plan = orch_core::Plan::from_toml_str(r#"
//!     name = "demo"
//!     default_role = "dev"
//!     [agents.dev]
//!     backend = { kind = "claude_code", model = "sonnet" }
//!     [[phases]]
//!     name = "implement"
//!     [[tickets]]
//!     id = "T-1"
//!     title = "Add a health check"
//!     effort = "XS (30m)"
//! "#).unwrap();
//! assert_eq!(plan.tickets[0].effort.minutes(), 30);
//!
//! // Errors name the line, column, key and ticket.
//! let err = orch_core::Plan::from_toml_str(r#"
//!     name = "demo"
//!     [[tickets]]
//!     id = "T 1"
//!     title = "x"
//!     effort = "1h"
//! "#).unwrap_err();
//! assert!(err.to_string().starts_with("<plan>:4:10: tickets[0].id: invalid ticket id \"T 1\""), "{err}");
//! ```
//!
//! ## Feature flags
//!
//! * `plan-files` (default): load plans from TOML, YAML and JSON with
//!   located errors ([`Plan::from_path`]).
//! * `process` (off by default): the one process runner that gates and
//!   agents share (process groups, timeouts, stall watchdog, capped
//!   capture); it brings tokio and nix.

mod adr;
mod agent;
mod cancel;
mod error;
mod event;
mod gate;
pub mod id;
mod jobs;
mod observer;
pub mod plan;
#[cfg(feature = "process")]
pub mod process;
pub mod secrets;
mod state;
mod store;
mod time;
mod workspace;

pub use adr::{ADR_DIR, Adr};
pub use agent::{
    Agent, AgentContext, AgentError, AgentErrorKind, AgentOutcome, AgentTask, Progress,
    ProgressSink, Usage,
};
pub use cancel::{Cancellation, Cancelled};
pub use error::Error;
pub use event::{
    Acceptance, Decision, DriverInfo, Event, EventId, EventKind, FingerprintParts, GateScope,
    RunOutcome,
};
pub use gate::{
    Evidence, Gate, GateContext, GateError, GateErrorKind, GateReport, GateStatus, Hit, TestCounts,
    TestFailure,
};
pub use id::{AgentId, BatchId, IdError, IdRule, PhaseName, RoleName, RunId, TicketId};
pub use jobs::{Claim, Job, JobInfo, JobQueue, JobState, NewJob, Runs, Work};
pub use observer::Observer;
#[cfg(feature = "plan-files")]
pub use plan::load::{Diagnostic, Format, MAX_PLAN_BYTES, PlanError, PlanErrorKind};
pub use plan::{
    AgentSpec, BackendSpec, Batch, BranchName, Budget, Effort, ExhaustAction, GateSpec, PhaseSpec,
    Plan, Policy, Priority, Problem, Size, Ticket, UsageReader, UsageSpec, WorkspaceSpec,
    Worktrees, format_minutes,
};
pub use state::{
    AcceptedRisk, AgentRecord, AgentStatus, BatchState, BatchStatus, DecisionItem, GateRun, IdMap,
    RunState, RunStatus, Slip, TicketMetrics, TicketState, TicketStatus, WorkTimes,
};
pub use store::{Expect, RunLock, StateStore, StoreError, StoreErrorKind, StoredEvent};
pub use time::Timestamp;
pub use workspace::{
    Changes, Merged, PathError, Prepared, SharedDir, Workspace, WorkspaceError, WorkspaceErrorKind,
    check_relative, resolve_within,
};
