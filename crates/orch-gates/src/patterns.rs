//! [`PatternsGate`]: forbidden patterns in files (secrets, PII, non-ASCII
//! log messages, your own regexes), respecting `.gitignore`.

use std::time::Instant;

use async_trait::async_trait;
use globset::{Glob, GlobSet, GlobSetBuilder};
use orch_core::plan::{BuiltinPatterns, PatternsGateSpec};
use orch_core::secrets::Stored;
use orch_core::{Evidence, Gate, GateContext, GateError, GateReport, GateSpec, Hit};
use regex::Regex;

use crate::common::{checked, config, report};
use crate::files::MAX_FILE_BYTES;

/// The secret finder of the built-in `secrets` set: patterns only (a
/// gate knows no run's values).
static SECRETS: std::sync::LazyLock<orch_core::secrets::Redactor> =
    std::sync::LazyLock::new(orch_core::secrets::Redactor::default);

/// A named rule, with an optional check that confirms a match (Luhn for
/// card numbers) to keep false alarms down.
struct Rule {
    name: String,
    regex: Regex,
    confirm: Option<fn(&str) -> bool>,
}

fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The rules of a built-in set: `(name, regex)` (none for `secrets`,
/// which is [`orch_core::secrets`]' own finder).
pub fn builtin(set: BuiltinPatterns) -> Vec<(&'static str, &'static str)> {
    match set {
        // The one set the redactor and the scan before each commit use,
        // found the same way (`Redactor::findings`), not as plain rules.
        BuiltinPatterns::Secrets => Vec::new(),
        // Word boundaries are ASCII ones (`(?-u:\b)`) and digits ASCII
        // digits: a Unicode `\b` takes no boundary between a letter of
        // another script and an address (`連絡先はmarie@example.comです`
        // would pass), and makes the regex engine leave its DFA on any
        // non-ASCII text, 20 times slower.
        BuiltinPatterns::Pii => vec![
            (
                "e-mail address",
                r"(?-u:\b)[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?-u:\b)",
            ),
            (
                "US social security number",
                r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
            ),
            (
                "payment card number",
                r"(?-u:\b)(?:[0-9][ -]?){12,18}[0-9](?-u:\b)",
            ),
            (
                "phone number",
                r"\+[0-9]{1,3}[ -]?\(?[0-9]{2,4}\)?[ -]?[0-9]{3,4}[ -]?[0-9]{3,4}(?-u:\b)",
            ),
        ],
        BuiltinPatterns::NonAsciiLogs => vec![(
            "non-ASCII in a log message",
            r#"(?:(?-u:\b)(?:log|tracing)::)?(?-u:\b)(?:trace|debug|info|warn|warning|error|println|eprintln|print|logger\.\w+|logging\.\w+|console\.\w+)!?\s*\(.*["'][^"'\n]*[^\x00-\x7F][^"'\n]*["']"#,
        )],
    }
}

/// Fails when any selected file matches a forbidden pattern; reports
/// `file:line` of each hit, up to `max_hits`. Files ignored by `.gitignore`
/// (and `.git` itself) are not scanned; binary files are skipped.
pub struct PatternsGate {
    name: String,
    include: Option<GlobSet>,
    exclude: GlobSet,
    rules: Vec<Rule>,
    /// The built-in `secrets` set: found by `Redactor::findings`.
    secrets: bool,
    max_hits: usize,
}

impl std::fmt::Debug for PatternsGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatternsGate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn globs(name: &str, patterns: &[String]) -> Result<GlobSet, GateError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| config(name, format!("invalid glob {p:?}: {e}")))?);
    }
    b.build().map_err(|e| config(name, e.to_string()))
}

impl PatternsGate {
    /// A gate for `spec`.
    ///
    /// # Errors
    /// [`GateError`] (config) for an invalid regex or glob, or no patterns.
    pub fn new(spec: PatternsGateSpec) -> Result<Self, GateError> {
        let name = checked(GateSpec::ForbiddenPatterns(spec.clone()))?;
        let mut rules = Vec::new();
        for set in &spec.builtin {
            for (rule, re) in builtin(*set) {
                rules.push(Rule {
                    name: rule.to_owned(),
                    regex: Regex::new(re).map_err(|e| config(&name, e.to_string()))?,
                    confirm: (rule == "payment card number").then_some(luhn as fn(&str) -> bool),
                });
            }
        }
        for p in &spec.patterns {
            rules.push(Rule {
                name: p.name.clone(),
                regex: Regex::new(&p.regex)
                    .map_err(|e| config(&name, format!("pattern {:?}: {e}", p.name)))?,
                confirm: None,
            });
        }
        Ok(PatternsGate {
            include: if spec.include.is_empty() {
                None
            } else {
                Some(globs(&name, &spec.include)?)
            },
            exclude: globs(&name, &spec.exclude)?,
            rules,
            secrets: spec.builtin.contains(&BuiltinPatterns::Secrets),
            max_hits: spec.max_hits as usize,
            name,
        })
    }
}

#[async_trait]
impl Gate for PatternsGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError> {
        let started = Instant::now();
        let root = ctx.workdir.clone();
        let mut hits: Vec<Hit> = Vec::new();
        let mut total = 0usize;
        let mut scanned = 0usize;
        let mut unscanned: Vec<String> = Vec::new();
        for (rel, path) in committable(&root) {
            if ctx.cancel.is_cancelled() {
                return Err(crate::common::cancelled(&self.name));
            }
            if self.include.as_ref().is_some_and(|g| !g.is_match(&rel))
                || self.exclude.is_match(&rel)
            {
                continue;
            }
            // Read as git would commit it (a link is its target's name).
            let bytes = match orch_core::secrets::stored(&path, MAX_FILE_BYTES) {
                Ok(Stored::Bytes(b)) => b,
                Ok(Stored::TooLarge(_)) => {
                    unscanned.push(format!("{rel} is larger than {MAX_FILE_BYTES} bytes"));
                    continue;
                }
                // Not a file, or listed by git and gone from the tree.
                Ok(Stored::NotABlob | Stored::Missing) => continue,
                Err(e) => {
                    unscanned.push(format!("{rel} cannot be read ({e})"));
                    continue;
                }
            };
            scanned += 1;
            // Binary files are scanned too (as text where they hold
            // some), and UTF-16 text as what it says.
            for text in &orch_core::secrets::texts(&bytes) {
                if self.secrets {
                    for (line, rule) in SECRETS.findings(text) {
                        total += 1;
                        if hits.len() < self.max_hits {
                            hits.push(Hit {
                                file: rel.clone(),
                                line: line as u64,
                                rule: rule.to_owned(),
                            });
                        }
                    }
                }
                for (i, line) in text.lines().enumerate() {
                    for rule in &self.rules {
                        let found = rule
                            .regex
                            .find_iter(line)
                            .any(|m| rule.confirm.is_none_or(|c| c(m.as_str())));
                        if found {
                            total += 1;
                            if hits.len() < self.max_hits {
                                hits.push(Hit {
                                    file: rel.clone(),
                                    line: i as u64 + 1,
                                    rule: rule.name.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        if !unscanned.is_empty() && total == 0 {
            let reason = format!(
                "{} file(s) git would commit could not be scanned: {}",
                unscanned.len(),
                unscanned
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            return Ok(report(
                &self.name,
                false,
                reason,
                Evidence::default(),
                started,
                String::new(),
            ));
        }
        let passed = total == 0;
        let reason = if passed {
            format!("no forbidden patterns in {scanned} files")
        } else {
            let first: Vec<String> = hits
                .iter()
                .take(3)
                .map(|h| format!("{}:{} ({})", h.file, h.line, h.rule))
                .collect();
            format!(
                "{total} forbidden pattern hit(s){}: {}",
                if total > hits.len() {
                    format!(", first {} listed", hits.len())
                } else {
                    String::new()
                },
                first.join(", ")
            )
        };
        let evidence = Evidence {
            hits,
            measured: Some(total as f64),
            ..Evidence::default()
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

/// The files of the work tree at `root` that git would commit: tracked
/// ones (force-added included) and untracked ones the repository's own
/// ignore rules (`.gitignore`, `info/exclude`) do not ignore. Neither a
/// global excludes file nor `.ignore`/`.rgignore` files hide anything.
/// Outside a git work tree: every file but `.git`, `.gitignore` rules
/// kept.
fn committable(root: &std::path::Path) -> Vec<(String, std::path::PathBuf)> {
    let mut git = std::process::Command::new("git");
    git.args([
        "-c",
        "core.excludesFile=",
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
        "--deduplicate",
    ])
    .current_dir(root);
    match orch_core::process::output(&git) {
        Ok(out) if out.status.success() => {
            let mut files: Vec<(String, std::path::PathBuf)> = out
                .stdout
                .split(|b| *b == 0)
                .filter(|f| !f.is_empty())
                .map(|f| {
                    let rel = String::from_utf8_lossy(f).into_owned();
                    let path = root.join(&rel);
                    (rel, path)
                })
                .collect();
            files.sort();
            files
        }
        _ => {
            let mut walker = ignore::WalkBuilder::new(root);
            walker
                .hidden(false)
                .parents(false)
                .ignore(false)
                .git_global(false)
                .git_exclude(true)
                .git_ignore(true)
                .require_git(false)
                .follow_links(false);
            crate::common::walk(root, &walker, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::luhn;

    #[test]
    fn luhn_accepts_test_cards_only() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(luhn("5500-0000-0000-0004"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(!luhn("1234"));
    }
}
