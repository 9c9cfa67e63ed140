//! The one error type of orch-core, wrapping the errors of each contract.

use crate::{AgentError, GateError, IdError, StoreError};

/// Any error orch-core's contracts can produce. Each variant says whether a
/// retry can help through [`Error::is_retryable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A plan could not be loaded or is invalid.
    #[cfg(feature = "plan-files")]
    #[error(transparent)]
    Plan(#[from] crate::plan::load::PlanError),
    /// A plan is invalid (without file locations).
    #[error("invalid plan: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<crate::Problem>),
    /// An identifier failed validation.
    #[error(transparent)]
    Id(#[from] IdError),
    /// An agent could not run to the end.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A gate could not be evaluated.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Agent(e) => e.is_retryable(),
            Error::Gate(e) => e.is_retryable(),
            Error::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}
