//! `cargo xtask deb [--dev]`: the Debian package `target/debian/keyturn_VERSION_ARCH.deb`,
//! made with Debian's own tools (dpkg-shlibdeps, dpkg-deb) from the release build (`--dev`:
//! the debug build the tests already made) and `packaging/`: the binary, the systemd unit,
//! the configuration as a conffile, the man pages and completions `keyturn generate`
//! writes, and the maintainer scripts. [`check`] looks inside it and has lintian judge it.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, command_output, run_command, workspace_root};

/// Which build of `keyturn` goes into the package.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Release,
    Dev,
}

/// The files the package marks as the operator's: an upgrade asks before replacing an
/// edited one, and removal (short of purge) keeps them.
const CONFFILES: [&str; 1] = ["/etc/keyturn/keyturn.toml"];
const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];
/// Where Debian 12's systemd and lintian expect a package's units.
const UNIT_DIR: &str = "lib/systemd/system";

/// The units in `packaging/`: the daemon, and the slice it tags for agents.
const UNITS: [&str; 2] = ["keyturn.service", "keyturn-agents.slice"];
/// Where each shell's completion of `keyturn generate` goes: (its file, the package's path).
const COMPLETIONS: [(&str, &str); 3] = [
    ("keyturn.bash", "usr/share/bash-completion/completions/keyturn"),
    ("_keyturn", "usr/share/zsh/vendor-completions/_keyturn"),
    ("keyturn.fish", "usr/share/fish/vendor_completions.d/keyturn.fish"),
];

/// Builds `keyturn` (as `build` says) and its package; returns the package's path.
pub fn build(build: Build) -> Result<PathBuf> {
    let root = workspace_root()?;
    let binary = match build {
        Build::Release => {
            cargo(&["build", "--release", "--package", "agent"])?;
            root.join("target/release/keyturn")
        }
        Build::Dev => {
            cargo(&["build", "--package", "agent"])?;
            root.join("target/debug/keyturn")
        }
    };
    let packaging = root.join("packaging");
    // debhelper's layout: the package's tree in debian/keyturn, beside the debian/control
    // dpkg-shlibdeps reads.
    let work = root.join("target/debian/work");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    }
    let tree = work.join("debian/keyturn");
    let epoch = source_date_epoch(root)?;

    let staged =
        put(&tree, "usr/bin/keyturn", 0o755, &fs::read(&binary).context("read the keyturn binary")?)?;
    run_command(Command::new("strip").args(["--strip-unneeded", "--remove-section=.comment"]).arg(&staged))?;
    for unit in UNITS {
        put(&tree, &format!("{UNIT_DIR}/{unit}"), 0o644, &read(&packaging.join(unit))?)?;
    }
    put(&tree, "etc/keyturn/keyturn.toml", 0o644, &read(&packaging.join("keyturn.toml"))?)?;
    make_dir(&tree.join("etc/keyturn/policies"))?;
    put(&tree, "usr/share/doc/keyturn/copyright", 0o644, &read(&packaging.join("debian/copyright"))?)?;
    put(&tree, "usr/share/doc/keyturn/changelog.gz", 0o644, &gzip(changelog(&epoch).as_bytes())?)?;
    generated_docs(&staged, &work, &tree)?;

    let arch = command_output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned();
    let control = fs::read_to_string(packaging.join("debian/control"))
        .context("read packaging/debian/control")?
        .replace("{version}", env!("CARGO_PKG_VERSION"))
        .replace("{arch}", &arch)
        .replace("{installed_size}", &installed_kib(&tree)?.to_string())
        .replace("{depends}", &shared_library_depends(&work, &staged)?);
    put(&tree, "DEBIAN/control", 0o644, control.as_bytes())?;
    put(&tree, "DEBIAN/conffiles", 0o644, format!("{}\n", CONFFILES.join("\n")).as_bytes())?;
    put(&tree, "DEBIAN/md5sums", 0o644, md5sums(&tree)?.as_bytes())?;
    for script in SCRIPTS {
        put(&tree, &format!("DEBIAN/{script}"), 0o755, &read(&packaging.join("debian").join(script))?)?;
    }

    let deb = root.join(format!("target/debian/keyturn_{}_{arch}.deb", env!("CARGO_PKG_VERSION")));
    run_command(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&tree)
            .arg(&deb)
            .env("SOURCE_DATE_EPOCH", epoch.seconds.to_string()),
    )?;
    println!("built {}", deb.display());
    Ok(deb)
}

/// `deb` again as version `version` (the same files): an upgrade to install over it.
pub fn with_version(deb: &Path, version: &str) -> Result<PathBuf> {
    let dir = deb.with_extension("repack");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    run_command(Command::new("dpkg-deb").arg("--raw-extract").arg(deb).arg(&dir))?;
    let control_path = dir.join("DEBIAN/control");
    let control = fs::read_to_string(&control_path).context("read the package's control")?;
    let control: String = control
        .lines()
        .map(|line| {
            if line.starts_with("Version: ") { format!("Version: {version}\n") } else { format!("{line}\n") }
        })
        .collect();
    fs::write(&control_path, control).context("write the package's control")?;
    let arch = command_output(Command::new("dpkg-deb").arg("--field").arg(deb).arg("Architecture"))?;
    let repacked = deb.with_file_name(format!("keyturn_{version}_{}.deb", arch.trim()));
    run_command(
        Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&dir).arg(&repacked),
    )?;
    fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    Ok(repacked)
}

/// Checks what `deb` holds and declares, then runs lintian on it: fails on a missing file
/// or field and on any error lintian reports (its warnings are printed).
pub fn check(deb: &Path) -> Result<()> {
    let contents = command_output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let paths: Vec<&str> = contents.lines().filter_map(|line| line.split_whitespace().nth(5)).collect();
    let expected = ["./usr/bin/keyturn".to_owned(), "./usr/share/man/man1/keyturn.1.gz".to_owned()]
        .into_iter()
        .chain(UNITS.map(|unit| format!("./{UNIT_DIR}/{unit}")))
        .chain(CONFFILES.map(|file| format!(".{file}")))
        .chain(COMPLETIONS.map(|(_, path)| format!("./{path}")));
    for path in expected {
        ensure!(paths.contains(&path.as_str()), "{} lacks {path}", deb.display());
    }
    let conffiles = command_output(Command::new("dpkg-deb").arg("--info").arg(deb).arg("conffiles"))?;
    ensure!(conffiles.lines().eq(CONFFILES), "{} declares conffiles {conffiles:?}", deb.display());
    let depends = command_output(Command::new("dpkg-deb").arg("--field").arg(deb).arg("Depends"))?;
    ensure!(
        depends.contains("libc6 (>="),
        "{} depends on {depends:?}, not on a libc6 version",
        deb.display()
    );
    lint(deb)
}

/// Runs lintian on `deb` and fails on any error it reports (warnings are printed).
fn lint(deb: &Path) -> Result<()> {
    let output = Command::new("lintian")
        .args(["--allow-root", "--tag-display-limit", "0", "--display-info"])
        .arg(deb)
        .stderr(Stdio::inherit())
        .output()
        .context("run lintian")?;
    let report = String::from_utf8_lossy(&output.stdout);
    print!("{report}");
    let errors: Vec<&str> = report.lines().filter(|line| line.starts_with("E: ")).collect();
    ensure!(errors.is_empty(), "lintian reports {} errors on {}", errors.len(), deb.display());
    // lintian exits 1 for errors at or above its --fail-on (errors by default), 2 when it
    // could not check at all.
    ensure!(output.status.success(), "lintian failed: {}", output.status);
    Ok(())
}

/// The last commit's time: the package's timestamps and changelog date, so that the same
/// commit makes the same package.
struct Epoch {
    seconds: u64,
    rfc2822: String,
}

fn source_date_epoch(root: &Path) -> Result<Epoch> {
    let log =
        command_output(Command::new("git").arg("-C").arg(root).args(["log", "-1", "--format=%ct%n%aD"]))?;
    let mut lines = log.lines();
    let seconds = lines.next().and_then(|s| s.parse().ok()).context("git log gave no commit time")?;
    let rfc2822 = lines.next().context("git log gave no commit date")?.to_owned();
    Ok(Epoch { seconds, rfc2822 })
}

fn changelog(epoch: &Epoch) -> String {
    format!(
        "keyturn ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask deb.\n\n \
         -- The keyturn developers <maintainers@keyturn.dev>  {date}\n",
        version = env!("CARGO_PKG_VERSION"),
        date = epoch.rfc2822,
    )
}

/// The man pages and shell completions of the staged binary, into the package's tree.
fn generated_docs(binary: &Path, work: &Path, tree: &Path) -> Result<()> {
    let generated = work.join("generated");
    run_command(Command::new(binary).arg("generate").arg(&generated))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(generated.join("man"))
        .context("list the man pages")?
        .flatten()
        .map(|e| e.path())
        .collect();
    pages.sort();
    ensure!(!pages.is_empty(), "keyturn generate wrote no man page");
    for page in pages {
        let name = page.file_name().and_then(|n| n.to_str()).context("a man page's name")?;
        put(tree, &format!("usr/share/man/man1/{name}.gz"), 0o644, &gzip(&read(&page)?)?)?;
    }
    for (file, path) in COMPLETIONS {
        put(tree, path, 0o644, &read(&generated.join("completions").join(file))?)?;
    }
    Ok(())
}

/// `shlibs:Depends` of `binary`, as dpkg-shlibdeps reads it from the libraries it links.
fn shared_library_depends(work: &Path, binary: &Path) -> Result<String> {
    put(work, "debian/control", 0o644, b"Source: keyturn\n\nPackage: keyturn\nArchitecture: any\n")?;
    let relative = binary.strip_prefix(work).context("the binary is staged under the work directory")?;
    let output =
        command_output(Command::new("dpkg-shlibdeps").current_dir(work).args(["-O", "-e"]).arg(relative))?;
    output
        .lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

/// The package's size as `Installed-Size` counts it: KiB of its files, rounded up.
fn installed_kib(tree: &Path) -> Result<u64> {
    Ok(files(tree)?.iter().map(|(_, size)| size.div_ceil(1024)).sum())
}

/// `DEBIAN/md5sums`: every file but the conffiles, whose sums dpkg keeps itself.
fn md5sums(tree: &Path) -> Result<String> {
    let mut sums = String::new();
    for (path, _) in files(tree)? {
        let relative =
            path.strip_prefix(tree).expect("under the tree").to_str().context("a path that is text")?;
        if relative.starts_with("DEBIAN/") || CONFFILES.contains(&format!("/{relative}").as_str()) {
            continue;
        }
        let sum = command_output(Command::new("md5sum").arg(&path))?;
        let sum = sum.split_whitespace().next().context("md5sum printed nothing")?;
        writeln!(sums, "{sum}  {relative}").expect("writing to a String");
    }
    Ok(sums)
}

/// Every regular file under `dir` (sorted) with its size.
fn files(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            found.extend(files(&entry.path())?);
        } else if kind.is_file() {
            found.push((entry.path(), entry.metadata()?.len()));
        }
    }
    found.sort();
    Ok(found)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// `gzip -9n`: what Debian wants of man pages and changelogs (no name, no time inside).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run gzip")?;
    child.stdin.take().expect("piped").write_all(data).context("feed gzip")?;
    let output = child.wait_with_output().context("wait for gzip")?;
    if !output.status.success() {
        bail!("gzip failed: {}", output.status);
    }
    Ok(output.stdout)
}

/// Writes `data` to `root/path` with `mode`, making its directories (0755); returns the path.
fn put(root: &Path, path: &str, mode: u32, data: &[u8]) -> Result<PathBuf> {
    let path = root.join(path);
    make_dir(path.parent().context("a file in a directory")?)?;
    fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(path)
}

fn make_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))
}
