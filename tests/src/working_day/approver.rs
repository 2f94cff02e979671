//! A person at the embedded console: polls the API for pending holds and decides each by
//! what it shows (the program and its arguments, or the destination), the way the day's
//! approver would, and notes when each hold appeared and when it was decided.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use super::Hosts;
use crate::embedded::Embedded;

/// How often the approver looks at the pending holds.
pub const POLL: Duration = Duration::from_millis(10);

/// What the approver made of a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Denied,
    /// The console refused the decision (the hold ended first, say): its HTTP status.
    Refused(u16),
}

/// A hold the approver saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `HOLD@HOST`.
    pub id: String,
    /// `exec` or `egress`.
    pub kind: String,
    /// The command line, or the destination.
    pub what: String,
    pub decision: Decision,
    /// Whether the day asks for this action (approved, or denied on purpose); anything
    /// else is denied as a surprise.
    pub expected: bool,
    /// When the kernel held the action, by the console's clock (ms since the epoch).
    pub requested_at_ms: i64,
    /// When the approver first saw it listed, and when the console had taken the decision.
    pub seen: Instant,
    pub seen_at_ms: i64,
    pub decided: Instant,
}

/// The approver: an API token of the console's, and the hosts the day talks to.
pub struct Approver<'a> {
    console: &'a Embedded,
    token: String,
    api: String,
    paste: String,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

impl<'a> Approver<'a> {
    pub fn new(console: &'a Embedded, hosts: &Hosts) -> Self {
        Self {
            token: console.token("approver@example.com", "approver"),
            console,
            api: hosts.api.addr().to_string(),
            paste: hosts.paste.addr().to_string(),
        }
    }

    /// Runs `work` while deciding every hold that appears, until it returns (or panics)
    /// and once more after; returns what `work` returned and the holds in the order seen.
    pub fn during<T>(&self, work: impl FnOnce() -> T) -> (T, Vec<Seen>) {
        /// Sets the flag when dropped, also when `work` panics: the approver would
        /// otherwise keep the scope waiting.
        struct Finished<'a>(&'a AtomicBool);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let watching = scope.spawn(|| self.watch(&done));
            let result = {
                let _finished = Finished(&done);
                work()
            };
            (result, watching.join().expect("the approver panicked"))
        })
    }

    fn watch(&self, done: &AtomicBool) -> Vec<Seen> {
        let mut seen: Vec<Seen> = Vec::new();
        let mut ids = HashSet::new();
        loop {
            let finished = done.load(Ordering::Acquire);
            for hold in self.console.pending_holds(&self.token) {
                let id = hold["id"].as_str().expect("hold id").to_owned();
                if ids.insert(id.clone()) {
                    seen.push(self.decide(id, &hold));
                }
            }
            if finished {
                return seen;
            }
            std::thread::sleep(POLL);
        }
    }

    fn decide(&self, id: String, hold: &Value) -> Seen {
        let (seen, seen_at_ms) = (Instant::now(), now_ms());
        let (approve, expected, what) = self.judge(hold);
        let (verb, body) = if approve {
            ("approve", json!({"scope": "once", "reason": "part of the day's work"}))
        } else {
            ("deny", json!({"reason": "not something this agent should do"}))
        };
        let (status, _) = self.console.call(
            reqwest::Method::POST,
            &format!("/holds/{id}/{verb}"),
            Some(&self.token),
            Some(body),
        );
        let decision = match (status, approve) {
            (200, true) => Decision::Approved,
            (200, false) => Decision::Denied,
            (status, _) => Decision::Refused(status),
        };
        Seen {
            id,
            kind: hold["kind"].as_str().unwrap_or_default().to_owned(),
            what,
            decision,
            expected,
            requested_at_ms: hold["requested_at_ms"].as_i64().unwrap_or_default(),
            seen,
            seen_at_ms,
            decided: Instant::now(),
        }
    }

    /// Whether to approve the hold, whether the day asks for it, and what it is.
    fn judge(&self, hold: &Value) -> (bool, bool, String) {
        if hold["kind"] == "egress" {
            let address = hold["egress"]["address"].as_str().unwrap_or_default();
            let what = format!("{address}:{}", hold["egress"]["port"]);
            return match address {
                a if a == self.api => (true, true, what),
                a if a == self.paste => (false, true, what),
                _ => (false, false, what),
            };
        }
        let argv: Vec<&str> =
            hold["exec"]["argv"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let what = argv.join(" ");
        match hold["exec"]["path"].as_str().unwrap_or_default() {
            "/usr/bin/curl" | "/usr/bin/wget" => {
                // Anything to the tracker's API but an upload (and `--version`, which goes
                // nowhere); an upload to the paste host is denied on purpose.
                let urls: Vec<&&str> = argv.iter().filter(|word| word.contains("://")).collect();
                let upload = argv.iter().any(|word| *word == "-T" || word.starts_with("--upload-file"));
                let all_to = |host: &str| urls.iter().all(|url| url.starts_with(&format!("http://{host}/")));
                let approve = all_to(&self.api) && !upload;
                (approve, approve || (upload && !urls.is_empty() && all_to(&self.paste)), what)
            }
            // The git server is the clone's only remote.
            "/usr/bin/git" if argv.get(1) == Some(&"push") => (true, true, what),
            _ => (false, false, what),
        }
    }
}

/// How long the holds waited for the approver: the union of the spans from when the
/// approver saw each hold to when the console had its decision (holds of the same moment
/// are counted once).
pub fn approver_wait(seen: &[Seen]) -> Duration {
    let mut spans: Vec<(Instant, Instant)> = seen.iter().map(|s| (s.seen, s.decided)).collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (start, end) in spans {
        current = match current {
            Some((from, to)) if start <= to => Some((from, to.max(end))),
            Some((from, to)) => {
                total += to - from;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(Duration::ZERO, |(from, to)| to - from)
}
