//! Socket Mode: the console's WebSocket to Slack, opened with the app-level token. Each
//! envelope is acknowledged as soon as it is read (Slack wants it within 3 s and delivers
//! it again otherwise); a click is decided after, as the person its Slack account is linked
//! to, and a refusal is told to the clicker alone.
//!
//! A connection that ends, fails or falls silent (pinged, then given up) is opened again
//! with a fresh URL, after a backoff that only a steady connection resets.
//! Slack may deliver an envelope again (an acknowledgement lost with the connection): the
//! latest envelope ids are remembered, and the store itself never applies a person's
//! decision twice.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::{Slack, SlackError, clicks};
use crate::Console;

/// Backoff after a failed connection: from the first to the last, doubling.
/// Whatever ended it, a connection is opened again after this at least, and after a
/// doubling backoff unless it lasted [`STEADY`].
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));
const STEADY: Duration = Duration::from_mins(1);
/// A connection silent this long is pinged; silent twice as long, it is given up (a
/// half-open TCP connection would otherwise lose every click, unnoticed).
const SILENCE: Duration = Duration::from_secs(30);
/// Envelope ids remembered to drop a delivery seen before.
const REMEMBERED: usize = 1_024;

/// Keeps the Socket Mode connection up for as long as the task lives.
pub async fn run(slack: Arc<Slack>, console: Console) {
    let mut backoff = BACKOFF.0;
    let mut seen = Seen::default();
    loop {
        let started = Instant::now();
        let ended = session(&slack, &console, &mut seen).await;
        if started.elapsed() >= STEADY {
            backoff = BACKOFF.0;
        }
        match ended {
            Ok(()) => tracing::info!(retry_in = ?backoff, "Slack ended the Socket Mode connection"),
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "Slack Socket Mode connection failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// The envelope ids most recently handled.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    /// Whether `id` is new, remembering it.
    fn first(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

/// One envelope of Socket Mode.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "envelope_id")]
    id: Option<String>,
    #[serde(default)]
    payload: serde_json::Value,
}

/// One connection: opened, read until Slack or the network ends it.
async fn session(slack: &Arc<Slack>, console: &Console, seen: &mut Seen) -> Result<(), SlackError> {
    let Some(app_token) = &slack.app_token else { return Err(SlackError::Socket("no app_token".into())) };
    let opened = slack.call("apps.connections.open", app_token, &serde_json::json!({})).await?;
    let url = opened["url"]
        .as_str()
        .ok_or_else(|| SlackError::Socket("apps.connections.open gave no url".into()))?;
    let url = url::Url::parse(url).map_err(|e| SlackError::Socket(format!("url {url:?}: {e}")))?;
    let plain_on_loopback =
        url.scheme() == "ws" && matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback());
    if url.scheme() != "wss" && !plain_on_loopback {
        return Err(SlackError::Socket(format!("{}: only wss:// (ws:// on loopback)", url.scheme())));
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|e| SlackError::Socket(e.to_string()))?;
    let mut pinged = false;
    loop {
        let frame = match tokio::time::timeout(SILENCE, socket.next()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(_) if pinged => return Err(SlackError::Socket(format!("silent for {:?}", SILENCE * 2))),
            Err(_) => {
                pinged = true;
                socket
                    .send(Message::Ping(Vec::new().into()))
                    .await
                    .map_err(|e| SlackError::Socket(e.to_string()))?;
                continue;
            }
        };
        pinged = false;
        let text = match frame.map_err(|e| SlackError::Socket(e.to_string()))? {
            Message::Text(text) => text,
            Message::Ping(data) => {
                socket.send(Message::Pong(data)).await.map_err(|e| SlackError::Socket(e.to_string()))?;
                continue;
            }
            Message::Close(_) => return Ok(()),
            _ => continue,
        };
        let envelope: Envelope = match serde_json::from_str(&text) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(error = %e, "Slack sent an envelope that does not read");
                continue;
            }
        };
        if let Some(id) = &envelope.id {
            let ack = serde_json::json!({"envelope_id": id}).to_string();
            socket.send(Message::text(ack)).await.map_err(|e| SlackError::Socket(e.to_string()))?;
            if !seen.first(id) {
                continue;
            }
        }
        match envelope.kind.as_str() {
            "hello" => tracing::info!("connected to Slack (Socket Mode)"),
            "disconnect" => return Ok(()),
            "interactive" => {
                // Acknowledged already: a flood of clicks waits here, not in the database.
                let permit = Arc::clone(&slack.deciding).acquire_owned().await.expect("never closed");
                let (slack, console) = (Arc::clone(slack), console.clone());
                tokio::spawn(async move {
                    clicks::clicked(&slack, &console, &envelope.payload).await;
                    drop(permit);
                });
            }
            _ => {}
        }
    }
}
