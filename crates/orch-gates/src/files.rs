//! [`FilesGate`] and [`MetricGate`]: documents and measurements in the
//! work tree.

use std::path::PathBuf;
use std::time::Instant;

use async_trait::async_trait;
use globset::{Glob, GlobMatcher};
use orch_core::plan::{FilesGateSpec, MetricGateSpec};
use orch_core::{Evidence, Gate, GateContext, GateError, GateReport, GateSpec};

use crate::common::{
    Since, checked, config, files_under, inside, older_than_the_code, read_report, report,
    stale_or_missing,
};

/// Largest file the gates read, in bytes.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

enum PathRule {
    Literal(String),
    Glob(String, GlobMatcher),
}

/// Paths or globs must match files that are non-empty and, for documents,
/// within word bounds, containing the named terms and headings.
pub struct FilesGate {
    name: String,
    spec: FilesGateSpec,
    rules: Vec<PathRule>,
}

impl std::fmt::Debug for FilesGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesGate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl FilesGate {
    /// A gate for `spec`.
    ///
    /// # Errors
    /// [`GateError`] (config) for an invalid glob, no paths, or min above max.
    pub fn new(spec: FilesGateSpec) -> Result<Self, GateError> {
        let name = checked(GateSpec::Files(spec.clone()))?;
        let rules = spec
            .paths
            .iter()
            .map(|p| {
                if p.contains(['*', '?', '[', '{']) {
                    Glob::new(p)
                        .map(|g| PathRule::Glob(p.clone(), g.compile_matcher()))
                        .map_err(|e| config(&name, format!("invalid glob {p:?}: {e}")))
                } else {
                    Ok(PathRule::Literal(p.clone()))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(FilesGate { name, spec, rules })
    }
}

/// The lines of a Markdown document outside code fences (``` or ~~~):
/// what the document says, not what it quotes.
fn outside_fences(text: &str) -> impl Iterator<Item = &str> {
    // As CommonMark: a fence is 3+ backticks or tildes indented at most 3
    // spaces; it closes only on a run of the same character at least as
    // long with nothing after it.
    let mut fence: Option<(char, usize)> = None;
    let run = |t: &str| -> Option<(char, usize, bool)> {
        let c = t.chars().next().filter(|c| matches!(c, '`' | '~'))?;
        let n = t.chars().take_while(|x| *x == c).count();
        (n >= 3).then(|| (c, n, t[n..].trim().is_empty()))
    };
    text.lines().filter(move |line| {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let t = line.trim_start();
        let marker = if indent <= 3 { run(t) } else { None };
        match (fence, marker) {
            (None, Some((c, n, _))) => {
                fence = Some((c, n));
                false
            }
            (Some((open, len)), Some((c, n, bare))) if c == open && n >= len && bare => {
                fence = None;
                false
            }
            (None, None) => true,
            (Some(_), _) => false,
        }
    })
}

/// Words of a Markdown document outside code fences: whitespace-separated
/// tokens with at least one letter or digit.
pub fn word_count(text: &str) -> u32 {
    outside_fences(text)
        .map(|line| {
            line.split_whitespace()
                .filter(|w| w.chars().any(char::is_alphanumeric))
                .count() as u32
        })
        .sum()
}

/// Whether the document has a heading (`#` to `######`, then a space)
/// outside code fences whose text contains `section`.
fn has_heading(text: &str, section: &str) -> bool {
    let want = section.to_lowercase();
    outside_fences(text).any(|l| {
        // A heading is indented at most 3 spaces (4 make it code).
        let t = l.trim_start_matches(' ');
        if l.len() - t.len() > 3 {
            return false;
        }
        let hashes = t.len() - t.trim_start_matches('#').len();
        (1..=6).contains(&hashes)
            && t[hashes..].starts_with([' ', '\t'])
            && t[hashes..].trim().to_lowercase().contains(&want)
    })
}

#[async_trait]
impl Gate for FilesGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError> {
        let started = Instant::now();
        let s = &self.spec;
        let mut listing: Option<Vec<(String, PathBuf)>> = None;
        let mut problems: Vec<String> = Vec::new();
        let mut checked = 0;
        let mut words_seen = None;
        for rule in &self.rules {
            let matched: Vec<(String, PathBuf)> = match rule {
                PathRule::Literal(p) => {
                    let path = inside(&self.name, &ctx.workdir, p)?;
                    if path.is_file() {
                        vec![(p.clone(), path)]
                    } else {
                        Vec::new()
                    }
                }
                PathRule::Glob(_, m) => listing
                    .get_or_insert_with(|| files_under(&ctx.workdir, false))
                    .iter()
                    .filter(|(rel, _)| m.is_match(rel))
                    .cloned()
                    .collect(),
            };
            if matched.is_empty() {
                let p = match rule {
                    PathRule::Literal(p) | PathRule::Glob(p, _) => p,
                };
                problems.push(format!("no file matches {p}"));
                continue;
            }
            for (rel, path) in matched {
                checked += 1;
                let meta = std::fs::metadata(&path).ok();
                let len = meta.map_or(0, |m| m.len());
                if len > MAX_FILE_BYTES {
                    problems.push(format!("{rel} is larger than {MAX_FILE_BYTES} bytes"));
                    continue;
                }
                // Whitespace (any: tabs, no-break and zero-width spaces, a
                // byte order mark) and control characters are not content.
                let blank = |b: &[u8]| {
                    String::from_utf8_lossy(b).chars().all(|c| {
                        c.is_whitespace()
                            || c.is_control()
                            || matches!(c, '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}')
                    })
                };
                if s.non_empty && (len == 0 || std::fs::read(&path).is_ok_and(|b| blank(&b))) {
                    problems.push(format!(
                        "{rel} is empty{}",
                        if len > 0 { " (only whitespace)" } else { "" }
                    ));
                    continue;
                }
                let needs_text = s.min_words.is_some()
                    || s.max_words.is_some()
                    || !s.contains.is_empty()
                    || !s.sections.is_empty();
                if !needs_text {
                    continue;
                }
                let text = match std::fs::read(&path) {
                    Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                    Err(e) => {
                        problems.push(format!("cannot read {rel}: {e}"));
                        continue;
                    }
                };
                let words = word_count(&text);
                words_seen.get_or_insert(words);
                if let Some(lo) = s.min_words.filter(|lo| words < *lo) {
                    problems.push(format!(
                        "{rel} has {words} words; at least {lo} are required"
                    ));
                }
                if let Some(hi) = s.max_words.filter(|hi| words > *hi) {
                    problems.push(format!("{rel} has {words} words; at most {hi} are allowed"));
                }
                let lower = text.to_lowercase();
                for term in &s.contains {
                    if !lower.contains(&term.to_lowercase()) {
                        problems.push(format!("{rel} does not mention {term:?}"));
                    }
                }
                for section in &s.sections {
                    if !has_heading(&text, section) {
                        problems.push(format!("{rel} has no \"{section}\" heading"));
                    }
                }
            }
        }
        let evidence = Evidence {
            measured: words_seen.map(f64::from),
            ..Evidence::default()
        };
        let passed = problems.is_empty();
        let reason = if passed {
            format!("{checked} file(s) present and meet the rules")
        } else {
            problems.join("; ")
        };
        Ok(report(
            &self.name,
            passed,
            reason,
            evidence,
            started,
            String::new(),
        ))
    }
}

/// A number read from a JSON file (by JSON pointer) must be within bounds.
/// The file must have been written during the phase being checked.
#[derive(Debug, Clone)]
pub struct MetricGate {
    name: String,
    spec: MetricGateSpec,
}

impl MetricGate {
    /// A gate for `spec`.
    ///
    /// # Errors
    /// [`GateError`] (config) without bounds, or with a pointer that does not
    /// start with `/`.
    pub fn new(spec: MetricGateSpec) -> Result<Self, GateError> {
        let name = checked(GateSpec::Metric(spec.clone()))?;
        Ok(MetricGate { name, spec })
    }
}

#[async_trait]
impl Gate for MetricGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError> {
        let started = Instant::now();
        let s = &self.spec;
        let path = inside(&self.name, &ctx.workdir, &s.file)?;
        let fail = |reason: String, evidence: Evidence| {
            Ok(report(
                &self.name,
                false,
                reason,
                evidence,
                started,
                String::new(),
            ))
        };
        if let Some(why) = stale_or_missing(
            &path,
            &s.file,
            Since::Phase(ctx.since),
            std::time::SystemTime::now(),
        )
        .or_else(|| older_than_the_code(&ctx.workdir, &path, &s.file))
        {
            return fail(why, Evidence::default());
        }
        let bytes = match read_report(&path, &s.file) {
            Ok(b) => b,
            Err(why) => return fail(why, Evidence::default()),
        };
        let value: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return fail(
                    format!("{} is not valid JSON: {e}", s.file),
                    Evidence::default(),
                );
            }
        };
        let Some(v) = value.pointer(&s.pointer) else {
            return fail(
                format!("{} has no value at {}", s.file, s.pointer),
                Evidence::default(),
            );
        };
        let Some(x) = v.as_f64() else {
            return fail(
                format!("{}{} is {v}, not a number", s.file, s.pointer),
                Evidence::default(),
            );
        };
        let evidence = Evidence {
            measured: Some(x),
            ..Evidence::default()
        };
        let what = format!("{}{} = {x}", s.file, s.pointer);
        if let Some(max) = s.max.filter(|m| x > *m) {
            return fail(format!("{what}, above the maximum {max}"), evidence);
        }
        if let Some(min) = s.min.filter(|m| x < *m) {
            return fail(format!("{what}, below the minimum {min}"), evidence);
        }
        let bounds = match (s.min, s.max) {
            (Some(lo), Some(hi)) => format!("within {lo}..={hi}"),
            (None, Some(hi)) => format!("at most {hi}"),
            (Some(lo), None) => format!("at least {lo}"),
            (None, None) => String::new(),
        };
        Ok(report(
            &self.name,
            true,
            format!("{what}, {bounds}"),
            evidence,
            started,
            String::new(),
        ))
    }
}
