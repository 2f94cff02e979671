//! A console running in the test (SQLite in a directory of its own) with a daemon linked to
//! it, and its web API as its web UI calls it: a browser session opened with a one-time
//! sign-in link, and requests sent in it.

use std::{net::SocketAddr, path::PathBuf};

use console::{Api, Console, Store, keys::Signer};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use crate::daemon::{Daemon, console_section, serial};

/// A console in this process serving hosts and its web UI and API, and a daemon linked to it.
pub struct ConsoleHere {
    pub rt: tokio::runtime::Runtime,
    pub console: Console,
    pub daemon: Daemon,
    /// The console's files: its database, and a config naming it for `keyturn console`.
    pub dir: PathBuf,
    /// The web UI and API.
    pub http: SocketAddr,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ConsoleHere {
    /// A console on `rt` (where the test's stand-ins run too), named `name` in its
    /// directory's name, whose API `with` completes (a chat started beside it, and its
    /// tasks), and a daemon called `host` holding as `policy`.
    pub fn start(
        rt: tokio::runtime::Runtime,
        name: &str,
        policy: &str,
        host: &str,
        with: impl FnOnce(&Console, Api) -> (Api, Vec<tokio::task::JoinHandle<()>>),
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("kt-{name}-{}-{}", std::process::id(), serial()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("console dir");
        let database = format!("sqlite://{}?mode=rwc", dir.join("console.db").display());
        std::fs::write(dir.join("console.toml"), format!("database = \"{database}\"\n"))
            .expect("console.toml");
        let key = SigningKey::from_bytes(&[9; 32]);
        let (console, hosts, http, tasks) = rt.block_on(async {
            let store = Store::open(&database).await.expect("store");
            let console = Console::new(store, Signer::new(key.clone()));
            let hosts = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let people = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let (hosts_addr, http) = (hosts.local_addr().expect("addr"), people.local_addr().expect("addr"));
            tokio::spawn(console.clone().serve(hosts));
            let api = Api::new(console.clone(), None, console::RoleMap::default(), false);
            let (api, tasks) = with(&console, api);
            tokio::spawn(api.serve(people));
            (console, hosts_addr, http, tasks)
        });
        let section = console_section(&format!("http://{hosts}"), &key, host, "");
        let daemon = Daemon::start_with_config(policy, &section);
        Self { rt, console, daemon, dir, http, _tasks: tasks }
    }

    /// The console's audit trail: its events.
    pub fn trail(&self) -> Vec<Value> {
        let records = self.rt.block_on(self.console.store().audit_page(0, 0, i64::MAX, 1_000));
        let records = records.expect("the console's trail");
        records.iter().map(|record| serde_json::from_str(&record.event).expect("JSON")).collect()
    }

    /// The refused decisions the console audited: `[by, code]` each.
    pub fn refused(&self) -> Vec<Value> {
        let refused = self.trail().into_iter().filter(|event| event["type"] == "decision_refused");
        refused.map(|event| json!([event["by"], event["code"]])).collect()
    }

    /// A browser session of `person`: its `Cookie` header (see [`signed_in`]).
    pub fn signed_in(&self, person: &str) -> String {
        self.rt.block_on(signed_in(self.console.store(), self.http, person))
    }

    /// `POST path` with `body` in the browser session `cookie` (see [`post`]).
    pub fn web_post(&self, path: &str, cookie: Option<&str>, ui_header: bool, body: &Value) -> (u16, Value) {
        self.rt.block_on(post(self.http, path, cookie, ui_header, body))
    }
}

impl Drop for ConsoleHere {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
