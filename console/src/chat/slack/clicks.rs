//! A click on a hold's buttons, or a modal submitted, however it reached the console
//! (Socket Mode, or Slack's signed request): decided as the person the Slack account is
//! linked to, by the rules every decision meets; what decides nothing is explained to the
//! user alone. **Approve for…** and **Deny** open a modal first ([`modal`]); its
//! submission names the hold in `private_metadata`, and everything else is checked again.

use proto::v1::{Scope, Verdict};
use serde::Deserialize;

use super::{Slack, message, modal};
use crate::{
    Console,
    api::holds::{Asked, reason as checked_reason},
    chat::{
        ChatAccount,
        decide::{self, Refusal},
    },
};

/// An interaction, as Slack reports it: a click on a message's button (`block_actions`)
/// or a modal submitted (`view_submission`).
#[derive(Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: String,
    user: User,
    team: Option<IdOf>,
    channel: Option<IdOf>,
    trigger_id: Option<String>,
    #[serde(default)]
    actions: Vec<Action>,
    view: Option<modal::Submitted>,
}

#[derive(Deserialize)]
struct User {
    id: String,
    /// The user's team (`user.team_id`), where the payload has no `team` (Enterprise Grid).
    team_id: Option<String>,
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct IdOf {
    id: String,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

/// Who acts, and where to answer them.
struct Actor<'a> {
    /// `TEAM/USER`, or why the payload names no account keyturn can name.
    account: Result<ChatAccount, String>,
    user: &'a str,
    name: &'a str,
    channel: String,
    /// A user of another workspace than the one clicked in (Slack Connect): offered no link.
    external: bool,
}

/// What a decision asks of hold `hold` (`HOLD@HOST`): from a button, or a modal submitted.
pub(super) struct Wanted {
    pub hold: String,
    pub verdict: Verdict,
    pub scope: Scope,
    pub duration_secs: u64,
    /// As given: checked as the API checks reasons.
    pub reason: String,
}

/// Decides the interaction in `payload` as the person its user is linked to; tells the
/// user why when it decides nothing.
pub async fn clicked(slack: &Slack, console: &Console, payload: &serde_json::Value) {
    let Ok(interaction) = Interaction::deserialize(payload) else {
        tracing::warn!("Slack sent an interaction that does not read");
        return;
    };
    // The user's own workspace (a guest from another workspace is theirs, not this one's).
    let team = interaction
        .user
        .team_id
        .clone()
        .or_else(|| interaction.team.as_ref().map(|t| t.id.clone()))
        .unwrap_or_default();
    let account = ChatAccount::slack(&format!("{team}/{}", interaction.user.id));
    let external = interaction.team.as_ref().is_some_and(|clicked_in| clicked_in.id != team);
    let actor = |channel: String| Actor {
        account: account.clone(),
        user: &interaction.user.id,
        name: &interaction.user.username,
        channel,
        external,
    };
    match interaction.kind.as_str() {
        "block_actions" => {
            let Some(channel) = interaction.channel.as_ref().map(|c| c.id.clone()) else { return };
            let actor = actor(channel);
            for action in &interaction.actions {
                let said = match action.action_id.as_str() {
                    message::APPROVE => {
                        let wanted = Wanted {
                            hold: action.value.clone(),
                            verdict: Verdict::Approve,
                            scope: Scope::Once,
                            duration_secs: 0,
                            reason: String::new(),
                        };
                        decide(slack, console, &actor, wanted).await
                    }
                    id @ (message::APPROVE_FOR | message::DENY) => {
                        // Before anything else: the trigger lasts 3 seconds.
                        let trigger = interaction.trigger_id.as_deref().unwrap_or_default();
                        let kind =
                            if id == message::DENY { modal::Kind::Deny } else { modal::Kind::ApproveFor };
                        slack.open_modal(trigger, kind, &action.value, &actor.channel).await.err()
                    }
                    _ => continue,
                };
                tell(slack, &actor, said).await;
            }
        }
        "view_submission" => {
            let Some(view) = &interaction.view else { return };
            let (channel, asked) = match view.read() {
                Ok(read) => read,
                Err(why) => {
                    tracing::warn!(why, "a modal submitted that does not read");
                    return;
                }
            };
            let actor = actor(channel);
            let said = match asked {
                Ok(wanted) => decide(slack, console, &actor, wanted).await,
                Err(why) => {
                    tracing::warn!(why, "a modal submitted with what keyturn did not offer");
                    Some(format!("Your decision was not made: {why}"))
                }
            };
            tell(slack, &actor, said).await;
        }
        _ => {}
    }
}

/// Tells the actor `said`, if anything.
async fn tell(slack: &Slack, actor: &Actor<'_>, said: Option<String>) {
    if let Some(text) = said
        && let Err(e) = slack.tell(&actor.channel, actor.user, &text).await
    {
        tracing::warn!(error = %e, "telling a Slack user why their click decided nothing");
    }
}

/// Decides as `actor` wants: what to tell them, if anything.
async fn decide(slack: &Slack, console: &Console, actor: &Actor<'_>, wanted: Wanted) -> Option<String> {
    let Wanted { hold, verdict, scope, duration_secs, reason } = wanted;
    let Some((hold_id, host)) = hold.split_once('@') else {
        return Some(format!("{hold:?} names no hold"));
    };
    let reason = match checked_reason(Some(reason)) {
        Ok(reason) => reason,
        Err(refused) => return Some(format!("Your decision was not made: {}", refused.message())),
    };
    let account = match &actor.account {
        Ok(account) => account,
        Err(reason) => return Some(format!("Your Slack account is not one keyturn can name: {reason}")),
    };
    let asked = Asked { host, hold_id, verdict, scope, duration_secs, reason };
    let decided = decide::decide(console, account, asked).await;
    if let Err(Refusal::NotLinked) = decided
        && !actor.external
    {
        return match slack.offer_link(console.store(), &actor.channel, actor.user, account, actor.name).await
        {
            Ok(true) => None,
            Ok(false) => decide::said(&decided, account),
            Err(e) => {
                tracing::warn!(error = %e, "offering a Slack account a link");
                Some(
                    "Your Slack account is not linked to a person in keyturn, so your click decided \
                     nothing; keyturn could not offer you a link just now: try again."
                        .into(),
                )
            }
        };
    }
    decide::said(&decided, account)
}
