//! A real OpenID provider for the console's tests (`tests/js/oidc-provider.mjs`, run by
//! Node) and a browser that signs in there without rendering anything.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use reqwest::{Url, redirect};

/// The password of every account of the provider: `alice@example.com` and
/// `bob@example.com` (group `keyturn-approvers`), `carol@example.com` (`keyturn-viewers`),
/// `dana@example.com` (`keyturn-admins`).
pub const PASSWORD: &str = "correct horse battery staple";

/// A client registered at the provider: confidential (`client_secret_basic`) with a
/// secret, else public.
pub struct Client {
    pub id: &'static str,
    pub secret: Option<&'static str>,
}

/// The console's client: confidential, its ID tokens signed with RS256.
const CONSOLE: Client = Client { id: "keyturn-console", secret: Some("console-secret") };
/// Another application at the same provider: public, its ID tokens signed with ES256.
const OTHER: Client = Client { id: "other-app", secret: None };

/// The provider, on a free loopback port; killed on drop.
pub struct OidcProvider {
    child: Child,
    issuer: String,
}

impl OidcProvider {
    /// Starts the provider with both clients sending browsers back to `redirect_url`, and
    /// waits until it listens.
    pub fn start(redirect_url: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{}/node_modules is missing: run `cargo xtask setup` (npm ci)",
            dir.display()
        );
        let clients = serde_json::json!([
            { "client_id": CONSOLE.id, "client_secret": CONSOLE.secret, "redirect_uris": [redirect_url],
              "id_token_signed_response_alg": "RS256" },
            { "client_id": OTHER.id, "token_endpoint_auth_method": "none", "redirect_uris": [redirect_url],
              "id_token_signed_response_alg": "ES256" },
        ]);
        let mut child = Command::new("node")
            .arg(dir.join("oidc-provider.mjs"))
            .arg("0")
            .env("OIDC_CLIENTS", clients.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read provider stdout");
        let Some(issuer) = line.trim_end().strip_prefix("ready ") else {
            let _ = child.kill();
            panic!("the OpenID provider did not start: {line:?}, {:?}", child.wait());
        };
        let issuer = issuer.to_owned();
        // What it says later goes to the test's output; a closed pipe would kill it.
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                eprintln!("oidc-provider: {line}");
            }
        });
        Self { child, issuer }
    }

    /// `http://127.0.0.1:PORT`
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The console's client.
    pub fn client(&self) -> &Client {
        &CONSOLE
    }

    /// Another client at the same provider, whose ID tokens the console must refuse.
    pub fn other_client(&self) -> &Client {
        &OTHER
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plays the browser from `authorize_url`: follows the provider's redirects, fills its login
/// form with `login` and `password`, and stops at the redirect to the client's
/// `redirect_uri` without fetching it. Returns that callback URL (with `code` and `state`),
/// or `None` when the provider refuses the login and shows its form again.
pub async fn sign_in(authorize_url: &str, login: &str, password: &str) -> Option<String> {
    let authorize = Url::parse(authorize_url).expect("authorize URL");
    let (_, redirect_uri) = authorize
        .query_pairs()
        .find(|(name, _)| name == "redirect_uri")
        .expect("redirect_uri in the authorize URL");
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(redirect::Policy::none())
        .build()
        .expect("browser");
    let mut url = authorize.clone();
    let mut response = browser.get(url.clone()).send().await.expect("GET authorize");
    let mut submitted = false;
    loop {
        if response.status().is_redirection() {
            let location = response.headers()["location"].to_str().expect("location");
            url = url.join(location).expect("redirect URL");
            if url.as_str().starts_with(redirect_uri.as_ref()) {
                return Some(url.into());
            }
            response = browser.get(url.clone()).send().await.expect("follow redirect");
            continue;
        }
        let status = response.status();
        let page = response.text().await.expect("page");
        if submitted {
            assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "after the login form: {page}");
            return None;
        }
        assert!(status.is_success(), "{url} answered {status}: {page}");
        let action = page.split("action=\"").nth(1).and_then(|a| a.split('"').next()).expect("a login form");
        let form = [("login", login), ("password", password)];
        response = browser
            .post(url.join(action).expect("form action"))
            .form(&form)
            .send()
            .await
            .expect("POST login");
        submitted = true;
    }
}
