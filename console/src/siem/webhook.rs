//! Webhooks (`[[webhooks]]`): the hold events of the trail (raised, decided, closed), one
//! signed JSON body each, sent (`POST`) in order and at least once, streamed like a SIEM
//! output.
//!
//! A body is `{"event": "hold_raised", "seq": 12, "ocsf": [...]}`: the event's name, the
//! record's sequence number (a receiver drops a body it has seen), and the record as OCSF
//! events, the console's record itself in each one's `unmapped.keyturn`. It is signed as
//! Slack signs its requests: `X-Keyturn-Request-Timestamp` (Unix seconds) and
//! `X-Keyturn-Signature`, `v0=` and the hex HMAC-SHA256 of `v0:TIMESTAMP:BODY` under the
//! webhook's secret; a receiver refuses a body whose timestamp is over 5 minutes off.

use std::path::PathBuf;

use serde::Deserialize;

use super::send::SendError;
use crate::{
    audit::AuditEvent,
    export::Line,
    secret::{self, Secret},
};

/// One `[[webhooks]]` entry of the console's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the webhook's cursor: renaming it starts again from the first record.
    pub name: String,
    /// Where bodies are sent (`POST`; `https://`, `http://` only on loopback).
    pub url: url::Url,
    /// The signing secret, or a file holding it.
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    /// The events wanted (all three unless said).
    #[serde(default = "every_event")]
    pub events: Vec<HoldEvent>,
    /// PEM certificates of the CAs the receiver's certificate must chain to, instead of the
    /// built-in web roots.
    pub ca: Option<PathBuf>,
}

/// What a webhook is told of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldEvent {
    /// A host reported a held action.
    HoldRaised,
    /// A hold's decision was signed (the last vote of a quorum).
    HoldDecided,
    /// A host closed a hold (decided there, timed out, process gone), or it expired.
    HoldClosed,
}

fn every_event() -> Vec<HoldEvent> {
    vec![HoldEvent::HoldRaised, HoldEvent::HoldDecided, HoldEvent::HoldClosed]
}

impl HoldEvent {
    /// The webhook event a record of the trail is, if any.
    pub fn of(event: &AuditEvent) -> Option<Self> {
        match event {
            AuditEvent::HoldRaised { .. } => Some(Self::HoldRaised),
            AuditEvent::Decided { .. } => Some(Self::HoldDecided),
            AuditEvent::HoldClosed { .. } | AuditEvent::HoldExpired { .. } => Some(Self::HoldClosed),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::HoldRaised => "hold_raised",
            Self::HoldDecided => "hold_decided",
            Self::HoldClosed => "hold_closed",
        }
    }

    /// The body telling of record `seq`, whose OCSF events are `ocsf` (JSON texts).
    pub fn body(self, seq: i64, ocsf: &[Line]) -> String {
        let events: Vec<&str> = ocsf.iter().map(|line| line.text.as_str()).collect();
        format!(r#"{{"event":"{}","seq":{seq},"ocsf":[{}]}}"#, self.name(), events.join(","))
    }
}

/// A webhook's receiver.
pub struct Webhook {
    url: url::Url,
    client: reqwest::Client,
    secret: Vec<u8>,
}

impl Webhook {
    pub fn new(config: &WebhookConfig) -> Result<Self, String> {
        let secret = secret::read("secret", config.secret.as_ref(), config.secret_file.as_ref())?
            .ok_or("a webhook needs a secret or secret_file")?;
        if secret.len() < 16 {
            return Err("the secret must be at least 16 bytes".into());
        }
        if config.events.is_empty() {
            return Err("events: name at least one of hold_raised, hold_decided, hold_closed".into());
        }
        let ca = config
            .ca
            .as_ref()
            .map(|path| std::fs::read(path).map_err(|e| format!("ca = {}: {e}", path.display())))
            .transpose()?;
        let client = super::send::http_client(&config.url, ca.as_deref())?;
        Ok(Self { url: config.url.clone(), client, secret: secret.into_bytes() })
    }

    /// POSTs each body of `bodies` in turn, signed; returns once the receiver acknowledged
    /// every one (a 2xx).
    pub async fn send(&self, bodies: &[Line]) -> Result<(), SendError> {
        let url = || self.url.to_string();
        for body in bodies {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            let response = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Keyturn-Request-Timestamp", timestamp.to_string())
                .header(
                    "X-Keyturn-Signature",
                    crate::signature::sign(&self.secret, timestamp, body.text.as_bytes()),
                )
                .body(body.text.clone())
                .send()
                .await
                .map_err(|source| SendError::Http { url: url(), source })?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(SendError::Refused {
                    url: url(),
                    status,
                    body: text.chars().take(200).collect(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_shown() {
        let config: WebhookConfig = toml::from_str(
            "name = \"p\"\nurl = \"https://x.example/\"\nsecret = \"0123456789abcdef-secret\"\n",
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("0123456789abcdef"), "{config:?}");
        assert_eq!(config.events, every_event());
    }

    #[test]
    fn bad_webhooks_are_refused_with_the_reason() {
        let refused = |toml: &str| match Webhook::new(&toml::from_str(toml).unwrap()) {
            Ok(_) => panic!("{toml} accepted"),
            Err(reason) => reason,
        };
        let secret = "secret = \"0123456789abcdef\"\n";
        assert!(
            refused(&format!("name = \"p\"\nurl = \"http://hooks.example/\"\n{secret}")).contains("https://")
        );
        assert!(refused("name = \"p\"\nurl = \"https://hooks.example/\"\n").contains("needs a secret"));
        assert!(
            refused("name = \"p\"\nurl = \"https://h.example/\"\nsecret = \"short\"\n").contains("16 bytes")
        );
        assert!(
            refused(&format!("name = \"p\"\nurl = \"https://h.example/\"\n{secret}events = []\n"))
                .contains("at least one")
        );
        let unknown = toml::from_str::<WebhookConfig>(&format!(
            "name = \"p\"\nurl = \"https://h.example/\"\n{secret}events = [\"hold_eaten\"]\n"
        ));
        assert!(unknown.is_err());
    }
}
