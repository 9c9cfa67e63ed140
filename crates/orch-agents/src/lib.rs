//! # orch-agents
//!
//! Agent backends for orch: command agents, Claude Code, Codex and HTTP APIs.
//!
//! Implementations of [`Agent`](orch_core::Agent) live here. This crate depends on
//! `orch-core` only, never on its sibling crates.
//!
//! Status: the contract is defined in `orch-core`; the implementations
//! are tracked in the project's open issues and are not part of this
//! release yet, so this crate exports nothing.
