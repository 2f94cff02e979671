//! Names: a lookup of an allowed name straight to the upstream (an untagged worker) and
//! through keyturn's resolver (a tagged one, whose query the kernel redirects), side by
//! side; a connect to that name's address, decided in the kernel by the name's rule; and
//! memory for 10,000 names recorded across 100 agents.

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use agent_common::{EgressRule, Tag};
use keyturn::{
    dns::{NameBook, Resolver, name::Name},
    kernel::names::NameMaps,
    policy::{KernelPolicy, Verdict, file},
};

use crate::{
    Result, SETTLE, TIMEOUT, WARMUP,
    fixtures::{BenchCgroups, Loaded, Pins, listen, reset_on_close, spawn_worker},
    report::{kib, micros, nanos, percentile},
};

/// The upstream: dnsmasq on an address of its own on loopback, answering every name
/// under `bench.test` with [`NAMED_ADDR`].
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
/// The address the bench's names resolve to: allowed only by name.
const NAMED_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 78);
const NAMED_POLICY: u32 = 3;
const POLICY: &str =
    "[[egress]]\ndomain = \"*.bench.test\"\naction = \"allow\"\n[egress_default]\naction = \"deny\"\n";
const BATCHES: usize = 5;
const LOOKUPS: usize = 200;
const CONNECTS: usize = 2_000;

pub struct Names {
    direct: Vec<u64>,
    through: Vec<u64>,
    connect_plain: Vec<u64>,
    connect_named: Vec<u64>,
    map_memlock: u64,
    book_bytes: u64,
}

/// dnsmasq, killed on drop.
struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn measure_names(pins: &Pins, cgroups: &BenchCgroups) -> Result<Names> {
    let upstream = Upstream(
        Command::new("dnsmasq")
            .args(["--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .arg(format!("--listen-address={UPSTREAM}"))
            .arg(format!("--address=/bench.test/{NAMED_ADDR}"))
            .args(["--local-ttl=3600", "--log-facility=/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start dnsmasq: {e}"))?,
    );
    let mut loaded = Loaded::tagged(pins, cgroups)?;
    let policy = file::parse("bench-names", "bench-names.toml", POLICY)?;
    // No daemon judges the worker's exec here: the kernel lets it run.
    let kernel = KernelPolicy { exec_default: Verdict::Allow, ..policy.kernel.clone() };
    loaded.enforcer().set_policy(NAMED_POLICY, &kernel)?;
    loaded.enforcer().tag(&cgroups.dir("named"), Tag { policy: NAMED_POLICY, max_pending: 16 })?;
    let runtime = tokio::runtime::Runtime::new()?;
    let table = Arc::new(HashMap::from([(NAMED_POLICY, Arc::new(policy))]));
    let (_publish, policies) = tokio::sync::watch::channel(table);
    let resolver = runtime.block_on(Resolver::start(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        &[SocketAddr::new(UPSTREAM.into(), 53)],
        NameMaps::open(&pins.0)?,
        policies,
        // No daemon decides: a held lookup would be refused (the bench's names are allowed).
        tokio::sync::mpsc::channel(1).0,
    ))?;
    loaded.enforcer().set_resolver(Some(resolver.listening()))?;
    wait_for_upstream()?;
    thread::sleep(SETTLE);

    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        direct.extend(worker(&cgroups.dir("plain"), &["lookups", &LOOKUPS.to_string()])?);
        through.extend(worker(&cgroups.dir("named"), &["lookups", &LOOKUPS.to_string()])?);
    }
    let port = listen(NAMED_ADDR)?.to_string();
    let (mut connect_plain, mut connect_named) = (Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        connect_plain.extend(worker(&cgroups.dir("plain"), &["connects", &port, &CONNECTS.to_string()])?);
        connect_named.extend(worker(&cgroups.dir("named"), &["connects", &port, &CONNECTS.to_string()])?);
    }
    let (map_memlock, book_bytes) = names_memory(pins)?;
    drop(upstream);
    loaded.unload()?;
    Ok(Names { direct, through, connect_plain, connect_named, map_memlock, book_bytes })
}

fn wait_for_upstream() -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while lookup(&SocketAddr::new(UPSTREAM.into(), 53)).is_err() {
        if Instant::now() > deadline {
            return Err("dnsmasq did not answer".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs `bench worker dns ARGS…` in the cgroup at `dir`: its samples, in nanoseconds.
fn worker(dir: &std::path::Path, args: &[&str]) -> Result<Vec<u64>> {
    let mut full = vec!["dns"];
    full.extend_from_slice(args);
    let mut child = spawn_worker(dir, &full, Stdio::null())?;
    let mut out = String::new();
    child.stdout.take().ok_or("worker stdout")?.read_to_string(&mut out)?;
    if !child.wait()?.success() {
        return Err(format!("dns worker {args:?} failed: {out}").into());
    }
    Ok(out.lines().filter_map(|line| line.parse().ok()).collect())
}

/// One lookup of `api.bench.test` (type A) at `server`, as a resolver library makes it:
/// a new UDP socket, connected, one query, one answer.
fn lookup(server: &SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.connect(server)?;
    let mut query = vec![0x4b, 0x54, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["api", "bench", "test"] {
        query.push(u8::try_from(label.len())?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send(&query)?;
    let mut reply = [0u8; 512];
    let len = socket.recv(&mut reply)?;
    if len < 12 || reply[..2] != query[..2] || reply[3] & 0x0f != 0 {
        return Err(format!("bad answer: {:?}", &reply[..len.min(12)]).into());
    }
    Ok(())
}

/// The worker: `lookups N` (timed lookups, the upstream's address asked directly) or
/// `connects PORT N` (one lookup, then timed connects to the name's address); prints one
/// sample per line.
pub fn dns_worker(args: &[String]) -> Result<()> {
    let server = SocketAddr::new(UPSTREAM.into(), 53);
    let mut samples = Vec::new();
    match args {
        [kind, count] if kind == "lookups" => {
            for i in 0..WARMUP + count.parse::<usize>()? {
                let started = Instant::now();
                lookup(&server)?;
                if i >= WARMUP {
                    samples.push(nanos(started.elapsed()));
                }
            }
        }
        [kind, port, count] if kind == "connects" => {
            lookup(&server)?;
            let to = SocketAddr::new(IpAddr::V4(NAMED_ADDR), port.parse()?);
            for i in 0..WARMUP + count.parse::<usize>()? {
                let started = Instant::now();
                let stream = TcpStream::connect(to)?;
                if i >= WARMUP {
                    samples.push(nanos(started.elapsed()));
                }
                reset_on_close(&stream);
            }
        }
        _ => return Err("usage: bench worker dns lookups N | connects PORT N".into()),
    }
    let text = samples.iter().map(u64::to_string).collect::<Vec<_>>().join("\n");
    println!("{text}");
    Ok(())
}

/// `RESOLVED`'s kernel memory (allocated whole at load), and what 10,000 names across 100
/// agents add to the resolver's book of names.
fn names_memory(pins: &Pins) -> Result<(u64, u64)> {
    let mut maps = NameMaps::open(&pins.0)?;
    let book = NameBook::default();
    let before = heap_bytes();
    for i in 0..10_000u32 {
        let (root, addr) = (u64::from(i % 100) + 1, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        let name = Name::parse(&format!("host-{i}.agent-{}.bench.test", i % 100))?;
        book.note(root, addr, &name, Duration::from_hours(1));
        maps.record(root, addr, Duration::from_hours(1), EgressRule::default())?;
    }
    let book_bytes = heap_bytes().saturating_sub(before);
    let resolved = aya::maps::MapData::from_pin(pins.0.join("RESOLVED"))?;
    let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{}", resolved.fd().as_fd().as_raw_fd()))?;
    let memlock = fdinfo.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok());
    Ok((memlock.unwrap_or(0), book_bytes))
}

/// Bytes the allocator has handed out and not taken back: unlike the resident set, it
/// grows with what the book allocates even where the heap reuses pages freed earlier.
fn heap_bytes() -> u64 {
    // SAFETY: glibc's mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    u64::try_from(info.uordblks).unwrap_or(u64::MAX)
}

pub fn print_names(names: &Names) {
    let added = |q| percentile(&names.through, q).saturating_sub(percentile(&names.direct, q));
    println!(
        "\nnames: a lookup of an allowed name, {} each side, untagged straight to the upstream vs tagged through keyturn",
        names.direct.len()
    );
    for q in [50, 99] {
        println!(
            "  p{q}: direct {}  through keyturn {}  added {}",
            micros(percentile(&names.direct, q)),
            micros(percentile(&names.through, q)),
            micros(added(q)),
        );
    }
    println!("  target p99 added <= 1 ms: {}", crate::report::verdict(added(99) <= 1_000_000));
    println!(
        "  connect to the name's address (kernel-decided by the name's rule) vs untagged, p50: {} vs {}",
        micros(percentile(&names.connect_named, 50)),
        micros(percentile(&names.connect_plain, 50))
    );
    println!(
        "  memory for 10,000 names across 100 agents: RESOLVED map {} (allocated at load, 65,536 entries), \
         the resolver's book of names +{}",
        kib(names.map_memlock),
        kib(names.book_bytes)
    );
}
