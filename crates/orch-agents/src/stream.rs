//! Parsers for the event streams of agent CLIs: Claude Code's (and Qwen
//! Code's) `--output-format stream-json`, Codex's `exec --json` and Gemini
//! CLI's `--output-format stream-json`.
//!
//! Both are fed one line at a time ([`push_line`](ClaudeStream::push_line)),
//! turn each line into [`Progress`] for the live view, and at the end
//! ([`finish`](ClaudeStream::finish)) give the [`AgentOutcome`] or an
//! [`AgentError`] whose kind the retry policy acts on. Key order is never
//! relied on (events are matched on `"type"`); unknown event types are kept
//! as progress, not fatal; a line that is not JSON is recorded with its line
//! number and the rest of the stream is still read.

use orch_core::{AgentError, AgentErrorKind, AgentOutcome, Progress, Usage};
use serde_json::Value;

/// Longest excerpt of a tool input or result kept in progress.
const EXCERPT: usize = 300;

fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(EXCERPT).collect();
    if s.chars().count() > EXCERPT {
        out.push('…');
    }
    out
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// 1-based line number in the stream.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

/// Counts the line and parses it as JSON; a line that is not JSON is
/// recorded in `malformed` with its number. `None` for blank and bad lines.
fn json_line(lines: &mut usize, malformed: &mut Vec<Malformed>, line: &str) -> Option<Value> {
    *lines += 1;
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    match serde_json::from_str(line) {
        Ok(v) => Some(v),
        Err(e) => {
            malformed.push(Malformed {
                line: *lines,
                message: format!("not JSON: {e}"),
            });
            None
        }
    }
}

/// Remembers an event type the parser does not know (once) and reports it
/// as progress: new CLI versions add types, which must not be fatal.
fn unknown_event(unknown: &mut Vec<String>, kind: &str) -> Progress {
    if !unknown.iter().any(|u| u == kind) {
        unknown.push(kind.to_owned());
    }
    Progress::System {
        message: format!("unknown event type {kind:?}"),
    }
}

/// A parser of an agent CLI's event stream, fed one line at a time.
pub trait StreamParser: Send {
    /// Reads one line; returns the progress it carries.
    fn push_line(&mut self, line: &str) -> Vec<Progress>;

    /// The outcome, once the stream has ended and the process exited.
    ///
    /// # Errors
    /// [`AgentError`] classified for the retry policy.
    fn finish(self, exit: Exit) -> Result<AgentOutcome, AgentError>;
}

/// How the process ended, as far as the parser needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this status.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Classifies an HTTP status reported by a CLI.
pub fn classify_status(status: u64) -> AgentErrorKind {
    match status {
        401 | 403 => AgentErrorKind::Auth,
        429 => AgentErrorKind::RateLimited,
        529 | 503 => AgentErrorKind::Overloaded,
        500..=599 => AgentErrorKind::Crashed,
        _ => AgentErrorKind::Config,
    }
}

/// The state of a Claude Code `stream-json` stream.
///
/// ```
/// use orch_agents::stream::{ClaudeStream, Exit};
/// let mut s = ClaudeStream::new();
/// s.push_line(r#"{"type":"system","subtype":"init","session_id":"s1","model":"claude-sonnet-4-5"}"#);
/// s.push_line(r#"{"type":"result","subtype":"success","is_error":false,"result":"Done.","session_id":"s1",
///   "total_cost_usd":0.01,"num_turns":1,"usage":{"input_tokens":10,"output_tokens":5}}"#);
/// let out = s.finish(Exit::Code(0)).unwrap();
/// assert!(out.success);
/// assert_eq!(out.summary, "Done.");
/// assert_eq!(out.usage.total_tokens(), 15);
/// assert_eq!(out.session_id.as_deref(), Some("s1"));
/// ```
#[derive(Debug, Default)]
pub struct ClaudeStream {
    lines: usize,
    session_id: Option<String>,
    result: Option<Value>,
    last_text: Option<String>,
    retry_delay_ms: Option<u64>,
    /// Lines that were not JSON.
    pub malformed: Vec<Malformed>,
    /// Event types this parser does not know (kept, in order of first sight).
    pub unknown: Vec<String>,
}

impl ClaudeStream {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one line; returns the progress it carries.
    pub fn push_line(&mut self, line: &str) -> Vec<Progress> {
        let Some(v) = json_line(&mut self.lines, &mut self.malformed, line) else {
            return Vec::new();
        };
        if let Some(id) = str_of(&v, "session_id") {
            self.session_id = Some(id.to_owned());
        }
        let mut out = Vec::new();
        match str_of(&v, "type").unwrap_or("") {
            "system" => match str_of(&v, "subtype").unwrap_or("") {
                "init" => out.push(Progress::System {
                    message: format!(
                        "session {} started (model {})",
                        str_of(&v, "session_id").unwrap_or("?"),
                        str_of(&v, "model").unwrap_or("?")
                    ),
                }),
                "api_retry" => {
                    self.retry_delay_ms = v.get("retry_delay_ms").and_then(Value::as_u64);
                    out.push(Progress::System {
                        message: format!(
                            "API retry {}/{} after {} {}",
                            u64_of(&v, "attempt"),
                            u64_of(&v, "max_retries"),
                            u64_of(&v, "error_status"),
                            str_of(&v, "error").unwrap_or("")
                        ),
                    });
                }
                other => out.push(Progress::System {
                    message: format!("system event {other}"),
                }),
            },
            "assistant" => {
                let content = v.pointer("/message/content").and_then(Value::as_array);
                for block in content.into_iter().flatten() {
                    match str_of(block, "type").unwrap_or("") {
                        "text" => {
                            let text = str_of(block, "text").unwrap_or("").to_owned();
                            self.last_text = Some(text.clone());
                            out.push(Progress::Text { text });
                        }
                        "tool_use" => out.push(Progress::ToolUse {
                            name: str_of(block, "name").unwrap_or("?").to_owned(),
                            input: excerpt(
                                &block.get("input").map(Value::to_string).unwrap_or_default(),
                            ),
                        }),
                        _ => {}
                    }
                }
            }
            "user" => {
                let content = v.pointer("/message/content").and_then(Value::as_array);
                for block in content.into_iter().flatten() {
                    if str_of(block, "type") == Some("tool_result") {
                        let text = match block.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                            None => String::new(),
                        };
                        out.push(Progress::ToolResult {
                            is_error: block
                                .get("is_error")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                            excerpt: excerpt(&text),
                        });
                    }
                }
            }
            "result" => self.result = Some(v),
            other => out.push(unknown_event(&mut self.unknown, other)),
        }
        out
    }

    /// The outcome, once the stream has ended and the process exited.
    /// Failure is judged by `is_error`, not by `subtype` (a 529 ends with
    /// `subtype: success` and `is_error: true`).
    ///
    /// # Errors
    /// [`AgentError`]: max turns, overloaded, rate limited, auth, or crashed
    /// (no result line, or a non-zero exit after a successful result).
    pub fn finish(self, exit: Exit) -> Result<AgentOutcome, AgentError> {
        let Some(r) = self.result else {
            let mut msg = format!(
                "the stream ended after {} lines without a result ({exit})",
                self.lines
            );
            if let Some(m) = self.malformed.first() {
                msg.push_str(&format!("; line {} {}", m.line, m.message));
            }
            return Err(AgentError::new(AgentErrorKind::Crashed, msg));
        };
        let usage = r.get("usage").map_or_else(Usage::default, |u| Usage {
            input_tokens: u64_of(u, "input_tokens")
                + u64_of(u, "cache_creation_input_tokens")
                + u64_of(u, "cache_read_input_tokens"),
            output_tokens: u64_of(u, "output_tokens"),
            cost_usd: r
                .get("total_cost_usd")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
        });
        let text = str_of(&r, "result").map(str::to_owned);
        let is_error = r.get("is_error").and_then(Value::as_bool).unwrap_or(true);
        if is_error {
            let errors: Vec<String> = r
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let message = text
                .clone()
                .or_else(|| {
                    r.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| errors.join("; "));
            let kind = if str_of(&r, "subtype") == Some("error_max_turns")
                || str_of(&r, "terminal_reason") == Some("max_turns")
            {
                AgentErrorKind::MaxTurns
            } else if let Some(status) = r
                .get("api_error_status")
                .and_then(Value::as_u64)
                .or_else(|| api_status(&message))
            {
                // Claude Code names the status; Qwen Code (same stream
                // shape) quotes it in its message.
                classify_status(status)
            } else if str_of(&r, "api_error") == Some("connection_failed")
                || message.starts_with("API Error: Connection")
                || unreachable(&message)
            {
                // Claude Code could not reach the API (it retried on its
                // own first): an outage to back off from, not a crash.
                AgentErrorKind::Overloaded
            } else {
                AgentErrorKind::Crashed
            };
            let mut e = AgentError::new(
                kind,
                if message.is_empty() {
                    format!("{:?}", str_of(&r, "subtype"))
                } else {
                    message
                },
            )
            .with_usage(usage);
            if kind == AgentErrorKind::RateLimited {
                e.retry_after = self.retry_delay_ms.map(std::time::Duration::from_millis);
            }
            return Err(e);
        }
        if exit != Exit::Code(0) {
            return Err(AgentError::new(
                AgentErrorKind::Crashed,
                format!("claude reported success but exited with {exit:?}"),
            )
            .with_usage(usage));
        }
        Ok(AgentOutcome {
            success: true,
            summary: text.or(self.last_text).unwrap_or_default(),
            usage,
            session_id: self.session_id,
            transcript: None,
        })
    }
}

/// The state of a Codex `exec --json` stream.
///
/// Only `turn.failed` (and a non-zero exit) means failure; top-level
/// `error` lines and `error` items are retries or warnings that continue.
#[derive(Debug, Default)]
pub struct CodexStream {
    lines: usize,
    session_id: Option<String>,
    last_message: Option<String>,
    usage: Usage,
    turns_completed: u32,
    failed: Option<String>,
    /// Lines that were not JSON.
    pub malformed: Vec<Malformed>,
    /// Event types this parser does not know.
    pub unknown: Vec<String>,
}

impl CodexStream {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one line; returns the progress it carries.
    pub fn push_line(&mut self, line: &str) -> Vec<Progress> {
        let Some(v) = json_line(&mut self.lines, &mut self.malformed, line) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let item = v.get("item").cloned().unwrap_or(Value::Null);
        let item_type = str_of(&item, "type").unwrap_or("");
        match str_of(&v, "type").unwrap_or("") {
            "thread.started" => {
                self.session_id = str_of(&v, "thread_id").map(str::to_owned);
                out.push(Progress::System {
                    message: format!(
                        "thread {} started",
                        self.session_id.as_deref().unwrap_or("?")
                    ),
                });
            }
            "turn.started" => {}
            "turn.completed" => {
                self.turns_completed += 1;
                if let Some(u) = v.get("usage") {
                    self.usage += Usage {
                        input_tokens: u64_of(u, "input_tokens"),
                        output_tokens: u64_of(u, "output_tokens"),
                        cost_usd: 0.0,
                    };
                }
            }
            "turn.failed" => {
                let msg = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("turn failed")
                    .to_owned();
                out.push(Progress::System {
                    message: format!("turn failed: {msg}"),
                });
                self.failed = Some(msg);
            }
            "error" => out.push(Progress::System {
                message: format!(
                    "error (continuing): {}",
                    str_of(&v, "message").unwrap_or("?")
                ),
            }),
            "item.started" if item_type == "command_execution" => out.push(Progress::ToolUse {
                name: "shell".into(),
                input: excerpt(str_of(&item, "command").unwrap_or("")),
            }),
            "item.completed" => match item_type {
                "agent_message" => {
                    let text = str_of(&item, "text").unwrap_or("").to_owned();
                    self.last_message = Some(text.clone());
                    out.push(Progress::Text { text });
                }
                "command_execution" => out.push(Progress::ToolResult {
                    is_error: item
                        .get("exit_code")
                        .and_then(Value::as_i64)
                        .is_none_or(|c| c != 0),
                    excerpt: excerpt(str_of(&item, "aggregated_output").unwrap_or("")),
                }),
                "error" => out.push(Progress::System {
                    message: format!("warning: {}", str_of(&item, "message").unwrap_or("?")),
                }),
                "reasoning" => {}
                other => out.push(Progress::ToolUse {
                    name: other.to_owned(),
                    input: excerpt(&item.to_string()),
                }),
            },
            "item.started" | "item.updated" => {}
            other => out.push(unknown_event(&mut self.unknown, other)),
        }
        out
    }

    /// The outcome, once the stream has ended and the process exited.
    ///
    /// # Errors
    /// [`AgentError`] on `turn.failed` (classified from its message), a
    /// non-zero exit, or a stream without a completed turn.
    pub fn finish(self, exit: Exit) -> Result<AgentOutcome, AgentError> {
        let fail = |kind, msg: String, usage| Err(AgentError::new(kind, msg).with_usage(usage));
        if let Some(msg) = self.failed {
            let lower = msg.to_lowercase();
            let kind = if lower.contains("429") || lower.contains("rate limit") {
                AgentErrorKind::RateLimited
            } else if lower.contains("401")
                || lower.contains("unauthorized")
                || lower.contains("api key")
            {
                AgentErrorKind::Auth
            } else if lower.contains("overloaded") || lower.contains("503") || lower.contains("529")
            {
                AgentErrorKind::Overloaded
            } else {
                AgentErrorKind::Crashed
            };
            return fail(kind, msg, self.usage);
        }
        if exit != Exit::Code(0) {
            return fail(
                AgentErrorKind::Crashed,
                format!("codex exited with {exit:?}"),
                self.usage,
            );
        }
        if self.turns_completed == 0 {
            return fail(
                AgentErrorKind::Crashed,
                format!(
                    "the stream ended after {} lines without a completed turn",
                    self.lines
                ),
                self.usage,
            );
        }
        Ok(AgentOutcome {
            success: true,
            summary: self.last_message.unwrap_or_default(),
            usage: self.usage,
            session_id: self.session_id,
            transcript: None,
        })
    }
}

/// The state of a Gemini CLI `--output-format stream-json` stream: `init`,
/// `message` (user, then assistant deltas), `tool_use`/`tool_result`,
/// `error` (warnings) and a final `result` with `status` and `stats`.
///
/// ```
/// use orch_agents::stream::{GeminiStream, Exit};
/// let mut s = GeminiStream::new();
/// s.push_line(r#"{"type":"init","session_id":"s1","model":"gemini-2.5-pro"}"#);
/// s.push_line(r#"{"type":"message","role":"assistant","content":"Done.","delta":true}"#);
/// s.push_line(r#"{"type":"result","status":"success","stats":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}"#);
/// let out = s.finish(Exit::Code(0)).unwrap();
/// assert_eq!((out.summary.as_str(), out.usage.total_tokens()), ("Done.", 15));
/// ```
#[derive(Debug, Default)]
pub struct GeminiStream {
    lines: usize,
    session_id: Option<String>,
    /// The assistant's text since the last tool call (deltas joined).
    text: String,
    result: Option<Value>,
    /// Lines that were not JSON.
    pub malformed: Vec<Malformed>,
    /// Event types this parser does not know (kept, in order of first sight).
    pub unknown: Vec<String>,
}

impl GeminiStream {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one line; returns the progress it carries.
    pub fn push_line(&mut self, line: &str) -> Vec<Progress> {
        let Some(v) = json_line(&mut self.lines, &mut self.malformed, line) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match str_of(&v, "type").unwrap_or("") {
            "init" => {
                self.session_id = str_of(&v, "session_id").map(str::to_owned);
                out.push(Progress::System {
                    message: format!(
                        "session {} started (model {})",
                        str_of(&v, "session_id").unwrap_or("?"),
                        str_of(&v, "model").unwrap_or("?")
                    ),
                });
            }
            "message" if str_of(&v, "role") == Some("assistant") => {
                let text = str_of(&v, "content").unwrap_or("");
                if v.get("delta").and_then(Value::as_bool) != Some(true) {
                    self.text.clear();
                }
                self.text.push_str(text);
                out.push(Progress::Text {
                    text: text.to_owned(),
                });
            }
            "message" => {}
            "tool_use" => {
                self.text.clear();
                out.push(Progress::ToolUse {
                    name: str_of(&v, "tool_name").unwrap_or("?").to_owned(),
                    input: excerpt(
                        &v.get("parameters")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                    ),
                });
            }
            "tool_result" => out.push(Progress::ToolResult {
                is_error: str_of(&v, "status") != Some("success"),
                excerpt: excerpt(
                    str_of(&v, "output")
                        .or_else(|| v.pointer("/error/message").and_then(Value::as_str))
                        .unwrap_or(""),
                ),
            }),
            "error" => out.push(Progress::System {
                message: format!(
                    "{}: {}",
                    str_of(&v, "severity").unwrap_or("error"),
                    str_of(&v, "message").unwrap_or("")
                ),
            }),
            "result" => self.result = Some(v),
            other => out.push(unknown_event(&mut self.unknown, other)),
        }
        out
    }

    /// The outcome, once the stream has ended and the process exited.
    ///
    /// # Errors
    /// [`AgentError`]: the API's status when the error names one (429 rate
    /// limited, 503 overloaded, 401 auth, ...), an unreachable API as
    /// overloaded, the CLI's own exit codes (41 auth; 42, 52, 55 config; 53
    /// turn limit; 130 cancelled), else crashed.
    pub fn finish(self, exit: Exit) -> Result<AgentOutcome, AgentError> {
        let usage = self
            .result
            .as_ref()
            .and_then(|r| r.get("stats"))
            .map_or_else(Usage::default, |s| Usage {
                input_tokens: u64_of(s, "input_tokens"),
                output_tokens: u64_of(s, "output_tokens"),
                cost_usd: 0.0,
            });
        let status = self.result.as_ref().and_then(|r| str_of(r, "status"));
        if status == Some("success") && exit == Exit::Code(0) {
            return Ok(AgentOutcome {
                success: true,
                summary: self.text,
                usage,
                session_id: self.session_id,
                transcript: None,
            });
        }
        let message = self
            .result
            .as_ref()
            .and_then(|r| r.pointer("/error/message"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let kind = if let Some(status) = message.as_deref().and_then(api_status) {
            classify_status(status)
        } else if message.as_deref().is_some_and(unreachable) {
            AgentErrorKind::Overloaded
        } else {
            match exit {
                Exit::Code(41) => AgentErrorKind::Auth,
                Exit::Code(42 | 52 | 55) => AgentErrorKind::Config,
                Exit::Code(53) => AgentErrorKind::MaxTurns,
                Exit::Code(130) => AgentErrorKind::Cancelled,
                _ => AgentErrorKind::Crashed,
            }
        };
        let message = message.unwrap_or_else(|| match status {
            Some(s) => format!("gemini ended with status {s:?} ({exit})"),
            None => format!(
                "the stream ended after {} lines without a result ({exit})",
                self.lines
            ),
        });
        Err(AgentError::new(kind, message).with_usage(usage))
    }
}

/// The HTTP status an API error message quotes (`"code":429` in the JSON
/// body Gemini CLI passes on, or `status 503`).
fn api_status(message: &str) -> Option<u64> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(?:\bcode\\?"\s*:\s*|\bstatus:?\s+|API Error:?\s+)([1-5]\d\d)\b"#)
            .expect("valid regex")
    });
    RE.captures(message)?.get(1)?.as_str().parse().ok()
}

/// Whether an error message says the API could not be reached.
fn unreachable(message: &str) -> bool {
    [
        "ECONNREFUSED",
        "ECONNRESET",
        "ETIMEDOUT",
        "fetch failed",
        "socket hang up",
    ]
    .iter()
    .any(|m| message.contains(m))
}

impl StreamParser for GeminiStream {
    fn push_line(&mut self, line: &str) -> Vec<Progress> {
        GeminiStream::push_line(self, line)
    }
    fn finish(self, exit: Exit) -> Result<AgentOutcome, AgentError> {
        GeminiStream::finish(self, exit)
    }
}

impl StreamParser for ClaudeStream {
    fn push_line(&mut self, line: &str) -> Vec<Progress> {
        ClaudeStream::push_line(self, line)
    }
    fn finish(self, exit: Exit) -> Result<AgentOutcome, AgentError> {
        ClaudeStream::finish(self, exit)
    }
}

impl StreamParser for CodexStream {
    fn push_line(&mut self, line: &str) -> Vec<Progress> {
        CodexStream::push_line(self, line)
    }
    fn finish(self, exit: Exit) -> Result<AgentOutcome, AgentError> {
        CodexStream::finish(self, exit)
    }
}
