//! keyturn's console: the central approval service hosts stream their holds to, which
//! stores them and sends back signed decisions, with several replicas on one database.

pub mod anchors;
pub mod api;
pub mod audit;
pub mod chat;
pub mod evidence;
pub mod export;
pub mod jwks;
pub mod keys;
pub mod oidc;
pub mod people;
pub mod policies;
pub mod search;
pub mod secret;
pub mod server;
pub mod siem;
pub mod signature;
pub mod store;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub use api::Api;
pub use people::{Role, RoleMap};
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
    Evidence(#[from] evidence::EvidenceError),
    #[error(transparent)]
    Key(#[from] host_client::keys::KeyError),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Oidc(#[from] oidc::OidcError),
    #[error(transparent)]
    Siem(#[from] siem::SiemError),
    #[error(transparent)]
    Slack(#[from] chat::slack::SlackError),
    #[error(transparent)]
    Teams(#[from] chat::teams::TeamsError),
    #[error("serving the host streams: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("listen = {0}: plaintext is only allowed on loopback; enable [tls]")]
    PlaintextOffLoopback(SocketAddr),
    #[error(
        "[http] listen = {0}: the web UI and API are plaintext HTTP; off loopback, put a TLS proxy in front and set behind_tls_proxy = true"
    )]
    HttpOffLoopback(SocketAddr),
}

/// `keyturn console`'s configuration (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where host daemons connect (gRPC).
    pub listen: SocketAddr,
    /// `sqlite://PATH?mode=rwc` or `postgres://…`; replicas of one console share one PostgreSQL.
    pub database: String,
    /// The Ed25519 key decisions are signed with (made if absent; replicas share it).
    pub key: PathBuf,
    pub tls: TlsConfig,
    pub http: HttpConfig,
    /// Which identity-provider groups give which role.
    pub roles: RoleMap,
    /// Sign-in through an OpenID Connect provider; without it, API tokens only.
    pub oidc: Option<oidc::OidcConfig>,
    /// Where the audit trail is streamed to (`[[siem]]`, any number).
    pub siem: Vec<siem::SiemConfig>,
    /// Who is told of holds raised, decided and closed (`[[webhooks]]`, any number).
    pub webhooks: Vec<siem::webhook::WebhookConfig>,
    /// Holds posted to a Slack channel, decided with a click there.
    pub slack: Option<chat::slack::SlackConfig>,
    /// Holds posted to a Microsoft Teams channel, decided with a click there.
    pub teams: Option<chat::teams::TeamsConfig>,
}

/// The web UI and the JSON API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// A TLS-terminating proxy is in front: listening off loopback is allowed, and session
    /// cookies are marked `Secure`.
    pub behind_tls_proxy: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8470)), behind_tls_proxy: false }
    }
}

/// Mutual TLS between hosts and console.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Off: plaintext, hosts known by the key of their first Hello (loopback only).
    pub enabled: bool,
    /// The certificate authority (`ca.key`, `ca.pem`), made if absent; replicas share it.
    pub dir: PathBuf,
    /// DNS names and IP addresses hosts reach the console by.
    pub names: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8471)),
            database: "sqlite:///var/lib/keyturn/console.db?mode=rwc".into(),
            key: PathBuf::from("/var/lib/keyturn/console.key"),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            roles: RoleMap::default(),
            oidc: None,
            siem: Vec::new(),
            webhooks: Vec::new(),
            slack: None,
            teams: None,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("/var/lib/keyturn/console-tls"),
            names: vec!["localhost".into(), "127.0.0.1".into()],
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
        let signer = keys::Signer::new(host_client::keys::load_or_create(&config.key)?);
        let console = Self::new(store, signer);
        if !config.tls.enabled {
            return Ok(console);
        }
        let authority = tls::Authority::load_or_create(&config.tls.dir)?;
        Ok(console.with_tls(server::Tls { authority, names: config.tls.names.clone() }))
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
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls() {
            let identity = tls.authority.server_identity(&tls.names)?;
            builder = builder.tls_config(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(identity.certificate, identity.key))
                    .client_ca_root(Certificate::from_pem(tls.authority.certificate()))
                    // Enrol is called before the host has a certificate; Stream demands one.
                    .client_auth_optional(true),
            )?;
        } else if !listener.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
            return Err(ConsoleError::PlaintextOffLoopback(
                listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            ));
        }
        let server =
            builder.add_service(self.service()).serve_with_incoming(TcpListenerStream::new(listener));
        tokio::select! {
            result = server => Ok(result?),
            () = expiry => unreachable!("the expiry loop never ends"),
        }
    }
}

/// Makes a one-time bootstrap token with which `host` can enrol within `ttl`
/// (`keyturn console token HOST`).
pub async fn issue_token(config: &Config, host: &str, ttl: Duration) -> Result<String, ConsoleError> {
    Ok(Store::open(&config.database).await?.issue_token(host, ttl).await?)
}

/// The web UI and API of `console`, signing people in through the provider `config` names.
pub async fn http_api(console: &Console, config: &Config) -> Result<Api, ConsoleError> {
    let oidc = match &config.oidc {
        Some(oidc) => Some(oidc::Oidc::discover(oidc).await?),
        None => None,
    };
    Ok(Api::new(console.clone(), oidc, config.roles.clone(), config.http.behind_tls_proxy))
}

/// Makes an API token for `person` with `role` (`keyturn console api-token`): the first
/// admin's way in where no identity provider is configured, and automation's.
pub async fn issue_api_token(
    config: &Config,
    person: &str,
    role: Role,
    name: &str,
    lifetime: Duration,
) -> Result<(String, String), ConsoleError> {
    let store = Store::open(&config.database).await?;
    Ok(store.create_api_token(person, role, name, "keyturn console api-token", lifetime).await?)
}

/// Links the chat `account` to `person` with `role` (`keyturn console link`), on `by`'s say-so.
pub async fn link_chat(
    config: &Config,
    account: &chat::ChatAccount,
    person: &str,
    role: Role,
    by: &str,
) -> Result<(), ConsoleError> {
    Ok(Store::open(&config.database).await?.link_chat(account, person, role, by).await?)
}

/// Removes the chat `account`'s link (`keyturn console unlink`): whether it had one.
pub async fn unlink_chat(
    config: &Config,
    account: &chat::ChatAccount,
    by: &str,
) -> Result<bool, ConsoleError> {
    Ok(Store::open(&config.database).await?.unlink_chat(account, by).await?)
}

/// Makes the evidence pack of `period` from the database and with the key `config` names
/// (`keyturn console evidence`), asked for by `by`: the zip's bytes.
pub async fn export_evidence(
    config: &Config,
    period: evidence::Period,
    by: &str,
) -> Result<Vec<u8>, ConsoleError> {
    let signer = keys::Signer::new(existing_key(config)?);
    let store = Store::open(&config.database).await?;
    Ok(evidence::export(&store, &signer, period, by).await?)
}

/// The console's public key, from the key file `config` names (`keyturn console evidence
/// verify` without `--public-key`).
pub fn public_key(config: &Config) -> Result<ed25519_dalek::VerifyingKey, ConsoleError> {
    Ok(existing_key(config)?.verifying_key())
}

/// The console's key from the file `config` names, which must exist: a pack signed by a key
/// made on the spot would prove nothing.
fn existing_key(config: &Config) -> Result<ed25519_dalek::SigningKey, ConsoleError> {
    if !config.key.exists() {
        return Err(ConsoleError::Config {
            path: config.key.clone(),
            reason: "no key file: the console makes its key at its first start".into(),
        });
    }
    Ok(host_client::keys::load_or_create(&config.key)?)
}

/// Starts what `config` has `console` stream to and announce in (SIEM outputs, webhooks,
/// Slack, Teams), with `api` taking the chats' clicks: the API to serve, and the tasks.
pub fn start_outputs(
    console: &Console,
    config: &Config,
    mut api: Api,
) -> Result<(Api, Vec<tokio::task::JoinHandle<()>>), ConsoleError> {
    let mut tasks = siem::start(console.store(), &config.siem, &config.webhooks)?;
    let chats = || -> Result<Api, ConsoleError> {
        if let Some(slack) = &config.slack {
            let (slack, slack_tasks) = chat::slack::start(console, slack)?;
            api = api.with_slack(slack);
            tasks.extend(slack_tasks);
        }
        if let Some(teams) = &config.teams {
            let (teams, announcements) = chat::teams::start(console, teams)?;
            api = api.with_teams(teams);
            tasks.push(announcements);
        }
        Ok(api)
    };
    match chats() {
        Ok(api) => Ok((api, tasks)),
        // Nothing half started is left running.
        Err(e) => {
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
            Err(e)
        }
    }
}

/// Runs the console of `config` until interrupted (`keyturn console`).
pub async fn run(config: Config) -> Result<(), ConsoleError> {
    let console = Console::open(&config).await?;
    let public = hex::encode(console.signer().public_key().as_bytes());
    tracing::info!(
        listen = %config.listen,
        tls = config.tls.enabled,
        key_id = console.signer().key_id(),
        public_key = public,
        "console starting: hosts must trust this public key{}",
        if config.tls.enabled { " and the CA in the TLS directory" } else { "" }
    );
    let http = config.http.listen;
    if !http.ip().is_loopback() && !config.http.behind_tls_proxy {
        return Err(ConsoleError::HttpOffLoopback(http));
    }
    let bind =
        async |addr| TcpListener::bind(addr).await.map_err(|source| ConsoleError::Listen { addr, source });
    let (hosts, people) = (bind(config.listen).await?, bind(http).await?);
    tracing::info!(url = %format!("http://{http}/"), "web UI and API listening");
    let (api, tasks) = start_outputs(&console, &config, http_api(&console, &config).await?)?;
    // Dropped (and so stopped) when the console stops.
    let _tasks: Vec<AbortOnDrop> = tasks.into_iter().map(AbortOnDrop).collect();
    tokio::select! {
        result = console.serve(hosts) => result,
        result = api.serve(people) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
