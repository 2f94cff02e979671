//! Signing keys published as a JSON Web Key Set, fetched over HTTP and kept: a key is found
//! by `kid`, and a key not held makes a new fetch at most once per interval (sign-in, Teams).

use std::time::{Duration, Instant};

use jsonwebtoken::{
    DecodingKey,
    jwk::{Jwk, PublicKeyUse},
};
use reqwest::Client;
use serde::{Deserialize, de::DeserializeOwned};
use tokio::sync::{Mutex, RwLock};
use url::Url;

/// Where a key set is published.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// The JWKS itself.
    Jwks(Url),
    /// An OpenID metadata document, whose `jwks_uri` is read again at every fetch.
    Metadata(Url),
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("request to {url}: {source}")]
    Fetch { url: String, source: reqwest::Error },
    #[error("no signing key has the token's kid {0:?}")]
    UnknownKey(Option<String>),
    #[error("the JWKS key {kid:?}: {source}")]
    BadKey { kid: Option<String>, source: jsonwebtoken::errors::Error },
}

/// A key as published: the JWK, and the channels that endorse it where the publisher says
/// (the Bot Framework's `endorsements`; `None` where the key has no such array).
#[derive(Debug, Deserialize)]
struct PublishedKey {
    #[serde(flatten)]
    jwk: Jwk,
    #[serde(default)]
    endorsements: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct PublishedSet {
    keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct Metadata {
    jwks_uri: Url,
}

/// A key found for a token.
pub struct SigningKey {
    pub key: DecodingKey,
    /// The channels endorsing the key, as published (`None`: the key has no endorsements).
    pub endorsements: Option<Vec<String>>,
}

/// The keys held, when they were last fetched successfully, and when a fetch was last
/// tried.
#[derive(Default)]
struct Held {
    keys: Vec<PublishedKey>,
    fetched: Option<Instant>,
    tried: Option<Instant>,
}

/// The least time between two fetches while the publisher fails: tokens naming unknown keys
/// cannot make it be asked more often, nor make every token wait on a failing fetch.
const RETRY_FAILED: Duration = Duration::from_secs(10);
/// Keys held this long are fetched again at the next token, so that a key the publisher
/// withdrew stops being trusted (kept if that fetch fails).
const MAX_AGE: Duration = Duration::from_hours(24);

/// A key set of one publisher, fetched when first needed and kept.
pub struct KeySet {
    http: Client,
    source: KeySource,
    /// The least time between a successful fetch and the next one made for a key not held.
    refetch: Duration,
    /// The keys held: read by every token at once, written only as a fetch starts and ends.
    held: RwLock<Held>,
    /// Taken for a fetch, one at a time: a token whose key is held never waits for it.
    fetching: Mutex<()>,
}

impl KeySet {
    /// The keys published at `source`, none fetched yet.
    pub fn new(http: Client, source: KeySource, refetch: Duration) -> Self {
        Self { http, source, refetch, held: RwLock::new(Held::default()), fetching: Mutex::new(()) }
    }

    /// Fetches the keys now, whenever they were last fetched (to fail at start, not at the
    /// first token).
    pub async fn fetch(&self) -> Result<(), KeysError> {
        let _one = self.fetching.lock().await;
        self.fetch_now().await
    }

    /// The signing key named `kid` (or the only one, for a token without a kid). A key not
    /// held makes a new fetch when the last succeeded `refetch` ago or more (or failed
    /// [`RETRY_FAILED`] ago): a key published since is found, and tokens naming unknown keys
    /// cannot make the publisher be asked more often than that. A failed fetch fails the
    /// token (closed). Keys held [`MAX_AGE`] are fetched again, and kept while that fails.
    pub async fn key(&self, kid: Option<&str>) -> Result<SigningKey, KeysError> {
        if let Some(key) = self.fresh_key(kid).await? {
            return Ok(key);
        }
        let _one = self.fetching.lock().await;
        // Another token's fetch, ended while this one waited, may have brought it.
        if let Some(key) = self.fresh_key(kid).await? {
            return Ok(key);
        }
        let (held_key, tried, fetched) = {
            let held = self.held.read().await;
            (find(&held.keys, kid)?, held.tried, held.fetched)
        };
        let wait = match (tried > fetched, &held_key) {
            (true, _) => RETRY_FAILED,
            (false, Some(_)) => MAX_AGE,
            (false, None) => self.refetch,
        };
        let fallback = if tried.is_none_or(|at| at.elapsed() >= wait) {
            match self.fetch_now().await {
                Ok(()) => None,
                Err(e) if held_key.is_some() => {
                    tracing::warn!(error = %e, "refreshing signing keys held a day: the old ones are kept");
                    held_key
                }
                Err(e) => return Err(e),
            }
        } else {
            held_key
        };
        let held = self.held.read().await;
        find(&held.keys, kid)?.or(fallback).ok_or_else(|| KeysError::UnknownKey(kid.map(String::from)))
    }

    /// The key named `kid` among those held, if they were fetched less than [`MAX_AGE`] ago.
    async fn fresh_key(&self, kid: Option<&str>) -> Result<Option<SigningKey>, KeysError> {
        let held = self.held.read().await;
        if held.fetched.is_some_and(|at| at.elapsed() < MAX_AGE) { find(&held.keys, kid) } else { Ok(None) }
    }

    /// Fetches the keys, holding no lock on them while the publisher answers.
    async fn fetch_now(&self) -> Result<(), KeysError> {
        let tried = Instant::now();
        self.held.write().await.tried = Some(tried);
        let jwks_uri = match &self.source {
            KeySource::Jwks(url) => url.clone(),
            KeySource::Metadata(url) => get_json::<Metadata>(&self.http, url.as_str()).await?.jwks_uri,
        };
        let set: PublishedSet = get_json(&self.http, jwks_uri.as_str()).await?;
        tracing::debug!(%jwks_uri, keys = set.keys.len(), "fetched signing keys");
        let mut held = self.held.write().await;
        (held.keys, held.fetched) = (set.keys, Some(tried));
        Ok(())
    }
}

/// The signing key (`use` absent or `sig`) named `kid`, or the only one for no kid.
fn find(keys: &[PublishedKey], kid: Option<&str>) -> Result<Option<SigningKey>, KeysError> {
    let signing: Vec<_> = keys
        .iter()
        .filter(|k| matches!(k.jwk.common.public_key_use, None | Some(PublicKeyUse::Signature)))
        .collect();
    let published = match kid {
        Some(kid) => signing.into_iter().find(|k| k.jwk.common.key_id.as_deref() == Some(kid)),
        None if signing.len() == 1 => signing.into_iter().next(),
        None => None,
    };
    published
        .map(|published| {
            let key = DecodingKey::from_jwk(&published.jwk)
                .map_err(|source| KeysError::BadKey { kid: kid.map(String::from), source })?;
            Ok(SigningKey { key, endorsements: published.endorsements.clone() })
        })
        .transpose()
}

/// GETs `url` and reads its JSON body (a status other than 2xx is an error).
pub(crate) async fn get_json<T: DeserializeOwned>(http: &Client, url: &str) -> Result<T, KeysError> {
    let fetch = |source| KeysError::Fetch { url: url.to_owned(), source };
    let response = http.get(url).send().await.and_then(reqwest::Response::error_for_status).map_err(fetch)?;
    response.json().await.map_err(fetch)
}
