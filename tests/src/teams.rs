//! A Microsoft Teams for the tests, written from Microsoft's published protocols: the
//! identity platform's client-credentials token endpoint, the Bot Connector's
//! conversation activities (`POST` a new one, `PUT` a replacement), a Workflows webhook, and
//! the Bot Framework's OpenID metadata and keys that sign the tokens of the activities it
//! sends the bot (`click`); and `judge`, Microsoft's own Adaptive Cards library from npm.
//!
//! Where the limits come from (Microsoft's docs, read 2026): a bot's message is at most
//! 28 KB (learn.microsoft.com, "Format your bot messages" and the Bot Connector's 413); the
//! service token's claims (`iss` `https://api.botframework.com`, `aud` the app id,
//! `serviceurl`) from "Authentication with the Bot Connector API".

use std::{
    io::Write as _,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Form, Json, Router,
    extract::{Path as UrlPath, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::WAIT;

/// The verbs of a card's buttons.
pub use console::chat::teams::card::{APPROVE, APPROVE_FOR, DENY};

/// The bot's Microsoft app id, and its client secret.
pub const APP_ID: &str = "0b5cbd37-4c9f-4f1a-8d0e-8c2d6f6a1c11";
pub const APP_SECRET: &str = "standin-client-secret";
/// The Entra ID tenant the bot and its users belong to.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The access token the stand-in grants the bot.
const ACCESS_TOKEN: &str = "standin-bot-access-token";
/// The issuer of the tokens Teams sends a bot.
const ISSUER: &str = "https://api.botframework.com";
/// The key id the stand-in signs with.
const KID: &str = "standin-key-1";
/// A bot's message, at most.
const MESSAGE_LIMIT: usize = 28 * 1024;

/// A card the bot posted or replaced, as the stand-in holds it now.
#[derive(Clone, Debug)]
pub struct Card {
    pub conversation: String,
    pub id: String,
    pub card: Value,
    /// When it was posted.
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    cards: Vec<Card>,
    /// Cards deleted by a person: Teams refuses to replace them.
    deleted: Vec<String>,
    /// Cards posted to the Workflows webhook.
    webhook: Vec<Value>,
    /// Calls the stand-in refused, with why.
    refusals: Vec<String>,
    /// What the bot sent to create its personal conversations.
    conversations: Vec<Value>,
    /// Users the bot is not installed for: Teams refuses a conversation with them.
    not_installed: Vec<String>,
    /// Users who blocked the bot: Teams refuses its messages in their conversation.
    blocked: Vec<String>,
}

/// The stand-in, serving on 127.0.0.1 until dropped.
pub struct TeamsStandIn {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    /// The signing key, PKCS#1 DER.
    key: Vec<u8>,
    server: tokio::task::JoinHandle<()>,
}

impl TeamsStandIn {
    pub async fn start() -> Self {
        let (key, modulus) = rsa_key();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let keys = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": KID, "n": URL_SAFE_NO_PAD.encode(modulus),
                                    "e": "AQAB", "endorsements": ["msteams"]}]});
        let metadata = json!({"issuer": ISSUER, "jwks_uri": format!("http://{addr}/keys"),
                              "id_token_signing_alg_values_supported": ["RS256"],
                              "token_endpoint_auth_methods_supported": ["private_key_jwt"]});
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(grant))
            .route("/v3/conversations", post(created))
            .route("/v3/conversations/{conversation}/activities", post(posted))
            .route("/v3/conversations/{conversation}/activities/{id}", put(replaced))
            .route("/workflow", post(workflow))
            .route("/openid", get(async move || Json(metadata)))
            .route("/keys", get(async move || Json(keys)))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Self { addr, shared, key, server }
    }

    /// The Bot Connector's base URL (`service_url`).
    pub fn service_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The token endpoint (`token_url`).
    pub fn token_url(&self) -> String {
        format!("http://{}/{{tenant}}/oauth2/v2.0/token", self.addr)
    }

    /// The Bot Framework's OpenID metadata (`openid_metadata`).
    pub fn openid_metadata(&self) -> String {
        format!("http://{}/openid", self.addr)
    }

    /// A Workflows webhook's URL (`webhook_url`).
    pub fn webhook_url(&self) -> String {
        format!("http://{}/workflow", self.addr)
    }

    pub fn cards(&self) -> Vec<Card> {
        self.shared.lock().expect("lock").cards.clone()
    }

    /// What the bot sent to create each personal conversation, in order.
    pub fn conversations(&self) -> Vec<Value> {
        self.shared.lock().expect("lock").conversations.clone()
    }

    /// The personal conversation of `user` (an Entra ID object id), as the stand-in names it.
    pub fn personal(user: &str) -> String {
        format!("a:personal-{user}")
    }

    /// Uninstalls the bot for `user`: a conversation with them is refused (`403`).
    pub fn uninstall_for(&self, user: &str) {
        self.shared.lock().expect("lock").not_installed.push(user.to_owned());
    }

    /// `user` blocks the bot: its messages in their personal conversation are refused (`403`).
    pub fn blocked_by(&self, user: &str) {
        self.shared.lock().expect("lock").blocked.push(user.to_owned());
    }

    /// Deletes card `id`, as a person in Teams does: replacing it is refused from now on
    /// (`403`, as the Bot Connector answers for a deleted channel message).
    pub fn delete(&self, id: &str) {
        self.shared.lock().expect("lock").deleted.push(id.to_owned());
    }

    pub fn webhook_cards(&self) -> Vec<Value> {
        self.shared.lock().expect("lock").webhook.clone()
    }

    pub fn refusals(&self) -> Vec<String> {
        self.shared.lock().expect("lock").refusals.clone()
    }

    /// Polls `f` every 20 ms until it gives something; then panics naming `what`.
    pub fn wait_for<T>(&self, what: &str, f: impl Fn(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = f(self) {
                return found;
            }
            assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A Bot Framework token for an activity from `service_url`, with `claims` over the
    /// valid ones (`Value::Null` removes one), signed with the stand-in's key.
    pub fn token(&self, service_url: &str, claims: &Value) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let mut all = json!({"iss": ISSUER, "aud": APP_ID, "exp": now + 3_600, "nbf": now - 10,
                             "serviceurl": service_url});
        for (name, value) in claims.as_object().expect("claims") {
            if value.is_null() {
                all.as_object_mut().expect("claims").remove(name);
            } else {
                all[name] = value.clone();
            }
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(&header, &all, &jsonwebtoken::EncodingKey::from_rsa_der(&self.key))
            .expect("a token")
    }

    /// A click on the card button `verb` of hold `hold` (`ID@HOST`) by the Teams user with
    /// object id `user` of `tenant`, sent to the bot's messaging endpoint at `console` with
    /// `authorization`: the HTTP status and the invoke response.
    pub async fn click(
        &self,
        console: SocketAddr,
        authorization: &str,
        who: (&str, &str),
        verb: &str,
        hold: &str,
    ) -> (StatusCode, Value) {
        self.send(console, authorization, &self.activity(who, verb, hold)).await
    }

    /// The invoke activity of a click on the card button `verb` of hold `hold` by the Teams
    /// user with object id `user` of `tenant`.
    pub fn activity(&self, (tenant, user): (&str, &str), verb: &str, hold: &str) -> Value {
        json!({
            "type": "invoke", "name": "adaptiveCard/action", "channelId": "msteams",
            "serviceUrl": self.service_url(), "id": "f:invoke-1",
            "from": {"id": format!("29:{user}"), "aadObjectId": user, "name": "A Person"},
            "recipient": {"id": format!("28:{APP_ID}"), "name": "keyturn"},
            "conversation": {"id": "19:holds@thread.tacv2", "conversationType": "channel", "tenantId": tenant},
            "channelData": {"tenant": {"id": tenant}},
            "value": {"action": {"type": "Action.Execute", "verb": verb, "data": {"hold": hold}}, "trigger": "manual"},
        })
    }

    /// Sends `activity` to the bot's messaging endpoint at `console` with `authorization`:
    /// the HTTP status and the answer.
    pub async fn send(
        &self,
        console: SocketAddr,
        authorization: &str,
        activity: &Value,
    ) -> (StatusCode, Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{console}/api/teams/messages"))
            .header("authorization", authorization)
            .json(activity)
            .send()
            .await
            .expect("the bot's messaging endpoint");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for TeamsStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A fresh 2048-bit RSA key: its PKCS#1 DER and its modulus.
fn rsa_key() -> (Vec<u8>, Vec<u8>) {
    let openssl = |args: &[&str], input: &[u8]| {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        child.stdin.take().expect("stdin").write_all(input).expect("feed openssl");
        let out = child.wait_with_output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}");
        out.stdout
    };
    let pem = openssl(&["genrsa", "-traditional", "2048"], b"");
    let der = openssl(&["rsa", "-traditional", "-outform", "DER"], &pem);
    let modulus = String::from_utf8(openssl(&["rsa", "-noout", "-modulus"], &pem)).expect("text");
    let modulus = hex::decode(modulus.trim().trim_start_matches("Modulus=")).expect("hex modulus");
    (der, modulus)
}

type Shared_ = State<Arc<Mutex<Shared>>>;

/// Refuses with `status`, remembering why.
fn refuse(shared: &Mutex<Shared>, status: StatusCode, why: &str) -> Response {
    shared.lock().expect("lock").refusals.push(why.to_owned());
    (status, Json(json!({"error": {"code": "BadRequest", "message": why}}))).into_response()
}

async fn grant(
    State(shared): Shared_,
    UrlPath(tenant): UrlPath<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let get = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let wanted = [
        ("grant_type", "client_credentials"),
        ("client_id", APP_ID),
        ("client_secret", APP_SECRET),
        ("scope", "https://api.botframework.com/.default"),
    ];
    if tenant != TENANT || wanted.iter().any(|(name, value)| get(name) != Some(value)) {
        return refuse(&shared, StatusCode::UNAUTHORIZED, &format!("token: tenant {tenant}, form {form:?}"));
    }
    Json(json!({"token_type": "Bearer", "expires_in": 3_600, "access_token": ACCESS_TOKEN})).into_response()
}

/// The card an activity carries, once the call is the bot's and within Teams' limits.
fn card_of(headers: &HeaderMap, activity: &Value) -> Result<Value, (StatusCode, String)> {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("Bearer {ACCESS_TOKEN}")) {
        return Err((StatusCode::UNAUTHORIZED, format!("activity without the bot's token: {bearer:?}")));
    }
    let size = activity.to_string().len();
    if size > MESSAGE_LIMIT {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("activity of {size} bytes")));
    }
    let attachment = &activity["attachments"][0];
    if activity["type"] != "message"
        || attachment["contentType"] != "application/vnd.microsoft.card.adaptive"
        || attachment["content"]["type"] != "AdaptiveCard"
    {
        return Err((StatusCode::BAD_REQUEST, format!("not an Adaptive Card message: {activity}")));
    }
    Ok(attachment["content"].clone())
}

/// The Bot Connector's Create Conversation, for a personal (1:1) conversation with one user
/// of the tenant: the same conversation each time for that user.
async fn created(State(shared): Shared_, headers: HeaderMap, Json(parameters): Json<Value>) -> Response {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("Bearer {ACCESS_TOKEN}")) {
        return refuse(
            &shared,
            StatusCode::UNAUTHORIZED,
            &format!("conversation without the bot's token: {bearer:?}"),
        );
    }
    let members = parameters["members"].as_array().map_or(&[][..], Vec::as_slice);
    let (Some(user), 1) = (members.first().and_then(|m| m["id"].as_str()), members.len()) else {
        return refuse(&shared, StatusCode::BAD_REQUEST, &format!("not one member: {parameters}"));
    };
    if parameters["tenantId"] != TENANT || parameters["isGroup"] == true {
        return refuse(
            &shared,
            StatusCode::BAD_REQUEST,
            &format!("not a personal conversation of the tenant: {parameters}"),
        );
    }
    let mut locked = shared.lock().expect("lock");
    locked.conversations.push(parameters.clone());
    if locked.not_installed.iter().any(|u| u == user) {
        // Not a refusal of keyturn's: what Teams answers where the bot is not installed.
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": {"code": "Forbidden", "message": "not installed"}})),
        )
            .into_response();
    }
    Json(json!({"id": TeamsStandIn::personal(user)})).into_response()
}

async fn posted(
    State(shared): Shared_,
    UrlPath(conversation): UrlPath<String>,
    headers: HeaderMap,
    Json(activity): Json<Value>,
) -> Response {
    let card = match card_of(&headers, &activity) {
        Ok(card) => card,
        Err((status, why)) => return refuse(&shared, status, &why),
    };
    let mut shared = shared.lock().expect("lock");
    if shared.blocked.iter().any(|user| conversation == TeamsStandIn::personal(user)) {
        // Not a refusal of keyturn's: what Teams answers in a conversation whose user blocked
        // the bot.
        let error = json!({"error": {"code": "ConversationBlockedByUser", "message": "User blocked the conversation with the bot."}});
        return (StatusCode::FORBIDDEN, Json(error)).into_response();
    }
    let id = format!("1:{}", shared.cards.len() + 1);
    shared.cards.push(Card { conversation, id: id.clone(), card, at: Instant::now() });
    Json(json!({"id": id})).into_response()
}

async fn replaced(
    State(shared): Shared_,
    UrlPath((conversation, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Json(activity): Json<Value>,
) -> Response {
    let card = match card_of(&headers, &activity) {
        Ok(card) => card,
        Err((status, why)) => return refuse(&shared, status, &why),
    };
    let mut locked = shared.lock().expect("lock");
    if locked.deleted.contains(&id) {
        // Not a refusal of keyturn's: what Teams answers for a card a person deleted.
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": {"code": "ServiceError", "message": "Unknown"}})),
        )
            .into_response();
    }
    let Some(old) = locked.cards.iter_mut().find(|c| c.conversation == conversation && c.id == id) else {
        drop(locked);
        return refuse(&shared, StatusCode::NOT_FOUND, &format!("no activity {id} in {conversation}"));
    };
    old.card = card;
    Json(json!({"id": id})).into_response()
}

async fn workflow(State(shared): Shared_, Json(activity): Json<Value>) -> Response {
    let card = activity["attachments"][0]["content"].clone();
    if card["type"] != "AdaptiveCard" {
        return refuse(&shared, StatusCode::BAD_REQUEST, &format!("not a card: {activity}"));
    }
    shared.lock().expect("lock").webhook.push(card);
    StatusCode::ACCEPTED.into_response()
}

/// Microsoft's Teams SDK's verdict (`tests/python/teams_judge.py conversations`) on the
/// bodies the bot sent to create its personal conversations: its findings, none when each
/// sends what the SDK itself sends.
pub fn judge_conversations(bodies: &[Value]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `cargo xtask setup`", python.display());
    let mut judge = Command::new(python);
    judge.arg(dir.join("teams_judge.py")).arg("conversations");
    let verdict = crate::judged(judge, &json!({"conversations": bodies}));
    serde_json::from_value(verdict["findings"].clone()).expect("findings")
}

/// Microsoft's Adaptive Cards library's verdict on `cards`: its findings, none when each
/// card parses as sent.
pub fn judge(cards: &[Value]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    let script = dir.join("adaptive_card_judge.mjs");
    assert!(
        dir.join("node_modules/adaptivecards").exists(),
        "tests/js/node_modules is missing: run `cargo xtask setup`"
    );
    let mut node = Command::new("node");
    node.arg(script);
    let verdict = crate::judged(node, &Value::Array(cards.to_vec()));
    serde_json::from_value(verdict["findings"].clone()).expect("findings")
}
