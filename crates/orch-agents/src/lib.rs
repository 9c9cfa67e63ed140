//! # orch-agents
//!
//! [`Agent`](orch_core::Agent) backends and what they share.
//!
//! * [`CommandAgent`], [`ClaudeCodeAgent`], [`CodexAgent`]: agents that run
//!   a program in its own process group, with a time limit, cancellation
//!   and a stall watchdog that kill the group, bounded memory, and a
//!   redacted transcript ([`from_spec`] builds them from a plan);
//! * [`stream`]: parsers for Claude Code's `stream-json` and Codex's
//!   `exec --json` event streams, turning each line into progress and the
//!   end of the stream into an outcome or a classified error;
//! * [`Redactor`]: secrets out of transcripts and progress;
//! * [`Backend`] and [`Router`]: retry with backoff honouring
//!   `retry-after`, a circuit breaker, admission control (a rate limit
//!   pauses every task of that backend), routing by role with fallback, and
//!   token/cost accounting against the budget;
//! * [`ScriptedAgent`]: canned behaviour per (ticket, phase, attempt) that
//!   really writes files, for tests and examples.
//!
//! * [`HttpAgent`]: the Anthropic Messages API and OpenAI-compatible Chat
//!   Completions endpoints, writing the answer into the work tree.

mod cli;
mod http;
mod resilience;
mod scripted;
pub mod stream;

pub use cli::{
    AgentDefaults, CLAUDE_CODE_ENV, CODEX_ENV, ClaudeCodeAgent, CodexAgent, CommandAgent,
    GEMINI_ENV, HeadlessCliAgent, QWEN_ENV, from_spec,
};
pub use http::{Api, HttpAgent, HttpAgentBuilder};
pub use orch_core::secrets::{REDACTED, Redactor, is_secret_name};
pub use resilience::{
    Backend, Breaker, BreakerConfig, BreakerState, LONGEST_PAUSE, Ledger, RetryConfig, Router,
};
pub use scripted::{ScriptedAgent, Step, TaskFn};
