//! A hold as a Slack message (Block Kit): who asks, what, why, until when, and the buttons;
//! once it is decided or closed, the outcome in their place.
//!
//! Everything an agent chose (command lines, paths, names) is escaped for Slack's `mrkdwn`
//! (`&`, `<`, `>`) in text Slack takes verbatim (no links, channels or mentions made of
//! bare words), and shown inside code blocks it cannot close (a backtick after a backtick
//! is kept apart by a zero-width space), so it can never mention `<!channel>`, render a
//! link, format itself or fake a label; control and bidirectional-formatting characters
//! are shown as `\u{…}`. Long text is cut with a marker, never inside an escape, within
//! budgets that keep a whole message near 8,000 characters.

use proto::v1::{Verdict, hold_raised::Detail};
use serde_json::{Value, json};

use crate::{
    chat::text::{capitalised, closed, command_line, destination, visible_with},
    search::HoldDetail,
};

/// Slack's limits: a section's text, a message's `text`. (50 blocks: a message here has at
/// most 9.)
const SECTION: usize = 3_000;
const TEXT: usize = 4_000;
/// What one fact about the hold (a path, a directory, the parents) may take.
const FACT: usize = 600;

/// The `action_id`s of the buttons, and what a click on each asks.
pub const APPROVE: &str = "keyturn_approve";
/// Opens a modal: a duration and a reason.
pub const APPROVE_FOR: &str = "keyturn_approve_for";
/// Opens a modal: a reason.
pub const DENY: &str = "keyturn_deny";
pub const OPEN: &str = "keyturn_open";

/// `text` escaped for `mrkdwn`, cut to at most `limit` bytes of escaped text.
pub fn escape(text: &str, limit: usize) -> String {
    visible_with(text, limit, |c, before| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '`' if before.ends_with('`') => Some("\u{200B}`"),
        _ => None,
    })
}

/// `text` (escaped) as a code block, `label` above it: nothing in it is formatted, and
/// since [`escape`] never leaves two backticks together, nothing in it closes the block.
fn fenced(label: &str, text: &str, limit: usize) -> String {
    let text = escape(text, limit);
    let edge = |at_edge: bool| if at_edge { "\u{200B}" } else { "" };
    format!("*{label}*\n```{}{text}{}```", edge(text.starts_with('`')), edge(text.ends_with('`')))
}

/// What the hold asks, in one line of plain words (escaped): the message's `text`, which
/// notifications show.
fn asked(detail: &HoldDetail) -> String {
    let raised = &detail.raised;
    let what = match &raised.detail {
        Some(Detail::Exec(exec)) => format!("run {}", exec.path),
        Some(Detail::Egress(egress)) => format!("reach {}", destination(egress)),
        None => "act".to_owned(),
    };
    escape(&format!("keyturn: {} on {} wants to {what}", raised.agent, detail.record.host), TEXT)
}

/// A section of `text`, taken verbatim: Slack makes no links, channels or mentions of it.
fn section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": true}})
}

/// The message announcing `detail`'s hold, with its buttons while it is pending, or its
/// outcome once it is not. `console` is the web UI's address, for **Open in console**.
pub fn render(detail: &HoldDetail, console: Option<&url::Url>) -> Value {
    let (record, raised) = (&detail.record, &detail.raised);
    let mut blocks = vec![header(detail)];
    let who = format!(
        "*Agent* {} on *{}*, as user {} (uid {}), started by {}",
        escape(&raised.agent, 200),
        escape(&record.host, 300),
        escape(&raised.user, 100),
        raised.uid,
        escape(if raised.requester.is_empty() { "(unknown)" } else { &raised.requester }, 300),
    );
    blocks.push(section(&who));
    match &raised.detail {
        Some(Detail::Exec(exec)) => {
            blocks.push(section(&fenced("Runs", &command_line(&exec.argv), SECTION - 20)));
            let facts = format!("program: {}\nin: {}\nsha256: {}", exec.path, exec.cwd, exec.sha256);
            blocks.push(section(&fenced("Program", &facts, 2 * FACT)));
            if !exec.parents.is_empty() {
                let parents: Vec<String> =
                    exec.parents.iter().map(|p| format!("{} ({})", command_line(&p.argv), p.pid)).collect();
                blocks.push(section(&fenced("Started by", &parents.join("\n"), FACT)));
            }
        }
        Some(Detail::Egress(egress)) => {
            blocks.push(section(&fenced("Reaches", &destination(egress), FACT)));
        }
        None => {}
    }
    let why = format!(
        "*Why* rule {} of policy {}{}{}",
        escape(&raised.policy_rule, FACT),
        escape(&raised.policy, 200),
        if record.quorum > 1 { format!(" · needs {} approvers", record.quorum) } else { String::new() },
        if raised.in_console { " · *decided in the console only*" } else { "" }
    );
    blocks.push(section(&why));
    blocks.push(deadline(detail));
    if record.status == "pending" && record.quorum > 1 && record.approvals > 0 {
        blocks.push(section(&format!(
            "*Approved by {} of {}*: {}",
            record.approvals,
            record.quorum,
            escape(&detail.approvers.join(", "), FACT)
        )));
    } else if record.status != "pending" {
        blocks.push(section(&outcome(detail)));
    }
    blocks.extend(actions(detail, console, !detail.raised.in_console));
    json!({"text": asked(detail), "blocks": blocks})
}

/// The message announcing `detail`'s hold without anything the agent chose: what Slack
/// is sent when it refused [`render`]'s, so that the hold is still announced. No one
/// approves what they cannot see: it offers **Deny** and **Open in console** only.
pub fn bare(detail: &HoldDetail, console: Option<&url::Url>) -> Value {
    let host = escape(&detail.record.host, 300);
    let text = if detail.record.status == "pending" {
        format!(
            "A hold on {host} waits for a decision; Slack refused to show its details: see them in the console."
        )
    } else {
        format!("A hold on {host}, whose details Slack refused to show: {}", outcome(detail))
    };
    let mut blocks = vec![header(detail), section(&text), deadline(detail)];
    blocks.extend(actions(detail, console, false));
    json!({"text": text, "blocks": blocks})
}

fn header(detail: &HoldDetail) -> Value {
    let title = match detail.raised.detail {
        Some(Detail::Exec(_)) => "A held program run",
        _ => "A held connection",
    };
    json!({"type": "header", "text": {"type": "plain_text", "text": title}})
}

/// The hold's id and deadline (Slack shows the time in each reader's time zone).
fn deadline(detail: &HoldDetail) -> Value {
    let text = format!(
        "hold {} · <!date^{}^decide by {{time_secs}}|decide by the deadline>",
        escape(&detail.record.id, 100),
        detail.record.deadline_ms / 1000
    );
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
}

/// The buttons: while the hold is pending and may be decided in chat, **Approve once** and
/// **Approve for…** (where `approvable`) and **Deny**; **Open in console** where the
/// console's address is known.
fn actions(detail: &HoldDetail, console: Option<&url::Url>, approvable: bool) -> Option<Value> {
    let record = &detail.record;
    let value = format!("{}@{}", record.id, record.host);
    let mut buttons = Vec::new();
    if record.status == "pending" && !detail.raised.in_console {
        if approvable {
            buttons.push(json!({"type": "button", "action_id": APPROVE, "style": "primary", "value": value,
                                "text": {"type": "plain_text", "text": "Approve once"}}));
            buttons.push(json!({"type": "button", "action_id": APPROVE_FOR, "value": value,
                                "text": {"type": "plain_text", "text": "Approve for…"}}));
        }
        buttons.push(json!({"type": "button", "action_id": DENY, "style": "danger", "value": value,
                            "text": {"type": "plain_text", "text": "Deny"}}));
    }
    buttons.extend(console.map(|url| {
        let mut url = url.clone();
        url.set_fragment(Some(&format!("hold={value}")));
        json!({"type": "button", "action_id": OPEN, "text": {"type": "plain_text", "text": "Open in console"}, "url": url.as_str()})
    }));
    (!buttons.is_empty()).then(|| json!({"type": "actions", "block_id": "actions", "elements": buttons}))
}

/// How the hold ended, as the message shows it once its buttons are gone.
fn outcome(detail: &HoldDetail) -> String {
    let Some(decision) = &detail.decision else {
        let why = closed(detail.record.closed_reason.as_deref().unwrap_or(&detail.record.status));
        return format!(
            "*{}* with no decision here: {}",
            capitalised(&detail.record.status),
            escape(why, 1_000)
        );
    };
    let verdict = if decision.verdict == i32::from(Verdict::Approve) { "Approved" } else { "Denied" };
    let scope = match proto::v1::Scope::try_from(decision.scope) {
        Ok(proto::v1::Scope::ForDuration) => format!(" for {} s", decision.duration_secs),
        Ok(proto::v1::Scope::Always) => " always".to_owned(),
        _ if decision.verdict == i32::from(Verdict::Approve) => " once".to_owned(),
        _ => String::new(),
    };
    let by =
        if detail.approvers.len() > 1 { detail.approvers.join(", ") } else { decision.decided_by.clone() };
    let reason = if decision.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", escape(&decision.reason, 1_100))
    };
    format!("*{verdict}{scope}* by {}{reason}", escape(&by, 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::text::CUT;

    #[test]
    fn what_an_agent_chose_cannot_mention_link_or_reorder() {
        let hostile = "<!channel> <https://x.example|click> & \u{202E}txt.exe\u{7}";
        assert_eq!(
            escape(hostile, 1_000),
            "&lt;!channel&gt; &lt;https://x.example|click&gt; &amp; \\u{202e}txt.exe\\u{0007}"
        );
    }

    #[test]
    fn a_code_block_cannot_be_closed_from_inside() {
        for argv in [vec!["x```", "*Approved once*", "https://sso.example"], vec!["`"], vec!["``", "`"]] {
            let argv: Vec<String> = argv.into_iter().map(str::to_owned).collect();
            let block = fenced("Runs", &command_line(&argv), 500);
            let inner = block.strip_prefix("*Runs*\n```").and_then(|b| b.strip_suffix("```")).unwrap();
            assert!(!inner.contains("``") && !inner.starts_with('`') && !inner.ends_with('`'), "{block}");
        }
    }

    #[test]
    fn long_text_is_cut_with_a_marker_never_inside_an_escape() {
        for len in 0..40 {
            let cut = escape(&"<&>".repeat(len), 50);
            assert!(cut.len() <= 50, "{cut}");
            let body = cut.strip_suffix(CUT).unwrap_or(&cut);
            assert!(
                body.split('&')
                    .skip(1)
                    .all(|piece| ["amp;", "lt;", "gt;"].iter().any(|e| piece.starts_with(e))),
                "{cut}"
            );
        }
        assert_eq!(escape("short", 50), "short");
    }
}
