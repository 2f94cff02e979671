//! Microsoft Teams: each hold posted to a channel as an Adaptive Card ([`card`]) by a bot
//! (the Bot Connector, with the bot's client-credentials token), updated as it ends, and the
//! clicks on its `Action.Execute` buttons decided ([`invoke`]). Teams POSTs a click to
//! `/api/teams/messages`, which takes it only with a valid Bot Framework token ([`token`]).
//!
//! Without a bot (`webhook_url`, a Workflows webhook), holds are only announced: the card
//! offers **Open in console**, and is never updated.

pub mod card;
mod connector;
pub mod invoke;
pub mod token;

use std::{path::PathBuf, sync::Arc};

use serde::Deserialize;

use crate::{
    Console,
    secret::{self, Secret},
};

/// Microsoft's endpoints, by default.
const SERVICE_URL: &str = "https://smba.trafficmanager.net/teams/";
const TOKEN_URL: &str = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token";

/// The console's `[teams]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// The bot's Microsoft app id (its Azure Bot registration, single-tenant).
    pub app_id: Option<String>,
    /// The app's client secret, or a file holding it.
    pub app_secret: Option<Secret>,
    pub app_secret_file: Option<PathBuf>,
    /// The Entra ID tenant the bot and its users belong to.
    pub tenant_id: Option<String>,
    /// The conversation holds are posted to: a channel's id (`19:…@thread.tacv2`).
    pub channel: Option<String>,
    /// The Bot Connector's base URL for the channel's region.
    pub service_url: Option<url::Url>,
    /// Where the bot's token is asked for; `{tenant}` stands for `tenant_id`.
    pub token_url: Option<String>,
    /// The Bot Framework's OpenID metadata, whose keys sign the tokens Teams sends.
    pub openid_metadata: Option<url::Url>,
    /// Notify-only, instead of a bot: a Workflows webhook that posts the cards.
    pub webhook_url: Option<Secret>,
    pub webhook_url_file: Option<PathBuf>,
    /// The web UI's address as approvers reach it, for **Open in console**.
    pub console_url: Option<url::Url>,
    /// PEM certificates of the CAs Microsoft's certificates must chain to, instead of the
    /// built-in web roots.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TeamsError {
    #[error("[teams]: {0}")]
    Config(String),
    #[error("Teams {call}: {source}")]
    Http { call: &'static str, source: reqwest::Error },
    #[error("Teams {call}: HTTP {status}: {error}")]
    Refused { call: &'static str, status: u16, error: String },
}

/// Teams as the console speaks to it.
pub struct Teams {
    console_url: Option<url::Url>,
    how: How,
    /// Clicks being decided at once.
    deciding: Arc<tokio::sync::Semaphore>,
}

/// How holds reach Teams.
enum How {
    Bot(Box<connector::Bot>),
    /// A Workflows webhook: its URL is a secret (it lets anyone post).
    Webhook {
        url: url::Url,
        client: reqwest::Client,
    },
}

/// Clicks decided at once; past it, Teams is answered 429.
const DECIDING: usize = 32;

impl Teams {
    /// Checks `config` and reads its files; nothing is connected yet.
    pub fn new(config: &TeamsConfig) -> Result<Self, TeamsError> {
        let read = |name, inline: Option<&Secret>, file: Option<&PathBuf>| {
            secret::read(name, inline, file).map_err(TeamsError::Config)
        };
        let ca = config
            .ca
            .as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|e| TeamsError::Config(format!("ca = {}: {e}", path.display())))
            })
            .transpose()?;
        let webhook = read("webhook_url", config.webhook_url.as_ref(), config.webhook_url_file.as_ref())?;
        let bot_named = config.app_id.is_some() || config.channel.is_some() || config.tenant_id.is_some();
        let how = match webhook {
            Some(_) if bot_named => {
                return Err(TeamsError::Config(
                    "a bot (app_id, tenant_id, channel) or webhook_url: one of them".into(),
                ));
            }
            Some(webhook) => {
                let url =
                    url::Url::parse(&webhook).map_err(|e| TeamsError::Config(format!("webhook_url: {e}")))?;
                let client = crate::siem::http_client(&url, ca.as_deref()).map_err(TeamsError::Config)?;
                How::Webhook { url, client }
            }
            None => {
                let secret = read("app_secret", config.app_secret.as_ref(), config.app_secret_file.as_ref())?;
                How::Bot(Box::new(connector::Bot::new(config, secret, ca.as_deref())?))
            }
        };
        Ok(Self {
            console_url: config.console_url.clone(),
            how,
            deciding: Arc::new(tokio::sync::Semaphore::new(DECIDING)),
        })
    }

    /// A turn to decide a click, if one is free now.
    pub fn deciding(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.deciding).try_acquire_owned().ok()
    }
}

/// Starts Teams for `console` as `config` says: the announcements (a SIEM-like output of the
/// trail). With a bot, clicks reach the console's HTTP API, which must be given the returned
/// [`Teams`].
pub fn start(
    console: &Console,
    config: &TeamsConfig,
) -> Result<(Arc<Teams>, tokio::task::JoinHandle<()>), TeamsError> {
    let teams = Arc::new(Teams::new(config)?);
    let store = console.store();
    let announcements =
        crate::siem::Output::chat(store, crate::siem::Announcements::Teams(Arc::clone(&teams)));
    Ok((teams, announcements.spawn(store.clone())))
}
