//! A daemon running its embedded console on loopback addresses of its own, and that
//! console's HTTP API as an approver (or a viewer) calls it with an API token.

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
    api: String,
    console_config: PathBuf,
    pub rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Embedded {
    /// Starts a daemon whose `test` policy is `policy` (see [`Daemon::start`]), with its
    /// embedded console.
    pub fn start(policy: &str) -> Self {
        let (hosts, people) = (crate::free_addr(), crate::free_addr());
        let scratch =
            std::env::temp_dir().join(format!("kt-embedded-{}-{}", std::process::id(), people.port()));
        std::fs::create_dir_all(&scratch).expect("scratch");
        let console_config = scratch.join("console.toml");
        std::fs::write(
            &console_config,
            format!(
                "listen = \"{hosts}\"\ndatabase = \"sqlite://{0}/console.db?mode=rwc\"\nkey = \"{0}/console.key\"\n\
                 [tls]\nenabled = false\n[http]\nlisten = \"{people}\"\n",
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
            api: format!("http://{people}/api"),
            console_config,
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            http: reqwest::Client::new(),
        }
    }

    /// A new API token for `person` with `role`, made with `keyturn console api-token`.
    pub fn token(&self, person: &str, role: &str) -> String {
        let config = self.console_config.to_str().expect("path");
        let out = self.daemon.cli(&["console", "--config", config, "api-token", person, "--role", role]);
        assert!(out.status.success(), "api-token: {}", stderr(&out));
        String::from_utf8(out.stdout).expect("token").trim().to_owned()
    }

    /// `method path` with `token` and `body`: the status and the JSON answer.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.rt.block_on(async {
            let mut request = self.http.request(method, format!("{}{path}", self.api));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
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

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(dir) = self.console_config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
