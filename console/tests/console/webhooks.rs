//! Webhooks against a receiver that is not keyturn's code: Python's standard library
//! serves the hooks and checks every signature with its own `hmac`, refusing the first
//! request on purpose.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    streams::request,
    support::{Db, TempDir, WAIT, hold, key},
};
use console::siem::{Output, webhook::WebhookConfig};
use proto::v1::Verdict;
use serde_json::Value;

const SECRET: &str = "whsec-0123456789abcdef";

/// Serves POSTs on loopback; for each, prints a JSON line: its path, whether its signature
/// verifies under `SECRET` (`v0:TIMESTAMP:BODY`, HMAC-SHA256) and its timestamp is within
/// 5 minutes, and its body. Answers 500 to the first request, 200 to the others.
const RECEIVER: &str = r#"
import hashlib, hmac, http.server, json, sys, time
secret = sys.argv[1].encode()
requests = []
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        stamp = self.headers.get("X-Keyturn-Request-Timestamp", "")
        mac = hmac.new(secret, b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest("v0=" + mac, self.headers.get("X-Keyturn-Signature", ""))
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) < 300
        requests.append(self.path)
        refused = len(requests) == 1
        print(json.dumps({"path": self.path, "signed": signed, "fresh": fresh, "refused": refused,
                          "body": json.loads(body)}), flush=True)
        self.send_response(500 if refused else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// The receiver, and what it printed of each request.
struct Receiver {
    child: Child,
    seen: Arc<Mutex<Vec<Value>>>,
    port: u16,
}

impl Receiver {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .args(["-c", RECEIVER, SECRET])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let port = lines.next().expect("a port").expect("read").parse().expect("a port number");
        let seen = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let seen = seen.clone();
            move || record(lines, &seen)
        });
        Self { child, seen, port }
    }

    /// The requests it acknowledged, at `path`.
    fn acknowledged(&self, path: &str) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|r| r["path"] == path && r["refused"] == false).cloned().collect()
    }
}

fn record(lines: std::io::Lines<BufReader<ChildStdout>>, seen: &Mutex<Vec<Value>>) {
    for line in lines.map_while(Result::ok) {
        seen.lock().unwrap().push(serde_json::from_str(&line).expect("a JSON line"));
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn webhook(toml: &str) -> WebhookConfig {
    toml::from_str(toml).unwrap()
}

/// Two webhooks, one for every hold event and one for decisions only, get signed bodies the
/// receiver verifies, each event once and in order, the one refused sent again; decisions
/// never wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_signed_hold_events_in_order_after_a_refusal() {
    let db = Db::sqlite();
    let console = db.console(&key(1)).await;
    console.store().host_connected("web-01", "key-1", "test", None).await.unwrap();
    let receiver = Receiver::start();
    let dir = TempDir::new("webhooks");
    let secret_file = dir.0.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let every = webhook(&format!(
        "name = \"pager\"\nurl = \"http://127.0.0.1:{}/every\"\nsecret_file = \"{}\"",
        receiver.port,
        secret_file.display()
    ));
    let decided = webhook(&format!(
        "name = \"decided\"\nurl = \"http://127.0.0.1:{}/decided\"\nsecret = \"{SECRET}\"\nevents = [\"hold_decided\"]",
        receiver.port
    ));
    let streams = [every, decided]
        .map(|config| Output::webhook(console.store(), &config).unwrap().spawn(console.store().clone()));
    let store = console.store();
    for n in 0..3u64 {
        let id = format!("h{n}");
        store.raise("web-01", &hold(&id, n)).await.unwrap();
        let started = Instant::now();
        console.decide(&request("web-01", &id, Verdict::Approve, "bob@example.com")).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "a decision waited {:?}", started.elapsed());
    }
    let deadline = Instant::now() + WAIT;
    while receiver.acknowledged("/every").len() < 6 || receiver.acknowledged("/decided").len() < 3 {
        assert!(Instant::now() < deadline, "not every event arrived: {:?}", receiver.seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for stream in streams {
        stream.abort();
    }
    let seen = receiver.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|r| r["refused"] == true), "the receiver refused a request");
    assert!(seen.iter().all(|r| r["signed"] == true && r["fresh"] == true), "{seen:?}");
    let events = |path| -> Vec<(String, i64)> {
        receiver
            .acknowledged(path)
            .iter()
            .map(|r| (r["body"]["event"].as_str().unwrap().to_owned(), r["body"]["seq"].as_i64().unwrap()))
            .collect()
    };
    let every = events("/every");
    let kinds: Vec<&str> = every.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["hold_raised", "hold_decided"].repeat(3), "{every:?}");
    assert!(every.windows(2).all(|pair| pair[0].1 < pair[1].1), "in order, once each: {every:?}");
    let decisions: Vec<(String, i64)> =
        every.iter().filter(|(kind, _)| kind == "hold_decided").cloned().collect();
    assert_eq!(events("/decided"), decisions, "the decisions-only webhook gets the same records");
    for request in receiver.acknowledged("/every") {
        let body = &request["body"];
        let ocsf = body["ocsf"].as_array().expect("OCSF events");
        assert!(!ocsf.is_empty(), "{body}");
        assert!(ocsf.iter().all(|event| event["unmapped"]["keyturn"]["seq"] == body["seq"]), "{body}");
    }
}

/// A webhook without a secret, with a short one, over plain HTTP off loopback, or with no
/// events is refused before anything is sent.
#[tokio::test]
async fn a_misconfigured_webhook_is_refused() {
    let db = Db::sqlite();
    let console = db.console(&key(1)).await;
    for (toml, says) in [
        ("name = \"p\"\nurl = \"https://hooks.example/\"", "needs a secret"),
        ("name = \"p\"\nurl = \"http://hooks.example/\"\nsecret = \"0123456789abcdef\"", "https://"),
        ("name = \"p\"\nurl = \"https://hooks.example/\"\nsecret = \"short\"", "16 bytes"),
    ] {
        let Err(e) = Output::webhook(console.store(), &webhook(toml)) else { panic!("{toml} accepted") };
        assert!(e.to_string().contains(says) && e.to_string().starts_with("[[webhooks]] p:"), "{e}");
    }
}

/// Two outputs or two webhooks of one name, or an output named with the `:` that the
/// cursors of webhooks and chat use, would share a cursor: refused, before anything starts.
#[tokio::test]
async fn outputs_that_would_share_a_cursor_are_refused() {
    let db = Db::sqlite();
    let console = db.console(&key(1)).await;
    let siem = |name: &str| -> console::siem::SiemConfig {
        toml::from_str(&format!("name = \"{name}\"\nurl = \"https://siem.example/\"\n")).unwrap()
    };
    let hook = |name: &str| {
        webhook(&format!("name = \"{name}\"\nurl = \"https://h.example/\"\nsecret = \"{SECRET}\""))
    };
    for (siems, hooks, says) in [
        (vec![siem("a"), siem("a")], vec![], "[[siem]] a: two outputs of this name"),
        (vec![siem("chat:slack")], vec![], "[[siem]] chat:slack: `:` is kept"),
        (vec![siem("webhook:pager")], vec![hook("pager")], "[[siem]] webhook:pager: `:` is kept"),
        (vec![], vec![hook("p"), hook("p")], "[[webhooks]] p: two webhooks of this name"),
    ] {
        match console::siem::start(console.store(), &siems, &hooks) {
            Ok(_) => panic!("{says}: started"),
            Err(e) => assert!(e.to_string().starts_with(says), "{e}"),
        }
    }
}
