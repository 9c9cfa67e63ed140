//! Architecture decision records: a person's answer to an escalation,
//! written down with its context, the options considered and what follows
//! from it, in the playbook's template.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Where decision records go in the repository.
pub const ADR_DIR: &str = "docs/adr";

/// An architecture decision record, numbered within the repository.
///
/// Recorded with the decision it explains (see `DecisionRecorded`); the
/// engine commits it as [`Adr::path`] with the ticket's next checkpoint,
/// and the state directory keeps a copy.
///
/// ```
/// use orch_core::{Adr, Timestamp};
/// let adr = Adr {
///     number: 7,
///     title: "Accept the spoofing risk until keys rotate".into(),
///     deciders: vec!["dana".into()],
///     context: "The security review found ids can be spoofed.".into(),
///     decision: "Approve QUOTE-001 as it is.".into(),
///     consequences: "Ships today; the risk stays open for a week.".into(),
///     alternatives: vec!["Skip the ticket: the quote endpoint waits.".into()],
/// };
/// assert_eq!(adr.path(), "docs/adr/ADR-007-accept-the-spoofing-risk-until-keys-rotate.md");
/// let text = adr.to_markdown(Timestamp(1_795_421_047_123));
/// assert!(text.starts_with("# ADR-007: Accept the spoofing risk until keys rotate\n"));
/// assert!(text.contains("Date: 2026-11-23 · Status: Accepted · Deciders: dana"));
/// assert!(text.contains("## Alternatives Considered\n\n- Skip the ticket"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Adr {
    /// Its number (`ADR-NNN`), one more than the highest the repository
    /// and the run held when it was recorded.
    pub number: u32,
    /// The title.
    pub title: String,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deciders: Vec<String>,
    /// Why a decision was needed.
    pub context: String,
    /// What was decided.
    pub decision: String,
    /// What follows from it: good, bad, the risks taken.
    pub consequences: String,
    /// The other options and why they were not taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<String>,
}

impl Adr {
    /// `docs/adr/ADR-NNN-<slug of the title>.md`.
    pub fn path(&self) -> String {
        format!("{ADR_DIR}/ADR-{:03}-{}.md", self.number, slug(&self.title))
    }

    /// The record in the playbook's template: title, date, status and
    /// deciders, then Context, Decision, Consequences and Alternatives
    /// Considered. `at`: when it was decided.
    pub fn to_markdown(&self, at: Timestamp) -> String {
        let date = at.to_string();
        let date = date.get(..10).unwrap_or(&date);
        let deciders = if self.deciders.is_empty() {
            "not named".to_owned()
        } else {
            one_line(&self.deciders.join(", "))
        };
        let mut s = format!(
            "# ADR-{:03}: {}\n\nDate: {date} · Status: Accepted · Deciders: {deciders}\n\n",
            self.number,
            one_line(&self.title)
        );
        for (heading, body) in [
            ("Context", &self.context),
            ("Decision", &self.decision),
            ("Consequences", &self.consequences),
        ] {
            s.push_str(&format!("## {heading}\n\n{}\n\n", body.trim()));
        }
        s.push_str("## Alternatives Considered\n\n");
        if self.alternatives.is_empty() {
            s.push_str("None recorded.\n");
        }
        for a in &self.alternatives {
            s.push_str(&format!("- {}\n", one_line(a)));
        }
        s
    }

    /// The number of an ADR file name (`ADR-012-x.md` → 12); `None` for
    /// any other name (`ADR-QUOTE-001.md` included).
    pub fn number_of(file_name: &str) -> Option<u32> {
        let rest = file_name.strip_prefix("ADR-")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = &rest[digits.len()..];
        if digits.is_empty() || !(after.starts_with('-') || after.starts_with('.')) {
            return None;
        }
        digits.parse().ok()
    }

    /// Redacts every text field (see [`crate::secrets`]).
    pub fn redact(&mut self, r: &crate::secrets::Redactor) {
        for s in [
            &mut self.title,
            &mut self.context,
            &mut self.decision,
            &mut self.consequences,
        ] {
            r.redact_in_place(s);
        }
        for s in self.deciders.iter_mut().chain(self.alternatives.iter_mut()) {
            r.redact_in_place(s);
        }
    }
}

/// Lower-case ASCII letters and digits, the rest folded into single
/// dashes, at most 60 characters; `decision` when nothing is left.
fn slug(title: &str) -> String {
    let mut s = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    s.truncate(60);
    let s = s.trim_end_matches('-');
    if s.is_empty() {
        "decision".into()
    } else {
        s.into()
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_numbers() {
        assert_eq!(
            slug("Use ../../etc/passwd; rm -rf /"),
            "use-etc-passwd-rm-rf"
        );
        assert_eq!(slug("日本"), "decision");
        assert_eq!(slug(&"a ".repeat(80)).len(), 59);
        assert_eq!(Adr::number_of("ADR-012-x.md"), Some(12));
        assert_eq!(Adr::number_of("ADR-3.md"), Some(3));
        assert_eq!(Adr::number_of("ADR-QUOTE-001.md"), None);
        assert_eq!(Adr::number_of("ADR-12x.md"), None);
        assert_eq!(Adr::number_of("notes.md"), None);
    }
}
