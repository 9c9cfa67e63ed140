//! # orch-graph
//!
//! A plan as a DAG, and the questions a team asks before and during a run:
//!
//! * **Validation**: unknown, duplicate and self dependencies, and every
//!   cycle as a path `A -> B -> C -> A` ([`PlanGraph::from_plan`]); batch
//!   order ([`BatchGraph::new`]).
//! * **Analysis**: waves, earliest start, slack and the critical path by
//!   effort ([`Analysis`]); simulated makespans for N agents ([`simulate`]);
//!   the batch DAG and its merged-in-order schedule; all as a [`Report`]
//!   with text, Mermaid and DOT renderings ([`analyze`]).
//! * **Scheduling**: the ready set the engine drives ([`Scheduler`]).
//! * **Running**: the [`Engine`] carries tickets through the plan's phases
//!   with agents, gates, retries, escalation, checkpoints and batch merges,
//!   journalling every step before it acts; a run resumes from its journal.
//!
//! Construction uses petgraph where it helps (naming cycles through its
//! strongly connected components; [`PlanGraph::to_petgraph`] for its
//! algorithms); analysis runs on a compact frozen adjacency (CSR), which is
//! what makes a million tickets take a fraction of a second.
//!
//! ```
//! let plan = orch_core::Plan::from_path(concat!(env!("CARGO_MANIFEST_DIR"),
//!     "/../../examples/plans/production-readiness.toml")).unwrap();
//! let report = orch_graph::analyze(&plan, 4).unwrap();
//! let path: Vec<&str> = report.critical_path.iter().map(|t| t.as_str()).collect();
//! assert_eq!(path, ["INFRA-004", "SEC-004", "QA-002"]);
//! ```

mod analysis;
mod batches;
mod engine;
mod graph;
pub mod random;
mod rankset;
mod report;
mod scheduler;
pub mod status;
mod worker;

pub use analysis::{Analysis, Schedule, simulate};
pub use batches::BatchGraph;
pub use engine::{
    AdrDraft, Engine, EngineError, GateFactory, Observer, RunReport, Worked, accept, decide,
    decide_with_adr, prompt,
};
pub use graph::{GraphError, Ix, Node, PlanGraph};
pub use report::{BatchReport, BatchRow, Makespan, Report, TicketRow, analyze};
pub use scheduler::{Counts, Scheduler, SchedulerError};
pub use worker::{Kept, keep_claim};
