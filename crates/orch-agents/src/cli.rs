//! Agents that run a program: [`CommandAgent`] (any CLI),
//! [`ClaudeCodeAgent`] (`claude -p --output-format stream-json`) and
//! [`CodexAgent`] (`codex exec --json`). All run through orch-core's
//! process runner: their own process group, a time limit and cancellation
//! that kill the group, a stall watchdog, bounded memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orch_core::process::{self, Exit, Output};
use orch_core::{
    Agent, AgentContext, AgentError, AgentErrorKind, AgentOutcome, AgentSpec, AgentTask,
    BackendSpec, Progress, RoleName, plan::PromptVia,
};

use crate::stream::{self, ClaudeStream, CodexStream, GeminiStream, StreamParser};
use orch_core::secrets::Redactor;

/// Limits and places every process agent uses, from the plan's policy.
#[derive(Debug, Clone)]
pub struct AgentDefaults {
    /// Time limit of one run (a role's `timeout_secs` overrides it).
    pub timeout: Duration,
    /// Stop an agent silent on stdout for this long.
    pub stall: Duration,
    /// Where transcripts go: `<dir>/<agent id>.log` for an agent's first
    /// run, `<agent id>.2.log`, … for each retry of the same task (a
    /// retry never overwrites an earlier transcript); none: not written.
    pub transcripts: Option<PathBuf>,
    /// What removes secrets from everything an agent prints before it is
    /// passed on (progress, summaries, errors, transcripts, answers).
    /// Default: every secret of this process's environment.
    pub redactor: Redactor,
}

impl Default for AgentDefaults {
    fn default() -> Self {
        AgentDefaults {
            timeout: Duration::from_secs(3600),
            stall: Duration::from_secs(600),
            transcripts: None,
            redactor: Redactor::from_process_env(),
        }
    }
}

/// The variables of orch's environment the `claude_code` backend passes
/// to Claude Code besides [`process::BASE_ENV`]: its own provider's and
/// its own settings, never another provider's key.
pub const CLAUDE_CODE_ENV: &[&str] = &["ANTHROPIC_*", "CLAUDE_*"];

/// The variable that bounds Claude Code's own API retries; orch sets it
/// to 2 unless the spec or orch's environment does.
pub const CLAUDE_RETRIES: &str = "CLAUDE_CODE_MAX_RETRIES";

/// The variables of orch's environment the `codex` backend passes to
/// Codex besides [`process::BASE_ENV`]: its own provider's and settings.
pub const CODEX_ENV: &[&str] = &["OPENAI_*", "CODEX_*"];

/// The variables of orch's environment the `gemini_cli` backend passes to
/// Gemini CLI besides [`process::BASE_ENV`]: its own settings and its API
/// key and endpoint (`GEMINI_API_KEY`, `GEMINI_CLI_HOME`,
/// `GOOGLE_GEMINI_BASE_URL`, `GOOGLE_GENAI_*`, `GOOGLE_API_KEY`), not
/// other Google credentials (`GOOGLE_APPLICATION_CREDENTIALS`, for Vertex
/// AI, is passed only when the spec's `env_allow` names it).
pub const GEMINI_ENV: &[&str] = &[
    "GEMINI_*",
    "GOOGLE_GEMINI_*",
    "GOOGLE_GENAI_*",
    "GOOGLE_API_KEY",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
];

/// The variables of orch's environment the `qwen_code` backend passes to
/// Qwen Code besides [`process::BASE_ENV`]: its own (`QWEN_*`,
/// `DASHSCOPE_*`). It talks to an OpenAI-compatible endpoint through
/// `OPENAI_API_KEY`, `OPENAI_BASE_URL` and `OPENAI_MODEL`, which are
/// another backend's (Codex's) in orch's environment: set them in the
/// spec's `env`, or name them in its `env_allow`.
pub const QWEN_ENV: &[&str] = &["QWEN_*", "DASHSCOPE_*"];

/// A transcript file of its own for this run of `agent`: the first free
/// of `<agent>.log`, `<agent>.2.log`, … (created, so a concurrent retry
/// cannot take it too).
fn transcript_file(dir: &std::path::Path, agent: &str) -> Option<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(dir).ok()?;
    (1..10_000).find_map(|n| {
        let name = if n == 1 {
            format!("{agent}.log")
        } else {
            format!("{agent}.{n}.log")
        };
        let path = dir.join(name);
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path);
        match file {
            Ok(f) => Some(Some((path, f))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
            Err(_) => Some(None),
        }
    })?
}

/// [`Agent::check`] of a command backend: its program can be started;
/// `path` is the `PATH` it runs with when not ours; `hint` (how to
/// install it) follows the message when it cannot.
fn check_argv(argv: &[String], path: Option<&str>, hint: &str) -> Result<(), AgentError> {
    process::check_program(
        argv.first().map_or("", String::as_str),
        path.map(AsRef::as_ref),
    )
    .map_err(|why| AgentError::new(AgentErrorKind::Spawn, format!("{why}{hint}")))
}

/// Maps how a process ended, when it did not run to the end, to an error.
fn process_error(out: &Output, program: &str) -> Option<AgentError> {
    let (kind, msg) = match &out.exit {
        Exit::TimedOut(_) => (AgentErrorKind::TimedOut, out.describe()),
        Exit::Stalled(_) => (AgentErrorKind::Stalled, out.describe()),
        Exit::Cancelled => (AgentErrorKind::Cancelled, out.describe()),
        // Names the program itself.
        Exit::NotFound(p) => {
            return Some(AgentError::new(
                AgentErrorKind::Spawn,
                process::not_installed(p),
            ));
        }
        Exit::SpawnFailed(e) => (AgentErrorKind::Spawn, e.clone()),
        Exit::Code(_) | Exit::Signal(_) => return None,
    };
    Some(AgentError::new(kind, format!("{program} {msg}")))
}

/// How an agent's stdout lines reach `on_line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// Plain text: each line redacted first (private key blocks line by
    /// line).
    Text,
    /// An event stream (JSON lines): raw, so that redaction cannot break
    /// its syntax; what the parser makes of them is redacted instead.
    Events,
}

/// Runs `cmd`, feeding every stdout line to `on_line` (redacted first when
/// it is text), and writing the redacted transcript.
async fn run_redacted(
    cmd: &process::Command,
    task: &AgentTask,
    ctx: &AgentContext,
    redactor: &Redactor,
    transcripts: Option<&PathBuf>,
    kind: Lines,
    mut on_line: impl FnMut(&str) + Send,
) -> (Output, Option<PathBuf>) {
    let mut lines = redactor.lines();
    let mut cb = |line: &str| match kind {
        Lines::Text => on_line(&lines.redact(line)),
        Lines::Events => on_line(line),
    };
    let out = process::run_lines(cmd, &ctx.cancel, &mut cb).await;
    let transcript = transcripts.and_then(|dir| {
        use std::io::Write;
        let (path, mut file) = transcript_file(dir, task.agent_id.as_str())?;
        let text = format!(
            "$ {}\n--- stdout ({} bytes)\n{}\n--- stderr ({} bytes)\n{}\n--- {}\n",
            cmd.argv.first().map_or("", String::as_str),
            out.stdout.total(),
            redactor.redact(&out.stdout.text()),
            out.stderr.total(),
            redactor.redact(&out.stderr.text()),
            out.describe()
        );
        file.write_all(text.as_bytes()).ok()?;
        Some(path)
    });
    (out, transcript)
}

/// Runs an agent CLI whose stdout is an event stream: every line goes
/// through `parser`, whose progress (redacted) goes to the progress sink;
/// the end of the stream and the exit give the outcome (redacted).
async fn run_parsed<P: StreamParser>(
    cmd: &process::Command,
    parser: P,
    task: &AgentTask,
    ctx: &AgentContext,
    defaults: &AgentDefaults,
) -> Result<AgentOutcome, AgentError> {
    let parser = Mutex::new(parser);
    let (out, transcript) = run_redacted(
        cmd,
        task,
        ctx,
        &defaults.redactor,
        defaults.transcripts.as_ref(),
        Lines::Events,
        |line| {
            let progress = parser
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_line(line);
            for mut p in progress {
                p.redact(&defaults.redactor);
                ctx.progress.progress(&task.agent_id, p);
            }
        },
    )
    .await;
    if let Some(e) = process_error(&out, cmd.argv.first().map_or("agent", String::as_str)) {
        return Err(e);
    }
    let parser = parser.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut outcome = parser.finish(exit_of(&out)).map_err(|mut e| {
        defaults.redactor.redact_in_place(&mut e.message);
        e
    })?;
    defaults.redactor.redact_in_place(&mut outcome.summary);
    outcome.transcript = transcript;
    Ok(outcome)
}

fn exit_of(out: &Output) -> stream::Exit {
    match out.exit {
        Exit::Signal(s) => stream::Exit::Signal(s),
        Exit::Code(c) => stream::Exit::Code(c),
        _ => stream::Exit::Code(-1),
    }
}

fn task_env(task: &AgentTask) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("ORCH_RUN".into(), task.run.to_string()),
        ("ORCH_TICKET".into(), task.ticket.id.to_string()),
        ("ORCH_PHASE".into(), task.phase.to_string()),
        ("ORCH_ATTEMPT".into(), task.attempt.to_string()),
        ("ORCH_AGENT_ID".into(), task.agent_id.to_string()),
    ])
}

/// Runs any program. The prompt goes to stdin, to a file whose path
/// replaces `{prompt_file}` in argv, or into the argv element `{prompt}`
/// (never through a shell). The environment is clean: only
/// [`process::BASE_ENV`], the names in `env_allow`, the spec's `env` and
/// the `ORCH_*` variables describing the task. Exit status 0 is success.
#[derive(Debug, Clone)]
pub struct CommandAgent {
    argv: Vec<String>,
    prompt_via: PromptVia,
    env_allow: Vec<String>,
    env: BTreeMap<String, String>,
    /// Where its usage is in its output: a reader made (its regex
    /// compiled) once, cloned for each run.
    usage: Option<orch_core::UsageReader>,
    /// The defaults' redactor, also removing the secrets `env` hands the
    /// agent (made once, not per run).
    redactor: Redactor,
    defaults: AgentDefaults,
}

impl CommandAgent {
    /// An agent running `argv`.
    ///
    /// # Errors
    /// [`AgentErrorKind::Config`] for an empty argv, or a prompt placeholder
    /// missing from argv.
    pub fn new(
        argv: Vec<String>,
        prompt_via: PromptVia,
        env_allow: Vec<String>,
        env: BTreeMap<String, String>,
        defaults: AgentDefaults,
    ) -> Result<Self, AgentError> {
        if argv.first().is_none_or(String::is_empty) {
            return Err(AgentError::new(
                AgentErrorKind::Config,
                "argv must name a program",
            ));
        }
        let need = match prompt_via {
            PromptVia::Arg => Some("{prompt}"),
            PromptVia::File => Some("{prompt_file}"),
            PromptVia::Stdin => None,
        };
        if let Some(p) = need
            && !argv.iter().any(|a| a == p)
        {
            return Err(AgentError::new(
                AgentErrorKind::Config,
                format!("prompt_via needs an argv element {p:?}"),
            ));
        }
        let redactor = defaults.redactor.clone().with_values(
            env.iter()
                .filter(|(k, _)| orch_core::secrets::is_secret_name(k))
                .map(|(_, v)| v.clone()),
        );
        Ok(CommandAgent {
            argv,
            prompt_via,
            env_allow,
            env,
            usage: None,
            redactor,
            defaults,
        })
    }

    /// Reads the agent's token and cost usage from its output as `spec`
    /// says.
    ///
    /// # Errors
    /// [`AgentErrorKind::Config`] naming what is wrong with `spec`.
    pub fn usage(mut self, spec: orch_core::UsageSpec) -> Result<Self, AgentError> {
        let reader = spec
            .reader()
            .map_err(|e| AgentError::new(AgentErrorKind::Config, format!("usage: {e}")))?;
        self.usage = Some(reader);
        Ok(self)
    }
}

#[async_trait]
impl Agent for CommandAgent {
    fn backend(&self) -> &str {
        "command"
    }

    fn check(&self, _: &RoleName) -> Result<(), AgentError> {
        // Its own PATH, when its environment sets one, finds the program.
        check_argv(&self.argv, self.env.get("PATH").map(String::as_str), "")
    }

    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let mut env = self.env.clone();
        env.extend(task_env(&task));
        let redactor = &self.redactor;
        let mut prompt_file = None;
        let mut argv = self.argv.clone();
        for a in &mut argv {
            if a == "{prompt}" && self.prompt_via == PromptVia::Arg {
                a.clone_from(&task.prompt);
            } else if a == "{prompt_file}" && self.prompt_via == PromptVia::File {
                let dir = std::env::temp_dir().join("orch-prompts");
                // Unique to this run of the task (a retry gets its own).
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let path = dir.join(format!(
                    "{}-{}-{}-{}.md",
                    task.run,
                    task.agent_id,
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                // Only this user may read it, and an existing file (or a
                // link someone planted) is never written through.
                std::fs::create_dir_all(&dir)
                    .and_then(|()| {
                        use std::io::Write;
                        use std::os::unix::fs::OpenOptionsExt;
                        std::fs::File::options()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&path)?
                            .write_all(task.prompt.as_bytes())
                    })
                    .map_err(|e| {
                        AgentError::new(AgentErrorKind::Crashed, format!("{}: {e}", path.display()))
                    })?;
                *a = path.to_string_lossy().into_owned();
                prompt_file = Some(path);
            }
        }
        let cmd = process::Command {
            argv,
            cwd: task.workdir.to_path_buf(),
            env,
            env_allow: self.env_allow.clone(),
            stdin: (self.prompt_via == PromptVia::Stdin).then(|| task.prompt.clone().into_bytes()),
            timeout: self.defaults.timeout,
            stall: Some(self.defaults.stall),
            ..Default::default()
        };
        let last = Mutex::new(String::new());
        let usage = Mutex::new(self.usage.clone());
        let (out, transcript) = run_redacted(
            &cmd,
            &task,
            ctx,
            redactor,
            self.defaults.transcripts.as_ref(),
            Lines::Text,
            |line| {
                if let Some(r) = usage.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    r.line(line);
                }
                if !line.trim().is_empty() {
                    line.clone_into(&mut last.lock().unwrap_or_else(|e| e.into_inner()));
                    ctx.progress.progress(
                        &task.agent_id,
                        Progress::Text {
                            text: line.to_owned(),
                        },
                    );
                }
            },
        )
        .await;
        if let Some(p) = prompt_file {
            let _ = std::fs::remove_file(p);
        }
        let usage = usage
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .map(|r| r.usage())
            .unwrap_or_default();
        if let Some(e) = process_error(&out, &self.argv[0]) {
            // What it spent before it failed counts too.
            return Err(e.with_usage(usage));
        }
        let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
        let success = out.exit == Exit::Code(0);
        let summary = if success {
            last
        } else {
            let stderr = out.stderr.text();
            let err = redactor.redact(
                stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or(""),
            );
            format!("{} {}: {err}", self.argv[0], out.describe())
        };
        Ok(AgentOutcome {
            success,
            summary: summary.chars().take(2000).collect(),
            transcript,
            usage,
            ..AgentOutcome::default()
        })
    }
}

/// Claude Code in headless mode: `claude -p --output-format stream-json
/// --verbose`, the prompt on stdin, every event line parsed
/// ([`ClaudeStream`]) into progress and the outcome.
#[derive(Debug, Clone)]
pub struct ClaudeCodeAgent {
    argv: Vec<String>,
    env: Env,
    defaults: AgentDefaults,
}

/// The environment of a CLI backend: variables set, and names passed
/// through from orch's environment (its provider's by default).
#[derive(Debug, Clone, Default)]
struct Env {
    set: BTreeMap<String, String>,
    allow: Vec<String>,
}

impl Env {
    fn new(set: &BTreeMap<String, String>, allow: &[String], own: &[&str]) -> Env {
        Env {
            set: set.clone(),
            allow: own
                .iter()
                .map(|s| (*s).to_owned())
                .chain(allow.iter().cloned())
                .collect(),
        }
    }
}

impl ClaudeCodeAgent {
    /// The argv for the settings of a `claude_code` backend.
    pub fn argv(spec: &BackendSpec) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if let BackendSpec::ClaudeCode {
            binary,
            model,
            max_turns,
            allowed_tools,
            permission_mode,
            append_system_prompt,
            extra_args,
            ..
        } = spec
        {
            a.push(binary.clone().unwrap_or_else(|| "claude".into()));
            a.extend(["-p", "--output-format", "stream-json", "--verbose"].map(String::from));
            if let Some(m) = model {
                a.extend(["--model".into(), m.clone()]);
            }
            if let Some(n) = max_turns {
                a.extend(["--max-turns".into(), n.to_string()]);
            }
            if !allowed_tools.is_empty() {
                a.extend(["--allowedTools".into(), allowed_tools.join(",")]);
            }
            if let Some(p) = permission_mode {
                a.extend(["--permission-mode".into(), p.clone()]);
            }
            if let Some(s) = append_system_prompt {
                a.extend(["--append-system-prompt".into(), s.clone()]);
            }
            a.extend(extra_args.iter().cloned());
        }
        a
    }
}

#[async_trait]
impl Agent for ClaudeCodeAgent {
    fn backend(&self) -> &str {
        "claude_code"
    }

    fn check(&self, _: &RoleName) -> Result<(), AgentError> {
        check_argv(
            &self.argv,
            None,
            " (install Claude Code: `npm install -g @anthropic-ai/claude-code`, or set the backend's `binary`)",
        )
    }

    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let mut argv = self.argv.clone();
        if let Some(session) = &task.resume {
            argv.extend(["--resume".into(), session.clone()]);
        }
        let stdin = Some(task.prompt.clone().into_bytes());
        let cmd = stream_command(argv, stdin, &task, &self.env, &self.defaults);
        run_parsed(&cmd, ClaudeStream::new(), &task, ctx, &self.defaults).await
    }
}

/// How an event-stream CLI (Claude Code, Codex) runs `task`: in its work
/// tree, in a clean environment with its own provider's variables, what
/// its spec sets and passes, and the task's `ORCH_*` variables, under the
/// time limit and the stall watchdog.
fn stream_command(
    argv: Vec<String>,
    stdin: Option<Vec<u8>>,
    task: &AgentTask,
    env: &Env,
    d: &AgentDefaults,
) -> process::Command {
    let mut set = env.set.clone();
    set.extend(task_env(task));
    process::Command {
        argv,
        cwd: task.workdir.to_path_buf(),
        env: set,
        env_allow: env.allow.clone(),
        stdin,
        timeout: d.timeout,
        stall: Some(d.stall),
        ..Default::default()
    }
}

/// OpenAI Codex CLI: `codex exec --json -`, the prompt on stdin, every
/// event line parsed ([`CodexStream`]). A task that resumes a session
/// runs `codex exec --json ... resume <thread id> -`.
#[derive(Debug, Clone)]
pub struct CodexAgent {
    argv: Vec<String>,
    env: Env,
    defaults: AgentDefaults,
}

impl CodexAgent {
    /// The argv (without the prompt) for the settings of a `codex` backend.
    pub fn argv(spec: &BackendSpec) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if let BackendSpec::Codex {
            binary,
            model,
            sandbox,
            extra_args,
            ..
        } = spec
        {
            a.push(binary.clone().unwrap_or_else(|| "codex".into()));
            a.extend(["exec", "--json"].map(String::from));
            if let Some(m) = model {
                a.extend(["--model".into(), m.clone()]);
            }
            if let Some(s) = sandbox {
                a.extend(["--sandbox".into(), s.clone()]);
            }
            a.extend(extra_args.iter().cloned());
        }
        a
    }
}

#[async_trait]
impl Agent for CodexAgent {
    fn backend(&self) -> &str {
        "codex"
    }

    fn check(&self, _: &RoleName) -> Result<(), AgentError> {
        check_argv(
            &self.argv,
            None,
            " (install Codex: `npm install -g @openai/codex`, or set the backend's `binary`)",
        )
    }

    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let mut argv = self.argv.clone();
        // A retry continues the earlier thread: `codex exec [flags] resume
        // <thread id> <prompt>` (the flags before `resume` still apply).
        if let Some(thread) = &task.resume {
            argv.extend(["resume".to_owned(), thread.clone()]);
        }
        // The prompt on stdin (`-`): as an argument it is visible in `ps`
        // and fails past the kernel's 128 KiB limit for one argument.
        argv.push("-".to_owned());
        let stdin = Some(task.prompt.clone().into_bytes());
        let cmd = stream_command(argv, stdin, &task, &self.env, &self.defaults);
        run_parsed(&cmd, CodexStream::new(), &task, ctx, &self.defaults).await
    }
}

/// Gemini CLI or Qwen Code in headless mode: `<cli> -o stream-json
/// --approval-mode yolo`, the prompt on stdin, every event line parsed
/// into progress and the outcome. A retry starts a new session, with the
/// failure's feedback in its prompt.
///
/// * **Gemini CLI** (`gemini_cli`): also `--skip-trust` (an untrusted
///   folder stops a headless run) and `-p ""` (appended to the prompt on
///   stdin, it adds nothing); [`GeminiStream`] reads its stream. It runs as
///   one process (`GEMINI_CLI_NO_RELAUNCH`: by default it starts a child
///   and ignores SIGTERM). It retries a failing API by itself (up to 10
///   attempts over a few minutes); the role's timeout bounds the attempt.
/// * **Qwen Code** (`qwen_code`): its stream has Claude Code's shape, so
///   [`ClaudeStream`] reads it; its usage statistics are not sent
///   (`QWEN_USAGE_STATISTICS_ENABLED=false`).
#[derive(Debug, Clone)]
pub struct HeadlessCliAgent {
    cli: Headless,
    argv: Vec<String>,
    env: Env,
    defaults: AgentDefaults,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headless {
    Gemini,
    Qwen,
}

impl HeadlessCliAgent {
    /// The agent a `gemini_cli` or `qwen_code` spec describes (`None` for
    /// another kind).
    fn new(spec: &BackendSpec, defaults: AgentDefaults) -> Option<Self> {
        let (cli, env, env_allow, own, default_env) = match spec {
            BackendSpec::GeminiCli { env, env_allow, .. } => (
                Headless::Gemini,
                env,
                env_allow,
                GEMINI_ENV,
                ("GEMINI_CLI_NO_RELAUNCH", "true"),
            ),
            BackendSpec::QwenCode { env, env_allow, .. } => (
                Headless::Qwen,
                env,
                env_allow,
                QWEN_ENV,
                ("QWEN_USAGE_STATISTICS_ENABLED", "false"),
            ),
            _ => return None,
        };
        let mut env = Env::new(env, env_allow, own);
        env.set
            .entry(default_env.0.into())
            .or_insert_with(|| default_env.1.into());
        Some(HeadlessCliAgent {
            cli,
            argv: Self::argv(spec),
            env,
            defaults,
        })
    }

    /// The argv for the settings of a `gemini_cli` or `qwen_code` backend.
    pub fn argv(spec: &BackendSpec) -> Vec<String> {
        let (program, fixed, binary, model, approval_mode, extra_args): (_, &[&str], _, _, _, _) =
            match spec {
                BackendSpec::GeminiCli {
                    binary,
                    model,
                    approval_mode,
                    extra_args,
                    ..
                } => (
                    "gemini",
                    &["--skip-trust"],
                    binary,
                    model,
                    approval_mode,
                    extra_args,
                ),
                BackendSpec::QwenCode {
                    binary,
                    model,
                    approval_mode,
                    extra_args,
                    ..
                } => ("qwen", &[], binary, model, approval_mode, extra_args),
                _ => return Vec::new(),
            };
        let mut a = vec![binary.clone().unwrap_or_else(|| program.into())];
        a.extend(["--output-format", "stream-json"].map(String::from));
        a.extend(fixed.iter().map(|f| (*f).to_owned()));
        a.extend([
            "--approval-mode".into(),
            approval_mode.clone().unwrap_or_else(|| "yolo".into()),
        ]);
        if let Some(m) = model {
            a.extend(["--model".into(), m.clone()]);
        }
        a.extend(extra_args.iter().cloned());
        if program == "gemini" {
            a.extend(["--prompt".into(), String::new()]);
        }
        a
    }
}

#[async_trait]
impl Agent for HeadlessCliAgent {
    fn backend(&self) -> &str {
        match self.cli {
            Headless::Gemini => "gemini_cli",
            Headless::Qwen => "qwen_code",
        }
    }

    fn check(&self, _: &RoleName) -> Result<(), AgentError> {
        let hint = match self.cli {
            Headless::Gemini => {
                " (install Gemini CLI: `npm install -g @google/gemini-cli`, or set the backend's `binary`)"
            }
            Headless::Qwen => {
                " (install Qwen Code: `npm install -g @qwen-code/qwen-code`, or set the backend's `binary`)"
            }
        };
        check_argv(&self.argv, None, hint)
    }

    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let stdin = Some(task.prompt.clone().into_bytes());
        let cmd = stream_command(self.argv.clone(), stdin, &task, &self.env, &self.defaults);
        match self.cli {
            Headless::Gemini => {
                run_parsed(&cmd, GeminiStream::new(), &task, ctx, &self.defaults).await
            }
            Headless::Qwen => {
                run_parsed(&cmd, ClaudeStream::new(), &task, ctx, &self.defaults).await
            }
        }
    }
}

/// An HTTP agent from `b` and the settings its spec and `d` share.
fn http_agent(
    b: crate::http::HttpAgentBuilder,
    max_tokens: Option<u32>,
    output_file: &Option<String>,
    d: &AgentDefaults,
) -> Result<crate::http::HttpAgent, AgentError> {
    let mut b = b.timeout(d.timeout).redactor(d.redactor.clone());
    if let Some(n) = max_tokens {
        b = b.max_tokens(n);
    }
    if let Some(f) = output_file {
        b = b.output_file(f.clone());
    }
    b.build()
}

/// Builds the agent an [`AgentSpec`] describes.
///
/// # Errors
/// [`AgentErrorKind::Config`] for a bad spec, or a backend kind this crate
/// does not provide or that the program must register
/// itself (`custom`).
pub fn from_spec(spec: &AgentSpec, defaults: &AgentDefaults) -> Result<Arc<dyn Agent>, AgentError> {
    let mut d = defaults.clone();
    if let Some(t) = spec.timeout_secs {
        d.timeout = Duration::from_secs(t);
    }
    Ok(match &spec.backend {
        BackendSpec::Command {
            argv,
            prompt_via,
            env_allow,
            env,
            usage,
        } => {
            let agent =
                CommandAgent::new(argv.clone(), *prompt_via, env_allow.clone(), env.clone(), d)?;
            Arc::new(match usage {
                Some(u) => agent.usage(u.clone())?,
                None => agent,
            })
        }
        b @ BackendSpec::ClaudeCode { env, env_allow, .. } => {
            let mut env = Env::new(env, env_allow, CLAUDE_CODE_ENV);
            // Claude Code retries a failing API ten times by itself (529s
            // for minutes, ignoring retry-after); orch's own retries and
            // fallback are the ones a person configures. A value given in
            // the spec or orch's environment wins.
            if std::env::var_os(CLAUDE_RETRIES).is_none() {
                env.set
                    .entry(CLAUDE_RETRIES.to_owned())
                    .or_insert_with(|| "2".to_owned());
            }
            Arc::new(ClaudeCodeAgent {
                argv: ClaudeCodeAgent::argv(b),
                env,
                defaults: d,
            })
        }
        b @ BackendSpec::Codex { env, env_allow, .. } => Arc::new(CodexAgent {
            argv: CodexAgent::argv(b),
            env: Env::new(env, env_allow, CODEX_ENV),
            defaults: d,
        }),
        b @ (BackendSpec::GeminiCli { .. } | BackendSpec::QwenCode { .. }) => {
            Arc::new(HeadlessCliAgent::new(b, d).expect("a headless CLI spec"))
        }
        BackendSpec::Anthropic {
            model,
            api_key_env,
            base_url,
            max_tokens,
            output_file,
        } => Arc::new(http_agent(
            crate::http::HttpAgent::builder(
                crate::http::Api::Anthropic,
                base_url
                    .clone()
                    .unwrap_or_else(|| "https://api.anthropic.com".into()),
                model.clone(),
            )
            .api_key_env(
                api_key_env
                    .clone()
                    .unwrap_or_else(|| "ANTHROPIC_API_KEY".into()),
            ),
            *max_tokens,
            output_file,
            &d,
        )?),
        BackendSpec::OpenaiCompatible {
            model,
            api_key_env,
            base_url,
            max_tokens,
            output_file,
        } => Arc::new({
            let mut b = crate::http::HttpAgent::builder(
                crate::http::Api::OpenAiCompatible,
                base_url.clone(),
                model.clone(),
            );
            if let Some(var) = api_key_env {
                b = b.api_key_env(var.clone());
            }
            http_agent(b, *max_tokens, output_file, &d)?
        }),
        other => {
            return Err(AgentError::new(
                AgentErrorKind::Config,
                format!(
                    "backend kind {:?} must be registered by the program (Router::from_plan's custom agents)",
                    other.kind()
                ),
            ));
        }
    })
}
