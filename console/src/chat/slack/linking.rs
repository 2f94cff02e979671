//! Linking in Slack: a click by an account linked to no one is offered, ephemerally, a
//! one-time link to the console ([`crate::chat::offers`]); a link so made is announced in
//! the channel and to the person's other Slack accounts, so that an account linked to
//! someone by a forwarded link does not go unseen.

use serde_json::json;

use super::{Slack, SlackError, message};
use crate::{
    api::chat_link_url,
    chat::{Chat, ChatAccount, Link},
    store::Store,
};

/// The action id of the offer's button (a link: its click decides nothing).
pub const LINK: &str = "keyturn_link";

impl Slack {
    /// Offers `account` (named `name` by Slack), the user `user` of `channel`, a link to
    /// itself, ephemerally, for the person Slack names by the user's email alone: whether it
    /// was offered (not without a console URL, nor for a user Slack gives no email for).
    pub(super) async fn offer_link(
        &self,
        store: &Store,
        channel: &str,
        user: &str,
        account: &ChatAccount,
        name: &str,
    ) -> Result<bool, SlackError> {
        let Some(console) = &self.console_url else { return Ok(false) };
        // Slack vouches for a profile's email (`users:read.email`): only that person may
        // confirm, so a link forwarded to someone else links nothing.
        let profile = self.read("users.info", &[("user", user)]).await;
        let email = match &profile {
            Ok(profile) => profile["user"]["profile"]["email"].as_str().filter(|email| !email.is_empty()),
            Err(e) => {
                tracing::warn!(error = %e, "reading a Slack user's email for a link offer");
                None
            }
        };
        let Some(email) = email else { return Ok(false) };
        let secret = store.offer_chat_link(account, name, email).await?;
        let url = chat_link_url(console, &secret);
        let text = format!(
            "Your Slack account ({}/{}) is not linked to a person in keyturn, so your click decided \
             nothing. To link it to yourself, open the link below within {} minutes, sign in to the \
             console as {} and confirm. It works once, for you alone.",
            account.team,
            account.user,
            crate::chat::offers::OFFER_LIFETIME.as_secs() / 60,
            email,
        );
        let text = message::escape(&text, 3_000);
        let body = json!({
            "channel": channel, "user": user, "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": true}},
                {"type": "actions", "block_id": "link", "elements": [{
                    "type": "button", "action_id": LINK, "style": "primary", "url": url.as_str(),
                    "text": {"type": "plain_text", "text": "Link my Slack account"},
                }]},
            ],
        });
        self.call("chat.postEphemeral", &self.bot_token, &body).await.map(|_| true)
    }

    /// Tells the channel, and the person's other Slack accounts, that `account` was linked
    /// to `link`'s person by an offer they confirmed.
    pub async fn announce_link(
        &self,
        store: &Store,
        account: &ChatAccount,
        link: &Link,
    ) -> Result<(), SlackError> {
        if account.chat != Chat::Slack {
            return Ok(());
        }
        // The ids are Slack's own (letters and digits only, checked): a mention, not text.
        let text = format!(
            "Slack account <@{}> ({}/{}) is now linked to keyturn person *{}* as {}: they confirmed it \
             in the console with a link the account was given. Not theirs? An admin unlinks it: \
             `keyturn console unlink --slack {}/{}`",
            account.user,
            account.team,
            account.user,
            message::escape(&link.person, 300),
            link.role,
            account.team,
            account.user,
        );
        let post = async |channel: &str| {
            let body = json!({"channel": channel, "text": text, "unfurl_links": false});
            self.call("chat.postMessage", &self.bot_token, &body).await.map(drop)
        };
        post(&self.channel).await?;
        let others = store.chat_accounts_of(&link.person).await?;
        // Each of them is told, whichever cannot be.
        for other in others.iter().filter(|other| other.chat == Chat::Slack && *other != account) {
            if let Err(e) = post(&other.user).await {
                tracing::warn!(error = %e, account = %other, "telling a person's other Slack account of a link");
            }
        }
        Ok(())
    }
}
