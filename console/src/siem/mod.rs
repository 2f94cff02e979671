//! SIEM outputs: the audit trail streamed, in order and at least once, to syslog receivers
//! (RFC 5425) and HTTP collectors (Splunk HEC), each from a cursor kept in the database;
//! and webhooks ([`webhook`]), streamed the same way: its hold events, one signed body each.
//!
//! Each output runs as a task of its own: decisions never wait for it. Of several replicas
//! on one database, the one holding the output's lease (a row of `siem_cursors`, renewed
//! before every batch) streams it; the others wait for the lease to lapse. A lease row
//! rather than a PostgreSQL advisory lock: it works on SQLite too, it does not tie the
//! output to one pooled connection, and the cursor's update names the holder, so a replica
//! that lost its lease while sending (stalled past it) cannot move the cursor: at worst its
//! batch arrives twice, never is a record skipped. The cursor moves only after the receiver
//! acknowledged a batch: a 2xx over HTTP, a flushed write over syslog.

mod send;
pub mod webhook;

use std::{path::PathBuf, sync::Arc, time::Duration};

use rand_core::{OsRng, RngCore as _};
use serde::Deserialize;
use sqlx::Row as _;

use crate::{
    audit::StoredRecord,
    chat::{
        Chat,
        slack::{Slack, SlackError},
        teams::{Teams, TeamsError},
    },
    export::{Exporter, Format},
    store::{Store, StoreError, now_ms},
};
use send::Sink;
pub use send::{SendError, http_client, reachable};
use webhook::{HoldEvent, WebhookConfig};

/// How long a replica's lease on an output lasts unless renewed.
const LEASE: Duration = Duration::from_secs(30);
/// Longest a batch may take to send: well inside the lease.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an output with nothing to send looks for new records.
const POLL: Duration = Duration::from_millis(250);
/// Backoff after a failure: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));
/// Records a batch holds unless the output says otherwise.
const DEFAULT_BATCH: u32 = 200;

/// One `[[siem]]` output of the console's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemConfig {
    /// Names the output's cursor: renaming an output starts it again from the first record.
    pub name: String,
    /// `ocsf` (the default) or `keyturn`.
    #[serde(default)]
    pub format: Format,
    /// `HOST:PORT` of a syslog receiver: RFC 5424 messages over TLS, octet-counted (RFC 5425).
    pub syslog: Option<String>,
    /// An HTTP collector to POST batches to (`https://`; `http://` only on loopback).
    pub url: Option<url::Url>,
    /// The collector is Splunk's HTTP Event Collector (or speaks its protocol).
    #[serde(default)]
    pub hec: bool,
    /// The collector's token (`Authorization: Splunk …` with `hec`, else `Bearer …`).
    pub token: Option<String>,
    /// A file holding the token instead.
    pub token_file: Option<PathBuf>,
    /// PEM certificates of the CAs the receiver's certificate must chain to (syslog: required;
    /// HTTP: instead of the built-in web roots).
    pub ca: Option<PathBuf>,
    /// The name the receiver's certificate must carry, when not the host of `syslog`/`url`.
    pub server_name: Option<String>,
    /// Most records a batch holds.
    #[serde(default = "default_batch")]
    pub batch: u32,
}

fn default_batch() -> u32 {
    DEFAULT_BATCH
}

#[derive(Debug, thiserror::Error)]
pub enum SiemError {
    #[error("[[siem]] {name}: {reason}")]
    Config { name: String, reason: String },
    #[error("[[webhooks]] {name}: {reason}")]
    Webhook { name: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(transparent)]
    Slack(#[from] SlackError),
    #[error(transparent)]
    Teams(#[from] TeamsError),
    #[error("sending took over {0:?}")]
    Timeout(Duration),
}

/// An output ready to stream: its receiver and how records are written for it.
pub struct Output {
    /// Its cursor's name.
    name: String,
    batch: i64,
    exporter: Exporter,
    receiver: Receiver,
}

/// Where an output's records go, and as what.
enum Receiver {
    /// Every record, as lines.
    Siem(Sink),
    /// A webhook's wanted events: only those records are sent, one body each.
    Webhook(Sink, Vec<HoldEvent>),
    /// A chat: holds posted and updated.
    Chat(Announcements),
}

/// A chat whose messages announce holds.
pub enum Announcements {
    Slack(Arc<Slack>),
    Teams(Arc<Teams>),
}

impl Announcements {
    async fn announce(&self, store: &Store, records: &[StoredRecord]) -> Result<(), SiemError> {
        match self {
            Self::Slack(slack) => crate::chat::announce::announce(&**slack, store, records).await,
            Self::Teams(teams) => crate::chat::announce::announce(&**teams, store, records).await,
        }
    }

    fn chat(&self) -> Chat {
        match self {
            Self::Slack(_) => Chat::Slack,
            Self::Teams(_) => Chat::Teams,
        }
    }
}

/// Records a webhook's batch looks at; each wanted one is a request of its own.
const WEBHOOK_BATCH: i64 = 20;

impl Output {
    /// Checks `config` and reads its files (token, CA); nothing is connected yet.
    pub fn new(store: &Store, config: &SiemConfig) -> Result<Self, SiemError> {
        let sink =
            Sink::new(config).map_err(|reason| SiemError::Config { name: config.name.clone(), reason })?;
        Ok(Self {
            name: config.name.clone(),
            batch: i64::from(config.batch.clamp(1, 10_000)),
            exporter: Exporter::new(store.clone(), config.format),
            receiver: Receiver::Siem(sink),
        })
    }

    /// Checks a webhook's `config` and reads its files (secret, CA); nothing is sent yet.
    pub fn webhook(store: &Store, config: &WebhookConfig) -> Result<Self, SiemError> {
        let webhook = webhook::Webhook::new(config)
            .map_err(|reason| SiemError::Webhook { name: config.name.clone(), reason })?;
        Ok(Self {
            name: format!("webhook:{}", config.name),
            batch: WEBHOOK_BATCH,
            exporter: Exporter::new(store.clone(), Format::Ocsf),
            receiver: Receiver::Webhook(Sink::Webhook(webhook), config.events.clone()),
        })
    }

    /// A chat's announcements of holds.
    pub fn chat(store: &Store, announcements: Announcements) -> Self {
        Self {
            name: format!("chat:{}", announcements.chat().as_str()),
            batch: WEBHOOK_BATCH,
            exporter: Exporter::new(store.clone(), Format::Ocsf),
            receiver: Receiver::Chat(announcements),
        }
    }

    /// Streams this output from `store` for as long as the task lives.
    pub fn spawn(self, store: Store) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(store))
    }

    async fn run(mut self, store: Store) {
        let replica = hex::encode(OsRng.next_u64().to_be_bytes());
        let mut backoff = BACKOFF.0;
        loop {
            let pause = match self.step(&store, &replica).await {
                Ok(Step::Sent) => {
                    backoff = BACKOFF.0;
                    continue;
                }
                Ok(Step::Idle) => POLL,
                Ok(Step::Elsewhere) => LEASE / 3,
                Err(e) => {
                    tracing::warn!(output = self.name, error = %e, retry_in = ?backoff, "SIEM output failed");
                    if let Receiver::Siem(sink) | Receiver::Webhook(sink, _) = &mut self.receiver {
                        sink.disconnect();
                    }
                    let pause = backoff;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    pause
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Takes or renews the lease, sends the next batch and moves the cursor past it.
    async fn step(&mut self, store: &Store, replica: &str) -> Result<Step, SiemError> {
        let Some((next, prev)) = lease(store, &self.name, replica).await? else { return Ok(Step::Elsewhere) };
        let records = store.audit_page(next, 0, i64::MAX, self.batch).await?;
        let Some(last) = records.last() else { return Ok(Step::Idle) };
        check(&records, next, &prev)?;
        let (sink, lines) = match &mut self.receiver {
            Receiver::Siem(sink) => (sink, self.exporter.lines(&records).await?),
            Receiver::Chat(chat) => {
                tokio::time::timeout(SEND_TIMEOUT, chat.announce(store, &records))
                    .await
                    .map_err(|_| SiemError::Timeout(SEND_TIMEOUT))??;
                return self.advance(store, replica, next, last).await;
            }
            Receiver::Webhook(sink, wanted) => {
                let mut bodies = Vec::new();
                for record in &records {
                    let Some(event) = HoldEvent::of(&record.typed()?).filter(|event| wanted.contains(event))
                    else {
                        continue;
                    };
                    let ocsf = self.exporter.lines(std::slice::from_ref(record)).await?;
                    bodies.push(crate::export::Line {
                        at_ms: record.at_ms,
                        text: event.body(record.seq, &ocsf),
                    });
                }
                (sink, bodies)
            }
        };
        if !lines.is_empty() {
            tokio::time::timeout(SEND_TIMEOUT, sink.send(&lines))
                .await
                .map_err(|_| SiemError::Timeout(SEND_TIMEOUT))??;
        }
        self.advance(store, replica, next, last).await
    }

    /// Moves the cursor past `last`, the end of a batch sent from `next` on.
    async fn advance(
        &self,
        store: &Store,
        replica: &str,
        next: i64,
        last: &StoredRecord,
    ) -> Result<Step, SiemError> {
        let moved = sqlx::query(
            "UPDATE siem_cursors SET next_seq = $3, prev_hash = $4
             WHERE output = $1 AND holder = $2 AND next_seq = $5",
        )
        .bind(&self.name)
        .bind(replica)
        .bind(last.seq + 1)
        .bind(&last.hash)
        .bind(next)
        .execute(&store.pool)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        if moved == 0 {
            tracing::warn!(output = self.name, "lost the lease while sending: the batch may arrive twice");
        }
        Ok(Step::Sent)
    }
}

enum Step {
    Sent,
    Idle,
    /// Another replica streams this output.
    Elsewhere,
}

/// Takes (or renews) `replica`'s lease on `output`: its cursor, or `None` when another
/// replica holds it.
async fn lease(store: &Store, output: &str, replica: &str) -> Result<Option<(i64, String)>, StoreError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO siem_cursors (output, next_seq, prev_hash, holder, lease_until_ms)
         VALUES ($1, 0, $2, '', 0) ON CONFLICT (output) DO NOTHING",
    )
    .bind(output)
    .bind("0".repeat(64))
    .execute(&store.pool)
    .await?;
    let row = sqlx::query(
        "UPDATE siem_cursors SET holder = $2, lease_until_ms = $3
         WHERE output = $1 AND (holder = $2 OR lease_until_ms < $4)
         RETURNING next_seq, prev_hash",
    )
    .bind(output)
    .bind(replica)
    .bind(now + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX))
    .bind(now)
    .fetch_optional(&store.pool)
    .await?;
    row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).transpose()
}

/// Refuses to send a batch that does not continue the chain from the cursor unbroken.
fn check(records: &[StoredRecord], mut next: i64, prev: &str) -> Result<(), StoreError> {
    let mut prev = prev;
    for record in records {
        let broken = |reason: &str| StoreError::AuditBroken { seq: record.seq, reason: reason.to_owned() };
        if record.seq != next {
            return Err(broken(&format!("sequence {} where {next} was due: records removed", record.seq)));
        }
        if record.prev != prev {
            return Err(broken("does not chain to the record before it"));
        }
        if !record.sealed() {
            return Err(broken("contents do not match the record's hash: edited"));
        }
        next += 1;
        prev = &record.hash;
    }
    Ok(())
}

/// Starts every output of `configs` and every webhook of `webhooks` on `store`; fails
/// before starting any when one is misconfigured.
pub fn start(
    store: &Store,
    configs: &[SiemConfig],
    webhooks: &[WebhookConfig],
) -> Result<Vec<tokio::task::JoinHandle<()>>, SiemError> {
    if let Some(name) = twice(configs.iter().map(|c| c.name.as_str())) {
        let reason = "two outputs of this name".into();
        return Err(SiemError::Config { name: name.to_owned(), reason });
    }
    if let Some(config) = configs.iter().find(|c| c.name.contains(':')) {
        let reason = "`:` is kept for the cursors of webhooks and chat".into();
        return Err(SiemError::Config { name: config.name.clone(), reason });
    }
    if let Some(name) = twice(webhooks.iter().map(|c| c.name.as_str())) {
        let reason = "two webhooks of this name".into();
        return Err(SiemError::Webhook { name: name.to_owned(), reason });
    }
    let outputs = configs
        .iter()
        .map(|config| Output::new(store, config))
        .chain(webhooks.iter().map(|config| Output::webhook(store, config)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(outputs.into_iter().map(|output| output.spawn(store.clone())).collect())
}

/// The first name `names` holds twice, if any.
fn twice<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|name| !seen.insert(*name))
}
