//! Developer and CI automation: `cargo xtask setup | run | test | vm | bench`.

mod bench;
mod setup;
mod vm;

use std::process::Command;

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask <setup | run | test | vm | bench>
  setup   install what this machine lacks (Debian packages, rust-src, bpf-linker, VM kernels, tests/js)
  run     setup, build, and start the keyturn daemon with its embedded defaults
  test    setup, then every test: unit, host integration, fuzzing, VM (Debian 6.1 and 6.12)
  vm      only the VM tests; `vm [--kernel 6.1|6.12] [--mode lsm-cgroup|lsm] [TEST [FILTER…]]`
          runs one test executable, with libtest's FILTER, on one kernel, in one mode
  bench   benchmarks, reported side by side from one run";

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "setup" => setup::run(),
        "run" => {
            setup::run()?;
            cargo(&["build", "--release", "--package", "agent"])?;
            let status = Command::new("target/release/keyturn").arg("daemon").status()?;
            if !status.success() {
                bail!("keyturn daemon exited with {status}");
            }
            Ok(())
        }
        "test" => {
            setup::run()?;
            // Includes the console's suite, which starts PostgreSQL clusters as the postgres
            // user (so it runs as root, as all of `test` does).
            cargo(&["test", "--workspace", "--exclude", "tests", "--exclude", "agent-ebpf"])?;
            // The daemon tests run the real `keyturn` binary.
            cargo(&["build", "--package", "agent"])?;
            cargo(&["test", "--package", "tests"])?;
            fuzz()?;
            vm::run(&vm::Selection::default())
        }
        "vm" => vm::run(&vm::Selection::parse(std::env::args().skip(2))?),
        "bench" => {
            setup::run()?;
            bench::run()
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// The fuzz targets (`fuzz/fuzz_targets`) and the seconds each is fuzzed in every test run:
/// what hostile or corrupt bytes reach first, the operator's policy files and the kernel's
/// BTF.
const FUZZ_TARGETS: [(&str, &str, u32); 2] =
    [("policy", "the policy parser", 20), ("btf", "the BTF reader", 10)];

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

/// Runs cargo with `args`, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO")).args(args).status().context("run cargo")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}
