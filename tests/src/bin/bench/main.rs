//! `cargo xtask bench`: what keyturn costs the processes it watches (exec, connect), how
//! fast a hold reaches user space and lets go, what judging a new program costs, what an
//! agent's working day and a configure loop cost under the real daemon, and memory at
//! 1,000 tagged cgroups, and what names cost: lookups through keyturn's resolver.
//!
//! Rooms: `fixtures` (the bench's cgroups and pins, keyturn loaded, worker processes),
//! `overhead` (exec and connect), `holds`, `memory`, `dns` (names), `judging` (first execs under the real
//! daemon), `working_day` (the scripted day and the configure loop), `report` (numbers).

mod dns;
mod fixtures;
mod holds;
mod judging;
mod memory;
mod overhead;
mod report;
mod working_day;

use std::{
    error::Error,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use fixtures::{BenchCgroups, HELD_ADDR, Loaded, Pins, listen};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Untimed operations at the start of each batch and hold series.
const WARMUP: usize = 10;
/// Longest wait for anything that must happen.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a load and an unload: the kernel frees detached links and maps after
/// the call returns, and no batch should pay for either.
const SETTLE: Duration = Duration::from_millis(50);

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
        [kind, port] if kind == "hold" => holds::hold_worker(port.parse()?),
        [kind, dir, count] if kind == "judge" => judging::judge_worker(Path::new(dir), count.parse()?),
        [kind, rest @ ..] if kind == "dns" => dns::dns_worker(rest),
        [kind, port, execs, connects] if kind == "ops" => {
            overhead::ops_worker(port.parse()?, execs.parse()?, connects.parse()?)
        }
        _ => Err("usage: bench worker ops PORT EXECS CONNECTS | hold PORT | judge DIR COUNT | dns …".into()),
    }
}

fn bench() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err("must run as root: it loads BPF programs and creates cgroups".into());
    }
    let cgroups = BenchCgroups::create()?;
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/kt-bench-{}", std::process::id())));
    let (allowed_port, held_port) = (listen(Ipv4Addr::LOCALHOST)?, listen(HELD_ADDR)?);
    let started = Instant::now();
    // First, so the memory figures are those of a process that loaded keyturn once.
    let mut loaded = Loaded::tagged(&pins, &cgroups)?;
    let mode = loaded.enforcer().mode();
    let programs = overhead::measure_program_time(&cgroups, allowed_port)?;
    let holds = holds::measure_holds(&mut loaded, &cgroups, held_port)?;
    let memory = memory::measure_memory(&mut loaded, &cgroups)?;
    loaded.unload()?;
    let names = dns::measure_names(&pins, &cgroups)?;
    let overhead = overhead::measure_overhead(&cgroups, &pins, allowed_port, programs)?;
    let judging = judging::measure_judging()?;
    let day = working_day::measure_working_day()?;
    println!(
        "keyturn bench: {mode} mode, kernel {}, {} CPUs, one run of {} s",
        fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        thread::available_parallelism()?,
        started.elapsed().as_secs()
    );
    overhead::print_overhead(&overhead);
    holds::print_holds(&holds, held_port);
    dns::print_names(&names);
    judging::print_judging(&judging);
    working_day::print_working_day(&day);
    memory::print_memory(&memory);
    match day.failures().len() {
        0 => Ok(()),
        failed => {
            Err(format!("{failed} runs of the working day did not end as they should (listed above)").into())
        }
    }
}
