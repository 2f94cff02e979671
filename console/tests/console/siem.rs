//! SIEM outputs against real receivers on loopback: Debian's rsyslog over TLS, stopped and
//! restarted while decisions go on, and a Splunk HEC stand-in that fails once on purpose.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    streams::request,
    support::{Db, TempDir, WAIT, hold, key},
};
use console::{
    Console,
    siem::{Output, SiemConfig},
};
use proto::v1::Verdict;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

/// An output's configuration as `keyturn.toml` would give it.
fn output(toml: &str) -> SiemConfig {
    toml::from_str(toml).unwrap()
}

/// Raises `holds` holds on `web-01` and decides each; returns the trail's length.
async fn holds_decided(console: &Console, from: usize, holds: usize) -> i64 {
    let store = console.store();
    for n in from..from + holds {
        let id = format!("h{n}");
        store.raise("web-01", &hold(&id, u64::try_from(n).unwrap())).await.unwrap();
        let started = Instant::now();
        console.decide(&request("web-01", &id, Verdict::Approve, "bob@example.com")).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "a decision waited {:?}", started.elapsed());
    }
    store.verify_audit().await.unwrap().records
}

/// Waits until `done` says so, or fails the test after a while.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The records (sequence, OCSF `metadata.uid`) that OCSF events in `events` carry.
fn carried(events: &[Value]) -> Vec<(i64, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["unmapped"]["keyturn"]["seq"].as_i64().unwrap(),
                e["metadata"]["uid"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every record of a trail of `records` exactly once and in order: each sequence number in
/// turn, each OCSF event of it once.
#[track_caller]
fn exactly_once_in_order(events: &[Value], records: i64) {
    let carried = carried(events);
    let unique: BTreeSet<&(i64, String)> = carried.iter().collect();
    assert_eq!(unique.len(), carried.len(), "duplicates: {carried:?}");
    let seqs: Vec<i64> = carried.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "out of order: {seqs:?}");
    let distinct: Vec<i64> = seqs.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    assert_eq!(distinct, (0..records).collect::<Vec<_>>());
}

async fn cursor(db: &Db, name: &str) -> i64 {
    let pool = sqlx::AnyPool::connect(&db.url()).await.unwrap();
    sqlx::query_scalar("SELECT next_seq FROM siem_cursors WHERE output = $1")
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap()
}

/// What the HEC stand-in saw: each request's events, and how many it refused.
#[derive(Default)]
struct Hec {
    events: Vec<Value>,
    refused: usize,
    requests: usize,
}

/// A Splunk HTTP Event Collector stand-in: checks each request as Splunk documents the
/// protocol (POST to /services/collector/event, `Authorization: Splunk TOKEN`, a body of
/// JSON event objects each with `time` in epoch seconds and `event`), answers Splunk's
/// success, except the second request, which it fails with 503.
async fn hec_receiver(token: &'static str, seen: Arc<Mutex<Hec>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/services/collector/event", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut head = String::new();
                    let mut length = 0;
                    let mut authorization = String::new();
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(value) = lower.strip_prefix("content-length:") {
                            length = value.trim().parse().unwrap();
                        }
                        if lower.starts_with("authorization:") {
                            authorization = line["authorization:".len()..].trim().to_owned();
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    assert!(head.starts_with("POST /services/collector/event HTTP/1.1\r\n"), "{head}");
                    assert_eq!(authorization, format!("Splunk {token}"));
                    let events: Vec<Value> = serde_json::Deserializer::from_slice(&body)
                        .into_iter::<Value>()
                        .map(|event| {
                            let event = event.expect("a body of JSON objects");
                            let time = event["time"].as_f64().expect("time in epoch seconds");
                            assert!((1.6e9..4e9).contains(&time), "{time}");
                            assert_eq!(event["sourcetype"], "keyturn:ocsf");
                            assert!(event["event"].is_object(), "{event}");
                            event["event"].clone()
                        })
                        .collect();
                    let fail = {
                        let mut seen = seen.lock().unwrap();
                        seen.requests += 1;
                        let fail = seen.requests == 2;
                        if fail {
                            seen.refused += events.len();
                        } else {
                            seen.events.extend(events);
                        }
                        fail
                    };
                    let (status, answer) = if fail {
                        ("503 Service Unavailable", r#"{"text":"Server is busy","code":9}"#)
                    } else {
                        ("200 OK", r#"{"text":"Success","code":0}"#)
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    stream.get_mut().write_all(response.as_bytes()).await.unwrap();
                }
            });
        }
    });
    url
}

/// An HEC output gets every record once and in order in small batches, the batch its
/// collector refused again, and the cursor ends past the last record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hec_collector_gets_every_record_once_after_a_refusal() {
    let db = Db::sqlite();
    let console = db.console(&key(1)).await;
    console.store().host_connected("web-01", "key-1", "test", None).await.unwrap();
    let seen = Arc::new(Mutex::new(Hec::default()));
    let url = hec_receiver("s3cret-hec", seen.clone()).await;
    let dir = TempDir::new("hec");
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "s3cret-hec\n").unwrap();
    let config = output(&format!(
        "name = \"splunk\"\nurl = \"{url}\"\nhec = true\ntoken_file = \"{}\"\nbatch = 4",
        token_file.display()
    ));
    let streaming = Output::new(console.store(), &config).unwrap().spawn(console.store().clone());
    let records = holds_decided(&console, 0, 5).await;
    until("every record at the collector", || {
        let seen = seen.lock().unwrap();
        seen.events.last().is_some_and(|e| e["unmapped"]["keyturn"]["seq"] == records - 1)
    })
    .await;
    streaming.abort();
    let (refused, events) = {
        let seen = seen.lock().unwrap();
        (seen.refused, seen.events.clone())
    };
    assert!(refused > 0, "the collector refused a batch");
    exactly_once_in_order(&events, records);
    let lines: Vec<u8> = events.iter().flat_map(|e| format!("{e}\n").into_bytes()).collect();
    ocsf::validator::validate(&lines);
    assert_eq!(cursor(&db, "splunk").await, records);
}

/// Misconfigured outputs are refused before anything starts.
#[tokio::test]
async fn a_misconfigured_output_is_refused() {
    let db = Db::sqlite();
    let console = db.console(&key(1)).await;
    for (toml, expected) in [
        ("name = \"a\"", "exactly one receiver"),
        ("name = \"a\"\nsyslog = \"127.0.0.1:6514\"", "needs `ca`"),
        ("name = \"a\"\nurl = \"http://siem.example.com/\"", "https://"),
        ("name = \"a\"\nurl = \"https://siem.example.com/\"\nhec = true", "hec needs a token"),
    ] {
        let error = Output::new(console.store(), &output(toml)).err().expect(toml).to_string();
        assert!(error.contains(expected), "{toml}: {error}");
    }
    assert!(toml::from_str::<SiemConfig>("name = \"a\"\nport = 1").is_err(), "unknown fields are refused");
}

/// rsyslog (Debian's, with the `GnuTLS` driver) listening for RFC 5425 on a loopback port,
/// writing each message as received to `received`.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    fn new(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            r#"global(workDirectory="{dir}" maxMessageSize="64k"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{dir}/ca.pem"
       defaultNetstreamDriverCertFile="{dir}/server.pem"
       defaultNetstreamDriverKeyFile="{dir}/server.key")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="{dir}/received" template="raw")
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("rsyslog.conf"), config).unwrap();
        let mut rsyslog = Self { dir: dir.to_owned(), port, child: None };
        rsyslog.start();
        rsyslog
    }

    fn start(&mut self) {
        let child = Command::new("/usr/sbin/rsyslogd")
            .args(["-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("pid"))
            // Its complaints (the readiness probe's connection without TLS) go to its own log.
            .stderr(std::fs::File::options().create(true).append(true).open(self.dir.join("log")).unwrap())
            .spawn()
            .expect("rsyslogd: install rsyslog and rsyslog-gnutls (cargo xtask setup)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "rsyslogd did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: rsyslog closes its connections and writes what it has.
            let pid = i32::try_from(child.id()).unwrap();
            // SAFETY: kill(2) on our own child, which has not been waited for.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            child.wait().unwrap();
        }
    }

    /// The messages received so far, each whole (rsyslog may be writing the next one).
    fn received(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("received")).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole.lines().map(str::to_owned).collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate for `localhost` signed by it (ECDSA P-256, which `GnuTLS`
/// takes), written to `dir` as rsyslog's configuration names them.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

/// An RFC 5424 message as keyturn writes it: `<110>1 TIMESTAMP HOST keyturn - ocsf - JSON`.
/// Returns the JSON, failing on anything else.
#[track_caller]
fn rfc5424(message: &str) -> Value {
    let mut fields = message.splitn(8, ' ');
    let mut next = || fields.next().unwrap_or_else(|| panic!("too few fields: {message}"));
    assert_eq!(next(), "<110>1", "PRI (log audit, informational) and VERSION: {message}");
    let timestamp = next();
    humantime::parse_rfc3339(timestamp).unwrap_or_else(|e| panic!("TIMESTAMP {timestamp}: {e}"));
    let host = next();
    assert!(!host.is_empty() && host.len() <= 255 && host.bytes().all(|b| b.is_ascii_graphic()), "{host}");
    assert_eq!((next(), next(), next(), next()), ("keyturn", "-", "ocsf", "-"), "APP-NAME PROCID MSGID SD");
    serde_json::from_str(next()).unwrap_or_else(|e| panic!("MSG is not JSON ({e}): {message}"))
}

crate::both_databases!(rsyslog_over_tls_gets_every_record_once_across_its_restart);

/// Two replicas stream one syslog output to rsyslog over TLS (exactly one of them at a
/// time); rsyslog is stopped while holds are raised and decided (the decisions do not wait),
/// then started again: every record arrives exactly once and in order, as RFC 5424.
async fn rsyslog_over_tls_gets_every_record_once_across_its_restart(db: Db) {
    let dir = TempDir::new("rsyslog");
    certificates(&dir.0);
    let mut rsyslog = Rsyslog::new(&dir.0);
    let console = db.console(&key(1)).await;
    let other = db.other_replica(&console, &key(1)).await;
    console.store().host_connected("web-01", "key-1", "test", None).await.unwrap();
    let config = output(&format!(
        "name = \"soc\"\nsyslog = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\nca = \"{}\"\nbatch = 3",
        rsyslog.port,
        dir.0.join("ca.pem").display()
    ));
    let replicas = [console.store(), other.store()]
        .map(|store| Output::new(store, &config).unwrap().spawn(store.clone()));

    let arrived = |rsyslog: &Rsyslog, records: i64| {
        rsyslog.received().last().is_some_and(|m| rfc5424(m)["unmapped"]["keyturn"]["seq"] == records - 1)
    };
    let records = holds_decided(&console, 0, 3).await;
    until("the first records at rsyslog", || arrived(&rsyslog, records)).await;

    rsyslog.stop();
    let records = holds_decided(&console, 3, 3).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    rsyslog.start();
    until("every record at rsyslog after its restart", || arrived(&rsyslog, records)).await;
    for replica in replicas {
        replica.abort();
    }

    let messages = rsyslog.received();
    let events: Vec<Value> = messages.iter().map(|m| rfc5424(m)).collect();
    exactly_once_in_order(&events, records);
    let lines: Vec<u8> = events.iter().flat_map(|e| format!("{e}\n").into_bytes()).collect();
    ocsf::validator::validate(&lines);
    assert_eq!(cursor(&db, "soc").await, records);
}
