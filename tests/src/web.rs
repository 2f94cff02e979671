//! The console's web API as its web UI calls it: a browser session opened with a one-time
//! sign-in link, and requests sent in it.

use std::net::SocketAddr;

use serde_json::{Value, json};

/// A browser session of `person` at the console serving `http`, opened as the web UI opens
/// one with a one-time sign-in link from `store` (`POST /auth/link`): its `Cookie` header.
pub async fn signed_in(store: &console::Store, http: SocketAddr, person: &str) -> String {
    let secret = store.issue_sign_in_link(person).await.expect("a link");
    let response = reqwest::Client::new()
        .post(format!("http://{http}/auth/link"))
        .header("x-requested-with", "keyturn")
        .json(&json!({"secret": secret}))
        .send()
        .await
        .expect("the console's sign-in");
    assert!(response.status().is_success(), "{}", response.status());
    let cookie = response.headers()["set-cookie"].to_str().expect("a cookie");
    cookie.split(';').next().expect("name=value").to_owned()
}

/// `POST path` with `body` to the console serving `http`, in the browser session `cookie`
/// (if any) as the web UI sends it (or without its header): the status and the JSON answer.
pub async fn post(
    http: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    ui_header: bool,
    body: &Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("http://{http}{path}")).json(body);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if ui_header {
        request = request.header("x-requested-with", "keyturn");
    }
    let response = request.send().await.expect("the console");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
