//! What the command line prints: JSON replies, the table of pending holds, the audit trail.

use std::{io::Write as _, path::Path, time::Duration};

use crate::audit;

pub fn print_json(value: &serde_json::Value) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`keyturn status | head`) is not an error worth a panic.
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(value)?);
    Ok(0)
}

pub fn print_pending(pending: &serde_json::Value) {
    let holds = pending.as_array().map(Vec::as_slice).unwrap_or_default();
    if holds.is_empty() {
        println!("no held actions");
        return;
    }
    println!("{:<14} {:<7} {:<16} {:>8} {:<10} WHAT", "ID", "KIND", "AGENT", "PID", "USER");
    for hold in holds {
        let text = |key: &str| hold[key].as_str().unwrap_or("").to_owned();
        let what = if text("kind") == "exec" {
            let argv = hold["argv"].as_array().into_iter().flatten().skip(1).filter_map(|a| a.as_str());
            std::iter::once(text("path").as_str()).chain(argv).map(shown_word).collect::<Vec<_>>().join(" ")
        } else {
            format!("{} {}:{}", text("protocol"), text("address"), hold["port"])
        };
        println!(
            "{:<14} {:<7} {:<16} {:>8} {:<10} {what}  [{}]",
            text("id"),
            text("kind"),
            text("agent"),
            hold["pid"],
            text("user"),
            text("policy_rule")
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
    loop {
        let records = audit::read_all(dir)?;
        for record in records.iter().skip(shown) {
            if json {
                println!("{}", serde_json::to_string(record)?);
            } else {
                let kind = record.event["type"].as_str().unwrap_or("?");
                println!("{} #{} {kind} {}", record.time, record.seq, record.event);
            }
        }
        shown = records.len();
        std::io::stdout().flush()?;
        if !follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
