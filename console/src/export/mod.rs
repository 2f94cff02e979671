//! The console's audit trail for others, one JSON line per record: keyturn's own records or
//! OCSF events, for `GET /api/audit/export` and the SIEM outputs alike.

pub mod ocsf;

use std::{
    collections::HashMap,
    time::{Duration, UNIX_EPOCH},
};

use proto::v1::HoldRaised;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    audit::StoredRecord,
    store::{Store, StoreError},
};

/// What a line is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// An OCSF 1.4.0 event, the record itself in `unmapped.keyturn`.
    #[default]
    Ocsf,
    /// The record as the console stores it.
    Keyturn,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ocsf => "ocsf",
            Self::Keyturn => "keyturn",
        }
    }
}

/// A record as exported: its event verbatim, so that anyone can recompute its hash,
/// SHA-256 of `"{seq}\n{at_ms}\n{prev}\n{event}"`, and follow the chain.
#[derive(Serialize)]
pub struct KeyturnRecord<'a> {
    pub seq: i64,
    /// `at_ms` as RFC 3339.
    pub time: String,
    pub at_ms: i64,
    pub prev: &'a str,
    pub hash: &'a str,
    pub event: &'a RawValue,
}

impl<'a> KeyturnRecord<'a> {
    pub fn of(record: &'a StoredRecord) -> Result<Self, StoreError> {
        let event = serde_json::from_str(&record.event)
            .map_err(|e| StoreError::AuditBroken { seq: record.seq, reason: format!("not JSON: {e}") })?;
        Ok(Self {
            seq: record.seq,
            time: rfc3339(record.at_ms),
            at_ms: record.at_ms,
            prev: &record.prev,
            hash: &record.hash,
            event,
        })
    }
}

/// Milliseconds since the epoch as RFC 3339, to the millisecond, in UTC.
pub fn rfc3339(at_ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(at_ms.max(0).cast_unsigned());
    humantime::format_rfc3339_millis(at).to_string()
}

/// One exported line (without its newline), and the time of its record.
#[derive(Clone, Debug)]
pub struct Line {
    pub at_ms: i64,
    pub text: String,
}

/// Turns records into lines of `format`; holds are looked up in the store (their context
/// is in the hold's row, not in the trail), a page at a time, so memory stays bounded.
pub struct Exporter {
    store: Store,
    format: Format,
    console: ::ocsf::Device,
}

impl Exporter {
    pub fn new(store: Store, format: Format) -> Self {
        Self { store, format, console: ::ocsf::Device::this_host() }
    }

    /// One line (without its newline) for each event of `records`, in order: a decision
    /// is two OCSF events (see [`ocsf`]).
    pub async fn lines(&self, records: &[StoredRecord]) -> Result<Vec<Line>, StoreError> {
        let mut lines = Vec::with_capacity(records.len());
        let mut holds: HashMap<(String, String), HoldRaised> = HashMap::new();
        for record in records {
            let keyturn = KeyturnRecord::of(record)?;
            if self.format == Format::Keyturn {
                lines.push(Line { at_ms: record.at_ms, text: to_line(&keyturn) });
                continue;
            }
            let event = record.typed()?;
            let hold = match event.hold() {
                Some((host, id)) => {
                    let key = (host.to_owned(), id.to_owned());
                    if !holds.contains_key(&key) {
                        let raised =
                            self.store.raised(host, id).await?.ok_or_else(|| StoreError::Corrupt {
                                hold_id: id.to_owned(),
                                reason: format!(
                                    "audit record {} names a hold the console does not have",
                                    record.seq
                                ),
                            })?;
                        holds.insert(key.clone(), raised);
                    }
                    holds.get(&key)
                }
                None => None,
            };
            for event in ocsf::events(&keyturn, &event, hold, &self.console) {
                lines.push(Line { at_ms: record.at_ms, text: to_line(&event) });
            }
        }
        Ok(lines)
    }
}

fn to_line(value: &impl Serialize) -> String {
    // Serialising these types cannot fail: no maps with non-string keys, no foreign types.
    serde_json::to_string(value).unwrap_or_default()
}
