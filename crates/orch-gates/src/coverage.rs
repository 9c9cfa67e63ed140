//! [`CoverageGate`]: line (and branch) coverage against thresholds.

use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use orch_core::plan::{CoverageFormat, CoverageGateSpec};
use orch_core::{Evidence, Gate, GateContext, GateError, GateReport, GateSpec};

use crate::common::{
    EXCERPT_LINES, Since, cancelled, checked, clear_report, inside, older_than_the_code,
    read_report, report, stale_or_missing, timeout,
};
use crate::coverage_parse::{self, Coverage};
use orch_core::process::{self, Exit};

/// Reads a coverage report (optionally running the command that writes it
/// first) and compares line and branch coverage with the thresholds. A
/// missing report, one older than the check (or than the phase, when no
/// command is given), or one that covers no lines fails.
#[derive(Debug, Clone)]
pub struct CoverageGate {
    name: String,
    spec: CoverageGateSpec,
}

impl CoverageGate {
    /// A gate for `spec`.
    ///
    /// # Errors
    /// [`GateError`] (config) for thresholds outside 0-100 or an empty argv.
    pub fn new(spec: CoverageGateSpec) -> Result<Self, GateError> {
        let name = checked(GateSpec::Coverage(spec.clone()))?;
        Ok(CoverageGate { name, spec })
    }
}

impl CoverageGate {
    /// Figures that cannot be true fail: more covered than instrumented
    /// (over 100%), a report that names no source file, or one that names
    /// a file that is not in the work tree (a report of another project,
    /// or made up).
    fn believable(
        &self,
        ctx: &GateContext,
        bytes: &[u8],
        c: Coverage,
    ) -> Result<Coverage, crate::results::ParseError> {
        let unbelievable = |why: String| Err(crate::results::ParseError(why));
        if c.lines_covered > c.lines_total || c.branches_covered > c.branches_total {
            return unbelievable(format!(
                "it covers more than it instruments ({} of {} lines, {} of {} branches)",
                c.lines_covered, c.lines_total, c.branches_covered, c.branches_total
            ));
        }
        let named = coverage_parse::named_files(self.spec.format, bytes)?;
        if named.files.is_empty() {
            return unbelievable(
                "it names no source file, so nothing shows what it measured".into(),
            );
        }
        let workdir = ctx.workdir.as_ref();
        let real_workdir = workdir.canonicalize().ok();
        let bases: Vec<std::path::PathBuf> = std::iter::once(workdir.to_path_buf())
            .chain(named.roots.iter().map(|r| workdir.join(r)))
            .collect();
        for f in &named.files {
            // Absolute names are joined as they are (`join` keeps them),
            // then taken relative to the work tree and resolved inside it
            // like every path a gate reads.
            let inside = bases.iter().any(|b| {
                let named = b.join(f);
                let rel = named.strip_prefix(workdir).ok().or_else(|| {
                    real_workdir
                        .as_deref()
                        .and_then(|r| named.strip_prefix(r).ok())
                });
                rel.and_then(|r| r.to_str())
                    .and_then(|r| orch_core::resolve_within(workdir, r).ok())
                    .is_some_and(|p| p.is_file())
            });
            if !inside {
                return unbelievable(format!(
                    "it names {f}, which is not a file of the work tree"
                ));
            }
        }
        Ok(c)
    }
}

#[async_trait]
impl Gate for CoverageGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError> {
        let started = Instant::now();
        let s = &self.spec;
        let path = inside(&self.name, &ctx.workdir, &s.report)?;
        let mut since = Since::Phase(ctx.since);
        let mut excerpt = String::new();
        let mut evidence = Evidence::default();
        let mut until = None;
        if let Some(argv) = &s.argv {
            // Only what the command writes while it runs is read.
            clear_report(&self.name, &path, &s.report)?;
            since = Since::Command(SystemTime::now());
            let cmd = process::Command {
                argv: argv.clone(),
                shell: false,
                cwd: ctx.workdir.to_path_buf(),
                env: s.env.clone(),
                env_allow: s.env_allow.clone(),
                timeout: timeout(ctx, s.timeout_secs),
                ..Default::default()
            };
            let out = process::run(&cmd, &ctx.cancel).await;
            until = Some(SystemTime::now());
            if out.exit == Exit::Cancelled {
                return Err(cancelled(&self.name));
            }
            excerpt = out.excerpt(EXCERPT_LINES);
            if let Exit::Code(c) = out.exit {
                evidence.exit_code = Some(c);
            }
            if !out.success() {
                let reason = format!("coverage command `{}` {}", argv.join(" "), out.describe());
                return Ok(report(
                    &self.name, false, reason, evidence, started, excerpt,
                ));
            }
        }
        // The command may have made the report a link out of the tree.
        let path = inside(&self.name, &ctx.workdir, &s.report)?;
        let why = match until {
            Some(until) => stale_or_missing(&path, &s.report, since, until),
            // Read as it is: also newer than every change to the code.
            None => stale_or_missing(&path, &s.report, since, SystemTime::now())
                .or_else(|| older_than_the_code(&ctx.workdir, &path, &s.report)),
        };
        if let Some(why) = why {
            return Ok(report(&self.name, false, why, evidence, started, excerpt));
        }
        let bytes = match read_report(&path, &s.report) {
            Ok(b) => b,
            Err(why) => return Ok(report(&self.name, false, why, evidence, started, excerpt)),
        };
        let parsed = parse(s.format, &bytes);
        let cov = match parsed.and_then(|c| self.believable(ctx, &bytes, c)) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("report {} is unreadable: {}", s.report, e.0);
                return Ok(report(
                    &self.name, false, reason, evidence, started, excerpt,
                ));
            }
        };
        evidence.line_coverage = cov.line_percent();
        evidence.branch_coverage = cov.branch_percent();
        let Some(line) = cov.line_percent() else {
            let reason = format!("report {} covers no lines", s.report);
            return Ok(report(
                &self.name, false, reason, evidence, started, excerpt,
            ));
        };
        let mut problems = Vec::new();
        if line < s.min_line_percent {
            problems.push(format!(
                "line coverage {line:.1}% ({}/{} lines) is below {}%",
                cov.lines_covered, cov.lines_total, s.min_line_percent
            ));
        }
        match (s.min_branch_percent, cov.branch_percent()) {
            (Some(min), Some(b)) if b < min => problems.push(format!(
                "branch coverage {b:.1}% ({}/{} branches) is below {min}%",
                cov.branches_covered, cov.branches_total
            )),
            (Some(_), None) => problems.push(format!(
                "a branch threshold is set but report {} has no branch data",
                s.report
            )),
            _ => {}
        }
        let passed = problems.is_empty();
        let reason = if passed {
            match cov.branch_percent() {
                Some(b) => format!("line coverage {line:.1}%, branch coverage {b:.1}%"),
                None => format!(
                    "line coverage {line:.1}% (at least {}%)",
                    s.min_line_percent
                ),
            }
        } else {
            problems.join("; ")
        };
        Ok(report(
            &self.name, passed, reason, evidence, started, excerpt,
        ))
    }
}

fn parse(format: CoverageFormat, bytes: &[u8]) -> Result<Coverage, crate::results::ParseError> {
    let text = || {
        std::str::from_utf8(bytes)
            .map_err(|e| crate::results::ParseError(format!("not UTF-8 text: {e}")))
    };
    match format {
        CoverageFormat::Lcov => coverage_parse::lcov(text()?),
        CoverageFormat::Cobertura => coverage_parse::cobertura(bytes),
        CoverageFormat::LlvmCovJson => coverage_parse::llvm_cov_json(text()?),
        CoverageFormat::CoveragePyJson => coverage_parse::coverage_py_json(text()?),
    }
}
