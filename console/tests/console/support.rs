//! What the console tests share: a throw-away PostgreSQL cluster, SQLite files, consoles
//! serving on loopback in runtimes of their own (so a test can kill one), and holds.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use console::{Console, Store, keys::Signer, server::Tls, tls::Authority};
use ed25519_dalek::SigningKey;
use host_client as client;
use proto::v1::{Egress, Exec, HoldKind, HoldRaised, hold_raised};
use tokio::sync::{mpsc, oneshot};

/// Anything a test waits for arrives within this, or the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory of this test's own, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kt-console-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The newest PostgreSQL server Debian installed, found at run time.
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!("{}: {e}: install Debian's postgresql (cargo xtask setup)", root.display())
        })
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).expect("no /usr/lib/postgresql/<version>/bin/initdb")
}

/// Runs a PostgreSQL tool as the `postgres` user (initdb refuses root).
fn as_postgres(program: &Path, args: &[&str]) {
    // SAFETY: getpwnam with a NUL-terminated name; the fields are read before any other call.
    let (uid, gid) = unsafe {
        let entry = libc::getpwnam(c"postgres".as_ptr());
        assert!(!entry.is_null(), "no postgres user: install Debian's postgresql (cargo xtask setup)");
        ((*entry).pw_uid, (*entry).pw_gid)
    };
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "the PostgreSQL tests start a cluster as the postgres user, which needs root"
    );
    let out = Command::new(program).args(args).uid(uid).gid(gid).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL cluster of this test's own, on a private port, stopped and removed on drop.
pub struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    pub url: String,
}

impl Postgres {
    pub fn start() -> Self {
        let bin = postgres_bin();
        let dir = TempDir::new("pg");
        let data = dir.0.join("data");
        std::fs::create_dir(&data).unwrap();
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir.0).status().unwrap();
        assert!(chown.success());
        let data_arg = data.to_str().unwrap();
        as_postgres(&bin.join("initdb"), &["-D", data_arg, "-U", "postgres", "-A", "trust", "--no-sync"]);
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            dir.0.display()
        );
        let log = dir.0.join("log");
        as_postgres(
            &bin.join("pg_ctl"),
            &["-D", data_arg, "-l", log.to_str().unwrap(), "-o", &options, "-w", "start"],
        );
        Self { bin, dir, url: format!("postgres://postgres@127.0.0.1:{port}/postgres") }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.0.join("data");
        as_postgres(&self.bin.join("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]);
    }
}

/// Where a test's database lives: a SQLite file or a PostgreSQL cluster.
pub enum Db {
    Sqlite(TempDir),
    Postgres(Postgres),
}

impl Db {
    pub fn sqlite() -> Self {
        Self::Sqlite(TempDir::new("sqlite"))
    }

    pub fn postgres() -> Self {
        Self::Postgres(Postgres::start())
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}/console.db?mode=rwc", dir.0.display()),
            Self::Postgres(pg) => pg.url.clone(),
        }
    }

    /// A console replica on this database, in the caller's runtime. Decisions made on it
    /// reach hosts connected to other replicas on PostgreSQL only: on SQLite a console is
    /// one process, whose in-process events do not cross to another.
    pub async fn console(&self, key: &SigningKey) -> Console {
        Console::new(Store::open(&self.url()).await.unwrap(), Signer::new(key.clone()))
    }

    /// A second replica beside `serving` on PostgreSQL; on SQLite `serving` itself.
    pub async fn other_replica(&self, serving: &Console, key: &SigningKey) -> Console {
        match self {
            Self::Sqlite(_) => serving.clone(),
            Self::Postgres(_) => self.console(key).await,
        }
    }
}

/// Generates the same test over SQLite and over PostgreSQL.
#[macro_export]
macro_rules! both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Db::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::support::Db::postgres()).await;
            }
        }
    )*};
}

/// A console replica serving on `addr` in a runtime of its own, on its own thread. Dropping
/// it drops that runtime: the listener, every stream and every task end at once, as when
/// the process dies.
pub struct Running {
    /// The replica itself, to decide through (on SQLite, the only replica there can be).
    pub console: Console,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Running {
    pub fn start(url: &str, key: &SigningKey, addr: SocketAddr) -> Self {
        Self::start_with(url, key, addr, None)
    }

    /// A replica serving mutual TLS, with the certificate authority in `ca_dir`.
    pub fn start_tls(url: &str, key: &SigningKey, addr: SocketAddr, ca_dir: &Path) -> Self {
        Self::start_with(url, key, addr, Some(ca_dir.to_owned()))
    }

    fn start_with(url: &str, key: &SigningKey, addr: SocketAddr, ca_dir: Option<PathBuf>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel::<(Console, SocketAddr)>();
        let (url, key) = (url.to_owned(), key.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let mut console = Console::new(Store::open(&url).await.unwrap(), Signer::new(key));
                if let Some(dir) = ca_dir {
                    let authority = Authority::load_or_create(&dir).unwrap();
                    console = console.with_tls(Tls { authority, names: vec!["127.0.0.1".into()] });
                }
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready.send((console.clone(), listener.local_addr().unwrap())).unwrap();
                tokio::select! {
                    result = console.serve(listener) => result.unwrap(),
                    _ = stopped => {}
                }
            });
        });
        let (console, addr) = is_ready.recv().expect("the console thread started");
        Self { console, stop: Some(stop), thread: Some(thread), addr }
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.console.tls().is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A host's client to `endpoint`, trusting `console`'s key, over plaintext.
pub fn connect(
    endpoint: &str,
    host: &str,
    host_key: &SigningKey,
    console: &SigningKey,
) -> (client::ClientHandle, mpsc::Receiver<client::ClientEvent>) {
    connect_with(endpoint, host, host_key, console, None)
}

/// A host's client to `endpoint`, trusting `console`'s key, over mutual TLS when `tls` is given.
pub fn connect_with(
    endpoint: &str,
    host: &str,
    host_key: &SigningKey,
    console: &SigningKey,
    tls: Option<client::ClientTls>,
) -> (client::ClientHandle, mpsc::Receiver<client::ClientEvent>) {
    client::start(client::ClientConfig {
        endpoint: endpoint.to_owned(),
        host: host.to_owned(),
        agent_version: "test".to_owned(),
        key: host_key.clone(),
        console_keys: vec![console.verifying_key()],
        tls,
    })
}

/// The next event from the client that is not a (dis)connection notice.
pub async fn next_event(events: &mut mpsc::Receiver<client::ClientEvent>) -> client::ClientEvent {
    loop {
        let event =
            tokio::time::timeout(WAIT, events.recv()).await.expect("an event in time").expect("client alive");
        if !matches!(event, client::ClientEvent::Connected { .. } | client::ClientEvent::Disconnected(_)) {
            return event;
        }
    }
}

/// Waits until the client says it is connected.
pub async fn connected(events: &mut mpsc::Receiver<client::ClientEvent>) {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("connected in time")
            .expect("client alive");
        match event {
            client::ClientEvent::Connected { .. } => return,
            client::ClientEvent::Disconnected(_) => {}
            other => panic!("unexpected {other:?} before connecting"),
        }
    }
}

/// An exec hold of `curl`, due in ten minutes.
pub fn hold(id: &str, nonce: u64) -> HoldRaised {
    let now = console::store::now_ms().cast_unsigned();
    HoldRaised {
        id: id.to_owned(),
        nonce,
        kind: HoldKind::Exec.into(),
        agent: "claude".into(),
        cgroup: "keyturn/claude".into(),
        pid: 4242,
        uid: 1001,
        user: "agent".into(),
        requested_at_ms: now,
        policy: "default".into(),
        policy_rule: "exec path \"/usr/bin/curl\" action Hold".into(),
        deadline_ms: now + 600_000,
        requester: "alice".into(),
        quorum: 1,
        in_console: false,
        notify: vec![],
        detail: Some(hold_raised::Detail::Exec(Exec {
            path: "/usr/bin/curl".into(),
            argv: vec!["curl".into(), "-T".into(), "dump.sql".into()],
            cwd: "/home/agent".into(),
            sha256: "ab".repeat(32),
            parents: vec![],
        })),
    }
}

/// An egress hold of a connection to 203.0.113.7:443, due in ten minutes.
pub fn egress_hold(id: &str, nonce: u64) -> HoldRaised {
    HoldRaised {
        kind: HoldKind::Egress.into(),
        policy_rule: "egress default action Hold".into(),
        detail: Some(hold_raised::Detail::Egress(Egress {
            protocol: "tcp".into(),
            address: "203.0.113.7".into(),
            port: 443,
            domain: String::new(),
        })),
        ..hold(id, nonce)
    }
}

/// Waits until the console has stored `hold_id` of `host`.
pub async fn stored(store: &Store, host: &str, hold_id: &str) -> console::store::HoldRecord {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(record) = store.hold(host, hold_id).await.unwrap() {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the hold reached the console")
}
