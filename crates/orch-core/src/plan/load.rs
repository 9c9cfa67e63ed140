//! Loading plans from TOML, YAML and JSON, with errors that name the file,
//! the line and column, and the offending key or ticket.
//!
//! Loading runs in three steps, each of which can fail with a [`PlanError`]:
//!
//! 1. **Syntax**: the bytes must be valid UTF-8 and valid TOML/YAML/JSON,
//!    and at most [`MAX_PLAN_BYTES`] long.
//! 2. **Schema**: the document must match [`Plan`] (no unknown
//!    keys, right types, valid ids and efforts). The JSON Schema committed at
//!    `schema/plan.schema.json` describes the same shape for editors.
//! 3. **References**: [`Plan::validate`](super::Plan::validate), with every
//!    problem located in the file.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::Plan;

/// Largest plan file accepted: 16 MiB (about 60,000 tickets of typical size).
pub const MAX_PLAN_BYTES: u64 = 16 * 1024 * 1024;

/// A plan file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (`.toml`), the primary format.
    Toml,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`).
    Json,
}

impl Format {
    /// The format a file extension stands for.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// What kind of problem a [`Diagnostic`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanErrorKind {
    /// The file could not be read.
    Io,
    /// The file is larger than [`MAX_PLAN_BYTES`].
    TooLarge,
    /// The file extension is not `.toml`, `.yaml`, `.yml` or `.json`.
    UnknownFormat,
    /// Not valid UTF-8 / TOML / YAML / JSON.
    Syntax,
    /// Valid syntax, but not a plan: unknown key, wrong type, invalid id.
    Schema,
    /// A well-formed plan whose references do not hold: duplicate or
    /// unknown ticket, unknown batch, role or phase, empty plan.
    Invalid,
}

/// One located problem in a plan file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Diagnostic {
    /// What kind of problem.
    pub kind: PlanErrorKind,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// Key path of the offending value, e.g. `tickets[3].depends_on[0]`.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// A plan could not be loaded. Lists every problem found, each located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct PlanError {
    /// The file, when loading from a path.
    pub file: Option<PathBuf>,
    /// The problems, in document order (at least one).
    pub diagnostics: Vec<Diagnostic>,
}

impl PlanError {
    fn single(file: Option<&Path>, kind: PlanErrorKind, message: String) -> Self {
        PlanError {
            file: file.map(Path::to_path_buf),
            diagnostics: vec![Diagnostic {
                kind,
                line: None,
                column: None,
                path: None,
                message,
            }],
        }
    }

    /// The kind of the first problem.
    pub fn kind(&self) -> PlanErrorKind {
        self.diagnostics
            .first()
            .map_or(PlanErrorKind::Invalid, |d| d.kind)
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_deref()
            .map_or_else(|| "<plan>".to_owned(), |p| p.display().to_string());
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&file)?;
            if let Some(l) = d.line {
                write!(f, ":{l}")?;
                if let Some(c) = d.column {
                    write!(f, ":{c}")?;
                }
            }
            f.write_str(": ")?;
            if let Some(p) = &d.path {
                write!(f, "{p}: ")?;
            }
            f.write_str(&d.message)?;
        }
        Ok(())
    }
}

impl Plan {
    /// Loads and validates a plan file; the format follows the extension.
    ///
    /// # Errors
    /// [`PlanError`] naming the file, line, column and key of each problem.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Plan, PlanError> {
        let path = path.as_ref();
        let Some(format) = Format::from_path(path) else {
            return Err(PlanError::single(
                Some(path),
                PlanErrorKind::UnknownFormat,
                "unknown plan format: use a .toml, .yaml, .yml or .json file".into(),
            ));
        };
        let io = |e: std::io::Error| {
            PlanError::single(Some(path), PlanErrorKind::Io, format!("cannot read: {e}"))
        };
        // The limit is kept while reading, not taken from the size the
        // file claims: a device (`/dev/zero`) or a pipe says 0.
        let mut bytes = Vec::new();
        let file = std::fs::File::open(path).map_err(io)?;
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_PLAN_BYTES + 1),
            &mut bytes,
        )
        .map_err(io)?;
        if bytes.len() as u64 > MAX_PLAN_BYTES {
            return Err(too_large(Some(path), bytes.len() as u64));
        }
        Plan::from_bytes(&bytes, format, Some(path))
    }

    /// Parses and validates a TOML plan.
    ///
    /// # Errors
    /// [`PlanError`] locating each problem.
    pub fn from_toml_str(src: &str) -> Result<Plan, PlanError> {
        Plan::from_bytes(src.as_bytes(), Format::Toml, None)
    }

    /// Parses and validates a plan in `format`. `file` is only used in
    /// error messages.
    ///
    /// # Errors
    /// [`PlanError`] locating each problem.
    pub fn from_bytes(
        bytes: &[u8],
        format: Format,
        file: Option<&Path>,
    ) -> Result<Plan, PlanError> {
        if bytes.len() as u64 > MAX_PLAN_BYTES {
            return Err(too_large(file, bytes.len() as u64));
        }
        // A byte order mark (editors on Windows write one) is not content.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let src = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            let mut err = PlanError::single(
                file,
                PlanErrorKind::Syntax,
                format!("not valid UTF-8 (byte {})", e.valid_up_to()),
            );
            err.diagnostics[0].line = Some(line);
            err
        })?;
        let lines = LineIndex::new(src);
        let located =
            |kind, at: Option<(usize, usize)>, path: Option<String>, message: String| PlanError {
                file: file.map(Path::to_path_buf),
                diagnostics: vec![Diagnostic {
                    kind,
                    line: at.map(|a| a.0),
                    column: at.map(|a| a.1),
                    path,
                    message,
                }],
            };

        // Step 1: syntax, and the map from key paths to locations.
        let locator = match format {
            Format::Toml => match toml::de::DeTable::parse(src) {
                Ok(doc) => Locator::from_toml(&doc, &lines),
                Err(e) => {
                    let at = e.span().map(|s| lines.at(s.start));
                    return Err(located(
                        PlanErrorKind::Syntax,
                        at,
                        None,
                        e.message().trim().to_owned(),
                    ));
                }
            },
            Format::Yaml => match Locator::from_yaml(src) {
                Ok(loc) => loc,
                Err((at, message)) => {
                    return Err(located(PlanErrorKind::Syntax, Some(at), None, message));
                }
            },
            // JSON syntax is judged by serde_json below; the YAML parser
            // only serves to locate keys (JSON is YAML 1.2).
            Format::Json => Locator::from_yaml(src).unwrap_or_default(),
        };

        // Step 2: schema.
        let plan: Plan = match deserialize(src, format, &lines) {
            Ok(p) => p,
            Err((kind, path, at, message)) => {
                let at = at.or_else(|| path.as_deref().and_then(|p| locator.find(p)));
                let ticket = path
                    .as_deref()
                    .filter(|p| !p.ends_with(".id"))
                    .and_then(|p| locator.ticket_of(p));
                let message = match ticket {
                    Some(id) => format!("{message} (in ticket \"{id}\")"),
                    None => message,
                };
                return Err(located(kind, at, path, message));
            }
        };

        // Step 3: references.
        plan.validate().map_err(|problems| PlanError {
            file: file.map(Path::to_path_buf),
            diagnostics: problems
                .into_iter()
                .map(|p| {
                    let at = locator.find(&p.path);
                    Diagnostic {
                        kind: PlanErrorKind::Invalid,
                        line: at.map(|a| a.0),
                        column: at.map(|a| a.1),
                        path: Some(p.path),
                        message: p.message,
                    }
                })
                .collect(),
        })?;
        Ok(plan)
    }
}

fn too_large(file: Option<&Path>, len: u64) -> PlanError {
    PlanError::single(
        file,
        PlanErrorKind::TooLarge,
        if len > MAX_PLAN_BYTES + 1 {
            format!("plan is {len} bytes; the limit is {MAX_PLAN_BYTES} bytes (16 MiB)")
        } else {
            format!("plan is more than {MAX_PLAN_BYTES} bytes (16 MiB), the limit")
        },
    )
}

type SchemaError = (
    PlanErrorKind,
    Option<String>,
    Option<(usize, usize)>,
    String,
);

fn deserialize<T: DeserializeOwned>(
    src: &str,
    format: Format,
    lines: &LineIndex,
) -> Result<T, SchemaError> {
    fn path_of<E>(e: &serde_path_to_error::Error<E>) -> Option<String> {
        let p = e.path().to_string();
        (p != "." && !p.is_empty()).then_some(p)
    }
    match format {
        Format::Toml => {
            let de = toml::Deserializer::parse(src).map_err(|e| {
                let at = e.span().map(|s| lines.at(s.start));
                (
                    PlanErrorKind::Syntax,
                    None,
                    at,
                    e.message().trim().to_owned(),
                )
            })?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = path_of(&e);
                let inner = e.inner();
                let at = inner.span().map(|s| lines.at(s.start));
                (
                    PlanErrorKind::Schema,
                    path,
                    at,
                    inner.message().trim().to_owned(),
                )
            })
        }
        Format::Json => {
            let json_err = |path: Option<String>, inner: &serde_json::Error| {
                let kind = if inner.is_syntax() || inner.is_eof() {
                    PlanErrorKind::Syntax
                } else {
                    PlanErrorKind::Schema
                };
                let full = inner.to_string();
                let message = match full.rfind(" at line ") {
                    Some(i) => full[..i].to_owned(),
                    None => full,
                };
                let at = (inner.line() > 0).then(|| (inner.line(), inner.column().max(1)));
                (kind, path, at, message)
            };
            let mut de = serde_json::Deserializer::from_str(src);
            let value = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| json_err(path_of(&e), e.inner()))?;
            de.end().map_err(|e| json_err(None, &e))?;
            Ok(value)
        }
        Format::Yaml => {
            let mut out = None;
            let res = serde_saphyr::with_deserializer_from_str(src, |de| {
                let v: T = serde_path_to_error::deserialize(de).map_err(|e| {
                    let path = path_of(&e);
                    out = Some(path);
                    e.into_inner()
                })?;
                Ok(v)
            });
            res.map_err(|e| {
                let path = out.flatten();
                let at = e
                    .location()
                    .filter(|l| l.line() > 0)
                    .map(|l| (l.line() as usize, l.column().max(1) as usize));
                (PlanErrorKind::Schema, path, at, yaml_message(&e))
            })
        }
    }
}

fn yaml_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    // serde-saphyr appends a location and a source snippet; keep the message.
    let first = full.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // Drop a leading "line N column M: " (the location is reported apart).
    let first = match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((loc, rest)) if loc.contains(" column ") => rest,
        _ => first,
    };
    match first.find(" at line ") {
        Some(i) => first[..i].to_owned(),
        None => first.to_owned(),
    }
}

/// Byte offset → (1-based line, 1-based column in characters).
struct LineIndex<'a> {
    src: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(src: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { src, starts }
    }

    fn at(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let col = self
            .src
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, col)
    }
}

/// Appends a key to a key path the way error paths are written: `.key`, or
/// `."odd key"` when the key is not a plain word.
pub(crate) fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        path.push_str(key);
    } else {
        path.push_str(&format!("{key:?}"));
    }
}

/// Key path → location of the value (and the value, for scalars).
#[derive(Default)]
struct Locator {
    at: HashMap<String, (usize, usize)>,
    scalars: HashMap<String, String>,
}

impl Locator {
    fn find(&self, path: &str) -> Option<(usize, usize)> {
        // Fall back to the nearest located ancestor.
        let mut p = path;
        loop {
            if let Some(at) = self.at.get(p) {
                return Some(*at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The id of the ticket a path is inside, e.g. `tickets[3].priority`.
    fn ticket_of(&self, path: &str) -> Option<&str> {
        let rest = path.strip_prefix("tickets[")?;
        let idx = &rest[..rest.find(']')?];
        self.scalars
            .get(&format!("tickets[{idx}].id"))
            .map(String::as_str)
    }

    fn from_toml(doc: &toml::Spanned<toml::de::DeTable<'_>>, lines: &LineIndex<'_>) -> Locator {
        fn walk(
            loc: &mut Locator,
            path: &mut String,
            v: &toml::Spanned<toml::de::DeValue<'_>>,
            lines: &LineIndex<'_>,
        ) {
            loc.at.insert(path.clone(), lines.at(v.span().start));
            match v.get_ref() {
                toml::de::DeValue::String(s) => {
                    loc.scalars.insert(path.clone(), s.to_string());
                }
                toml::de::DeValue::Table(t) => table(loc, path, t, lines),
                toml::de::DeValue::Array(a) => {
                    for (i, item) in a.iter().enumerate() {
                        let len = path.len();
                        path.push_str(&format!("[{i}]"));
                        walk(loc, path, item, lines);
                        path.truncate(len);
                    }
                }
                _ => {}
            }
        }
        fn table(
            loc: &mut Locator,
            path: &mut String,
            t: &toml::de::DeTable<'_>,
            lines: &LineIndex<'_>,
        ) {
            for (k, v) in t.iter() {
                let len = path.len();
                push_key(path, k.get_ref());
                walk(loc, path, v, lines);
                path.truncate(len);
            }
        }
        let mut loc = Locator::default();
        let mut path = String::new();
        table(&mut loc, &mut path, doc.get_ref(), lines);
        loc
    }

    fn from_yaml(src: &str) -> Result<Locator, ((usize, usize), String)> {
        use serde_saphyr::granit_parser::{Event, Parser};
        enum Frame {
            Map { path: String, key: Option<String> },
            Seq { path: String, next: usize },
        }
        let mut loc = Locator::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut root_done = false;
        for item in Parser::new_from_str(src) {
            let (event, span) = match item {
                Ok(x) => x,
                Err(e) => {
                    let m = e.marker();
                    return Err(((m.line(), m.col() + 1), e.info()));
                }
            };
            let at = (span.start.line(), span.start.col() + 1);
            // The path of a node starting here; None when it is a map key.
            let node_path = |stack: &mut Vec<Frame>| -> Option<String> {
                match stack.last_mut() {
                    None => Some(String::new()),
                    Some(Frame::Seq { path, next }) => {
                        let p = format!("{path}[{next}]");
                        *next += 1;
                        Some(p)
                    }
                    Some(Frame::Map { path, key }) => key.take().map(|k| {
                        let mut p = path.clone();
                        push_key(&mut p, &k);
                        p
                    }),
                }
            };
            match event {
                Event::Scalar(value, ..) => {
                    if matches!(stack.last(), Some(Frame::Map { key: None, .. })) {
                        if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                            *key = Some(value.into_owned());
                        }
                    } else if let Some(p) = node_path(&mut stack) {
                        loc.at.insert(p.clone(), at);
                        loc.scalars.insert(p, value.into_owned());
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    if root_done && stack.is_empty() {
                        break; // a second document: ignore
                    }
                    let is_map = matches!(event, Event::MappingStart(..));
                    // A complex (non-scalar) map key: give up locating.
                    if matches!(stack.last(), Some(Frame::Map { key: None, .. })) {
                        break;
                    }
                    let Some(p) = node_path(&mut stack) else {
                        break;
                    };
                    loc.at.insert(p.clone(), at);
                    stack.push(if is_map {
                        Frame::Map { path: p, key: None }
                    } else {
                        Frame::Seq { path: p, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    if stack.is_empty() {
                        root_done = true;
                    }
                }
                Event::Alias(_) => {
                    let _ = node_path(&mut stack);
                }
                _ => {}
            }
        }
        Ok(loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_counts_characters() {
        let li = LineIndex::new("ab\ncé\nx");
        assert_eq!(li.at(0), (1, 1));
        assert_eq!(li.at(3), (2, 1));
        assert_eq!(li.at(6), (2, 3));
        assert_eq!(li.at(7), (3, 1));
    }

    #[test]
    fn yaml_and_json_locator_paths() {
        let loc = Locator::from_yaml("a:\n  - x: 1\n    y: [2, 3]\n  - z\nb: q\n").unwrap();
        assert_eq!(loc.find("a[0].y[1]"), Some((3, 12)));
        assert_eq!(loc.find("a[1]"), Some((4, 5)));
        assert_eq!(loc.find("b"), Some((5, 4)));
        let loc = Locator::from_yaml("{\"t\": [{\"id\": \"X\"},\n {\"id\": \"Y\"}]}").unwrap();
        assert_eq!(loc.find("t[1].id"), Some((2, 9)));
        assert_eq!(loc.scalars["t[1].id"], "Y");
    }

    #[test]
    fn toml_locator_paths() {
        let src = "a = 1\n[[t]]\nid = \"X\"\n[[t]]\nid = \"Y\"\ndeps = [\"A\", \"B\"]\n";
        let doc = toml::de::DeTable::parse(src).unwrap();
        let lines = LineIndex::new(src);
        let loc = Locator::from_toml(&doc, &lines);
        assert_eq!(loc.find("t[1].id"), Some((5, 6)));
        assert_eq!(loc.find("t[1].deps[1]"), Some((6, 14)));
        assert_eq!(loc.scalars["t[0].id"], "X");
    }
}
