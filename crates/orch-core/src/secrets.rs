//! Secrets: the one pattern set that finds them and the one [`Redactor`]
//! that removes them.
//!
//! Every text that leaves a process orch runs and reaches the journal, a
//! state file, a prompt, a transcript, a log line or stderr goes through a
//! [`Redactor`]; the secret-scan gate and the scan before each checkpoint
//! commit use the same [`SECRET_PATTERNS`]. A redactor also knows the
//! secret *values* of the run (every environment variable whose name says
//! it holds one, every password in a URL it was given) and removes them
//! wherever they appear, also base64- and URL-encoded.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Secret values shorter than this are not redacted as values (they would
/// match ordinary words); the patterns still apply.
pub const MIN_SECRET_LEN: usize = 6;

/// A kind of secret, found by its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretPattern {
    /// What it is (`"AWS access key id"`), as a finding names it.
    pub name: &'static str,
    /// The regular expression; its group `s` is the secret (`password=`
    /// stays, its value goes). A token's start is a word boundary or a
    /// JSON escape (`\n`), as agents' event streams print text.
    pub regex: &'static str,
    /// What the secret must also hold to count (a value that is one word,
    /// `CACHE_KEY=user_profile`, is not a secret).
    pub needs: Needs,
}

/// What a [`SecretPattern`]'s secret must hold besides its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing more.
    Shape,
    /// A character that is not a letter (`"Password"` is a label).
    NonLetter,
    /// A letter and a digit (`MAX_TOKENS=200000` is a number).
    LetterAndDigit,
}

impl Needs {
    /// Whether `secret` holds what is needed.
    pub fn met(self, secret: &str) -> bool {
        match self {
            Needs::Shape => true,
            Needs::NonLetter => secret.chars().any(|c| !c.is_alphabetic()),
            Needs::LetterAndDigit => {
                secret.chars().any(char::is_alphabetic)
                    && secret.chars().any(|c| c.is_ascii_digit())
            }
        }
    }
}

/// The shapes of secrets, used by the redactor, the secret-scan gate and
/// the scan before each commit. Thresholds are low on purpose: short
/// keys (`sk-ant-xxxx`) are still keys.
pub const SECRET_PATTERNS: &[SecretPattern] = &[
    SecretPattern {
        name: "private key",
        needs: Needs::Shape,
        regex: r"(?P<s>-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----(?:(?s:.*?)-----END (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----|[^\n]*))",
    },
    SecretPattern {
        name: "AWS access key id",
        needs: Needs::Shape,
        regex: r"(?:^|[^A-Za-z0-9_]|\\[ntr])(?P<s>(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})(?-u:\b)",
    },
    SecretPattern {
        name: "AWS secret access key",
        needs: Needs::Shape,
        regex: r#"(?i:aws_?secret_?(?:access_?)?key)["']?\s*[:=]\s*["']?(?P<s>[A-Za-z0-9/+=]{30,})"#,
    },
    SecretPattern {
        name: "Anthropic API key",
        needs: Needs::Shape,
        regex: r"(?:^|[^A-Za-z0-9_]|\\[ntr])(?P<s>sk-ant-[A-Za-z0-9_\-]{4,})",
    },
    SecretPattern {
        name: "OpenAI API key",
        needs: Needs::Shape,
        regex: r"(?:^|[^A-Za-z0-9_]|\\[ntr])(?P<s>sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,})",
    },
    SecretPattern {
        name: "GitHub token",
        needs: Needs::Shape,
        regex: r"(?:^|[^A-Za-z0-9_]|\\[ntr])(?P<s>gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
    },
    SecretPattern {
        name: "Slack token",
        needs: Needs::Shape,
        regex: r"(?:^|[^A-Za-z0-9_]|\\[ntr])(?P<s>xox[abposr]-[A-Za-z0-9-]{10,})",
    },
    SecretPattern {
        name: "Google API key",
        needs: Needs::Shape,
        regex: r"(?:^|[^A-Za-z0-9_]|\\[ntr])(?P<s>AIza[0-9A-Za-z_\-]{35})",
    },
    SecretPattern {
        name: "JSON web token",
        needs: Needs::Shape,
        regex: r"(?:^|[^A-Za-z0-9_]|\\[ntr])(?P<s>eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,})",
    },
    SecretPattern {
        name: "password in a URL",
        needs: Needs::Shape,
        regex: r#"[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@"',]*:(?P<s>[^/\s@$<{%"',\[\\][^/\s@"',\\]*)@"#,
    },
    SecretPattern {
        name: "hard-coded credential",
        needs: Needs::NonLetter,
        regex: r#"(?i:(?-u:\b)[a-z0-9_]*(?:password|passwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|private[_-]?key)["']?\s*[:=]\s*["'])(?P<s>[^"'\s$<{%\[][^"'\s]{5,})["']"#,
    },
    SecretPattern {
        name: "secret in a variable",
        needs: Needs::LetterAndDigit,
        regex: r"(?:^|[^A-Za-z0-9_]|\\[ntr])[A-Z][A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)=(?P<s>[^\s$'\x22{<%\[\\][^\s'\x22\\]{7,})",
    },
];

/// All patterns as one regex (`(?:p0)|(?:p1)|…`), for one pass over a
/// text, with the index of each pattern's `s` group (renamed `s0`, `s1`,
/// … after its pattern).
fn combined() -> &'static (Regex, Vec<usize>) {
    static ALL: LazyLock<(Regex, Vec<usize>)> = LazyLock::new(|| {
        let parts: Vec<String> = SECRET_PATTERNS
            .iter()
            .enumerate()
            .map(|(i, p)| format!("(?:{})", p.regex.replace("(?P<s>", &format!("(?P<s{i}>"))))
            .collect();
        let re = Regex::new(&parts.join("|")).expect("SECRET_PATTERNS combine");
        let groups = (0..SECRET_PATTERNS.len())
            .map(|i| {
                re.capture_names()
                    .position(|n| n == Some(&format!("s{i}")))
                    .expect("every pattern has a group `s`")
            })
            .collect();
        (re, groups)
    });
    &ALL
}

/// The secrets `text` holds, by pattern: the span of each one whose
/// pattern's [`Needs`] it meets.
fn shaped(text: &str) -> impl Iterator<Item = (usize, regex::Match<'_>)> + '_ {
    let (all, groups) = combined();
    all.captures_iter(text).filter_map(move |caps| {
        groups.iter().enumerate().find_map(|(i, g)| {
            let m = caps.get(*g)?;
            SECRET_PATTERNS[i].needs.met(m.as_str()).then_some((i, m))
        })
    })
}

/// A private key block: a BEGIN line followed by key material (after any
/// `Proc-Type:`-style headers), what [`Redactor::findings`] reports; a
/// BEGIN line alone is a PEM parser's constant, not a key.
fn key_block() -> &'static Regex {
    static BLOCK: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----[ \t]*\r?\n(?:[A-Za-z-]+:[^\n]*\n)*[ \t]*[A-Za-z0-9+/=.]{4,}",
        )
        .expect("static regex")
    });
    &BLOCK
}

/// Whether a known value is worth redacting as a value: at least
/// [`MIN_SECRET_LEN`] characters, and not one word of one kind of
/// character unless long (a password `postgres` would redact every
/// `tokio-postgres`; `hunter22` and a 40-character token count).
fn strong(v: &str) -> bool {
    let kinds = [
        v.chars().any(|c| c.is_ascii_lowercase()),
        v.chars().any(|c| c.is_ascii_uppercase()),
        v.chars().any(|c| c.is_ascii_digit()),
        v.chars().any(|c| !c.is_ascii_alphanumeric()),
    ];
    v.len() >= MIN_SECRET_LEN && (kinds.iter().filter(|k| **k).count() >= 2 || v.len() >= 16)
}

/// Whether an environment variable's name says it holds a secret.
///
/// ```
/// assert!(orch_core::secrets::is_secret_name("ANTHROPIC_API_KEY"));
/// assert!(orch_core::secrets::is_secret_name("db_password"));
/// assert!(!orch_core::secrets::is_secret_name("PATH"));
/// ```
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "PRIVATE",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// The password in a URL (`scheme://user:password@host/…`), if it has one.
///
/// ```
/// assert_eq!(orch_core::secrets::url_password("postgres://orch:s3cr3t@db:5432/x"), Some("s3cr3t"));
/// assert_eq!(orch_core::secrets::url_password("https://example.com/a:b@c"), None);
/// ```
pub fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// Removes secrets from text: every match of [`SECRET_PATTERNS`], and the
/// secret values it was given, as they are and base64- or URL-encoded.
///
/// Cheap to clone (values are shared) and cheap on text with no secret
/// (one regex pass, no allocation).
///
/// ```
/// use orch_core::secrets::Redactor;
/// let r = Redactor::new([("ANTHROPIC_API_KEY", "hunter2-very-secret"), ("PATH", "/usr/bin")]);
/// assert_eq!(r.redact("key=hunter2-very-secret and sk-ant-api03-abcd"), "key=[REDACTED] and [REDACTED]");
/// // base64 of the value, as `echo -n … | base64` prints it:
/// assert_eq!(r.redact("aHVudGVyMi12ZXJ5LXNlY3JldA=="), "[REDACTED]");
/// assert_eq!(r.redact("DATABASE_URL=postgres://orch:pw-123456@db/x"), "DATABASE_URL=postgres://orch:[REDACTED]@db/x");
/// assert_eq!(r.redact("/usr/bin"), "/usr/bin");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// The known values and their encodings, longest first; `None` when
    /// there are none.
    values: Option<std::sync::Arc<(Vec<String>, Regex)>>,
}

impl Redactor {
    /// A redactor for the values of `env` whose names look secret
    /// ([`is_secret_name`]), and the password of every value that is a
    /// URL with one.
    pub fn new<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut values = Vec::new();
        for (k, v) in env {
            if is_secret_name(k) {
                values.push(v.to_owned());
            }
            if let Some(p) = url_password(v) {
                values.push(p.to_owned());
            }
        }
        Redactor::default().with_values(values)
    }

    /// A redactor for this process's own environment.
    pub fn from_process_env() -> Self {
        let env: Vec<(String, String)> = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        Self::new(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// A redactor for a run of `plan`: the secrets of this process's
    /// environment and those the plan makes known
    /// ([`Plan::known_secrets`](crate::Plan::known_secrets)).
    pub fn for_plan(plan: &crate::Plan) -> Self {
        Self::from_process_env().with_values(plan.known_secrets())
    }

    /// This redactor, also removing `values` (an API key read from a
    /// file, the password of a database URL given on the command line).
    /// Values shorter than [`MIN_SECRET_LEN`] are ignored.
    #[must_use]
    pub fn with_values(self, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let mut all: Vec<String> = self
            .values
            .as_ref()
            .map(|v| v.0.clone())
            .unwrap_or_default();
        for v in values {
            let v: String = v.into();
            let v = v.trim();
            if strong(v) {
                all.extend(encodings(v));
            }
            // A value of many lines (a key file) is found line by line
            // too, as output streamed a line at a time shows it.
            if v.contains('\n') {
                for line in v.lines().map(str::trim) {
                    if strong(line) {
                        all.push(line.to_owned());
                    }
                }
            }
        }
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        if all.is_empty() {
            return Redactor { values: None };
        }
        let alternation: Vec<String> = all.iter().map(|v| regex::escape(v)).collect();
        let re = Regex::new(&alternation.join("|")).expect("escaped literals compile");
        Redactor {
            values: Some(std::sync::Arc::new((all, re))),
        }
    }

    /// This redactor, also removing the password of `url`, if it has one.
    #[must_use]
    pub fn with_url(self, url: &str) -> Self {
        match url_password(url) {
            Some(p) => self.with_values([p]),
            None => self,
        }
    }

    /// `text` with every secret replaced by [`REDACTED`]; borrowed when
    /// there was none.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        if let Some(values) = &self.values
            && values.1.is_match(&out)
        {
            out = Cow::Owned(values.1.replace_all(&out, REDACTED).into_owned());
        }
        if !combined().0.is_match(&out) {
            return out;
        }
        let mut result = String::with_capacity(out.len());
        let mut last = 0;
        for (_, secret) in shaped(&out) {
            result.push_str(&out[last..secret.start()]);
            result.push_str(REDACTED);
            last = secret.end();
        }
        if last == 0 {
            return out;
        }
        result.push_str(&out[last..]);
        Cow::Owned(result)
    }

    /// A redactor for text that arrives a line at a time (an agent's
    /// output stream): it also removes every line of a private key block,
    /// which no pattern recognises a line at a time.
    ///
    /// ```
    /// let r = orch_core::secrets::Redactor::default();
    /// let mut lines = r.lines();
    /// let out: Vec<String> = ["a", "-----BEGIN RSA PRIVATE KEY-----", "MIIEow", "-----END RSA PRIVATE KEY-----", "b"]
    ///     .iter()
    ///     .map(|l| lines.redact(l).into_owned())
    ///     .collect();
    /// assert_eq!(out, ["a", "[REDACTED]", "[REDACTED]", "[REDACTED]", "b"]);
    /// ```
    pub fn lines(&self) -> Lines<'_> {
        Lines {
            redactor: self,
            in_key: false,
        }
    }

    /// [`Redactor::redact`] in place.
    pub fn redact_in_place(&self, text: &mut String) {
        if let Cow::Owned(s) = self.redact(text) {
            *text = s;
        }
    }

    /// Where `text` holds a secret, without saying what it is: the 1-based
    /// line and the kind ([`SecretPattern::name`], or "a secret value of
    /// this run" for a known value), one per line and kind.
    ///
    /// ```
    /// use orch_core::secrets::{KNOWN_VALUE, Redactor};
    /// let r = Redactor::default().with_values(["Zq9-private-value"]);
    /// assert_eq!(
    ///     r.findings("ok\nkey: AKIAABCDEFGHIJKLMNOP\nZq9-private-value\n"),
    ///     [(2, "AWS access key id"), (3, KNOWN_VALUE)],
    /// );
    /// ```
    pub fn findings(&self, text: &str) -> Vec<(usize, &'static str)> {
        let mut out = Vec::new();
        let all = &combined().0;
        let values = self.values.as_ref().map(|v| &v.1);
        if !all.is_match(text) && !values.is_some_and(|v| v.is_match(text)) {
            return out;
        }
        let line_of = |at: usize| text[..at].matches('\n').count() + 1;
        for m in key_block().find_iter(text) {
            out.push((line_of(m.start()), SECRET_PATTERNS[0].name));
        }
        for (i, line) in text.lines().enumerate() {
            if values.is_some_and(|v| v.is_match(line)) {
                out.push((i + 1, KNOWN_VALUE));
            }
            if all.is_match(line) {
                let mut kinds: Vec<usize> =
                    shaped(line).map(|(k, _)| k).filter(|k| *k != 0).collect();
                kinds.dedup();
                out.extend(kinds.into_iter().map(|k| (i + 1, SECRET_PATTERNS[k].name)));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A [`Redactor`] for text read a line at a time ([`Redactor::lines`]).
#[derive(Debug)]
pub struct Lines<'r> {
    redactor: &'r Redactor,
    in_key: bool,
}

impl Lines<'_> {
    /// `line` without secrets, given the lines before it.
    pub fn redact<'t>(&mut self, line: &'t str) -> Cow<'t, str> {
        let marks = |what: &str| line.contains(what) && line.contains("PRIVATE KEY");
        if self.in_key {
            if marks("-----END ") {
                self.in_key = false;
            }
            return Cow::Borrowed(REDACTED);
        }
        if marks("-----BEGIN ") && !marks("-----END ") {
            self.in_key = true;
        }
        self.redactor.redact(line)
    }
}

/// What [`Redactor::findings`] calls a known secret value it found.
pub const KNOWN_VALUE: &str = "a secret value of this run";

/// What git would store of a path of the work tree, read to scan it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A regular file's bytes, or a link's target name (git stores a link
    /// as that; it is never followed, out of the tree or into a FIFO).
    Bytes(Vec<u8>),
    /// A regular file larger than the limit (its size): not read, so it
    /// cannot be shown to hold no secret.
    TooLarge(u64),
    /// Something git stores no blob of (a directory, a FIFO, a socket).
    NotABlob,
    /// Nothing there (removed, or a name that does not lead back to it).
    Missing,
}

/// What git would store of `path`, read as a secret scan reads it: files
/// up to `max` bytes.
///
/// # Errors
/// When a regular file cannot be read.
pub fn stored(path: &std::path::Path, max: u64) -> std::io::Result<Stored> {
    Ok(match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_symlink() => Stored::Bytes(
            std::fs::read_link(path)
                .map(|t| t.as_os_str().as_encoded_bytes().to_vec())
                .unwrap_or_default(),
        ),
        Ok(m) if !m.is_file() => Stored::NotABlob,
        Ok(m) if m.len() > max => Stored::TooLarge(m.len()),
        Ok(_) => Stored::Bytes(std::fs::read(path)?),
        Err(_) => Stored::Missing,
    })
}

/// The texts a file's bytes hold, for scanning: the bytes as UTF-8 (a
/// binary file's readable parts too), and as UTF-16 when they look like
/// it (a byte order mark, or every other byte zero).
pub fn texts(bytes: &[u8]) -> Vec<Cow<'_, str>> {
    let mut out = vec![String::from_utf8_lossy(bytes)];
    if let Some(t) = utf16(bytes) {
        out.push(Cow::Owned(t));
    }
    out
}

fn utf16(bytes: &[u8]) -> Option<String> {
    let (le, body) = match bytes {
        [0xFF, 0xFE, rest @ ..] => (true, rest),
        [0xFE, 0xFF, rest @ ..] => (false, rest),
        _ => {
            let head = &bytes[..bytes.len().min(64)];
            if head.len() < 4 {
                return None;
            }
            let odd_zero = head.iter().skip(1).step_by(2).all(|b| *b == 0);
            let even_zero = head.iter().step_by(2).all(|b| *b == 0);
            match (odd_zero, even_zero) {
                (true, false) => (true, bytes),
                (false, true) => (false, bytes),
                _ => return None,
            }
        }
    };
    let units = body.chunks_exact(2).map(|p| {
        if le {
            u16::from_le_bytes([p[0], p[1]])
        } else {
            u16::from_be_bytes([p[0], p[1]])
        }
    });
    Some(
        char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    )
}

/// `v` as it stands inside a JSON string (what serde_json writes).
fn json_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// `v` made safe as HTML text or a quoted attribute value (`&amp;`,
/// `&lt;`, `&gt;`, `&quot;`, `&#39;`). A page that escapes with it has
/// every known secret found by the [`Redactor`] in its escaped form too.
///
/// ```
/// assert_eq!(orch_core::secrets::html_escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
/// ```
pub fn html_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `v` and the forms it takes when encoded: URL-encoded, inside a JSON
/// string, in HTML text, and base64 (standard and URL-safe alphabets) at
/// each of the three alignments it can have inside a longer encoded text
/// (only the characters that depend on `v` alone).
fn encodings(v: &str) -> Vec<String> {
    let mut out = vec![v.to_owned()];
    for form in [url_encode(v), json_escape(v), html_escape(v)] {
        if form != v && !out.contains(&form) {
            out.push(form);
        }
    }
    let bytes = v.as_bytes();
    // Exactly as `base64` prints it, padding included.
    let mut whole = base64(bytes);
    while !whole.len().is_multiple_of(4) {
        whole.push('=');
    }
    out.push(whole.replace('+', "-").replace('/', "_"));
    out.push(whole);
    for k in 0..3usize {
        let mut padded = vec![0u8; k];
        padded.extend_from_slice(bytes);
        let enc = base64(&padded);
        let start = (8 * k).div_ceil(6);
        let end = 8 * (k + bytes.len()) / 6;
        if end > start + MIN_SECRET_LEN {
            let part = &enc[start..end];
            out.push(part.to_owned());
            out.push(part.replace('+', "-").replace('/', "_"));
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn url_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles_and_finds_its_example() {
        let examples = [
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "AKIAABCDEFGHIJKLMNOP",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "sk-ant-xxxx",
            "sk-proj-abcdefghijklmnop1234",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "xoxb-1234567890-abcdef",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "postgres://orch:hunter22@db:5432/x",
            "password = \"correct-horse\"",
            "MY_SERVICE_TOKEN=abcdef123456",
        ];
        assert_eq!(examples.len(), SECRET_PATTERNS.len());
        for (p, text) in SECRET_PATTERNS.iter().zip(examples) {
            let re = Regex::new(p.regex).unwrap();
            assert!(re.is_match(text), "{}: {text}", p.name);
            let out = Redactor::default().redact(text).into_owned();
            assert!(out.contains(REDACTED), "{}: {out}", p.name);
        }
    }

    /// A known value is found as JSON and HTML show it, and removed whole:
    /// what is left stays valid JSON.
    #[test]
    fn a_known_value_is_found_escaped_for_json_and_html() {
        let secret = r#"p4ss"w&rd<9>\"#;
        let r = Redactor::default().with_values([secret]);
        let json =
            serde_json::to_string(&serde_json::json!({ "note": format!("x {secret}") })).unwrap();
        let out = r.redact(&json).into_owned();
        assert_eq!(out, format!(r#"{{"note":"x {REDACTED}"}}"#));
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
        let html = "<td>p4ss&quot;w&amp;rd&lt;9&gt;\\</td>";
        assert_eq!(r.redact(html), format!("<td>{REDACTED}</td>"));
    }

    /// Word boundaries are ASCII ones: a secret beside a non-ASCII letter
    /// is still a secret, and text with non-ASCII characters (an agent's
    /// "✓", a page's "·") is scanned by the regex's DFA rather than its
    /// much slower NFA, which a Unicode boundary forced on such text.
    #[test]
    fn a_secret_beside_a_non_ascii_letter_is_found() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("✓ key AKIAABCDEFGHIJKLMNOPé done"),
            "✓ key [REDACTED]é done"
        );
        assert_eq!(
            r.redact("·password = \"correct-horse\""),
            "·password = \"[REDACTED]\""
        );
    }

    #[test]
    fn only_the_secret_part_goes_where_the_pattern_says() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("password = \"correct-horse\""),
            "password = \"[REDACTED]\""
        );
        assert_eq!(
            r.redact("API_TOKEN=abcdef123456 next"),
            "API_TOKEN=[REDACTED] next"
        );
        assert_eq!(
            r.redact("see https://u:pw-secret@host/x"),
            "see https://u:[REDACTED]@host/x"
        );
        // References, not values, stay.
        assert_eq!(
            r.redact("API_TOKEN=${{ secrets.TOKEN }}"),
            "API_TOKEN=${{ secrets.TOKEN }}"
        );
        assert_eq!(
            r.redact("https://u:$PASSWORD@host"),
            "https://u:$PASSWORD@host"
        );
        assert!(matches!(r.redact("nothing to see"), Cow::Borrowed(_)));
    }

    /// What ordinary code and orch's own redacted text look like is not a
    /// secret: a redactor or a commit scan that fired on these would
    /// mangle output and refuse honest commits.
    #[test]
    fn ordinary_code_is_not_a_secret() {
        let r = Redactor::default().with_values(["postgres", "changeme"]);
        for text in [
            "MAX_TOKENS=200000",
            "TOKENIZER_NAME=bert-base-uncased",
            "CACHE_KEY=user_profile",
            "API_KEY=os.getenv(\"API_KEY\")",
            "ANTHROPIC_API_KEY=your-api-key-here",
            "{\"password\": \"Password\"}",
            "password = \"${DB_PASSWORD}\"",
            "API_KEY=[REDACTED] and password = \"[REDACTED]\" and https://u:[REDACTED]@host",
            "{\"proxy\":\"http://localhost:3000\",\"owner\":\"ops@x.com\"}",
            "tokio-postgres = \"0.7\"  # changeme",
        ] {
            assert_eq!(r.redact(text), text, "{text}");
            assert_eq!(r.findings(text), [], "{text}");
        }
        // A PEM parser's header constant is redacted in output (cheap to
        // over-redact) but is no finding: no key block follows it.
        let pem = "const H: &str = \"-----BEGIN RSA PRIVATE KEY-----\";";
        assert_eq!(r.findings(pem), []);
    }

    /// Agents' event streams print text JSON-escaped: a token after `\n`
    /// is still a token.
    #[test]
    fn tokens_after_json_escapes_are_found() {
        let r = Redactor::default();
        let line =
            r#"{"text":"done\nghp_R4nd0mT0k3nF0rT3st1ngPurp0s3sOnly12\tAKIAABCDEFGHIJKLMNOP"}"#;
        assert_eq!(r.redact(line), r#"{"text":"done\n[REDACTED]\t[REDACTED]"}"#);
    }

    #[test]
    fn values_are_found_encoded_at_any_alignment() {
        let secret = "Zq9-very-private-value";
        let r = Redactor::default().with_values([secret]);
        for prefix in ["", "a", "ab", "abc"] {
            let text = format!("{prefix}{secret}!");
            let b64 = base64(text.as_bytes());
            let out = r.redact(&b64);
            assert!(out.contains(REDACTED), "{prefix:?}: {b64} -> {out}");
        }
        assert_eq!(r.redact("q=Zq9-very-private-value"), "q=[REDACTED]");
        let r = Redactor::default().with_values(["p@ss word/+x"]);
        assert_eq!(r.redact("u=p%40ss%20word%2F%2Bx&"), "u=[REDACTED]&");
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg");
        assert_eq!(base64(b"fo"), "Zm8");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
