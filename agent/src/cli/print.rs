//! What the command line prints: JSON replies, the table of pending holds, the audit trail.

use std::{io::Write as _, path::Path, time::Duration};

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
                ("egress", format!("{protocol} {address}:{}", hold.port.unwrap_or_default()))
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
