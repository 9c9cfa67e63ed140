//! Secrets out of transcripts, progress and events.

use std::sync::LazyLock;

use regex::Regex;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

static SHAPES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"sk-ant-[A-Za-z0-9_\-]{16,}",
        r"|\bsk-(?:proj-)?[A-Za-z0-9_\-]{24,}",
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}",
        r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        r"|\bxox[abposr]-[A-Za-z0-9-]{10,}",
        r"|\bAIza[0-9A-Za-z_\-]{35}",
    ))
    .expect("static regex")
});

/// Replaces known secrets in text: the values of the secret-looking
/// environment variables it was given, and API key shapes.
///
/// ```
/// let r = orch_agents::Redactor::new([("ANTHROPIC_API_KEY", "hunter2-very-secret")]);
/// assert_eq!(r.redact("key=hunter2-very-secret and sk-ant-api03-abcdefghijklmnopqrstuv"),
///            "key=[REDACTED] and [REDACTED]");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
}

/// Whether an environment variable's name says it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
        .iter()
        .any(|w| n.contains(w))
}

impl Redactor {
    /// A redactor for the secret-named variables among `env` (values shorter
    /// than 8 characters are ignored: too likely to match ordinary text).
    pub fn new<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut values: Vec<String> = env
            .into_iter()
            .filter(|(k, v)| is_secret_name(k) && v.len() >= 8)
            .map(|(_, v)| v.to_owned())
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Redactor { values }
    }

    /// A redactor for this process's own environment.
    pub fn from_process_env() -> Self {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::new(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = SHAPES.replace_all(text, REDACTED).into_owned();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), REDACTED);
            }
        }
        out
    }
}
