//! What the command line prints: JSON replies, the table of pending holds, the audit trail.

use std::{
    io::{ErrorKind, Write as _},
    path::Path,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    audit,
    hold::context::{ActionKind, HoldView, Waiting},
};

pub fn print_json(value: &impl Serialize) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`keyturn status | head`) is not an error worth a panic.
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(value)?);
    Ok(0)
}

pub fn print_pending(holds: &[HoldView]) {
    if holds.is_empty() {
        println!("no held actions");
        return;
    }
    println!("{:<14} {:<7} {:<16} {:>8} {:<10} WHAT", "ID", "KIND", "AGENT", "PID", "USER");
    for hold in holds {
        let (kind, what) = match hold.kind {
            ActionKind::Exec => {
                let path = hold.path.as_deref().unwrap_or_default();
                let argv = hold.argv.iter().flatten().skip(1).map(String::as_str);
                ("exec", std::iter::once(path).chain(argv).map(shown_word).collect::<Vec<_>>().join(" "))
            }
            ActionKind::Egress => {
                let (protocol, address) = (
                    hold.protocol.as_deref().unwrap_or_default(),
                    hold.address.as_deref().unwrap_or_default(),
                );
                let destination = match &hold.domain {
                    Some(domain) => format!("{domain} ({address})"),
                    None => address.to_owned(),
                };
                ("egress", format!("{protocol} {destination}:{}", hold.port.unwrap_or_default()))
            }
        };
        let deferred = if hold.hold == Waiting::Deferred {
            " (deferred: failed, a retry goes through once approved)"
        } else {
            ""
        };
        println!(
            "{:<14} {kind:<7} {:<16} {:>8} {:<10} {what}  [{}]{deferred}",
            hold.id, hold.agent, hold.pid, hold.user, hold.policy_rule
        );
    }
}

/// One word of a command line in the `pending` table: as it is, or in double quotes when it
/// is empty or has blanks or quotes, so that words never run together. The daemon already
/// made it printable (`context::printable`), where a backslash is always escaped.
fn shown_word(word: &str) -> String {
    if !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        return word.to_owned();
    }
    format!("\"{}\"", word.replace('"', "\\\""))
}

pub fn show_audit(dir: &Path, json: bool, follow: bool) -> anyhow::Result<i32> {
    let mut shown = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let records = audit::read_all(dir)?;
        for record in records.iter().skip(shown) {
            let written = if json {
                writeln!(out, "{}", serde_json::to_string(record)?)
            } else {
                let kind = record.event["type"].as_str().unwrap_or("?");
                writeln!(out, "{} #{} {kind} {}", record.time, record.seq, record.event)
            };
            // The reader has what it wanted (`keyturn audit | grep -q …`): stop quietly.
            if written.and_then(|()| out.flush()).is_err() {
                return Ok(0);
            }
        }
        shown = records.len();
        if !follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What `keyturn audit export` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// The trail's own records, as written.
    Keyturn,
    /// Open Cybersecurity Schema Framework events, the records in `unmapped`.
    Ocsf,
}

/// A time on the command line: RFC 3339 (`2026-12-01T08:00:00Z`), or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_owned() };
    humantime::parse_rfc3339_weak(&full)
        .map_err(|e| format!("{e}: give a date (2026-12-01) or an RFC 3339 time (2026-12-01T08:00:00Z)"))
}

/// Writes the records of the trail in `dir` from `since` to `until` in `format`, after
/// verifying the whole chain: a broken trail is refused, never exported as if whole.
pub fn export_audit(
    dir: &Path,
    format: ExportFormat,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> anyhow::Result<i32> {
    audit::verify(dir)?;
    let records = audit::read_all(dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match format {
        ExportFormat::Ocsf => audit::ocsf::Exporter::new(audit::ocsf::Device::this_host())
            .export(&records, since, until, &mut out)
            .map_err(anyhow::Error::from),
        ExportFormat::Keyturn => records
            .iter()
            .filter(|r| {
                humantime::parse_rfc3339(&r.time)
                    .is_ok_and(|t| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u))
            })
            .try_for_each(|r| writeln!(out, "{}", serde_json::to_string(r)?).map_err(anyhow::Error::from))
            .map(|()| 0),
    };
    match written.and_then(|_| out.flush().map_err(anyhow::Error::from)) {
        // The reader has what it wanted (`… | head`): stop quietly.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == ErrorKind::BrokenPipe) => {
            Ok(0)
        }
        other => other.map(|()| 0),
    }
}

/// Prints what the console holds of a host's trail (`state`) and, given a copy of the
/// trail at `trail`, checks it against every anchor. 1 when anything was found.
pub fn verify_host(state: &console::anchors::TrailState, trail: Option<&Path>) -> anyhow::Result<i32> {
    let when =
        |ms: u64| humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    let mut findings: Vec<String> = state.findings.iter().map(|f| f.detail.clone()).collect();
    match state.anchors.last() {
        Some(last) => println!(
            "{}: {} anchors, the latest at {} covering {} records (last hash {})",
            state.host,
            state.anchors.len(),
            when(last.at_ms),
            last.records,
            last.head
        ),
        None => println!("{}: no anchors", state.host),
    }
    if let Some(dir) = trail {
        if let Err(e) = audit::verify(dir) {
            findings.push(format!("the trail at {}: {e}", dir.display()));
        }
        for anchor in &state.anchors {
            match audit::head_at(dir, anchor.records)? {
                Some(head) if head.hash == anchor.head => {}
                Some(head) => findings.push(format!(
                    "rewritten: record {} hashes to {}, anchored at {} as {}",
                    anchor.records.saturating_sub(1),
                    head.hash,
                    when(anchor.at_ms),
                    anchor.head
                )),
                None => findings.push(format!(
                    "truncated: the trail has fewer than the {} records anchored at {}",
                    anchor.records,
                    when(anchor.at_ms)
                )),
            }
        }
    }
    for finding in &findings {
        println!("FOUND: {finding}");
    }
    if findings.is_empty() {
        println!(
            "no finding: the trail is as anchored{}",
            if trail.is_some() { ", record by record" } else { "" }
        );
    }
    Ok(i32::from(!findings.is_empty()))
}
