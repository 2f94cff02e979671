//! The trail's hold records as chat messages, whatever the chat: a hold raised is posted
//! once, and every message of a hold is updated when someone approves it (of a quorum),
//! when it is decided, closed or expired, from whichever channel the decision came. When it
//! ends, the person who started the agent is told directly, where the chat can.

use sqlx::Row as _;

use super::{Chat, ChatAccount};
use crate::{
    audit::{AuditEvent, StoredRecord},
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

/// Posts hold `hold` of `host` to the channel, unless its message is there already (a
/// batch sent again after a crash or a lost lease).
async fn post<A: Announcer>(chat: &A, store: &Store, host: &str, hold: &str) -> Result<(), SiemError> {
    if !messages::<A>(store, host, hold).await?.is_empty() {
        return Ok(());
    }
    // A hold decided before it could be posted (the trail read from its start, when the
    // chat was configured) is not announced: only a pending one asks anything of anyone.
    let Some(detail) = store.hold_detail(host, hold).await?.filter(|d| d.record.status == "pending") else {
        return Ok(());
    };
    post_to(chat, store, &detail, chat.channel()).await
}

/// Shows hold `hold` of `host` as it stands now in every message about it, and, once it
/// `ended`, tells the person who started the agent how: the message, directly to each of
/// their accounts in this chat; once, and only for a hold announced in the channel. The
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
    for (conversation, id) in posted.iter().filter(|(_, id)| !id.is_empty()) {
        chat.update(&detail, conversation, id).await?;
    }
    let only_in_the_channel = posted.iter().all(|(conversation, _)| conversation == chat.channel());
    if !ended || !only_in_the_channel {
        return Ok(());
    }
    let accounts = store.chat_accounts_of(&detail.raised.requester).await?;
    for account in accounts.iter().filter(|account| account.chat == A::CHAT) {
        if let Some(to) = chat.direct(account).await? {
            post_to(chat, store, &detail, &to).await?;
        }
    }
    Ok(())
}

/// Posts `detail`'s message to conversation `to`, and records it to update.
async fn post_to<A: Announcer>(
    chat: &A,
    store: &Store,
    detail: &HoldDetail,
    to: &str,
) -> Result<(), SiemError> {
    // A message that cannot be updated is recorded under its conversation all the same,
    // so that it is posted once.
    let (conversation, id) = chat.post(detail, to).await?.unwrap_or_else(|| (to.to_owned(), String::new()));
    sqlx::query(
        "INSERT INTO chat_messages (chat, host, hold_id, channel, ts) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(A::CHAT.as_str())
    .bind(&detail.record.host)
    .bind(&detail.record.id)
    .bind(conversation)
    .bind(id)
    .execute(&store.pool)
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

/// This chat's messages that announced hold `hold` of `host`: (conversation, id).
async fn messages<A: Announcer>(
    store: &Store,
    host: &str,
    hold: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows =
        sqlx::query("SELECT channel, ts FROM chat_messages WHERE chat = $1 AND host = $2 AND hold_id = $3")
            .bind(A::CHAT.as_str())
            .bind(host)
            .bind(hold)
            .fetch_all(&store.pool)
            .await?;
    rows.iter().map(|row| Ok((row.try_get("channel")?, row.try_get("ts")?))).collect()
}
