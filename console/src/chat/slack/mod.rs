//! Slack: each hold posted to a channel as it is raised and updated as it ends
//! ([`crate::chat::announce`]), the clicks on its buttons and the modals they open decided
//! ([`clicks`], [`modal`]), and an account linked to no one offered a link to itself
//! ([`linking`]).
//!
//! The announcements follow the audit trail like a SIEM output (one cursor, one replica at
//! a time, at least once): a hold whose message is already recorded is not posted again.
//! Clicks arrive over Socket Mode by default ([`socket`]), which needs nothing to reach the
//! console from outside: the console opens the WebSocket (`apps.connections.open` with the
//! app-level token), acknowledges each envelope at once, and decides after. With a
//! signing secret instead, Slack POSTs them to `/api/slack/interactions` (request-URL
//! mode), each request checked against its `v0` signature before anything is read.

mod announce;
pub mod clicks;
pub mod linking;
pub mod message;
mod modal;
mod socket;

use std::{path::PathBuf, sync::Arc};

use serde::Deserialize;
use serde_json::Value;

use crate::{
    Console,
    secret::{self, Secret},
};

/// Slack's Web API.
const API_URL: &str = "https://slack.com/api/";

/// The console's `[slack]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The bot token (`xoxb-…`) messages are posted with, or a file holding it.
    pub bot_token: Option<Secret>,
    pub bot_token_file: Option<PathBuf>,
    /// The app-level token (`xapp-…`) Socket Mode connects with, or a file holding it.
    pub app_token: Option<Secret>,
    pub app_token_file: Option<PathBuf>,
    /// Request-URL mode instead of Socket Mode: the app's signing secret, or a file holding it.
    pub signing_secret: Option<Secret>,
    pub signing_secret_file: Option<PathBuf>,
    /// The channel holds are posted to (its id, `C0123456789`).
    pub channel: String,
    /// The Web API's base URL.
    #[serde(default = "api_url")]
    pub api_url: url::Url,
    /// The web UI's address as approvers reach it, for **Open in console**.
    pub console_url: Option<url::Url>,
    /// PEM certificates of the CAs Slack's certificate must chain to, instead of the
    /// built-in web roots.
    pub ca: Option<PathBuf>,
}

fn api_url() -> url::Url {
    url::Url::parse(API_URL).expect("Slack's URL")
}

#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    #[error("[slack]: {0}")]
    Config(String),
    #[error("Slack {method}: {source}")]
    Http { method: &'static str, source: reqwest::Error },
    #[error("Slack {method} failed: {error}")]
    Api { method: &'static str, error: String },
    #[error("Slack's socket: {0}")]
    Socket(String),
    #[error("Slack: the console's store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Slack as the console speaks to it.
pub struct Slack {
    api: url::Url,
    client: reqwest::Client,
    bot_token: String,
    /// Socket Mode's token; `None` in request-URL mode.
    app_token: Option<String>,
    /// Request-URL mode's secret; `None` in Socket Mode.
    signing_secret: Option<Vec<u8>>,
    channel: String,
    console_url: Option<url::Url>,
    /// Clicks being decided at once, however they came.
    deciding: Arc<tokio::sync::Semaphore>,
}

/// Clicks decided at once; Socket Mode's wait (acknowledged first), signed requests past
/// it are refused.
const DECIDING: usize = 32;

impl Slack {
    /// Checks `config` and reads its files; nothing is connected yet.
    pub fn new(config: &SlackConfig) -> Result<Self, SlackError> {
        let read = |name, inline: Option<&Secret>, file: Option<&PathBuf>| {
            secret::read(name, inline, file).map_err(SlackError::Config)
        };
        let bot_token = read("bot_token", config.bot_token.as_ref(), config.bot_token_file.as_ref())?
            .ok_or_else(|| SlackError::Config("bot_token or bot_token_file is required".into()))?;
        let app_token = read("app_token", config.app_token.as_ref(), config.app_token_file.as_ref())?;
        let signing_secret =
            read("signing_secret", config.signing_secret.as_ref(), config.signing_secret_file.as_ref())?;
        if !bot_token.starts_with("xoxb-") || app_token.as_ref().is_some_and(|t| !t.starts_with("xapp-")) {
            return Err(SlackError::Config("bot_token starts with xoxb-, app_token with xapp-".into()));
        }
        match (&app_token, &signing_secret) {
            (Some(_), None) => {}
            (None, Some(secret)) if secret.len() >= 16 => {}
            (None, Some(_)) => return Err(SlackError::Config("signing_secret is at least 16 bytes".into())),
            _ => {
                return Err(SlackError::Config(
                    "Socket Mode (app_token) or request-URL mode (signing_secret): one of them".into(),
                ));
            }
        }
        let id = |text: &str| {
            !text.is_empty() && text.len() <= 32 && text.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        if !id(&config.channel) {
            return Err(SlackError::Config(format!(
                "channel = {:?}: a channel id, such as C0123456789",
                config.channel
            )));
        }
        if !config.api_url.path().ends_with('/') {
            return Err(SlackError::Config("api_url must end with /".into()));
        }
        let ca = config
            .ca
            .as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|e| SlackError::Config(format!("ca = {}: {e}", path.display())))
            })
            .transpose()?;
        let client = crate::siem::http_client(&config.api_url, ca.as_deref()).map_err(SlackError::Config)?;
        Ok(Self {
            api: config.api_url.clone(),
            client,
            bot_token,
            app_token,
            signing_secret: signing_secret.map(String::into_bytes),
            channel: config.channel.clone(),
            console_url: config.console_url.clone(),
            deciding: Arc::new(tokio::sync::Semaphore::new(DECIDING)),
        })
    }

    /// Calls Web API `method` with `body` (JSON) under `token`: its answer, once `ok`.
    async fn call(&self, method: &'static str, token: &str, body: &Value) -> Result<Value, SlackError> {
        let url = self.api.join(method).map_err(|e| SlackError::Config(e.to_string()))?;
        self.answer(method, self.client.post(url).bearer_auth(token).json(body)).await
    }

    /// Calls Web API read `method` (such as `users.info`, which takes no JSON) with its
    /// arguments `query` in the URL, under the bot token: its answer, once `ok`.
    async fn read(&self, method: &'static str, query: &[(&str, &str)]) -> Result<Value, SlackError> {
        let url = self.api.join(method).map_err(|e| SlackError::Config(e.to_string()))?;
        self.answer(method, self.client.get(url).bearer_auth(&self.bot_token).query(query)).await
    }

    /// What Slack answered `request` to `method`, once `ok`.
    async fn answer(
        &self,
        method: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, SlackError> {
        let answer: Value = request
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|source| SlackError::Http { method, source })?
            .json()
            .await
            .map_err(|source| SlackError::Http { method, source })?;
        if answer["ok"] != true {
            let error = answer["error"].as_str().unwrap_or("no error named").to_owned();
            return Err(SlackError::Api { method, error });
        }
        Ok(answer)
    }

    /// Tells `user` alone, in `channel`, why their click did nothing.
    async fn tell(&self, channel: &str, user: &str, text: &str) -> Result<(), SlackError> {
        let body =
            serde_json::json!({"channel": channel, "user": user, "text": message::escape(text, 3_000)});
        self.call("chat.postEphemeral", &self.bot_token, &body).await.map(drop)
    }

    /// A turn to decide a click, if one is free now.
    pub fn deciding(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.deciding).try_acquire_owned().ok()
    }

    /// Whether a request to `/api/slack/interactions` is Slack's: its `v0` signature under
    /// the signing secret, sent within 5 minutes; never in Socket Mode.
    pub fn verify(&self, timestamp: &str, signature: &str, body: &[u8]) -> Result<(), &'static str> {
        let secret = self.signing_secret.as_deref().ok_or("Socket Mode: Slack does not POST here")?;
        let now = crate::store::now_ms().cast_unsigned() / 1000;
        crate::signature::verify(secret, timestamp, signature, body, now)
    }
}

/// Starts Slack for `console` as `config` says: the announcements (a SIEM-like output of
/// the trail) and, in Socket Mode, its connection. In request-URL mode, clicks reach the
/// console's HTTP API, which must be given the returned [`Slack`].
pub fn start(
    console: &Console,
    config: &SlackConfig,
) -> Result<(Arc<Slack>, Vec<tokio::task::JoinHandle<()>>), SlackError> {
    let slack = Arc::new(Slack::new(config)?);
    let store = console.store();
    let mut tasks = vec![
        crate::siem::Output::chat(store, crate::siem::Announcements::Slack(Arc::clone(&slack)))
            .spawn(store.clone()),
    ];
    if slack.app_token.is_some() {
        tasks.push(tokio::spawn(socket::run(Arc::clone(&slack), console.clone())));
    }
    Ok((slack, tasks))
}
