//! A daemon running its embedded console on loopback addresses of its own, and that
//! console's HTTP API as an approver (or a viewer) calls it with an API token, or as an
//! operator signed in with a one-time link.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    WAIT,
    daemon::{Daemon, stderr},
};

/// A daemon with its embedded console, and a client of that console's API.
pub struct Embedded {
    pub daemon: Daemon,
    /// Where the embedded console serves host streams.
    pub hosts: SocketAddr,
    /// `http://ADDRESS` of its web UI and API.
    pub origin: String,
    console_config: PathBuf,
    pub rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Embedded {
    /// Starts a daemon whose `test` policy is `policy` (see [`Daemon::start`]), with its
    /// embedded console.
    pub fn start(policy: &str) -> Self {
        Self::start_with(policy, tokio::runtime::Runtime::new().expect("runtime"), "")
    }

    /// [`Embedded::start`], with `sections` (TOML) added to the embedded console's file, and
    /// `rt` for the test's calls (where the stand-ins that `sections` name may run).
    pub fn start_with(policy: &str, rt: tokio::runtime::Runtime, sections: &str) -> Self {
        let (hosts, people) = (crate::free_addr(), crate::free_addr());
        let scratch =
            std::env::temp_dir().join(format!("kt-embedded-{}-{}", std::process::id(), people.port()));
        std::fs::create_dir_all(&scratch).expect("scratch");
        let console_config = scratch.join("console.toml");
        std::fs::write(
            &console_config,
            format!(
                "listen = \"{hosts}\"\ndatabase = \"sqlite://{0}/console.db?mode=rwc\"\nkey = \"{0}/console.key\"\n\
                 [tls]\nenabled = false\n[http]\nlisten = \"{people}\"\n{sections}",
                scratch.display()
            ),
        )
        .expect("console config");
        let daemon = Daemon::start_with_config(
            policy,
            &format!("embedded_console_config = \"{}\"", console_config.display()),
        );
        Self {
            daemon,
            hosts,
            origin: format!("http://{people}"),
            console_config,
            rt,
            http: reqwest::Client::new(),
        }
    }

    /// `keyturn console ARGS… --config` the embedded console's file, which must succeed.
    pub fn console_cli(&self, args: &[&str]) -> String {
        let config = self.console_config.to_str().expect("path");
        let out = self.daemon.cli(&[&["console", "--config", config], args].concat());
        assert!(out.status.success(), "console {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    /// A new API token for `person` with `role`, made with `keyturn console api-token`.
    pub fn token(&self, person: &str, role: &str) -> String {
        self.console_cli(&["api-token", person, "--role", role]).trim().to_owned()
    }

    /// `method /api/path` with `token` and `body`: the status and the JSON answer.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(method, path, token.map_or(Caller::Nobody, Caller::Token), body)
    }

    /// `method /api/path` as `caller`, with `body`: the status and the JSON answer.
    pub fn call_as(
        &self,
        method: reqwest::Method,
        path: &str,
        caller: Caller,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.rt.block_on(async {
            let mut request = self.http.request(method, format!("{}/api{path}", self.origin));
            request = match caller {
                Caller::Nobody => request,
                Caller::Token(token) => request.bearer_auth(token),
                Caller::Session(cookie) => request
                    .header("cookie", format!("keyturn_session={cookie}"))
                    .header("x-requested-with", "keyturn"),
            };
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        })
    }

    /// The one-time sign-in link the daemon logged at start, once it has.
    pub fn logged_sign_in_link(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.daemon.log();
            let start = format!("{}/#login=", self.origin);
            let link = log.lines().filter(|line| line.contains("sign in as an admin")).find_map(|line| {
                let at = line.find(&start)?;
                Some(line[at..].split(|c: char| c.is_whitespace() || c.is_control()).next()?.to_owned())
            });
            if let Some(link) = link {
                return link;
            }
            assert!(Instant::now() < deadline, "no sign-in link in the daemon's log: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The secret of a sign-in `link` to this console (what follows `#login=`).
    pub fn link_secret<'a>(&self, link: &'a str) -> &'a str {
        link.strip_prefix(&format!("{}/#login=", self.origin))
            .unwrap_or_else(|| panic!("{link:?} is no sign-in link to {}", self.origin))
    }

    /// Posts a sign-in link's `secret` as the web UI does: the status, the answer (who is
    /// signed in), and the session cookie set, if any.
    pub fn sign_in_with_link(&self, secret: &str) -> (u16, Value, Option<String>) {
        self.rt.block_on(async {
            let response = self
                .http
                .post(format!("{}/auth/link", self.origin))
                .header("x-requested-with", "keyturn")
                .json(&serde_json::json!({"secret": secret}))
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let cookie = response.headers().get("set-cookie").and_then(|value| {
                let value = value.to_str().ok()?.strip_prefix("keyturn_session=")?;
                Some(value.split(';').next()?.to_owned())
            });
            (status, response.json().await.unwrap_or(Value::Null), cookie)
        })
    }

    /// The holds pending now, as the API lists them (newest first).
    pub fn pending_holds(&self, token: &str) -> Vec<Value> {
        let (status, mut answer) =
            self.call(reqwest::Method::GET, "/holds?status=pending", Some(token), None);
        assert_eq!(status, 200, "{answer}");
        match answer["holds"].take() {
            Value::Array(holds) => holds,
            other => panic!("holds is not a list: {other}"),
        }
    }

    /// Waits for a pending hold in the API and returns it.
    pub fn pending_hold(&self, token: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(hold) = self.pending_holds(token).into_iter().next() {
                return hold;
            }
            assert!(
                Instant::now() < deadline,
                "no hold reached the embedded console; log: {}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Who calls the embedded console's API.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    Nobody,
    /// An API token.
    Token(&'a str),
    /// A browser session's cookie (changes carry the web UI's header).
    Session(&'a str),
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(dir) = self.console_config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
