//! # orch-gates
//!
//! Quality gates for orch: commands, test results, coverage, forbidden patterns, files, metrics.
//!
//! Implementations of [`Gate`](orch_core::Gate) live here. This crate depends on
//! `orch-core` only, never on its sibling crates.
//!
//! Status: the contract is defined in `orch-core`; the implementations
//! are tracked in the project's open issues and are not part of this
//! release yet, so this crate exports nothing.
