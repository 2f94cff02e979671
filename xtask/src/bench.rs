//! `cargo xtask bench`: builds the `bench` and `console_bench` programs of package `tests`
//! and the `keyturn` binary in release mode and runs both; each measures side by side in
//! one run and prints its own report.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub fn run() -> Result<()> {
    crate::cargo(&["build", "--release", "--package", "tests", "--bin", "bench", "--bin", "console_bench"])?;
    crate::cargo(&["build", "--release", "--package", "agent"])?;
    for name in ["bench", "console_bench"] {
        let bench = target_dir().join("release").join(name);
        let status = Command::new(&bench)
            .env("KEYTURN_BIN", target_dir().join("release/keyturn"))
            .status()
            .with_context(|| format!("run {}", bench.display()))?;
        if !status.success() {
            bail!("{} failed: {status}", bench.display());
        }
    }
    Ok(())
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the workspace's `target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from)
}
