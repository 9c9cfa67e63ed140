//! [`ScriptedAgent`]: canned behaviour per (ticket, phase, attempt), for
//! tests and examples. It really writes files into the work tree, so gates
//! and checkpoints see real changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orch_core::{
    Agent, AgentContext, AgentError, AgentErrorKind, AgentOutcome, AgentTask, Progress, Usage,
};

/// A function that does a task.
pub type TaskFn = Arc<dyn Fn(&AgentTask) -> Result<AgentOutcome, AgentError> + Send + Sync>;

/// What the agent does for one task.
#[derive(Clone)]
pub enum Step {
    /// Write these files (path relative to the work tree, contents) and
    /// report success.
    Write(Vec<(String, String)>),
    /// Report failure with this summary, writing nothing.
    Fail(String),
    /// Return this error.
    Error(AgentErrorKind, String),
    /// Anything else.
    Run(TaskFn),
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Write(files) => f.debug_tuple("Write").field(&files.len()).finish(),
            Step::Fail(s) => f.debug_tuple("Fail").field(s).finish(),
            Step::Error(k, s) => f.debug_tuple("Error").field(k).field(s).finish(),
            Step::Run(_) => f.write_str("Run(..)"),
        }
    }
}

type Key = (String, String, u32);

/// An [`Agent`] that follows a script.
///
/// ```
/// use orch_agents::{ScriptedAgent, Step};
/// use orch_core::{Agent, AgentContext, AgentTask};
/// let agent = ScriptedAgent::new("scripted", Step::Write(vec![("done.txt".into(), "ok\n".into())]))
///     .on("T-1", "implement", 1, Step::Fail("tests still fail".into()));
/// let dir = tempfile::tempdir().unwrap();
/// let task = |attempt| AgentTask {
///     run: "r".parse().unwrap(), agent_id: "a".parse().unwrap(),
///     ticket: std::sync::Arc::new(serde_json::from_str(r#"{"id":"T-1","title":"t","effort":"1h"}"#).unwrap()),
///     phase: "implement".parse().unwrap(), role: "dev".parse().unwrap(), prompt: String::new(),
///     workdir: dir.path().into(), feedback: vec![], attempt, resume: None,
/// };
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let first = rt.block_on(agent.run(task(1), &AgentContext::detached())).unwrap();
/// assert!(!first.success);
/// let second = rt.block_on(agent.run(task(2), &AgentContext::detached())).unwrap();
/// assert!(second.success);
/// assert_eq!(std::fs::read_to_string(dir.path().join("done.txt")).unwrap(), "ok\n");
/// assert_eq!(agent.calls().len(), 2);
/// ```
pub struct ScriptedAgent {
    backend: String,
    default: Step,
    steps: HashMap<Key, Step>,
    usage: Usage,
    calls: Mutex<Vec<AgentTask>>,
}

impl std::fmt::Debug for ScriptedAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedAgent")
            .field("backend", &self.backend)
            .field("steps", &self.steps.len())
            .finish_non_exhaustive()
    }
}

impl ScriptedAgent {
    /// An agent named `backend` that does `default` unless a step is
    /// scripted for the task.
    pub fn new(backend: impl Into<String>, default: Step) -> Self {
        ScriptedAgent {
            backend: backend.into(),
            default,
            steps: HashMap::new(),
            usage: Usage::default(),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Does `step` for this ticket, phase and attempt.
    pub fn on(mut self, ticket: &str, phase: &str, attempt: u32, step: Step) -> Self {
        self.steps
            .insert((ticket.to_owned(), phase.to_owned(), attempt), step);
        self
    }

    /// Reports this usage for every task that runs to the end.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Every task it was given, in order.
    pub fn calls(&self) -> Vec<AgentTask> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl Agent for ScriptedAgent {
    fn backend(&self) -> &str {
        &self.backend
    }

    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task.clone());
        if ctx.cancel.is_cancelled() {
            return Err(AgentError::new(
                AgentErrorKind::Cancelled,
                "cancelled before it started",
            ));
        }
        let key = (
            task.ticket.id.as_str().to_owned(),
            task.phase.as_str().to_owned(),
            task.attempt,
        );
        let step = self.steps.get(&key).unwrap_or(&self.default);
        match step {
            Step::Write(files) => {
                for (rel, contents) in files {
                    let rel = rel
                        .replace("{ticket}", task.ticket.id.as_str())
                        .replace("{phase}", task.phase.as_str());
                    if std::path::Path::new(&rel).components().any(|c| {
                        !matches!(
                            c,
                            std::path::Component::Normal(_) | std::path::Component::CurDir
                        )
                    }) {
                        return Err(AgentError::new(
                            AgentErrorKind::Config,
                            format!("{rel:?} leaves the work tree"),
                        ));
                    }
                    let path = task.workdir.join(&rel);
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            AgentError::new(
                                AgentErrorKind::Crashed,
                                format!("{}: {e}", dir.display()),
                            )
                        })?;
                    }
                    std::fs::write(&path, contents).map_err(|e| {
                        AgentError::new(AgentErrorKind::Crashed, format!("{}: {e}", path.display()))
                    })?;
                    ctx.progress.progress(
                        &task.agent_id,
                        Progress::ToolUse {
                            name: "write".into(),
                            input: rel.clone(),
                        },
                    );
                }
                Ok(AgentOutcome {
                    success: true,
                    summary: format!("wrote {} file(s)", files.len()),
                    usage: self.usage,
                    ..AgentOutcome::default()
                })
            }
            Step::Fail(summary) => Ok(AgentOutcome {
                success: false,
                summary: summary.clone(),
                usage: self.usage,
                ..AgentOutcome::default()
            }),
            Step::Error(kind, message) => Err(AgentError::new(*kind, message.clone())),
            Step::Run(f) => f(&task),
        }
    }
}
