//! Teams' messaging endpoint token check against Microsoft's own: tokens minted here with
//! keys made here, judged by keyturn and by microsoft-teams-apps (`tests/python/teams_judge.py`).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, extract::State, routing::get};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use console::chat::teams::token::{BotTokens, ISSUER, TokenRefused};
use console::jwks::KeysError;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ocsf::validator::{python, python_dir};
use serde::{Deserialize, Serialize};
use url::Url;

const APP_ID: &str = "7d2a6c1e-94b0-4f3e-8c55-0b1d2e3f4a5b";
const SERVICE_URL: &str = "https://smba.trafficmanager.net/teams/";
const METADATA_PATH: &str = "/v1/.well-known/openidconfiguration";
/// Where microsoft-teams-apps looks for the keys: the metadata URL's `openidconfiguration`
/// replaced by `keys` (it never reads `jwks_uri`), so the metadata names the same place.
const KEYS_PATH: &str = "/v1/.well-known/keys";

/// Made by Python's `cryptography` (in the judge's venv): RSA key pairs, the private key as
/// PKCS#1 DER (base64), the public key as PEM (for the HMAC confusion) and its JWK modulus.
const MAKE_KEYS: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import rsa
def key():
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = k.public_key().public_numbers().n
    der = k.private_bytes(s.Encoding.DER, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption())
    pem = k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    return {
        "private_der": base64.b64encode(der).decode(),
        "public_pem": pem.decode(),
        "n": base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode(),
    }
print(json.dumps([key() for _ in range(int(sys.argv[1]))]))
"#;

#[derive(Deserialize)]
struct TestKey {
    private_der: String,
    public_pem: String,
    n: String,
}

/// A JWK as the Bot Framework publishes one.
#[derive(Clone, Serialize)]
struct PublishedJwk {
    kty: &'static str,
    #[serde(rename = "use")]
    usage: &'static str,
    kid: String,
    n: String,
    e: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    endorsements: Option<Vec<&'static str>>,
}

impl PublishedJwk {
    fn of(key: &TestKey, kid: &str, endorsements: Option<Vec<&'static str>>) -> Self {
        Self { kty: "RSA", usage: "sig", kid: kid.into(), n: key.n.clone(), e: "AQAB", endorsements }
    }
}

#[derive(Serialize)]
struct Jwks {
    keys: Vec<PublishedJwk>,
}

#[derive(Serialize)]
struct Metadata {
    issuer: &'static str,
    jwks_uri: String,
    id_token_signing_alg_values_supported: [&'static str; 1],
}

/// The Bot Framework's OpenID metadata and keys, served on loopback, and how often each was
/// fetched.
struct Publisher {
    keys: Mutex<Vec<PublishedJwk>>,
    jwks_uri: Mutex<String>,
    metadata_fetches: AtomicUsize,
    keys_fetches: AtomicUsize,
    /// The keys are answered only after a long while (a publisher that hangs).
    hanging: AtomicBool,
}

impl Publisher {
    /// Serves `keys`; returns the publisher and its metadata URL.
    async fn serve(keys: Vec<PublishedJwk>) -> (Arc<Self>, Url) {
        let publisher = Arc::new(Self {
            keys: Mutex::new(keys),
            jwks_uri: Mutex::new(String::new()),
            metadata_fetches: AtomicUsize::new(0),
            keys_fetches: AtomicUsize::new(0),
            hanging: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        *publisher.jwks_uri.lock().unwrap() = format!("{base}{KEYS_PATH}");
        let app = Router::new()
            .route(METADATA_PATH, get(metadata))
            .route(KEYS_PATH, get(jwks))
            .with_state(publisher.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        (publisher, Url::parse(&format!("{base}{METADATA_PATH}")).expect("url"))
    }

    fn publish(&self, key: PublishedJwk) {
        self.keys.lock().unwrap().push(key);
    }

    /// (metadata, keys) fetches so far.
    fn fetches(&self) -> (usize, usize) {
        (self.metadata_fetches.load(Ordering::SeqCst), self.keys_fetches.load(Ordering::SeqCst))
    }
}

async fn metadata(State(publisher): State<Arc<Publisher>>) -> Json<Metadata> {
    publisher.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    Json(Metadata {
        issuer: ISSUER,
        jwks_uri: publisher.jwks_uri.lock().unwrap().clone(),
        id_token_signing_alg_values_supported: ["RS256"],
    })
}

async fn jwks(State(publisher): State<Arc<Publisher>>) -> Json<Jwks> {
    publisher.keys_fetches.fetch_add(1, Ordering::SeqCst);
    if publisher.hanging.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    Json(Jwks { keys: publisher.keys.lock().unwrap().clone() })
}

/// A token's claims; `None` leaves a claim out.
#[derive(Clone, Serialize)]
struct Claims {
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serviceurl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()).expect("fits")
}

/// The claims of a token the Bot Framework would send this bot now.
fn claims() -> Claims {
    let now = now();
    Claims {
        iss: Some(ISSUER.into()),
        aud: Some(APP_ID.into()),
        serviceurl: Some(SERVICE_URL.into()),
        exp: Some(now + 3600),
        nbf: Some(now - 10),
        iat: Some(now - 10),
    }
}

/// `Bearer` and a token of `claims` signed with `key` (RS256) naming `kid`.
fn rs256(key: &TestKey, kid: Option<&str>, claims: &Claims) -> String {
    let header = Header { kid: kid.map(String::from), ..Header::new(Algorithm::RS256) };
    let key = EncodingKey::from_rsa_der(&STANDARD.decode(&key.private_der).expect("base64"));
    format!("Bearer {}", jsonwebtoken::encode(&header, claims, &key).expect("sign"))
}

/// `Bearer` and a token of `claims` signed with HMAC-SHA256 under `secret`, naming key `k1`.
fn hs256(secret: &[u8], claims: &Claims) -> String {
    let header = Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) };
    format!(
        "Bearer {}",
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign")
    )
}

/// `Bearer` and an unsigned token (`alg: none`) naming key `k1`.
fn unsigned(claims: &Claims) -> String {
    let part = |json: Vec<u8>| URL_SAFE_NO_PAD.encode(json);
    let header = br#"{"alg":"none","typ":"JWT","kid":"k1"}"#.to_vec();
    format!("Bearer {}.{}.", part(header), part(serde_json::to_vec(claims).expect("claims")))
}

fn make_keys(count: usize) -> Vec<TestKey> {
    serde_json::from_slice(&python(&["-c", MAKE_KEYS, &count.to_string()], b"")).expect("keys")
}

#[derive(Serialize)]
struct JudgeRequest<'a> {
    app_id: &'a str,
    openid_metadata: &'a str,
    cases: Vec<JudgeCase<'a>>,
}

#[derive(Clone, Serialize)]
struct JudgeCase<'a> {
    authorization: &'a str,
    service_url: Option<&'a str>,
}

#[derive(Deserialize)]
struct JudgeVerdicts {
    valid: Vec<bool>,
    reasons: Vec<String>,
}

/// microsoft-teams-apps' verdicts (and its reasons) on `cases`, keys from `metadata`.
async fn microsoft(metadata: &Url, cases: &[JudgeCase<'_>]) -> JudgeVerdicts {
    let request = JudgeRequest { app_id: APP_ID, openid_metadata: metadata.as_str(), cases: cases.to_vec() };
    let input = serde_json::to_vec(&request).expect("the judge's input");
    let judge = python_dir().join("teams_judge.py");
    let out = tokio::task::spawn_blocking(move || python(&[judge.to_str().expect("path")], &input))
        .await
        .expect("the judge");
    let verdicts: JudgeVerdicts = serde_json::from_slice(&out).expect("the judge's verdicts");
    assert_eq!(verdicts.valid.len(), cases.len(), "a verdict a case");
    verdicts
}

/// Why microsoft-teams-apps accepts a token on an activity without `serviceUrl`.
const NO_SERVICE_URL: &str =
    "TokenValidator.validate_token checks serviceurl only when the activity has a serviceUrl";

/// What keyturn must say of a case.
enum Expect {
    Accepted,
    Refused(fn(&TokenRefused) -> bool),
}

struct Case {
    name: &'static str,
    authorization: String,
    /// The activity's `serviceUrl` (`None`: the activity has none).
    service_url: Option<&'static str>,
    keyturn: Expect,
    /// Where Microsoft's validator decides otherwise than keyturn: why.
    microsoft_differs: Option<&'static str>,
}

impl Case {
    /// `authorization` on an activity of `SERVICE_URL`, accepted by both.
    fn accepted(name: &'static str, authorization: String) -> Self {
        Self {
            name,
            authorization,
            service_url: Some(SERVICE_URL),
            keyturn: Expect::Accepted,
            microsoft_differs: None,
        }
    }

    /// `authorization` on an activity of `SERVICE_URL`, refused by both, by keyturn as `why` says.
    fn refused(name: &'static str, authorization: String, why: fn(&TokenRefused) -> bool) -> Self {
        Self { keyturn: Expect::Refused(why), ..Self::accepted(name, authorization) }
    }

    fn activity(self, service_url: Option<&'static str>) -> Self {
        Self { service_url, ..self }
    }

    fn microsoft_differs(self, why: &'static str) -> Self {
        Self { microsoft_differs: Some(why), ..self }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(clippy::too_many_lines, reason = "the matrix of cases, each a few lines")]
async fn bot_framework_tokens_are_judged_as_microsofts_validator_judges_them() {
    let keys = make_keys(5);
    let [k1, k2, webchat_only, unpublished, rotated] = &keys[..] else { unreachable!("five keys") };
    let (publisher, metadata) = Publisher::serve(vec![
        PublishedJwk::of(k1, "k1", Some(vec!["msteams", "webchat"])),
        PublishedJwk::of(k2, "k2", None),
        PublishedJwk::of(webchat_only, "webchat-only", Some(vec!["webchat"])),
    ])
    .await;
    let now = now();
    let valid = claims();
    let with = |change: fn(&mut Claims, i64)| {
        let mut claims = claims();
        change(&mut claims, now);
        claims
    };
    let signed = |claims: &Claims| rs256(k1, Some("k1"), claims);
    let changed = |change: fn(&mut Claims, i64)| signed(&with(change));
    let cases = [
        Case::accepted("valid", signed(&valid)),
        Case::accepted("valid, by a key published without endorsements", rs256(k2, Some("k2"), &valid)),
        Case::accepted("serviceUrl without the claim's trailing slash", signed(&valid))
            .activity(Some("https://smba.trafficmanager.net/teams")),
        Case::refused("serviceUrl in other case", signed(&valid), |e| {
            matches!(e, TokenRefused::ServiceUrl { .. })
        })
        .activity(Some("https://SMBA.trafficmanager.net/teams/")),
        Case::refused("serviceurl of another service", signed(&valid), |e| {
            matches!(e, TokenRefused::ServiceUrl { .. })
        })
        .activity(Some("https://smba.attacker.example/teams/")),
        Case::refused("no serviceurl claim", changed(|c, _| c.serviceurl = None), |e| {
            matches!(e, TokenRefused::ServiceUrl { token: None, .. })
        }),
        Case::refused("activity without serviceUrl", signed(&valid), |e| {
            matches!(e, TokenRefused::ServiceUrl { .. })
        })
        .activity(None)
        .microsoft_differs(NO_SERVICE_URL),
        Case::refused(
            "activity without serviceUrl, the token's serviceurl `/`",
            changed(|c, _| c.serviceurl = Some("/".into())),
            |e| matches!(e, TokenRefused::ServiceUrl { .. }),
        )
        .activity(None)
        .microsoft_differs(NO_SERVICE_URL),
        Case::refused("another bot's aud", changed(|c, _| c.aud = Some("another-bot".into())), |e| {
            matches!(e, TokenRefused::Audience)
        }),
        Case::refused(
            "aud api://botid-APP_ID",
            changed(|c, _| c.aud = Some(format!("api://botid-{APP_ID}"))),
            |e| matches!(e, TokenRefused::Audience),
        )
        .microsoft_differs(
            "TokenValidator.for_service also accepts api://APP_ID and api://botid-APP_ID (Entra ID \
             forms of the app id); the Bot Framework's connector tokens name the app id",
        ),
        Case::refused(
            "another issuer",
            changed(|c, _| c.iss = Some("https://sts.windows.net/x/".into())),
            |e| matches!(e, TokenRefused::Issuer),
        ),
        Case::refused(
            "expired 6 minutes ago (past the leeway)",
            changed(|c, now| c.exp = Some(now - 360)),
            |e| matches!(e, TokenRefused::NotValidNow),
        ),
        Case::accepted(
            "expired 4 minutes ago (within the leeway)",
            changed(|c, now| c.exp = Some(now - 240)),
        ),
        Case::refused(
            "no exp",
            changed(|c, _| c.exp = None),
            |e| matches!(e, TokenRefused::Claim(c) if c == "exp"),
        )
        .microsoft_differs("PyJWT checks exp only where a token has one (no `require`)"),
        Case::refused(
            "nbf in 6 minutes (past the leeway)",
            changed(|c, now| (c.nbf, c.iat) = (Some(now + 360), Some(now))),
            |e| matches!(e, TokenRefused::NotValidNow),
        ),
        Case::accepted(
            "nbf in 4 minutes (within the leeway)",
            changed(|c, now| (c.nbf, c.iat) = (Some(now + 240), Some(now))),
        ),
        Case::refused(
            "iat in 6 minutes (past the leeway)",
            changed(|c, now| (c.nbf, c.iat) = (None, Some(now + 360))),
            |e| matches!(e, TokenRefused::NotValidNow),
        ),
        Case::refused("a kid not published", rs256(rotated, Some("rotated"), &valid), |e| {
            matches!(e, TokenRefused::Keys(KeysError::UnknownKey(_)))
        }),
        Case::refused("no kid", rs256(k1, None, &valid), |e| matches!(e, TokenRefused::NoKeyId)),
        Case::refused("signed by another key, naming k1", rs256(unpublished, Some("k1"), &valid), |e| {
            matches!(e, TokenRefused::Signature)
        }),
        Case::refused(
            "signed by a key endorsed for webchat only",
            rs256(webchat_only, Some("webchat-only"), &valid),
            |e| matches!(e, TokenRefused::NotEndorsed),
        )
        .microsoft_differs(
            "microsoft-teams-apps reads no endorsements (the Bot Framework SDK's JwtTokenExtractor \
             refuses a key whose endorsements lack the activity's channel)",
        ),
        Case::refused("alg none", unsigned(&valid), |e| matches!(e, TokenRefused::Malformed(_))),
        Case::refused(
            "HS256 keyed with k1's public key (the confusion)",
            hs256(k1.public_pem.as_bytes(), &valid),
            |e| matches!(e, TokenRefused::Algorithm(Algorithm::HS256)),
        ),
        Case::refused("HS256 keyed with some secret", hs256(b"a secret anyone may choose", &valid), |e| {
            matches!(e, TokenRefused::Algorithm(Algorithm::HS256))
        }),
        Case::refused("no Bearer", signed(&valid).replacen("Bearer ", "", 1), |e| {
            matches!(e, TokenRefused::NotBearer)
        }),
        Case::refused("garbage", "Bearer not-a.jwt.at all".into(), |e| {
            matches!(e, TokenRefused::Malformed(_))
        }),
    ];

    // keyturn first, with the interval production uses: one fetch at the first token, and
    // none for the kid not published (fetched less than an hour ago).
    let tokens = BotTokens::new(reqwest::Client::new(), metadata.clone(), APP_ID.into());
    let mut failures = Vec::new();
    for case in &cases {
        let verdict = tokens.verify(&case.authorization, case.service_url.unwrap_or_default()).await;
        let right = match (&case.keyturn, &verdict) {
            (Expect::Accepted, Ok(claims)) => claims.service_url == SERVICE_URL,
            (Expect::Refused(expected), Err(refused)) => expected(refused),
            _ => false,
        };
        if !right {
            failures.push(format!("keyturn, {}: {verdict:?}", case.name));
        }
    }
    assert_eq!(publisher.fetches(), (1, 1), "keyturn fetched the keys once");

    let judged: Vec<_> = cases
        .iter()
        .map(|c| JudgeCase { authorization: &c.authorization, service_url: c.service_url })
        .collect();
    let verdicts = microsoft(&metadata, &judged).await;
    for ((case, valid), reason) in cases.iter().zip(verdicts.valid).zip(verdicts.reasons) {
        let keyturn_accepts = matches!(case.keyturn, Expect::Accepted);
        if valid != (keyturn_accepts != case.microsoft_differs.is_some()) {
            let differs = case.microsoft_differs.unwrap_or("none expected");
            failures.push(format!(
                "Microsoft, {}: valid = {valid} ({reason}); keyturn accepts: {keyturn_accepts}; \
                 documented difference: {differs}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "verdicts not as expected:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_published_later_is_fetched_once_per_interval() {
    const REFETCH: Duration = Duration::from_secs(3);
    let keys = make_keys(2);
    let [k1, rotated] = &keys[..] else { unreachable!("two keys") };
    let (publisher, metadata) = Publisher::serve(vec![PublishedJwk::of(k1, "k1", None)]).await;
    let tokens = BotTokens::with_refetch(reqwest::Client::new(), metadata.clone(), APP_ID.into(), REFETCH);
    let old = rs256(k1, Some("k1"), &claims());
    let new = rs256(rotated, Some("rotated"), &claims());
    let unknown = |verdict: &Result<_, TokenRefused>| {
        let kid = match verdict {
            Err(TokenRefused::Keys(KeysError::UnknownKey(kid))) => kid.as_deref(),
            _ => None,
        };
        kid == Some("rotated")
    };

    tokens.verify(&old, SERVICE_URL).await.expect("k1 accepted");
    assert_eq!(publisher.fetches(), (1, 1));
    let verdict = tokens.verify(&new, SERVICE_URL).await;
    assert!(unknown(&verdict), "{verdict:?}");
    assert_eq!(publisher.fetches(), (1, 1), "no refetch within the interval");

    tokio::time::sleep(REFETCH).await;
    let verdict = tokens.verify(&new, SERVICE_URL).await;
    assert!(unknown(&verdict), "{verdict:?}");
    assert_eq!(publisher.fetches(), (2, 2), "one refetch of metadata and keys");

    publisher.publish(PublishedJwk::of(rotated, "rotated", Some(vec!["msteams"])));
    let verdict = tokens.verify(&new, SERVICE_URL).await;
    assert!(unknown(&verdict), "{verdict:?}");
    assert_eq!(publisher.fetches(), (2, 2), "still no refetch within the interval");

    tokio::time::sleep(REFETCH).await;
    tokens.verify(&new, SERVICE_URL).await.expect("the key published since accepted");
    tokens.verify(&old, SERVICE_URL).await.expect("k1 still accepted");
    assert_eq!(publisher.fetches(), (3, 3), "one refetch, then the keys held");

    let verdicts =
        microsoft(&metadata, &[JudgeCase { authorization: &new, service_url: Some(SERVICE_URL) }]).await;
    assert_eq!(verdicts.valid, [true], "Microsoft's validator: {:?}", verdicts.reasons);
}

/// A token whose key is held is checked at once while another token's fetch waits on a
/// publisher that hangs: unknown key ids cannot stall every click.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_key_never_waits_behind_a_hanging_fetch() {
    const REFETCH: Duration = Duration::from_millis(200);
    let keys = make_keys(2);
    let [k1, other] = &keys[..] else { unreachable!("two keys") };
    let (publisher, metadata) = Publisher::serve(vec![PublishedJwk::of(k1, "k1", None)]).await;
    let tokens = Arc::new(BotTokens::with_refetch(reqwest::Client::new(), metadata, APP_ID.into(), REFETCH));
    let held = rs256(k1, Some("k1"), &claims());
    tokens.verify(&held, SERVICE_URL).await.expect("k1 accepted");
    publisher.hanging.store(true, Ordering::SeqCst);
    tokio::time::sleep(REFETCH).await;
    let unknown = rs256(other, Some("unknown"), &claims());
    let stalled = tokio::spawn({
        let tokens = tokens.clone();
        async move { tokens.verify(&unknown, SERVICE_URL).await.map(drop) }
    });
    while publisher.fetches().1 < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let checked = tokio::time::timeout(Duration::from_secs(2), tokens.verify(&held, SERVICE_URL)).await;
    assert!(matches!(checked, Ok(Ok(_))), "a held key waited behind the fetch: {checked:?}");
    assert!(!stalled.is_finished(), "the unknown key's fetch is still waiting on the publisher");
    stalled.abort();
}
