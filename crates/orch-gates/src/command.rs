//! [`CommandGate`] and [`TestsGate`]: gates that run a process.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use orch_core::plan::{CommandGateSpec, TestFormat, TestsGateSpec};
use orch_core::{Evidence, Gate, GateContext, GateError, GateReport, GateSpec};

use crate::common::{
    EXCERPT_LINES, Since, cancelled, checked, clear_report, config, inside, read_report, report,
    stale_or_missing, timeout,
};
use crate::results::{self, TestResults};
use orch_core::process::{self, Exit};

fn command(
    gate: &str,
    ctx: &GateContext,
    argv: &[String],
    shell: bool,
    cwd: Option<&str>,
    env: (&BTreeMap<String, String>, &[String]),
    timeout_secs: Option<u64>,
) -> Result<process::Command, GateError> {
    Ok(process::Command {
        argv: argv.to_vec(),
        shell,
        cwd: match cwd {
            Some(c) => inside(gate, &ctx.workdir, c)?,
            None => ctx.workdir.to_path_buf(),
        },
        env: env.0.clone(),
        env_allow: env.1.to_vec(),
        timeout: timeout(ctx, timeout_secs),
        ..Default::default()
    })
}

/// Runs a command; passes when it exits with status 0 and leaves nothing
/// running. Fails, each with its own reason, on a non-zero status, a
/// signal, the time limit (the whole process group is killed), a command
/// that does not exist, and children that outlive it.
#[derive(Debug, Clone)]
pub struct CommandGate {
    name: String,
    spec: CommandGateSpec,
}

impl CommandGate {
    /// A gate for `spec`.
    ///
    /// # Errors
    /// [`GateError`] (config) when argv is empty, or `shell` is set with
    /// more than one element.
    pub fn new(spec: CommandGateSpec) -> Result<Self, GateError> {
        let name = checked(GateSpec::Command(spec.clone()))?;
        Ok(CommandGate { name, spec })
    }
}

#[async_trait]
impl Gate for CommandGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError> {
        let started = Instant::now();
        let s = &self.spec;
        let cmd = command(
            &self.name,
            ctx,
            &s.argv,
            s.shell,
            s.cwd.as_deref(),
            (&s.env, &s.env_allow),
            s.timeout_secs,
        )?;
        let out = process::run(&cmd, &ctx.cancel).await;
        if out.exit == Exit::Cancelled {
            return Err(cancelled(&self.name));
        }
        let evidence = Evidence {
            exit_code: match out.exit {
                Exit::Code(c) => Some(c),
                _ => None,
            },
            ..Evidence::default()
        };
        let reason = format!("`{}` {}", self.name, out.describe());
        Ok(report(
            &self.name,
            out.success(),
            reason,
            evidence,
            started,
            out.excerpt(EXCERPT_LINES),
        ))
    }
}

/// Runs tests and reads their results. Passes only when the command exits
/// with status 0, at least `min_tests` tests ran, none failed, and (for
/// JUnit) the report was written during this check.
#[derive(Debug, Clone)]
pub struct TestsGate {
    name: String,
    spec: TestsGateSpec,
}

impl TestsGate {
    /// A gate for `spec`.
    ///
    /// # Errors
    /// [`GateError`] (config) when argv is empty or `junit` has no report.
    pub fn new(spec: TestsGateSpec) -> Result<Self, GateError> {
        let name = checked(GateSpec::Tests(spec.clone()))?;
        if spec.min_tests == 0 && !spec.allow_no_tests {
            return Err(config(
                &name,
                "min_tests = 0 passes a run in which no test ran; set allow_no_tests = true if that is meant",
            ));
        }
        Ok(TestsGate { name, spec })
    }
}

#[async_trait]
impl Gate for TestsGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateReport, GateError> {
        let started = Instant::now();
        // (`stale_or_missing` allows for the file system's coarse clock.)
        let began = SystemTime::now();
        let s = &self.spec;
        // Only what the command writes while it runs is read afterwards.
        if let (TestFormat::Junit, Some(rel)) = (s.format, s.report.as_deref()) {
            let path = inside(&self.name, &ctx.workdir, rel)?;
            clear_report(&self.name, &path, rel)?;
        }
        let cmd = command(
            &self.name,
            ctx,
            &s.argv,
            false,
            s.cwd.as_deref(),
            (&s.env, &s.env_allow),
            s.timeout_secs,
        )?;
        let out = process::run(&cmd, &ctx.cancel).await;
        let ended = SystemTime::now();
        if out.exit == Exit::Cancelled {
            return Err(cancelled(&self.name));
        }
        let excerpt = out.excerpt(EXCERPT_LINES);
        let mut evidence = Evidence {
            exit_code: match out.exit {
                Exit::Code(c) => Some(c),
                _ => None,
            },
            ..Evidence::default()
        };
        let fail = |reason: String, evidence: Evidence| {
            Ok(report(
                &self.name,
                false,
                reason,
                evidence,
                started,
                excerpt.clone(),
            ))
        };
        if matches!(
            out.exit,
            Exit::NotFound(_) | Exit::SpawnFailed(_) | Exit::TimedOut(_)
        ) {
            return fail(format!("test command {}", out.describe()), evidence);
        }
        let parsed: Result<TestResults, String> = match s.format {
            TestFormat::Libtest => results::libtest(&out.stdout.text()).map_err(|e| e.0),
            TestFormat::Nextest => {
                let text = format!("{}\n{}", out.stdout.text(), out.stderr.text());
                results::nextest(&text).map_err(|e| e.0)
            }
            TestFormat::Junit => {
                let rel = s.report.as_deref().unwrap_or_default();
                let path = inside(&self.name, &ctx.workdir, rel)?;
                match stale_or_missing(&path, rel, Since::Command(began), ended) {
                    Some(why) => Err(why),
                    None => read_report(&path, rel).and_then(|bytes| {
                        results::junit(&bytes).map_err(|e| format!("report {rel}: {}", e.0))
                    }),
                }
            }
        };
        let r = match parsed {
            Ok(r) => r,
            Err(why) => {
                return fail(
                    format!("{why}; the test command {}", out.describe()),
                    evidence,
                );
            }
        };
        evidence.tests = Some(r.counts);
        evidence.failures.clone_from(&r.failures);
        let c = r.counts;
        let reason = if c.failed > 0 {
            let names: Vec<&str> = r.failures.iter().take(5).map(|f| f.name.as_str()).collect();
            let more = r.failures.len().saturating_sub(5);
            Some(
                format!(
                    "{} of {} tests failed{}{}{}",
                    c.failed,
                    c.ran(),
                    if names.is_empty() { "" } else { ": " },
                    names.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ) + &r
                    .incomplete
                    .map(|(ran, meant)| format!("; the run stopped after {ran} of {meant} tests"))
                    .unwrap_or_default(),
            )
        } else if c.ran() < u64::from(s.min_tests) {
            Some(if c.ran() == 0 {
                format!(
                    "no tests ran ({} skipped); at least {} must run",
                    c.skipped, s.min_tests
                )
            } else {
                format!(
                    "only {} tests ran; at least {} must run",
                    c.ran(),
                    s.min_tests
                )
            })
        } else if let Some((ran, meant)) = r.incomplete {
            Some(format!("the test run stopped after {ran} of {meant} tests"))
        } else if let Some(max) = s.max_skipped.filter(|m| c.skipped > *m) {
            Some(format!(
                "{} tests were skipped; at most {max} may be",
                c.skipped
            ))
        } else if !out.success() {
            Some(format!(
                "the results show no failures, but the test command {}",
                out.describe()
            ))
        } else {
            None
        };
        match reason {
            Some(r) => fail(r, evidence),
            None => Ok(report(
                &self.name,
                true,
                format!("{} passed, {} skipped", c.passed, c.skipped),
                evidence,
                started,
                excerpt,
            )),
        }
    }
}
