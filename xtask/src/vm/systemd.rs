//! The booted-systemd guest: Debian 12 with systemd as PID 1 on Debian's 6.12 kernel, keyturn
//! installed from its package with dpkg, and `tests/systemd/service.sh` proving it runs as a
//! service: readiness, hardening, units tagged as agents, holds across restarts and upgrades.
//!
//! The root filesystem is made once by debootstrap (`cargo xtask setup`) and booted as a
//! snapshot, so every run starts from the same fresh system.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use super::{
    Kernel, LSMS, MARKER, boot, console_node, create_dir, drive, install_busybox, merged_usr, pack,
    remove_dir_if_present, stage_modules, write_file,
};
use crate::{deb, run_command, workspace_root};

/// What debootstrap installs beside the minimal base: systemd as init, and what the test
/// script uses (an HTTP server for the agent to reach, curl as the agent's flagged
/// program, jq for JSON replies, socat for the local API).
const PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,curl,jq,socat,busybox-static,procps";

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// The unit that runs the test script once the system is up, on the serial console, and
/// powers the guest off whatever it found.
const TEST_UNIT: &str = "\
[Unit]
Description=keyturn's test under systemd
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /payload && mount -o ro /dev/vdb /payload && /payload/service.sh; \
echo \"KEYTURN-VM systemd exit=$$?\"'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
";

/// Units that would write to the console or work in the background during the test.
const MASKED: [&str; 5] = [
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
];

/// The whole test, boot included, under TCG.
const TIMEOUT: Duration = Duration::from_mins(15);

/// The root filesystem image under `vm_dir`, made by debootstrap unless the one there was
/// made by this recipe (`systemd-root.recipe` records it).
pub(super) fn root_image(vm_dir: &Path) -> Result<PathBuf> {
    let image = vm_dir.join("systemd-root.ext4");
    let recipe_path = vm_dir.join("systemd-root.recipe");
    let recipe = format!("{SUITE} {MIRROR}\n{PACKAGES}\n{}\n{TEST_UNIT}", MASKED.join(" "));
    if image.exists() && fs::read_to_string(&recipe_path).is_ok_and(|made| made == recipe) {
        return Ok(image);
    }
    let tree = vm_dir.join("systemd-root");
    remove_dir_if_present(&tree)?;
    eprintln!("vm: debootstrap of Debian {SUITE} with systemd into {}", tree.display());
    run_command(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
            .arg(&tree)
            .arg(MIRROR),
    )?;
    write_file(&tree.join("etc/hostname"), "keyturn-guest\n")?;
    write_file(&tree.join("etc/hosts"), "127.0.0.1 localhost keyturn-guest\n::1 localhost\n")?;
    write_file(&tree.join("etc/systemd/system/keyturn-vm-test.service"), TEST_UNIT)?;
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    create_dir(&wants)?;
    symlink("/etc/systemd/system/keyturn-vm-test.service", wants.join("keyturn-vm-test.service"))
        .context("enable the test unit")?;
    for unit in MASKED {
        let _ = fs::remove_file(tree.join("etc/systemd/system").join(unit));
        symlink("/dev/null", tree.join("etc/systemd/system").join(unit))
            .with_context(|| format!("mask {unit}"))?;
    }
    let partial = vm_dir.join("systemd-root.ext4.partial");
    make_image(&tree, &partial, "2G")?;
    fs::rename(&partial, &image).with_context(|| format!("rename {}", partial.display()))?;
    remove_dir_if_present(&tree)?;
    fs::write(&recipe_path, recipe).with_context(|| format!("write {}", recipe_path.display()))?;
    Ok(image)
}

/// `mkfs.ext4 -d`: an image of `tree`, of `size` (sparse).
fn make_image(tree: &Path, image: &Path, size: &str) -> Result<()> {
    let _ = fs::remove_file(image);
    run_command(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
            .arg(tree)
            .arg(image)
            .arg(size),
    )
}

/// Boots `kernel` on the root image with the package and the test script on a second disk;
/// returns what passed, or why not.
pub(super) fn run(vm_dir: &Path, kernel: &Kernel) -> Result<String> {
    let root = workspace_root()?;
    let image = root_image(vm_dir)?;
    let payload_dir = vm_dir.join("systemd-payload");
    remove_dir_if_present(&payload_dir)?;
    create_dir(&payload_dir)?;
    let package = deb::build(deb::Build::Dev)?;
    fs::copy(&package, payload_dir.join("keyturn.deb")).context("copy the package")?;
    let newer = deb::with_version(&package, &format!("{}+vmtest1", env!("CARGO_PKG_VERSION")))?;
    fs::copy(&newer, payload_dir.join("keyturn-newer.deb")).context("copy the newer package")?;
    let script = payload_dir.join("service.sh");
    fs::copy(root.join("tests/systemd/service.sh"), &script).context("copy tests/systemd/service.sh")?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).context("chmod service.sh")?;
    let payload = vm_dir.join("systemd-payload.ext4");
    make_image(&payload_dir, &payload, "256M")?;

    let initrd = switch_root_initramfs(vm_dir, kernel)?;
    let drives = [drive(&image, "snapshot=on")?, drive(&payload, "readonly=on")?];
    let cmdline = format!("console=ttyS0 quiet panic=-1 {LSMS} systemd.show_status=false");
    let boot = boot(kernel, &format!("systemd {}", kernel.release), &initrd, &drives, &cmdline, TIMEOUT)?;
    let log = vm_dir.join(format!("systemd-{}.log", kernel.release));
    fs::write(&log, &boot.console).with_context(|| format!("write {}", log.display()))?;
    let verdict = judge(&boot.console);
    ensure!(!boot.timed_out, "the systemd guest timed out after {TIMEOUT:?}; console in {}", log.display());
    verdict
        .map(|passed| format!("{passed} in {:.0?}, console in {}", boot.elapsed, log.display()))
        .map_err(|why| anyhow::anyhow!("{why}; console in {}", log.display()))
}

/// An initramfs that loads the disk's modules, mounts the root image and hands over to
/// systemd.
fn switch_root_initramfs(vm_dir: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let staging = vm_dir.join("initramfs").join(format!("systemd-{}", kernel.release));
    remove_dir_if_present(&staging)?;
    merged_usr(&staging)?;
    for dir in ["dev", "proc", "sys", "newroot"] {
        create_dir(&staging.join(dir))?;
    }
    install_busybox(&staging, &[])?;
    let modules = stage_modules(kernel, &staging)?;
    let init = staging.join("init");
    write_file(
        &init,
        &format!(
            "#!/bin/sh\n\
             # Written by `cargo xtask vm`: the root disk, then systemd.\n\
             export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             for module in {modules}; do insmod \"$module\"; done\n\
             mount -t ext4 /dev/vda /newroot || {{ echo '{MARKER} systemd cannot mount the root disk'; poweroff -f; }}\n\
             umount /proc /sys /dev\n\
             exec switch_root /newroot /lib/systemd/systemd\n",
            modules = modules.join(" "),
        ),
    )?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).context("chmod init")?;
    console_node(&staging)?;
    let archive = vm_dir.join(format!("systemd-{}.cpio", kernel.release));
    pack(&staging, &archive)?;
    Ok(archive)
}

/// What the script's `KEYTURN-VM systemd` lines say: every check passed and it exited 0.
fn judge(console: &str) -> Result<String, String> {
    let prefix = format!("{MARKER} systemd ");
    let lines: Vec<&str> =
        console.lines().filter_map(|line| line.split_once(&prefix).map(|(_, rest)| rest)).collect();
    let failed: Vec<&str> = lines.iter().filter_map(|line| line.strip_prefix("FAILED: ")).collect();
    let passed = lines.iter().filter(|line| line.starts_with("ok: ")).count();
    match lines.iter().find_map(|line| line.strip_prefix("exit=")) {
        _ if !failed.is_empty() => Err(format!("failed: {}", failed.join("; "))),
        Some("0") if passed > 0 => Ok(format!("{passed} checks passed")),
        Some(code) => Err(format!("the script exited {code} after {passed} checks")),
        None => Err(format!("the script never finished ({passed} checks passed)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_passes_only_when_every_check_passed_and_the_script_finished() {
        let ok = "x\nKEYTURN-VM systemd ok: active\nKEYTURN-VM systemd ok: held\nKEYTURN-VM systemd exit=0\n";
        assert_eq!(judge(ok), Ok("2 checks passed".into()));
        let failed =
            "KEYTURN-VM systemd ok: active\nKEYTURN-VM systemd FAILED: held\nKEYTURN-VM systemd exit=1\n";
        assert_eq!(judge(failed), Err("failed: held".into()));
        assert!(judge("KEYTURN-VM systemd ok: active\n").unwrap_err().contains("never finished"));
        assert!(judge("KEYTURN-VM systemd exit=0\n").is_err(), "no check, no pass");
        assert!(
            judge("KEYTURN-VM systemd ok: a\nKEYTURN-VM systemd exit=2\n").unwrap_err().contains("exited 2")
        );
    }
}
