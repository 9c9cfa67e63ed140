//! Declarative descriptions of agent backends, keyed by role in a plan.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::RoleName;

/// The agent that plays one role, with an optional fallback role.
///
/// ```toml
/// [agents.security]
/// fallback = "generalist"
/// max_concurrency = 2
/// backend = { kind = "claude_code", model = "opus", max_turns = 30 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentSpec {
    /// Which backend runs this role, and its settings.
    pub backend: BackendSpec,
    /// The role to use instead while this role's backend is unavailable
    /// (circuit open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<RoleName>,
    /// At most this many agent runs on this role's backend at once, its
    /// own role's work and that of roles falling back to it (default: the
    /// policy's `max_concurrency`). `policy.role_concurrency` limits
    /// tickets in flight instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Stop the agent after this many seconds (default: the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Token prices, for backends that report tokens but no cost (Codex,
    /// OpenAI-compatible endpoints): the cost is computed from them, so the
    /// budget and the ledger see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<Prices>,
    /// When this role's backend counts as down and its work goes to the
    /// `fallback` (default: after as many failures in a row as a phase
    /// has attempts, at most 5, for 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSpec>,
}

/// A backend's circuit breaker: it opens after `failures` failures in a
/// row (transient ones: overloaded, rate-limited, crashed, stalled, timed
/// out, a reported failure) and lets one probe through after
/// `cooldown_secs`. A backend that cannot run at all (not installed, key
/// refused) opens at once.
///
/// ```toml
/// [agents.dev]
/// backend = { kind = "claude_code" }
/// fallback = "backup"
/// breaker = { failures = 2, cooldown_secs = 120 }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Failures in a row that open it (at least 1).
    pub failures: u32,
    /// Seconds it stays open before a probe.
    #[serde(default = "thirty")]
    pub cooldown_secs: u64,
}

fn thirty() -> u64 {
    30
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Per million input tokens.
    pub input_per_mtok: f64,
    /// Per million output tokens.
    pub output_per_mtok: f64,
}

impl Prices {
    /// What `usage`'s tokens cost.
    ///
    /// ```
    /// use orch_core::{plan::Prices, Usage};
    /// let p = Prices { input_per_mtok: 1.25, output_per_mtok: 10.0 };
    /// let u = Usage { input_tokens: 2_000_000, output_tokens: 100_000, cost_usd: 0.0 };
    /// assert!((p.cost(&u) - 3.5).abs() < 1e-9);
    /// ```
    pub fn cost(&self, usage: &crate::Usage) -> f64 {
        (usage.input_tokens as f64 * self.input_per_mtok
            + usage.output_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

/// How the prompt reaches a command agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptVia {
    /// Written to the program's standard input.
    #[default]
    Stdin,
    /// Written to a file whose path replaces `{prompt_file}` in argv.
    File,
    /// Replaces the argv element `{prompt}`, as one argument (no shell).
    Arg,
}

/// A backend and its settings, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum BackendSpec {
    /// Any program.
    Command {
        /// Program and arguments (no shell).
        argv: Vec<String>,
        /// How the prompt is passed.
        #[serde(default)]
        prompt_via: PromptVia,
        /// Environment variables passed through from orch's environment
        /// (names, or prefixes ending in `*`); everything else is dropped
        /// but `PATH`, `HOME`, the locale and the other variables of
        /// `orch_core::process::BASE_ENV`.
        #[serde(default)]
        env_allow: Vec<String>,
        /// Environment variables set for the program.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Where its token and cost usage is in its output (none: not
        /// known, and budgets do not see it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<super::UsageSpec>,
    },
    /// Claude Code in headless mode (`claude -p --output-format stream-json`).
    ClaudeCode {
        /// The executable (default `claude`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
        /// `--model`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// `--max-turns`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_turns: Option<u32>,
        /// `--allowedTools`.
        #[serde(default)]
        allowed_tools: Vec<String>,
        /// `--permission-mode` (acceptEdits, auto, bypassPermissions, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        permission_mode: Option<String>,
        /// `--append-system-prompt`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        append_system_prompt: Option<String>,
        /// Further arguments, appended as given.
        #[serde(default)]
        extra_args: Vec<String>,
        /// Environment variables passed through from orch's environment,
        /// besides `PATH`, `HOME`, the locale (`BASE_ENV`) and this
        /// backend's own provider variables (`ANTHROPIC_*`, `CLAUDE_*`). Another
        /// provider's key is never passed unless named here.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env_allow: Vec<String>,
        /// Environment variables set for the program.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// OpenAI Codex CLI (`codex exec --json`).
    Codex {
        /// The executable (default `codex`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
        /// `--model`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// `--sandbox` (read-only, workspace-write, danger-full-access).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<String>,
        /// Further arguments, appended as given.
        #[serde(default)]
        extra_args: Vec<String>,
        /// Environment variables passed through from orch's environment,
        /// besides `PATH`, `HOME`, the locale (`BASE_ENV`) and this
        /// backend's own provider variables (`OPENAI_*`, `CODEX_*`). Another
        /// provider's key is never passed unless named here.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env_allow: Vec<String>,
        /// Environment variables set for the program.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// Google's Gemini CLI in headless mode (`gemini -o stream-json`, the
    /// prompt on stdin).
    GeminiCli {
        /// The executable (default `gemini`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
        /// `--model` (default: the CLI's, which routes each request).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// `--approval-mode` (default `yolo`: a headless run cannot ask).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_mode: Option<String>,
        /// Further arguments, appended as given.
        #[serde(default)]
        extra_args: Vec<String>,
        /// Environment variables passed through from orch's environment,
        /// besides `PATH`, `HOME`, the locale (`BASE_ENV`) and this
        /// backend's own variables (`GEMINI_*`, `GOOGLE_GEMINI_*`,
        /// `GOOGLE_GENAI_*`, `GOOGLE_API_KEY`, `GOOGLE_CLOUD_PROJECT`,
        /// `GOOGLE_CLOUD_LOCATION`). Other credentials are never passed
        /// unless named here.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env_allow: Vec<String>,
        /// Environment variables set for the program.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// Qwen Code in headless mode (`qwen -o stream-json`, the prompt on
    /// stdin), on any OpenAI-compatible endpoint (`OPENAI_BASE_URL`,
    /// `OPENAI_API_KEY`, `OPENAI_MODEL`) or its own.
    QwenCode {
        /// The executable (default `qwen`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
        /// `--model`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// `--approval-mode` (default `yolo`: a headless run cannot ask).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_mode: Option<String>,
        /// Further arguments, appended as given.
        #[serde(default)]
        extra_args: Vec<String>,
        /// Environment variables passed through from orch's environment,
        /// besides `PATH`, `HOME`, the locale (`BASE_ENV`) and this
        /// backend's own variables (`QWEN_*`, `DASHSCOPE_*`). The
        /// OpenAI-compatible endpoint's `OPENAI_API_KEY`, `OPENAI_BASE_URL`
        /// and `OPENAI_MODEL` are passed only when named here (or set in
        /// `env`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env_allow: Vec<String>,
        /// Environment variables set for the program.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// The Anthropic Messages API.
    Anthropic {
        /// Model name.
        model: String,
        /// Environment variable holding the API key (default `ANTHROPIC_API_KEY`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_env: Option<String>,
        /// Base URL (default `https://api.anthropic.com`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_url: Option<String>,
        /// `max_tokens` of each request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_tokens: Option<u32>,
        /// File in the work tree the answer is written to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_file: Option<String>,
    },
    /// Any OpenAI-compatible Chat Completions endpoint.
    OpenaiCompatible {
        /// Model name.
        model: String,
        /// Environment variable holding the API key (none for local servers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_env: Option<String>,
        /// Base URL, e.g. `http://127.0.0.1:8000/v1`.
        base_url: String,
        /// `max_tokens` of each request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_tokens: Option<u32>,
        /// File in the work tree the answer is written to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_file: Option<String>,
    },
    /// A backend registered by the embedding program under `name`.
    Custom {
        /// The name it was registered under.
        name: String,
        /// Settings passed to it as JSON.
        #[serde(default)]
        settings: BTreeMap<String, serde_json::Value>,
    },
}

impl BackendSpec {
    /// The `kind` tag, e.g. `"claude_code"`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSpec::Command { .. } => "command",
            BackendSpec::ClaudeCode { .. } => "claude_code",
            BackendSpec::Codex { .. } => "codex",
            BackendSpec::GeminiCli { .. } => "gemini_cli",
            BackendSpec::QwenCode { .. } => "qwen_code",
            BackendSpec::Anthropic { .. } => "anthropic",
            BackendSpec::OpenaiCompatible { .. } => "openai_compatible",
            BackendSpec::Custom { .. } => "custom",
        }
    }
}
