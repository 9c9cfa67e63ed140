//! # orch-agents
//!
//! [`Agent`](orch_core::Agent) backends and what they share.
//!
//! This release has the parts every CLI backend builds on, and the agent
//! the tests and examples use:
//!
//! * [`stream`]: parsers for Claude Code's `stream-json` and Codex's
//!   `exec --json` event streams, turning each line into progress and the
//!   end of the stream into an outcome or a classified error;
//! * [`ScriptedAgent`]: canned behaviour per (ticket, phase, attempt) that
//!   really writes files.
//!
//! The process-driving backends (command, Claude Code, Codex), the HTTP
//! backends, and the resilience layer (retry, circuit breaker, admission
//! control, routing, accounting) are still to come; see the open issue.

mod scripted;
pub mod stream;

pub use scripted::{ScriptedAgent, Step, TaskFn};
