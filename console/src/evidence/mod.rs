//! Evidence packs for auditors: the holds of a period with their votes and outcomes, the audit
//! chain segment covering it, a control map, and a manifest the console's key signs.

mod check;
mod pack;
pub mod record;

use std::time::{Duration, UNIX_EPOCH};

pub use check::{Problem, Summary, verify};
pub use pack::export;

use crate::store::StoreError;

/// What `manifest.json` says the pack is.
pub const FORMAT: &str = "keyturn-evidence/1";
/// The pack's files. The manifest lists every other file; the signature covers the manifest.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
pub const README: &str = "README.md";
pub const HOLDS: &str = "holds.json";
pub const POLICIES: &str = "policies.json";
pub const SEGMENT: &str = "audit/segment.jsonl";
pub const CHAIN: &str = "audit/chain.json";
pub const PUBLIC_KEY: &str = "console-public-key.pem";

/// Milliseconds in a day: a date given as the end of a period includes that whole day.
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("period: {0}")]
    Period(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the pack: {0}")]
    Write(String),
    #[error("the evidence pack does not verify:\n{}", list(.0))]
    Rejected(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

/// The period a pack covers: holds requested from `from_ms` (inclusive) to `to_ms`
/// (exclusive), Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Period {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Period {
    /// From `from` to `to`, each an RFC 3339 time in UTC (`2026-03-31T12:00:00Z`) or a date.
    /// A date starts at midnight UTC; as `to` it is included whole, so `--from 2026-01-01
    /// --to 2026-03-31` is the first quarter.
    pub fn parse(from: &str, to: &str) -> Result<Self, EvidenceError> {
        let period = Self { from_ms: instant(from, 0)?, to_ms: instant(to, DAY_MS)? };
        if period.from_ms >= period.to_ms {
            return Err(EvidenceError::Period(format!("{from} is not before {to}")));
        }
        Ok(period)
    }

    pub fn contains(&self, ms: i64) -> bool {
        (self.from_ms..self.to_ms).contains(&ms)
    }
}

/// `text` in Unix milliseconds; a date plus `date_offset_ms`.
fn instant(text: &str, date_offset_ms: i64) -> Result<i64, EvidenceError> {
    let date = text.len() == 10;
    let full = if date { format!("{text}T00:00:00Z") } else { text.to_owned() };
    let time = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        EvidenceError::Period(format!(
            "{text:?}: {e}: give a date (2026-03-31) or an RFC 3339 time in UTC (2026-03-31T08:00:00Z)"
        ))
    })?;
    let ms = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| EvidenceError::Period(format!("{text:?} is before 1970")))?;
    let ms =
        i64::try_from(ms.as_millis()).map_err(|_| EvidenceError::Period(format!("{text:?} is too far")))?;
    Ok(if date { ms + date_offset_ms } else { ms })
}

/// `ms` as an RFC 3339 time in UTC, to the millisecond.
pub fn utc(ms: i64) -> String {
    let since = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(UNIX_EPOCH + since).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_as_the_end_includes_that_day_and_a_time_does_not() {
        let quarter = Period::parse("2026-01-01", "2026-03-31").unwrap();
        assert_eq!(utc(quarter.from_ms), "2026-01-01T00:00:00.000Z");
        assert_eq!(utc(quarter.to_ms), "2026-04-01T00:00:00.000Z");
        let hours = Period::parse("2026-01-01T08:00:00Z", "2026-01-01T09:30:00Z").unwrap();
        assert_eq!(hours.to_ms - hours.from_ms, 90 * 60_000);
        assert!(hours.contains(hours.from_ms) && !hours.contains(hours.to_ms));
        assert!(Period::parse("2026-02-01", "2026-01-01").is_err());
        assert!(Period::parse("yesterday", "2026-01-01").is_err());
    }
}
