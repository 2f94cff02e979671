//! The console the daemon runs inside itself when no `[console]` is configured: SQLite in
//! the state directory, host streams and the web UI on loopback, linked like any console,
//! and one-time sign-in links to it for the host's operators.

use std::{net::SocketAddr, path::PathBuf};

use console::{Api, Console, ConsoleError, Store, store::StoreError};
use tokio::net::TcpListener;

use crate::{
    config::{Config, ConsoleConfig},
    console_link::{self, LinkError},
};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("embedded console: {0}")]
    Console(#[from] ConsoleError),
    #[error(
        "embedded console: {what} {addr}: {source} (another console there? set embedded_console = false, \
         or other addresses in embedded_console_config)"
    )]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("embedded console: {0}")]
    Link(#[from] LinkError),
    #[error("embedded console: {0}")]
    Key(#[from] host_client::keys::KeyError),
    #[error("embedded console: {0}")]
    Store(#[from] StoreError),
    #[error("embedded console {path}: {reason}")]
    Unfit { path: PathBuf, reason: &'static str },
}

/// The embedded console's configuration: `embedded_console_config` if named, otherwise the
/// console's defaults with its database and key in the daemon's state directory and its host
/// streams in plaintext on loopback (they never leave the machine).
fn console_config(config: &Config) -> Result<console::Config, EmbeddedError> {
    if let Some(path) = &config.embedded_console_config {
        let loaded = console::Config::load(Some(path))?;
        if loaded.tls.enabled || !loaded.listen.ip().is_loopback() {
            return Err(EmbeddedError::Unfit {
                path: path.clone(),
                reason: "an embedded console serves its own host on loopback: set `listen` to a loopback \
                         address and [tls] enabled = false",
            });
        }
        if !loaded.http.listen.ip().is_loopback() && !loaded.http.behind_tls_proxy {
            return Err(EmbeddedError::Unfit {
                path: path.clone(),
                reason: "[http] listen: the web UI and API are plaintext HTTP; off loopback, put a TLS proxy \
                         in front and set behind_tls_proxy = true",
            });
        }
        return Ok(loaded);
    }
    Ok(console::Config {
        database: format!("sqlite://{}?mode=rwc", config.state_dir.join("console.db").display()),
        key: config.state_dir.join("console.key"),
        tls: console::TlsConfig { enabled: false, ..console::TlsConfig::default() },
        ..console::Config::default()
    })
}

/// The embedded console, started.
pub struct Embedded {
    /// The `[console]` that links the daemon to it.
    pub link: ConsoleConfig,
    pub sign_in: SignInLinks,
}

/// Makes one-time sign-in links to the embedded console's web UI.
#[derive(Clone)]
pub struct SignInLinks {
    store: Store,
    /// `http://ADDRESS` the web UI listens on.
    origin: String,
}

impl SignInLinks {
    /// A link that signs `person` in as an admin, once, within the next ten minutes.
    pub async fn issue(&self, person: &str) -> Result<String, EmbeddedError> {
        let secret = self.store.issue_sign_in_link(person).await?;
        Ok(console::api::sign_in_url(&self.origin, &secret))
    }
}

/// Starts the embedded console on this runtime.
pub async fn start(config: &Config) -> Result<Embedded, EmbeddedError> {
    let console_config = console_config(config)?;
    let link = ConsoleConfig {
        endpoint: format!("http://{}", console_config.listen),
        public_keys: Vec::new(),
        // Only this host streams here: a machine with no host name is `localhost`.
        host: Some(console_link::kernel_host_name()?.unwrap_or_else(|| "localhost".to_owned())),
        key: None,
        ca: None,
        certificate: None,
        token: None,
        anchor_every: crate::config::ConsoleConfig::ANCHOR_EVERY,
    };
    // Any local user can reach the port: only this daemon's own identity is served.
    let host_key = host_client::keys::load_or_create(&config.console_key(&link))?;
    let console = Console::open(&console_config).await?.serving_only(
        &console_link::host_name(&link)?,
        &host_client::keys::fingerprint(&host_key.verifying_key()),
    );
    let bind = async |what, addr| {
        TcpListener::bind(addr).await.map_err(|source| EmbeddedError::Bind { what, addr, source })
    };
    let hosts = bind("host streams on", console_config.listen).await?;
    let people = bind("web UI and API on", console_config.http.listen).await?;
    let public_key = hex::encode(console.signer().public_key().as_bytes());
    let origin = format!("http://{}", people.local_addr().unwrap_or(console_config.http.listen));
    tracing::info!(url = %format!("{origin}/"), "embedded console: web UI and API listening");
    let sign_in = SignInLinks { store: console.store().clone(), origin };
    // Enforcement must not wait on an identity provider: without it, API tokens still work.
    let api = match console::http_api(&console, &console_config).await {
        Ok(api) => api,
        Err(e) => {
            tracing::error!(error = %e, "embedded console: sign-in through the identity provider is off");
            Api::new(
                console.clone(),
                None,
                console_config.roles.clone(),
                console_config.http.behind_tls_proxy,
            )
        }
    };
    // SIEM outputs, webhooks and chats run as long as the daemon (their tasks detached). If
    // one cannot start, none runs: the console without them, never the host without approvals.
    let api = match console::start_outputs(&console, &console_config, api.clone()) {
        Ok((with_outputs, _detached)) => with_outputs,
        Err(e) => {
            tracing::error!(error = %e, "embedded console: no SIEM output, webhook or chat runs");
            api
        }
    };
    tokio::spawn(async move {
        if let Err(e) = api.serve(people).await {
            tracing::error!(error = %e, "embedded console: the web UI and API stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = console.serve(hosts).await {
            tracing::error!(error = %e, "embedded console: host streams stopped; approvals are local only");
        }
    });
    Ok(Embedded { link: ConsoleConfig { public_keys: vec![public_key], ..link }, sign_in })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded console's own file, with `text`, read as the daemon reads it.
    fn read(text: &str) -> Result<console::Config, EmbeddedError> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("console.toml");
        std::fs::write(&path, text).expect("write");
        console_config(&Config { embedded_console_config: Some(path), ..Config::default() })
    }

    #[test]
    fn chats_and_outputs_are_taken_and_only_loopback_or_a_tls_proxy_serves_people() {
        let chat = "listen = \"127.0.0.1:18471\"\n[tls]\nenabled = false\n\
                    [slack]\nbot_token = \"xoxb-1\"\napp_token = \"xapp-1\"\nchannel = \"C1\"\n";
        assert!(read(chat).expect("taken").slack.is_some());
        let open =
            "listen = \"127.0.0.1:18471\"\n[tls]\nenabled = false\n[http]\nlisten = \"0.0.0.0:8470\"\n";
        let Err(EmbeddedError::Unfit { reason, .. }) = read(open) else { panic!("plaintext off loopback") };
        assert!(reason.contains("behind_tls_proxy"), "{reason}");
        assert!(read(&format!("{open}behind_tls_proxy = true\n")).is_ok());
        let Err(EmbeddedError::Unfit { reason, .. }) =
            read("listen = \"0.0.0.0:8471\"\n[tls]\nenabled = false\n")
        else {
            panic!("host streams off loopback")
        };
        assert!(reason.contains("loopback"), "{reason}");
    }
}
