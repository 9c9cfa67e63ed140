//! Parsers for test results: libtest's human output (`cargo test`),
//! cargo-nextest's human output, and JUnit XML (pytest, nextest, ...).
//!
//! Each returns [`TestResults`]: counts recomputed from what the tool
//! printed, and the failing tests with their messages.

use orch_core::{TestCounts, TestFailure};
use quick_xml::events::Event;
use regex::Regex;
use std::sync::LazyLock;

/// Counts and failures read from a test run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestResults {
    /// Passed, failed, skipped.
    pub counts: TestCounts,
    /// Failing tests, in the order reported.
    pub failures: Vec<TestFailure>,
    /// The run stopped before every test ran: (ran, meant to run), as
    /// nextest says `2/4 tests run` when it cancels after a failure.
    pub incomplete: Option<(u64, u64)>,
}

/// Why a report could not be read, or cannot be believed (its counts do
/// not add up): either way the gate fails with this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A quick-xml error at a byte position, as a [`ParseError`].
pub(crate) fn xml_error(position: u64, e: impl std::fmt::Display) -> ParseError {
    ParseError(format!("not valid XML at byte {position}: {e}"))
}

const MESSAGE_LINES: usize = 12;

fn message(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.trim_end())
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.trim_start().starts_with("at ") && !is_backtrace_frame(l))
        .take(MESSAGE_LINES)
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_backtrace_frame(l: &str) -> bool {
    static FRAME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\s*\d+: ").expect("static regex"));
    FRAME.is_match(l) || l.trim() == "stack backtrace:"
}

/// Parses `cargo test` human output (all test binaries and doc-tests).
///
/// Counts come only from blocks libtest prints: `running N tests`, then
/// (unless quiet) one `test NAME ... ok|FAILED|ignored` line per test,
/// then its own `test result:` line, whose counts must add up to N (and
/// to the per-test lines, when there are any). A result line outside
/// such a block (printed by a program, not by libtest), a block whose
/// binary stopped before its result line, or counts that do not add up
/// are errors: they are how a run claims tests it did not run.
///
/// # Errors
/// When the output holds no `test result:` line (no tests ran, or the
/// output is not libtest's), or the blocks do not add up.
pub fn libtest(output: &str) -> Result<TestResults, ParseError> {
    static RESULT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured")
            .expect("static regex")
    });
    static RUNNING: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^running (\d+) tests?$").expect("static regex"));
    static ONE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^test .+ \.\.\. (?:ok|FAILED|ignored(?:, .*)?)$").expect("static regex")
    });
    // The open block: tests announced, per-test lines seen, and where.
    let mut block: Option<(u64, u64, usize)> = None;
    for (i, l) in output.lines().enumerate() {
        if let Some(c) = RUNNING.captures(l) {
            if let Some((n, _, at)) = block {
                return Err(ParseError(format!(
                    "line {}: `running {n} tests` has no `test result:` line (the test binary stopped in the middle?)",
                    at + 1
                )));
            }
            block = Some((c[1].parse().unwrap_or(0), 0, i));
        } else if ONE.is_match(l) {
            if let Some((_, seen, _)) = &mut block {
                *seen += 1;
            }
        } else if let Some(c) = RESULT.captures(l) {
            let Some((n, seen, _)) = block.take() else {
                return Err(ParseError(format!(
                    "line {}: a `test result:` line with no `running N tests` before it (not printed by libtest)",
                    i + 1
                )));
            };
            let total: u64 = (1..=4).map(|k| c[k].parse::<u64>().unwrap_or(0)).sum();
            if total != n || (seen > 0 && seen != n) {
                return Err(ParseError(format!(
                    "line {}: the result counts {total} tests, but the block announced {n}{}",
                    i + 1,
                    if seen > 0 {
                        format!(" and listed {seen}")
                    } else {
                        String::new()
                    }
                )));
            }
        }
    }
    if let Some((n, _, at)) = block {
        return Err(ParseError(format!(
            "line {}: `running {n} tests` has no `test result:` line (the test binary stopped in the middle?)",
            at + 1
        )));
    }
    static FAILED: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^test (.+?) \.\.\. FAILED$").expect("static regex"));
    static SECTION: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^---- (.+?) (?:stdout|stderr) ----$").expect("static regex"));
    let lines: Vec<&str> = output.lines().collect();
    let mut r = TestResults::default();
    let mut found = false;
    let mut failing: Vec<String> = Vec::new();
    let mut in_list = false;
    for l in &lines {
        // The list after the second "failures:" names every failing test
        // (also in --quiet mode, which prints no per-test lines).
        if *l == "failures:" {
            in_list = true;
            continue;
        }
        if in_list {
            if let Some(name) = l.strip_prefix("    ") {
                let name = name.trim().to_owned();
                if !name.is_empty() && !failing.contains(&name) {
                    failing.push(name);
                }
                continue;
            }
            in_list = false;
        }
        if let Some(c) = RESULT.captures(l) {
            found = true;
            let n = |i: usize| c[i].parse::<u64>().unwrap_or(0);
            r.counts.passed += n(1);
            r.counts.failed += n(2);
            r.counts.skipped += n(3);
        } else if let Some(c) = FAILED.captures(l)
            && !failing.contains(&c[1].to_owned())
        {
            failing.push(c[1].to_owned());
        }
    }
    if !found {
        return Err(ParseError("no `test result:` line in the output".into()));
    }
    for name in failing {
        // The "---- name stdout ----" section, up to the next section or
        // the "failures:" list.
        let start = lines
            .iter()
            .position(|l| SECTION.captures(l).is_some_and(|c| c[1] == *name));
        let msg = start.map_or_else(String::new, |s| {
            let end = lines[s + 1..]
                .iter()
                .position(|l| l.starts_with("---- ") || *l == "failures:")
                .map_or(lines.len(), |e| s + 1 + e);
            message(&lines[s + 1..end])
        });
        r.failures.push(TestFailure { name, message: msg });
    }
    Ok(r)
}

/// A `<testsuite>` (or `<testsuites>`) being read: the totals it declares
/// and what its test cases came to.
struct Suite {
    name: String,
    declared: (Option<u64>, Option<u64>, Option<u64>),
    counted: TestCounts,
}

impl Suite {
    /// The totals a suite declares must be those of its cases: a report
    /// edited to claim more (or fewer failures) than it holds is not
    /// trusted.
    fn check(self) -> Result<(), ParseError> {
        let c = &self.counted;
        let cases = c.passed + c.failed + c.skipped;
        let (tests, failed, skipped) = self.declared;
        let wrong = |what: &str, said: u64, held: u64| {
            Err(ParseError(format!(
                "suite {:?} declares {said} {what} but its test cases hold {held}",
                self.name
            )))
        };
        match (tests, failed, skipped) {
            (Some(t), _, _) if t != cases => wrong("tests", t, cases),
            (_, Some(f), _) if f != c.failed => wrong("failures and errors", f, c.failed),
            (_, _, Some(s)) if s != c.skipped => wrong("skipped", s, c.skipped),
            _ => Ok(()),
        }
    }
}

/// Parses `cargo nextest run` human output (it writes to stderr).
///
/// # Errors
/// When the output holds no `Summary` line.
pub fn nextest(output: &str) -> Result<TestResults, ParseError> {
    static SUMMARY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^\s*Summary \[[^\]]*\]\s+(\d+)(?:/(\d+))? tests? run: (.*)$")
            .expect("static regex")
    });
    // Qualifiers of tests already counted: "2 passed (1 flaky, 1 slow)".
    static QUALIFIERS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\([^)]*\)").expect("static regex"));
    static ITEM: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(\d+) ([a-z][a-z ]*[a-z])").expect("static regex"));
    static STATUS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^\s+(PASS|FAIL|SKIP|TIMEOUT|SIGSEGV|SIGABRT|SIGKILL|ABORT|LEAK|FLAKY|TRY \d+ FAIL|RETRY)\s+\[[^\]]*\]\s+(?:\(\d+/\d+\)\s+)?(\S+)\s+(\S+)")
            .expect("static regex")
    });
    let lines: Vec<&str> = output.lines().collect();
    let Some((at, caps)) = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| SUMMARY.captures(l).map(|c| (i, c)))
    else {
        return Err(ParseError("no nextest `Summary` line in the output".into()));
    };
    let mut r = TestResults::default();
    let ran: u64 = caps[1].parse().unwrap_or(0);
    if let Some(meant) = caps.get(2).and_then(|m| m.as_str().parse::<u64>().ok())
        && meant != ran
    {
        r.incomplete = Some((ran, meant));
    }
    // A flaky test passed in the end: counted once, as passed (the
    // "(1 flaky)" after "passed" qualifies tests already counted).
    let items = QUALIFIERS.replace_all(&caps[3], "");
    for item in ITEM.captures_iter(&items) {
        let n: u64 = item[1].parse().unwrap_or(0);
        match &item[2] {
            "passed" | "flaky" => r.counts.passed += n,
            "skipped" => r.counts.skipped += n,
            "failed" | "timed out" | "exec fail" | "exec failed" => r.counts.failed += n,
            _ => {} // "leaky", "slow", ... qualify tests already counted
        }
    }
    if r.counts.passed + r.counts.failed != ran {
        return Err(ParseError(format!(
            "the summary says {ran} tests ran, but counts {} passed and {} failed",
            r.counts.passed, r.counts.failed
        )));
    }
    // Failing tests are listed again after the summary.
    let mut names: Vec<String> = Vec::new();
    for l in &lines[at + 1..] {
        if let Some(c) = STATUS.captures(l)
            && !matches!(&c[1], "PASS" | "SKIP" | "FLAKY")
        {
            let name = format!("{} {}", &c[2], &c[3]);
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in names {
        // The first report of the test, then its stdout/stderr blocks.
        let start = lines[..at].iter().position(|l| {
            STATUS
                .captures(l)
                .is_some_and(|c| format!("{} {}", &c[2], &c[3]) == name && &c[1] != "PASS")
        });
        let msg = start.map_or_else(String::new, |s| {
            let end = lines[s + 1..at]
                .iter()
                .position(|l| STATUS.is_match(l))
                .map_or(at, |e| s + 1 + e);
            // Prefer the stderr block (the panic message).
            let block = &lines[s + 1..end];
            let stderr = block
                .iter()
                .position(|l| l.trim_start().starts_with("stderr"))
                .map_or(block, |i| &block[i + 1..]);
            message(stderr)
        });
        r.failures.push(TestFailure { name, message: msg });
    }
    Ok(r)
}

/// Parses a JUnit XML report. Totals are recomputed from the `<testcase>`
/// elements (pytest puts them on `<testsuite>`, nextest on both; neither
/// is trusted).
///
/// # Errors
/// Invalid or truncated XML, or a document with no `<testsuite>` or
/// `<testsuites>` root.
pub fn junit(xml: &[u8]) -> Result<TestResults, ParseError> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut buf = Vec::new();
    let mut depth = 0usize;
    let mut saw_root = false;
    let mut r = TestResults::default();
    // The current test case: name, and its outcome so far.
    let mut case: Option<(String, Outcome)> = None;
    let mut in_failure_text = false;
    let mut text = String::new();
    // Open suites: what each declares (tests, failed, skipped) and what
    // its cases came to.
    let mut suites: Vec<Suite> = Vec::new();
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| crate::results::xml_error(reader.error_position(), e))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let name = e.name();
                let local = name.local_name();
                let tag: &str = local.as_ref();
                if depth == 0 {
                    if !matches!(tag, "testsuites" | "testsuite") {
                        return Err(ParseError(format!(
                            "root element is <{tag}>, not <testsuites> or <testsuite>"
                        )));
                    }
                    saw_root = true;
                }
                let attr = |key: &str| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == key)
                        .and_then(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .ok()
                                .map(|v| v.into_owned())
                        })
                };
                match tag {
                    "testsuite" | "testsuites" => {
                        let num = |k: &str| attr(k).and_then(|v| v.trim().parse::<u64>().ok());
                        let failed = match (num("failures"), num("errors")) {
                            (None, None) => None,
                            (f, e) => Some(f.unwrap_or(0) + e.unwrap_or(0)),
                        };
                        suites.push(Suite {
                            name: attr("name").unwrap_or_else(|| tag.to_owned()),
                            declared: (num("tests"), failed, num("skipped")),
                            counted: TestCounts::default(),
                        });
                        if empty {
                            suites.pop().map(Suite::check).transpose()?;
                        }
                    }
                    "testcase" => {
                        let name = match (attr("classname"), attr("name")) {
                            (Some(c), Some(n)) if !c.is_empty() => format!("{c}::{n}"),
                            (_, Some(n)) => n,
                            _ => "<unnamed>".into(),
                        };
                        if empty {
                            r.counts.passed += 1;
                            for s in &mut suites {
                                s.counted.passed += 1;
                            }
                        } else {
                            case = Some((name, Outcome::Passed));
                        }
                    }
                    "failure" | "error" => {
                        if let Some((_, o)) = &mut case {
                            *o = Outcome::Failed(attr("message").unwrap_or_default());
                            in_failure_text = !empty;
                            text.clear();
                        }
                    }
                    "skipped" => {
                        if let Some((_, o)) = &mut case
                            && matches!(o, Outcome::Passed)
                        {
                            *o = Outcome::Skipped;
                        }
                    }
                    _ => {}
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::Text(t) if in_failure_text => {
                text.push_str(&t.xml10_content());
            }
            Event::GeneralRef(g) if in_failure_text => {
                let entity = g.into_inner();
                let decoded = match entity.as_ref() {
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "amp" => Some('&'),
                    "apos" => Some('\''),
                    "quot" => Some('"'),
                    e => e
                        .strip_prefix("#x")
                        .map(|h| u32::from_str_radix(h, 16))
                        .or_else(|| e.strip_prefix('#').map(str::parse::<u32>))
                        .and_then(Result::ok)
                        .and_then(char::from_u32),
                };
                text.extend(decoded);
            }
            Event::CData(t) if in_failure_text => {
                text.push_str(&t.into_inner());
            }
            Event::End(ref e) => {
                depth = depth.saturating_sub(1);
                let name = e.name();
                match name.local_name().as_ref() {
                    "failure" | "error" => {
                        in_failure_text = false;
                        if let Some((_, Outcome::Failed(m))) = &mut case
                            && !text.trim().is_empty()
                        {
                            let lines: Vec<&str> = text.lines().collect();
                            *m = message(&lines);
                        }
                    }
                    "testcase" => {
                        if let Some((name, outcome)) = case.take() {
                            let bump = |c: &mut TestCounts| match outcome {
                                Outcome::Passed => c.passed += 1,
                                Outcome::Skipped => c.skipped += 1,
                                Outcome::Failed(_) => c.failed += 1,
                            };
                            bump(&mut r.counts);
                            for s in &mut suites {
                                bump(&mut s.counted);
                            }
                            if let Outcome::Failed(message) = outcome {
                                r.failures.push(TestFailure { name, message });
                            }
                        }
                    }
                    "testsuite" | "testsuites" => {
                        suites.pop().map(Suite::check).transpose()?;
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_root {
        return Err(ParseError("no <testsuites> or <testsuite> element".into()));
    }
    if depth != 0 {
        return Err(ParseError(format!(
            "truncated: {depth} element(s) still open at the end of the file"
        )));
    }
    Ok(r)
}

enum Outcome {
    Passed,
    Skipped,
    Failed(String),
}
