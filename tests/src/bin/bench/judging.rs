//! What the first exec of a never-seen program costs an agent under the real daemon (it is
//! judged in user space: identified, hashed, audited, released), against the first exec
//! of a program just as new outside keyturn.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, thread, time::Instant};

use tests::{
    TestCgroup,
    daemon::{Daemon, HOLD_FLAGGED, agent_in},
};

use crate::{
    Result, SETTLE,
    overhead::spawn_wait,
    report::{micros, nanos, percentile},
};

/// Fresh programs per run of the judge worker.
const JUDGED_PROGRAMS: usize = 100;
/// Runs on each side, alternating.
const JUDGE_ROUNDS: usize = 3;

/// Times the spawn of each of the `count` programs `DIR/program-N` twice: first seen (the
/// daemon judges it) and then judged (the kernel decides it). Prints one line of each.
pub fn judge_worker(dir: &Path, count: usize) -> Result<()> {
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

/// Spawn times of fresh programs, their first exec and their next: outside keyturn, and in
/// a tagged cgroup under the real daemon.
#[derive(Default)]
pub struct JudgeTimes {
    outside: [Vec<u64>; 2],
    tagged: [Vec<u64>; 2],
}

/// Runs the real daemon (the `keyturn` binary, `KEYTURN_BIN`) and, in alternating rounds,
/// the judge worker as `nobody` under `keyturn run` and in a plain cgroup, each time on
/// fresh copies of /bin/true.
pub fn measure_judging() -> Result<JudgeTimes> {
    let daemon = Daemon::start(HOLD_FLAGGED);
    let outside = TestCgroup::new();
    let bench = std::env::current_exe()?;
    let mut times = JudgeTimes::default();
    for round in 0..JUDGE_ROUNDS {
        let sides = if round % 2 == 0 { [false, true] } else { [true, false] };
        for tagged in sides {
            let dir =
                daemon.dir.join(format!("programs-{round}-{}", if tagged { "tagged" } else { "outside" }));
            fs::create_dir(&dir)?;
            for n in 0..JUDGED_PROGRAMS {
                fs::copy("/bin/true", dir.join(format!("program-{n}")))?;
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
            // Older than the daemon's settling time for fresh files: what is measured is
            // judging (the configure loop of the working day measures fresh files).
            thread::sleep(SETTLE);
            let args = [
                "worker".to_owned(),
                "judge".to_owned(),
                dir.display().to_string(),
                JUDGED_PROGRAMS.to_string(),
            ];
            let out =
                if tagged { daemon.agent_command(&bench, &args) } else { agent_in(&outside, &bench, &args) }
                    .output()?;
            if !out.status.success() {
                return Err(format!("judge worker: {}", String::from_utf8_lossy(&out.stderr)).into());
            }
            let side = if tagged { &mut times.tagged } else { &mut times.outside };
            let text = String::from_utf8(out.stdout)?;
            for (series, line) in side.iter_mut().zip(text.lines()) {
                series.extend(
                    line.split_whitespace()
                        .map(str::parse::<u64>)
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                );
            }
        }
    }
    Ok(times)
}

pub fn print_judging(times: &JudgeTimes) {
    println!(
        "\njudging: fresh programs (copies of /bin/true) spawned and waited for by an agent as nobody, \
         {JUDGE_ROUNDS} rounds of {JUDGED_PROGRAMS} on each side, alternating"
    );
    println!("  {:<36}{:>11}{:>11}{:>11}", "", "p50", "p99", "max");
    for (label, samples) in [
        ("outside keyturn, first exec", &times.outside[0]),
        ("outside keyturn, next exec", &times.outside[1]),
        ("tagged, first exec (daemon judges)", &times.tagged[0]),
        ("tagged, next exec (kernel decides)", &times.tagged[1]),
    ] {
        println!(
            "  {label:<36}{:>11}{:>11}{:>11}",
            micros(percentile(samples, 50)),
            micros(percentile(samples, 99)),
            micros(percentile(samples, 100)),
        );
    }
    let cost = |q: usize| {
        let (tagged, outside) = (percentile(&times.tagged[0], q), percentile(&times.outside[0], q));
        format!("{}{}", if tagged < outside { "-" } else { "" }, micros(tagged.abs_diff(outside)))
    };
    println!(
        "  judging a new executable costs its first exec (tagged − outside): p50 {}, p99 {}",
        cost(50),
        cost(99)
    );
}
