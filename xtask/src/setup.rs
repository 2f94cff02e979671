//! Installs what a fresh machine lacks, idempotently: Debian packages, the nightly
//! `rust-src` component, bpf-linker built against Debian's LLVM 22, cargo-fuzz, the tests'
//! npm packages (OpenID provider, browser driver), the VM test kernels and the systemd guest's root filesystem.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages keyturn is built with: bpf-linker, built against Debian's LLVM 22 (the
/// LLVM of rustc's nightly).
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];

/// Debian packages keyturn's own package is made and judged with: dpkg-shlibdeps (for its
/// Depends) and lintian.
const PACKAGING_PACKAGES: &[&str] = &["dpkg-dev", "lintian"];

/// Debian packages keyturn is tested with.
const TEST_PACKAGES: &[&str] = &[
    // VM tests of the LSM modes (binutils: `strip` keeps the initramfs small), and the
    // booted-systemd guest's Debian root filesystem
    "qemu-system-x86",
    "debootstrap",
    "binutils",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    // the VM guests' agent runtimes (xtask/src/vm/runtimes.rs): Debian's Python 3.11 and
    // OpenJDK 17 and NodeSource's Node 20 (`nodejs`, below) are copied from this machine into
    // an ext4 image that mkfs.ext4 (e2fsprogs) builds
    "python3.11",
    "openjdk-17-jre-headless",
    "e2fsprogs",
    // host integration tests: network namespaces and veth peers
    "iproute2",
    // the DNS upstream of keyturn's resolver in the tests (tests/tests/dns.rs), also in the
    // VM guests
    "dnsmasq-base",
    // approvers whose group comes from NSS, not /etc/group (tests/tests/nss.rs)
    "libnss-extrausers",
    // the working day (tests/working-day): git over HTTP (git http-backend), Debian's python3
    // with venv, and pip, setuptools and wheel to build the package index's wheels, curl,
    // wget and make; gcc and libc6-dev come with the runtimes below, nm with binutils above,
    // npm with the Node packages
    "git",
    "python3-venv",
    "python3-pip",
    "python3-setuptools",
    "python3-wheel",
    "curl",
    "wget",
    "make",
    // console tests: a throw-away PostgreSQL cluster per test (initdb + pg_ctl on a private port)
    "postgresql",
    // console SIEM tests: a real syslog receiver over TLS (imtcp with the GnuTLS driver),
    // started by the test on a loopback port with its own configuration
    "rsyslog",
    "rsyslog-gnutls",
    // web UI tests: Debian's headless Chromium, driven from Node by playwright-core
    // (tests/browser); a real OpenID provider (oidc-provider in tests/js); npm comes below
    "chromium",
    "nodejs",
    // agent runtimes suite (tests/runtimes, built by tests/build.rs): Go (static, no cgo),
    // Java 17 (javac; the JVM runs the HttpClient agent), C (cc -pthread -static), and
    // Debian's own python3 (not a pyenv shim); Node comes above
    "golang",
    "openjdk-17-jdk-headless",
    "gcc",
    "libc6-dev",
    "python3",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// What building and running keyturn need.
pub fn for_building() -> Result<()> {
    install_packages(BUILD_PACKAGES)?;
    install_rust_src()?;
    install_bpf_linker()
}

/// What `cargo xtask deb` needs.
pub fn for_packaging() -> Result<()> {
    for_building()?;
    install_packages(PACKAGING_PACKAGES)
}

/// What building, packaging, testing and benchmarking need.
pub fn for_testing() -> Result<()> {
    for_packaging()?;
    install_packages(TEST_PACKAGES)?;
    install_cargo_fuzz()?;
    install_node_packages()?;
    install_python_packages()?;
    crate::vm::install_guests()
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_command(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    run_command_in(Path::new("."), program, args, envs)
}

fn run_command_in(dir: &Path, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(program)
        .current_dir(dir)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package]).is_some_and(|s| s == "install ok installed")
}

fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_command("apt-get", &["update", "-qq"], &[])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    run_command("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])
}

fn install_rust_src() -> Result<()> {
    let has_nightly = output("rustup", &["toolchain", "list"]).is_some_and(|t| t.contains("nightly"));
    if !has_nightly {
        eprintln!("setup: installing the nightly toolchain");
        run_command("rustup", &["toolchain", "install", "nightly", "--profile", "minimal"], &[])?;
    }
    let components = output("rustup", &["component", "list", "--installed", "--toolchain", "nightly"]);
    if !components.is_some_and(|c| c.lines().any(|l| l.starts_with("rust-src"))) {
        eprintln!("setup: adding rust-src to nightly");
        run_command("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"], &[])?;
    }
    Ok(())
}

/// `cargo fuzz`, for the coverage-guided fuzzing of the policy parser.
fn install_cargo_fuzz() -> Result<()> {
    if output("cargo", &["fuzz", "--version"]).is_some() {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz");
    run_command(env!("CARGO"), &["install", "cargo-fuzz", "--locked"], &[])
}

/// The tests' Python packages (tests/python/requirements.txt, hash-pinned): the vendors' own
/// code that judges keyturn's output (OCSF's schemas, Slack's SDK), in a venv of Debian's
/// Python, made again when the requirements change.
fn install_python_packages() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python");
    let modified = |file: &Path| fs::metadata(file).and_then(|m| m.modified()).ok();
    let requirements = dir.join("requirements.txt");
    let installed = dir.join(".venv/installed");
    let wanted = modified(&requirements).context("tests/python/requirements.txt")?;
    if modified(&installed).is_some_and(|at| at >= wanted) {
        return Ok(());
    }
    eprintln!("setup: installing the tests' Python packages (tests/python)");
    let venv = dir.join(".venv");
    let _ = fs::remove_dir_all(&venv);
    let venv = venv.to_str().context("venv path")?;
    run_command("/usr/bin/python3", &["-m", "venv", venv], &[])?;
    let requirements = requirements.to_str().context("requirements path")?;
    let pip = format!("{venv}/bin/pip");
    run_command(
        &pip,
        &["install", "--quiet", "--require-hashes", "--only-binary=:all:", "-r", requirements],
        &[],
    )?;
    fs::write(&installed, "").context("mark the venv installed")
}

/// The tests' Node packages as each `package-lock.json` pins them (`tests/js`: the OpenID
/// provider; `tests/browser`: playwright-core, never a browser: the tests drive Debian's
/// Chromium): `npm ci` where `node_modules` is missing or older than the lock.
fn install_node_packages() -> Result<()> {
    for dir in ["js", "browser"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests").join(dir);
        let modified = |file: &str| fs::metadata(dir.join(file)).and_then(|m| m.modified()).ok();
        let lock =
            modified("package-lock.json").with_context(|| format!("{}/package-lock.json", dir.display()))?;
        if modified("node_modules/.package-lock.json").is_some_and(|installed| installed >= lock) {
            continue;
        }
        if output("npm", &["--version"]).is_none() {
            // Debian's nodejs comes without npm (NodeSource's includes it).
            eprintln!("setup: installing npm");
            run_command("apt-get", &["install", "-y", "-qq", "--no-install-recommends", "npm"], &[])?;
        }
        eprintln!("setup: npm ci in {}", dir.display());
        run_command_in(&dir, "npm", &["ci", "--no-audit", "--no-fund"], &[])?;
    }
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    let version = output("bpf-linker", &["--version"]).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
    run_command(
        env!("CARGO"),
        &[
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ],
        &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
    )
}
