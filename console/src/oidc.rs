//! Approvers' sign-in with OpenID Connect: the authorization code flow with PKCE against any
//! provider found by discovery (Okta, Entra ID, Keycloak…), ID tokens checked against its JWKS.

use std::{path::PathBuf, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use rand_core::{OsRng, RngCore as _};
use reqwest::{Certificate, Client, redirect};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use url::{Host, Url, form_urlencoded};

use crate::{
    chat::ChatAccount,
    jwks::{KeySet, KeySource, KeysError, get_json},
    store::now_ms,
};

/// How long a sign-in may take, from `begin` to `finish`.
pub const PENDING_LOGIN_TTL: Duration = Duration::from_mins(10);
/// Clock skew tolerated between this host and the provider, in seconds.
const LEEWAY_S: u64 = 60;
/// The least time between two fetches of the JWKS for a key it did not hold.
const JWKS_REFETCH: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// ID token signatures accepted: public-key ones only (never `none`, never HMAC).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The console's `[oidc]` section: the provider and this console's client there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// `https://…`; `http://` only for a loopback IP address (tests).
    pub issuer: String,
    pub client_id: String,
    /// A confidential client's secret (sent as `client_secret_basic`); none: a public client.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Where the provider sends the browser back, as registered there.
    pub redirect_url: String,
    /// Scopes asked for (`openid` is always asked). Add `groups` where the provider
    /// releases the groups claim only for that scope (Okta, some Keycloak setups).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim holding the person's groups, an array of strings.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// A PEM file of extra certificate authorities, for a provider with a private CA.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The provider is Microsoft Entra ID: the tenant (`tid`) and object id (`oid`) of a
    /// person's ID token name their Microsoft Teams account, which is linked to them at
    /// each sign-in with the role their groups give (at most approver).
    #[serde(default)]
    pub teams_accounts: bool,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// What a sign-in must keep between `begin` and `finish` (server side, or in an encrypted
/// or authenticated cookie): its secrets and when it began.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
    /// Unix milliseconds; the sign-in expires `PENDING_LOGIN_TTL` later.
    pub created_ms: i64,
}

/// Who signed in, from the verified ID token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    /// The email, only when the provider vouches for it (`email_verified: true`).
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// Their Microsoft Teams account, from `tid` and `oid`, where the provider is said to
    /// be Entra ID (`teams_accounts`) and the token carries both.
    pub teams: Option<ChatAccount>,
}

impl Identity {
    /// The person as audits and self-approval checks name them: the verified email, else
    /// `SUBJECT@ISSUER` (never an email: an issuer URL holds `://`). An unverified email is
    /// never used, as anyone may set it at some providers.
    pub fn person(&self) -> String {
        self.email.clone().unwrap_or_else(|| format!("{}@{}", self.subject, self.issuer))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("OIDC issuer {0:?} is not a URL")]
    IssuerUrl(String),
    #[error("OIDC issuer {0} must be https:// (http:// only on a loopback IP address)")]
    InsecureIssuer(String),
    #[error("OIDC CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("OIDC HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("OIDC request to {url}: {source}")]
    Fetch { url: String, source: reqwest::Error },
    #[error("OIDC discovery names issuer {discovered}, not the configured {configured}")]
    IssuerMismatch { configured: String, discovered: String },
    #[error("sign-in began more than {} minutes ago", PENDING_LOGIN_TTL.as_secs() / 60)]
    PendingExpired,
    #[error("the callback's state is not the sign-in's")]
    StateMismatch,
    #[error("the token endpoint refused the code (HTTP {status}): {error} {description}")]
    TokenRefused { status: u16, error: String, description: String },
    #[error("the token response holds no id_token")]
    NoIdToken,
    #[error("ID token signed with {0:?}, not an accepted algorithm")]
    Algorithm(Algorithm),
    #[error("OIDC {0}")]
    Keys(#[from] KeysError),
    #[error("ID token signature does not verify")]
    Signature,
    #[error("ID token issued by another issuer")]
    WrongIssuer,
    #[error("ID token is not for this client (aud)")]
    WrongAudience,
    #[error("ID token authorized party (azp) {0:?} is not this client")]
    WrongAzp(Option<String>),
    #[error("ID token is expired or not yet valid (exp, nbf, iat)")]
    NotValidNow,
    #[error("ID token nonce is not the sign-in's")]
    NonceMismatch,
    #[error("ID token claim {0} is missing or of the wrong type")]
    Claim(String),
    #[error("ID token is malformed: {0}")]
    Malformed(jsonwebtoken::errors::Error),
}

/// The provider's metadata, as discovered.
#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

#[derive(Default, Deserialize)]
struct TokenRefusal {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// A relying party of one OpenID provider.
pub struct Oidc {
    config: OidcConfig,
    /// `scopes`, `openid` first, space-separated.
    scope: String,
    http: Client,
    metadata: Metadata,
    keys: KeySet,
}

impl Oidc {
    /// Fetches the provider's metadata (`/.well-known/openid-configuration`) and keys.
    pub async fn discover(config: &OidcConfig) -> Result<Self, OidcError> {
        let issuer = Url::parse(&config.issuer).map_err(|_| OidcError::IssuerUrl(config.issuer.clone()))?;
        let loopback = match issuer.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        };
        if !(issuer.scheme() == "https" || (issuer.scheme() == "http" && loopback)) {
            return Err(OidcError::InsecureIssuer(config.issuer.clone()));
        }
        let mut http =
            Client::builder().https_only(!loopback).redirect(redirect::Policy::none()).timeout(HTTP_TIMEOUT);
        if let Some(path) = &config.ca {
            let ca_error = |reason: String| OidcError::Ca { path: path.clone(), reason };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            for certificate in Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))? {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http.build().map_err(OidcError::Client)?;
        let well_known = format!("{}/.well-known/openid-configuration", config.issuer.trim_end_matches('/'));
        let metadata: Metadata = get_json(&http, &well_known).await?;
        if metadata.issuer != config.issuer {
            return Err(OidcError::IssuerMismatch {
                configured: config.issuer.clone(),
                discovered: metadata.issuer,
            });
        }
        let keys = KeySet::new(http.clone(), KeySource::Jwks(metadata.jwks_uri.clone()), JWKS_REFETCH);
        keys.fetch().await?;
        let mut scopes = vec!["openid"];
        scopes.extend(config.scopes.iter().map(String::as_str).filter(|s| *s != "openid"));
        Ok(Self { config: config.clone(), scope: scopes.join(" "), http, metadata, keys })
    }

    /// Starts a sign-in: the URL to send the browser to, and what must be kept (server side
    /// or in an encrypted or authenticated cookie, by the caller) until the callback.
    pub fn begin(&self) -> (String, PendingLogin) {
        let pending =
            PendingLogin { state: random(), nonce: random(), verifier: random(), created_ms: now_ms() };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
        let mut url = self.metadata.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", &self.scope)
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        (url.into(), pending)
    }

    /// Completes a sign-in at the callback: checks `state`, exchanges `code` with the PKCE
    /// verifier at the token endpoint and verifies the ID token it returns.
    pub async fn finish(
        &self,
        pending: &PendingLogin,
        state: &str,
        code: &str,
    ) -> Result<Identity, OidcError> {
        let ttl = i64::try_from(PENDING_LOGIN_TTL.as_millis()).expect("ten minutes fit");
        if now_ms().saturating_sub(pending.created_ms) > ttl {
            return Err(OidcError::PendingExpired);
        }
        if state != pending.state {
            return Err(OidcError::StateMismatch);
        }
        let id_token = self.exchange(code, &pending.verifier).await?;
        self.verify_id_token(&id_token, &pending.nonce).await
    }

    /// Checks an ID token from this provider's token endpoint: its signature by a key of
    /// the JWKS, `iss`, `aud` (and `azp`), `exp`, `nbf` and `iat` within a minute of skew,
    /// and `nonce`; returns who it names.
    pub async fn verify_id_token(&self, id_token: &str, nonce: &str) -> Result<Identity, OidcError> {
        let header = jsonwebtoken::decode_header(id_token).map_err(OidcError::Malformed)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(OidcError::Algorithm(header.alg));
        }
        let key = self.keys.key(header.kid.as_deref()).await?.key;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.metadata.issuer]);
        validation.set_audience(&[&self.config.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(id_token, &key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => OidcError::Signature,
                ErrorKind::InvalidIssuer => OidcError::WrongIssuer,
                ErrorKind::InvalidAudience => OidcError::WrongAudience,
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => OidcError::NotValidNow,
                _ => OidcError::Malformed(e),
            })?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let several_audiences = claims.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1);
        if (several_audiences || text("azp").is_some()) && text("azp") != Some(&self.config.client_id) {
            return Err(OidcError::WrongAzp(text("azp").map(String::from)));
        }
        let iat = claims.get("iat").and_then(Value::as_i64).ok_or_else(|| OidcError::Claim("iat".into()))?;
        if iat > now_ms() / 1000 + i64::try_from(LEEWAY_S).expect("a minute fits") {
            return Err(OidcError::NotValidNow);
        }
        if text("nonce") != Some(nonce) {
            return Err(OidcError::NonceMismatch);
        }
        let groups_claim = &self.config.groups_claim;
        let groups = match claims.get(groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(groups)) => groups
                .iter()
                .map(|g| g.as_str().map(String::from))
                .collect::<Option<_>>()
                .ok_or_else(|| OidcError::Claim(groups_claim.clone()))?,
            Some(_) => return Err(OidcError::Claim(groups_claim.clone())),
        };
        Ok(Identity {
            issuer: self.metadata.issuer.clone(),
            subject: text("sub").ok_or_else(|| OidcError::Claim("sub".into()))?.to_owned(),
            email: text("email")
                .filter(|_| claims.get("email_verified") == Some(&Value::Bool(true)))
                .map(String::from),
            name: text("name").map(String::from),
            groups,
            teams: match (self.config.teams_accounts, text("tid"), text("oid")) {
                (true, Some(tid), Some(oid)) => ChatAccount::teams(&format!("{tid}/{oid}")).ok(),
                _ => None,
            },
        })
    }

    /// Trades `code` and the PKCE verifier for the ID token at the token endpoint.
    async fn exchange(&self, code: &str, verifier: &str) -> Result<String, OidcError> {
        let url = &self.metadata.token_endpoint;
        let fetch = |source| OidcError::Fetch { url: url.to_string(), source };
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.config.redirect_url),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(url.clone());
        match &self.config.client_secret {
            // RFC 6749 2.3.1: both are form-encoded before they go into the Basic header.
            Some(secret) => {
                let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                request = request.basic_auth(encode(&self.config.client_id), Some(encode(secret)));
            }
            None => form.push(("client_id", &self.config.client_id)),
        }
        let response = request.form(&form).send().await.map_err(fetch)?;
        let status = response.status();
        if !status.is_success() {
            let refusal: TokenRefusal = response.json().await.unwrap_or_default();
            return Err(OidcError::TokenRefused {
                status: status.as_u16(),
                error: refusal.error,
                description: refusal.error_description,
            });
        }
        let tokens: TokenResponse = response.json().await.map_err(fetch)?;
        tokens.id_token.ok_or(OidcError::NoIdToken)
    }
}

/// 32 random bytes, base64url: a state, a nonce or a PKCE verifier.
fn random() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relying party of a provider that is never asked: no keys, nothing to fetch.
    fn offline() -> Oidc {
        let url = |path: &str| Url::parse(&format!("https://idp.example/{path}")).expect("url");
        Oidc {
            config: OidcConfig {
                issuer: "https://idp.example".into(),
                client_id: "keyturn".into(),
                client_secret: None,
                redirect_url: "https://console.example/auth/callback".into(),
                scopes: default_scopes(),
                groups_claim: default_groups_claim(),
                ca: None,
                teams_accounts: false,
            },
            scope: "openid".into(),
            http: Client::new(),
            metadata: Metadata {
                issuer: "https://idp.example".into(),
                authorization_endpoint: url("authorize"),
                token_endpoint: url("token"),
                jwks_uri: url("jwks"),
            },
            keys: KeySet::new(Client::new(), KeySource::Jwks(url("jwks")), JWKS_REFETCH),
        }
    }

    fn token(alg: &str) -> String {
        let part = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let claims = r#"{"iss":"https://idp.example","aud":"keyturn","sub":"mallory","exp":9999999999,"iat":0,"nonce":"n"}"#;
        format!("{}.{}.{}", part(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)), part(claims), part("sig"))
    }

    #[tokio::test]
    async fn unsigned_and_hmac_tokens_are_refused() {
        let oidc = offline();
        let refused = oidc.verify_id_token(&token("none"), "n").await;
        assert!(matches!(refused, Err(OidcError::Malformed(_))), "{refused:?}");
        for alg in ["HS256", "HS384", "HS512"] {
            let refused = oidc.verify_id_token(&token(alg), "n").await;
            assert!(matches!(refused, Err(OidcError::Algorithm(_))), "{alg}: {refused:?}");
        }
    }

    #[test]
    fn begin_asks_for_a_pkce_s256_challenge_of_fresh_secrets() {
        let oidc = offline();
        let (url, pending) = oidc.begin();
        let (_, other) = oidc.begin();
        assert_ne!(pending.state, other.state);
        assert_eq!(URL_SAFE_NO_PAD.decode(&pending.verifier).expect("base64url").len(), 32);
        let url = Url::parse(&url).expect("authorize url");
        let param = |name: &str| url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
        assert_eq!(param("code_challenge"), Some(challenge));
        assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
        assert_eq!(param("state"), Some(pending.state));
        assert_eq!(param("nonce"), Some(pending.nonce));
    }
}
