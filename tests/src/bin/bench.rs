//! `cargo xtask bench`: what keyturn costs the processes it watches (exec, connect), how
//! fast a hold reaches user space and lets go, and its memory at 1,000 tagged cgroups.

use std::{
    error::Error,
    fs,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use agent_common::{HoldEvent, Tag, event_type, protocol};
use keyturn::{
    cgroup::{self, Hierarchy},
    hold::process::HeldProcess,
    kernel::{Enforcer, Options, error_chain, monotonic_ns},
    policy::{EgressSpec, KernelPolicy, Verdict},
};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Interleaved rounds; each runs one batch of every variant.
const ROUNDS: usize = 60;
/// Timed operations per batch.
const EXEC_OPS: usize = 100;
const CONNECT_OPS: usize = 1000;
/// Untimed operations at the start of each batch and hold series.
const WARMUP: usize = 10;
const HOLD_SAMPLES: usize = 300;
const MANY_CGROUPS: usize = 1000;
/// Longest wait for anything that must happen.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a load and an unload: the kernel frees detached links and maps after
/// the call returns, and no batch should pay for either.
const SETTLE: Duration = Duration::from_millis(50);

const ALLOWED_POLICY: u32 = 1;
const HOLD_POLICY: u32 = 2;
/// The held connect's destination: loopback, but outside the allowed listener's address.
const HELD_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Under which conditions the exec and connect batches run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// keyturn not loaded at all.
    None,
    /// keyturn loaded; the worker's cgroup is not tagged.
    Untagged,
    /// The worker's cgroup is tagged with a policy the kernel allows the actions under.
    Tagged,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::None => "no keyturn",
            Variant::Untagged => "untagged",
            Variant::Tagged => "tagged, allowed",
        }
    }

    fn cgroup(self) -> &'static str {
        if self == Variant::Tagged { "tagged" } else { "plain" }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((first, rest)) if first == "worker" => worker(rest),
        _ => bench(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// The worker: a child process whose cgroup decides what keyturn does with its actions.

fn worker(args: &[String]) -> Result<()> {
    match args {
        [kind, port] if kind == "hold" => hold_worker(port.parse()?),
        [kind, dir, count] if kind == "judge" => judge_worker(Path::new(dir), count.parse()?),
        [kind, port, execs, connects] if kind == "ops" => {
            ops_worker(port.parse()?, execs.parse()?, connects.parse()?)
        }
        _ => Err("usage: bench worker ops PORT EXECS CONNECTS | hold PORT | judge DIR COUNT".into()),
    }
}

/// Times `execs` spawns of /bin/true and `connects` loopback connects to `port`; prints
/// the nanoseconds of each, one line per kind.
fn ops_worker(port: u16, execs: usize, connects: usize) -> Result<()> {
    let exec = time_ops(execs, spawn_true)?;
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let connect = time_ops(connects, || connect_close(to))?;
    let line = |samples: &[u64]| samples.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    println!("{}\n{}", line(&exec), line(&connect));
    Ok(())
}

fn time_ops(count: usize, mut op: impl FnMut() -> Result<()>) -> Result<Vec<u64>> {
    for _ in 0..WARMUP {
        op()?;
    }
    (0..count)
        .map(|_| {
            let start = Instant::now();
            op()?;
            Ok(nanos(start.elapsed()))
        })
        .collect()
}

/// Times the spawn of each of the `count` programs `DIR/program-N` twice: first seen (the
/// daemon judges it) and then judged (the kernel decides it). Prints one line of each.
fn judge_worker(dir: &Path, count: usize) -> Result<()> {
    let programs: Vec<std::ffi::CString> = (0..count)
        .map(|n| {
            std::ffi::CString::new(dir.join(format!("program-{n}")).into_os_string().into_encoded_bytes())
        })
        .collect::<std::result::Result<_, _>>()?;
    let line = |samples: &[u64]| samples.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    for _ in 0..2 {
        let mut samples = Vec::with_capacity(count);
        for program in &programs {
            let start = Instant::now();
            spawn_wait(program)?;
            samples.push(nanos(start.elapsed()));
        }
        println!("{}", line(&samples));
    }
    Ok(())
}

/// `posix_spawn` of /bin/true and `waitpid` for it.
fn spawn_true() -> Result<()> {
    spawn_wait(c"/bin/true")
}

/// `posix_spawn` of `program` with no arguments, and `waitpid` for it.
fn spawn_wait(program: &std::ffi::CStr) -> Result<()> {
    let argv = [program.as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [std::ptr::null_mut()];
    let mut pid = 0;
    // SAFETY: NUL-terminated argv and envp that outlive the call; no file actions or
    // attributes.
    let rc = unsafe {
        libc::posix_spawn(
            &raw mut pid,
            program.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(format!("posix_spawn {program:?}: {}", io::Error::from_raw_os_error(rc)).into());
    }
    let mut status = 0;
    // SAFETY: waits for the child just spawned.
    if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid || status != 0 {
        return Err(format!("{program:?} failed: wait status {status:#x}").into());
    }
    Ok(())
}

fn connect_close(to: SocketAddrV4) -> Result<()> {
    let stream = TcpStream::connect(to).map_err(|e| format!("connect to {to}: {e}"))?;
    reset_on_close(&stream);
    Ok(())
}

/// `SO_LINGER` 0: closing sends a reset instead of leaving the port in `TIME_WAIT`, so a
/// hundred thousand connects neither exhaust ephemeral ports nor slow the run down.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let size = libc::socklen_t::try_from(size_of::<libc::linger>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: a valid linger struct of the given size on an open socket.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size,
        );
    }
}

/// For every byte on stdin, connects to `HELD_ADDR:port` (held until released) and prints
/// `CLOCK_MONOTONIC` right after the connect returned.
fn hold_worker(port: u16) -> Result<()> {
    let to = SocketAddrV4::new(HELD_ADDR, port);
    let mut go = [0u8; 1];
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    while stdin.read(&mut go)? == 1 {
        let stream = TcpStream::connect(to).map_err(|e| format!("connect to {to}: {e}"))?;
        let running = monotonic_ns();
        writeln!(stdout, "{running}")?;
        stdout.flush()?;
        reset_on_close(&stream);
    }
    Ok(())
}

// The measuring side.

/// The bench's cgroups under the cgroup v2 root: `plain` (never tagged), `tagged`, `held`
/// and `many` (parent of the memory test's cgroups). Killed and removed on drop.
struct BenchCgroups {
    root: PathBuf,
}

impl BenchCgroups {
    fn create() -> Result<Self> {
        let root = Hierarchy::find()?.root().join(format!("kt-bench-{}", std::process::id()));
        cgroup::create(&root)?;
        let cgroups = Self { root };
        for name in ["plain", "tagged", "held", "many"] {
            cgroup::create(&cgroups.dir(name))?;
        }
        Ok(cgroups)
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for BenchCgroups {
    fn drop(&mut self) {
        let _ = fs::write(self.root.join("cgroup.kill"), "1");
        let deadline = Instant::now() + TIMEOUT;
        while cgroup::remove(&self.root).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The bench's own bpffs directory. Removed on drop, which detaches whatever an
/// interrupted run left pinned there.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// keyturn loaded with the bench's pins; uninstalled on drop, so nothing stays attached.
struct Loaded(Option<Enforcer>);

impl Loaded {
    /// Loads keyturn with the allowing policy and tags the `tagged` cgroup.
    fn tagged(pins: &Pins, cgroups: &BenchCgroups) -> Result<Self> {
        let options =
            Options { pin_dir: pins.0.clone(), liveness_timeout: TIMEOUT * 60, ..Options::default() };
        let enforcer = Enforcer::load(&options).map_err(|e| format!("load keyturn: {}", error_chain(&e)))?;
        let mut loaded = Self(Some(enforcer));
        loaded.enforcer().set_policy(ALLOWED_POLICY, &allowed_policy()?)?;
        loaded.enforcer().tag(&cgroups.dir("tagged"), Tag { policy: ALLOWED_POLICY, max_pending: 16 })?;
        thread::sleep(SETTLE);
        Ok(loaded)
    }

    fn enforcer(&mut self) -> &mut Enforcer {
        self.0.as_mut().expect("loaded until unloaded")
    }

    fn unload(mut self) -> Result<()> {
        let enforcer = self.0.take().expect("loaded until unloaded");
        enforcer.uninstall().map_err(|e| format!("uninstall keyturn: {}", error_chain(&e)))?;
        thread::sleep(SETTLE);
        Ok(())
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(enforcer) = self.0.take() {
            let _ = enforcer.uninstall();
        }
    }
}

/// Exec allowed by default; egress allowed to loopback by a rule, denied elsewhere.
fn allowed_policy() -> Result<KernelPolicy> {
    Ok(KernelPolicy {
        exec_default: Verdict::Allow,
        egress_default: Verdict::Deny,
        executables: vec![],
        egress: vec![EgressSpec {
            cidr: "127.0.0.0/8".parse()?,
            ports: vec![],
            protocol: protocol::ANY,
            verdict: Verdict::Allow,
            quorum: 1,
        }],
    })
}

/// Holds TCP to `HELD_ADDR:port`, allows everything else.
fn hold_policy(port: u16) -> Result<KernelPolicy> {
    Ok(KernelPolicy {
        exec_default: Verdict::Allow,
        egress_default: Verdict::Allow,
        executables: vec![],
        egress: vec![EgressSpec {
            cidr: format!("{HELD_ADDR}/32").parse()?,
            ports: vec![(port, port)],
            protocol: protocol::TCP,
            verdict: Verdict::Hold,
            quorum: 1,
        }],
    })
}

/// A loopback listener on `addr` that accepts and closes every connection on a thread
/// of its own; returns its port.
fn listen(addr: Ipv4Addr) -> Result<u16> {
    let listener = TcpListener::bind((addr, 0))?;
    // A deep accept queue: a connect never waits for the accepting thread.
    // SAFETY: listen(2) again on a listening socket only changes its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    let port = listener.local_addr()?.port();
    thread::spawn(move || listener.incoming().for_each(drop));
    Ok(port)
}

/// Starts `bench worker ARGS…` inside the cgroup at `dir`.
fn spawn_worker(dir: &Path, args: &[&str], stdin: Stdio) -> Result<Child> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("worker").args(args).stdin(stdin).stdout(Stdio::piped());
    tests::enter_cgroup_on_exec(&mut command, dir)?;
    Ok(command.spawn()?)
}

/// Per-operation nanoseconds of one variant, one batch per round.
type Series = Vec<Vec<u64>>;

/// The exec and connect series of every variant, indexed by `Variant as usize`, with the
/// in-kernel time of keyturn's programs.
#[derive(Default)]
struct Overhead {
    exec: [Series; 3],
    connect: [Series; 3],
    programs: ProgramTimes,
    /// Other keyturn instances with global programs attached during a `None` batch.
    foreign: Vec<PathBuf>,
}

impl Overhead {
    /// Runs one worker batch of `variant`.
    fn batch(&mut self, variant: Variant, cgroups: &BenchCgroups, pins: &Pins, port: u16) -> Result<()> {
        if variant == Variant::None {
            self.foreign.extend(foreign_keyturns(&pins.0));
        }
        let (exec, connect) = run_batch(variant, cgroups, port)?;
        self.exec[variant as usize].push(exec);
        self.connect[variant as usize].push(connect);
        Ok(())
    }
}

/// Runs a worker in the cgroup of `variant`; returns its exec and connect times.
fn run_batch(variant: Variant, cgroups: &BenchCgroups, port: u16) -> Result<(Vec<u64>, Vec<u64>)> {
    let (port, execs, connects) = (port.to_string(), EXEC_OPS.to_string(), CONNECT_OPS.to_string());
    let child =
        spawn_worker(&cgroups.dir(variant.cgroup()), &["ops", &port, &execs, &connects], Stdio::null())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(format!("{} worker failed: {}", variant.label(), output.status).into());
    }
    let text = String::from_utf8(output.stdout)?;
    let mut lines = text.lines().map(|line| line.split(' ').map(str::parse).collect::<Result<Vec<u64>, _>>());
    let (Some(exec), Some(connect)) = (lines.next(), lines.next()) else {
        return Err(format!("{} worker printed {text:?}", variant.label()).into());
    };
    Ok((exec?, connect?))
}

/// Pin directories, other than `own`, of keyturn instances whose global programs are
/// attached: they run for every exec on the host, with or without the bench's keyturn.
fn foreign_keyturns(own: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/fs/bpf") else { return Vec::new() };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| {
            dir != own && fs::read_dir(dir.join("links/global")).is_ok_and(|mut links| links.next().is_some())
        })
        .collect()
}

/// Rounds of none, load, untagged, tagged, unload; every other round reversed, so no
/// variant always follows a load or an unload.
fn measure_overhead(
    cgroups: &BenchCgroups,
    pins: &Pins,
    port: u16,
    programs: ProgramTimes,
) -> Result<Overhead> {
    let mut overhead = Overhead { programs, ..Overhead::default() };
    for round in 0..ROUNDS {
        let forward = round % 2 == 0;
        if forward {
            overhead.batch(Variant::None, cgroups, pins, port)?;
        }
        let loaded = Loaded::tagged(pins, cgroups)?;
        let order =
            if forward { [Variant::Untagged, Variant::Tagged] } else { [Variant::Tagged, Variant::Untagged] };
        for variant in order {
            overhead.batch(variant, cgroups, pins, port)?;
        }
        loaded.unload()?;
        if !forward {
            overhead.batch(Variant::None, cgroups, pins, port)?;
        }
    }
    overhead.foreign.sort();
    overhead.foreign.dedup();
    Ok(overhead)
}

/// `BPF_PROG_TYPE_*` of keyturn's exec programs (`tp_btf`) and of its egress programs.
const PROG_TYPE_TRACING: u64 = 26;
const PROG_TYPE_CGROUP_SOCK_ADDR: u64 = 18;

/// Run time and run count of BPF programs.
#[derive(Clone, Copy, Default)]
struct ProgramTime {
    ns: u64,
    runs: u64,
}

impl ProgramTime {
    fn since(self, before: Self) -> Self {
        Self { ns: self.ns - before.ns, runs: self.runs - before.runs }
    }
}

/// In-kernel time of keyturn's programs in one batch of each variant, by operation.
#[derive(Default)]
struct ProgramTimes {
    exec: [ProgramTime; 3],
    connect: [ProgramTime; 3],
}

/// Turns on the kernel's BPF run-time statistics until the returned fd is closed.
fn enable_bpf_stats() -> Result<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    // union bpf_attr with enable_stats.type = BPF_STATS_RUN_TIME (0).
    let attr = [0u64; 2];
    // SAFETY: bpf(2) reads `size` bytes of a valid attr.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), size_of_val(&attr)) };
    let fd = i32::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| format!("BPF_ENABLE_STATS: {}", io::Error::last_os_error()))?;
    // SAFETY: a fresh fd this function owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Summed statistics of the BPF programs of `prog_type` this process holds: its keyturn's.
fn program_time(prog_type: u64) -> Result<ProgramTime> {
    let mut total = ProgramTime::default();
    for entry in fs::read_dir("/proc/self/fdinfo")?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else { continue };
        let field = |name: &str| {
            info.lines().find_map(|line| line.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("prog_type:") == Some(prog_type) {
            total.ns += field("run_time_ns:").unwrap_or(0);
            total.runs += field("run_cnt:").unwrap_or(0);
        }
    }
    Ok(total)
}

/// With keyturn loaded and BPF statistics on, runs one more batch of each loaded variant and
/// records how long keyturn's programs ran in the kernel: the overhead without the noise.
fn measure_program_time(cgroups: &BenchCgroups, port: u16) -> Result<ProgramTimes> {
    let _stats = enable_bpf_stats()?;
    let mut times = ProgramTimes::default();
    for variant in [Variant::Untagged, Variant::Tagged] {
        let before = [program_time(PROG_TYPE_TRACING)?, program_time(PROG_TYPE_CGROUP_SOCK_ADDR)?];
        run_batch(variant, cgroups, port)?;
        times.exec[variant as usize] = program_time(PROG_TYPE_TRACING)?.since(before[0]);
        times.connect[variant as usize] = program_time(PROG_TYPE_CGROUP_SOCK_ADDR)?.since(before[1]);
    }
    Ok(times)
}

/// A process in the `held` cgroup making one held connect per byte it is sent.
struct HoldWorker {
    child: Child,
    go: ChildStdin,
    running: BufReader<ChildStdout>,
}

impl HoldWorker {
    fn spawn(dir: &Path, port: u16) -> Result<Self> {
        let mut child = spawn_worker(dir, &["hold", &port.to_string()], Stdio::piped())?;
        let go = child.stdin.take().expect("piped stdin");
        let running = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Self { child, go, running })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the worker ran again after its held connect, `CLOCK_MONOTONIC` nanoseconds.
    fn running_at(&mut self) -> Result<u64> {
        let mut line = String::new();
        self.running.read_line(&mut line)?;
        line.trim().parse().map_err(|_| format!("hold worker printed {line:?}").into())
    }
}

impl Drop for HoldWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nanoseconds from the hook to user space, and from the release call to the held
/// process running again.
#[derive(Default)]
struct HoldTimes {
    to_user: Vec<u64>,
    release: Vec<u64>,
}

fn measure_holds(loaded: &mut Loaded, cgroups: &BenchCgroups, port: u16) -> Result<HoldTimes> {
    let enforcer = loaded.enforcer();
    enforcer.set_policy(HOLD_POLICY, &hold_policy(port)?)?;
    enforcer.tag(&cgroups.dir("held"), Tag { policy: HOLD_POLICY, max_pending: 4 })?;
    let mut worker = HoldWorker::spawn(&cgroups.dir("held"), port)?;
    let mut times = HoldTimes::default();
    for sample in 0..WARMUP + HOLD_SAMPLES {
        let (to_user, release) = one_hold(enforcer, &mut worker)?;
        if sample >= WARMUP {
            times.to_user.push(to_user);
            times.release.push(release);
        }
    }
    Ok(times)
}

fn one_hold(enforcer: &mut Enforcer, worker: &mut HoldWorker) -> Result<(u64, u64)> {
    worker.go.write_all(b"g")?;
    let (event, in_user_space) = next_hold(enforcer, worker.pid())?;
    let held = HeldProcess::open(&event)?;
    wait_stopped(worker.pid())?;
    let before_release = monotonic_ns();
    held.release(enforcer)?;
    let running = worker.running_at()?;
    Ok((in_user_space.saturating_sub(event.hold.held_at_ns), running.saturating_sub(before_release)))
}

/// Waits for the hold of process `pid`; returns it with the time it reached user space.
fn next_hold(enforcer: &mut Enforcer, pid: u32) -> Result<(HoldEvent, u64)> {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let events = enforcer.wait_events(TIMEOUT);
        let in_user_space = monotonic_ns();
        if let Some(event) = events.into_iter().find(|e| e.tgid == pid && e.event_type == event_type::HELD) {
            return Ok((event, in_user_space));
        }
    }
    Err(format!("no hold of process {pid} within {TIMEOUT:?}").into())
}

/// Waits until process `pid` is stopped (state `T`), as a held process is before anyone
/// decides.
fn wait_stopped(pid: u32) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if tests::process_state(pid) == Some('T') {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("held process {pid} never stopped").into());
        }
        thread::sleep(Duration::from_micros(20));
    }
}

struct Memory {
    rss_before: u64,
    rss_after: u64,
    maps_before: u64,
    maps_after: u64,
    tagging: Duration,
    /// Entries of `TAGGED_ROOTS` afterwards.
    tagged: usize,
}

/// Tags `MANY_CGROUPS` fresh cgroups, reading RSS and map memory before and after.
fn measure_memory(loaded: &mut Loaded, cgroups: &BenchCgroups) -> Result<Memory> {
    let enforcer = loaded.enforcer();
    let (rss_before, maps_before) = (rss_bytes()?, enforcer.maps_memory());
    let start = Instant::now();
    for index in 0..MANY_CGROUPS {
        let dir = cgroups.dir("many").join(format!("c{index:04}"));
        cgroup::create(&dir)?;
        enforcer.tag(&dir, Tag { policy: ALLOWED_POLICY, max_pending: 16 })?;
    }
    let tagging = start.elapsed();
    Ok(Memory {
        rss_before,
        rss_after: rss_bytes()?,
        maps_before,
        maps_after: enforcer.maps_memory(),
        tagging,
        tagged: enforcer.tags()?.len(),
    })
}

/// This process's resident set size, `VmRSS` in /proc/self/status.
fn rss_bytes() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

fn bench() -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must run as root: it loads BPF programs and creates cgroups".into());
    }
    let cgroups = BenchCgroups::create()?;
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/kt-bench-{}", std::process::id())));
    let (allowed_port, held_port) = (listen(Ipv4Addr::LOCALHOST)?, listen(HELD_ADDR)?);
    let started = Instant::now();
    // First, so the memory figures are those of a process that loaded keyturn once.
    let mut loaded = Loaded::tagged(&pins, &cgroups)?;
    let mode = loaded.enforcer().mode();
    let programs = measure_program_time(&cgroups, allowed_port)?;
    let holds = measure_holds(&mut loaded, &cgroups, held_port)?;
    let memory = measure_memory(&mut loaded, &cgroups)?;
    loaded.unload()?;
    let overhead = measure_overhead(&cgroups, &pins, allowed_port, programs)?;
    let judging = measure_judging()?;
    println!(
        "keyturn bench: {mode} mode, kernel {}, {} CPUs, one run of {} s",
        fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        thread::available_parallelism()?,
        started.elapsed().as_secs()
    );
    print_overhead(&overhead);
    print_holds(&holds, held_port);
    print_judging(&judging);
    print_memory(&memory);
    Ok(())
}

/// Programs judged per run of [`measure_judging`].
const JUDGED_PROGRAMS: usize = 100;

/// Spawn times of programs the daemon had not seen (judged in user space: identified,
/// hashed, audited, released) and of the same programs once judged (decided in the kernel).
struct JudgeTimes {
    first: Vec<u64>,
    judged: Vec<u64>,
}

/// Runs the real daemon (the `keyturn` binary, `KEYTURN_BIN`) and an agent under it that
/// spawns fresh copies of /bin/true: the daemon judges each on its first exec.
fn measure_judging() -> Result<JudgeTimes> {
    let daemon = tests::daemon::Daemon::start(tests::daemon::HOLD_FLAGGED);
    let dir = daemon.dir.join("programs");
    fs::create_dir(&dir)?;
    for n in 0..JUDGED_PROGRAMS {
        fs::copy("/bin/true", dir.join(format!("program-{n}")))?;
    }
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // Older than the daemon's settling time for fresh files: what is measured is judging.
    thread::sleep(SETTLE);
    let bench = std::env::current_exe()?;
    let out = daemon
        .agent_command(&bench, ["worker", "judge", &dir.display().to_string(), &JUDGED_PROGRAMS.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!("judge worker: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let mut lines = out.stdout.lines();
    let mut samples = || -> Result<Vec<u64>> {
        let line = lines.next().ok_or("judge worker printed too little")??;
        Ok(line.split_whitespace().map(str::parse).collect::<std::result::Result<_, _>>()?)
    };
    Ok(JudgeTimes { first: samples()?, judged: samples()? })
}

// The report.

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[expect(clippy::cast_precision_loss, reason = "values far below 2^52")]
fn float(value: u64) -> f64 {
    value as f64
}

/// Nearest-rank percentile `q` (0–100) of `samples`.
fn percentile(samples: &[u64], q: usize) -> u64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * q).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn micros(ns: u64) -> String {
    format!("{:.1} µs", float(ns) / 1e3)
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes / 1024)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// One table: the median of every variant, the ratio of its median to no keyturn's
/// against its target (untagged, tagged), the same ratio taken round by round (median, p25–p75), and how
/// long keyturn's programs ran per operation of a batch of `ops`.
fn print_series(
    title: &str,
    series: &[Series; 3],
    programs: &[ProgramTime; 3],
    ops: usize,
    targets: [f64; 2],
) {
    let none = &series[Variant::None as usize];
    let none_median = percentile(&none.concat(), 50);
    println!("\n{title}: {} samples per variant", none.concat().len());
    println!(
        "  {:<18}{:>11}{:>8}{:>9}{:>6}   per round: median [p25–p75]",
        "", "median", "ratio", "target", ""
    );
    println!("  {:<18}{:>11}", Variant::None.label(), micros(none_median));
    for (variant, target) in [Variant::Untagged, Variant::Tagged].into_iter().zip(targets) {
        let samples = &series[variant as usize];
        let median = percentile(&samples.concat(), 50);
        let ratio = float(median) / float(none_median);
        let mut rounds: Vec<f64> = samples
            .iter()
            .zip(none)
            .map(|(batch, base)| float(percentile(batch, 50)) / float(percentile(base, 50)))
            .collect();
        rounds.sort_by(f64::total_cmp);
        let at = |q: usize| rounds[(rounds.len() * q).div_ceil(100).max(1) - 1];
        println!(
            "  {:<18}{:>11}{ratio:>8.3}{:>9}{:>6}   {:.3} [{:.3}–{:.3}]",
            variant.label(),
            micros(median),
            format!("≤ {target:.2}"),
            verdict(ratio <= target),
            at(50),
            at(25),
            at(75),
        );
    }
    let ops = float(u64::try_from(ops).unwrap_or(u64::MAX));
    let [_, untagged, tagged] = programs.map(|time| (float(time.ns) / ops, float(time.runs) / ops));
    let share = |ns: f64| ns / float(none_median) * 100.0;
    println!(
        "  keyturn's BPF programs per op (kernel run-time stats, one batch each): untagged {:.0} ns \
         in {:.1} runs ({:.3}%), tagged {:.0} ns in {:.1} runs ({:.3}%)",
        untagged.0,
        untagged.1,
        share(untagged.0),
        tagged.0,
        tagged.1,
        share(tagged.0),
    );
}

fn print_overhead(overhead: &Overhead) {
    println!(
        "\noverhead: {ROUNDS} rounds of [no keyturn, load, untagged, tagged, unload], every other \
         round reversed; each batch a fresh worker process in its own cgroup"
    );
    print_series(
        "exec: posix_spawn(/bin/true) + waitpid",
        &overhead.exec,
        &overhead.programs.exec,
        WARMUP + EXEC_OPS,
        [1.01, 1.05],
    );
    print_series(
        "connect: TCP connect + close on 127.0.0.1",
        &overhead.connect,
        &overhead.programs.connect,
        WARMUP + CONNECT_OPS,
        [1.01, 1.10],
    );
    if let Some(first) = overhead.foreign.first() {
        println!(
            "\n  warning: {} other keyturn instances ({} …) had global programs attached during \
             the run, in every batch: none was free of keyturn's exec and signal programs",
            overhead.foreign.len(),
            first.display()
        );
    }
}

fn print_holds(holds: &HoldTimes, port: u16) {
    const TARGET_NS: u64 = 1_000_000;
    println!("\nhold: TCP connect to {HELD_ADDR}:{port} held, {} samples", holds.to_user.len());
    println!("  {:<28}{:>11}{:>11}{:>11}   target", "", "p50", "p99", "max");
    for (label, samples) in
        [("hook → event in user space", &holds.to_user), ("release → process running", &holds.release)]
    {
        let p99 = percentile(samples, 99);
        println!(
            "  {label:<28}{:>11}{:>11}{:>11}   p99 < 1 ms  {}",
            micros(percentile(samples, 50)),
            micros(p99),
            micros(percentile(samples, 100)),
            verdict(p99 < TARGET_NS),
        );
    }
}

fn print_judging(times: &JudgeTimes) {
    println!(
        "\njudging: {JUDGED_PROGRAMS} new programs run by an agent under the real daemon (spawn and wait)"
    );
    println!("  {:<28}{:>11}{:>11}{:>11}", "", "p50", "p99", "max");
    for (label, samples) in
        [("first exec (daemon judges)", &times.first), ("next exec (kernel decides)", &times.judged)]
    {
        println!(
            "  {label:<28}{:>11}{:>11}{:>11}",
            micros(percentile(samples, 50)),
            micros(percentile(samples, 99)),
            micros(percentile(samples, 100)),
        );
    }
}

fn print_memory(memory: &Memory) {
    println!(
        "\nmemory: {MANY_CGROUPS} more cgroups tagged in {:.2} s; {} tagged roots in the kernel",
        memory.tagging.as_secs_f64(),
        memory.tagged
    );
    println!("  {:<18}{:>14}{:>14}{:>14}", "", "before", "after", "delta");
    for (label, before, after) in [
        ("enforcer VmRSS", memory.rss_before, memory.rss_after),
        ("maps memlock", memory.maps_before, memory.maps_after),
    ] {
        let sign = if after < before { "-" } else { "+" };
        println!(
            "  {label:<18}{:>14}{:>14}{:>14}",
            kib(before),
            kib(after),
            format!("{sign}{}", kib(after.abs_diff(before)))
        );
    }
}
