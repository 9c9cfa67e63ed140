//! Parsers for coverage reports: LCOV, Cobertura XML, `llvm-cov export`
//! JSON (what `cargo llvm-cov --json` writes) and coverage.py JSON.

use orch_core::plan::CoverageFormat;
use quick_xml::events::Event;
use serde::Deserialize;

use crate::results::ParseError;

/// Line (and branch) totals of a report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coverage {
    /// Lines (statements) instrumented.
    pub lines_total: u64,
    /// Of those, executed.
    pub lines_covered: u64,
    /// Branches instrumented (0: the report has no branch data).
    pub branches_total: u64,
    /// Of those, taken.
    pub branches_covered: u64,
}

impl Coverage {
    /// Line coverage in percent; `None` when no lines are instrumented.
    pub fn line_percent(&self) -> Option<f64> {
        pct(self.lines_covered, self.lines_total)
    }

    /// Branch coverage in percent; `None` without branch data.
    pub fn branch_percent(&self) -> Option<f64> {
        pct(self.branches_covered, self.branches_total)
    }
}

fn pct(covered: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| covered as f64 * 100.0 / total as f64)
}

/// Parses an LCOV tracefile, tolerantly: unknown lines are skipped, `LF`/`LH`
/// are preferred and `DA` lines counted when they are missing, and a `-`
/// in `BRDA` (coverage.py writes `BRDA:5,0,jump to line 6,-`) counts as not
/// taken.
///
/// # Errors
/// When the text has no coverage records at all.
pub fn lcov(text: &str) -> Result<Coverage, ParseError> {
    let mut c = Coverage {
        lines_total: 0,
        lines_covered: 0,
        branches_total: 0,
        branches_covered: 0,
    };
    // Per record: (LF, LH, DA found, DA hit, BRF, BRH, BRDA found, BRDA hit)
    #[derive(Default)]
    struct Rec {
        lf: Option<u64>,
        lh: Option<u64>,
        da: (u64, u64),
        brf: Option<u64>,
        brh: Option<u64>,
        brda: (u64, u64),
    }
    let mut rec = Rec::default();
    let mut records = 0;
    // The file of the open record, and whether anything was read in it.
    let mut file = String::new();
    let mut open = false;
    // Totals a record declares must be those of its own lines: a report
    // edited to claim coverage its records do not show is not trusted.
    let flush = |rec: &mut Rec, c: &mut Coverage, file: &str| -> Result<(), ParseError> {
        let agree = |what: &str, said: Option<u64>, counted: (u64, u64), hit: bool| {
            let n = if hit { counted.1 } else { counted.0 };
            match said {
                Some(v) if counted.0 > 0 && v != n => Err(ParseError(format!(
                    "the record of {file} declares {what}:{v}, but its lines show {n}"
                ))),
                _ => Ok(()),
            }
        };
        if rec.lf.is_some_and(|lf| lf > 0) && rec.da.0 == 0 {
            return Err(ParseError(format!(
                "the record of {file} declares LF:{} but has no DA line records",
                rec.lf.unwrap_or(0)
            )));
        }
        agree("LF", rec.lf, rec.da, false)?;
        agree("LH", rec.lh, rec.da, true)?;
        agree("BRF", rec.brf, rec.brda, false)?;
        agree("BRH", rec.brh, rec.brda, true)?;
        let (lt, lc) = (rec.lf.unwrap_or(rec.da.0), rec.lh.unwrap_or(rec.da.1));
        let (bt, bc) = (rec.brf.unwrap_or(rec.brda.0), rec.brh.unwrap_or(rec.brda.1));
        if lc > lt || bc > bt {
            return Err(ParseError(format!(
                "the record of {file} covers more than it instruments ({lc} of {lt} lines, {bc} of {bt} branches)"
            )));
        }
        c.lines_total += lt;
        c.lines_covered += lc;
        c.branches_total += bt;
        c.branches_covered += bc;
        *rec = Rec::default();
        Ok(())
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    for line in text.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once(':') else {
            if line == "end_of_record" {
                records += 1;
                flush(&mut rec, &mut c, &file)?;
                open = false;
            }
            continue;
        };
        open = true;
        match key {
            "SF" => file = value.trim().to_owned(),
            "LF" => rec.lf = num(value),
            "LH" => rec.lh = num(value),
            "BRF" => rec.brf = num(value),
            "BRH" => rec.brh = num(value),
            "DA" => {
                let mut parts = value.split(',');
                let (_line, hits) = (parts.next(), parts.next().and_then(num));
                rec.da.0 += 1;
                rec.da.1 += u64::from(hits.unwrap_or(0) > 0);
            }
            "BRDA" => {
                let taken = value.rsplit(',').next().and_then(num).unwrap_or(0);
                rec.brda.0 += 1;
                rec.brda.1 += u64::from(taken > 0);
            }
            _ => {}
        }
    }
    if records == 0 {
        return Err(ParseError(
            "no LCOV records (no `end_of_record` line)".into(),
        ));
    }
    if open {
        return Err(ParseError(format!(
            "the report ends in the middle of a record ({}): cut off?",
            if file.is_empty() {
                "no file named"
            } else {
                &file
            }
        )));
    }
    Ok(c)
}

/// The source files a report names, for checking that they exist in the
/// work tree it claims to describe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    /// Each file as the report names it.
    pub files: Vec<String>,
    /// Directories the names are relative to, besides the work tree
    /// (Cobertura's `<source>` elements).
    pub roots: Vec<String>,
}

/// The source files a report of `format` names: LCOV `SF:` lines,
/// Cobertura `<class filename>` (with its `<source>` roots), the
/// `files[].filename` of an llvm-cov export and the `files` keys of a
/// coverage.py report.
///
/// # Errors
/// When the report cannot be read as its format.
pub fn named_files(format: CoverageFormat, bytes: &[u8]) -> Result<Named, ParseError> {
    let text = || String::from_utf8_lossy(bytes);
    let json = |what: &str| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| ParseError(format!("not {what}: {e}")))
    };
    let mut named = Named::default();
    match format {
        CoverageFormat::Lcov => {
            named.files = text()
                .lines()
                .filter_map(|l| l.trim().strip_prefix("SF:"))
                .map(|f| f.trim().to_owned())
                .collect();
        }
        CoverageFormat::Cobertura => {
            let mut reader = quick_xml::Reader::from_reader(bytes);
            let mut buf = Vec::new();
            let mut in_source = false;
            loop {
                match reader.read_event_into(&mut buf) {
                    Err(e) => return Err(crate::results::xml_error(reader.error_position(), e)),
                    Ok(Event::Eof) => break,
                    Ok(Event::Start(e) | Event::Empty(e)) => {
                        let name = e.name();
                        let local = name.local_name();
                        let tag: &str = local.as_ref();
                        in_source = tag == "source";
                        if tag == "class"
                            && let Some(v) = e
                                .attributes()
                                .flatten()
                                .find(|a| a.key.local_name().as_ref() == "filename")
                                .and_then(|a| {
                                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok()
                                })
                        {
                            named.files.push(v.into_owned());
                        }
                    }
                    Ok(Event::Text(t)) if in_source => {
                        named.roots.push(t.xml10_content().trim().to_owned());
                    }
                    Ok(Event::End(_)) => in_source = false,
                    Ok(_) => {}
                }
                buf.clear();
            }
        }
        CoverageFormat::LlvmCovJson => {
            let doc = json("an llvm-cov JSON export")?;
            for data in doc["data"].as_array().into_iter().flatten() {
                for f in data["files"].as_array().into_iter().flatten() {
                    if let Some(name) = f["filename"].as_str() {
                        named.files.push(name.to_owned());
                    }
                }
            }
        }
        CoverageFormat::CoveragePyJson => {
            let doc = json("a coverage.py JSON report")?;
            if let Some(files) = doc["files"].as_object() {
                named.files = files.keys().cloned().collect();
            }
        }
    }
    Ok(named)
}

/// Parses the totals of a Cobertura XML report (root `<coverage>`).
///
/// # Errors
/// Invalid XML, another root element, or no line totals.
pub fn cobertura(xml: &[u8]) -> Result<Coverage, ParseError> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Err(e) => {
                return Err(crate::results::xml_error(reader.error_position(), e));
            }
            Ok(Event::Start(e) | Event::Empty(e)) => {
                if e.name().local_name().as_ref() != "coverage" {
                    return Err(ParseError(format!(
                        "root element is <{}>, not <coverage>",
                        e.name().as_ref()
                    )));
                }
                let attr = |k: &str| -> Option<f64> {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == k)
                        .and_then(|a| a.value.trim().parse::<f64>().ok())
                        .filter(|v| v.is_finite() && *v >= 0.0)
                };
                let (lv, lc) = (attr("lines-valid"), attr("lines-covered"));
                let (bv, bc) = (attr("branches-valid"), attr("branches-covered"));
                let (Some(lv), Some(lc)) = (lv, lc) else {
                    return Err(ParseError(
                        "<coverage> has no lines-valid / lines-covered totals".into(),
                    ));
                };
                // The rest of the document must be well formed too.
                let mut depth = 1usize;
                loop {
                    match reader.read_event_into(&mut buf) {
                        Err(e) => {
                            return Err(crate::results::xml_error(reader.error_position(), e));
                        }
                        Ok(Event::Start(_)) => depth += 1,
                        Ok(Event::End(_)) => depth -= 1,
                        Ok(Event::Eof) => break,
                        Ok(_) => {}
                    }
                    buf.clear();
                }
                if depth != 0 {
                    return Err(ParseError(format!(
                        "truncated: {depth} element(s) still open at the end of the file"
                    )));
                }
                return Ok(Coverage {
                    lines_total: lv as u64,
                    lines_covered: lc as u64,
                    branches_total: bv.unwrap_or(0.0) as u64,
                    branches_covered: bc.unwrap_or(0.0) as u64,
                });
            }
            Ok(Event::Eof) => return Err(ParseError("no <coverage> element".into())),
            Ok(_) => {}
        }
        buf.clear();
    }
}

#[derive(Deserialize)]
struct Count {
    count: u64,
    covered: u64,
}

/// Parses `llvm-cov export -format=text` JSON (`cargo llvm-cov --json`):
/// the `totals` of the first export object.
///
/// # Errors
/// Not JSON, or not an `llvm.coverage.json.export` document.
pub fn llvm_cov_json(text: &str) -> Result<Coverage, ParseError> {
    #[derive(Deserialize)]
    struct Totals {
        lines: Count,
        #[serde(default)]
        branches: Option<Count>,
    }
    #[derive(Deserialize)]
    struct Data {
        totals: Totals,
    }
    #[derive(Deserialize)]
    struct Export {
        #[serde(rename = "type")]
        kind: String,
        data: Vec<Data>,
    }
    let e: Export = serde_json::from_str(text)
        .map_err(|e| ParseError(format!("not an llvm-cov JSON export: {e}")))?;
    if e.kind != "llvm.coverage.json.export" {
        return Err(ParseError(format!(
            "type is {:?}, not \"llvm.coverage.json.export\"",
            e.kind
        )));
    }
    let d = e
        .data
        .first()
        .ok_or_else(|| ParseError("llvm-cov export has no data".into()))?;
    let b = d.totals.branches.as_ref();
    Ok(Coverage {
        lines_total: d.totals.lines.count,
        lines_covered: d.totals.lines.covered,
        branches_total: b.map_or(0, |b| b.count),
        branches_covered: b.map_or(0, |b| b.covered),
    })
}

/// Parses coverage.py's `coverage json` report (its `totals`).
///
/// # Errors
/// Not JSON, or no `totals` with statement counts.
pub fn coverage_py_json(text: &str) -> Result<Coverage, ParseError> {
    #[derive(Deserialize)]
    struct Totals {
        covered_lines: u64,
        num_statements: u64,
        #[serde(default)]
        num_branches: u64,
        #[serde(default)]
        covered_branches: u64,
    }
    #[derive(Deserialize)]
    struct Report {
        totals: Totals,
    }
    let r: Report = serde_json::from_str(text)
        .map_err(|e| ParseError(format!("not a coverage.py JSON report: {e}")))?;
    Ok(Coverage {
        lines_total: r.totals.num_statements,
        lines_covered: r.totals.covered_lines,
        branches_total: r.totals.num_branches,
        branches_covered: r.totals.covered_branches,
    })
}
