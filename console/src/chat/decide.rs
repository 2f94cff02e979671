//! A click in chat, whichever chat it came from: decided as the person the clicking account
//! is linked to, by the rules every decision meets ([`crate::api::holds::decide_as`]), and
//! refused before them where chat itself may not decide (an account linked to no one, a
//! rule that says `approve_in = "console"`), every refusal audited.

use proto::v1::Verdict;

use super::ChatAccount;
use crate::{
    Console,
    api::holds::{Asked, decide_as},
    audit::AuditEvent,
    store::Outcome,
};

/// Why a click decided nothing.
pub enum Refusal {
    /// The account is linked to no one.
    NotLinked,
    /// Anything else, in words for the clicker alone.
    Said(String),
}

/// Decides `asked` as the person `account` is linked to.
pub async fn decide(console: &Console, account: &ChatAccount, asked: Asked<'_>) -> Result<Outcome, Refusal> {
    let (host, hold, verdict) = (asked.host, asked.hold_id, asked.verdict);
    let link = match console.store().chat_link(account).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            let why = format!("a click by {account}, linked to no one");
            refused(console, account.to_string(), "not_linked", why, host, hold, verdict).await;
            return Err(Refusal::NotLinked);
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading a chat account's link");
            return Err(Refusal::Said(
                "keyturn could not read who you are just now: try again, or decide in the console".into(),
            ));
        }
    };
    match console.store().raised(host, hold).await {
        Ok(Some(raised)) if raised.in_console => {
            let why = format!("a click in chat by {account}: the rule says approve_in = \"console\"");
            refused(console, link.person.clone(), "console_only", why, host, hold, verdict).await;
            return Err(Refusal::Said(
                "This hold is decided in the console only (its rule says so): open it there.".into(),
            ));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "reading a held action");
            return Err(Refusal::Said(
                "keyturn could not read the hold just now: try again, or decide in the console".into(),
            ));
        }
    }
    decide_as(console, &link.principal(account), asked)
        .await
        .map_err(|refused| Refusal::Said(format!("Your click decided nothing: {}", refused.message())))
}

/// What to tell the clicker of a click that `decided`, if anything.
pub fn said(decided: &Result<Outcome, Refusal>, account: &ChatAccount) -> Option<String> {
    match decided {
        Ok(Outcome::Decided(_)) => None,
        Ok(Outcome::AwaitingQuorum { approvals, quorum }) => {
            Some(format!("Your approval is recorded: {approvals} of {quorum}. The hold waits for more."))
        }
        Err(Refusal::NotLinked) => Some(format!(
            "Your {chat} account is not linked to a person in keyturn, so your click decided nothing. \
             An admin links it with: keyturn console link PERSON --{chat} {}/{}",
            account.team,
            account.user,
            chat = account.chat.as_str(),
        )),
        Err(Refusal::Said(text)) => Some(text.clone()),
    }
}

/// Audits a click refused here, before the console's decision rules saw it, as they audit
/// theirs.
async fn refused(
    console: &Console,
    by: String,
    code: &str,
    why: String,
    host: &str,
    hold: &str,
    verdict: Verdict,
) {
    let event = AuditEvent::DecisionRefused {
        host: host.into(),
        hold: hold.into(),
        by,
        verdict: verdict.as_str_name().to_owned(),
        code: code.into(),
        why,
    };
    if let Err(e) = console.store().record(&event).await {
        tracing::warn!(error = %e, code, "auditing a refused click");
    }
}
