//! A click on a hold's buttons, however it reached the console (Socket Mode, or Slack's
//! signed request): decided as the person the clicking Slack account is linked to, by the
//! rules every decision meets; a click that decides nothing is explained to the clicker
//! alone.

use proto::v1::{Scope, Verdict};
use serde::Deserialize;

use super::{Slack, message};
use crate::{
    Console,
    api::holds::{Asked, decide_as},
    audit::AuditEvent,
    chat::ChatAccount,
    store::Outcome,
};

/// A click on a button of a hold's message (`block_actions`), as Slack reports it.
#[derive(Deserialize)]
struct Click {
    #[serde(rename = "type")]
    kind: String,
    user: IdOf,
    team: Option<IdOf>,
    channel: Option<IdOf>,
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Deserialize)]
struct IdOf {
    id: String,
    /// A user's team (`user.team_id`), where the payload has no `team` (Enterprise Grid).
    team_id: Option<String>,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

/// Decides the click in `payload` as the person the clicker is linked to; tells the
/// clicker why when it decides nothing.
pub async fn clicked(slack: &Slack, console: &Console, payload: &serde_json::Value) {
    let Ok(click) = Click::deserialize(payload) else {
        tracing::warn!("Slack sent an interaction that does not read");
        return;
    };
    if click.kind != "block_actions" {
        return;
    }
    let Some(channel) = click.channel.as_ref().map(|c| c.id.clone()) else { return };
    let user = click.user.id.clone();
    for action in &click.actions {
        let verdict = match action.action_id.as_str() {
            message::APPROVE => Verdict::Approve,
            message::DENY => Verdict::Deny,
            _ => continue,
        };
        let said = decide(console, &click, verdict, &action.value).await;
        if let Some(text) = said
            && let Err(e) = slack.tell(&channel, &user, &text).await
        {
            tracing::warn!(error = %e, "telling a Slack user why their click decided nothing");
        }
    }
}

/// Decides hold `value` (`HOLD@HOST`) as the clicker of `click` asked: what to tell them,
/// if anything.
async fn decide(console: &Console, click: &Click, verdict: Verdict, value: &str) -> Option<String> {
    let Some((hold_id, host)) = value.split_once('@') else {
        return Some(format!("{value:?} names no hold"));
    };
    // The user's own workspace (a guest from another workspace is theirs, not this one's).
    let team =
        click.user.team_id.clone().or_else(|| click.team.as_ref().map(|t| t.id.clone())).unwrap_or_default();
    let account = match ChatAccount::slack(&format!("{team}/{}", click.user.id)) {
        Ok(account) => account,
        Err(reason) => return Some(format!("Your Slack account is not one keyturn can name: {reason}")),
    };
    let link = match console.store().chat_link(&account).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            let refused = Refused {
                by: account.to_string(),
                code: "not_linked",
                why: "a click by a Slack account linked to no one".into(),
            };
            refused.record(console, host, hold_id, verdict).await;
            return Some(format!(
                "Your Slack account is not linked to a person in keyturn, so your click decided nothing. \
                 An admin links it with: keyturn console link PERSON --slack {}/{}",
                account.team, account.user
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading a Slack account's link");
            return Some(
                "keyturn could not read who you are just now: try again, or decide in the console".into(),
            );
        }
    };
    match console.store().raised(host, hold_id).await {
        Ok(Some(raised)) if raised.in_console => {
            let why = format!("a click in Slack by {account}: the rule says approve_in = \"console\"");
            Refused { by: link.person.clone(), code: "console_only", why }
                .record(console, host, hold_id, verdict)
                .await;
            return Some(
                "This hold is decided in the console only (its rule says so): open it there.".into(),
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "reading a held action");
            return Some(
                "keyturn could not read the hold just now: try again, or decide in the console".into(),
            );
        }
    }
    let asked = Asked { host, hold_id, verdict, scope: Scope::Once, duration_secs: 0, reason: String::new() };
    match decide_as(console, &link.principal(&account), asked).await {
        Ok(Outcome::Decided(_)) => None,
        Ok(Outcome::AwaitingQuorum { approvals, quorum }) => {
            Some(format!("Your approval is recorded: {approvals} of {quorum}. The hold waits for more."))
        }
        Err(refused) => Some(format!("Your click decided nothing: {}", refused.message())),
    }
}

/// A click refused here, before the console's decision rules saw it: audited as they
/// audit theirs.
struct Refused {
    by: String,
    code: &'static str,
    why: String,
}

impl Refused {
    async fn record(self, console: &Console, host: &str, hold: &str, verdict: Verdict) {
        let Self { by, code, why } = self;
        let verdict = verdict.as_str_name().to_owned();
        let event = AuditEvent::DecisionRefused {
            host: host.into(),
            hold: hold.into(),
            by,
            verdict,
            code: code.into(),
            why,
        };
        if let Err(e) = console.store().record(&event).await {
            tracing::warn!(error = %e, code, "auditing a refused click");
        }
    }
}
