//! Fixtures for keyturn's privileged integration tests: a loaded enforcer with its own
//! pins, throw-away tagged cgroups, a peer host in its own network namespace, and the
//! `actor` process that performs real syscalls. Everything cleans itself up on drop.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub mod daemon;
pub mod embedded;
pub mod nameserver;
pub mod oidc;
pub mod runtimes;
pub mod slack;
pub mod teams;
pub mod web;
pub mod working_day;

use agent_common::{HoldKey, Tag};
use keyturn::{
    cgroup::{self, Hierarchy},
    hold::table::{Happened, Holds},
    kernel::mode::Mode,
    kernel::{Enforcer, Options},
    policy::{EgressSpec, FileId, KernelPolicy, Verdict, kernel::Cidr},
};
use nix::{
    fcntl::{Flock, FlockArg},
    sys::signal::Signal,
    unistd::Pid,
};

/// The longest the tests wait for something that must happen. Generous: under software
/// emulation on a busy host, a daemon round trip can take seconds.
pub const WAIT: Duration = Duration::from_secs(30);

/// A vendor's own code as a judge: `judge` run with `input` as JSON on its standard input,
/// its verdict read as JSON from its standard output.
pub fn judged(mut judge: Command, input: &serde_json::Value) -> serde_json::Value {
    let what = format!("{judge:?}");
    let mut child = judge
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run the judge {what}: {e}"));
    let input = serde_json::to_vec(input).expect("the judge's input");
    child.stdin.take().expect("stdin").write_all(&input).expect("feed the judge");
    let out = child.wait_with_output().expect("the judge");
    assert!(
        out.status.success(),
        "the judge {what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("the judge's verdict")
}
/// How long a test watches for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

static SERIAL: AtomicU32 = AtomicU32::new(1);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100_000, SERIAL.fetch_add(1, Ordering::Relaxed))
}

/// The mode under test: `KEYTURN_TEST_MODE`, else what the kernel offers.
pub fn test_mode() -> Option<Mode> {
    std::env::var("KEYTURN_TEST_MODE").ok().map(|m| m.parse().expect("KEYTURN_TEST_MODE"))
}

/// A loaded enforcer with pins of its own, plus the user-space hold bookkeeping.
pub struct Kernel {
    enforcer: Option<Enforcer>,
    pub holds: Holds,
    pub pin_dir: PathBuf,
    /// Events handled but not yet asked for: (tgid, what happened).
    backlog: Vec<(u32, Happened)>,
}

impl Kernel {
    pub fn load() -> Self {
        Self::load_with(|_| {})
    }

    pub fn load_with(adjust: impl FnOnce(&mut Options)) -> Self {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", unique("kt-test-")));
        let mut options = Options { mode: test_mode(), pin_dir: pin_dir.clone(), ..Options::default() };
        options.liveness_timeout = Duration::from_mins(10);
        adjust(&mut options);
        let enforcer = Enforcer::load(&options).expect("load keyturn's programs");
        Self { enforcer: Some(enforcer), holds: Holds::default(), pin_dir, backlog: Vec::new() }
    }

    /// Loads again from the same pins, as a restarted daemon does; `self` is dropped
    /// without detaching anything.
    #[must_use]
    pub fn restart(mut self) -> Self {
        let pin_dir = self.pin_dir.clone();
        drop(self.enforcer.take());
        std::mem::forget(self);
        let options = Options {
            mode: test_mode(),
            pin_dir: pin_dir.clone(),
            liveness_timeout: Duration::from_mins(10),
            ..Options::default()
        };
        Self {
            enforcer: Some(Enforcer::load(&options).expect("reload")),
            holds: Holds::default(),
            pin_dir,
            backlog: Vec::new(),
        }
    }

    pub fn enforcer(&mut self) -> &mut Enforcer {
        self.enforcer.as_mut().expect("loaded")
    }

    pub fn tag(&mut self, cgroup: &TestCgroup, policy: u32, max_pending: u32) {
        self.enforcer().tag(&cgroup.dir, Tag { policy, max_pending }).expect("tag");
    }

    pub fn set_policy(&mut self, id: u32, policy: &KernelPolicy) {
        self.enforcer().set_policy(id, policy).expect("set policy");
    }

    /// Feeds kernel events to `holds` until one about process `tgid` arrives. Every new
    /// hold is readied for a long wait, as the daemon does with those a person decides.
    pub fn expect_event(&mut self, tgid: u32) -> Happened {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = self.backlog.iter().position(|(pid, _)| *pid == tgid) {
                return self.backlog.remove(at).1;
            }
            assert!(Instant::now() < deadline, "no event for process {tgid} within {WAIT:?}");
            for event in self.enforcer().wait_events(Duration::from_millis(100)) {
                let enforcer = self.enforcer.as_mut().expect("loaded");
                let happened = self.holds.on_event(enforcer, &event).expect("handle event");
                if let Happened::Held(key) = &happened {
                    self.holds.park(*key);
                }
                self.backlog.push((event.tgid, happened));
            }
        }
    }

    /// Waits for the hold of process `tgid` and returns its key.
    pub fn expect_hold(&mut self, tgid: u32) -> HoldKey {
        match self.expect_event(tgid) {
            Happened::Held(key) => key,
            other => panic!("expected a hold of {tgid}, got {other:?}"),
        }
    }

    pub fn approve(&mut self, key: &HoldKey) {
        let enforcer = self.enforcer.as_mut().expect("loaded");
        self.holds.approve(enforcer, *key).expect("approve");
    }

    pub fn deny(&mut self, key: &HoldKey, on_deny: keyturn::hold::process::OnDeny) {
        let enforcer = self.enforcer.as_mut().expect("loaded");
        self.holds.deny(enforcer, *key, on_deny).expect("deny");
    }

    pub fn counter(&mut self, index: u32) -> u64 {
        self.enforcer().counters().expect("counters")[index as usize]
    }

    /// The kernel side as a failure message shows it: every counter and hold record.
    pub fn state(&mut self) -> String {
        let counters = self.enforcer().counters().expect("counters");
        let records: Vec<String> = self
            .enforcer()
            .holds()
            .expect("holds")
            .iter()
            .map(|(key, hold)| {
                format!("{}/{}: state {} type {}", key.tgid, key.tid, hold.state, hold.event_type)
            })
            .collect();
        format!("counters {counters:?}, hold records [{}]", records.join(", "))
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Some(enforcer) = self.enforcer.take() {
            let _ = enforcer.uninstall();
        }
    }
}

/// A child cgroup of the cgroup v2 root for one test; its processes are killed and the
/// cgroup removed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        let hierarchy = Hierarchy::find().expect("cgroup v2 mounted");
        let dir = hierarchy.root().join(unique("kt-test-"));
        cgroup::create(&dir).expect("create test cgroup");
        Self { dir }
    }

    /// A child cgroup of this one, created after tagging.
    #[must_use]
    pub fn child(&self, name: &str) -> Self {
        let dir = self.dir.join(name);
        cgroup::create(&dir).expect("create child cgroup");
        Self { dir }
    }

    pub fn id(&self) -> u64 {
        cgroup::id(&self.dir).expect("cgroup id")
    }

    /// Its path relative to the cgroup v2 root, as `keyturn tag` takes it.
    pub fn relative(&self) -> String {
        Hierarchy::find().expect("cgroup v2 mounted").relative(&self.dir)
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + WAIT;
        while cgroup::remove(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `actor` binary: `KEYTURN_ACTOR`, else the one cargo built beside the test binary
/// (`target/debug/actor` for `target/debug/deps/hold-…`).
pub fn actor_path() -> PathBuf {
    std::env::var_os("KEYTURN_ACTOR").map_or_else(
        || {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("actor")
        },
        PathBuf::from,
    )
}

/// Makes the process `command` starts enter the cgroup at `dir` before it execs.
pub fn enter_cgroup_on_exec(command: &mut Command, dir: &Path) -> std::io::Result<()> {
    let procs = fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
    // SAFETY: after fork, only a write(2) to a file opened before it.
    unsafe {
        command.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Spawns `command` as process `pid`, a pid that was just freed: `ns_last_pid` is set
/// to the pid before it, then the child checks what it got. Other processes on the host
/// may take the pid first, so this retries until `WAIT` has passed.
pub fn spawn_with_pid(command: &mut Command, pid: u32) -> Child {
    const MISSED: i32 = libc::EADDRINUSE;
    let wanted = i32::try_from(pid).expect("pid");
    // SAFETY: after fork, only getpid(2).
    unsafe {
        command.pre_exec(move || {
            if libc::getpid() == wanted { Ok(()) } else { Err(std::io::Error::from_raw_os_error(MISSED)) }
        });
    }
    let deadline = Instant::now() + WAIT;
    loop {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("write ns_last_pid");
        match command.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(MISSED) => {
                assert!(Instant::now() < deadline, "pid {pid} never came free again");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("spawn as pid {pid}: {e}"),
        }
    }
}

/// Starts `actor ARGS…` inside `cgroup` (or the test's own cgroup), stdout captured.
pub fn spawn_actor(cgroup: Option<&TestCgroup>, args: &[&str]) -> Child {
    let mut command = Command::new(actor_path());
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(cgroup) = cgroup {
        enter_cgroup_on_exec(&mut command, &cgroup.dir).expect("open cgroup.procs");
    }
    command.spawn().expect("spawn actor")
}

fn state_of(stat_file: &Path) -> Option<char> {
    keyturn::hold::procfs::stat_at(stat_file).map(|stat| char::from(stat.state))
}

/// The state letter of process `pid` (`T` stopped), or `None` once it is reaped.
pub fn process_state(pid: u32) -> Option<char> {
    state_of(Path::new(&format!("/proc/{pid}/stat")))
}

/// The state letters of every thread of `pid`.
pub fn thread_states(pid: u32) -> Vec<char> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.flatten().filter_map(|task| state_of(&task.path().join("stat"))).collect())
        .unwrap_or_default()
}

/// Whether process `pid` sits in a frozen cgroup (an exec held in `cgroup-sock` mode).
pub fn frozen(pid: u32) -> bool {
    Hierarchy::find()
        .and_then(|h| h.of_process(pid))
        .ok()
        .and_then(|dir| fs::read_to_string(dir.join("cgroup.events")).ok())
        .is_some_and(|events| events.lines().any(|l| l == "frozen 1"))
}

/// Whether `pid` is held: stopped, or frozen.
pub fn held(pid: u32) -> bool {
    process_state(pid) == Some('T') || frozen(pid)
}

/// Waits until `pid` is held (stopped, or frozen).
pub fn wait_held(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while !held(pid) {
        assert!(Instant::now() < deadline, "process {pid} not held, state {:?}", process_state(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `pid` is stopped (state `T`).
pub fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while process_state(pid) != Some('T') {
        assert!(Instant::now() < deadline, "process {pid} not stopped, state {:?}", process_state(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` to exit; returns its stdout and status.
pub fn finish(mut child: Child) -> (String, std::process::ExitStatus) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read stdout");
            return (out, status);
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not finish (state {:?})",
            child.id(),
            process_state(child.id())
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` to `pid` as an outsider would (not through keyturn).
pub fn rogue_signal(pid: u32, signal: i32) {
    let signal = Signal::try_from(signal).expect("a signal");
    nix::sys::signal::kill(self::pid(pid), signal).expect("kill");
}

/// A process id as nix takes it.
pub fn pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("pid"))
}

/// Bytes a listener on the peer received, and the TCP connections it accepted.
#[derive(Clone, Default)]
pub struct Received {
    bytes: Arc<Mutex<Vec<u8>>>,
    connections: Arc<AtomicU32>,
}

impl Received {
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().expect("lock").clone()
    }

    fn record(&self, bytes: &[u8]) {
        self.bytes.lock().expect("lock").extend_from_slice(bytes);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until `count` TCP connections were accepted.
    pub fn wait_connections(&self, count: u32) {
        let deadline = Instant::now() + WAIT;
        while self.connections() < count {
            assert!(
                Instant::now() < deadline,
                "peer accepted {} connections, not {count}",
                self.connections()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `expected` was received.
    pub fn wait_for(&self, expected: &str) {
        let deadline = Instant::now() + WAIT;
        while !String::from_utf8_lossy(&self.bytes()).contains(expected) {
            assert!(Instant::now() < deadline, "peer never received {expected:?}, got {:?}", self.bytes());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A host on the far side of a veth pair, in a network namespace of its own, with
/// addresses that exist only on this machine.
pub struct Peer {
    netns: String,
    /// Its end of the veth pair, in its namespace.
    veth: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub v4_net: Cidr,
    pub v6_net: Cidr,
    /// Keeps the peer's subnets this peer's alone while it lives (see [`claim_subnet`]).
    _subnet_lock: Flock<fs::File>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// Claims a subnet number `N` (`10.213.N.0/24`, `fd00:6b74:0:N::/64`) for a peer: one no
/// address on this host is in yet, locked against the peers of other test processes that
/// run beside this one (two routes to one subnet would send a test's packets to another's
/// peer). The lock lasts as long as the file returned.
fn claim_subnet() -> (u8, Flock<fs::File>) {
    let locks = Path::new("/run/keyturn-test-peers");
    fs::create_dir_all(locks).expect("create the peers' lock directory");
    let addresses = Command::new("ip").args(["-o", "-4", "addr"]).output().expect("run ip").stdout;
    let addresses = String::from_utf8_lossy(&addresses);
    let first = SERIAL.fetch_add(1, Ordering::Relaxed) + std::process::id();
    for offset in 0..250 {
        let serial = u8::try_from((first + offset) % 250 + 1).expect("below 251");
        if addresses.contains(&format!(" 10.213.{serial}.")) {
            continue;
        }
        let lock = fs::File::create(locks.join(serial.to_string())).expect("create a peer lock");
        if let Ok(lock) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            return (serial, lock);
        }
    }
    panic!("every subnet 10.213.1-250.0/24 is taken on this host");
}

impl Peer {
    pub fn new() -> Self {
        let (serial, subnet_lock) = claim_subnet();
        let netns = unique("ktns");
        let (host_if, peer_if) = (unique("kth"), unique("ktp"));
        ip(&["netns", "add", &netns]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &netns]);
        let (v4_host, v4) = (format!("10.213.{serial}.1"), Ipv4Addr::new(10, 213, serial, 2));
        let v6_host = format!("fd00:6b74:0:{serial:x}::1");
        let v6: Ipv6Addr = format!("fd00:6b74:0:{serial:x}::2").parse().expect("v6");
        ip(&["addr", "add", &format!("{v4_host}/24"), "dev", &host_if]);
        ip(&["addr", "add", &format!("{v6_host}/64"), "dev", &host_if, "nodad"]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &netns, "addr", "add", &format!("{v4}/24"), "dev", &peer_if]);
        ip(&["-n", &netns, "addr", "add", &format!("{v6}/64"), "dev", &peer_if, "nodad"]);
        ip(&["-n", &netns, "link", "set", &peer_if, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        Self {
            netns,
            veth: peer_if,
            v4,
            v6,
            v4_net: format!("10.213.{serial}.0/24").parse().expect("cidr"),
            v6_net: format!("fd00:6b74:0:{serial:x}::/64").parse().expect("cidr"),
            _subnet_lock: subnet_lock,
        }
    }

    /// Gives the peer another IPv4 address, `10.213.N.host`, and returns it.
    pub fn add_v4(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.v4.octets();
        let addr = Ipv4Addr::new(a, b, c, host);
        ip(&["-n", &self.netns, "addr", "add", &format!("{addr}/24"), "dev", &self.veth]);
        addr
    }

    /// A command that runs `program` inside the peer's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// Runs `f` on a thread that lives in the peer's namespace.
    fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            let ns = fs::File::open(&path).expect("open netns");
            // Moves only this thread into the namespace.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// A TCP listener on the peer at `addr:port`, recording every byte it receives.
    pub fn tcp(&self, addr: IpAddr, port: u16) -> Received {
        self.serve_tcp(addr, port, None)
    }

    /// An HTTP server on the peer at `addr:port`, recording every byte it receives: each
    /// request (once its headers are in) gets `200 OK` with `body`, and the connection is
    /// closed.
    pub fn http(&self, addr: IpAddr, port: u16, body: &str) -> Received {
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        self.serve_tcp(addr, port, Some(answer))
    }

    /// A TCP listener recording what it receives, and sending `answer` once a request's
    /// headers are in, if there is one.
    fn serve_tcp(&self, addr: IpAddr, port: u16, answer: Option<String>) -> Received {
        let received = Received::default();
        let sink = received.clone();
        let listener = self.in_netns(move || {
            let listener = TcpListener::bind((addr, port)).expect("bind tcp");
            // SAFETY: enables TCP fast open on the listener (queue of 16).
            unsafe {
                let qlen: libc::c_int = 16;
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_FASTOPEN,
                    (&raw const qlen).cast(),
                    4,
                );
            }
            listener
        });
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                sink.connections.fetch_add(1, Ordering::SeqCst);
                let (sink, answer) = (sink.clone(), answer.clone());
                std::thread::spawn(move || {
                    let (mut buf, mut request) = ([0u8; 4096], Vec::new());
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        sink.record(&buf[..n]);
                        request.extend_from_slice(&buf[..n]);
                        if let Some(answer) = &answer
                            && request.windows(4).any(|w| w == b"\r\n\r\n")
                        {
                            let _ = stream.write_all(answer.as_bytes());
                            break;
                        }
                    }
                });
            }
        });
        received
    }

    /// A UDP socket on the peer at `addr:port`, recording every datagram.
    pub fn udp(&self, addr: IpAddr, port: u16) -> Received {
        let received = Received::default();
        let sink = received.clone();
        let socket = self.in_netns(move || UdpSocket::bind((addr, port)).expect("bind udp"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.record(&buf[..n]);
            }
        });
        received
    }
}

impl Default for Peer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// A policy that holds egress to the peer's networks and the exec of `flagged`, and
/// allows everything else.
pub fn hold_peer_policy(peer: &Peer, flagged: &[PathBuf]) -> KernelPolicy {
    let hold = |cidr: Cidr| EgressSpec {
        cidr,
        ports: vec![],
        protocol: 0,
        verdict: Verdict::Hold,
        quorum: 1,
        in_console: false,
        notify: vec![],
    };
    KernelPolicy {
        exec_default: Verdict::Allow,
        egress_default: Verdict::Allow,
        executables: flagged.iter().map(|p| (FileId::of(p).expect("stat flagged"), Verdict::Hold)).collect(),
        egress: vec![hold(peer.v4_net), hold(peer.v6_net)],
    }
}

/// A loopback address with a port free right now, for a server a test starts.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}
