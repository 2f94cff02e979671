//! The receivers an output sends to: a syslog receiver over TLS (RFC 5424 messages,
//! octet-counted as RFC 5425 frames them) and HTTP collectors (JSON lines, or Splunk HEC).

use std::{io::BufReader, net::IpAddr, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::SiemConfig;
use crate::export::{Format, Line};

/// Syslog facility 13 (log audit), severity 6 (informational): `<110>`.
const PRI: u8 = 13 * 8 + 6;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("writing to {addr}: {source}")]
    Write { addr: String, source: std::io::Error },
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Refused { url: String, status: reqwest::StatusCode, body: String },
}

/// Where an output's batches go.
pub enum Sink {
    Syslog(Box<Syslog>),
    Http(Http),
    Webhook(super::webhook::Webhook),
}

pub struct Syslog {
    addr: String,
    name: ServerName<'static>,
    tls: TlsConnector,
    hostname: String,
    msgid: &'static str,
    connection: Option<TlsStream<TcpStream>>,
}

pub struct Http {
    url: url::Url,
    client: reqwest::Client,
    authorization: Option<String>,
    hec: bool,
    hostname: String,
    sourcetype: &'static str,
}

/// The console machine's name as syslog HOSTNAME and HEC `host`: printable ASCII or `-`.
fn hostname() -> String {
    let name = ::ocsf::Device::this_host().hostname;
    if !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic()) {
        name
    } else {
        "-".into()
    }
}

impl Sink {
    pub fn new(config: &SiemConfig) -> Result<Self, String> {
        let ca = config
            .ca
            .as_ref()
            .map(|path| std::fs::read(path).map_err(|e| format!("ca = {}: {e}", path.display())))
            .transpose()?;
        match (&config.syslog, &config.url) {
            (Some(addr), None) => {
                if config.hec || config.token.is_some() || config.token_file.is_some() {
                    return Err("hec and tokens are for HTTP outputs (url), not syslog".into());
                }
                let ca = ca.ok_or("a syslog output needs `ca`, the receiver's CA certificates (PEM)")?;
                let host =
                    addr.rsplit_once(':').map(|(host, _)| host.trim_matches(['[', ']'])).unwrap_or_default();
                let name = config.server_name.clone().unwrap_or_else(|| host.to_owned());
                let name = ServerName::try_from(name).map_err(|e| format!("server name: {e}"))?;
                Ok(Self::Syslog(Box::new(Syslog {
                    addr: addr.clone(),
                    name,
                    tls: TlsConnector::from(Arc::new(client_config(&ca)?)),
                    hostname: hostname(),
                    msgid: match config.format {
                        Format::Ocsf => "ocsf",
                        Format::Keyturn => "keyturn",
                    },
                    connection: None,
                })))
            }
            (None, Some(url)) => Ok(Self::Http(Http::new(config, url, ca.as_deref())?)),
            _ => Err("name exactly one receiver: `syslog = \"HOST:PORT\"` or `url = \"https://…\"`".into()),
        }
    }

    /// Sends `lines` in one batch; returns once the receiver has acknowledged them.
    pub async fn send(&mut self, lines: &[Line]) -> Result<(), SendError> {
        match self {
            Self::Syslog(syslog) => syslog.send(lines).await,
            Self::Http(http) => http.send(lines).await,
            Self::Webhook(webhook) => webhook.send(lines).await,
        }
    }

    /// Drops the connection, if any (after a failure: the next batch connects afresh).
    pub fn disconnect(&mut self) {
        if let Self::Syslog(syslog) = self {
            syslog.connection = None;
        }
    }
}

/// TLS trusting only the CAs in `pem`.
fn client_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_reader_iter(&mut BufReader::new(pem)) {
        roots.add(certificate.map_err(|e| format!("ca: {e}"))?).map_err(|e| format!("ca: {e}"))?;
    }
    if roots.is_empty() {
        return Err("ca: no certificate in the file".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Syslog {
    async fn send(&mut self, lines: &[Line]) -> Result<(), SendError> {
        let write = |source| SendError::Write { addr: self.addr.clone(), source };
        if let Some(connection) = &mut self.connection {
            // A receiver that went away closed the connection: written to, the batch would
            // vanish into the socket's buffer. Reconnect first.
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::ZERO, connection.read(&mut byte)).await
            {
                self.connection = None;
            }
        }
        let mut frames = Vec::new();
        for line in lines {
            let message = format!(
                "<{PRI}>1 {} {} keyturn - {} - {}",
                crate::export::rfc3339(line.at_ms),
                self.hostname,
                self.msgid,
                line.text
            );
            frames.extend_from_slice(format!("{} {message}", message.len()).as_bytes());
        }
        if self.connection.is_none() {
            let connect = async {
                let tcp = TcpStream::connect(&self.addr).await?;
                tcp.set_nodelay(true)?;
                self.tls.connect(self.name.clone(), tcp).await
            };
            let connection =
                connect.await.map_err(|source| SendError::Connect { addr: self.addr.clone(), source })?;
            self.connection = Some(connection);
        }
        let Some(connection) = &mut self.connection else { unreachable!("connected above") };
        connection.write_all(&frames).await.map_err(write)?;
        connection.flush().await.map_err(write)
    }
}

/// One event as Splunk's HTTP Event Collector takes it (`/services/collector/event`).
#[derive(Serialize)]
struct HecEvent<'a> {
    /// Seconds since the epoch, to the millisecond.
    time: f64,
    host: &'a str,
    source: &'static str,
    sourcetype: &'static str,
    event: &'a RawValue,
}

/// Whether `url` may be sent to: `https://`, or `http://` on a loopback IP address only.
pub fn reachable(url: &url::Url) -> Result<(), String> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    };
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        // Without what may be a secret (a webhook's signature in its query).
        let mut shown = url.clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        return Err(format!("url = {shown}: https:// (http:// only on a loopback IP address)"));
    }
    Ok(())
}

/// A client for requests to `url` (see [`reachable`]), trusting only the CAs in `ca` if
/// given, else the built-in web roots.
pub fn http_client(url: &url::Url, ca: Option<&[u8]>) -> Result<reqwest::Client, String> {
    reachable(url)?;
    let mut client = reqwest::Client::builder().timeout(super::SEND_TIMEOUT);
    if let Some(pem) = ca {
        client = client.tls_built_in_root_certs(false);
        for certificate in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca: {e}"))? {
            client = client.add_root_certificate(certificate);
        }
    }
    client.build().map_err(|e| e.to_string())
}

impl Http {
    fn new(config: &SiemConfig, url: &url::Url, ca: Option<&[u8]>) -> Result<Self, String> {
        let client = http_client(url, ca)?;
        let token = match (&config.token, &config.token_file) {
            (Some(token), None) => Some(token.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("token_file = {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) if config.hec => return Err("hec needs a token or token_file".into()),
            (None, None) => None,
            (Some(_), Some(_)) => return Err("token or token_file, not both".into()),
        };
        if let Some(name) = &config.server_name {
            return Err(format!(
                "server_name = {name:?} is for syslog outputs: an HTTP output checks its URL's host"
            ));
        }
        Ok(Self {
            url: url.clone(),
            client,
            authorization: token
                .map(|t| if config.hec { format!("Splunk {t}") } else { format!("Bearer {t}") }),
            hec: config.hec,
            hostname: hostname(),
            sourcetype: match config.format {
                Format::Ocsf => "keyturn:ocsf",
                Format::Keyturn => "keyturn:audit",
            },
        })
    }

    async fn send(&self, lines: &[Line]) -> Result<(), SendError> {
        let http = |source| SendError::Http { url: self.url.to_string(), source };
        let mut body = String::new();
        for line in lines {
            if self.hec {
                let event = serde_json::from_str::<&RawValue>(&line.text).map_err(|e| SendError::Write {
                    addr: self.url.to_string(),
                    source: std::io::Error::other(e),
                })?;
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "milliseconds since 1970 fit in an f64's 52 bits"
                )]
                let time = line.at_ms as f64 / 1000.0;
                let hec = HecEvent {
                    time,
                    host: &self.hostname,
                    source: "keyturn-console",
                    sourcetype: self.sourcetype,
                    event,
                };
                body.push_str(&serde_json::to_string(&hec).unwrap_or_default());
            } else {
                body.push_str(&line.text);
            }
            body.push('\n');
        }
        let content_type = if self.hec { "application/json" } else { "application/x-ndjson" };
        let mut request =
            self.client.post(self.url.clone()).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let response = request.send().await.map_err(http)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(SendError::Refused { url: self.url.to_string(), status, body: body.chars().take(200).collect() })
    }
}
