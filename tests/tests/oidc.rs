//! The console's OpenID Connect sign-in against a real provider (`oidc-provider` on Node):
//! who signs in, and every way a callback or an ID token is refused.

use console::oidc::{Identity, Oidc, OidcConfig, OidcError, PendingLogin};
use reqwest::Url;
use tests::oidc::{Client, OidcProvider, PASSWORD, sign_in};

/// Where the provider sends the browser back; `sign_in` stops there, nothing listens.
const REDIRECT: &str = "http://127.0.0.1:8470/auth/callback";

fn config(provider: &OidcProvider, client: &Client) -> OidcConfig {
    OidcConfig {
        issuer: provider.issuer().to_owned(),
        client_id: client.id.to_owned(),
        client_secret: client.secret.map(String::from),
        redirect_url: REDIRECT.to_owned(),
        scopes: ["openid", "email", "profile", "groups"].map(String::from).to_vec(),
        groups_claim: "groups".to_owned(),
        ca: None,
        teams_accounts: false,
    }
}

/// Alice's Teams account, as the provider's `tid` and `oid` name it.
const ALICE_TEAMS: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47/0000a11c-0000-0000-0000-00000000a11c";

async fn discover(provider: &OidcProvider, client: &Client) -> Oidc {
    Oidc::discover(&config(provider, client)).await.expect("discover")
}

/// Begins a sign-in and plays the browser through it: the pending login, and the
/// callback's `state` and `code`.
async fn callback(oidc: &Oidc, login: &str) -> (PendingLogin, String, String) {
    let (authorize, pending) = oidc.begin();
    let callback = sign_in(&authorize, login, PASSWORD).await.expect("signed in");
    assert!(callback.starts_with(REDIRECT), "{callback}");
    let query = |name: &str| {
        let url = Url::parse(&callback).expect("callback URL");
        url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned())
    };
    let code = query("code").unwrap_or_else(|| panic!("no code in {callback}"));
    (pending, query("state").expect("state"), code)
}

#[tokio::test]
async fn sign_in_names_the_person_and_groups() {
    let provider = OidcProvider::start(REDIRECT);
    // The console's client is confidential with RS256 ID tokens; the other public with ES256.
    for (client, login, subject, name, group) in [
        (provider.client(), "alice@example.com", "u-alice", "Alice Approver", "keyturn-approvers"),
        (provider.other_client(), "dana@example.com", "u-dana", "Dana Admin", "keyturn-admins"),
    ] {
        let oidc = discover(&provider, client).await;
        let (pending, state, code) = callback(&oidc, login).await;
        let identity = oidc.finish(&pending, &state, &code).await.expect("finish");
        assert_eq!(
            identity,
            Identity {
                issuer: provider.issuer().to_owned(),
                subject: subject.to_owned(),
                email: Some(login.to_owned()),
                name: Some(name.to_owned()),
                groups: vec![group.to_owned()],
                // Alice's token names her Teams account, but this provider is not said to
                // be Entra ID.
                teams: None,
            }
        );
        assert_eq!(identity.person(), login);
    }
}

#[tokio::test]
async fn wrong_state_is_refused() {
    let provider = OidcProvider::start(REDIRECT);
    let oidc = discover(&provider, provider.client()).await;
    let (pending, _, code) = callback(&oidc, "alice@example.com").await;
    let (_, other) = oidc.begin();
    let refused = oidc.finish(&pending, &other.state, &code).await;
    assert!(matches!(refused, Err(OidcError::StateMismatch)), "{refused:?}");
}

#[tokio::test]
async fn replayed_code_is_refused() {
    let provider = OidcProvider::start(REDIRECT);
    let oidc = discover(&provider, provider.client()).await;
    let (pending, state, code) = callback(&oidc, "bob@example.com").await;
    oidc.finish(&pending, &state, &code).await.expect("first use");
    let refused = oidc.finish(&pending, &state, &code).await;
    assert!(
        matches!(&refused, Err(OidcError::TokenRefused { status: 400, error, .. }) if error == "invalid_grant"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn nonce_of_another_sign_in_is_refused() {
    let provider = OidcProvider::start(REDIRECT);
    let oidc = discover(&provider, provider.client()).await;
    let (pending, state, code) = callback(&oidc, "alice@example.com").await;
    let (_, other) = oidc.begin();
    let mixed = PendingLogin { nonce: other.nonce, ..pending };
    let refused = oidc.finish(&mixed, &state, &code).await;
    assert!(matches!(refused, Err(OidcError::NonceMismatch)), "{refused:?}");
}

#[tokio::test]
async fn expired_sign_in_is_refused() {
    let provider = OidcProvider::start(REDIRECT);
    let oidc = discover(&provider, provider.client()).await;
    let (pending, state, code) = callback(&oidc, "carol@example.com").await;
    let stale = PendingLogin { created_ms: pending.created_ms - 11 * 60 * 1000, ..pending };
    let refused = oidc.finish(&stale, &state, &code).await;
    assert!(matches!(refused, Err(OidcError::PendingExpired)), "{refused:?}");
}

#[tokio::test]
async fn wrong_password_yields_no_code() {
    let provider = OidcProvider::start(REDIRECT);
    let oidc = discover(&provider, provider.client()).await;
    let (authorize, _) = oidc.begin();
    assert_eq!(sign_in(&authorize, "alice@example.com", "not the password").await, None);
}

#[tokio::test]
async fn plain_http_issuer_off_loopback_is_refused() {
    let provider = OidcProvider::start(REDIRECT);
    let config =
        OidcConfig { issuer: "http://idp.example.com".to_owned(), ..config(&provider, provider.client()) };
    let refused = Oidc::discover(&config).await;
    assert!(matches!(refused, Err(OidcError::InsecureIssuer(_))), "{:?}", refused.err());
}

#[tokio::test]
async fn id_token_of_another_client_is_refused() {
    let provider = OidcProvider::start(REDIRECT);
    let other = provider.other_client();
    let (pending, _, code) = callback(&discover(&provider, other).await, "alice@example.com").await;
    // The other (public) client redeems its code, as it may; its ID token is then shown to
    // the console.
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", other.id),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", &pending.verifier),
    ];
    let tokens: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/token", provider.issuer()))
        .form(&form)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("token endpoint")
        .json()
        .await
        .expect("token response");
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let console = discover(&provider, provider.client()).await;
    let refused = console.verify_id_token(id_token, &pending.nonce).await;
    assert!(matches!(refused, Err(OidcError::WrongAudience)), "{refused:?}");
}

/// Signs `login` in through the routes of the console at `base` (as the browser that began
/// it, or not): the callback's answer.
async fn console_sign_in(
    browser: &reqwest::Client,
    base: &str,
    login: &str,
    same_browser: bool,
) -> reqwest::Response {
    let login_page = browser.get(format!("{base}/auth/login")).send().await.expect("login");
    assert_eq!(login_page.status(), 303);
    let authorize = login_page.headers()["location"].to_str().expect("location").to_owned();
    let bound = login_page.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    let bound = bound.split(';').next().expect("pair").to_owned();
    let callback = sign_in(&authorize, login, PASSWORD).await.expect("the provider let them in");
    let request = browser.get(callback);
    let request = if same_browser { request.header("cookie", bound) } else { request };
    request.send().await.expect("callback")
}

/// A console signing people in through an identity provider of its own (only approvers
/// and admins have roles; Teams accounts are linked at sign-in), its directory, removed on
/// drop, and a browser that follows no redirect.
struct SignInConsole {
    _provider: OidcProvider,
    dir: std::path::PathBuf,
    browser: reqwest::Client,
    base: String,
}

impl SignInConsole {
    async fn start(name: &str) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let provider = OidcProvider::start(&format!("http://{addr}/auth/callback"));
        let dir = std::env::temp_dir().join(format!("kt-oidc-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let roles = console::RoleMap {
            admin: vec!["keyturn-admins".into()],
            approver: vec!["keyturn-approvers".into()],
            viewer: vec![],
        };
        let signer = console::keys::Signer::new(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
        let mut oidc_config = config(&provider, provider.client());
        oidc_config.redirect_url = format!("http://{addr}/auth/callback");
        oidc_config.teams_accounts = true;
        let oidc = Oidc::discover(&oidc_config).await.expect("discover");
        let store = console::Store::open(&format!("sqlite://{}/console.db?mode=rwc", dir.display()))
            .await
            .expect("store");
        let api = console::Api::new(console::Console::new(store, signer), Some(oidc), roles, false);
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        tokio::spawn(api.serve(listener));
        let browser =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { _provider: provider, dir, browser, base: format!("http://{addr}") }
    }

    /// The console's database, as another process would open it.
    async fn store(&self) -> console::Store {
        console::Store::open(&format!("sqlite://{}/console.db", self.dir.display())).await.expect("store")
    }

    /// `login`'s sign-in, finished in this browser: the callback's status.
    async fn sign_in(&self, login: &str) -> u16 {
        console_sign_in(&self.browser, &self.base, login, true).await.status().as_u16()
    }
}

impl Drop for SignInConsole {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn the_console_signs_people_in_with_the_role_of_their_groups() {
    let console = SignInConsole::start("console").await;
    let (browser, base) = (&console.browser, &console.base);

    let options: serde_json::Value = browser
        .get(format!("{base}/auth/options"))
        .send()
        .await
        .expect("options")
        .json()
        .await
        .expect("json");
    assert_eq!(options["oidc"], true);

    let sign_in_as = |login, same_browser| console_sign_in(browser, base, login, same_browser);

    // A callback opened in another browser (an attacker's sign-in, planted) opens nothing.
    let planted = sign_in_as("bob@example.com", false).await;
    assert_eq!(planted.status(), 403);
    assert!(planted.headers().get("set-cookie").is_none());
    let planted: serde_json::Value = planted.json().await.expect("json");
    assert_eq!(planted["error"]["code"], "sign_in_failed", "{planted}");

    let signed_in = sign_in_as("alice@example.com", true).await;
    assert_eq!(signed_in.status(), 303, "{:?}", signed_in.text().await);
    assert_eq!(signed_in.headers()["location"], "/");
    let cookie = signed_in.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    let session = cookie.split(';').next().expect("pair").to_owned();
    let me: serde_json::Value = browser
        .get(format!("{base}/api/me"))
        .header("cookie", &session)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (me["person"].as_str(), me["role"].as_str()),
        (Some("alice@example.com"), Some("approver")),
        "{me}"
    );

    // A change in a browser session needs the header no other site can send.
    let forged = browser
        .post(format!("{base}/api/tokens"))
        .header("cookie", &session)
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 403);
    let forged: serde_json::Value = forged.json().await.expect("json");
    assert_eq!(forged["error"]["code"], "csrf");
    let made = browser
        .post(format!("{base}/api/tokens"))
        .header("cookie", &session)
        .header("x-requested-with", "keyturn")
        .body(r#"{"name":"ci"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(made.status(), 201);

    // Carol's groups give no role here: no session.
    let refused = sign_in_as("carol@example.com", true).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get("set-cookie").is_none());
    let refused: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(refused["error"]["code"], "no_role", "{refused}");

    // A callback with a state the console never issued opens nothing.
    let bogus = browser
        .get(format!("{base}/auth/callback?code=abc&state=never-issued"))
        .send()
        .await
        .expect("callback");
    assert_eq!(bogus.status(), 403);

    // Signing out ends the session.
    let out = browser
        .post(format!("{base}/auth/logout"))
        .header("cookie", &session)
        .header("x-requested-with", "keyturn")
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 204);
    let after = browser.get(format!("{base}/api/me")).header("cookie", &session).send().await.expect("me");
    assert_eq!(after.status(), 401);
}

/// The provider is said to be Entra ID: Alice's Teams account (her token's `tid` and `oid`)
/// is linked to her at sign-in, as an approver (her groups' role), and once: a sign-in
/// again writes nothing. An admin's link of Bob's account stands through his sign-in; the
/// link Carol's earlier sign-in made ends when her sign-in is refused (no role now).
#[tokio::test]
async fn entra_id_links_a_persons_teams_account_at_sign_in() {
    let console = SignInConsole::start("teams").await;
    let store = console.store().await;
    let account = console::chat::ChatAccount::teams(ALICE_TEAMS).expect("an account");
    assert_eq!(store.chat_link(&account).await.expect("read"), None);
    for _ in 0..2 {
        assert_eq!(console.sign_in("alice@example.com").await, 303);
    }
    let link = store.chat_link(&account).await.expect("read").expect("linked at sign-in");
    assert_eq!((link.person.as_str(), link.role), ("alice@example.com", console::Role::Approver));
    let linked: Vec<serde_json::Value> = store
        .audit_page(0, 0, i64::MAX, 1_000)
        .await
        .expect("trail")
        .iter()
        .map(|record| serde_json::from_str(&record.event).expect("JSON"))
        .filter(|event: &serde_json::Value| event["type"] == "chat_linked")
        .collect();
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(
        (&linked[0]["account"], &linked[0]["by"], &linked[0]["how"]),
        (
            &serde_json::json!(format!("teams:{ALICE_TEAMS}")),
            &serde_json::json!("alice@example.com"),
            &serde_json::json!("sign_in")
        )
    );

    let tenant = ALICE_TEAMS.split('/').next().expect("a tenant");
    let teams =
        |oid: &str| console::chat::ChatAccount::teams(&format!("{tenant}/{oid}")).expect("an account");
    let (bob, carol) =
        (teams("00000b0b-0000-0000-0000-000000000b0b"), teams("0000ca40-0000-0000-0000-00000000ca40"));
    store.link_chat(&bob, "bob@example.com", console::Role::Viewer, "ada@example.com").await.expect("link");
    assert_eq!(console.sign_in("bob@example.com").await, 303);
    let link = store.chat_link(&bob).await.expect("read").expect("linked");
    assert_eq!(link.role, console::Role::Viewer, "an admin's link stands");
    store.link_at_sign_in(&carol, "carol@example.com", console::Role::Approver).await.expect("link");
    assert_eq!(console.sign_in("carol@example.com").await, 403);
    assert_eq!(store.chat_link(&carol).await.expect("read"), None, "unlinked with her sign-in refused");
    let unlinked = store.audit_page(0, 0, i64::MAX, 1_000).await.expect("trail");
    assert!(
        unlinked
            .iter()
            .any(|record| record.event.contains("chat_unlinked") && record.event.contains("0000ca40")),
        "the unlink is audited"
    );
}

/// A chat account a person linked themselves (by a one-time link) follows their groups: it
/// carries the role their latest sign-in gave (at most approver), and their refused sign-in
/// removes it, each change audited; an account an admin linked keeps the admin's role.
#[tokio::test]
async fn links_people_made_themselves_follow_their_sign_ins() {
    let console = SignInConsole::start("follow").await;
    let store = console.store().await;
    let slack = |user: &str| console::chat::ChatAccount::slack(&format!("T0001/{user}")).expect("an account");
    let linked_themselves =
        async |account: &console::chat::ChatAccount, person: &str, role: console::Role| {
            let secret = store.offer_chat_link(account, "their name", person).await.expect("offer");
            let principal = console::people::Principal {
                person: person.to_owned(),
                display_name: person.to_owned(),
                role,
                via: "session".into(),
                credential: console::people::Credential::SignInLink,
            };
            store.claim_chat_link(&secret, &principal).await.expect("claimed");
        };
    let role_of = async |account: &console::chat::ChatAccount| {
        store.chat_link(account).await.expect("read").map(|link| link.role)
    };
    // Alice confirmed her link while a viewer; her groups make her an approver now.
    let (alice_own, alice_admins, carol_own) = (slack("UA11CE"), slack("UA11CE2"), slack("UCA401"));
    linked_themselves(&alice_own, "alice@example.com", console::Role::Viewer).await;
    store
        .link_chat(&alice_admins, "alice@example.com", console::Role::Viewer, "ada@example.com")
        .await
        .expect("link");
    linked_themselves(&carol_own, "carol@example.com", console::Role::Approver).await;
    let from = store.audit_page(0, 0, i64::MAX, 1_000).await.expect("trail").len();

    assert_eq!(console.sign_in("alice@example.com").await, 303);
    assert_eq!(role_of(&alice_own).await, Some(console::Role::Approver), "follows her groups");
    assert_eq!(role_of(&alice_admins).await, Some(console::Role::Viewer), "an admin's link stands");
    assert_eq!(console.sign_in("carol@example.com").await, 403);
    assert_eq!(role_of(&carol_own).await, None, "removed with her sign-in refused");

    let changes: Vec<serde_json::Value> = store.audit_page(0, 0, i64::MAX, 1_000).await.expect("trail")
        [from..]
        .iter()
        .map(|record| serde_json::from_str(&record.event).expect("JSON"))
        .filter(|event: &serde_json::Value| {
            event["account"].as_str().is_some_and(|a| a.starts_with("slack:"))
        })
        .collect();
    assert_eq!(
        changes,
        [
            serde_json::json!({"type": "chat_linked", "account": "slack:T0001/UA11CE", "person": "alice@example.com",
                               "role": "approver", "by": "alice@example.com's sign-in", "how": "offer"}),
            serde_json::json!({"type": "chat_unlinked", "account": "slack:T0001/UCA401",
                               "by": "carol@example.com's refused sign-in"}),
        ]
    );
}
