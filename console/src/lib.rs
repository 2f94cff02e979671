//! keyturn's console: the central approval service hosts stream their holds to, which
//! stores them and sends back signed decisions, with several replicas on one database.

pub mod client;
pub mod keys;
pub mod server;
pub mod store;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use server::Console;
pub use store::Store;

/// How often a replica marks holds past their deadline `expired`.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("serving the host streams: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// `keyturn console`'s configuration (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where host daemons connect (gRPC). No TLS yet: keep it on loopback.
    pub listen: SocketAddr,
    /// `sqlite://PATH?mode=rwc` or `postgres://…`; replicas of one console share one PostgreSQL.
    pub database: String,
    /// The Ed25519 key decisions are signed with (made if absent; replicas share it).
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8471)),
            database: "sqlite:///var/lib/keyturn/console.db?mode=rwc".into(),
            key: PathBuf::from("/var/lib/keyturn/console.key"),
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConsoleError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let error = |reason: String| ConsoleError::Config { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        toml::from_str(&text).map_err(|e| error(e.to_string()))
    }
}

impl Console {
    /// Opens the database and the signing key named by `config`.
    pub async fn open(config: &Config) -> Result<Self, ConsoleError> {
        let sqlite_file = config.database.strip_prefix("sqlite://").map(|p| p.split('?').next().unwrap_or(p));
        if let Some(dir) =
            sqlite_file.and_then(|f| std::path::Path::new(f).parent()).filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| ConsoleError::Config { path: dir.to_owned(), reason: e.to_string() })?;
        }
        let store = Store::open(&config.database).await?;
        let signer = keys::Signer::new(keys::load_or_create(&config.key)?);
        Ok(Self::new(store, signer))
    }

    /// Serves host streams on `listener` until the future is dropped, expiring overdue holds.
    pub async fn serve(self, listener: TcpListener) -> Result<(), ConsoleError> {
        let store = self.store().clone();
        let expiry = async move {
            let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
            loop {
                tick.tick().await;
                if let Err(e) = store.expire().await {
                    tracing::warn!(error = %e, "expiring overdue holds failed");
                }
            }
        };
        let server = tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::select! {
            result = server => Ok(result?),
            () = expiry => unreachable!("the expiry loop never ends"),
        }
    }
}

/// Runs the console of `config` until interrupted (`keyturn console`).
pub async fn run(config: Config) -> Result<(), ConsoleError> {
    let console = Console::open(&config).await?;
    let public = hex::encode(console.signer().public_key().as_bytes());
    tracing::info!(
        listen = %config.listen,
        key_id = console.signer().key_id(),
        public_key = public,
        "console starting: hosts must trust this public key"
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ConsoleError::Listen { addr: config.listen, source })?;
    tokio::select! {
        result = console.serve(listener) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
