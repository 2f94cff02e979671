//! The HTTP API over real HTTP on loopback, against a console fed by a simulated host
//! stream: every refusal's status and code, filters and order, quorum, one-time sign-in
//! links, and the `OpenAPI` map.

use std::collections::BTreeSet;

use crate::support::{Db, Running, connect, connected, hold, key, loopback, stored};
use console::{
    Api, RoleMap,
    oidc::PendingLogin,
    people::{Credential, KeptLogin, LOGIN_LIFETIME, Principal, Role, SignIn, TOKEN_LIFETIME},
};
use host_client::{ClientEvent, ClientHandle};
use proto::v1::HoldRaised;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub const HOST: &str = "web-01";

/// A console with its API on loopback and one connected host; the API stops on drop.
pub struct Fixture {
    pub running: Running,
    host: ClientHandle,
    _events: mpsc::Receiver<ClientEvent>,
    pub base: String,
    pub client: reqwest::Client,
    api: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.api.abort();
    }
}

/// Who a request comes as.
pub enum As<'a> {
    Nobody,
    Token(&'a str),
    /// A session cookie, with or without the `X-Requested-With: keyturn` header.
    Session(&'a str, bool),
}

impl Fixture {
    pub async fn start(db: &Db) -> Self {
        let console_key = key(1);
        let running = Running::start(&db.url(), &console_key, loopback());
        let (host, mut events) = connect(&running.endpoint(), HOST, &key(2), &console_key);
        connected(&mut events).await;
        let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let api = Api::new(running.console.clone(), None, RoleMap::default(), false);
        let api = tokio::spawn(async move { api.serve(listener).await.unwrap() });
        Self { running, host, _events: events, base, client: reqwest::Client::new(), api }
    }

    /// Raises `raised` on the host stream and waits until the console has it.
    pub async fn raise(&self, raised: HoldRaised) -> String {
        let id = raised.id.clone();
        self.host.raise(raised);
        stored(self.running.console.store(), HOST, &id).await;
        format!("{id}@{HOST}")
    }

    pub async fn token(&self, person: &str, role: Role) -> String {
        self.running
            .console
            .store()
            .create_api_token(person, role, "test", "api test", TOKEN_LIFETIME)
            .await
            .unwrap()
            .1
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        who: &As<'_>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        request = match who {
            As::Nobody => request,
            As::Token(token) => request.bearer_auth(token),
            As::Session(cookie, csrf) => {
                let request = request.header("cookie", format!("keyturn_session={cookie}"));
                if *csrf { request.header("x-requested-with", "keyturn") } else { request }
            }
        };
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, who: &As<'_>) -> (StatusCode, Value) {
        self.call(Method::GET, path, who, None).await
    }

    pub async fn post(&self, path: &str, who: &As<'_>, body: &str) -> (StatusCode, Value) {
        self.call(Method::POST, path, who, Some(body)).await
    }

    /// Posts a sign-in link's `secret` to `/auth/link` as the web UI does (with its header
    /// when `csrf`): the status, the answer, and the session cookie set, if any.
    async fn sign_in_with_link(&self, secret: &str, csrf: bool) -> (StatusCode, Value, Option<String>) {
        let mut request =
            self.client.post(format!("{}/auth/link", self.base)).json(&json!({"secret": secret}));
        if csrf {
            request = request.header("x-requested-with", "keyturn");
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let cookie = response.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
        if let Some(cookie) = &cookie {
            assert!(cookie.contains("; HttpOnly; SameSite=Lax"), "{cookie}");
        }
        let session = cookie.and_then(|c| {
            c.strip_prefix("keyturn_session=").and_then(|rest| rest.split(';').next()).map(str::to_owned)
        });
        (status, response.json().await.unwrap_or(Value::Null), session)
    }

    /// The console's audit events of `kind`.
    pub async fn audited(&self, kind: &str) -> Vec<Value> {
        let events = self.running.console.store().audit_events().await.unwrap();
        events.into_iter().filter(|e| e["type"] == kind).collect()
    }
}

/// Asserts an error response: its status and its stable code.
#[track_caller]
pub fn refused((status, body): &(StatusCode, Value), expected: StatusCode, code: &str) {
    assert_eq!((*status, body["error"]["code"].as_str()), (expected, Some(code)), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

crate::both_databases!(
    every_refusal_has_its_status_and_code,
    tokens_expire,
    a_sign_in_link_opens_one_admin_session_once,
    a_sign_in_link_expires_after_ten_minutes,
    concurrent_redemptions_of_a_sign_in_link_open_one_session,
    holds_list_newest_first_and_filter,
    a_quorum_of_two_is_awaited_then_decided,
);

async fn every_refusal_has_its_status_and_code(db: Db) {
    let api = Fixture::start(&db).await;
    let (bob, viewer) = (api.token("bob", Role::Approver).await, api.token("vera", Role::Viewer).await);
    let id = api.raise(hold("h1", 1)).await;
    let approve = format!("/api/holds/{id}/approve");

    refused(&api.get("/api/holds", &As::Nobody).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    refused(&api.get("/api/me", &As::Token("kt_forged")).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (revoked_id, revoked) = api
        .running
        .console
        .store()
        .create_api_token("bob", Role::Approver, "old", "t", TOKEN_LIFETIME)
        .await
        .unwrap();
    assert_eq!(
        api.call(Method::DELETE, &format!("/api/tokens/{revoked_id}"), &As::Token(&bob), None).await.0,
        StatusCode::NO_CONTENT
    );
    refused(&api.get("/api/me", &As::Token(&revoked)).await, StatusCode::UNAUTHORIZED, "unauthenticated");

    refused(&api.post(&approve, &As::Token(&viewer), "{}").await, StatusCode::FORBIDDEN, "forbidden");
    let refusal = &api.audited("decision_refused").await[0];
    assert_eq!((refusal["by"].as_str(), refusal["code"].as_str()), (Some("vera"), Some("forbidden")));
    refused(
        &api.post("/api/holds/nope@web-01/approve", &As::Token(&bob), "").await,
        StatusCode::NOT_FOUND,
        "unknown_hold",
    );
    refused(&api.get("/api/holds/no-host", &As::Token(&bob)).await, StatusCode::NOT_FOUND, "unknown_hold");
    refused(
        &api.post(&approve, &As::Token(&bob), "{\"scope\": ").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    refused(
        &api.post(&approve, &As::Token(&bob), r#"{"scope": "once", "why": 1}"#).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    refused(
        &api.post(&approve, &As::Token(&bob), r#"{"scope": "for"}"#).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let huge = json!({"reason": "x".repeat(console::api::MAX_BODY)}).to_string();
    refused(
        &api.post(&approve, &As::Token(&bob), &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    refused(&api.get("/api/nothing-here", &As::Token(&bob)).await, StatusCode::NOT_FOUND, "not_found");

    // The agent's requester may not approve it; the refusal is audited.
    let mut own = hold("h2", 2);
    own.requester = "carol".into();
    let own = api.raise(own).await;
    let carol = api.token("carol", Role::Approver).await;
    refused(
        &api.post(&format!("/api/holds/{own}/approve"), &As::Token(&carol), "").await,
        StatusCode::FORBIDDEN,
        "self_approval",
    );
    let refusals = api.audited("decision_refused").await;
    assert!(refusals.iter().any(|e| e["by"] == "carol" && e["code"] == "self_approval"), "{refusals:?}");

    // A browser session must name itself on every change.
    let session = Principal {
        person: "dora".into(),
        display_name: "Dora".into(),
        role: Role::Approver,
        via: "session".into(),
        credential: Credential::Oidc { issuer: "https://idp.example".into(), subject: "dora-1".into() },
    };
    let cookie = api.running.console.store().create_session(&session, SignIn::Oidc).await.unwrap();
    assert_eq!(api.get("/api/me", &As::Session(&cookie, false)).await.1["person"], "dora");
    refused(&api.post(&approve, &As::Session(&cookie, false), "").await, StatusCode::FORBIDDEN, "csrf");
    refused(&api.post("/auth/logout", &As::Session(&cookie, false), "").await, StatusCode::FORBIDDEN, "csrf");
    let (status, body) = api.post(&approve, &As::Session(&cookie, true), r#"{"reason": "fine"}"#).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "approved"})));
    let decided = &api.audited("decided").await[0];
    assert_eq!((decided["by"].as_str(), decided["reason"].as_str()), (Some("dora"), Some("fine")));

    refused(&api.post(&approve, &As::Token(&bob), "").await, StatusCode::CONFLICT, "already_decided");
    refused(
        &api.post(&format!("/api/holds/{id}/deny"), &As::Token(&bob), "").await,
        StatusCode::CONFLICT,
        "already_decided",
    );
    assert_eq!(api.post("/auth/logout", &As::Session(&cookie, true), "").await.0, StatusCode::NO_CONTENT);
    refused(
        &api.get("/api/me", &As::Session(&cookie, false)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
}

async fn holds_list_newest_first_and_filter(db: Db) {
    let api = Fixture::start(&db).await;
    let token = api.token("bob", Role::Approver).await;
    let bob = As::Token(&token);
    let mut ids = Vec::new();
    for (n, agent) in [(0, "claude"), (1, "codex"), (2, "claude")] {
        let mut raised = hold(&format!("h{n}"), n);
        raised.agent = agent.into();
        raised.requested_at_ms -= 10_000 - 1000 * n;
        ids.push(api.raise(raised).await);
    }
    let listed = |body: &Value| -> Vec<String> {
        body["holds"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, all) = api.get("/api/holds?status=pending", &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&all), [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()], "newest first");
    assert!(all["now_ms"].as_i64().unwrap() >= all["holds"][0]["requested_at_ms"].as_i64().unwrap());
    assert_eq!(all["holds"][0]["exec"]["argv"], json!(["curl", "-T", "dump.sql"]));
    assert_eq!(listed(&api.get("/api/holds?agent=claude", &bob).await.1), [ids[2].as_str(), ids[0].as_str()]);
    assert!(listed(&api.get("/api/holds?host=web-02", &bob).await.1).is_empty());
    assert_eq!(listed(&api.get(&format!("/api/holds?host={HOST}&limit=1"), &bob).await.1), [ids[2].as_str()]);
    refused(&api.get("/api/holds?status=maybe", &bob).await, StatusCode::BAD_REQUEST, "bad_request");
    refused(&api.get("/api/holds?colour=red", &bob).await, StatusCode::BAD_REQUEST, "bad_request");

    let (status, _) =
        api.post(&format!("/api/holds/{}/deny", ids[1]), &bob, r#"{"reason": "tangerine policy"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&api.get("/api/holds?status=denied", &bob).await.1), [ids[1].as_str()]);
    assert_eq!(
        listed(&api.get("/api/holds?status=pending", &bob).await.1),
        [ids[2].as_str(), ids[0].as_str()]
    );
    let (_, one) = api.get(&format!("/api/holds/{}", ids[1]), &bob).await;
    assert_eq!(
        (one["hold"]["status"].as_str(), one["hold"]["decision"]["by"].as_str()),
        (Some("denied"), Some("bob"))
    );

    let (_, found) = api.get("/api/audit?q=tangerine+policy", &bob).await;
    let records = found["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{found}");
    assert_eq!(
        (records[0]["event"]["type"].as_str(), records[0]["event"]["hold"].as_str()),
        (Some("decided"), Some("h1"))
    );
    // Every word counts, the fourth and later included.
    let (_, found) = api.get("/api/audit?q=tangerine+policy+decided+h1", &bob).await;
    assert_eq!(found["records"].as_array().unwrap().len(), 1, "{found}");
    let (_, none) = api.get("/api/audit?q=tangerine+policy+decided+h1+kumquat", &bob).await;
    assert_eq!(none["records"].as_array().unwrap().len(), 0, "{none}");
    refused(&api.get("/api/audit?q=a+b+c+d+e+f+g+h+i", &bob).await, StatusCode::BAD_REQUEST, "bad_request");
    let (status, head) = api.get("/api/audit/verify", &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert!(head["records"].as_i64().unwrap() >= 5, "{head}");
}

async fn a_quorum_of_two_is_awaited_then_decided(db: Db) {
    let api = Fixture::start(&db).await;
    let (bob, carol) = (api.token("bob", Role::Approver).await, api.token("carol", Role::Admin).await);
    let mut raised = hold("q1", 9);
    raised.quorum = 2;
    let approve = format!("/api/holds/{}/approve", api.raise(raised).await);
    let (status, body) =
        api.post(&approve, &As::Token(&bob), r#"{"scope": "for", "duration_secs": 600}"#).await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"status": "awaiting_quorum", "approvals": 1, "quorum": 2}))
    );
    refused(&api.post(&approve, &As::Token(&bob), "").await, StatusCode::CONFLICT, "already_approved");
    let (status, body) = api.post(&approve, &As::Token(&carol), "").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "approved"})));
}

/// Every path the `OpenAPI` document names answers on its routes, and every route the
/// router has under /api is documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_router_agree() {
    let db = Db::sqlite();
    let api = Fixture::start(&db).await;
    let admin = api.token("ada", Role::Admin).await;
    let (status, document) = api.get("/api/openapi.json", &As::Nobody).await;
    assert_eq!(status, StatusCode::OK);
    let paths = document["paths"].as_object().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "x@nowhere");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = api.call(method.clone(), &concrete, &As::Token(&admin), None).await;
            assert!(
                status != StatusCode::NOT_FOUND
                    || body["error"]["code"].as_str().is_some_and(|c| c != "not_found"),
                "{method} {concrete}: {status} {body}"
            );
        }
    }
    // A known route with another method is refused in the API's error shape too.
    let (status, body) = api.call(Method::PUT, "/api/holds", &As::Token(&admin), None).await;
    refused(&(status, body), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let source = include_str!("../../src/api/mod.rs");
    let routes: BTreeSet<&str> = source
        .split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|route| route.starts_with("/api/") && !route.contains('*'))
        .collect();
    assert!(routes.len() >= 8, "{routes:?}");
    for route in routes {
        assert!(paths.contains_key(route), "{route} is routed but not in openapi.json");
    }
}

/// An API token stops working when it expires; a lifetime outside 1 to 365 days is refused.
async fn tokens_expire(db: Db) {
    let api = Fixture::start(&db).await;
    let bob = api.token("bob", Role::Approver).await;
    let store = api.running.console.store();
    let (_, expired) =
        store.create_api_token("bob", Role::Approver, "spent", "t", std::time::Duration::ZERO).await.unwrap();
    refused(&api.get("/api/me", &As::Token(&expired)).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    for days in ["0", "366"] {
        let body = format!(r#"{{"name": "ci", "expires_in_days": {days}}}"#);
        refused(
            &api.post("/api/tokens", &As::Token(&bob), &body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    let (status, made) =
        api.post("/api/tokens", &As::Token(&bob), r#"{"name": "ci", "expires_in_days": 1}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let (_, listed) = api.get("/api/tokens", &As::Token(&bob)).await;
    let expires = listed["tokens"][0]["expires_at_ms"].as_i64().expect("an expiry");
    let day = 24 * 3600 * 1000;
    assert!((console::store::now_ms() + day - expires).abs() < 60_000, "{listed}");
}

/// A one-time sign-in link (`keyturn console login`) opens one admin session, once, only
/// when posted with the web UI's header; its secret is kept as a hash and never audited.
async fn a_sign_in_link_opens_one_admin_session_once(db: Db) {
    let api = Fixture::start(&db).await;
    let store = api.running.console.store();
    let secret = store.issue_sign_in_link("unix:root").await.unwrap();
    assert!(secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
    let kept = sqlx::AnyPool::connect(&db.url()).await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT state, pending FROM logins").fetch_all(&kept).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&secret)), "only its hash");
    assert!(!rows[0].1.contains(&secret), "{rows:?}");

    // Wrong secrets, a request another site could send, and a GET open nothing.
    for wrong in [&secret[1..], "", &"0".repeat(64), &secret.to_uppercase()] {
        let (status, body, cookie) = api.sign_in_with_link(wrong, true).await;
        refused(&(status, body), StatusCode::FORBIDDEN, "sign_in_failed");
        assert_eq!(cookie, None);
    }
    let (status, body, cookie) = api.sign_in_with_link(&secret, false).await;
    refused(&(status, body), StatusCode::FORBIDDEN, "csrf");
    assert_eq!(cookie, None);
    refused(&api.get("/auth/link", &As::Nobody).await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    let (status, me, cookie) = api.sign_in_with_link(&secret, true).await;
    assert_eq!(
        (status, me),
        (
            StatusCode::OK,
            json!({"person": "unix:root", "display_name": "unix:root", "role": "admin", "via": "session"})
        )
    );
    let cookie = cookie.expect("a session cookie");
    let (status, body, again) = api.sign_in_with_link(&secret, true).await;
    refused(&(status, body), StatusCode::FORBIDDEN, "sign_in_failed");
    assert_eq!(again, None, "used once");

    // The session is a console session like any other, with what only an admin may do:
    // revoke someone else's token, and make an admin token.
    let session = As::Session(&cookie, true);
    assert_eq!(api.get("/api/me", &session).await.1["role"], "admin");
    let (bob, _) = store.create_api_token("bob", Role::Approver, "ci", "t", TOKEN_LIFETIME).await.unwrap();
    assert_eq!(
        api.call(Method::DELETE, &format!("/api/tokens/{bob}"), &session, None).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, made) = api.post("/api/tokens", &session, r#"{"name": "ops", "role": "admin"}"#).await;
    assert_eq!((status, made["role"].as_str()), (StatusCode::CREATED, Some("admin")), "{made}");

    let issued = api.audited("sign_in_link_issued").await;
    assert_eq!(issued, [json!({"type": "sign_in_link_issued", "person": "unix:root"})]);
    let signed_in = api.audited("signed_in").await;
    assert_eq!(
        signed_in,
        [json!({"type": "signed_in", "person": "unix:root", "role": "admin", "how": "link"})]
    );
    let trail = serde_json::to_string(&store.audit_events().await.unwrap()).unwrap();
    assert!(!trail.contains(&secret) && !trail.contains(&cookie), "{trail}");

    // What an identity-provider sign-in keeps is no link, whoever learns its state.
    let pending =
        PendingLogin { state: "s".repeat(43), nonce: "n".into(), verifier: "v".into(), created_ms: 0 };
    store.begin_login(&pending.state.clone(), &KeptLogin::Oidc(pending)).await.unwrap();
    let (status, body, cookie) = api.sign_in_with_link(&"s".repeat(43), true).await;
    refused(&(status, body), StatusCode::FORBIDDEN, "sign_in_failed");
    assert_eq!(cookie, None);
}

/// A link is good for [`LOGIN_LIFETIME`] (ten minutes) from its issue: one issued just
/// before that still signs in, one issued just over it does not.
async fn a_sign_in_link_expires_after_ten_minutes(db: Db) {
    let api = Fixture::start(&db).await;
    let store = api.running.console.store();
    let (young, old) = (
        store.issue_sign_in_link("unix:alice").await.unwrap(),
        store.issue_sign_in_link("unix:alice").await.unwrap(),
    );
    let lifetime = i64::try_from(LOGIN_LIFETIME.as_millis()).unwrap();
    let kept = sqlx::AnyPool::connect(&db.url()).await.unwrap();
    for (secret, age) in [(&young, lifetime - 30_000), (&old, lifetime + 1)] {
        sqlx::query("UPDATE logins SET created_at_ms = created_at_ms - $1 WHERE state = $2")
            .bind(age)
            .bind(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret)))
            .execute(&kept)
            .await
            .unwrap();
    }
    let (status, body, cookie) = api.sign_in_with_link(&old, true).await;
    refused(&(status, body), StatusCode::FORBIDDEN, "sign_in_failed");
    assert_eq!(cookie, None);
    let (status, me, cookie) = api.sign_in_with_link(&young, true).await;
    assert_eq!((status, me["person"].as_str()), (StatusCode::OK, Some("unix:alice")));
    assert!(cookie.is_some());
}

/// However many redeem one link at once (from one replica or, on PostgreSQL, several),
/// exactly one gets a session.
async fn concurrent_redemptions_of_a_sign_in_link_open_one_session(db: Db) {
    const AT_ONCE: usize = 8;
    let api = std::sync::Arc::new(Fixture::start(&db).await);
    let secret = api.running.console.store().issue_sign_in_link("unix:root").await.unwrap();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(AT_ONCE));
    let mut tries = tokio::task::JoinSet::new();
    for _ in 0..AT_ONCE {
        let (api, secret, start) = (api.clone(), secret.clone(), start.clone());
        tries.spawn(async move {
            start.wait().await;
            api.sign_in_with_link(&secret, true).await
        });
    }
    let mut sessions = Vec::new();
    while let Some(result) = tries.join_next().await {
        let (status, body, cookie) = result.unwrap();
        match status {
            StatusCode::OK => sessions.push(cookie.expect("a session cookie")),
            _ => refused(&(status, body), StatusCode::FORBIDDEN, "sign_in_failed"),
        }
    }
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(api.audited("signed_in").await.len(), 1);
    assert_eq!(api.get("/api/me", &As::Session(&sessions[0], false)).await.1["role"], "admin");
}
