//! `keyturn install`: the binary, `keyturn.service`, the agents' slice and a default
//! configuration, on this host or staged under a directory.

use std::{path::Path, process::Command as Process};

use anyhow::{Context as _, bail};

/// The Debian package's unit, which starts the package's `/usr/bin/keyturn`.
const UNIT: &str = include_str!("../../../packaging/keyturn.service");
const PACKAGED_BINARY: &str = "/usr/bin/keyturn";
const DEFAULT_CONFIG: &str = include_str!("../../../packaging/keyturn.toml");
const BINARY: &str = "/usr/local/bin/keyturn";
const UNIT_PATH: &str = "/etc/systemd/system/keyturn.service";
/// What `systemctl enable` creates for the unit's `WantedBy=multi-user.target`.
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/keyturn.service";
/// The slice for agents (`systemd-run --slice=keyturn-agents.slice`), as the package has it.
const SLICE: &str = include_str!("../../../packaging/keyturn-agents.slice");
const SLICE_PATH: &str = "/etc/systemd/system/keyturn-agents.slice";
const SLICE_WANTS_LINK: &str = "/etc/systemd/system/slices.target.wants/keyturn-agents.slice";
const POLICIES_DIR: &str = "/etc/keyturn/policies";

/// Installs the binary, the unit and (unless one exists) the config, under `root` or `/`.
/// Running it again updates the binary and the unit and never touches an existing config.
pub fn install(root: Option<&Path>) -> anyhow::Result<i32> {
    let under = |path: &str| root.unwrap_or(Path::new("/")).join(path.trim_start_matches('/'));
    let exe = std::env::current_exe().context("finding this executable")?;
    let binary = under(BINARY);
    if !same_file(&exe, &binary) {
        place(&binary, 0o755, |to| std::fs::copy(&exe, to).map(drop))?;
    }
    let unit = UNIT.replace(PACKAGED_BINARY, BINARY);
    place(&under(UNIT_PATH), 0o644, |to| std::fs::write(to, &unit))?;
    place(&under(SLICE_PATH), 0o644, |to| std::fs::write(to, SLICE))?;
    let config = under(crate::config::DEFAULT_PATH);
    let kept = config.exists();
    if !kept {
        place(&config, 0o644, |to| std::fs::write(to, DEFAULT_CONFIG))?;
    }
    make_dirs(&under(POLICIES_DIR))?;
    println!(
        "installed {}, {}, {}",
        binary.display(),
        under(UNIT_PATH).display(),
        under(SLICE_PATH).display()
    );
    if kept {
        println!("kept the existing {}", config.display());
    } else {
        println!("wrote {}", config.display());
    }
    if root.is_some() {
        for (unit, link) in [(UNIT_PATH, WANTS_LINK), (SLICE_PATH, SLICE_WANTS_LINK)] {
            let link = under(link);
            make_dirs(link.parent().expect("the link has a directory"))?;
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(unit, &link)
                .with_context(|| format!("creating {}", link.display()))?;
            println!("enabled in {} (not started)", link.display());
        }
        return Ok(0);
    }
    for args in [&["daemon-reload"][..], &["enable", "--now", "keyturn-agents.slice", "keyturn.service"]] {
        let status = Process::new("systemctl")
            .args(args)
            .status()
            .context("running systemctl (is systemd the init system? --root DIR stages without it)")?;
        if !status.success() {
            bail!("systemctl {} failed: {status}", args.join(" "));
        }
    }
    println!("keyturn.service and keyturn-agents.slice enabled and started");
    println!("tag the slice for agents: keyturn tag --unit keyturn-agents.slice --name agents");
    Ok(0)
}

/// Whether `a` and `b` are the same file (installing the installed binary again).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn make_dirs(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Puts a file at `path` with `mode`: `write` fills a temporary file beside it, which is
/// then renamed over `path`, so that nobody (a running daemon, systemd) sees half a file
/// and a busy executable can be replaced.
fn place(path: &Path, mode: u32, write: impl FnOnce(&Path) -> std::io::Result<()>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().context("an installed file has a directory")?;
    make_dirs(dir)?;
    let name = path.file_name().context("an installed file has a name")?;
    let temporary = dir.join(format!(".{}.new", name.display()));
    write(&temporary)
        .and_then(|()| std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("writing {}", path.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
}
