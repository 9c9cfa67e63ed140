//! Parsers against real tool outputs (tests/fixtures, see its README) and
//! against broken input.

use orch_gates::coverage_parse::{cobertura, coverage_py_json, lcov, llvm_cov_json};
use orch_gates::results::{junit, libtest, nextest};

mod support;
use support::fixture;

#[test]
fn libtest_human_output() {
    let r = libtest(&fixture("libtest_human.txt")).unwrap();
    assert_eq!(
        (r.counts.passed, r.counts.failed, r.counts.skipped),
        (2, 1, 1)
    );
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].name, "tests::fails");
    let m = &r.failures[0].message;
    assert!(
        m.contains("assertion `left == right` failed: math is broken"),
        "{m}"
    );
    assert!(
        m.contains("left: 4") && !m.contains("rust_begin_unwind"),
        "backtrace frames are dropped: {m}"
    );
}

#[test]
fn libtest_sums_every_binary_and_doctests() {
    let out = "running 2 tests\ntest a ... ok\ntest b ... ok\n\ntest result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\n   Doc-tests x\n\nrunning 2 tests\ntest src/lib.rs - f (line 3) ... ok\ntest src/lib.rs - g (line 9) ... ignored\n\ntest result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n";
    let r = libtest(out).unwrap();
    assert_eq!(
        (r.counts.passed, r.counts.failed, r.counts.skipped),
        (3, 0, 1)
    );
    assert!(
        libtest("error[E0425]: cannot find value `x`\n").is_err(),
        "no result line is an error"
    );
}

#[test]
fn nextest_human_output() {
    let r = nextest(&fixture("nextest_human.txt")).unwrap();
    assert_eq!(
        (r.counts.passed, r.counts.failed, r.counts.skipped),
        (2, 1, 1)
    );
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].name, "rsdemo tests::fails");
    assert!(
        r.failures[0].message.contains("math is broken"),
        "{}",
        r.failures[0].message
    );
    assert!(nextest("    Starting 3 tests\n").is_err());
}

#[test]
fn pytest_junit_recomputes_totals_from_cases() {
    let r = junit(fixture("pytest_junit.xml").as_bytes()).unwrap();
    // 1 pass, 1 failure, 1 skip, 1 setup error (an error counts as failed).
    assert_eq!(
        (r.counts.passed, r.counts.failed, r.counts.skipped),
        (1, 2, 1)
    );
    let names: Vec<&str> = r.failures.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["test_calc::test_div_fails", "test_calc::test_error"]
    );
    assert!(
        r.failures[0]
            .message
            .contains("AssertionError: half is not 0.6"),
        "{}",
        r.failures[0].message
    );
    assert!(
        r.failures[0].message.contains("> "),
        "entities are decoded: {}",
        r.failures[0].message
    );
    assert!(
        r.failures[1]
            .message
            .contains("RuntimeError: fixture exploded")
    );
}

#[test]
fn nextest_junit() {
    let r = junit(fixture("nextest_junit.xml").as_bytes()).unwrap();
    assert_eq!(
        (r.counts.passed, r.counts.failed, r.counts.skipped),
        (2, 1, 0)
    );
    assert_eq!(r.failures[0].name, "rsdemo::tests::fails");
    assert!(r.failures[0].message.contains("math is broken"));
}

#[test]
fn broken_junit_is_refused() {
    let full = fixture("pytest_junit.xml");
    let truncated = &full[..full.len() / 2];
    let e = junit(truncated.as_bytes()).unwrap_err();
    assert!(
        e.0.contains("truncated") || e.0.contains("not valid XML"),
        "{}",
        e.0
    );
    let garbage: Vec<u8> = (0..2000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert!(junit(&garbage).is_err());
    assert!(junit(b"").is_err(), "empty file");
    let e = junit(b"<html><body/></html>").unwrap_err();
    assert_eq!(
        e.0,
        "root element is <html>, not <testsuites> or <testsuite>"
    );
}

#[test]
fn coverage_reports() {
    // coverage.py: 17 statements, 12 covered; 2 branches, 0 covered.
    let j = coverage_py_json(&fixture("coverage_py.json")).unwrap();
    assert_eq!(
        (
            j.lines_covered,
            j.lines_total,
            j.branches_covered,
            j.branches_total
        ),
        (12, 17, 0, 2)
    );
    let x = cobertura(fixture("coverage_py.xml").as_bytes()).unwrap();
    assert_eq!((x.lines_covered, x.lines_total), (12, 17));
    assert!((x.line_percent().unwrap() - 70.588).abs() < 0.01);
    // LCOV from the same tool: calc.py LF 6 LH 5, test_calc.py LF 14 LH 12; BRF 2 BRH 1.
    let l = lcov(&fixture("coverage_py.lcov")).unwrap();
    assert_eq!(
        (
            l.lines_covered,
            l.lines_total,
            l.branches_covered,
            l.branches_total
        ),
        (17, 20, 1, 2)
    );
    let b = coverage_py_json(&fixture("coverage_py_branch.json")).unwrap();
    assert_eq!(
        (b.lines_covered, b.lines_total),
        (17, 20),
        "json and lcov of one run agree"
    );
}

#[test]
fn lcov_is_read_tolerantly() {
    // No LF/LH: count DA lines. A '-' in BRDA means not taken.
    let text = "TN:\nSF:a.py\nDA:1,1\nDA:2,0\nDA:3,4,abcdef\nBRDA:5,0,jump to line 6,-\nBRDA:5,0,jump to line 7,2\nend_of_record\n";
    let c = lcov(text).unwrap();
    assert_eq!(
        (
            c.lines_covered,
            c.lines_total,
            c.branches_covered,
            c.branches_total
        ),
        (2, 3, 1, 2)
    );
    assert!(lcov("hello\nworld\n").is_err());
}

#[test]
fn llvm_cov_export_shape() {
    // The shape LLVM documents for `llvm-cov export -format=text`.
    let doc = r#"{"type":"llvm.coverage.json.export","version":"2.0.1","data":[{"files":[],"functions":[],
        "totals":{"lines":{"count":200,"covered":170,"percent":85.0},"branches":{"count":10,"covered":5,"notcovered":5,"percent":50.0},
        "functions":{"count":10,"covered":9,"percent":90.0},"regions":{"count":50,"covered":40,"notcovered":10,"percent":80.0}}}]}"#;
    let c = llvm_cov_json(doc).unwrap();
    assert_eq!(
        (
            c.lines_covered,
            c.lines_total,
            c.branches_covered,
            c.branches_total
        ),
        (170, 200, 5, 10)
    );
    assert!(
        llvm_cov_json(r#"{"type":"other","data":[]}"#)
            .unwrap_err()
            .0
            .contains("not \"llvm.coverage.json.export\"")
    );
    assert!(llvm_cov_json("{not json").is_err());
}

#[test]
fn broken_coverage_reports_are_refused() {
    let xml = fixture("coverage_py.xml");
    assert!(
        cobertura(&xml.as_bytes()[..xml.len() - 40]).is_err(),
        "truncated Cobertura"
    );
    assert!(cobertura(b"\x00\x01\x02garbage").is_err());
    assert!(coverage_py_json("{\"meta\": {}}").is_err());
}

/// The totals a JUnit report declares (pytest puts them on
/// `<testsuite>`, nextest on `<testsuites>` too) must be those of its
/// test cases: a report edited to claim more tests, or no failures,
/// fails, naming the suite; real reports pass.
#[test]
fn junit_totals_must_agree_with_the_test_cases() {
    for name in ["pytest_junit.xml", "nextest_junit.xml"] {
        let real = fixture(name);
        assert!(junit(real.as_bytes()).is_ok(), "{name}");
    }
    let real = fixture("nextest_junit.xml");
    for (from, to, why) in [
        (
            r#"name="rsdemo" tests="3""#,
            r#"name="rsdemo" tests="30""#,
            "suite \"rsdemo\" declares 30 tests but its test cases hold 3",
        ),
        (
            r#"errors="0" failures="1">"#,
            r#"errors="0" failures="0">"#,
            "suite \"rsdemo\" declares 0 failures and errors but its test cases hold 1",
        ),
        (
            r#"name="nextest-run" tests="3""#,
            r#"name="nextest-run" tests="4""#,
            "suite \"nextest-run\" declares 4 tests",
        ),
    ] {
        assert!(real.contains(from), "{from}");
        let edited = real.replacen(from, to, 1);
        let e = junit(edited.as_bytes()).unwrap_err();
        assert!(e.0.contains(why), "{}", e.0);
    }
    // Cases removed, totals left: the claim is refused too.
    let e =
        junit(br#"<testsuite name="s" tests="5" failures="0"><testcase name="a"/></testsuite>"#)
            .unwrap_err();
    assert!(
        e.0.contains("declares 5 tests but its test cases hold 1"),
        "{}",
        e.0
    );
}

/// nextest: a flaky test (failed, then passed on a retry) is counted once,
/// as passed; a run cancelled after a failure (`2/3 tests run`) still
/// names the failing test with its message and says it stopped; a
/// summary whose counts do not add up to the tests it says ran fails.
#[test]
fn nextest_flaky_cancelled_and_lying_summaries() {
    let real = fixture("nextest_human.txt");
    let summary = "3 tests run: 2 passed, 1 failed, 1 skipped";
    assert!(real.contains(summary));
    let flaky = real.replace(summary, "3 tests run: 3 passed (1 flaky), 1 skipped");
    let r = nextest(&flaky).unwrap();
    assert_eq!(
        (r.counts.passed, r.counts.failed),
        (3, 0),
        "flaky counted once"
    );
    let cancelled = real.replace(summary, "2/3 tests run: 1 passed, 1 failed, 1 skipped");
    let r = nextest(&cancelled).unwrap();
    assert_eq!(r.incomplete, Some((2, 3)));
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].name, "rsdemo tests::fails");
    assert!(
        r.failures[0].message.contains("math is broken"),
        "{}",
        r.failures[0].message
    );
    let lying = real.replace(summary, "3 tests run: 30 passed, 1 skipped");
    let e = nextest(&lying).unwrap_err();
    assert!(
        e.0.contains("says 3 tests ran, but counts 30 passed and 0 failed"),
        "{}",
        e.0
    );
}
