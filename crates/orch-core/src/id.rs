//! Validated identifiers.
//!
//! Every identifier that can end up in a git branch name, a file name or a
//! database key is validated when it is constructed *and* when it is
//! deserialized, so an invalid one can never exist in memory. The rule is the
//! same for all of them:
//!
//! * 1 to 64 characters,
//! * only ASCII letters, digits, `.`, `_` and `-`,
//! * not starting with `.` or `-`,
//! * no `..` anywhere,
//! * not ending with `.` or `.lock` (git refuses such ref components).
//!
//! That makes an id safe as a git branch component (`orch/<run>/<ticket>`)
//! and as a file name (`docs/plan/<ticket>.md`) without any escaping.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest identifier accepted, in bytes (all characters are ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Which rule an identifier broke. Returned inside [`IdError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdRule {
    /// The identifier was empty.
    Empty,
    /// The identifier was longer than [`MAX_ID_LEN`] characters.
    TooLong,
    /// The identifier contained a character outside `A-Z a-z 0-9 . _ -`.
    BadChar(char),
    /// The identifier started with `.` or `-`.
    BadStart,
    /// The identifier contained `..`.
    DoubleDot,
    /// The identifier ended with `.` or `.lock`, which git refuses in a ref.
    BadEnd,
}

impl fmt::Display for IdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdRule::Empty => f.write_str("must not be empty"),
            IdRule::TooLong => write!(f, "must be at most {MAX_ID_LEN} characters"),
            IdRule::BadChar(c) => write!(
                f,
                "contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
            ),
            IdRule::BadStart => f.write_str("must not start with '.' or '-'"),
            IdRule::DoubleDot => f.write_str("must not contain '..'"),
            IdRule::BadEnd => f.write_str("must not end with '.' or '.lock'"),
        }
    }
}

/// An identifier failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {rule}")]
#[non_exhaustive]
pub struct IdError {
    /// What kind of identifier it was meant to be ("ticket id", "role", ...).
    pub what: &'static str,
    /// The rejected text (truncated to 80 characters).
    pub value: String,
    /// The rule it broke.
    pub rule: IdRule,
}

/// Checks `s` against the identifier rule shared by every id type.
pub fn check_id(s: &str) -> Result<(), IdRule> {
    if s.is_empty() {
        return Err(IdRule::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdRule::TooLong);
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdRule::BadChar(c));
    }
    if s.starts_with(['.', '-']) {
        return Err(IdRule::BadStart);
    }
    // (Bytes, not a substring search: this runs for every id in every
    // event read back from a journal.)
    if s.as_bytes().windows(2).any(|w| w == b"..") {
        return Err(IdRule::DoubleDot);
    }
    if s.ends_with('.') || s.ends_with(".lock") {
        return Err(IdRule::BadEnd);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        ///
        /// Validated on construction and deserialization; see the
        /// [module docs](crate::id) for the rule.
        ///
        /// Stored inline up to 23 bytes (ticket ids usually are), and a
        /// longer one (an agent id, a run id) shared: cloning one (every
        /// event carries some) never copies it or allocates.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(smol_str::SmolStr);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Validates `s` and wraps it.
            ///
            /// # Errors
            /// [`IdError`] naming the rule `s` breaks.
            pub fn new(s: impl AsRef<str>) -> Result<Self, IdError> {
                let s = s.as_ref();
                match check_id(s) {
                    Ok(()) => Ok(Self(s.into())),
                    Err(rule) => Err(IdError {
                        what: $what,
                        value: s.chars().take(80).collect(),
                        rule,
                    }),
                }
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<'de, str>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": concat!("A ", $what, ": 1-64 of A-Z a-z 0-9 . _ -, not starting with . or -, no '..', not ending with . or .lock"),
                    "minLength": 1,
                    "maxLength": MAX_ID_LEN,
                    "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"
                })
            }
        }
    };
}

id_type!(
    /// Identifies a ticket, e.g. `SEC-001`.
    TicketId,
    "ticket id"
);
id_type!(
    /// Identifies a batch (one pull request's worth of tickets), e.g. `PR1`.
    BatchId,
    "batch id"
);
id_type!(
    /// Names an agent role, e.g. `backend`, `security`, `docs`.
    RoleName,
    "role"
);
id_type!(
    /// Names a phase of the pipeline, e.g. `implementation`.
    PhaseName,
    "phase name"
);
id_type!(
    /// Identifies one run of a plan.
    RunId,
    "run id"
);
id_type!(
    /// Identifies one agent invocation, e.g. `SEC-001.implementation.2.1f0c9a3e`.
    AgentId,
    "agent id"
);

impl AgentId {
    /// A fresh id for one invocation on `attempt` of `phase` of `ticket`:
    /// `<ticket>.<phase>.<attempt>.<8 random hex digits>`, its front
    /// shortened when that would pass [`MAX_ID_LEN`] (the random end keeps
    /// it unique), so any valid ticket and phase make a valid agent id.
    ///
    /// ```
    /// let id = orch_core::AgentId::for_attempt(&"T-1".parse().unwrap(), &"plan".parse().unwrap(), 2);
    /// assert!(id.as_str().starts_with("T-1.plan.2."));
    /// ```
    pub fn for_attempt(ticket: &TicketId, phase: &PhaseName, attempt: u32) -> AgentId {
        let mut front = format!("{ticket}.{phase}.{attempt}");
        front.truncate(MAX_ID_LEN - 9);
        // Cutting may leave a trailing dot, which would make `..` below.
        while front.ends_with('.') {
            front.pop();
        }
        // The low bits of a version 7 UUID are random.
        let random = uuid::Uuid::now_v7().as_u128() as u32;
        let id = format!("{front}.{random:08x}");
        debug_assert_eq!(check_id(&id), Ok(()), "agent id {id:?}");
        AgentId(id.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_fit_the_id_rule_for_the_longest_ticket_and_phase() {
        let long = "T".repeat(MAX_ID_LEN);
        let dotted = format!("{}.x", "A".repeat(MAX_ID_LEN - 11));
        for (t, p) in [
            (long.as_str(), "implement"),
            ("T-1", long.as_str()),
            (dotted.as_str(), "p"),
        ] {
            let id = AgentId::for_attempt(&t.parse().unwrap(), &p.parse().unwrap(), u32::MAX);
            assert_eq!(check_id(id.as_str()), Ok(()), "{id}");
            assert!(id.as_str().len() <= MAX_ID_LEN, "{id}");
            assert!(id.as_str().starts_with(&t[..t.len().min(10)]), "{id}");
        }
        for (attempt, want) in [(2, "T-1.plan.2."), (10, "T-1.plan.10."), (0, "T-1.plan.0.")]
            .into_iter()
            .chain([(u32::MAX, "T-1.plan.4294967295.")])
        {
            let short =
                AgentId::for_attempt(&"T-1".parse().unwrap(), &"plan".parse().unwrap(), attempt);
            assert_eq!(check_id(short.as_str()), Ok(()), "{short}");
            assert!(short.as_str().starts_with(want), "{short}");
            assert_eq!(short.as_str().len(), want.len() + 8);
            assert!(
                short.as_str()[want.len()..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit())
            );
        }
    }

    #[test]
    fn accepts_typical_ids() {
        for ok in ["SEC-001", "a", "x.y_z-1", "_hidden", "PR1", &"a".repeat(64)] {
            assert!(TicketId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn names_the_rule_broken() {
        let cases = [
            ("", IdRule::Empty),
            (&*"a".repeat(65), IdRule::TooLong),
            ("a b", IdRule::BadChar(' ')),
            ("a/b", IdRule::BadChar('/')),
            ("é", IdRule::BadChar('é')),
            (".x", IdRule::BadStart),
            ("-x", IdRule::BadStart),
            ("a..b", IdRule::DoubleDot),
            ("a.", IdRule::BadEnd),
            ("main.lock", IdRule::BadEnd),
        ];
        for (input, rule) in cases {
            let err = TicketId::new(input).unwrap_err();
            assert_eq!(err.rule, rule, "{input:?}");
            assert_eq!(err.what, "ticket id");
        }
        assert_eq!(
            TicketId::new("a/b").unwrap_err().to_string(),
            r#"invalid ticket id "a/b": contains '/'; only ASCII letters, digits, '.', '_' and '-' are allowed"#
        );
    }

    #[test]
    fn deserialization_validates() {
        let err = serde_json::from_str::<RoleName>(r#"".etc""#).unwrap_err();
        assert!(err.to_string().contains("must not start with"), "{err}");
        let ok: RoleName = serde_json::from_str(r#""backend""#).unwrap();
        assert_eq!(ok.as_str(), "backend");
    }
}
