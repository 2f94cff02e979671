//! systemd units as agents: a unit's cgroup, asked of systemd, and the drop-in that makes
//! a tagged service start only once keyturn watches its new cgroup.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Where the drop-ins of tagged services are written (persistent: a tagged service stays
/// held to them across reboots, before the daemon has even started).
const UNIT_DIR: &str = "/etc/systemd/system";

/// The drop-in's file name, inside `UNIT.d/`.
const DROP_IN: &str = "50-keyturn.conf";

/// Longest unit name systemd accepts.
const MAX_UNIT_NAME: usize = 255;

/// What can be tagged by unit: a service (its own cgroup, recreated at every start), or a
/// slice (every unit started in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    Service,
    Slice,
}

/// Checks a unit name before it reaches `systemctl` or a file name: a service or slice,
/// in the characters systemd allows, never read as an option.
pub fn unit_kind(unit: &str) -> Result<UnitKind, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ":_.@\\-".contains(c);
    if unit.is_empty()
        || unit.len() > MAX_UNIT_NAME
        || unit.starts_with(['-', '.'])
        || !unit.chars().all(allowed)
    {
        return Err(format!("{unit:?} is not a systemd unit name"));
    }
    match unit.rsplit_once('.') {
        // A template (`NAME@.service`) has no cgroup; the root slice is every process's.
        Some((name, "service")) if !name.ends_with('@') => Ok(UnitKind::Service),
        Some((name, "slice")) if name != "-" => Ok(UnitKind::Slice),
        _ => Err(format!("{unit:?}: tag a service (NAME.service) or a slice (NAME.slice)")),
    }
}

/// A unit as systemd knows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Unit {
    /// Its own name (`%n` in its drop-in), whatever alias it was asked by.
    pub id: String,
    /// Its cgroup, relative to the cgroup v2 root.
    pub cgroup: String,
}

/// `unit` as systemd names it, with its cgroup: where it is while the unit runs, else
/// where it will be (its slice's path and its own name).
pub fn control_group(unit: &str) -> Result<Unit, String> {
    unit_kind(unit)?;
    let show = systemctl(&["show", "--property=Id,LoadState,ControlGroup,Slice", "--", unit])
        .map_err(|e| format!("asking systemd about {unit}: {e}"))?;
    cgroup_of(unit, &show)
}

/// How long the daemon waits for a question to systemd (`systemctl show`; the D-Bus
/// default is 25 s): it asks from its one loop, which holds every decision meanwhile.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it waits for `systemctl daemon-reload`, which re-reads every unit file: seconds
/// on a large or loaded host (seen: over 5 s in an emulated guest with its host busy). While
/// it waits, decisions wait, and past the liveness timeout flagged actions fail closed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What `systemctl ARGS` prints, if it succeeds within [`SYSTEMCTL_TIMEOUT`].
fn systemctl(args: &[&str]) -> Result<String, String> {
    output_within("systemctl", args, SYSTEMCTL_TIMEOUT)
}

/// What `program ARGS` prints, if it succeeds within `timeout`; killed after it.
fn output_within(program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let deadline = Instant::now() + timeout;
    // Its output is a few lines: it fits in the pipes until it exits.
    while child.try_wait().map_err(|e| format!("{program}: {e}"))?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{program} {} gave no answer within {timeout:?}", args.join(" ")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// [`control_group`] from `systemctl show`'s `KEY=VALUE` lines.
fn cgroup_of(unit: &str, show: &str) -> Result<Unit, String> {
    let property = |key: &str| {
        show.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('=')).unwrap_or_default()
    };
    match property("LoadState") {
        "loaded" => {}
        "not-found" => return Err(format!("systemd has no unit {unit}")),
        state => return Err(format!("systemd's unit {unit} is {state:?}, not loaded")),
    }
    // An alias resolves to the unit it names.
    let id = property("Id");
    let kind = unit_kind(id)?;
    let running = property("ControlGroup").trim_start_matches('/');
    let cgroup = match (kind, slice_path(property("Slice"))) {
        _ if !running.is_empty() => running.to_owned(),
        (UnitKind::Slice, _) => slice_path(id),
        (UnitKind::Service, parent) if parent.is_empty() => id.to_owned(),
        (UnitKind::Service, parent) => format!("{parent}/{id}"),
    };
    Ok(Unit { id: id.to_owned(), cgroup })
}

/// Where systemd puts the cgroup of `slice`: each `-` is a level (`a-b.slice` is in
/// `a.slice`); the root slice `-.slice` is the root itself.
fn slice_path(slice: &str) -> String {
    let Some(name) = slice.strip_suffix(".slice").filter(|name| !name.is_empty() && *name != "-") else {
        return String::new();
    };
    let parts: Vec<&str> = name.split('-').collect();
    (1..=parts.len()).map(|n| format!("{}.slice", parts[..n].join("-"))).collect::<Vec<_>>().join("/")
}

/// The drop-in of a tagged service: it starts after keyturn, and its own processes start
/// only once `keyturn_exe` has moved the tag to the new cgroup; if keyturn cannot, the
/// service does not start.
fn drop_in_text(keyturn_exe: &Path) -> String {
    format!(
        "# Written by keyturn when this service was tagged (keyturn tag --unit);\n\
         # keyturn untag --unit removes it.\n\
         [Unit]\n\
         Wants=keyturn.service\n\
         After=keyturn.service\n\n\
         [Service]\n\
         # As root (+), in the service's new cgroup, before anything of the service runs.\n\
         ExecStartPre=+{} tag --unit %n --starting\n",
        // systemd expands specifiers (`%…`) in command lines.
        keyturn_exe.display().to_string().replace('%', "%%")
    )
}

fn drop_in_path(unit: &str) -> PathBuf {
    Path::new(UNIT_DIR).join(format!("{unit}.d")).join(DROP_IN)
}

/// This executable, as the drop-in of a tagged service runs it (as root): only if root owns
/// it and nobody else may write it. A binary replaced by an upgrade is named by its path.
fn own_executable() -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt as _;
    let exe = fs::read_link("/proc/self/exe").map_err(|e| format!("finding keyturn's own path: {e}"))?;
    let exe = match exe.to_str().and_then(|path| path.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    };
    let meta = fs::metadata(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not root's alone (owner uid {}, mode {:o}): a tagged service would run it as root",
            exe.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(exe)
}

/// Writes the drop-in of the tagged service `unit` and has systemd read it.
pub fn install_drop_in(unit: &str) -> Result<(), String> {
    let exe = own_executable()?;
    let path = drop_in_path(unit);
    let written = path
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| crate::state::write_atomic(&path, drop_in_text(&exe).as_bytes()));
    written.map_err(|e| format!("writing {}: {e}", path.display()))?;
    reload()
}

/// Removes the drop-in of `unit`, if there is one, and has systemd forget it.
pub fn remove_drop_in(unit: &str) -> Result<(), String> {
    let path = drop_in_path(unit);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("removing {}: {e}", path.display())),
    }
    if let Some(dir) = path.parent() {
        // Only if empty: the operator's own drop-ins stay.
        let _ = fs::remove_dir(dir);
    }
    reload()
}

fn reload() -> Result<(), String> {
    output_within("systemctl", &["daemon-reload"], RELOAD_TIMEOUT).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_services_or_slices_and_never_options() {
        assert_eq!(unit_kind("claude.service"), Ok(UnitKind::Service));
        assert_eq!(unit_kind("agent@7.service"), Ok(UnitKind::Service));
        assert_eq!(unit_kind("keyturn-agents.slice"), Ok(UnitKind::Slice));
        for bad in
            ["", "--help.service", ".service", "a b.service", "a/b.service", "x.scope", "x.socket", "-.slice"]
        {
            assert!(unit_kind(bad).is_err(), "{bad:?} accepted");
        }
        assert!(unit_kind("agent@.service").is_err(), "a template has no cgroup");
        assert!(unit_kind(&format!("{}.service", "a".repeat(250))).is_err());
    }

    #[test]
    fn a_command_that_does_not_answer_in_time_is_killed() {
        let started = Instant::now();
        let error = output_within("sleep", &["30"], Duration::from_millis(200)).unwrap_err();
        assert!(error.contains("gave no answer within"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "it waited {:?}", started.elapsed());
        assert_eq!(output_within("echo", &["ready"], Duration::from_secs(5)).unwrap(), "ready\n");
        assert!(output_within("false", &[], Duration::from_secs(5)).is_err());
    }

    #[test]
    fn slices_nest_by_dashes() {
        assert_eq!(slice_path("system.slice"), "system.slice");
        assert_eq!(slice_path("keyturn-agents.slice"), "keyturn.slice/keyturn-agents.slice");
        assert_eq!(slice_path("a-b-c.slice"), "a.slice/a-b.slice/a-b-c.slice");
        assert_eq!(slice_path("-.slice"), "");
        assert_eq!(slice_path(""), "");
    }

    #[test]
    fn a_running_unit_is_where_systemd_says() {
        let show = "Id=claude.service\nLoadState=loaded\nControlGroup=/system.slice/claude.service\nSlice=system.slice\n";
        let unit = cgroup_of("claude.service", show).unwrap();
        assert_eq!(unit, Unit { id: "claude.service".into(), cgroup: "system.slice/claude.service".into() });
    }

    #[test]
    fn a_stopped_unit_is_where_systemd_will_put_it() {
        let show = "Id=claude.service\nLoadState=loaded\nControlGroup=\nSlice=keyturn-agents.slice\n";
        let unit = cgroup_of("claude.service", show).unwrap();
        assert_eq!(unit.cgroup, "keyturn.slice/keyturn-agents.slice/claude.service");
        let slice = "Id=keyturn-agents.slice\nLoadState=loaded\nControlGroup=\nSlice=keyturn.slice\n";
        let unit = cgroup_of("keyturn-agents.slice", slice).unwrap();
        assert_eq!(unit.cgroup, "keyturn.slice/keyturn-agents.slice");
        // A tag by an alias is the unit's own: its drop-in names it by its own name.
        let alias = "Id=claude.service\nLoadState=loaded\nControlGroup=\nSlice=system.slice\n";
        let unit = cgroup_of("ai.service", alias).unwrap();
        assert_eq!(unit, Unit { id: "claude.service".into(), cgroup: "system.slice/claude.service".into() });
    }

    #[test]
    fn an_unknown_unit_is_refused() {
        let show = "Id=nope.service\nLoadState=not-found\nControlGroup=\nSlice=\n";
        assert!(cgroup_of("nope.service", show).unwrap_err().contains("no unit nope.service"));
        let masked = "Id=m.service\nLoadState=masked\nControlGroup=\nSlice=\n";
        assert!(cgroup_of("m.service", masked).is_err());
    }

    #[test]
    fn the_drop_in_starts_the_service_only_through_keyturn() {
        let text = drop_in_text(Path::new("/usr/bin/keyturn"));
        assert!(text.contains("ExecStartPre=+/usr/bin/keyturn tag --unit %n --starting\n"), "{text}");
        let odd = drop_in_text(Path::new("/opt/100%/keyturn"));
        assert!(
            odd.contains("ExecStartPre=+/opt/100%%/keyturn tag"),
            "a specifier in the path is escaped: {odd}"
        );
        assert!(text.contains("After=keyturn.service\n") && text.contains("Wants=keyturn.service\n"));
        assert!(!text.contains("Requires="), "a restart of keyturn must not restart the agent");
    }
}
