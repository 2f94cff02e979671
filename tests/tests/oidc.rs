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
    }
}

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
