//! Builds the BPF programs of `agent-ebpf` with aya-build, for embedding in `keyturn`.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path("../agent-ebpf/Cargo.toml")
        .no_deps()
        .exec()
        .context("cargo metadata of agent-ebpf")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().context("agent-ebpf has no directory")?;
    println!("cargo:rerun-if-changed=../agent-common/src");
    aya_build::build_ebpf(
        [Package { name: "agent-ebpf", root_dir: root_dir.as_str(), ..Package::default() }],
        Toolchain::Nightly,
    )
}
