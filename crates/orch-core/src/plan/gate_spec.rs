//! Declarative descriptions of quality gates, as written in plan files.
//!
//! These are plain data. `orch-gates` turns each into a running [`Gate`](crate::Gate).
//! String fields that name files or commands may contain the placeholders
//! `{ticket}`, `{phase}`, `{batch}` and `{run}`, which the engine replaces
//! with the (validated, path-safe) ids before the gate runs; see
//! [`GateSpec::substitute`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One quality gate, tagged by `kind`.
///
/// ```toml
/// [[phases.gates]]
/// kind = "tests"
/// argv = ["cargo", "test"]
/// format = "libtest"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GateSpec {
    /// Run a command; pass on exit status 0.
    Command(CommandGateSpec),
    /// Run a test command and parse its results; pass when at least
    /// `min_tests` ran and none failed.
    Tests(TestsGateSpec),
    /// Read a coverage report and compare it with thresholds.
    Coverage(CoverageGateSpec),
    /// Fail when any file matches a forbidden pattern.
    ForbiddenPatterns(PatternsGateSpec),
    /// Files must exist, be non-empty, and (for documents) meet word and
    /// content rules.
    Files(FilesGateSpec),
    /// A number read from a JSON file must be within bounds.
    Metric(MetricGateSpec),
    /// Every listed gate must pass (they run concurrently).
    All(GroupGateSpec),
    /// At least one listed gate must pass.
    Any(GroupGateSpec),
}

/// Settings shared by gates that run a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CommandGateSpec {
    /// A name for reports; defaults to the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program and its arguments. Never passed through a shell unless
    /// `shell = true`, in which case it must be exactly one string.
    pub argv: Vec<String>,
    /// Run `argv[0]` with `sh -c`. Off by default; say so explicitly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shell: bool,
    /// Working directory, relative to the ticket's work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Environment variables set for the command. It starts from a clean
    /// environment: only `PATH`, `HOME`, the locale and the other
    /// variables of `orch_core::process::BASE_ENV` pass from orch's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of orch's environment variables passed through as well
    /// (`"DATABASE_URL"`, or a prefix: `"PYTHON*"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_allow: Vec<String>,
    /// Kill the whole process group after this many seconds
    /// (default: the policy's gate timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// The output format of a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestFormat {
    /// libtest's human output (`cargo test`).
    Libtest,
    /// cargo-nextest's human output (`cargo nextest run`).
    Nextest,
    /// A JUnit XML report file (pytest `--junitxml`, nextest's junit).
    Junit,
}

/// Run tests and parse their results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TestsGateSpec {
    /// A name for reports; defaults to the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The test command (no shell).
    pub argv: Vec<String>,
    /// Working directory, relative to the ticket's work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Environment variables set for the command. It starts from a clean
    /// environment: only `PATH`, `HOME`, the locale and the other
    /// variables of `orch_core::process::BASE_ENV` pass from orch's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of orch's environment variables passed through as well
    /// (`"DATABASE_URL"`, or a prefix: `"PYTHON*"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_allow: Vec<String>,
    /// Kill the whole process group after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// How to read the results.
    pub format: TestFormat,
    /// For `junit`: the report file, relative to the work tree. It must be
    /// written during this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Fewest tests that must have run (passed or failed); default 1. 0
    /// accepts a run with no tests at all, and needs `allow_no_tests`.
    #[serde(default = "one")]
    pub min_tests: u32,
    /// Says that `min_tests = 0` is meant: a run of no tests passes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_no_tests: bool,
    /// Most tests that may be skipped (ignored); none: any number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_skipped: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Coverage report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CoverageFormat {
    /// LCOV tracefile (`lcov.info`).
    Lcov,
    /// Cobertura XML (`coverage xml`, grcov, cargo-llvm-cov `--cobertura`).
    Cobertura,
    /// `cargo llvm-cov --json` summary.
    LlvmCovJson,
    /// coverage.py `coverage json`.
    CoveragePyJson,
}

/// Read a coverage report and compare it with thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CoverageGateSpec {
    /// A name for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Optional command that produces the report (run first, no shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// The report file, relative to the work tree.
    pub report: String,
    /// Its format.
    pub format: CoverageFormat,
    /// Minimum line coverage, in percent (0-100).
    pub min_line_percent: f64,
    /// Minimum branch coverage, in percent, where the report has branches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_branch_percent: Option<f64>,
    /// Timeout for `argv`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Environment variables set for `argv` (a clean environment, as for
    /// command gates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of orch's environment variables passed through to `argv`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_allow: Vec<String>,
}

/// Built-in pattern sets for [`PatternsGateSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinPatterns {
    /// API key shapes, private key blocks, tokens.
    Secrets,
    /// E-mail addresses, phone and card numbers in logs.
    Pii,
    /// Non-ASCII characters in log message literals.
    NonAsciiLogs,
}

/// One named regular expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternRule {
    /// Name shown in reports.
    pub name: String,
    /// The regular expression (Rust `regex` syntax).
    pub regex: String,
}

/// Fail when files match forbidden patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PatternsGateSpec {
    /// A name for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Globs of files to scan (default: everything not ignored by git).
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs of files to skip.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Built-in pattern sets.
    #[serde(default)]
    pub builtin: Vec<BuiltinPatterns>,
    /// Extra patterns.
    #[serde(default)]
    pub patterns: Vec<PatternRule>,
    /// Stop reporting after this many hits (default 50).
    #[serde(default = "fifty")]
    pub max_hits: u32,
}

fn fifty() -> u32 {
    50
}

/// Files must exist and meet content rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FilesGateSpec {
    /// A name for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Paths or globs, relative to the work tree; each must match at least
    /// one file.
    pub paths: Vec<String>,
    /// Every matched file must be non-empty (default true).
    #[serde(default = "yes")]
    pub non_empty: bool,
    /// Fewest words a matched document may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_words: Option<u32>,
    /// Most words a matched document may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_words: Option<u32>,
    /// Terms every matched file must contain (case-insensitive).
    #[serde(default)]
    pub contains: Vec<String>,
    /// Markdown headings every matched file must have (case-insensitive).
    #[serde(default)]
    pub sections: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Compare a number read from a JSON file with bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MetricGateSpec {
    /// A name for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The JSON file, relative to the work tree.
    pub file: String,
    /// A JSON pointer (RFC 6901) to the number, e.g. `/latency/p99_ms`.
    pub pointer: String,
    /// The value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
}

/// A list of gates combined with all/any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GroupGateSpec {
    /// A name for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The gates.
    pub gates: Vec<GateSpec>,
}

impl GateSpec {
    /// A short name for reports: the explicit `name`, else the kind and its
    /// main parameter.
    pub fn display_name(&self) -> String {
        fn or(name: &Option<String>, f: impl FnOnce() -> String) -> String {
            name.clone().unwrap_or_else(f)
        }
        match self {
            GateSpec::Command(c) => or(&c.name, || c.argv.join(" ")),
            GateSpec::Tests(t) => or(&t.name, || t.argv.join(" ")),
            GateSpec::Coverage(c) => or(&c.name, || format!("coverage {}", c.report)),
            GateSpec::ForbiddenPatterns(p) => or(&p.name, || "forbidden patterns".into()),
            GateSpec::Files(f) => or(&f.name, || format!("files {}", f.paths.join(", "))),
            GateSpec::Metric(m) => or(&m.name, || format!("metric {}{}", m.file, m.pointer)),
            GateSpec::All(g) => or(&g.name, || "all".into()),
            GateSpec::Any(g) => or(&g.name, || "any".into()),
        }
    }

    /// What is wrong with the spec that can be seen without running
    /// anything, as `(field, problem)` pairs (empty when it is fine). Plan
    /// validation and the gate constructors in `orch-gates` both use it.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.check(&mut out);
        out
    }

    fn check(&self, out: &mut Vec<(String, String)>) {
        let argv = |out: &mut Vec<(String, String)>, argv: &[String], shell: bool| {
            if argv.is_empty() || argv[0].is_empty() {
                out.push(("argv".into(), "argv must name a program".into()));
            } else if shell && argv.len() != 1 {
                out.push((
                    "argv".into(),
                    "with shell = true, argv must be exactly one command string".into(),
                ));
            }
        };
        match self {
            GateSpec::Command(c) => argv(out, &c.argv, c.shell),
            GateSpec::Tests(t) => {
                argv(out, &t.argv, false);
                if t.format == TestFormat::Junit && t.report.is_none() {
                    out.push((
                        "report".into(),
                        "format \"junit\" needs `report`, the XML file the command writes".into(),
                    ));
                }
            }
            GateSpec::Coverage(c) => {
                if let Some(a) = &c.argv {
                    argv(out, a, false);
                }
                for (k, v) in [
                    ("min_line_percent", Some(c.min_line_percent)),
                    ("min_branch_percent", c.min_branch_percent),
                ] {
                    if let Some(v) = v.filter(|v| !(0.0..=100.0).contains(v)) {
                        out.push((k.into(), format!("{v} is not a percentage (0-100)")));
                    }
                }
            }
            GateSpec::ForbiddenPatterns(p) => {
                if p.builtin.is_empty() && p.patterns.is_empty() {
                    out.push((
                        "patterns".into(),
                        "give at least one pattern or builtin set".into(),
                    ));
                }
            }
            GateSpec::Files(f) => {
                if f.paths.is_empty() {
                    out.push(("paths".into(), "name at least one path".into()));
                }
                if let (Some(lo), Some(hi)) = (f.min_words, f.max_words)
                    && lo > hi
                {
                    out.push((
                        "min_words".into(),
                        format!("min_words {lo} is above max_words {hi}"),
                    ));
                }
            }
            GateSpec::Metric(m) => {
                if !(m.pointer.is_empty() || m.pointer.starts_with('/')) {
                    out.push((
                        "pointer".into(),
                        format!(
                            "{:?} is not a JSON pointer (it must start with '/')",
                            m.pointer
                        ),
                    ));
                }
                if m.max.is_none() && m.min.is_none() {
                    out.push(("max".into(), "give `max`, `min` or both".into()));
                }
            }
            GateSpec::All(g) | GateSpec::Any(g) => {
                if g.gates.is_empty() {
                    out.push(("gates".into(), "a group needs at least one gate".into()));
                }
                for (i, gate) in g.gates.iter().enumerate() {
                    let mut inner = Vec::new();
                    gate.check(&mut inner);
                    out.extend(
                        inner
                            .into_iter()
                            .map(|(k, v)| (format!("gates[{i}].{k}"), v)),
                    );
                }
            }
        }
    }

    /// Returns a copy with `{name}` placeholders replaced in every string
    /// that names a file, a command argument, a pattern glob or a term.
    ///
    /// ```
    /// use orch_core::GateSpec;
    /// let spec: GateSpec = serde_json::from_str(
    ///     r#"{"kind":"files","paths":["docs/plan/{ticket}.md"]}"#).unwrap();
    /// let GateSpec::Files(f) = spec.substitute(&[("ticket", "SEC-001")]) else { panic!() };
    /// assert_eq!(f.paths, ["docs/plan/SEC-001.md"]);
    /// ```
    pub fn substitute(&self, vars: &[(&str, &str)]) -> GateSpec {
        let s = |x: &String| {
            let mut out = x.clone();
            for (k, v) in vars {
                out = out.replace(&format!("{{{k}}}"), v);
            }
            out
        };
        let all = |xs: &Vec<String>| xs.iter().map(s).collect::<Vec<_>>();
        let env = |e: &BTreeMap<String, String>| {
            e.iter()
                .map(|(k, v)| (k.clone(), s(v)))
                .collect::<BTreeMap<_, _>>()
        };
        let mut out = self.clone();
        match &mut out {
            GateSpec::Command(c) => {
                c.argv = all(&c.argv);
                c.cwd = c.cwd.as_ref().map(s);
                c.env = env(&c.env);
            }
            GateSpec::Tests(t) => {
                t.argv = all(&t.argv);
                t.cwd = t.cwd.as_ref().map(s);
                t.env = env(&t.env);
                t.report = t.report.as_ref().map(s);
            }
            GateSpec::Coverage(c) => {
                c.argv = c.argv.as_ref().map(all);
                c.env = env(&c.env);
                c.report = s(&c.report);
            }
            GateSpec::ForbiddenPatterns(p) => {
                p.include = all(&p.include);
                p.exclude = all(&p.exclude);
            }
            GateSpec::Files(f) => {
                f.paths = all(&f.paths);
                f.contains = all(&f.contains);
                f.sections = all(&f.sections);
            }
            GateSpec::Metric(m) => m.file = s(&m.file),
            GateSpec::All(g) | GateSpec::Any(g) => {
                g.gates = g.gates.iter().map(|x| x.substitute(vars)).collect();
            }
        }
        out
    }
}
