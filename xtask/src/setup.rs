//! Installs what a fresh machine lacks, idempotently: Debian packages, the nightly
//! `rust-src` component, bpf-linker built against Debian's LLVM 22, cargo-fuzz, the browser
//! test's npm packages, the VM test kernels.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages keyturn builds and tests with.
const PACKAGES: &[&str] = &[
    // bpf-linker, built against Debian's LLVM 22 (the LLVM of rustc's nightly)
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // VM tests of the LSM modes (binutils: `strip` keeps the initramfs small)
    "qemu-system-x86",
    "binutils",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    // host integration tests: network namespaces and veth peers
    "iproute2",
    // console tests: a throw-away PostgreSQL cluster per test (initdb + pg_ctl on a private port)
    "postgresql",
    // web UI tests: Debian's headless Chromium, driven from Node by playwright-core (tests/browser)
    "chromium",
    "nodejs",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    install_packages()?;
    install_rust_src()?;
    install_bpf_linker()?;
    install_cargo_fuzz()?;
    install_browser_packages()?;
    crate::vm::install_kernels()
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_command(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(program)
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

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
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

/// tests/browser's npm packages (playwright-core, never a browser: the tests drive Debian's
/// Chromium), exactly as package-lock.json pins them.
fn install_browser_packages() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    let lock = modified(&dir.join("package-lock.json")).context("tests/browser/package-lock.json")?;
    if modified(&dir.join("node_modules")).is_some_and(|installed| installed >= lock) {
        return Ok(());
    }
    eprintln!("setup: npm ci in tests/browser");
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("run npm")?;
    if !status.success() {
        bail!("npm ci in {} failed: {status}", dir.display());
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
