//! The Bot Framework's JWT on an activity Teams POSTs to the messaging endpoint: checked
//! against the Bot Framework's published keys before the activity counts.
//!
//! As Microsoft's own validators do: RS256 only; issuer `https://api.botframework.com`;
//! audience the bot's app id; `exp`, `nbf` and `iat` with five minutes of skew; the
//! `serviceurl` claim the activity's `serviceUrl` (trailing slashes aside, case kept:
//! microsoft-teams-apps' `TokenValidator`); a key that lists `endorsements` must name
//! `msteams` (the Bot Framework SDK's `JwtTokenExtractor`, not microsoft-teams-apps). Stricter
//! than microsoft-teams-apps: `exp` is required and an activity must have a `serviceUrl`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde::Deserialize;
use url::Url;

use crate::{
    jwks::{KeySet, KeySource, KeysError},
    store::now_ms,
};

/// Where the Bot Framework publishes its OpenID metadata (and through it, its keys).
pub const OPENID_METADATA: &str = "https://login.botframework.com/v1/.well-known/openidconfiguration";
/// The issuer of the tokens the Bot Framework sends to bots.
pub const ISSUER: &str = "https://api.botframework.com";
/// The least time between two fetches of the metadata and keys for a key not held.
pub const KEYS_REFETCH: Duration = Duration::from_hours(1);
/// Clock skew tolerated for `exp`, `nbf` and `iat`, in seconds (Microsoft's validators').
const LEEWAY_S: u64 = 300;
/// The channel a key that lists endorsements must be endorsed for.
const CHANNEL: &str = "msteams";

/// Why an activity's token was refused. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefused {
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is malformed: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    #[error("the token is signed with {0:?}; only RS256 is accepted")]
    Algorithm(Algorithm),
    #[error("the token names no signing key (kid)")]
    NoKeyId,
    #[error("Bot Framework keys: {0}")]
    Keys(#[from] KeysError),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token's signing key is not endorsed for {CHANNEL}")]
    NotEndorsed,
    #[error("the token is not issued by {ISSUER}")]
    Issuer,
    #[error("the token is not for this bot (aud)")]
    Audience,
    #[error("the token is expired or not yet valid (exp, nbf, iat)")]
    NotValidNow,
    #[error("the token's claim {0} is missing")]
    Claim(String),
    #[error("the token's serviceurl {token:?} is not the activity's serviceUrl {activity:?}")]
    ServiceUrl { token: Option<String>, activity: String },
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BotClaims {
    /// The `serviceurl` claim: where the Bot Framework takes replies to the activity.
    pub service_url: String,
}

#[derive(Deserialize)]
struct Claims {
    serviceurl: Option<String>,
    iat: Option<i64>,
}

/// The check of the tokens one bot receives.
pub struct BotTokens {
    keys: KeySet,
    app_id: String,
}

impl BotTokens {
    /// Tokens for the bot `app_id`, checked with the keys named by the OpenID metadata at
    /// `openid_metadata` (`OPENID_METADATA` but in tests), fetched at the first token.
    pub fn new(client: reqwest::Client, openid_metadata: Url, app_id: String) -> Self {
        Self::with_refetch(client, openid_metadata, app_id, KEYS_REFETCH)
    }

    /// As `new`, with a token naming a key not held fetching the metadata and keys again at
    /// most once per `refetch` (instead of `KEYS_REFETCH`).
    pub fn with_refetch(
        client: reqwest::Client,
        openid_metadata: Url,
        app_id: String,
        refetch: Duration,
    ) -> Self {
        Self { keys: KeySet::new(client, KeySource::Metadata(openid_metadata), refetch), app_id }
    }

    /// Checks `authorization` (the header's value, `Bearer …`) of an activity whose
    /// `serviceUrl` is `service_url`.
    pub async fn verify(&self, authorization: &str, service_url: &str) -> Result<BotClaims, TokenRefused> {
        let token = authorization.strip_prefix("Bearer ").ok_or(TokenRefused::NotBearer)?;
        let header = jsonwebtoken::decode_header(token).map_err(TokenRefused::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenRefused::Algorithm(header.alg));
        }
        let kid = header.kid.ok_or(TokenRefused::NoKeyId)?;
        let signing = self.keys.key(Some(&kid)).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[&self.app_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        let claims = jsonwebtoken::decode::<Claims>(token, &signing.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenRefused::Signature,
                ErrorKind::InvalidIssuer => TokenRefused::Issuer,
                ErrorKind::InvalidAudience => TokenRefused::Audience,
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => TokenRefused::NotValidNow,
                ErrorKind::MissingRequiredClaim(claim) => TokenRefused::Claim(claim.clone()),
                _ => TokenRefused::Malformed(e),
            })?
            .claims;
        if signing.endorsements.is_some_and(|channels| !channels.iter().any(|c| c == CHANNEL)) {
            return Err(TokenRefused::NotEndorsed);
        }
        let leeway = i64::try_from(LEEWAY_S).expect("five minutes fit");
        if claims.iat.is_some_and(|iat| iat > now_ms() / 1000 + leeway) {
            return Err(TokenRefused::NotValidNow);
        }
        let activity = service_url.trim_end_matches('/');
        match claims.serviceurl {
            Some(claim) if !activity.is_empty() && claim.trim_end_matches('/') == activity => {
                Ok(BotClaims { service_url: claim })
            }
            token => Err(TokenRefused::ServiceUrl { token, activity: service_url.to_owned() }),
        }
    }
}
