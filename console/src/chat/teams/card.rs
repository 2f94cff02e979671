//! A hold as an Adaptive Card (version 1.5): who asks, what, why, until when, and the
//! buttons (`Action.Execute`); once it is decided or closed, the outcome in their place.
//!
//! Everything an agent chose is shown in `TextRun`s, which Teams renders as plain text (no
//! Markdown, no links), with its control and bidirectional-formatting characters shown as
//! `\u{…}`; only keyturn's own labels are `TextBlock`s. Budgets keep a card near 8,000
//! characters, well inside a Teams message's 28 KB.

use proto::v1::{Verdict, hold_raised::Detail};
use serde_json::{Value, json};

use crate::{
    api::holds::MAX_REASON,
    chat::text::{capitalised, closed, command_line, destination, visible_with},
    chat::{DEFAULT_DURATION, DURATIONS},
    search::HoldDetail,
};

/// The `verb`s of the buttons.
pub const APPROVE: &str = "keyturn.approve";
pub const APPROVE_FOR: &str = "keyturn.approve_for";
pub const DENY: &str = "keyturn.deny";
/// The `id`s of the inputs, as their values come back in the click's `data`.
pub const DURATION: &str = "duration";
pub const REASON: &str = "reason";

/// What the command line, and one fact about the hold (a path, the parents), may take.
const COMMAND: usize = 3_000;
const FACT: usize = 600;

/// How much of the hold a card shows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Everything: what is asked, by whom, why.
    Full,
    /// Nothing the agent chose, and no **Approve** (no one approves what they cannot see):
    /// what Teams is sent when it refused the full card.
    Bare,
    /// The hold without its buttons but **Open in console**: a notify-only webhook's card.
    Notice,
}

/// The card of `detail`'s hold, as `shown`. `console` is the web UI's address, for **Open
/// in console**.
pub fn card(detail: &HoldDetail, console: Option<&url::Url>, shown: Shown) -> Value {
    let (record, raised) = (&detail.record, &detail.raised);
    let title = match raised.detail {
        Some(Detail::Exec(_)) => "A held program run",
        _ => "A held connection",
    };
    let mut body =
        vec![json!({"type": "TextBlock", "text": title, "size": "Medium", "weight": "Bolder", "wrap": true})];
    if shown == Shown::Bare {
        body.push(label("Teams refused to show this hold's details: see them in the console."));
        body.push(runs(&[("Host", &record.host)]));
    } else {
        let requester = if raised.requester.is_empty() { "(unknown)" } else { &raised.requester };
        body.push(runs(&[
            ("Agent", &raised.agent),
            ("on", &record.host),
            ("as user", &format!("{} (uid {})", raised.user, raised.uid)),
            ("started by", requester),
        ]));
        match &raised.detail {
            Some(Detail::Exec(exec)) => {
                body.push(label("Runs"));
                body.push(code(&command_line(&exec.argv), COMMAND));
                let facts = format!("program: {}\nin: {}\nsha256: {}", exec.path, exec.cwd, exec.sha256);
                body.push(label("Program"));
                body.push(code(&facts, 2 * FACT));
                if !exec.parents.is_empty() {
                    let parents: Vec<String> = exec
                        .parents
                        .iter()
                        .map(|p| format!("{} ({})", command_line(&p.argv), p.pid))
                        .collect();
                    body.push(label("Started by"));
                    body.push(code(&parents.join("\n"), FACT));
                }
            }
            Some(Detail::Egress(egress)) => {
                body.push(label("Reaches"));
                body.push(code(&destination(egress), FACT));
            }
            None => {}
        }
        let mut why = vec![("Why: rule", raised.policy_rule.clone()), ("of policy", raised.policy.clone())];
        if record.quorum > 1 {
            why.push(("needs approvers", record.quorum.to_string()));
        }
        if raised.in_console {
            why.push(("decided", "in the console only".into()));
        }
        body.push(runs(&why.iter().map(|(l, t)| (*l, t.as_str())).collect::<Vec<_>>()));
    }
    body.push(deadline(detail));
    if record.status == "pending" && record.quorum > 1 && record.approvals > 0 {
        let so_far = format!("{} of {}", record.approvals, record.quorum);
        body.push(runs(&[("Approved by", &so_far), ("", &detail.approvers.join(", "))]));
    } else if record.status != "pending" {
        body.push(outcome(detail));
    }
    let mut actions = Vec::new();
    let value = format!("{}@{}", record.id, record.host);
    if record.status == "pending" && !raised.in_console && shown != Shown::Notice {
        if shown == Shown::Full {
            actions.push(json!({"type": "Action.Execute", "title": "Approve once", "verb": APPROVE,
                                "data": {"hold": value}, "style": "positive"}));
            let durations: Vec<Value> = DURATIONS
                .iter()
                .map(|(secs, shown)| json!({"title": shown, "value": secs.to_string()}))
                .collect();
            let choose = json!({"type": "Input.ChoiceSet", "id": DURATION, "label": "For", "isRequired": true,
                                "errorMessage": "Choose how long", "choices": durations,
                                "value": DURATIONS[DEFAULT_DURATION].0.to_string()});
            let approve = json!({"type": "Action.Execute", "title": "Approve", "verb": APPROVE_FOR,
                                 "data": {"hold": value}, "style": "positive"});
            actions.push(asking("Approve for…", &[choose, reason()], &approve));
        }
        let deny = json!({"type": "Action.Execute", "title": "Deny", "verb": DENY,
                          "data": {"hold": value}, "style": "destructive"});
        actions.push(asking("Deny…", &[reason()], &deny));
    }
    if let Some(console) = console {
        let mut url = console.clone();
        url.set_fragment(Some(&format!("hold={value}")));
        actions.push(json!({"type": "Action.OpenUrl", "title": "Open in console", "url": url.as_str()}));
    }
    json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "body": body,
        "actions": actions,
    })
}

/// `text` as a `TextRun` shows it: visible (see [`visible_with`]), and no `{{` left whole,
/// since Teams formats `{{DATE(…)}}` and `{{TIME(…)}}` even in a `TextRun`.
fn visible(text: &str, limit: usize) -> String {
    visible_with(text, limit, |c, before| (c == '{' && before.ends_with('{')).then_some("\u{200B}{"))
}

/// A button that shows `inputs` and the button `then` that sends them (`Action.ShowCard`).
fn asking(title: &str, inputs: &[Value], then: &Value) -> Value {
    json!({"type": "Action.ShowCard", "title": title,
           "card": {"type": "AdaptiveCard", "body": inputs, "actions": [then]}})
}

/// The optional reason an approver gives, within what the API takes.
fn reason() -> Value {
    json!({"type": "Input.Text", "id": REASON, "label": "Reason (optional)", "isMultiline": true,
           "maxLength": MAX_REASON})
}

/// keyturn's own words, in a `TextBlock`.
fn label(text: &str) -> Value {
    json!({"type": "TextBlock", "text": text, "weight": "Bolder", "wrap": true, "spacing": "Medium"})
}

/// Text an agent chose, shown as it is, in a monospaced `TextRun`.
fn code(text: &str, limit: usize) -> Value {
    json!({"type": "RichTextBlock", "inlines": [
        {"type": "TextRun", "text": visible(text, limit), "fontType": "Monospace"}
    ]})
}

/// `(label, text)` pairs in one line: each label in bold, each text as it is.
fn runs(pairs: &[(&str, &str)]) -> Value {
    let mut inlines = Vec::new();
    for (label, text) in pairs {
        if !label.is_empty() {
            let lead = if inlines.is_empty() { "" } else { " · " };
            inlines.push(json!({"type": "TextRun", "text": format!("{lead}{label} "), "weight": "Bolder"}));
        }
        inlines.push(json!({"type": "TextRun", "text": visible(text, FACT)}));
    }
    json!({"type": "RichTextBlock", "inlines": inlines})
}

/// The hold's id and deadline (Teams shows the time in each reader's time zone).
fn deadline(detail: &HoldDetail) -> Value {
    let deadline = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(detail.record.deadline_ms.max(0).cast_unsigned());
    let at = humantime::format_rfc3339_seconds(deadline);
    json!({"type": "TextBlock", "isSubtle": true, "wrap": true, "size": "Small",
           "text": format!("hold {} · decide by {{{{DATE({at}, SHORT)}}}} {{{{TIME({at})}}}}", visible(&detail.record.id, 100))})
}

/// How the hold ended, as the card shows it once its buttons are gone.
fn outcome(detail: &HoldDetail) -> Value {
    let Some(decision) = &detail.decision else {
        let why = closed(detail.record.closed_reason.as_deref().unwrap_or(&detail.record.status));
        return runs(&[(&format!("{} with no decision here:", capitalised(&detail.record.status)), why)]);
    };
    let approved = decision.verdict == i32::from(Verdict::Approve);
    let scope = match proto::v1::Scope::try_from(decision.scope) {
        Ok(proto::v1::Scope::ForDuration) => format!(" for {} s", decision.duration_secs),
        Ok(proto::v1::Scope::Always) => " always".to_owned(),
        _ if approved => " once".to_owned(),
        _ => String::new(),
    };
    let verdict = format!("{}{scope} by", if approved { "Approved" } else { "Denied" });
    let by =
        if detail.approvers.len() > 1 { detail.approvers.join(", ") } else { decision.decided_by.clone() };
    let mut pairs = vec![(verdict.as_str(), by.as_str())];
    if !decision.reason.is_empty() {
        pairs.push(("because", &decision.reason));
    }
    runs(&pairs)
}
