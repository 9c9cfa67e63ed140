//! The [`Agent`] contract: run one task of one phase of one ticket.

use std::fmt;
use std::ops::AddAssign;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AgentId, Cancellation, PhaseName, RoleName, RunId, Ticket};

/// Everything an agent needs to do one phase of one ticket.
#[derive(Debug, Clone)]
pub struct AgentTask {
    /// The run this task belongs to.
    pub run: RunId,
    /// Unique id of this invocation (ticket, phase, attempt).
    pub agent_id: AgentId,
    /// The ticket being worked on.
    pub ticket: Arc<Ticket>,
    /// The phase being run.
    pub phase: PhaseName,
    /// The role the agent plays.
    pub role: RoleName,
    /// The full prompt: task, context, requirements, success criteria, and
    /// the feedback of earlier attempts.
    pub prompt: String,
    /// The work tree the agent must work in (shared: the workspace, the
    /// agent and the gates hold the same path).
    pub workdir: Arc<Path>,
    /// Gate reports of the earlier failed attempts of this phase, oldest
    /// first (already folded into `prompt`; given separately for backends
    /// that pass them another way).
    pub feedback: Vec<String>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The backend session of the previous attempt of this phase, for
    /// backends that can continue one (Claude Code's `--resume`): the retry
    /// then keeps the agent's context, with the feedback as the new prompt.
    /// `None` starts afresh.
    pub resume: Option<String>,
}

/// Tokens and money spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Input (prompt) tokens, cache reads and writes included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in US dollars, where the backend reports or prices it.
    pub cost_usd: f64,
}

impl Usage {
    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cost_usd += o.cost_usd;
    }
}

/// What an agent reports when it ran to the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentOutcome {
    /// Whether the agent says it did the task. The phase's gates decide
    /// whether the work is accepted.
    pub success: bool,
    /// One paragraph: what it did, or why it could not.
    pub summary: String,
    /// Tokens and cost.
    pub usage: Usage,
    /// The backend's session id, for resuming or inspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Where the (redacted) transcript was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<PathBuf>,
}

/// Something an agent reports while it works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Progress {
    /// Text the agent wrote.
    Text {
        /// The text.
        text: String,
    },
    /// The agent called a tool.
    ToolUse {
        /// Tool name.
        name: String,
        /// A short rendering of the input.
        input: String,
    },
    /// A tool answered.
    ToolResult {
        /// Whether the tool reported an error.
        is_error: bool,
        /// The start of the result.
        excerpt: String,
    },
    /// A backend-level notice (init, retry, ...).
    System {
        /// What happened.
        message: String,
    },
}

impl Progress {
    /// Removes secrets from its text (the engine does before any observer
    /// sees it).
    pub fn redact(&mut self, r: &crate::secrets::Redactor) {
        match self {
            Progress::Text { text } => r.redact_in_place(text),
            Progress::ToolUse { name, input } => {
                r.redact_in_place(name);
                r.redact_in_place(input);
            }
            Progress::ToolResult { excerpt, .. } => r.redact_in_place(excerpt),
            Progress::System { message } => r.redact_in_place(message),
        }
    }
}

/// Receives [`Progress`] from a running agent. Implemented for closures.
pub trait ProgressSink: Send + Sync {
    /// Called for each piece of progress, in order. Must not block for long.
    fn progress(&self, agent: &AgentId, progress: Progress);
}

impl<F: Fn(&AgentId, Progress) + Send + Sync> ProgressSink for F {
    fn progress(&self, agent: &AgentId, progress: Progress) {
        self(agent, progress);
    }
}

/// What a running agent is given besides its task.
#[derive(Clone)]
pub struct AgentContext {
    /// Fires when the agent must stop (Ctrl-C, budget, shutdown).
    pub cancel: Cancellation,
    /// Where progress goes.
    pub progress: Arc<dyn ProgressSink>,
}

impl AgentContext {
    /// A context with a fresh cancellation signal and no progress sink.
    pub fn detached() -> Self {
        AgentContext {
            cancel: Cancellation::new(),
            progress: Arc::new(|_: &AgentId, _: Progress| {}),
        }
    }
}

impl fmt::Debug for AgentContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentContext")
            .field("cancel", &self.cancel)
            .finish_non_exhaustive()
    }
}

/// Why an agent could not run to the end. The engine's retry policy acts
/// on the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentErrorKind {
    /// Credentials missing or refused. Retrying will not help.
    Auth,
    /// The backend asked us to slow down (see `retry_after`).
    RateLimited,
    /// The backend is overloaded (HTTP 529, 503).
    Overloaded,
    /// The agent printed nothing for too long and was stopped.
    Stalled,
    /// The agent ran past its time limit and was stopped.
    TimedOut,
    /// The agent hit its turn limit.
    MaxTurns,
    /// The process died or the backend failed unexpectedly.
    Crashed,
    /// The task was cancelled.
    Cancelled,
    /// The program was not found or could not be started.
    Spawn,
    /// The backend's output could not be understood.
    Protocol,
    /// The agent's configuration is wrong. Retrying will not help.
    Config,
    /// The backend's circuit breaker is open.
    Unavailable,
}

impl AgentErrorKind {
    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            AgentErrorKind::RateLimited
                | AgentErrorKind::Overloaded
                | AgentErrorKind::Stalled
                | AgentErrorKind::TimedOut
                | AgentErrorKind::MaxTurns
                | AgentErrorKind::Crashed
                | AgentErrorKind::Protocol
                | AgentErrorKind::Unavailable
        )
    }
}

/// An agent could not run to the end.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("agent {kind:?}: {message}")]
pub struct AgentError {
    /// What went wrong, for the retry policy.
    pub kind: AgentErrorKind,
    /// What went wrong, for a person.
    pub message: String,
    /// How long the backend asked us to wait before trying again.
    pub retry_after: Option<Duration>,
    /// Tokens and cost spent before the failure.
    pub usage: Usage,
}

impl AgentError {
    /// An error of `kind` with a message.
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
            retry_after: None,
            usage: Usage::default(),
        }
    }

    /// The same error, carrying the tokens and cost spent before it.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// Runs one phase of one ticket: an agent CLI, an LLM API, a script.
///
/// # Contract
///
/// * `run` works only inside `task.workdir`. On a phase's first attempt it
///   holds the work of the phases before; a retry (`task.attempt > 1`)
///   continues on what the failed attempt left, with `task.feedback`
///   saying why it failed (and `task.resume` naming the earlier session);
///   after a crash, or a restart from an earlier phase, the engine rolls
///   the tree back to the last checkpoint before the call.
/// * It returns `Ok` when the agent ran to the end, whether or not it
///   claims success; the phase's gates judge the work.
/// * It returns `Err` when the agent could not run to the end; the
///   [`AgentErrorKind`] says whether a retry can help.
/// * It does not block between its awaits: orch's engine polls every
///   running ticket's agent on one task, so heavy CPU work (parsing a
///   large transcript at once) belongs in `tokio::task::spawn_blocking`.
///
/// # Cancellation
///
/// When `ctx.cancel` fires, the agent must stop its work (kill its process
/// group, drop its request) promptly and return
/// `Err(AgentError { kind: Cancelled, .. })`. Dropping the future must also
/// stop the work.
///
/// # Example
///
/// ```
/// use async_trait::async_trait;
/// use orch_core::{Agent, AgentContext, AgentError, AgentOutcome, AgentTask};
///
/// /// Writes a file named after the ticket, then reports success.
/// struct NoteTaker;
///
/// #[async_trait]
/// impl Agent for NoteTaker {
///     fn backend(&self) -> &str { "note-taker" }
///
///     async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
///         if ctx.cancel.is_cancelled() {
///             return Err(AgentError::new(orch_core::AgentErrorKind::Cancelled, "cancelled"));
///         }
///         let path = task.workdir.join(format!("{}.md", task.ticket.id));
///         std::fs::write(&path, &task.prompt)
///             .map_err(|e| AgentError::new(orch_core::AgentErrorKind::Crashed, e.to_string()))?;
///         Ok(AgentOutcome { success: true, summary: format!("wrote {}", path.display()), ..Default::default() })
///     }
/// }
///
/// // Agents are used as trait objects, shared between tasks.
/// let agent: std::sync::Arc<dyn Agent> = std::sync::Arc::new(NoteTaker);
/// # let dir = std::env::temp_dir().join(format!("orch-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let task = AgentTask {
///     run: "r1".parse().unwrap(),
///     agent_id: "T-1.plan.1".parse().unwrap(),
///     ticket: std::sync::Arc::new(serde_json::from_str(
///         r#"{"id":"T-1","title":"t","effort":"1h"}"#).unwrap()),
///     phase: "plan".parse().unwrap(),
///     role: "dev".parse().unwrap(),
///     prompt: "Write the plan".into(),
///     workdir: dir.as_path().into(),
///     feedback: vec![],
///     attempt: 1,
///     resume: None,
/// };
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let out = rt.block_on(agent.run(task, &AgentContext::detached())).unwrap();
/// assert!(out.success);
/// assert_eq!(std::fs::read_to_string(dir.join("T-1.md")).unwrap(), "Write the plan");
/// ```
#[async_trait]
pub trait Agent: Send + Sync {
    /// The backend's name, e.g. `claude_code`, for events and reports.
    fn backend(&self) -> &str;

    /// Runs the task to the end.
    ///
    /// # Errors
    /// [`AgentError`] when the agent could not run to the end.
    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError>;

    /// The backend that runs tasks of `role`, for the agent registry. An
    /// agent that routes by role (orch-agents' `Router`) names the backend
    /// it picks; others are their own backend.
    fn backend_for(&self, _role: &crate::RoleName) -> &str {
        self.backend()
    }

    /// Checks, before a run starts, that tasks of `role` can run at all:
    /// the backend's program is installed, its API key is set. The engine
    /// calls it for every role its plan uses and refuses to start when one
    /// fails, rather than failing every ticket of that role one by one.
    /// Checks must be quick and must not start the agent. The default has
    /// nothing to check.
    ///
    /// # Errors
    /// [`AgentError`] saying what is missing and, where it can, how to get
    /// it (usually [`AgentErrorKind::Spawn`] or [`AgentErrorKind::Auth`]).
    fn check(&self, _role: &crate::RoleName) -> Result<(), AgentError> {
        Ok(())
    }
}
