//! The trail's hold records as chat messages, whatever the chat: a hold raised is posted
//! once to the channel and once directly to each approver account linked to a person its
//! policy names (`notify`), and every message of a hold is updated when someone approves it
//! (of a quorum), when it is decided, closed or expired, from whichever channel the decision
//! came. When it ends, the person who started the agent is told directly, where the chat can.

use super::{Chat, ChatAccount};
use crate::{
    audit::{AuditEvent, StoredRecord},
    people::Role,
    search::HoldDetail,
    siem::SiemError,
    store::{Store, StoreError},
};

/// A chat service's side of the announcements.
pub trait Announcer: Sync {
    /// Which chat this is: its messages are its own to update.
    const CHAT: Chat;

    /// The conversation holds are posted to.
    fn channel(&self) -> &str;

    /// The conversation where `account` (one of this chat's) is told directly, if this chat
    /// can tell it anything directly.
    fn direct(&self, account: &ChatAccount)
    -> impl Future<Output = Result<Option<String>, SiemError>> + Send;

    /// Posts `detail`'s message to conversation `to`: the message's conversation and id,
    /// or `None` when it cannot be updated.
    fn post(
        &self,
        detail: &HoldDetail,
        to: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>, SiemError>> + Send;

    /// Shows `detail` as it stands now in message `id` of `conversation`.
    fn update(
        &self,
        detail: &HoldDetail,
        conversation: &str,
        id: &str,
    ) -> impl Future<Output = Result<(), SiemError>> + Send;
}

/// Posts or updates the messages `records` call for.
pub async fn announce<A: Announcer>(
    chat: &A,
    store: &Store,
    records: &[StoredRecord],
) -> Result<(), SiemError> {
    for record in records {
        match record.typed()? {
            AuditEvent::HoldRaised { host, hold, .. } => post(chat, store, &host, &hold).await?,
            AuditEvent::ApprovalRecorded { host, hold, .. } => show(chat, store, &host, &hold, false).await?,
            AuditEvent::Decided { host, hold, .. }
            | AuditEvent::HoldClosed { host, hold, .. }
            | AuditEvent::HoldExpired { host, hold } => show(chat, store, &host, &hold, true).await?,
            _ => {}
        }
    }
    Ok(())
}

/// What a chat message of a hold is, as `chat_messages.kind` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The announcement in the channel.
    Channel,
    /// A copy sent directly to an approver the hold's policy names.
    Approver,
    /// The outcome, sent directly to the person who started the agent.
    Outcome,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Channel => "channel",
            Self::Approver => "approver",
            Self::Outcome => "outcome",
        }
    }
}

/// A message of a hold, posted in this chat.
#[derive(sqlx::FromRow)]
struct Posted {
    conversation: String,
    /// Empty for a message that cannot be updated.
    id: String,
    kind: String,
    /// The account a direct message was sent to (`slack:TEAM/USER`), else empty.
    account: String,
}

impl Posted {
    fn is(&self, kind: Kind, account: Option<&ChatAccount>) -> bool {
        self.kind == kind.as_str() && account.is_none_or(|account| self.account == account.to_string())
    }
}

/// Posts hold `hold` of `host` to the channel and to the approvers its policy names, each
/// unless its message is there already (a batch sent again after a crash or a lost lease).
async fn post<A: Announcer>(chat: &A, store: &Store, host: &str, hold: &str) -> Result<(), SiemError> {
    let posted = messages::<A>(store, host, hold).await?;
    // A hold decided before it could be posted (the trail read from its start, when the
    // chat was configured) is not announced: only a pending one asks anything of anyone.
    let Some(detail) = store.hold_detail(host, hold).await?.filter(|d| d.record.status == "pending") else {
        return Ok(());
    };
    if !posted.iter().any(|message| message.is(Kind::Channel, None)) {
        post_to(chat, store, &detail, chat.channel(), Kind::Channel).await?;
    }
    for account in approvers::<A>(store, &detail).await? {
        if !posted.iter().any(|message| message.is(Kind::Approver, Some(&account))) {
            tell(chat, store, &detail, &account, Kind::Approver).await?;
        }
    }
    Ok(())
}

/// This chat's accounts linked, as approvers, to the people `detail`'s policy names, but
/// never to the person who started the agent (no one approves their own action). A person
/// with no such account (unknown to the console, unlinked, a viewer) is skipped.
async fn approvers<A: Announcer>(store: &Store, detail: &HoldDetail) -> Result<Vec<ChatAccount>, StoreError> {
    // As the console's no-self-approval rule compares them.
    let requester = &detail.raised.requester;
    let is_requester = |person: &str| !requester.is_empty() && person.eq_ignore_ascii_case(requester);
    let (host, hold, chat) = (&detail.record.host, &detail.record.id, A::CHAT.as_str());
    let mut accounts: Vec<ChatAccount> = Vec::new();
    for person in &detail.raised.notify {
        if is_requester(person) {
            tracing::debug!(host, hold, person, "the requester is not sent their own hold to approve");
            continue;
        }
        let links = store.chat_links(Some(person)).await?;
        let theirs: Vec<ChatAccount> = links
            .iter()
            .filter(|link| link.role >= Role::Approver && !is_requester(&link.person))
            .filter_map(|link| link.account.parse::<ChatAccount>().ok())
            .filter(|account| account.chat == A::CHAT)
            .collect();
        if theirs.is_empty() {
            tracing::info!(
                host,
                hold,
                person,
                chat,
                "a person the policy names has no approver account linked here"
            );
        }
        for account in theirs {
            if !accounts.contains(&account) {
                accounts.push(account);
            }
        }
    }
    Ok(accounts)
}

/// Shows hold `hold` of `host` as it stands now in every message about it, and, once it
/// `ended`, tells the person who started the agent how: the message, directly to each of
/// their accounts in this chat, once each, and only for a hold announced here. The
/// messages and the hold are read once for both.
async fn show<A: Announcer>(
    chat: &A,
    store: &Store,
    host: &str,
    hold: &str,
    ended: bool,
) -> Result<(), SiemError> {
    let posted = messages::<A>(store, host, hold).await?;
    if posted.is_empty() {
        return Ok(());
    }
    let Some(detail) = store.hold_detail(host, hold).await? else { return Ok(()) };
    for message in posted.iter().filter(|message| !message.id.is_empty()) {
        chat.update(&detail, &message.conversation, &message.id).await?;
    }
    if !ended {
        return Ok(());
    }
    let accounts = store.chat_accounts_of(&detail.raised.requester).await?;
    for account in accounts.iter().filter(|account| account.chat == A::CHAT) {
        if !posted.iter().any(|message| message.is(Kind::Outcome, Some(account))) {
            tell(chat, store, &detail, account, Kind::Outcome).await?;
        }
    }
    Ok(())
}

/// Posts `detail`'s message directly to `account`, where this chat can, as a `kind` message.
/// A direct message the chat refuses or fails (a user who blocked the bot, an account gone)
/// is logged and not sent again: one person's chat must not hold up every later
/// announcement, which a batch retried for ever would.
async fn tell<A: Announcer>(
    chat: &A,
    store: &Store,
    detail: &HoldDetail,
    account: &ChatAccount,
    kind: Kind,
) -> Result<(), SiemError> {
    let posted = match chat.direct(account).await {
        Ok(Some(to)) => chat.post(detail, &to).await.map(|posted| posted.unwrap_or((to, String::new()))),
        Ok(None) => return Ok(()),
        Err(e) => Err(e),
    };
    match posted {
        Ok(posted) => record::<A>(store, detail, posted, kind, Some(account)).await,
        Err(e) => {
            let (host, hold) = (&detail.record.host, &detail.record.id);
            tracing::warn!(host, hold, %account, kind = kind.as_str(), error = %e, "a direct message was not sent");
            Ok(())
        }
    }
}

/// Posts `detail`'s message to conversation `to` as a `kind` message, and records it.
async fn post_to<A: Announcer>(
    chat: &A,
    store: &Store,
    detail: &HoldDetail,
    to: &str,
    kind: Kind,
) -> Result<(), SiemError> {
    let posted = chat.post(detail, to).await?.unwrap_or_else(|| (to.to_owned(), String::new()));
    record::<A>(store, detail, posted, kind, None).await
}

/// Records message `(conversation, id)` of `detail` (a `kind` message, sent directly to
/// `account` if any) to update. A message that cannot be updated (no id) is recorded all the
/// same, so that it is posted once.
async fn record<A: Announcer>(
    store: &Store,
    detail: &HoldDetail,
    (conversation, id): (String, String),
    kind: Kind,
    account: Option<&ChatAccount>,
) -> Result<(), SiemError> {
    sqlx::query(
        "INSERT INTO chat_messages (chat, host, hold_id, channel, ts, kind, account)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(A::CHAT.as_str())
    .bind(&detail.record.host)
    .bind(&detail.record.id)
    .bind(conversation)
    .bind(id)
    .bind(kind.as_str())
    .bind(account.map(ToString::to_string).unwrap_or_default())
    .execute(&store.pool)
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

/// This chat's messages that announced hold `hold` of `host`.
async fn messages<A: Announcer>(store: &Store, host: &str, hold: &str) -> Result<Vec<Posted>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT channel AS conversation, ts AS id, kind, account FROM chat_messages
         WHERE chat = $1 AND host = $2 AND hold_id = $3",
    )
    .bind(A::CHAT.as_str())
    .bind(host)
    .bind(hold)
    .fetch_all(&store.pool)
    .await?)
}
