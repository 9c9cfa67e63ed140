//! Agents that call an LLM API over HTTP: the Anthropic Messages API and
//! any OpenAI-compatible Chat Completions endpoint (so local servers work
//! too). They produce text artifacts (plans, ADRs, reviews) written into
//! the work tree.

use std::time::Duration;

use async_trait::async_trait;
use orch_core::{
    Agent, AgentContext, AgentError, AgentErrorKind, AgentOutcome, AgentTask, Progress, Usage,
};
use serde_json::{Value, json};

use orch_core::secrets::Redactor;

/// Which API an [`HttpAgent`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST {base}/v1/messages` with `x-api-key`.
    Anthropic,
    /// `POST {base}/chat/completions` with `Authorization: Bearer`.
    OpenAiCompatible,
}

/// An agent that sends the prompt to an LLM API and writes the answer to
/// `output_file` in the work tree.
///
/// The API key is read from the named environment variable when a task
/// runs; it is never stored in the agent, logged, or shown by `Debug`.
/// Statuses map to error kinds the retry layer acts on: 429 → rate limited
/// (with `retry-after`), 529/5xx → overloaded, 401/403 → auth, other 4xx →
/// config (no retry), an unreadable body → protocol.
#[derive(Clone)]
pub struct HttpAgent {
    api: Api,
    base_url: String,
    model: String,
    api_key_env: Option<String>,
    max_tokens: u32,
    output_file: Option<String>,
    client: reqwest::Client,
    redactor: Redactor,
}

/// Builds an [`HttpAgent`] ([`HttpAgent::builder`]).
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpAgentBuilder {
    api: Api,
    base_url: String,
    model: String,
    api_key_env: Option<String>,
    max_tokens: u32,
    output_file: Option<String>,
    timeout: Duration,
    redactor: Option<Redactor>,
}

impl HttpAgentBuilder {
    /// The environment variable holding the API key (none: no key sent).
    pub fn api_key_env(mut self, var: impl Into<String>) -> Self {
        self.api_key_env = Some(var.into());
        self
    }

    /// The most tokens an answer may have (default 4096).
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    /// The file in the work tree the answer is written to (default: none,
    /// the answer is only the summary).
    pub fn output_file(mut self, path: impl Into<String>) -> Self {
        self.output_file = Some(path.into());
        self
    }

    /// How long one request may take (default 30 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Redacts with `redactor` (and the base URL's password) instead of
    /// the secrets of this process's environment.
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// The agent.
    ///
    /// # Errors
    /// [`AgentErrorKind::Config`] when the HTTP client cannot be built.
    pub fn build(self) -> Result<HttpAgent, AgentError> {
        let config_error =
            |e: String| AgentError::new(AgentErrorKind::Config, format!("HTTP client: {e}"));
        // TLS with a provider of its own (ring) and the system's roots:
        // nothing process-wide is installed behind the embedder's back.
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(self.timeout)
            .build()
            .map_err(|e| config_error(e.to_string()))?;
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        Ok(HttpAgent {
            api: self.api,
            redactor: self
                .redactor
                .unwrap_or_else(Redactor::from_process_env)
                .with_url(&base_url),
            base_url,
            model: self.model,
            api_key_env: self.api_key_env,
            max_tokens: self.max_tokens,
            output_file: self.output_file,
            client,
        })
    }
}

impl std::fmt::Debug for HttpAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAgent")
            .field("api", &self.api)
            .field("base_url", &Redactor::default().redact(&self.base_url))
            .field("model", &self.model)
            .field(
                "api_key",
                &self
                    .api_key_env
                    .as_ref()
                    .map(|e| format!("${e} ({})", orch_core::secrets::REDACTED)),
            )
            .finish_non_exhaustive()
    }
}

impl HttpAgent {
    /// An agent for `api` at `base_url` asking `model`; the rest is set on
    /// the builder.
    ///
    /// ```
    /// use std::time::Duration;
    /// use orch_agents::{Api, HttpAgent};
    /// let agent = HttpAgent::builder(Api::Anthropic, "http://127.0.0.1:8080", "claude-sonnet-4-5")
    ///     .api_key_env("ANTHROPIC_API_KEY")
    ///     .max_tokens(8192)
    ///     .timeout(Duration::from_secs(300))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn builder(
        api: Api,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> HttpAgentBuilder {
        HttpAgentBuilder {
            api,
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            max_tokens: 4096,
            output_file: None,
            timeout: Duration::from_secs(30 * 60),
            redactor: None,
        }
    }

    fn request(&self, prompt: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        match self.api {
            Api::Anthropic => {
                let mut r = self
                    .client
                    .post(format!("{}/v1/messages", self.base_url))
                    .header("anthropic-version", "2023-06-01")
                    .json(&json!({"model": self.model, "max_tokens": self.max_tokens,
                        "messages": [{"role": "user", "content": prompt}]}));
                if let Some(k) = key {
                    r = r.header("x-api-key", k);
                }
                r
            }
            Api::OpenAiCompatible => {
                let mut r = self
                    .client
                    .post(format!("{}/chat/completions", self.base_url))
                    .json(&json!({"model": self.model, "max_tokens": self.max_tokens,
                        "messages": [{"role": "user", "content": prompt}]}));
                if let Some(k) = key {
                    r = r.bearer_auth(k);
                }
                r
            }
        }
    }

    /// Text and usage of a successful response body.
    fn parse(&self, body: &Value) -> Option<(String, Usage)> {
        match self.api {
            Api::Anthropic => {
                let text: String = body
                    .get("content")?
                    .as_array()?
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("");
                let u = body.get("usage")?;
                let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                Some((
                    text,
                    Usage {
                        input_tokens: n("input_tokens")
                            + n("cache_creation_input_tokens")
                            + n("cache_read_input_tokens"),
                        output_tokens: n("output_tokens"),
                        cost_usd: 0.0,
                    },
                ))
            }
            Api::OpenAiCompatible => {
                let text = body
                    .pointer("/choices/0/message/content")?
                    .as_str()?
                    .to_owned();
                let n = |k: &str| {
                    body.pointer(&format!("/usage/{k}"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                };
                Some((
                    text,
                    Usage {
                        input_tokens: n("prompt_tokens"),
                        output_tokens: n("completion_tokens"),
                        cost_usd: 0.0,
                    },
                ))
            }
        }
    }
}

fn status_error(status: u16, retry_after: Option<Duration>, body: &str) -> AgentError {
    let kind = match status {
        429 => AgentErrorKind::RateLimited,
        401 | 403 => AgentErrorKind::Auth,
        500..=599 => AgentErrorKind::Overloaded,
        _ => AgentErrorKind::Config,
    };
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    let mut e = AgentError::new(kind, format!("HTTP {status}: {detail}"));
    e.retry_after = retry_after;
    e
}

impl HttpAgent {
    /// The API key from its variable (none when the backend needs none).
    fn key(&self) -> Result<Option<String>, AgentError> {
        match &self.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Ok(Some(k)),
                _ => Err(AgentError::new(
                    AgentErrorKind::Auth,
                    format!("the API key variable {var} is not set"),
                )),
            },
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Agent for HttpAgent {
    fn backend(&self) -> &str {
        match self.api {
            Api::Anthropic => "anthropic",
            Api::OpenAiCompatible => "openai_compatible",
        }
    }

    fn check(&self, _: &orch_core::RoleName) -> Result<(), AgentError> {
        self.key().map(drop)
    }

    async fn run(&self, task: AgentTask, ctx: &AgentContext) -> Result<AgentOutcome, AgentError> {
        let key = self.key()?;
        // Everything the API sends back may echo the key (an error body, a
        // model told to repeat its input): redacted before it goes on.
        let redactor = self.redactor.clone().with_values(key.clone());
        let send = self.request(&task.prompt, key.as_deref()).send();
        let response = tokio::select! {
            r = send => r.map_err(|e| {
                // A server that cannot be reached (refused, reset, DNS) is
                // a transient outage: retried with backoff, counted by the
                // breaker, as a 5xx is; not a crash to retry at once.
                let (kind, what) = if e.is_timeout() {
                    (AgentErrorKind::TimedOut, "timed out")
                } else if e.is_connect() {
                    (AgentErrorKind::Overloaded, "could not connect")
                } else {
                    (AgentErrorKind::Crashed, "failed")
                };
                let source = std::error::Error::source(&e).map(|s| format!(" ({s})")).unwrap_or_default();
                AgentError::new(kind, redactor.redact(&format!("request to {} {what}{source}", self.base_url)))
            })?,
            () = ctx.cancel.cancelled() => return Err(AgentError::new(AgentErrorKind::Cancelled, "cancelled")),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            // Negative, NaN or too large for a Duration: not a wait.
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok());
        let body = response.text().await.map_err(|e| {
            AgentError::new(
                AgentErrorKind::Protocol,
                redactor.redact(&format!("reading the response: {e}")),
            )
        })?;
        if !(200..300).contains(&status) {
            return Err(status_error(status, retry_after, &redactor.redact(&body)));
        }
        let parsed = serde_json::from_str::<Value>(&body).ok();
        let Some((text, usage)) = parsed.as_ref().and_then(|v| self.parse(v)) else {
            // Redacted whole, then cut: a cut could leave half a key.
            let head: String = redactor.redact(&body).chars().take(200).collect();
            return Err(AgentError::new(
                AgentErrorKind::Protocol,
                format!("unexpected response body: {head}"),
            ));
        };
        let text = redactor.redact(&text).into_owned();
        ctx.progress.progress(
            &task.agent_id,
            Progress::Text {
                text: text.chars().take(500).collect(),
            },
        );
        if let Some(rel) = &self.output_file {
            let rel = rel
                .replace("{ticket}", task.ticket.id.as_str())
                .replace("{phase}", task.phase.as_str());
            if std::path::Path::new(&rel)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(AgentError::new(
                    AgentErrorKind::Config,
                    format!("output_file {rel:?} must stay in the work tree"),
                ));
            }
            let path = task.workdir.join(&rel);
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, &text));
            written.map_err(|e| {
                AgentError::new(AgentErrorKind::Crashed, format!("{}: {e}", path.display()))
            })?;
        }
        Ok(AgentOutcome {
            success: !text.trim().is_empty(),
            summary: text.chars().take(500).collect(),
            usage,
            ..AgentOutcome::default()
        })
    }
}
