//! Coverage figures that cannot be true.

use crate::support::*;

/// A work tree with the files coverage.py's reports of `pydemo` name,
/// and a gate that copies `report` in (as a coverage command would).
fn project(
    report_name: &str,
    report: impl AsRef<[u8]>,
    format: &str,
) -> (tempfile::TempDir, serde_json::Value) {
    let d = tempfile::tempdir().unwrap();
    for f in ["calc.py", "test_calc.py"] {
        write(d.path(), f, "# source\n");
    }
    write(d.path(), "made.cov", report);
    let gate = serde_json::json!({"kind": "coverage", "format": format, "report": report_name,
        "argv": ["cp", "made.cov", report_name], "min_line_percent": 1.0});
    (d, gate)
}

async fn lcov_fails(report: String, why: &str) {
    let (d, gate) = project("lcov.info", report, "lcov");
    fails(d.path(), gate, why).await;
}

/// coverage.py's real LCOV with `LH` raised.
#[tokio::test]
async fn lcov_lines_hit_raised() {
    let real = fixture("coverage_py.lcov");
    let lh = real.lines().find(|l| l.starts_with("LH:")).unwrap();
    lcov_fails(
        real.replacen(lh, "LH:999", 1),
        "declares LH:999, but its lines show",
    )
    .await;
}

/// coverage.py's real LCOV with `LF` lowered (fewer lines to cover).
#[tokio::test]
async fn lcov_lines_found_lowered() {
    let real = fixture("coverage_py.lcov");
    let lf = real.lines().find(|l| l.starts_with("LF:")).unwrap();
    lcov_fails(
        real.replacen(lf, "LF:1", 1),
        "declares LF:1, but its lines show",
    )
    .await;
}

/// An LCOV report of another project: it names files this tree lacks.
#[tokio::test]
async fn lcov_of_files_not_in_the_work_tree() {
    lcov_fails(
        fixture("coverage_py.lcov").replacen("SF:", "SF:elsewhere/", 1),
        "which is not a file of the work tree",
    )
    .await;
}

/// An LCOV report cut off in its last record.
#[tokio::test]
async fn lcov_cut_off_mid_record() {
    let real = fixture("coverage_py.lcov");
    lcov_fails(
        real[..real.rfind("end_of_record").unwrap()].to_owned(),
        "ends in the middle of a record",
    )
    .await;
}

/// Bytes that are not a report.
#[tokio::test]
async fn lcov_of_garbage() {
    let (d, gate) = project("lcov.info", b"\x00\x9f garbage", "lcov");
    fails(d.path(), gate, "report lcov.info is unreadable").await;
}

/// coverage.py's real Cobertura report with more lines covered than
/// there are: over 100 %.
#[tokio::test]
async fn cobertura_over_one_hundred_percent() {
    let edited =
        fixture("coverage_py.xml").replacen(r#"lines-covered="12""#, r#"lines-covered="40""#, 1);
    let (d, gate) = project("coverage.xml", edited, "cobertura");
    fails(
        d.path(),
        gate,
        "it covers more than it instruments (40 of 17 lines",
    )
    .await;
}

/// A Cobertura report written by hand: totals, no classes.
#[tokio::test]
async fn cobertura_with_totals_and_no_files() {
    let (d, gate) = project(
        "coverage.xml",
        r#"<?xml version="1.0" ?><coverage lines-valid="100" lines-covered="100"><packages/></coverage>"#,
        "cobertura",
    );
    fails(d.path(), gate, "it names no source file").await;
}

/// coverage.py's real Cobertura report in a tree without its files.
#[tokio::test]
async fn cobertura_of_files_not_in_the_work_tree() {
    let edited =
        fixture("coverage_py.xml").replace(r#"filename="calc.py""#, r#"filename="gone/calc.py""#);
    let (d, gate) = project("coverage.xml", edited, "cobertura");
    fails(
        d.path(),
        gate,
        "it names gone/calc.py, which is not a file of the work tree",
    )
    .await;
}

/// coverage.py's real JSON report naming a file that is not there.
#[tokio::test]
async fn coverage_py_json_of_files_not_in_the_work_tree() {
    let edited =
        fixture("coverage_py.json").replacen(r#""calc.py": {"#, r#""other/calc.py": {"#, 1);
    let (d, gate) = project("coverage.json", edited, "coverage_py_json");
    fails(
        d.path(),
        gate,
        "it names other/calc.py, which is not a file of the work tree",
    )
    .await;
}

/// An llvm-cov export with totals and an empty file list.
#[tokio::test]
async fn llvm_cov_export_with_no_files() {
    let doc = r#"{"type":"llvm.coverage.json.export","version":"2.0.1","data":[{"files":[],"functions":[],
        "totals":{"lines":{"count":200,"covered":200,"percent":100.0}}}]}"#;
    let (d, gate) = project("cov.json", doc, "llvm_cov_json");
    fails(d.path(), gate, "it names no source file").await;
}

/// An LCOV record with totals and no line records behind them.
#[tokio::test]
async fn lcov_totals_without_line_records() {
    lcov_fails(
        "SF:calc.py\nLF:100\nLH:100\nend_of_record\n".into(),
        "declares LF:100 but has no DA line records",
    )
    .await;
}

/// Cobertura totals that are not numbers a count can be (`inf`).
#[tokio::test]
async fn cobertura_infinite_totals() {
    let edited = fixture("coverage_py.xml")
        .replacen(r#"lines-valid="17""#, r#"lines-valid="inf""#, 1)
        .replacen(r#"lines-covered="12""#, r#"lines-covered="inf""#, 1);
    let (d, gate) = project("coverage.xml", edited, "cobertura");
    fails(d.path(), gate, "has no lines-valid / lines-covered totals").await;
}
