//! Builds the agent programs of `runtimes/` (Go, Java, C; Python and Node copied beside
//! them) into `$OUT_DIR/runtimes`, the one directory the runtimes suite runs them from.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

const SOURCES: &str = "runtimes";
/// Scripts run by their interpreters, copied as they are.
const SCRIPTS: [&str; 2] = ["agent.py", "agent.mjs"];
/// C programs: `c/NAME.c` becomes `NAME` (underscores as dashes).
const C_PROGRAMS: [&str; 2] = ["exec_thread", "spawn"];

fn main() -> Result<()> {
    println!("cargo:rerun-if-changed={SOURCES}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let runtimes = out_dir.join("runtimes");
    fs::create_dir_all(&runtimes).with_context(|| format!("create {}", runtimes.display()))?;
    let sources = Path::new(SOURCES);
    for script in SCRIPTS {
        fs::copy(sources.join(script), runtimes.join(script)).with_context(|| format!("copy {script}"))?;
    }
    build_go(&sources.join("go"), &out_dir, &runtimes.join("go-agent"))?;
    build_java(&sources.join("java/Agent.java"), &runtimes.join("java"))?;
    for program in C_PROGRAMS {
        build_c(&sources.join(format!("c/{program}.c")), &runtimes.join(program.replace('_', "-")))?;
    }
    Ok(())
}

/// Runs `command`, failing with its name, what it printed and how to install it.
fn run(command: &mut Command, package: &str) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command.output().with_context(|| {
        format!("run {program} (Debian package {package}; `cargo xtask setup` installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A static Go binary (no cgo, no symbol tables: less to hash and to copy into the test
/// VMs), from the module in `dir`, which needs only the standard library. Go's build cache
/// and module path live under `out_dir`, never in `$HOME`, and nothing is fetched.
fn build_go(dir: &Path, out_dir: &Path, binary: &Path) -> Result<()> {
    run(
        Command::new("go")
            .current_dir(dir)
            .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
            .arg(binary)
            .arg(".")
            .env("CGO_ENABLED", "0")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOENV", "off")
            .env("GOCACHE", out_dir.join("go-cache"))
            .env("GOPATH", out_dir.join("go-path")),
        "golang",
    )
}

/// Java 17 class files in `classes`.
fn build_java(source: &Path, classes: &Path) -> Result<()> {
    run(
        Command::new("javac")
            .args(["--release", "17", "-Xlint:all", "-Werror", "-d"])
            .arg(classes)
            .arg(source),
        "openjdk-17-jdk-headless",
    )
}

/// A static C program with POSIX threads: it runs as it is in the test VMs too.
fn build_c(source: &Path, binary: &Path) -> Result<()> {
    run(
        Command::new("cc")
            .args([
                "-std=c11",
                "-D_GNU_SOURCE",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pthread",
                "-static",
                "-o",
            ])
            .arg(binary)
            .arg(source),
        "gcc and libc6-dev",
    )
}
