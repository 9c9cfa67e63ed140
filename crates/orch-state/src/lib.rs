//! # orch-state
//!
//! Durable run state for orch: SQLite, in-memory and PostgreSQL stores, state files, git checkpoints.
//!
//! Implementations of [`StateStore`](orch_core::StateStore) live here. This crate depends on
//! `orch-core` only, never on its sibling crates.
//!
//! Status: the contract is defined in `orch-core`; the implementations
//! are tracked in the project's open issues and are not part of this
//! release yet, so this crate exports nothing.
