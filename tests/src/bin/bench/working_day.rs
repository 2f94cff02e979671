//! An AI coding agent's working day (`tests::working_day`) and a configure-style loop of
//! 40 fresh executables, under the real daemon: no keyturn, untagged (the daemon loaded,
//! the agent's cgroup not tagged) and tagged (`keyturn run` with the day's policy, an
//! approver at the embedded console answering each hold at once), in interleaved rounds.
//! Every day is checked against an untimed first one: a run that ended differently is no
//! measurement; the report lists it and the bench fails.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tests::{
    TestCgroup,
    daemon::Daemon,
    embedded::Embedded,
    working_day::{Approver, Decision, Hosts, POLL, Run, Script, Seen, Session, Transcript, approver_wait},
};

use crate::{
    Result,
    overhead::{Variant, foreign_keyturns},
    report::verdict,
};

/// Interleaved rounds; each runs the day and the loop once in every variant.
const ROUNDS: usize = 5;
/// How a step the approver denied ends under the day's policy (`on_deny = "kill"`).
const KILLED: i32 = 128 + libc::SIGKILL;

/// Wall times, one per round; `None` for a run that did not end as it should.
type Series = Vec<Option<Duration>>;

/// What the rounds measured.
#[derive(Default)]
pub struct DayTimes {
    /// By variant (`Variant as usize`).
    day: [Series; 3],
    /// Tagged days less the time their holds waited for the approver.
    day_without_approver: Series,
    configure: [Series; 3],
    /// CPU time the daemon (its embedded console included) used during each day.
    daemon_cpu: [Vec<Duration>; 3],
    /// The holds of each tagged day, and how long they waited for the approver.
    held: Vec<(Vec<Seen>, Duration)>,
    steps: usize,
    /// Other keyturn instances with global programs attached during a no-keyturn run.
    foreign: Vec<PathBuf>,
    /// The host's load averages (`/proc/loadavg`) when the rounds began and ended: what
    /// else ran beside them.
    load: [String; 2],
    /// Runs that did not end as they should, and why.
    failures: Vec<String>,
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The day's world: its hosts, the session's scratch directory, a plain cgroup, and the
/// reference transcript.
struct World {
    hosts: Hosts,
    session: Session,
    plain: TestCgroup,
    reference: Transcript,
}

/// How a run ended: as it should (its time is a measurement), or differently (why).
enum Ended {
    AsItShould(Run),
    Differently(String),
}

impl World {
    /// Starts the hosts and runs one untimed day outside keyturn: the reference every
    /// later day must match, and warm caches for all of them.
    fn start() -> Result<Self> {
        let hosts = Hosts::start();
        let session = Session::new(&hosts);
        let plain = TestCgroup::new();
        session.reset();
        let run = session.run_outside(Script::Day, &plain.dir);
        if run.status != 0 {
            return Err(format!("the reference day failed ({}): {}", run.status, run.stderr).into());
        }
        let reference = session.transcript();
        Ok(Self { hosts, session, plain, reference })
    }

    /// Runs `script` with `launch` from a fresh start; checks how it ended (`denied`: the
    /// status the day's denied steps must end with, if an approver denies them).
    fn run(&self, script: Script, launch: impl FnOnce(&Session) -> Run, denied: Option<i32>) -> Ended {
        self.hosts.reset();
        self.session.reset();
        let run = launch(&self.session);
        if run.status != 0 {
            return Ended::Differently(format!("exit status {}: {}", run.status, run.stderr));
        }
        let differences = match script {
            Script::Day => self.session.transcript().differences(&self.reference, denied),
            Script::Configure => {
                let expected = (1..=40).fold(String::new(), |mut text, n| {
                    let _ = writeln!(text, "check {n}: {}", n * 3);
                    text
                });
                if run.stdout == expected { vec![] } else { vec![format!("printed {:?}", run.stdout)] }
            }
        };
        if differences.is_empty() {
            Ended::AsItShould(run)
        } else {
            Ended::Differently(differences.join("\n"))
        }
    }
}

/// CPU time (user and system, every thread) process `pid` used so far.
fn cpu_time(pid: Option<u32>) -> Duration {
    /// `/proc/PID/stat` counts in `USER_HZ` ticks.
    const TICK: Duration = Duration::from_millis(10);
    let stat =
        pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()).unwrap_or_default();
    // utime and stime: fields 14 and 15, the 12th and 13th after the command name.
    let ticks: u32 = stat
        .rsplit_once(')')
        .map(|(_, fields)| {
            fields.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u32>().ok()).sum()
        })
        .unwrap_or_default();
    TICK * ticks
}

/// What is wrong with the holds the approver saw during `script`, if anything: the day
/// asks for each of its holds and for two denials; the configure loop for none.
fn unexpected_holds(script: Script, seen: &[Seen]) -> Option<String> {
    let surprises: Vec<&Seen> =
        seen.iter().filter(|s| !s.expected || matches!(s.decision, Decision::Refused(_))).collect();
    let denied = seen.iter().filter(|s| s.decision == Decision::Denied).count();
    match script {
        Script::Day if surprises.is_empty() && denied == 2 => None,
        Script::Configure if seen.is_empty() => None,
        _ => Some(format!("{} holds, {denied} denied; surprises: {surprises:#?}", seen.len())),
    }
}

/// The variant's name in this report.
fn label(variant: Variant) -> &'static str {
    match variant {
        Variant::None => "no keyturn",
        Variant::Untagged => "untagged (daemon loaded)",
        Variant::Tagged => "tagged (keyturn run)",
    }
}

impl DayTimes {
    /// Records how `script` ended under `variant`: its wall time (and, for a tagged day,
    /// less `approver_wait`), the CPU time the daemon (pid `daemon`) used from
    /// `daemon_cpu` on; or why it failed.
    fn record(
        &mut self,
        variant: Variant,
        script: Script,
        ended: Ended,
        approver_wait: Duration,
        daemon: Option<u32>,
        daemon_cpu: Duration,
    ) {
        let wall = match ended {
            Ended::AsItShould(run) => Some(run.wall),
            Ended::Differently(why) => {
                self.failures.push(format!("{script:?}, {}: {why}", label(variant)));
                None
            }
        };
        match script {
            Script::Day => {
                self.day[variant as usize].push(wall);
                if variant == Variant::Tagged {
                    self.day_without_approver.push(wall.map(|wall| wall.saturating_sub(approver_wait)));
                }
                if wall.is_some() && daemon.is_some() {
                    self.daemon_cpu[variant as usize].push(cpu_time(daemon).saturating_sub(daemon_cpu));
                }
            }
            Script::Configure => self.configure[variant as usize].push(wall),
        }
    }

    /// Runs that did not end as they should.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Both scripts in a plain cgroup, as `nobody`: beside `daemon`, or with no keyturn.
    fn outside(&mut self, world: &World, variant: Variant, daemon: Option<&Daemon>) {
        if variant == Variant::None {
            self.foreign.extend(foreign_keyturns(Path::new("")));
        }
        let pid = daemon.and_then(Daemon::pid);
        for script in [Script::Day, Script::Configure] {
            let cpu = cpu_time(pid);
            let ended = world.run(script, |session| session.run_outside(script, &world.plain.dir), None);
            self.record(variant, script, ended, Duration::ZERO, pid, cpu);
        }
    }

    /// Both scripts under `keyturn run`, with the approver deciding.
    fn tagged(&mut self, world: &World, console: &Embedded, approver: &Approver) {
        let pid = console.daemon.pid();
        for script in [Script::Day, Script::Configure] {
            let mut seen = Vec::new();
            let cpu = cpu_time(pid);
            let denied = matches!(script, Script::Day).then_some(KILLED);
            let ended = world.run(
                script,
                |session| {
                    let (run, holds) = approver.during(|| session.run_in_keyturn(script, &console.daemon));
                    seen = holds;
                    run
                },
                denied,
            );
            let ended = match (ended, unexpected_holds(script, &seen)) {
                (Ended::AsItShould(_), Some(why)) => Ended::Differently(why),
                (ended, _) => ended,
            };
            let waited = approver_wait(&seen);
            if let (Ended::AsItShould(_), Script::Day) = (&ended, script) {
                self.held.push((seen, waited));
            }
            self.record(Variant::Tagged, script, ended, waited, pid, cpu);
        }
    }
}

/// Rounds of none, daemon start, untagged, tagged, daemon stop; every other round reversed.
pub fn measure_working_day() -> Result<DayTimes> {
    let world = World::start()?;
    let policy = world.hosts.policy();
    let mut times = DayTimes { steps: world.reference.steps.len(), ..DayTimes::default() };
    times.load[0] = load_average();
    for round in 0..ROUNDS {
        let forward = round % 2 == 0;
        if forward {
            times.outside(&world, Variant::None, None);
        }
        let console = Embedded::start(&policy);
        let approver = Approver::new(&console, &world.hosts);
        let order =
            if forward { [Variant::Untagged, Variant::Tagged] } else { [Variant::Tagged, Variant::Untagged] };
        for variant in order {
            if variant == Variant::Tagged {
                times.tagged(&world, &console, &approver);
            } else {
                times.outside(&world, variant, Some(&console.daemon));
            }
        }
        drop(approver);
        drop(console);
        if !forward {
            times.outside(&world, Variant::None, None);
        }
    }
    times.foreign.sort();
    times.foreign.dedup();
    times.load[1] = load_average();
    Ok(times)
}

/// The median of the runs that were measured, in seconds.
fn median(series: &[Option<Duration>]) -> Option<f64> {
    let mut seconds: Vec<f64> = series.iter().flatten().map(Duration::as_secs_f64).collect();
    seconds.sort_by(f64::total_cmp);
    seconds.get(seconds.len() / 2).copied()
}

/// One row: the median wall time, its ratio to no keyturn's, the target, and the ratio
/// of every round (a round's run against the same round's no-keyturn run).
fn row(label: &str, walls: &[Option<Duration>], none: &[Option<Duration>], target: Option<f64>) {
    let (Some(wall), Some(base)) = (median(walls), median(none)) else {
        println!("  {label:<34}   no measurement");
        return;
    };
    let ratio = wall / base;
    let rounds: Vec<String> = walls
        .iter()
        .zip(none)
        .map(|pair| match pair {
            (Some(wall), Some(base)) => format!("{:.3}", wall.as_secs_f64() / base.as_secs_f64()),
            _ => "failed".to_owned(),
        })
        .collect();
    let target = target.map_or_else(String::new, |t| format!("≤ {t:.2}  {}", verdict(ratio <= t)));
    println!("  {label:<34}{wall:>9.2} s{ratio:>9.3}   {target:<13}  [{}]", rounds.join(", "));
}

pub fn print_working_day(times: &DayTimes) {
    println!(
        "\nworking day: {} steps (git over HTTP, pip, npm, curl/wget to an API, C builds, tests, \
         pipelines, background jobs, threads) against 5 hosts in network namespaces, as nobody; \
         {ROUNDS} rounds of [no keyturn, daemon start, untagged, tagged, daemon stop], every \
         other round reversed; load average {} at the start, {} at the end",
        times.steps, times.load[0], times.load[1]
    );
    println!("  {:<34}{:>11}{:>9}   {:<13}  per round", "", "median", "ratio", "target");
    let none = &times.day[Variant::None as usize];
    row("no keyturn", none, none, None);
    row("untagged (daemon loaded)", &times.day[Variant::Untagged as usize], none, Some(1.01));
    row("tagged (keyturn run, approver)", &times.day[Variant::Tagged as usize], none, None);
    row("tagged, approver's waits taken out", &times.day_without_approver, none, Some(1.05));
    if let Some((first, _)) = times.held.first() {
        let count = |kind: &str, decision: Decision| {
            first.iter().filter(|s| s.kind == kind && s.decision == decision).count()
        };
        let mut listed: Vec<i64> =
            times.held.iter().flat_map(|(seen, _)| seen).map(|s| s.seen_at_ms - s.requested_at_ms).collect();
        listed.sort_unstable();
        let at = |q: usize| listed[(listed.len() * q).div_ceil(100).max(1) - 1];
        let waits: Series = times.held.iter().map(|(_, waited)| Some(*waited)).collect();
        println!(
            "  holds per tagged day: {} (exec {} approved, {} denied; egress {} approved, {} denied); \
             waiting for the approver (seen → decided, overlaps once): median {:.2} s a day; \
             held → listed to the approver (polling every {} ms): p50 {} ms, p99 {} ms",
            first.len(),
            count("exec", Decision::Approved),
            count("exec", Decision::Denied),
            count("egress", Decision::Approved),
            count("egress", Decision::Denied),
            median(&waits).unwrap_or_default(),
            POLL.as_millis(),
            at(50),
            at(99),
        );
    }
    let cpu = |variant: Variant| {
        let series: Series = times.daemon_cpu[variant as usize].iter().copied().map(Some).collect();
        median(&series).unwrap_or_default()
    };
    println!(
        "  the daemon's CPU time during a day (its embedded console and the approver's polling included): \
         median {:.2} s untagged, {:.2} s tagged",
        cpu(Variant::Untagged),
        cpu(Variant::Tagged)
    );
    println!("\nconfigure loop: 40 tiny C programs compiled and run, each a fresh executable, same rounds");
    let none = &times.configure[Variant::None as usize];
    row("no keyturn", none, none, None);
    row("untagged (daemon loaded)", &times.configure[Variant::Untagged as usize], none, None);
    row("tagged (keyturn run)", &times.configure[Variant::Tagged as usize], none, Some(1.10));
    if let Some(first) = times.foreign.first() {
        println!(
            "\n  warning: {} other keyturn instances ({} …) had global programs attached during \
             no-keyturn runs: those runs were not free of keyturn's exec programs",
            times.foreign.len(),
            first.display()
        );
    }
    if !times.failures.is_empty() {
        println!("\n  FAILED: {} runs did not end as they should (no measurement):", times.failures.len());
        for failure in &times.failures {
            println!("  - {}", failure.replace('\n', "\n    "));
        }
    }
}
