//! Ticket effort: a T-shirt size, an explicit duration, or both.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A T-shirt size estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size {
    /// Extra small: up to 1 hour.
    XS,
    /// Small: up to 3 hours.
    S,
    /// Medium: up to 6 hours.
    M,
    /// Large: up to 8 hours.
    L,
    /// Extra large: up to 16 hours.
    XL,
}

impl Size {
    /// The minutes a size stands for when no explicit duration is given
    /// (the upper end of the range, as teams estimate).
    pub const fn default_minutes(self) -> u32 {
        match self {
            Size::XS => 60,
            Size::S => 180,
            Size::M => 360,
            Size::L => 480,
            Size::XL => 960,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Size::XS => "XS",
            Size::S => "S",
            Size::M => "M",
            Size::L => "L",
            Size::XL => "XL",
        }
    }

    fn parse(s: &str) -> Option<Size> {
        Some(match s {
            "XS" => Size::XS,
            "S" => Size::S,
            "M" => Size::M,
            "L" => Size::L,
            "XL" => Size::XL,
            _ => return None,
        })
    }
}

/// How much agent time a ticket is expected to take.
///
/// Written in plan files as a string: a size (`"M"`), a duration (`"30m"`,
/// `"2h"`, `"1h30m"`, `"1.5h"`), or a size with the duration the team
/// estimated (`"XS (30m)"`). The duration wins when both are given.
///
/// ```
/// use orch_core::Effort;
/// let e: Effort = "S (2h)".parse().unwrap();
/// assert_eq!(e.minutes(), 120);
/// assert_eq!("M".parse::<Effort>().unwrap().minutes(), 360);
/// assert_eq!("1h30m".parse::<Effort>().unwrap().minutes(), 90);
/// assert!("3 days".parse::<Effort>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Effort {
    size: Option<Size>,
    minutes: u32,
}

/// Longest effort accepted for one ticket: 10,000 hours.
pub const MAX_EFFORT_MINUTES: u32 = 600_000;

impl Effort {
    /// An explicit duration in minutes (no size).
    pub const fn from_minutes(minutes: u32) -> Self {
        Effort {
            size: None,
            minutes,
        }
    }

    /// A size with its default duration.
    pub const fn from_size(size: Size) -> Self {
        Effort {
            size: Some(size),
            minutes: size.default_minutes(),
        }
    }

    /// The estimated duration in minutes.
    pub const fn minutes(&self) -> u32 {
        self.minutes
    }

    /// The size, when one was given.
    pub const fn size(&self) -> Option<Size> {
        self.size
    }
}

/// Why an effort string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid effort {0:?}: expected a size (XS, S, M, L, XL), a duration (30m, 2h, 1h30m, 1.5h) or both (\"S (2h)\"), positive and at most 10000h"
)]
pub struct EffortError(pub String);

fn parse_duration(s: &str) -> Option<u32> {
    let mut total: f64 = 0.0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        total += match unit {
            "h" => n * 60.0,
            "m" | "min" => n,
            _ => return None,
        };
    }
    let total = total.round();
    (total >= 1.0 && total <= f64::from(MAX_EFFORT_MINUTES)).then_some(total as u32)
}

impl FromStr for Effort {
    type Err = EffortError;
    fn from_str(s: &str) -> Result<Self, EffortError> {
        let err = || EffortError(s.chars().take(80).collect());
        let t = s.trim();
        if let Some(size) = Size::parse(t) {
            return Ok(Effort::from_size(size));
        }
        // "S (2h)" or "S 2h"
        if let Some((head, tail)) = t.split_once(' ')
            && let Some(size) = Size::parse(head)
        {
            let tail = tail.trim();
            let inner = tail
                .strip_prefix('(')
                .and_then(|x| x.strip_suffix(')'))
                .unwrap_or(tail);
            let minutes = parse_duration(inner).ok_or_else(err)?;
            return Ok(Effort {
                size: Some(size),
                minutes,
            });
        }
        parse_duration(t).map(Effort::from_minutes).ok_or_else(err)
    }
}

/// Minutes as `45m`, `16h` or `1h05m` (the form effort strings use).
///
/// ```
/// assert_eq!(orch_core::format_minutes(65), "1h05m");
/// assert_eq!(orch_core::format_minutes(960), "16h");
/// assert_eq!(orch_core::format_minutes(5), "5m");
/// ```
pub fn format_minutes(m: u64) -> String {
    Minutes(m).to_string()
}

/// Shows minutes as `format_minutes` does, written straight to a formatter.
struct Minutes(u64);

impl fmt::Display for Minutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0 / 60, self.0 % 60) {
            (0, m) => write!(f, "{m}m"),
            (h, 0) => write!(f, "{h}h"),
            (h, m) => write!(f, "{h}h{m:02}m"),
        }
    }
}

impl fmt::Display for Effort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.size {
            Some(size) if size.default_minutes() == self.minutes => f.write_str(size.as_str()),
            Some(size) => write!(f, "{} ({})", size.as_str(), Minutes(self.minutes.into())),
            None => Minutes(self.minutes.into()).fmt(f),
        }
    }
}

impl Serialize for Effort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Effort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Effort {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Effort")
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A size (XS=1h, S=3h, M=6h, L=8h, XL=16h), a duration (30m, 2h, 1h30m, 1.5h), or both: \"S (2h)\"",
            "examples": ["M", "30m", "XS (5m)", "S (3h)"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        for (s, minutes, back) in [
            ("XS", 60, "XS"),
            ("XS (5m)", 5, "XS (5m)"),
            ("S (2-3h)", 0, ""),
            ("S 3h", 180, "S"),
            ("L (8h)", 480, "L"),
            ("45m", 45, "45m"),
            ("1h30m", 90, "1h30m"),
            ("1.5h", 90, "1h30m"),
            ("2h", 120, "2h"),
        ] {
            match s.parse::<Effort>() {
                Ok(e) => {
                    assert_eq!(e.minutes(), minutes, "{s}");
                    assert_eq!(e.to_string(), back, "{s}");
                    assert_eq!(back.parse::<Effort>().unwrap(), e);
                }
                Err(_) => assert_eq!(minutes, 0, "{s} should parse"),
            }
        }
    }

    #[test]
    fn rejects_nonsense() {
        for s in ["", "0m", "-1h", "3 days", "h", "XXL", "99999999h", "1h 2x"] {
            assert!(s.parse::<Effort>().is_err(), "{s:?}");
        }
    }
}
