//! What keyturn costs an exec and a connect: untagged, tagged and allowed, against no
//! keyturn, in interleaved rounds, with the in-kernel run time of its programs.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use crate::{
    Result, WARMUP,
    fixtures::{BenchCgroups, Loaded, Pins, reset_on_close, spawn_worker},
    report::{float, micros, nanos, percentile, verdict},
};

/// Interleaved rounds; each runs one batch of every variant.
const ROUNDS: usize = 60;
/// Timed operations per batch.
const EXEC_OPS: usize = 100;
const CONNECT_OPS: usize = 1000;

/// Under which conditions the exec and connect batches run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Variant {
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

/// Times `execs` spawns of /bin/true and `connects` loopback connects to `port`; prints
/// the nanoseconds of each, one line per kind.
pub fn ops_worker(port: u16, execs: usize, connects: usize) -> Result<()> {
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

/// `posix_spawn` of /bin/true and `waitpid` for it.
fn spawn_true() -> Result<()> {
    spawn_wait(c"/bin/true")
}

/// `posix_spawn` of `program` with no arguments, and `waitpid` for it.
pub fn spawn_wait(program: &std::ffi::CStr) -> Result<()> {
    use nix::{
        spawn::{PosixSpawnAttr, PosixSpawnFileActions, posix_spawn},
        sys::wait::{WaitStatus, waitpid},
    };
    let pid = posix_spawn(
        program,
        &PosixSpawnFileActions::init()?,
        &PosixSpawnAttr::init()?,
        &[program],
        &[] as &[&std::ffi::CStr],
    )
    .map_err(|e| format!("posix_spawn {program:?}: {e}"))?;
    match waitpid(pid, None)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        status => Err(format!("{program:?} failed: {status:?}").into()),
    }
}

fn connect_close(to: SocketAddrV4) -> Result<()> {
    let stream = TcpStream::connect(to).map_err(|e| format!("connect to {to}: {e}"))?;
    reset_on_close(&stream);
    Ok(())
}

/// Per-operation nanoseconds of one variant, one batch per round.
type Series = Vec<Vec<u64>>;

/// The exec and connect series of every variant, indexed by `Variant as usize`, with the
/// in-kernel time of keyturn's programs.
#[derive(Default)]
pub struct Overhead {
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
pub fn foreign_keyturns(own: &Path) -> Vec<PathBuf> {
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
pub fn measure_overhead(
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
pub struct ProgramTimes {
    exec: [ProgramTime; 3],
    connect: [ProgramTime; 3],
}

/// Turns on the kernel's BPF run-time statistics until the returned fd is closed.
fn enable_bpf_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| format!("BPF_ENABLE_STATS: {e}").into())
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
pub fn measure_program_time(cgroups: &BenchCgroups, port: u16) -> Result<ProgramTimes> {
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

pub fn print_overhead(overhead: &Overhead) {
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
