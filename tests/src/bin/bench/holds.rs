//! How fast a held connect reaches user space, and how fast a release lets it go.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Stdio},
    thread,
    time::{Duration, Instant},
};

use agent_common::{HoldEvent, Tag, event_type};
use keyturn::{
    hold::process::HeldProcess,
    kernel::{Enforcer, monotonic_ns},
};

use crate::{
    Result, TIMEOUT, WARMUP,
    fixtures::{BenchCgroups, HELD_ADDR, HOLD_POLICY, Loaded, hold_policy, reset_on_close, spawn_worker},
    report::{micros, percentile, verdict},
};

const HOLD_SAMPLES: usize = 300;

/// For every byte on stdin, connects to `HELD_ADDR:port` (held until released) and prints
/// `CLOCK_MONOTONIC` right after the connect returned.
pub fn hold_worker(port: u16) -> Result<()> {
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
pub struct HoldTimes {
    to_user: Vec<u64>,
    release: Vec<u64>,
}

pub fn measure_holds(loaded: &mut Loaded, cgroups: &BenchCgroups, port: u16) -> Result<HoldTimes> {
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

pub fn print_holds(holds: &HoldTimes, port: u16) {
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
