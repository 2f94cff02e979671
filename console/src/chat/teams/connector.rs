//! Teams' side of the announcements ([`crate::chat::announce`]): a hold's card posted to the
//! channel by the bot through the Bot Connector and replaced as the hold ends, or posted
//! once to a Workflows webhook.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{How, SERVICE_URL, TOKEN_URL, Teams, TeamsConfig, TeamsError, card, token};
use crate::{
    chat::{Chat, ChatAccount, announce::Announcer, is_guid},
    search::HoldDetail,
    siem::{SiemError, http_client, reachable},
};

/// The bot: who it is, where it posts, its token for the Bot Connector, and the check of
/// the tokens Teams sends it.
pub struct Bot {
    client: reqwest::Client,
    pub app_id: String,
    secret: String,
    pub tenant_id: String,
    channel: String,
    service_url: url::Url,
    token_url: url::Url,
    /// Checks the tokens of the activities Teams sends.
    tokens: token::BotTokens,
    /// The access token, until it is 5 minutes from expiry.
    access: tokio::sync::Mutex<Option<(String, Instant)>>,
    /// The bot's personal conversations, by the Entra ID object id of the user in them.
    personal: tokio::sync::Mutex<HashMap<String, String>>,
}

/// The identity platform's answer to a client-credentials request.
#[derive(Deserialize)]
struct Granted {
    access_token: String,
    expires_in: u64,
}

/// Tokens are asked for again this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_mins(5);

impl Bot {
    pub fn new(config: &TeamsConfig, secret: Option<String>, ca: Option<&[u8]>) -> Result<Self, TeamsError> {
        let missing =
            |name: &str| TeamsError::Config(format!("a bot needs {name} (or webhook_url, notify-only)"));
        let app_id = config.app_id.clone().ok_or_else(|| missing("app_id"))?;
        let secret = secret.ok_or_else(|| missing("app_secret or app_secret_file"))?;
        let tenant_id = config.tenant_id.clone().ok_or_else(|| missing("tenant_id"))?.to_ascii_lowercase();
        let channel = config.channel.clone().ok_or_else(|| missing("channel"))?;
        if !is_guid(&app_id) || !is_guid(&tenant_id) {
            return Err(TeamsError::Config("app_id and tenant_id are GUIDs".into()));
        }
        if channel.is_empty() || channel.len() > 256 || channel.chars().any(char::is_control) {
            return Err(TeamsError::Config(format!(
                "channel = {channel:?}: a channel's id, such as 19:…@thread.tacv2"
            )));
        }
        let url = |text: &str| url::Url::parse(text).map_err(|e| TeamsError::Config(format!("{text}: {e}")));
        let service_url = config.service_url.clone().map_or_else(|| url(SERVICE_URL), Ok)?;
        let token_url =
            url(&config.token_url.as_deref().unwrap_or(TOKEN_URL).replace("{tenant}", &tenant_id))?;
        let openid_metadata =
            config.openid_metadata.clone().map_or_else(|| url(token::OPENID_METADATA), Ok)?;
        if !service_url.path().ends_with('/') {
            return Err(TeamsError::Config("service_url must end with /".into()));
        }
        for url in [&token_url, &openid_metadata] {
            reachable(url).map_err(TeamsError::Config)?;
        }
        let client = http_client(&service_url, ca).map_err(TeamsError::Config)?;
        let tokens = token::BotTokens::new(client.clone(), openid_metadata, app_id.clone());
        Ok(Self {
            client,
            app_id,
            secret,
            tenant_id,
            channel,
            service_url,
            token_url,
            tokens,
            access: tokio::sync::Mutex::new(None),
            personal: tokio::sync::Mutex::default(),
        })
    }

    /// Checks the token of an activity sent to the bot from `service_url`, which must be on
    /// the Bot Connector's own host: why not, if it is refused.
    pub async fn verify(&self, authorization: &str, service_url: &str) -> Result<(), String> {
        let origin = |url: &url::Url| (url.host_str().map(str::to_owned), url.port_or_known_default());
        let from = url::Url::parse(service_url).map(|url| origin(&url)).ok();
        if from != Some(origin(&self.service_url)) {
            return Err(format!(
                "serviceUrl {service_url:?} is not the Bot Connector's ({})",
                self.service_url
            ));
        }
        self.tokens.verify(authorization, service_url).await.map(drop).map_err(|refused| refused.to_string())
    }

    /// The bot's access token for the Bot Connector: the one held, or a new one (OAuth 2.0
    /// client credentials).
    async fn access_token(&self) -> Result<String, TeamsError> {
        let mut access = self.access.lock().await;
        if let Some((token, until)) = access.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let call = "token";
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", &self.app_id),
            ("client_secret", &self.secret),
            ("scope", "https://api.botframework.com/.default"),
        ];
        let response =
            self.client.post(self.token_url.clone()).form(&form).send().await.map_err(http(call))?;
        let granted: Granted = checked(call, response).await?.json().await.map_err(http(call))?;
        let lasts = Duration::from_secs(granted.expires_in).saturating_sub(TOKEN_MARGIN);
        *access = Some((granted.access_token.clone(), Instant::now() + lasts));
        Ok(granted.access_token)
    }

    /// The id of the bot's personal (1:1) conversation with `user` (an Entra ID object id of
    /// the bot's tenant), created the first time: the Bot Connector answers with the one the
    /// user already has with the bot, if any. Teams creates it only where the bot is
    /// installed for the user (personal scope).
    async fn personal_conversation(&self, user: &str) -> Result<String, TeamsError> {
        let mut personal = self.personal.lock().await;
        if let Some(conversation) = personal.get(user) {
            return Ok(conversation.clone());
        }
        let call = "conversation";
        let url = self.url(&["v3", "conversations"])?;
        let parameters = json!({
            "bot": {"id": format!("28:{}", self.app_id)},
            "isGroup": false,
            "members": [{"id": user}],
            "tenantId": self.tenant_id,
            "channelData": {"tenant": {"id": self.tenant_id}},
        });
        let created: Value =
            self.call(call, self.client.post(url), &parameters).await?.json().await.map_err(http(call))?;
        let Some(conversation) = created["id"].as_str().filter(|id| !id.is_empty()) else {
            return Err(TeamsError::Refused { call, status: 200, error: "no conversation id".into() });
        };
        personal.insert(user.to_owned(), conversation.to_owned());
        Ok(conversation.to_owned())
    }

    /// The Bot Connector's URL of `path`.
    fn url(&self, path: &[&str]) -> Result<url::Url, TeamsError> {
        let mut url = self.service_url.clone();
        url.path_segments_mut()
            .map_err(|()| TeamsError::Config("service_url cannot be a base".into()))?
            .pop_if_empty()
            .extend(path);
        Ok(url)
    }

    /// Sends `request` with `body` and the bot's token: the response, once a success. A
    /// token the Bot Connector refuses is asked for anew next time.
    async fn call(
        &self,
        call: &'static str,
        request: reqwest::RequestBuilder,
        body: &Value,
    ) -> Result<reqwest::Response, TeamsError> {
        let token = self.access_token().await?;
        let response = request.bearer_auth(token).json(body).send().await.map_err(http(call))?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            *self.access.lock().await = None;
        }
        checked(call, response).await
    }

    /// `POST` (a new activity) or `PUT` (a replacement for activity `id`) of the message
    /// `activity` in `conversation`: the activity's id.
    async fn send(
        &self,
        conversation: &str,
        id: Option<&str>,
        mut activity: Value,
    ) -> Result<String, TeamsError> {
        let path = ["v3", "conversations", conversation, "activities"];
        let (call, request) = match id {
            None => ("post", self.client.post(self.url(&path)?)),
            Some(id) => {
                activity["id"] = id.into();
                ("update", self.client.put(self.url(&[&path[..], &[id]].concat())?))
            }
        };
        let response = self.call(call, request, &activity).await?;
        if let Some(id) = id {
            // A replacement's answer carries nothing needed.
            return Ok(id.to_owned());
        }
        let sent: Value = response.json().await.map_err(http(call))?;
        match sent["id"].as_str() {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(TeamsError::Refused { call, status: 200, error: "no activity id".into() }),
        }
    }
}

/// The error of `call`, without its URL (a Workflows webhook's is a secret).
fn http(call: &'static str) -> impl Fn(reqwest::Error) -> TeamsError {
    move |source| TeamsError::Http { call, source: source.without_url() }
}

/// A message activity carrying `card`.
fn activity(card: &Value) -> Value {
    json!({"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]})
}

/// `response`, once its status is a success.
async fn checked(call: &'static str, response: reqwest::Response) -> Result<reqwest::Response, TeamsError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let mut error = response.text().await.unwrap_or_default();
    error.truncate(error.floor_char_boundary(300));
    Err(TeamsError::Refused { call, status: status.as_u16(), error })
}

/// Whether a refusal with `status` would be given again: throttling and the bot's own token
/// are worth trying again, the rest of 4xx not.
fn for_good(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 429)
}

/// Whether Teams refused what a card says (its size, its content), rather than failing.
fn refused_content(error: &TeamsError) -> bool {
    matches!(error, TeamsError::Refused { status: 400 | 413, .. })
}

impl Teams {
    /// Sends `detail`'s card to `conversation` (replacing activity `id`): in full, or bare
    /// when Teams refuses it for what it says, so that the hold is still shown and nothing
    /// stalls behind it.
    async fn send(
        &self,
        bot: &Bot,
        detail: &HoldDetail,
        conversation: &str,
        id: Option<&str>,
    ) -> Result<String, TeamsError> {
        let console = self.console_url.as_ref();
        match bot.send(conversation, id, activity(&card::card(detail, console, card::Shown::Full))).await {
            Err(e) if refused_content(&e) => {
                let (host, hold) = (&detail.record.host, &detail.record.id);
                tracing::warn!(host, hold, error = %e, "Teams refused a hold's card: shown without its details");
                bot.send(conversation, id, activity(&card::card(detail, console, card::Shown::Bare))).await
            }
            sent => sent,
        }
    }
}

impl Announcer for Teams {
    const CHAT: Chat = Chat::Teams;

    fn channel(&self) -> &str {
        match &self.how {
            How::Bot(bot) => &bot.channel,
            How::Webhook { .. } => "webhook",
        }
    }

    /// The bot's personal conversation with `account`, if it is of the bot's own tenant (a
    /// notify-only webhook writes to no one directly). A refusal (the bot not installed for
    /// the user) is skipped by the announcements, as every failed direct message is.
    async fn direct(&self, account: &ChatAccount) -> Result<Option<String>, SiemError> {
        match &self.how {
            How::Bot(bot) if account.team == bot.tenant_id => {
                Ok(Some(bot.personal_conversation(&account.user).await?))
            }
            _ => Ok(None),
        }
    }

    async fn post(&self, detail: &HoldDetail, to: &str) -> Result<Option<(String, String)>, SiemError> {
        match &self.how {
            How::Bot(bot) => {
                let id = self.send(bot, detail, to, None).await?;
                Ok(Some((to.to_owned(), id)))
            }
            How::Webhook { url, client } => {
                let card = card::card(detail, self.console_url.as_ref(), card::Shown::Notice);
                let call = "webhook";
                let response =
                    client.post(url.clone()).json(&activity(&card)).send().await.map_err(http(call))?;
                checked(call, response).await?;
                Ok(None)
            }
        }
    }

    async fn update(&self, detail: &HoldDetail, conversation: &str, id: &str) -> Result<(), SiemError> {
        let How::Bot(bot) = &self.how else { return Ok(()) };
        match self.send(bot, detail, conversation, Some(id)).await {
            // The card was deleted or its channel archived (Teams answers 400, 403 or 404):
            // the announcements of other holds go on.
            Err(TeamsError::Refused { status, error, .. }) if for_good(status) => {
                let (host, hold) = (&detail.record.host, &detail.record.id);
                tracing::warn!(
                    host,
                    hold,
                    status,
                    error,
                    "Teams refused to replace a hold's card: not updated"
                );
                Ok(())
            }
            updated => updated.map(drop).map_err(Into::into),
        }
    }
}

impl Teams {
    /// The bot, when there is one (not with a notify-only webhook).
    pub fn bot(&self) -> Option<&Bot> {
        match &self.how {
            How::Bot(bot) => Some(bot),
            How::Webhook { .. } => None,
        }
    }
}
