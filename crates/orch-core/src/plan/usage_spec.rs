//! [`UsageSpec`]: how a `command` backend's token and cost usage is read
//! from what it prints, so budgets see what any CLI spends.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Usage;

/// Where a `command` backend's usage is in its standard output: JSON
/// pointers into lines that are JSON objects, or a regular expression with
/// named groups `input_tokens`, `output_tokens` and `cost_usd`. By default
/// each field's last value counts (a CLI that prints its totals at the
/// end); with `sum`, every line's values are added up (a CLI that prints
/// each message's usage). Values that are not finite, non-negative numbers
/// are ignored.
///
/// ```toml
/// [agents.dev.backend]
/// kind = "command"
/// argv = ["my-agent", "--json"]
/// usage = { input_tokens = "/usage/input", output_tokens = "/usage/output", cost_usd = "/cost" }
/// # or: usage = { regex = 'tokens in=(?<input_tokens>\d+) out=(?<output_tokens>\d+)' }
/// ```
///
/// ```
/// use orch_core::UsageSpec;
/// let spec: UsageSpec = serde_json::from_value(serde_json::json!(
///     {"input_tokens": "/usage/in", "output_tokens": "/usage/out"})).unwrap();
/// let mut reader = spec.reader().unwrap();
/// reader.line(r#"{"type": "progress"}"#);
/// reader.line(r#"{"type": "result", "usage": {"in": 1200, "out": 80}}"#);
/// assert_eq!((reader.usage().input_tokens, reader.usage().output_tokens), (1200, 80));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UsageSpec {
    /// JSON pointer to the input tokens (e.g. `/usage/input_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<String>,
    /// JSON pointer to the output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<String>,
    /// JSON pointer to the cost in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<String>,
    /// Instead of pointers: a regular expression matched against each line,
    /// with at least one of the named groups `input_tokens`,
    /// `output_tokens`, `cost_usd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Add up every line's usage instead of taking the last.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sum: bool,
}

const FIELDS: [&str; 3] = ["input_tokens", "output_tokens", "cost_usd"];

impl UsageSpec {
    /// A reader of one run's output.
    ///
    /// # Errors
    /// What is wrong with the spec: no pointer and no regex, both, a
    /// pointer that does not start with `/`, a regex that does not compile
    /// or names none of the three groups.
    pub fn reader(&self) -> Result<UsageReader, String> {
        let pointers = [&self.input_tokens, &self.output_tokens, &self.cost_usd];
        let how = match (&self.regex, pointers.iter().any(|p| p.is_some())) {
            (Some(_), true) => return Err("give JSON pointers or a regex, not both".into()),
            (None, false) => {
                return Err(
                    "say where the usage is: input_tokens, output_tokens or cost_usd (JSON pointers), or regex"
                        .into(),
                );
            }
            (Some(r), false) => {
                let re = regex::Regex::new(r).map_err(|e| format!("regex: {e}"))?;
                if !re.capture_names().flatten().any(|n| FIELDS.contains(&n)) {
                    return Err(
                        "regex: name at least one group input_tokens, output_tokens or cost_usd, e.g. (?<input_tokens>\\d+)"
                            .into(),
                    );
                }
                How::Regex(re)
            }
            (None, true) => {
                for (name, p) in FIELDS.iter().zip(pointers) {
                    if let Some(p) = p
                        && !p.starts_with('/')
                    {
                        return Err(format!(
                            "{name}: a JSON pointer starts with '/', e.g. \"/usage/{name}\"; got {p:?}"
                        ));
                    }
                }
                How::Pointers(pointers.map(Clone::clone))
            }
        };
        Ok(UsageReader {
            how,
            sum: self.sum,
            usage: Usage::default(),
        })
    }
}

#[derive(Debug, Clone)]
enum How {
    Pointers([Option<String>; 3]),
    Regex(regex::Regex),
}

/// Reads usage from a run's output lines ([`UsageSpec::reader`]). A
/// clone starts from the same usage (a fresh reader's is zero).
#[derive(Debug, Clone)]
pub struct UsageReader {
    how: How,
    sum: bool,
    usage: Usage,
}

impl UsageReader {
    /// Takes the usage `line` reports, if any.
    pub fn line(&mut self, line: &str) {
        let mut found = [None::<f64>; 3];
        match &self.how {
            How::Pointers(pointers) => {
                let trimmed = line.trim_start();
                if !trimmed.starts_with('{') {
                    return;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(trimmed) else {
                    return;
                };
                for (slot, p) in found.iter_mut().zip(pointers) {
                    *slot = p.as_deref().and_then(|p| number(v.pointer(p)?));
                }
            }
            How::Regex(re) => {
                let Some(c) = re.captures(line) else { return };
                for (slot, name) in found.iter_mut().zip(FIELDS) {
                    *slot = c.name(name).and_then(|m| m.as_str().parse().ok());
                }
            }
        }
        let [input, output, cost] = found.map(|v| v.filter(|n| n.is_finite() && *n >= 0.0));
        // Token counts are whole numbers; `as` saturates at u64::MAX.
        let tokens = |n: f64| n as u64;
        let u = &mut self.usage;
        if self.sum {
            u.input_tokens = u.input_tokens.saturating_add(input.map_or(0, tokens));
            u.output_tokens = u.output_tokens.saturating_add(output.map_or(0, tokens));
            u.cost_usd += cost.unwrap_or(0.0);
        } else {
            if let Some(n) = input {
                u.input_tokens = tokens(n);
            }
            if let Some(n) = output {
                u.output_tokens = tokens(n);
            }
            if let Some(c) = cost {
                u.cost_usd = c;
            }
        }
    }

    /// The usage read so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }
}

/// A number, or a string holding one (`"0.0123"`).
fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> UsageSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_regex_reads_named_groups_and_sum_adds_lines_up() {
        let mut r = spec(serde_json::json!({
            "regex": r"in=(?<input_tokens>\d+) out=(?<output_tokens>\d+)(?: \$(?<cost_usd>[0-9.]+))?",
            "sum": true}))
        .reader()
        .unwrap();
        r.line("working...");
        r.line("in=100 out=10 $0.0012");
        r.line("in=50 out=5");
        let u = r.usage();
        assert_eq!((u.input_tokens, u.output_tokens), (150, 15));
        assert!((u.cost_usd - 0.0012).abs() < 1e-12);
    }

    #[test]
    fn the_last_line_with_usage_wins_by_default_and_junk_is_ignored() {
        let mut r = spec(serde_json::json!({"input_tokens": "/u/i", "cost_usd": "/cost"}))
            .reader()
            .unwrap();
        r.line(r#"{"u": {"i": 10}, "cost": "0.5"}"#);
        r.line("not json {");
        r.line(r#"{"u": {"i": "many"}}"#);
        r.line(r#"{"u": {"i": 30}, "cost": 0.25}"#);
        r.line(r#"{"other": 1}"#);
        let u = r.usage();
        assert_eq!(u.input_tokens, 30);
        assert!((u.cost_usd - 0.25).abs() < 1e-12);
    }

    #[test]
    fn each_field_keeps_its_last_value_and_nonsense_is_ignored() {
        let mut r = spec(
            serde_json::json!({"input_tokens": "/i", "output_tokens": "/o", "cost_usd": "/c"}),
        )
        .reader()
        .unwrap();
        r.line(r#"{"i": 100, "o": 20, "c": 0.5}"#);
        // A later line with only a cost keeps the token counts.
        r.line(r#"{"c": 0.75}"#);
        // Not finite, negative, not a number: ignored.
        r.line(r#"{"c": "inf", "i": -5, "o": "1e999"}"#);
        r.line(r#"{"c": "NaN"}"#);
        let u = r.usage();
        assert_eq!((u.input_tokens, u.output_tokens), (100, 20));
        assert!((u.cost_usd - 0.75).abs() < 1e-12, "{u:?}");
        let mut sum = spec(
            serde_json::json!({"regex": r"c=(?<cost_usd>\S+) i=(?<input_tokens>\S+)", "sum": true}),
        )
        .reader()
        .unwrap();
        sum.line("c=inf i=18446744073709551615");
        sum.line("c=0.5 i=18446744073709551615");
        let u = sum.usage();
        assert_eq!(u.input_tokens, u64::MAX, "saturates");
        assert!((u.cost_usd - 0.5).abs() < 1e-12, "{u:?}");
    }

    #[test]
    fn a_bad_spec_says_what_is_wrong() {
        for (v, want) in [
            (serde_json::json!({}), "say where the usage is"),
            (
                serde_json::json!({"regex": "x", "cost_usd": "/c"}),
                "not both",
            ),
            (
                serde_json::json!({"input_tokens": "usage.in"}),
                "starts with '/'",
            ),
            (serde_json::json!({"regex": "("}), "regex:"),
            (
                serde_json::json!({"regex": r"(?<tokens>\d+)"}),
                "name at least one group",
            ),
        ] {
            let e = spec(v.clone()).reader().unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
