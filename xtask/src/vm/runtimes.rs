//! The agent runtimes of the VM guests (Debian's Python 3.11 and `OpenJDK` 17, the host's
//! Node 20): a read-only ext4 image built once under `target/vm/`, bind-mounted by `/init`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use super::{
    MARKER, command_output, create_dir, in_guest, remove_dir_if_present, run_command, shared_libraries,
};

/// A runtime in the image: the Debian package it comes from, the host paths it is made of
/// (files or whole directories, each bind-mounted at its own path in the guest), the links
/// that name its programs, and the shell command `/init` checks it with.
struct Runtime {
    name: &'static str,
    package: &'static str,
    roots: &'static [&'static str],
    /// (link, target) in the guest, whatever the host's alternatives say.
    links: &'static [(&'static str, &'static str)],
    check: &'static str,
}

const RUNTIMES: [Runtime; 3] = [
    Runtime {
        name: "python3",
        package: "python3.11",
        roots: &["/usr/bin/python3.11", "/usr/lib/python3.11"],
        links: &[("/usr/bin/python3", "python3.11")],
        check: "python3 -c 'import asyncio, concurrent.futures, http.client, json, socket, ssl, subprocess, threading'",
    },
    Runtime {
        name: "java",
        package: "openjdk-17-jre-headless",
        roots: &["/usr/lib/jvm/java-17-openjdk-amd64"],
        links: &[("/usr/bin/java", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java")],
        check: "java --describe-module java.net.http",
    },
    Runtime {
        name: "node",
        package: "nodejs",
        roots: &["/usr/bin/node"],
        links: &[],
        check: "node -e \"require('worker_threads')\"",
    },
];

/// Where `/init` mounts the image, and the disk it finds it on (the only virtio disk).
const MOUNT_POINT: &str = "/mnt/runtimes";
const DISK: &str = "/dev/vda";

/// The image and the shared libraries it holds beside the runtimes, at their guest paths.
pub(super) struct Image {
    pub(super) path: PathBuf,
    libraries: Vec<PathBuf>,
}

/// What the image holds, by guest path.
enum Entry {
    Dir,
    /// A copy of this host file.
    File(PathBuf),
    /// A symbolic link with this target.
    Link(PathBuf),
}

/// Builds the image under `vm_dir` unless the one there holds exactly the same files (by
/// path, size, modification time and mode), which `runtimes.manifest` records.
pub(super) fn build_image(vm_dir: &Path) -> Result<Image> {
    let (entries, libraries) = plan()?;
    let manifest = manifest(&entries)?;
    let path = vm_dir.join("runtimes.ext4");
    let manifest_path = vm_dir.join("runtimes.manifest");
    let image = Image { path, libraries };
    if image.path.exists() && fs::read_to_string(&manifest_path).is_ok_and(|built| built == manifest) {
        return Ok(image);
    }
    eprintln!("vm: building the runtimes image {}", image.path.display());
    let staging = vm_dir.join("runtimes");
    remove_dir_if_present(&staging)?;
    stage(&entries, &staging)?;
    make_filesystem(&staging, &entries, &image.path)?;
    remove_dir_if_present(&staging)?;
    fs::write(&manifest_path, manifest).with_context(|| format!("write {}", manifest_path.display()))?;
    Ok(image)
}

/// Every runtime's roots, with the targets of links that leave their root copied in their
/// place (Debian points into `/etc`, which the guest does not get), and every shared
/// library their executables and libraries load (as a second list, by guest path).
fn plan() -> Result<(BTreeMap<PathBuf, Entry>, Vec<PathBuf>)> {
    let mut entries = BTreeMap::new();
    for root in RUNTIMES.iter().flat_map(|runtime| runtime.roots).map(Path::new) {
        let real = fs::canonicalize(root).with_context(|| format!("find {}", root.display()))?;
        ensure!(
            real == root,
            "{} is reached through a link: name {} instead",
            root.display(),
            real.display()
        );
        add(root, root, root.to_owned(), &mut entries)?;
    }
    let mut libraries = Vec::new();
    let elves: Vec<PathBuf> = entries
        .values()
        .filter_map(|entry| match entry {
            Entry::File(source) if is_elf(source) => Some(source.clone()),
            _ => None,
        })
        .collect();
    for elf in elves {
        for library in shared_libraries(&elf)? {
            let guest = library_path(&library)?;
            if !entries.contains_key(&guest) {
                let source =
                    fs::canonicalize(&library).with_context(|| format!("find {}", library.display()))?;
                entries.insert(guest.clone(), Entry::File(source));
                libraries.push(guest);
            }
        }
    }
    Ok((entries, libraries))
}

/// Adds the host path `host` at `guest`, with everything under it; a link is kept when it
/// resolves inside `root` (or nowhere, as on the host), else replaced by its target.
fn add(root: &Path, host: &Path, guest: PathBuf, entries: &mut BTreeMap<PathBuf, Entry>) -> Result<()> {
    let metadata = host.symlink_metadata().with_context(|| format!("stat {}", host.display()))?;
    if metadata.is_symlink() {
        let target = fs::read_link(host).with_context(|| format!("read link {}", host.display()))?;
        match fs::canonicalize(host) {
            Ok(resolved) if !resolved.starts_with(root) => return add(&resolved, &resolved, guest, entries),
            _ => entries.insert(guest, Entry::Link(target)),
        };
    } else if metadata.is_dir() {
        let mut children: Vec<_> =
            fs::read_dir(host).with_context(|| format!("list {}", host.display()))?.flatten().collect();
        children.sort_by_key(fs::DirEntry::file_name);
        for child in children {
            add(root, &child.path(), guest.join(child.file_name()), entries)?;
        }
        entries.insert(guest, Entry::Dir);
    } else {
        entries.insert(guest, Entry::File(host.to_owned()));
    }
    Ok(())
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0; 4];
    fs::File::open(path).and_then(|mut file| file.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}

/// Where the loader finds `library` in the guest: its directory resolved (`/lib` is
/// `/usr/lib` on Debian), its own name kept (the name `ldd` printed is the one asked for).
fn library_path(library: &Path) -> Result<PathBuf> {
    let (Some(dir), Some(name)) = (library.parent(), library.file_name()) else {
        return Ok(library.to_owned());
    };
    Ok(fs::canonicalize(dir).with_context(|| format!("find {}", dir.display()))?.join(name))
}

/// The packages the runtimes come from with their versions, then one line per entry with
/// what the image would change with.
fn manifest(entries: &BTreeMap<PathBuf, Entry>) -> Result<String> {
    let mut manifest = String::new();
    for runtime in &RUNTIMES {
        let version =
            command_output(Command::new("dpkg-query").args(["-W", "-f=${Version}", runtime.package]))
                .with_context(|| {
                    format!(
                        "{} needs Debian package {}: run cargo xtask setup",
                        runtime.name, runtime.package
                    )
                })?;
        writeln!(manifest, "# {} {} {version}", runtime.name, runtime.package)?;
    }
    for (guest, entry) in entries {
        match entry {
            Entry::Dir => writeln!(manifest, "dir {}", guest.display())?,
            Entry::Link(target) => writeln!(manifest, "link {} -> {}", guest.display(), target.display())?,
            Entry::File(source) => {
                let metadata = fs::metadata(source).with_context(|| format!("stat {}", source.display()))?;
                writeln!(
                    manifest,
                    "file {} from {} size {} mtime {}.{:09} mode {:o}",
                    guest.display(),
                    source.display(),
                    metadata.len(),
                    metadata.mtime(),
                    metadata.mtime_nsec(),
                    metadata.mode()
                )?;
            }
        }
    }
    Ok(manifest)
}

/// Lays `entries` out under `staging`, copying files with their modes and modification
/// times (Python's cached bytecode is only trusted while its source's time matches).
fn stage(entries: &BTreeMap<PathBuf, Entry>, staging: &Path) -> Result<()> {
    for (guest, entry) in entries {
        let to = in_guest(staging, guest);
        if let Some(parent) = to.parent() {
            create_dir(parent)?;
        }
        match entry {
            Entry::Dir => create_dir(&to)?,
            Entry::Link(target) => {
                symlink(target, &to).with_context(|| format!("create link {}", to.display()))?;
            }
            Entry::File(source) => {
                fs::copy(source, &to)
                    .with_context(|| format!("copy {} to {}", source.display(), to.display()))?;
                let modified = fs::metadata(source).and_then(|metadata| metadata.modified());
                fs::File::options()
                    .write(true)
                    .open(&to)
                    .and_then(|file| file.set_modified(modified?))
                    .with_context(|| format!("set the modification time of {}", to.display()))?;
            }
        }
    }
    Ok(())
}

/// `mkfs.ext4 -d`: an image of `staging` with room for its files, without a journal (it
/// is attached read-only), written beside `image` and renamed into place.
fn make_filesystem(staging: &Path, entries: &BTreeMap<PathBuf, Entry>, image: &Path) -> Result<()> {
    const BLOCK: u64 = 4096;
    let blocks: u64 = entries
        .values()
        .map(|entry| match entry {
            Entry::File(source) => fs::metadata(source).map_or(1, |metadata| metadata.len().div_ceil(BLOCK)),
            Entry::Dir | Entry::Link(_) => 1,
        })
        .sum();
    let size = (blocks + blocks / 4) * BLOCK + (64 << 20);
    let partial = image.with_extension("partial");
    let file = fs::File::create(&partial).with_context(|| format!("create {}", partial.display()))?;
    file.set_len(size).with_context(|| format!("size {}", partial.display()))?;
    run_command(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal", "-L", "runtimes", "-d"])
            .arg(staging)
            .arg(&partial),
    )?;
    fs::rename(&partial, image)
        .with_context(|| format!("rename {} to {}", partial.display(), image.display()))
}

/// Prepares the initramfs for the image: an empty file or directory to bind-mount each
/// root on, the runtimes' links, and a link into the image for each shared library the
/// initramfs does not carry already.
pub(super) fn stage_mount_points(image: &Image, staging: &Path) -> Result<()> {
    for root in RUNTIMES.iter().flat_map(|runtime| runtime.roots).map(Path::new) {
        let at = in_guest(staging, root);
        if root.is_dir() {
            create_dir(&at)?;
        } else {
            create_dir(at.parent().context("a root has a parent")?)?;
            fs::File::create(&at).with_context(|| format!("create {}", at.display()))?;
        }
    }
    let links = RUNTIMES
        .iter()
        .flat_map(|runtime| runtime.links)
        .map(|(link, target)| (*link, PathBuf::from(target)));
    let libraries = image.libraries.iter().map(|library| {
        let target = Path::new(MOUNT_POINT).join(library.strip_prefix("/").unwrap_or(library));
        (library.to_str().unwrap_or_default(), target)
    });
    for (link, target) in links.chain(libraries) {
        let at = in_guest(staging, Path::new(link));
        if at.symlink_metadata().is_err() {
            create_dir(at.parent().context("a link has a parent")?)?;
            symlink(&target, &at).with_context(|| format!("create link {}", at.display()))?;
        }
    }
    Ok(())
}

/// Lines of `/init` that mount the image, bind its roots where the host keeps them, and, if
/// `$check_runtimes` is 1, check each runtime, printing `MARKER runtime=NAME exit=CODE
/// seconds=S` and, on failure, what it printed.
pub(super) fn init_lines() -> String {
    let roots: Vec<&str> = RUNTIMES.iter().flat_map(|runtime| runtime.roots.iter().copied()).collect();
    let checks: Vec<String> =
        RUNTIMES.iter().map(|runtime| format!("check_runtime {} {}", runtime.name, runtime.check)).collect();
    format!(
        r#"# The agent runtimes: an ext4 image on {DISK}, bind-mounted where the host keeps them.
centiseconds() {{ awk '{{ printf "%d", $1 * 100 }}' /proc/uptime; }}
waited=0
while [ ! -b {DISK} ] && [ "$waited" -lt 100 ]; do sleep 0.1; waited=$((waited + 1)); done
mkdir -p {MOUNT_POINT}
mount -t ext4 -o ro {DISK} {MOUNT_POINT} || echo "{MARKER} cannot mount the runtimes image {DISK}"
for root in {roots}; do mount -o bind "{MOUNT_POINT}$root" "$root" || echo "{MARKER} cannot bind $root"; done
check_runtime() {{
  name=$1; shift
  started=$(centiseconds)
  output=$("$@" 2>&1)
  code=$?
  took=$(( $(centiseconds) - started ))
  echo "{MARKER} runtime=$name exit=$code seconds=$(printf '%d.%02d' $((took / 100)) $((took % 100)))"
  [ "$code" = 0 ] || printf '%s\n' "$output"
}}
if [ "$check_runtimes" = 1 ]; then
{checks}
fi
"#,
        roots = roots.join(" "),
        checks = checks.join("\n"),
    )
}

/// "python3 1.20 s, java 3.40 s, node 0.90 s" when every runtime's check passed; else
/// which did not and the last line each printed.
pub(super) fn judge(console: &str) -> Result<String, String> {
    let lines: Vec<&str> = console.lines().collect();
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for runtime in &RUNTIMES {
        let marker = format!("{MARKER} runtime={} exit=", runtime.name);
        let Some((at, result)) =
            lines.iter().enumerate().find_map(|(at, line)| Some((at, line.split_once(&marker)?.1)))
        else {
            failed.push(format!("{}: never checked", runtime.name));
            continue;
        };
        let (exit, seconds) = result.split_once(" seconds=").unwrap_or((result, "?"));
        if exit == "0" {
            passed.push(format!("{} {} s", runtime.name, seconds.trim()));
        } else {
            let printed = lines[at + 1..].iter().take_while(|line| !line.contains(MARKER));
            let last = printed.filter(|line| !line.trim().is_empty()).last().unwrap_or(&"");
            failed.push(format!("{}: exit {exit}: {}", runtime.name, last.trim()));
        }
    }
    if failed.is_empty() { Ok(passed.join(", ")) } else { Err(failed.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKED: &str = "KEYTURN-VM runtime=python3 exit=0 seconds=1.20\n\
        KEYTURN-VM runtime=java exit=0 seconds=3.45\n\
        KEYTURN-VM runtime=node exit=0 seconds=0.90\n";

    #[test]
    fn runtimes_that_all_ran_pass_with_their_times() {
        assert_eq!(judge(CHECKED).as_deref(), Ok("python3 1.20 s, java 3.45 s, node 0.90 s"));
    }

    #[test]
    fn a_broken_or_unchecked_runtime_fails_the_boot_with_what_it_printed() {
        let broken = CHECKED.replace(
            "java exit=0 seconds=3.45\n",
            "java exit=1 seconds=0.10\nError occurred during initialization of boot layer\n\
             java.lang.module.FindException: Module java.net.http not found\n\n",
        );
        assert_eq!(
            judge(&broken),
            Err("java: exit 1: java.lang.module.FindException: Module java.net.http not found".to_owned())
        );
        let unchecked = CHECKED.replace("KEYTURN-VM runtime=node exit=0 seconds=0.90\n", "");
        assert_eq!(judge(&unchecked), Err("node: never checked".to_owned()));
        assert_eq!(
            judge("KEYTURN-VM cannot mount the runtimes image /dev/vda\n"),
            Err("python3: never checked; java: never checked; node: never checked".to_owned())
        );
    }

    #[test]
    fn links_inside_a_root_stay_links_and_links_out_of_it_become_copies() {
        let scratch = std::env::temp_dir().join(format!("xtask-runtimes-{}", std::process::id()));
        let (root, outside) = (scratch.join("root"), scratch.join("etc"));
        create_dir(&root.join("lib")).unwrap();
        create_dir(&outside).unwrap();
        fs::write(root.join("lib/real"), "inside").unwrap();
        fs::write(outside.join("conf"), "outside").unwrap();
        symlink("lib/real", root.join("near")).unwrap();
        symlink(outside.join("conf"), root.join("far")).unwrap();
        symlink("missing", root.join("dangling")).unwrap();
        let mut entries = BTreeMap::new();
        add(&root, &root, PathBuf::from("/guest"), &mut entries).unwrap();
        let described: Vec<String> = entries
            .iter()
            .map(|(guest, entry)| match entry {
                Entry::Dir => format!("{} dir", guest.display()),
                Entry::Link(target) => format!("{} -> {}", guest.display(), target.display()),
                Entry::File(source) => {
                    format!("{} = {}", guest.display(), fs::read_to_string(source).unwrap())
                }
            })
            .collect();
        remove_dir_if_present(&scratch).unwrap();
        assert_eq!(
            described,
            [
                "/guest dir",
                "/guest/dangling -> missing",
                "/guest/far = outside",
                "/guest/lib dir",
                "/guest/lib/real = inside",
                "/guest/near -> lib/real",
            ]
        );
    }
}
