//! `cargo xtask vm`: boots Debian's own 6.1 and 6.12 kernels in qemu (TCG) and runs the
//! integration test executables of package `tests` inside them in the BPF LSM modes.

mod runtimes;
mod systemd;

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::{command_output, run_command, workspace_root};

/// `cargo xtask vm systemd`: only the booted-systemd guest, on the series it boots.
const SYSTEMD_TEST: &str = "systemd";
const SYSTEMD_SERIES: &str = "6.12.";

/// The kernel's LSMs, BPF's included (Debian's kernels do not enable it by default).
const LSMS: &str = "lsm=lockdown,capability,landlock,bpf";

/// The enforcement modes that need BPF LSM, which the host kernel cannot load.
const MODES: [&str; 2] = ["lsm-cgroup", "lsm"];
/// Longest one test executable may run in one mode before `/init` kills it, so that a
/// hung test does not hide the results of the others.
const RUN_TIMEOUT: Duration = Duration::from_mins(10);
/// Time a guest gets to boot and power off, on top of `RUN_TIMEOUT` per run, before qemu
/// is killed and whatever did not finish counts as failed.
const BOOT_TIMEOUT: Duration = Duration::from_mins(3);
/// Guest memory in MiB: the initramfs (test executables with debug info) lives in RAM.
const VM_MEMORY_MIB: &str = "2048";
/// The emulated CPU: the plain x86-64 baseline. With `max` (AVX2, XSAVE, PKU, LA57…) the
/// guest kernel spends more time in every context switch, and the same two suites ran
/// 9 to 31 % slower in four paired boots; nothing the tests load needs more.
const CPU_MODEL: &str = "qemu64";
/// The guest's CPUs: one. With two, a 6.12 guest died of "Oops: int3" in
/// `bpf_lsm_socket_connect` while a test attached its programs: attaching a BPF LSM program
/// patches the hook's call site live (an int3 first, then the call, then the int3 removed),
/// and multi-threaded TCG let the other vCPU run its stale translation of the int3 after
/// the kernel had stopped expecting it. Guests run side by side instead, one per host CPU
/// (`run_jobs`), which keeps the host as busy.
const VCPUS: &str = "1";
/// Parallel tests per executable in the guest: while one test waits (for a hold, a daemon,
/// a timeout), the other runs.
const TEST_THREADS: &str = "--test-threads=2";
/// Test executables that run on the host only: what they test does not depend on the
/// kernel (an OpenID provider, a browser, NSS modules), and the guest has none of them;
/// the working day needs a developer's whole toolchain (git, pip, npm, gcc, make, curl,
/// wget), which the guest does not carry: its holds are the ones the other suites test in
/// every mode; the export's judge is the OCSF project's schema in a Python venv, and what it
/// judges (the trail's records) is the same in every mode; Slack's judge is its SDK in that
/// venv, and a click there decides as the console's other channels do, tested in every mode.
const HOST_ONLY: [&str; 7] = ["export", "nss", "oidc", "slack", "teams", "web_ui", "working_day"];
/// Test executables whose subject does not change with the mode (the console's protocol and
/// the embedded console, whose holds are execs, which `hold` and `daemon` test in every
/// mode; the agent runtimes' threads, whose holds go through the same hooks that `hold`
/// tests in every mode, from threads of every kind), run pairwise rather than as the full
/// matrix: each kernel runs them in one mode, its series' `pairwise_mode`, and the two
/// kernels in different modes, so that every kernel and every mode still sees them.
const PAIRWISE: [&str; 3] = ["console_link", "embedded_console", "runtimes"];
/// Starts every line `/init` prints about a test run; the runner parses them afterwards.
const MARKER: &str = "KEYTURN-VM";
/// Kernel modules the tests need (`ip link add … type veth`) and the disk the runtimes
/// image is attached as (built into 6.12, modules in 6.1).
const MODULES: [&str; 3] = ["veth", "virtio_pci", "virtio_blk"];
/// Host programs the tests run by name (`echo` also by its path, `/bin/echo`); busybox's
/// applets of the same names lack what the tests use (`ip … type veth`, `setpriv --reuid`).
const TOOLS: [&str; 4] = ["echo", "ip", "setpriv", "dnsmasq"];
/// Where the host keeps its programs.
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/// Workspace programs the tests start, found through an environment variable:
/// (variable, package, binary). Each lands at `/<binary>` in the guest.
const HELPERS: [(&str, &str, &str); 2] =
    [("KEYTURN_ACTOR", "tests", "actor"), ("KEYTURN_BIN", "agent", "keyturn")];
/// Users and groups the tests name (`setpriv --reuid=65534`, approver group `nogroup`).
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
/// `localhost`, as the runtimes' HTTP clients resolve it.
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n";
/// Where the guest gets the programs the build script of package `tests` writes to
/// `$OUT_DIR/runtimes` (Go, Java, C, Python and Node agents), and the variable naming it.
const PROGRAMS_DIR: &str = "/runtimes";
const PROGRAMS_VARIABLE: &str = "KEYTURN_RUNTIMES";

/// A Debian kernel series: its packages are `{prefix}N{suffix}` (signed) and
/// `{prefix}N{suffix}-unsigned`, and only the newest N is worth booting.
struct Series {
    prefix: &'static str,
    suffix: &'static str,
    /// The one mode the `PAIRWISE` test executables run in on this series.
    pairwise_mode: &'static str,
}

const SERIES: [Series; 2] = [
    Series { prefix: "linux-image-6.1.0-", suffix: "-cloud-amd64", pairwise_mode: "lsm" },
    Series { prefix: "linux-image-6.12.", suffix: "+deb12-cloud-amd64", pairwise_mode: "lsm-cgroup" },
];

/// An unpacked kernel package.
struct Kernel {
    package: String,
    /// The kernel release, `uname -r` in the guest.
    release: String,
    vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the package.
    modules: PathBuf,
    pairwise_mode: &'static str,
}

/// What the guest runs: test executables by target name, the `HELPERS` they start as
/// (variable, binary name, executable), and the build script's programs directory, if any.
struct Payload {
    tests: Vec<(String, PathBuf)>,
    helpers: Vec<(&'static str, &'static str, PathBuf)>,
    programs: Option<PathBuf>,
    /// The modes each test executable runs in, and libtest's arguments (a filter).
    modes: Vec<&'static str>,
    filter: Vec<String>,
}

/// The console of one guest and how long it ran.
struct Boot {
    console: String,
    elapsed: Duration,
    timed_out: bool,
}

/// The outcome of one test executable in one mode on one kernel.
struct Run {
    kernel: String,
    mode: &'static str,
    test: String,
    /// What passed, or why the run counts as failed.
    outcome: Result<String, String>,
}

/// Downloads and unpacks the newest Debian kernel of each series, unless already there.
fn fetch_kernels(vm_dir: &Path) -> Result<Vec<Kernel>> {
    SERIES.iter().map(|series| fetch_kernel(vm_dir, series)).collect()
}

/// For `cargo xtask setup`: the kernels the VM tests boot, and the systemd guest's root.
pub fn install_guests() -> Result<()> {
    let vm_dir = workspace_root()?.join("target/vm");
    fetch_kernels(&vm_dir)?;
    systemd::root_image(&vm_dir).map(drop)
}

/// What a developer's `cargo xtask vm [--kernel 6.1|6.12] [--mode MODE] [TEST [FILTER…]]`
/// narrows the run to: one kernel series, one mode, one test executable and libtest's
/// arguments for it. The test command runs everything.
#[derive(Default)]
pub struct Selection {
    kernel: Option<String>,
    mode: Option<String>,
    test: Option<String>,
    filter: Vec<String>,
}

impl Selection {
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut selection = Self::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--kernel" => selection.kernel = Some(args.next().context("--kernel needs 6.1 or 6.12")?),
                "--mode" => {
                    let mode = args.next().context("--mode needs a mode")?;
                    ensure!(MODES.contains(&mode.as_str()), "--mode is one of {}", MODES.join(", "));
                    selection.mode = Some(mode);
                }
                _ if selection.test.is_none() => selection.test = Some(arg),
                _ => selection.filter.push(arg),
            }
        }
        Ok(selection)
    }

    fn modes(&self) -> Vec<&'static str> {
        MODES.into_iter().filter(|mode| self.mode.as_deref().is_none_or(|wanted| wanted == *mode)).collect()
    }
}

pub fn run(selection: &Selection) -> Result<()> {
    let root = workspace_root()?;
    let vm_dir = root.join("target/vm");
    let mut kernels = fetch_kernels(&vm_dir)?;
    if let Some(series) = &selection.kernel {
        kernels.retain(|kernel| kernel.release.starts_with(&format!("{series}.")));
        ensure!(!kernels.is_empty(), "no kernel of series {series} (6.1 or 6.12)");
    }
    // The booted-systemd guest runs on the newest kernel, the one production hosts get.
    let systemd_kernel = kernels.iter().find(|kernel| kernel.release.starts_with(SYSTEMD_SERIES));
    let systemd_job = match (selection.test.as_deref(), systemd_kernel) {
        (None | Some(SYSTEMD_TEST), Some(kernel)) => Some(Job::Systemd(kernel)),
        (Some(SYSTEMD_TEST), None) => bail!("the systemd guest boots a 6.12 kernel"),
        _ => None,
    };
    let mut jobs = Vec::new();
    let payload;
    let mut initrds = HashMap::new();
    let mut image = None;
    if selection.test.as_deref() != Some(SYSTEMD_TEST) {
        payload = selected_payload(root, selection)?;
        let runtimes = runtimes::build_image(&vm_dir)?;
        for kernel in &kernels {
            initrds.insert(kernel.release.clone(), build_initramfs(&vm_dir, kernel, &payload, &runtimes)?);
            jobs.extend(kernel.guests(&payload).into_iter().map(Job::Tests));
        }
        image = Some(runtimes.path);
    }
    // The test guests take longer: the systemd guest goes last, to the lane that frees first.
    jobs.extend(systemd_job);
    let context = JobContext { vm_dir: &vm_dir, initrds: &initrds, image };
    let outcomes = run_jobs(jobs, &context)?;

    let mut runs = Vec::new();
    let mut timings = Vec::new();
    let mut systemd_outcome = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Tests { timing, runs: guest_runs } => {
                timings.push(timing);
                runs.extend(guest_runs);
            }
            Outcome::Systemd(outcome) => systemd_outcome = Some(outcome),
        }
    }
    if !runs.is_empty() {
        print_summary(&runs, &timings);
    }
    let failed = runs.iter().filter(|run| run.outcome.is_err()).count();
    if let Some(outcome) = &systemd_outcome {
        match outcome {
            Ok(passed) => println!("vm: {SYSTEMD_TEST}: {passed}"),
            Err(e) => println!("vm: {SYSTEMD_TEST} FAILED: {e:#}"),
        }
    }
    ensure!(failed == 0, "{failed} of {} VM test runs failed", runs.len());
    ensure!(systemd_outcome.is_none_or(|outcome| outcome.is_ok()), "the systemd guest failed");
    Ok(())
}

/// The test executables, modes and filter `selection` asks for.
fn selected_payload(root: &Path, selection: &Selection) -> Result<Payload> {
    let mut payload = build_payload(root)?;
    if let Some(test) = &selection.test {
        payload.tests.retain(|(name, _)| name == test);
        ensure!(!payload.tests.is_empty(), "no VM test executable named {test}");
    }
    payload.modes = selection.modes();
    payload.filter.clone_from(&selection.filter);
    Ok(payload)
}

/// One boot of a kernel's test initramfs: the runs of one mode and, on one guest of each
/// kernel, the runtimes' check. Its `/init` reads which from the kernel's command line.
struct Guest<'a> {
    kernel: &'a Kernel,
    mode: &'static str,
    runs: Vec<(&'static str, &'a str)>,
    checks_runtimes: bool,
}

/// A boot to make: a test guest, or the booted-systemd guest on its kernel.
enum Job<'a> {
    Tests(Guest<'a>),
    Systemd(&'a Kernel),
}

/// What a finished job reports.
enum Outcome {
    Tests { timing: String, runs: Vec<Run> },
    Systemd(Result<String>),
}

/// What every test guest shares: the initramfs of each kernel (by release) and the runtimes
/// image.
struct JobContext<'a> {
    vm_dir: &'a Path,
    initrds: &'a HashMap<String, PathBuf>,
    image: Option<PathBuf>,
}

/// Runs `jobs` on as many lanes as the host has CPUs (each guest has `VCPUS`), taking them
/// in order; returns their outcomes in that order.
fn run_jobs(jobs: Vec<Job>, context: &JobContext) -> Result<Vec<Outcome>> {
    let lanes = thread::available_parallelism().map_or(1, std::num::NonZero::get).min(jobs.len().max(1));
    let count = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<std::collections::VecDeque<_>>());
    let finished = Mutex::new(Vec::with_capacity(count));
    thread::scope(|scope| {
        for _ in 0..lanes {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().expect("job queue").pop_front();
                    let Some((index, job)) = next else { break };
                    let outcome = match job {
                        Job::Tests(guest) => test_guest(context, &guest),
                        Job::Systemd(kernel) => Ok(Outcome::Systemd(systemd::run(context.vm_dir, kernel))),
                    };
                    finished.lock().expect("job outcomes").push((index, outcome));
                }
            });
        }
    });
    let mut finished = finished.into_inner().expect("job outcomes");
    finished.sort_by_key(|(index, _)| *index);
    finished.into_iter().map(|(_, outcome)| outcome).collect()
}

/// Boots `guest` and judges its runs; returns how long it took with them.
fn test_guest(context: &JobContext, guest: &Guest) -> Result<Outcome> {
    let kernel = guest.kernel;
    let initrd = &context.initrds[&kernel.release];
    let image = context.image.as_ref().context("no runtimes image for a test guest")?;
    let drives = [drive(image, "readonly=on")?];
    let runs: Vec<String> = guest.runs.iter().map(|(mode, test)| format!("{mode}/{test}")).collect();
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 {LSMS} keyturn.runs={} keyturn.runtimes={}",
        runs.join(","),
        u8::from(guest.checks_runtimes)
    );
    let label = format!("{} {}", kernel.release, guest.mode);
    let boot = boot(kernel, &label, initrd, &drives, &cmdline, vm_timeout(guest.runs.len()))?;
    let log = context.vm_dir.join(format!("{}-{}.log", kernel.release, guest.mode));
    fs::write(&log, &boot.console).with_context(|| format!("write {}", log.display()))?;
    let idle = idle_percent(&boot.console).map_or_else(String::new, |idle| format!(", CPU {idle}% idle"));
    let timing =
        format!("{label} ({}): {:.0?}{idle}, console in {}", kernel.package, boot.elapsed, log.display());
    Ok(Outcome::Tests { timing, runs: judge_boot(guest, &boot) })
}

// ---- Kernels ----

/// Resolves the newest package of `series`, downloads and unpacks it unless already done.
fn fetch_kernel(vm_dir: &Path, series: &Series) -> Result<Kernel> {
    let package = newest_package(series)?;
    let unpacked = vm_dir.join("kernels").join(&package);
    if !unpacked.exists() {
        let deb = download(&vm_dir.join("download"), &package)?;
        unpack(&deb, &unpacked)?;
    }
    Kernel::find(package, &unpacked, series.pairwise_mode)
}

fn newest_package(series: &Series) -> Result<String> {
    if let Some(package) = series.newest(&apt_cache_search(series)?) {
        return Ok(package);
    }
    run_command(Command::new("apt-get").arg("update"))?;
    series.newest(&apt_cache_search(series)?).with_context(|| {
        format!("apt-cache search finds no package {}N{}[-unsigned]", series.prefix, series.suffix)
    })
}

fn apt_cache_search(series: &Series) -> Result<String> {
    command_output(Command::new("apt-cache").args(["search", "--names-only", &format!("^{}", series.prefix)]))
}

impl Series {
    /// The newest package named in `apt-cache search` output: unsigned if any, else signed.
    fn newest(&self, listing: &str) -> Option<String> {
        let names: Vec<&str> = listing.lines().filter_map(|line| line.split_whitespace().next()).collect();
        ["-unsigned", ""].into_iter().find_map(|flavour| {
            let numbered = names.iter().filter_map(|name| Some((self.number(name, flavour)?, *name)));
            numbered.max().map(|(_, name)| name.to_owned())
        })
    }

    /// N of `{prefix}N{suffix}{flavour}`, if `name` is exactly that.
    fn number(&self, name: &str, flavour: &str) -> Option<u32> {
        let rest = name.strip_prefix(self.prefix)?.strip_suffix(flavour)?.strip_suffix(self.suffix)?;
        rest.parse().ok()
    }
}

/// `apt-get download`s `package` into `dir` unless a `.deb` of it is there already.
fn download(dir: &Path, package: &str) -> Result<PathBuf> {
    if let Some(deb) = downloaded(dir, package)? {
        return Ok(deb);
    }
    create_dir(dir)?;
    run_command(Command::new("apt-get").args(["download", package]).current_dir(dir))?;
    downloaded(dir, package)?
        .with_context(|| format!("apt-get download left no {package}_*.deb in {}", dir.display()))
}

fn downloaded(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    let prefix = format!("{package}_");
    let entries = fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?;
    Ok(entries.flatten().map(|entry| entry.path()).find(|path| {
        let named =
            path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with(&prefix));
        named && path.extension().is_some_and(|extension| extension == "deb")
    }))
}

/// `dpkg -x` into a scratch directory renamed into place, so a half-unpacked package is
/// never taken for a finished one.
fn unpack(deb: &Path, into: &Path) -> Result<()> {
    let mut partial = into.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    remove_dir_if_present(&partial)?;
    create_dir(&partial)?;
    run_command(Command::new("dpkg").arg("-x").arg(deb).arg(&partial))?;
    fs::rename(&partial, into).with_context(|| format!("rename {} to {}", partial.display(), into.display()))
}

impl Kernel {
    fn find(package: String, unpacked: &Path, pairwise_mode: &'static str) -> Result<Self> {
        let boot = unpacked.join("boot");
        let vmlinuz = only_entry(&boot, "vmlinuz-")?;
        let release = vmlinuz
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("vmlinuz-"))
            .with_context(|| format!("odd kernel file name {}", vmlinuz.display()))?
            .to_owned();
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|dir| unpacked.join(dir).join(&release))
            .find(|dir| dir.is_dir())
            .with_context(|| format!("no lib/modules/{release} in {}", unpacked.display()))?;
        Ok(Self { package, release, vmlinuz, modules, pairwise_mode })
    }

    /// The guests this kernel boots, one per mode of `payload`, each making the runs of its
    /// mode, as (mode, test executable): every test, but a `PAIRWISE` one only in
    /// `pairwise_mode` (or in the one mode a developer asked for). The guest of the first
    /// mode also checks the runtimes.
    fn guests<'a>(&'a self, payload: &'a Payload) -> Vec<Guest<'a>> {
        let wanted = |mode: &str, test: &str| {
            !PAIRWISE.contains(&test) || payload.modes.len() == 1 || mode == self.pairwise_mode
        };
        payload
            .modes
            .iter()
            .enumerate()
            .map(|(at, &mode)| Guest {
                kernel: self,
                mode,
                runs: payload
                    .tests
                    .iter()
                    .map(|(test, _)| (mode, test.as_str()))
                    .filter(|&(mode, test)| wanted(mode, test))
                    .collect(),
                checks_runtimes: at == 0,
            })
            .collect()
    }
}

/// The one entry of `dir` whose name starts with `prefix`.
fn only_entry(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?;
    let mut matching = entries.flatten().map(|entry| entry.path()).filter(|path| {
        path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with(prefix))
    });
    match (matching.next(), matching.next()) {
        (Some(path), None) => Ok(path),
        _ => bail!("expected exactly one {prefix}* in {}", dir.display()),
    }
}

// ---- Test executables ----

fn build_payload(root: &Path) -> Result<Payload> {
    let manifest = root.join("tests/Cargo.toml");
    let messages = cargo_messages(root, &["test", "--package", "tests", "--no-run"])?;
    let tests: Vec<_> = executables(&messages, &manifest, "test")
        .into_iter()
        .filter(|(name, _)| !HOST_ONLY.contains(&name.as_str()))
        .collect();
    ensure!(!tests.is_empty(), "cargo built no integration test executable of package tests");
    let programs = build_script_out_dir(&messages, &manifest)
        .map(|out_dir| out_dir.join("runtimes"))
        .filter(|programs| programs.is_dir());
    let helpers = HELPERS
        .into_iter()
        .map(|(variable, package, binary)| Ok((variable, binary, build_binary(root, package, binary)?)))
        .collect::<Result<_>>()?;
    Ok(Payload { tests, helpers, programs, modes: MODES.to_vec(), filter: Vec::new() })
}

fn build_binary(root: &Path, package: &str, binary: &str) -> Result<PathBuf> {
    let manifest = root.join(package).join("Cargo.toml");
    let messages = cargo_messages(root, &["build", "--package", package, "--bin", binary])?;
    executables(&messages, &manifest, "bin")
        .into_iter()
        .find_map(|(name, path)| (name == binary).then_some(path))
        .with_context(|| format!("cargo built no {binary} executable"))
}

/// Runs cargo `args` and returns the JSON messages it printed.
fn cargo_messages(root: &Path, args: &[&str]) -> Result<Vec<Value>> {
    let json = command_output(
        Command::new(env!("CARGO"))
            .args(args)
            .arg("--message-format=json-render-diagnostics")
            .current_dir(root),
    )?;
    Ok(json.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

/// (target name, executable) of every artifact of the package at `manifest` whose target
/// kind is `kind`.
fn executables(messages: &[Value], manifest: &Path, kind: &str) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for message in artifacts(messages, manifest) {
        let is_wanted =
            message["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == kind));
        if let (true, Some(name), Some(executable)) =
            (is_wanted, message["target"]["name"].as_str(), message["executable"].as_str())
        {
            found.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    found
}

/// The `OUT_DIR` of the build script of the package at `manifest`, if it has one.
fn build_script_out_dir(messages: &[Value], manifest: &Path) -> Option<PathBuf> {
    let package = artifacts(messages, manifest).find_map(|message| message["package_id"].as_str())?;
    messages
        .iter()
        .filter(|message| message["reason"] == "build-script-executed" && message["package_id"] == package)
        .find_map(|message| message["out_dir"].as_str().map(PathBuf::from))
}

/// The `compiler-artifact` messages of the package at `manifest`.
fn artifacts<'a>(messages: &'a [Value], manifest: &'a Path) -> impl Iterator<Item = &'a Value> {
    messages.iter().filter(move |message| {
        message["reason"] == "compiler-artifact"
            && message["manifest_path"].as_str().is_some_and(|path| Path::new(path) == manifest)
    })
}

// ---- Initramfs ----

/// Stages and packs the initramfs for `kernel`, ready to mount the runtimes `image`;
/// returns the cpio archive.
fn build_initramfs(
    vm_dir: &Path,
    kernel: &Kernel,
    payload: &Payload,
    image: &runtimes::Image,
) -> Result<PathBuf> {
    let staging = vm_dir.join("initramfs").join(&kernel.release);
    remove_dir_if_present(&staging)?;
    merged_usr(&staging)?;
    let tools = TOOLS.into_iter().map(host_tool).collect::<Result<Vec<_>>>()?;
    for tool in &tools {
        install(&staging, tool, tool)?;
    }
    for (name, executable) in &payload.tests {
        install_stripped(&staging, executable, &Path::new("/tests").join(name))?;
    }
    for (_, binary, executable) in &payload.helpers {
        install_stripped(&staging, executable, &Path::new("/").join(binary))?;
    }
    if let Some(programs) = &payload.programs {
        install_tree(&staging, programs, Path::new(PROGRAMS_DIR))?;
    }
    write_file(&staging.join("etc/passwd"), PASSWD)?;
    write_file(&staging.join("etc/group"), GROUP)?;
    write_file(&staging.join("etc/hosts"), HOSTS)?;
    install_busybox(&staging, &tools)?;
    runtimes::stage_mount_points(image, &staging)?;
    let modules = stage_modules(kernel, &staging)?;
    write_init(&staging, payload, &modules)?;
    console_node(&staging)?;
    let archive = vm_dir.join(format!("{}.cpio", kernel.release));
    pack(&staging, &archive)?;
    Ok(archive)
}

/// Debian's layout: `/bin`, `/sbin`, `/lib`, `/lib64` are links into `/usr`, so every
/// host path (and `ldd`'s library paths) means the same file in the guest.
fn merged_usr(staging: &Path) -> Result<()> {
    for dir in ["bin", "sbin", "lib", "lib64"] {
        let real = staging.join("usr").join(dir);
        create_dir(&real)?;
        let link = staging.join(dir);
        symlink(Path::new("usr").join(dir), &link)
            .with_context(|| format!("create link {}", link.display()))?;
    }
    let var = staging.join("var");
    create_dir(&var)?;
    // iproute2 keeps network namespaces in /var/run/netns, the tests look in /run/netns.
    symlink("../run", var.join("run")).with_context(|| format!("create link {}/run", var.display()))
}

/// `path` with symbolic links resolved, as it must be copied into the guest.
fn host_file(path: impl AsRef<Path>) -> Result<PathBuf> {
    let path = path.as_ref();
    fs::canonicalize(path).with_context(|| format!("find {} on this machine", path.display()))
}

fn host_tool(name: &str) -> Result<PathBuf> {
    let found = TOOL_DIRS.iter().map(|dir| Path::new(dir).join(name)).find(|path| path.exists());
    host_file(found.with_context(|| format!("{name} is not installed in {}", TOOL_DIRS.join(", ")))?)
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}

/// Copies the host file `from` to `guest` in the staging tree, with every shared library
/// `ldd` lists for it at the library's own absolute path.
fn install(staging: &Path, from: &Path, guest: &Path) -> Result<()> {
    copy_into(staging, from, guest)?;
    for library in shared_libraries(from)? {
        if !in_guest(staging, &library).exists() {
            copy_into(staging, &host_file(&library)?, &library)?;
        }
    }
    Ok(())
}

/// [`install`] for the project's own executables, without their debug info: it makes
/// them several times larger, and the initramfs is unpacked into the guest's memory.
/// Symbols stay, so backtraces still name functions.
fn install_stripped(staging: &Path, from: &Path, guest: &Path) -> Result<()> {
    install(staging, from, guest)?;
    let copy = in_guest(staging, guest);
    let status = Command::new("strip").arg("--strip-debug").arg(&copy).status().context("run strip")?;
    ensure!(status.success(), "strip --strip-debug {} failed: {status}", copy.display());
    Ok(())
}

/// [`install`] for every file under the host directory `from`, at `guest`; links are
/// copied as links.
fn install_tree(staging: &Path, from: &Path, guest: &Path) -> Result<()> {
    create_dir(&in_guest(staging, guest))?;
    for entry in fs::read_dir(from).with_context(|| format!("list {}", from.display()))?.flatten() {
        let (path, guest) = (entry.path(), guest.join(entry.file_name()));
        let kind = entry.file_type().with_context(|| format!("stat {}", path.display()))?;
        if kind.is_dir() {
            install_tree(staging, &path, &guest)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).with_context(|| format!("read link {}", path.display()))?;
            let link = in_guest(staging, &guest);
            symlink(target, &link).with_context(|| format!("create link {}", link.display()))?;
        } else {
            install(staging, &path, &guest)?;
        }
    }
    Ok(())
}

fn copy_into(staging: &Path, from: &Path, guest: &Path) -> Result<()> {
    let to = in_guest(staging, guest);
    if let Some(parent) = to.parent() {
        create_dir(parent)?;
    }
    fs::copy(from, &to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn in_guest(staging: &Path, guest: &Path) -> PathBuf {
    staging.join(guest.strip_prefix("/").unwrap_or(guest))
}

/// The absolute paths `ldd` prints for `binary` (the dynamic loader included); none for a
/// static executable.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output =
        Command::new("ldd").arg(binary).output().with_context(|| format!("run ldd {}", binary.display()))?;
    if !output.status.success() {
        return Ok(Vec::new());
    }
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// busybox, linked under every applet name it lists except those of the real `tools`.
fn install_busybox(staging: &Path, tools: &[PathBuf]) -> Result<()> {
    let busybox = host_file("/bin/busybox")?;
    install(staging, &busybox, &busybox)?;
    let applets = command_output(Command::new(&busybox).arg("--list-full"))?;
    for applet in applets.lines().map(Path::new) {
        let link = in_guest(staging, applet);
        let shadows_tool = tools.iter().any(|tool| tool.file_name() == applet.file_name());
        if shadows_tool || link.symlink_metadata().is_ok() {
            continue;
        }
        symlink(&busybox, &link).with_context(|| format!("create link {}", link.display()))?;
    }
    Ok(())
}

/// Copies each module in `MODULES` and the modules it depends on, uncompressed for busybox
/// insmod, into `/modules`; returns their guest paths in load order. The packages ship no
/// `modules.dep` (depmod writes it on install), so dependencies come from each module's
/// own `depends=` entry.
fn stage_modules(kernel: &Kernel, staging: &Path) -> Result<Vec<String>> {
    let mut index = HashMap::new();
    index_modules(&kernel.modules.join("kernel"), &mut index)?;
    create_dir(&staging.join("modules"))?;
    let mut order = Vec::new();
    for wanted in MODULES {
        if index.contains_key(wanted) {
            stage_with_dependencies(&index, wanted, staging, &mut order)?;
        } else {
            ensure!(
                is_builtin(kernel, wanted)?,
                "{wanted} is neither a module nor built into {}",
                kernel.release
            );
        }
    }
    Ok(order)
}

/// Maps module names to their files under `dir`.
fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.to_str().and_then(module_name) {
            index.insert(name, path);
        }
    }
    Ok(())
}

/// Stages `module` after everything it depends on, each once, recording guest paths in
/// `order`.
fn stage_with_dependencies(
    index: &HashMap<String, PathBuf>,
    module: &str,
    staging: &Path,
    order: &mut Vec<String>,
) -> Result<()> {
    let guest = format!("/modules/{module}.ko");
    if order.contains(&guest) {
        return Ok(());
    }
    let source = index.get(module).with_context(|| format!("no module file for {module}"))?;
    let staged = in_guest(staging, Path::new(&guest));
    decompress(source, &staged)?;
    let image = fs::read(&staged).with_context(|| format!("read {}", staged.display()))?;
    for dependency in dependencies(&image) {
        stage_with_dependencies(index, &dependency, staging, order)?;
    }
    order.push(guest);
    Ok(())
}

/// The names in the `depends=` entry of a module's `.modinfo`, spelled as files are.
fn dependencies(image: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = image.windows(KEY.len()).position(|window| window == KEY) else {
        return Vec::new();
    };
    let value = image[at + KEY.len()..].split(|byte| *byte == 0).next().unwrap_or_default();
    String::from_utf8_lossy(value).split(',').filter(|name| !name.is_empty()).map(normalize).collect()
}

/// `veth` for `kernel/drivers/net/veth.ko.xz`; `None` for other files.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split_once(".ko").map(|(name, _)| normalize(name))
}

/// Module names treat `-` and `_` alike.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn is_builtin(kernel: &Kernel, module: &str) -> Result<bool> {
    let builtin = kernel.modules.join("modules.builtin");
    let listing = fs::read_to_string(&builtin).with_context(|| format!("read {}", builtin.display()))?;
    Ok(listing.lines().any(|path| module_name(path).as_deref() == Some(module)))
}

/// Writes `source` (`.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`) uncompressed to `target`.
fn decompress(source: &Path, target: &Path) -> Result<()> {
    let decompressor = match source.extension().and_then(|extension| extension.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => {
            fs::copy(source, target).with_context(|| format!("copy {}", source.display()))?;
            return Ok(());
        }
    };
    let output = fs::File::create(target).with_context(|| format!("create {}", target.display()))?;
    run_command(Command::new(decompressor).arg("-dc").arg(source).stdout(output))
}

/// The guest's `/init`: mounts what the tests need, checks the runtimes if the kernel's command
/// line says `keyturn.runtimes=1`, makes the runs its `keyturn.runs=MODE/TEST,…` names
/// between marker lines, and powers off.
fn write_init(staging: &Path, payload: &Payload, modules: &[String]) -> Result<()> {
    let mut variables: Vec<String> =
        payload.helpers.iter().map(|(variable, binary, _)| format!("{variable}=/{binary}")).collect();
    if payload.programs.is_some() {
        variables.push(format!("{PROGRAMS_VARIABLE}={PROGRAMS_DIR}"));
    }
    let script = format!(
        r#"#!/bin/sh
# Written by `cargo xtask vm`.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
on() {{ mkdir -p "$3" && mount -t "$1" "$2" "$3" || echo "{MARKER} cannot mount $1 on $3"; }}
on proc proc /proc
on sysfs sysfs /sys
on devtmpfs devtmpfs /dev
on tmpfs tmpfs /tmp
on tmpfs tmpfs /run
on cgroup2 cgroup2 /sys/fs/cgroup
on bpf bpf /sys/fs/bpf
on securityfs securityfs /sys/kernel/security
mkdir -p /run/netns
ip link set lo up
for module in {modules}; do insmod "$module" || echo "{MARKER} cannot insmod $module"; done
echo "{MARKER} kernel=$(uname -r) lsm=$(cat /sys/kernel/security/lsm)"
runs= check_runtimes=
for word in $(cat /proc/cmdline); do
  case $word in
    keyturn.runs=*) runs=$(echo "${{word#keyturn.runs=}}" | tr , ' ') ;;
    keyturn.runtimes=1) check_runtimes=1 ;;
  esac
done
{runtimes}failed=0
for run in $runs; do
  mode=${{run%/*}} test=${{run#*/}}
  echo "{MARKER} mode=$mode test=$test start"
  KEYTURN_TEST_MODE=$mode {variables} RUST_BACKTRACE=1 \
    timeout {run_timeout} "/tests/$test" {TEST_THREADS} --color=never {filter}
  code=$?
  echo "{MARKER} mode=$mode test=$test exit=$code"
  [ "$code" = 0 ] || failed=1
done
[ "$failed" = 0 ] || {{ echo "{MARKER} kernel log follows"; dmesg; }}
echo "{MARKER} $(head -n 1 /proc/stat)"
poweroff -f
"#,
        modules = modules.join(" "),
        filter = payload
            .filter
            .iter()
            .map(|arg| format!("'{}'", arg.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" "),
        runtimes = runtimes::init_lines(),
        variables = variables.join(" "),
        run_timeout = RUN_TIMEOUT.as_secs(),
    );
    let init = staging.join("init");
    fs::write(&init, script).with_context(|| format!("write {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("make {} executable", init.display()))
}

/// `/dev/console`, which the kernel opens for `/init` before anything is mounted.
fn console_node(staging: &Path) -> Result<()> {
    let dev = staging.join("dev");
    create_dir(&dev)?;
    run_command(Command::new("mknod").arg(dev.join("console")).args(["c", "5", "1"]))
        .context("create /dev/console for the initramfs (needs root)")
}

/// Packs `staging` into a newc cpio archive with the `cpio` command.
fn pack(staging: &Path, archive: &Path) -> Result<()> {
    let mut list = Vec::new();
    list_tree(staging, Path::new("."), &mut list)?;
    let output = fs::File::create(archive).with_context(|| format!("create {}", archive.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["--create", "--format=newc", "--null", "--quiet"])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(output)
        .spawn()
        .context("run cpio")?;
    let mut stdin = cpio.stdin.take().context("cpio stdin")?;
    stdin.write_all(&list).context("feed file names to cpio")?;
    drop(stdin);
    let status = cpio.wait().context("wait for cpio")?;
    ensure!(status.success(), "cpio failed packing {}: {status}", staging.display());
    Ok(())
}

/// NUL-terminated paths of `relative` and everything under it, parents first.
fn list_tree(staging: &Path, relative: &Path, list: &mut Vec<u8>) -> Result<()> {
    list.extend_from_slice(relative.as_os_str().as_encoded_bytes());
    list.push(0);
    let path = staging.join(relative);
    if !path.symlink_metadata().with_context(|| format!("stat {}", path.display()))?.is_dir() {
        return Ok(());
    }
    let mut entries: Vec<_> =
        fs::read_dir(&path).with_context(|| format!("list {}", path.display()))?.flatten().collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        list_tree(staging, &relative.join(entry.file_name()), list)?;
    }
    Ok(())
}

// ---- Boot ----

/// `BOOT_TIMEOUT` plus `RUN_TIMEOUT` for each of `runs`.
fn vm_timeout(runs: usize) -> Duration {
    BOOT_TIMEOUT + RUN_TIMEOUT * u32::try_from(runs).unwrap_or(u32::MAX)
}

/// qemu's `-drive` for the raw disk image at `path`, with `options`.
fn drive(path: &Path, options: &str) -> Result<String> {
    // qemu reads two commas in an option's value as one.
    let path = path.to_str().context("a disk image path is not UTF-8")?.replace(',', ",,");
    Ok(format!("if=virtio,format=raw,{options},file={path}"))
}

/// Boots `kernel` with `initrd`, the disks `drives` and the kernel command line `cmdline`
/// under TCG, streaming and capturing its serial console, and kills qemu after `timeout`.
fn boot(
    kernel: &Kernel,
    label: &str,
    initrd: &Path,
    drives: &[String],
    cmdline: &str,
    timeout: Duration,
) -> Result<Boot> {
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", CPU_MODEL, "-m", VM_MEMORY_MIB, "-smp", VCPUS])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(drives.iter().flat_map(|drive| ["-drive", drive]))
        .args(["-append", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64")?;
    let serial = qemu.stdout.take().context("qemu stdout")?;
    let prefix = label.to_owned();
    let reader = thread::spawn(move || stream_console(serial, &prefix));
    let deadline = started + timeout;
    let mut timed_out = false;
    while qemu.try_wait().context("wait for qemu")?.is_none() {
        if Instant::now() >= deadline {
            eprintln!("[{label}] timed out after {timeout:?}: killing qemu");
            qemu.kill().context("kill qemu")?;
            qemu.wait().context("reap qemu")?;
            timed_out = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let console = reader.join().map_err(|_| anyhow!("the console reader of {label} panicked"))?;
    Ok(Boot { console, elapsed: started.elapsed(), timed_out })
}

/// Prints each console line prefixed with `label` and returns them all.
fn stream_console(serial: impl Read, label: &str) -> String {
    let mut console = String::new();
    for line in BufReader::new(serial).split(b'\n').map_while(Result::ok) {
        let line = without_escapes(&String::from_utf8_lossy(&line));
        println!("[{label}] {line}");
        console.push_str(&line);
        console.push('\n');
    }
    console
}

/// `line` without terminal escape sequences and control characters: the firmware resets and
/// clears the screen, which would wipe the terminal the console is streamed to.
fn without_escapes(line: &str) -> String {
    let mut clean = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            skip_escape_sequence(&mut chars);
        } else if c == '\t' || !c.is_control() {
            clean.push(c);
        }
    }
    clean
}

/// Skips the rest of an escape sequence: `ESC [ parameters final-byte`, or `ESC` and one
/// character.
fn skip_escape_sequence(chars: &mut std::str::Chars) {
    if chars.next() == Some('[') {
        chars.by_ref().find(|c| ('@'..='~').contains(c));
    }
}

// ---- Verdicts ----

/// The runtimes' check if the guest made it, then each of its runs.
fn judge_boot(guest: &Guest, boot: &Boot) -> Vec<Run> {
    let blame = |why: String| if boot.timed_out { format!("{why} (the VM timed out)") } else { why };
    let release = &guest.kernel.release;
    let mut runs = Vec::new();
    if guest.checks_runtimes {
        let outcome = runtimes::judge(&boot.console).map_err(blame);
        runs.push(Run { kernel: release.clone(), mode: "boot", test: "runtimes".to_owned(), outcome });
    }
    for &(mode, test) in &guest.runs {
        let outcome = judge_run(&boot.console, mode, test).map(|passed| passed.to_string()).map_err(blame);
        runs.push(Run { kernel: release.clone(), mode, test: test.to_owned(), outcome });
    }
    runs
}

/// What a run that passed reports: how many tests, and how long libtest says they took.
#[derive(Debug, PartialEq)]
struct Passed {
    tests: u32,
    took: Option<String>,
}

impl std::fmt::Display for Passed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} tests", self.tests)?;
        self.took.as_ref().map_or(Ok(()), |took| write!(f, " in {took}"))
    }
}

/// What passed of `test` in `mode` if its markers and summary say it all passed, nothing
/// failed and nothing was ignored; else why not.
fn judge_run(console: &str, mode: &str, test: &str) -> Result<Passed, String> {
    let lines: Vec<&str> = console.lines().collect();
    let start = format!("{MARKER} mode={mode} test={test} start");
    let exit_marker = format!("{MARKER} mode={mode} test={test} exit=");
    let begin = lines.iter().position(|line| line.contains(&start)).ok_or("never started")?;
    let (end, exit) = lines[begin..]
        .iter()
        .enumerate()
        .find_map(|(at, line)| Some((begin + at, line.split_once(&exit_marker)?.1.trim())))
        .ok_or("no exit marker: the guest died or hung")?;
    let output = &lines[begin..end];
    if exit != "0" {
        return Err(format!("exit {exit}{}", failed_tests(output)));
    }
    let summary = output
        .iter()
        .rev()
        .find_map(|line| line.split_once("test result: ").map(|(_, summary)| summary))
        .ok_or("no `test result:` summary")?;
    parse_summary(summary)
}

/// ", failed: a, b" for the `test a ... FAILED` lines of `output`.
fn failed_tests(output: &[&str]) -> String {
    let names: Vec<&str> =
        output.iter().filter_map(|line| line.strip_prefix("test ")?.strip_suffix(" ... FAILED")).collect();
    if names.is_empty() { String::new() } else { format!(", failed: {}", names.join(", ")) }
}

/// Accepts `ok. N passed; 0 failed; 0 ignored; …; finished in T` with N > 0.
fn parse_summary(summary: &str) -> Result<Passed, String> {
    let rejected = || Err(format!("test result: {summary}"));
    let Some(("ok", counts)) = summary.split_once(". ") else {
        return rejected();
    };
    let count =
        |what: &str| counts.split("; ").find_map(|part| part.strip_suffix(what)?.trim().parse::<u32>().ok());
    match (count(" passed"), count(" failed"), count(" ignored")) {
        (Some(tests), Some(0), Some(0)) if tests > 0 => {
            let took =
                counts.split("; ").find_map(|part| part.strip_prefix("finished in ")).map(str::to_owned);
            Ok(Passed { tests, took })
        }
        _ => rejected(),
    }
}

/// How much of its CPUs' time the guest left idle, from the `cpu` line of `/proc/stat` that
/// `/init` prints last (user, nice, system, idle, iowait, irq, softirq, steal…): near 0,
/// the tests wait for the emulated CPUs rather than for timeouts.
fn idle_percent(console: &str) -> Option<u64> {
    let marker = format!("{MARKER} cpu ");
    let line = console.lines().find_map(|line| line.split_once(&marker).map(|(_, ticks)| ticks))?;
    let ticks: Vec<u64> = line.split_whitespace().take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    let total: u64 = ticks.iter().sum();
    (ticks.len() == 8 && total > 0).then(|| (ticks[3] + ticks[4]) * 100 / total)
}

fn print_summary(runs: &[Run], timings: &[String]) {
    println!("\nVM test runs");
    for timing in timings {
        println!("  {timing}");
    }
    let width = runs.iter().map(|run| run.kernel.len()).max().unwrap_or(0);
    let test_width = runs.iter().map(|run| run.test.len()).max().unwrap_or(0);
    println!("{:width$}  {:10}  {:test_width$}  result", "kernel", "mode", "test");
    for run in runs {
        let result = match &run.outcome {
            Ok(passed) => format!("passed ({passed})"),
            Err(why) => format!("FAILED: {why}"),
        };
        println!("{:width$}  {:10}  {:test_width$}  {result}", run.kernel, run.mode, run.test);
    }
}

// ---- Commands ----

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSING: &str = "KEYTURN-VM mode=lsm test=hold start\n\nrunning 2 tests\ntest a ... ok\n\
        test b ... ok\n\ntest result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; \
        finished in 1.00s\n\nKEYTURN-VM mode=lsm test=hold exit=0\n";

    #[test]
    fn the_newest_unsigned_kernel_wins_by_number_not_by_text() {
        let listing = "linux-image-6.12.99+deb12-cloud-amd64-unsigned - Linux 6.12\n\
            linux-image-6.12.117+deb12-cloud-amd64-unsigned - Linux 6.12\n\
            linux-image-6.12.118+deb12-cloud-amd64 - Linux 6.12 (signed)\n\
            linux-image-6.12.119+deb12-cloud-amd64-dbg - Debug symbols\n\
            linux-image-6.12-cloud-amd64-dbg - meta-package\n";
        assert_eq!(
            SERIES[1].newest(listing).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn a_signed_kernel_is_the_fallback() {
        let listing = "linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 (signed)\n\
            linux-image-6.1.0-57-cloud-amd64-dbg - Debug symbols\n";
        assert_eq!(SERIES[0].newest(listing).as_deref(), Some("linux-image-6.1.0-56-cloud-amd64"));
        assert_eq!(SERIES[0].newest(""), None);
    }

    #[test]
    fn each_mode_boots_a_guest_and_pairwise_tests_run_once_per_kernel() {
        let kernel = |pairwise_mode| Kernel {
            package: String::new(),
            release: String::new(),
            vmlinuz: PathBuf::new(),
            modules: PathBuf::new(),
            pairwise_mode,
        };
        let mut payload = Payload {
            tests: ["hold", "console_link"].map(|name| (name.to_owned(), PathBuf::new())).to_vec(),
            helpers: Vec::new(),
            programs: None,
            modes: MODES.to_vec(),
            filter: Vec::new(),
        };
        let runs = |kernel: &Kernel, payload: &Payload| -> Vec<(&'static str, Vec<String>, bool)> {
            let guests = kernel.guests(payload);
            let described = guests.iter().map(|guest| {
                let runs = guest.runs.iter().map(|(mode, test)| format!("{mode}/{test}")).collect();
                (guest.mode, runs, guest.checks_runtimes)
            });
            described.collect()
        };
        let strings = |runs: &[&str]| runs.iter().map(|run| (*run).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            runs(&kernel("lsm"), &payload),
            [
                ("lsm-cgroup", strings(&["lsm-cgroup/hold"]), true),
                ("lsm", strings(&["lsm/hold", "lsm/console_link"]), false)
            ]
        );
        assert_eq!(
            runs(&kernel("lsm-cgroup"), &payload),
            [
                ("lsm-cgroup", strings(&["lsm-cgroup/hold", "lsm-cgroup/console_link"]), true),
                ("lsm", strings(&["lsm/hold"]), false)
            ]
        );
        payload.modes = vec!["lsm-cgroup"];
        assert_eq!(
            runs(&kernel("lsm"), &payload),
            [("lsm-cgroup", strings(&["lsm-cgroup/hold", "lsm-cgroup/console_link"]), true)]
        );
        let modes: std::collections::HashSet<&str> =
            SERIES.iter().map(|series| series.pairwise_mode).collect();
        assert_eq!(modes, MODES.into_iter().collect(), "between them the kernels run every mode");
    }

    #[test]
    fn a_clean_run_passes() {
        assert_eq!(
            judge_run(PASSING, "lsm", "hold"),
            Ok(Passed { tests: 2, took: Some("1.00s".to_owned()) })
        );
    }

    #[test]
    fn skipped_failed_empty_unfinished_or_silent_runs_fail() {
        let spoiled = [
            ("0 ignored", "1 ignored"),
            ("0 failed", "1 failed"),
            ("2 passed", "0 passed"),
            ("result: ok", "result: FAILED"),
            ("exit=0", "exit=143"),
            ("test result", "test outcome"),
            ("KEYTURN-VM mode=lsm test=hold exit=0", ""),
        ];
        for (from, to) in spoiled {
            assert!(judge_run(&PASSING.replace(from, to), "lsm", "hold").is_err(), "{from} -> {to}");
        }
        assert!(judge_run(PASSING, "lsm-cgroup", "hold").is_err());
    }

    #[test]
    fn a_failed_run_names_its_failed_tests() {
        let failing = PASSING.replace("test b ... ok", "test b ... FAILED").replace("exit=0", "exit=101");
        assert_eq!(judge_run(&failing, "lsm", "hold"), Err("exit 101, failed: b".to_owned()));
    }

    #[test]
    fn the_build_script_out_dir_is_the_one_of_the_package_asked_for() {
        let messages: Vec<Value> = [
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/agent#0.1.0","manifest_path":"/w/agent/Cargo.toml"}"#,
            r#"{"reason":"build-script-executed","package_id":"path+file:///w/agent#0.1.0","out_dir":"/t/agent-1/out"}"#,
            r#"{"reason":"build-script-executed","package_id":"path+file:///w/tests#0.1.0","out_dir":"/t/tests-2/out"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#0.1.0","manifest_path":"/w/tests/Cargo.toml"}"#,
        ]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
        let out_dir = |manifest: &str| build_script_out_dir(&messages, Path::new(manifest));
        assert_eq!(out_dir("/w/tests/Cargo.toml"), Some(PathBuf::from("/t/tests-2/out")));
        assert_eq!(out_dir("/w/agent/Cargo.toml"), Some(PathBuf::from("/t/agent-1/out")));
        assert_eq!(out_dir("/w/console/Cargo.toml"), None);
        assert_eq!(build_script_out_dir(&messages[..1], Path::new("/w/agent/Cargo.toml")), None);
    }

    #[test]
    fn idle_time_comes_from_the_last_cpu_line() {
        let console = "KEYTURN-VM mode=lsm test=hold exit=0\nKEYTURN-VM cpu  580 0 220 1100 100 0 0 0 0 0\n";
        assert_eq!(idle_percent(console), Some(60));
        assert_eq!(idle_percent("KEYTURN-VM cpu  1 2\n"), None);
        assert_eq!(idle_percent(PASSING), None);
    }

    #[test]
    fn escape_sequences_and_carriage_returns_are_dropped() {
        assert_eq!(without_escapes("\x1bc\x1b[?7l\x1b[2JSeaBIOS\r"), "SeaBIOS");
    }

    #[test]
    fn module_dependencies_come_from_modinfo() {
        let image = b"\x7fELF\x02\0license=GPL\0depends=udp_tunnel,ip6-udp-tunnel\0vermagic=6.1\0";
        assert_eq!(dependencies(image), ["udp_tunnel", "ip6_udp_tunnel"]);
        assert!(dependencies(b"\0depends=\0name=veth\0").is_empty());
        assert_eq!(module_name("kernel/drivers/net/veth.ko.xz").as_deref(), Some("veth"));
        assert_eq!(module_name("modules.order"), None);
    }
}
