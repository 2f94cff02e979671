//! The modals **Approve for…** (a duration, a reason) and **Deny** (a reason) open, and
//! their submissions read back.
//!
//! A modal carries the hold it is about and the channel to answer in, in its
//! `private_metadata`; a submission is trusted for nothing else. The duration must be one
//! this module offers, the reason meets the API's rules, and the account's link and every
//! decision rule are checked again when it arrives.

use proto::v1::{Scope, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Slack, clicks::Wanted, message};
use crate::{
    api::holds::MAX_REASON,
    chat::{DEFAULT_DURATION, DURATIONS, offered_duration},
};

/// The `block_id`s (and the `action_id`s of their element) of the modal's inputs.
const DURATION: &str = "duration";
const REASON: &str = "reason";
/// Slack's limit on `private_metadata`.
const MAX_METADATA: usize = 3_000;

/// Which modal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ApproveFor,
    Deny,
}

impl Kind {
    /// The modal's `callback_id`, by which its submission is known.
    fn callback_id(self) -> &'static str {
        match self {
            Self::ApproveFor => message::APPROVE_FOR,
            Self::Deny => message::DENY,
        }
    }
}

/// What a modal keeps for its submission.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    /// `HOLD@HOST`, as the button's value said.
    hold: String,
    /// The channel the button was clicked in: where refusals are told.
    channel: String,
}

/// The modal `kind` for hold `hold` (`HOLD@HOST`), clicked in `channel`: `None` when what
/// it must keep is longer than Slack keeps.
fn view(kind: Kind, hold: &str, channel: &str) -> Option<Value> {
    let metadata =
        serde_json::to_string(&Metadata { hold: hold.to_owned(), channel: channel.to_owned() }).ok()?;
    if metadata.len() > MAX_METADATA {
        return None;
    }
    let plain = |text: &str| json!({"type": "plain_text", "text": text});
    let (title, submit, what) = match kind {
        Kind::ApproveFor => (
            "Approve for…",
            "Approve",
            "The same action by the same agent is approved without asking until the time is up.",
        ),
        Kind::Deny => ("Deny", "Deny", "The held action is refused, and the agent is told."),
    };
    let named = format!("Hold `{}`\n{what}", message::escape(hold, 500));
    let mut blocks =
        vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": named, "verbatim": true}})];
    if kind == Kind::ApproveFor {
        let option = |(secs, text): (u64, &str)| json!({"text": plain(text), "value": secs.to_string()});
        blocks.push(json!({
            "type": "input", "block_id": DURATION, "label": plain("Approve for"),
            "element": {"type": "static_select", "action_id": DURATION,
                        "initial_option": option(DURATIONS[DEFAULT_DURATION]),
                        "options": DURATIONS.map(option)},
        }));
    }
    blocks.push(json!({
        "type": "input", "block_id": REASON, "optional": true, "label": plain("Reason"),
        "element": {"type": "plain_text_input", "action_id": REASON, "multiline": true, "max_length": MAX_REASON},
    }));
    Some(json!({
        "type": "modal", "callback_id": kind.callback_id(), "private_metadata": metadata,
        "title": plain(title), "submit": plain(submit), "close": plain("Cancel"), "blocks": blocks,
    }))
}

impl Slack {
    /// Opens modal `kind` for hold `hold` with the click's `trigger` (valid 3 seconds):
    /// what to tell the clicker when it could not be opened.
    pub(super) async fn open_modal(
        &self,
        trigger: &str,
        kind: Kind,
        hold: &str,
        channel: &str,
    ) -> Result<(), String> {
        let view = view(kind, hold, channel).ok_or_else(|| format!("{hold:?} is too long to name a hold"))?;
        let body = json!({"trigger_id": trigger, "view": view});
        self.call("views.open", &self.bot_token, &body).await.map(drop).map_err(|e| {
            tracing::warn!(error = %e, "opening a Slack modal");
            "keyturn could not open that dialog just now: try again, or decide in the console".to_owned()
        })
    }
}

/// A modal submitted (`view_submission`'s `view`), as Slack reports it.
#[derive(Deserialize)]
pub struct Submitted {
    callback_id: String,
    #[serde(default)]
    private_metadata: String,
    #[serde(default)]
    state: Value,
}

impl Submitted {
    /// The channel to answer in, and the decision asked for or why it is not one (a value
    /// keyturn did not offer); an error for a modal keyturn did not open, which names no one
    /// to answer.
    pub fn read(&self) -> Result<(String, Result<Wanted, &'static str>), &'static str> {
        let kind = [Kind::ApproveFor, Kind::Deny]
            .into_iter()
            .find(|kind| kind.callback_id() == self.callback_id)
            .ok_or("not a modal keyturn opens")?;
        let metadata: Metadata =
            serde_json::from_str(&self.private_metadata).map_err(|_| "private_metadata does not read")?;
        let id = |text: &str| {
            !text.is_empty() && text.len() <= 32 && text.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        if !id(&metadata.channel) {
            return Err("private_metadata names no channel");
        }
        Ok((metadata.channel, self.asked(kind, metadata.hold)))
    }

    /// The decision modal `kind` on `hold` asks for, as submitted.
    fn asked(&self, kind: Kind, hold: String) -> Result<Wanted, &'static str> {
        let input = |block: &str, field: &str| {
            self.state.pointer(&format!("/values/{block}/{block}/{field}")).and_then(Value::as_str)
        };
        let reason = input(REASON, "value").unwrap_or_default().to_owned();
        let (verdict, scope, duration_secs) = match kind {
            Kind::Deny => (Verdict::Deny, Scope::Once, 0),
            Kind::ApproveFor => {
                let chosen = input(DURATION, "selected_option/value").ok_or("no duration chosen")?;
                let secs = offered_duration(chosen).ok_or("a duration keyturn did not offer")?;
                (Verdict::Approve, Scope::ForDuration, secs)
            }
        };
        Ok(Wanted { hold, verdict, scope, duration_secs, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitted(kind: Kind, duration: &str, metadata: &str) -> Submitted {
        let state = json!({"values": {
            DURATION: {DURATION: {"type": "static_select", "selected_option": {"value": duration}}},
            REASON: {REASON: {"type": "plain_text_input", "value": "why"}},
        }});
        Submitted { callback_id: kind.callback_id().to_owned(), private_metadata: metadata.to_owned(), state }
    }

    #[test]
    fn a_submission_is_read_only_as_keyturn_opened_it() {
        let view = view(Kind::ApproveFor, "h1@host", "C1").unwrap();
        let metadata = view["private_metadata"].as_str().unwrap();
        let (channel, asked) = submitted(Kind::ApproveFor, "3600", metadata).read().unwrap();
        let asked = asked.unwrap();
        assert_eq!(
            (asked.hold.as_str(), asked.duration_secs, asked.reason.as_str(), channel.as_str()),
            ("h1@host", 3_600, "why", "C1")
        );
        assert_eq!(asked.scope, Scope::ForDuration);
        let denied = submitted(Kind::Deny, "999999999", metadata).read().unwrap().1.unwrap();
        assert_eq!((denied.verdict, denied.duration_secs), (Verdict::Deny, 0));
        for duration in ["999999999", "3600 ", "", "-1"] {
            assert!(
                submitted(Kind::ApproveFor, duration, metadata).read().unwrap().1.is_err(),
                "{duration:?}"
            );
        }
        for metadata in [
            "",
            "{}",
            r#"{"hold": "h@x", "channel": "C 1"}"#,
            r#"{"hold": "h@x", "channel": "C1", "more": 1}"#,
        ] {
            assert!(submitted(Kind::Deny, "", metadata).read().is_err(), "{metadata:?}");
        }
        let mut other = submitted(Kind::Deny, "", metadata);
        other.callback_id = "someone_else".into();
        assert!(other.read().is_err());
        assert!(super::view(Kind::Deny, &"x".repeat(MAX_METADATA), "C1").is_none());
    }
}
