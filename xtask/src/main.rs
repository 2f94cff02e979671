//! Developer and CI automation: `cargo xtask setup | run | test | vm | deb | bench`.

mod bench;
mod deb;
mod setup;
mod vm;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};

const USAGE: &str = "usage: cargo xtask <setup | run | test | vm | deb | bench>
  setup   install what this machine lacks for building and testing (Debian packages, rust-src,
          bpf-linker, cargo-fuzz, VM kernels, the tests' npm packages)
  run     install what building needs, build, and start the keyturn daemon with its embedded defaults
  test    setup, then every test: unit, host integration, fuzzing, VM (Debian 6.1 and 6.12)
  vm      only the VM tests; `vm [--kernel 6.1|6.12] [--mode lsm-cgroup|lsm] [TEST [FILTER…]]`
          runs one test executable, with libtest's FILTER, on one kernel, in one mode
  deb     the Debian package, target/debian/keyturn_VERSION_ARCH.deb (`deb --dev`: of the
          debug build), checked by lintian
  bench   benchmarks, reported side by side from one run";

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "setup" => setup::for_testing(),
        "run" => {
            setup::for_building()?;
            cargo(&["build", "--release", "--package", "agent"])?;
            let status = Command::new("target/release/keyturn").arg("daemon").status()?;
            if !status.success() {
                bail!("keyturn daemon exited with {status}");
            }
            Ok(())
        }
        "test" => {
            let mut phases = Phases::default();
            phases.run("setup", setup::for_testing)?;
            // Includes the console's suite, which starts PostgreSQL clusters as the postgres
            // user (so it runs as root, as all of `test` does).
            phases.run("unit tests", || {
                cargo(&["test", "--workspace", "--exclude", "tests", "--exclude", "agent-ebpf"])
            })?;
            // The daemon tests run the real `keyturn` binary.
            phases.run("host integration tests", || {
                cargo(&["build", "--package", "agent"])?;
                cargo(&["test", "--package", "tests"])
            })?;
            // The package of the build the tests ran, judged by Debian's lintian.
            phases.run("package", || deb::check(&deb::build(deb::Build::Dev)?))?;
            phases.run("fuzzing", fuzz)?;
            phases.run("VM tests", || vm::run(&vm::Selection::default()))
        }
        "vm" => vm::run(&vm::Selection::parse(std::env::args().skip(2))?),
        "deb" => {
            setup::for_packaging()?;
            let build = match std::env::args().nth(2).as_deref() {
                None => deb::Build::Release,
                Some("--dev") => deb::Build::Dev,
                Some(other) => bail!("unknown argument {other:?}: `cargo xtask deb [--dev]`"),
            };
            deb::check(&deb::build(build)?)
        }
        "bench" => {
            setup::for_testing()?;
            bench::run()
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// The fuzz targets (`fuzz/fuzz_targets`) and the seconds each is fuzzed in every test run:
/// what hostile or corrupt bytes reach first, the operator's policy files, the agents' DNS
/// queries and the kernel's BTF.
const FUZZ_TARGETS: [(&str, &str, u32); 3] = [
    ("policy", "the policy parser", 20),
    ("dns_query", "the DNS query parser", 15),
    ("btf", "the BTF reader", 10),
];

/// Fuzzes each of [`FUZZ_TARGETS`] with nightly's libFuzzer, starting from the seeds in
/// `fuzz/seeds/TARGET`; new inputs go to a scratch corpus. Without the address sanitizer: what
/// the targets reach is safe Rust, where a panic is the finding, and the sanitizer's build
/// of the whole dependency tree cost minutes of every test run.
fn fuzz() -> Result<()> {
    let fuzz_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (target, what, seconds) in FUZZ_TARGETS {
        let corpus = std::env::temp_dir().join(format!("keyturn-fuzz-corpus-{target}"));
        std::fs::create_dir_all(&corpus).context("fuzz corpus")?;
        let status = Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(format!("seeds/{target}"))
            // An input that takes seconds is a hang: a finding, never a stalled test run.
            .args(["--", &format!("-max_total_time={seconds}"), "-timeout=5"])
            .current_dir(&fuzz_dir)
            .status()
            .context("run cargo fuzz")?;
        if !status.success() {
            bail!("fuzzing {what} failed: {status} (the crashing input is under fuzz/artifacts)");
        }
    }
    Ok(())
}

/// How long each phase of `cargo xtask test` took, printed after each one and all together at
/// the end (also when one fails), so that a slow suite shows where its time goes.
#[derive(Default)]
struct Phases(Vec<(&'static str, std::time::Duration)>);

impl Phases {
    fn run(&mut self, name: &'static str, phase: impl FnOnce() -> Result<()>) -> Result<()> {
        let started = std::time::Instant::now();
        let outcome = phase();
        self.0.push((name, started.elapsed()));
        let lines: Vec<String> =
            self.0.iter().map(|(name, took)| format!("  {name:24} {:>5} s", took.as_secs())).collect();
        println!("\nxtask test: phases so far\n{}", lines.join("\n"));
        outcome.with_context(|| format!("{name} failed"))
    }
}

/// Runs cargo with `args`, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO")).args(args).status().context("run cargo")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The workspace's directory.
pub fn workspace_root() -> Result<&'static Path> {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent directory")
}

/// Runs `command`, failing on a non-zero exit.
pub fn run_command(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("run {}", describe(command)))?;
    ensure!(status.success(), "{} failed: {status}", describe(command));
    Ok(())
}

/// Stdout of `command` (stderr passes through), failing on a non-zero exit.
pub fn command_output(command: &mut Command) -> Result<String> {
    let output =
        command.stderr(Stdio::inherit()).output().with_context(|| format!("run {}", describe(command)))?;
    ensure!(output.status.success(), "{} failed: {}", describe(command), output.status);
    String::from_utf8(output.stdout).with_context(|| format!("{} printed non-UTF-8", describe(command)))
}

fn describe(command: &Command) -> String {
    let words: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy().into_owned())
        .collect();
    words.join(" ")
}
