//! The `keyturn` command line: the daemon, and the commands operators and approvers use.

use std::{
    ffi::{CString, OsString},
    io::Write as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::Command as Process,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use keyturn::{
    api::{self, Request, Scope},
    audit,
    config::Config,
};

#[derive(Parser)]
#[command(name = "keyturn", version, about = "A person in the loop for what AI agents do on this host")]
struct Cli {
    /// The daemon's configuration file.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host daemon in the foreground (logs to stderr).
    Daemon,
    /// Run the central console in the foreground; --config names the console's own file.
    Console {
        #[command(subcommand)]
        action: Option<ConsoleCommand>,
    },
    /// Start CMD in a new tagged cgroup, wait, and exit with its status.
    Run {
        #[arg(long, default_value = "default")]
        policy: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        requester: RequesterArg,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Tag an existing cgroup (path relative to the cgroup v2 root) as an agent's.
    Tag {
        path: String,
        #[arg(long, default_value = "default")]
        policy: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        requester: RequesterArg,
    },
    /// Stop enforcing on a tagged cgroup.
    Untag { path: String },
    /// List tagged cgroups.
    Tags {
        #[arg(long)]
        json: bool,
    },
    /// List held actions waiting for a decision.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Approve a held action.
    Approve {
        id: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a held action (the policy's `on_deny` happens: by default the process is killed).
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Read the audit trail, or verify it.
    Audit {
        #[command(subcommand)]
        verify: Option<AuditCommand>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        follow: bool,
    },
    /// Mode, tagged cgroups, pending holds and counters.
    Status,
    /// Report what this kernel offers and which enforcement mode keyturn would use.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Install the binary, keyturn.service and a default config; enable and start the unit.
    Install {
        /// Stage everything under DIR (an image, a package) instead of /: the unit is
        /// enabled by its symlink, as `systemctl --root` would, and nothing is started.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Print a one-time bootstrap token with which HOST enrols for its certificate.
    Token {
        host: String,
        /// How long the token stays valid.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print a new API token for PERSON (automation, or the first admin where no identity
    /// provider is configured); also for the daemon's embedded console.
    ApiToken {
        /// Who the token acts as: decisions made with it name this person.
        person: String,
        /// viewer, approver or admin.
        #[arg(long, default_value = "approver")]
        role: console::Role,
        /// What the token is for.
        #[arg(long, default_value = "command line")]
        name: String,
        /// How long it is valid (at most 365 days).
        #[arg(long, default_value = "90d")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every record; names the first one edited, removed, reordered or cut.
    Verify,
}

#[derive(Args)]
struct RequesterArg {
    /// Who launches the agent (a person or service account, such as an email address): the
    /// console lets no one approve the holds of an agent they launched. Default: the user
    /// calling, as `unix:NAME`.
    #[arg(long, value_name = "WHO", value_parser = parse_requester)]
    requester: Option<String>,
}

fn parse_requester(who: &str) -> Result<String, String> {
    api::check_requester(who).map(|()| who.to_owned())
}

#[derive(Args)]
#[group(multiple = false)]
struct ScopeArgs {
    /// Release this action only (the default).
    #[arg(long)]
    once: bool,
    /// Also allow the same action by the same agent for this long (e.g. 10m).
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<String>,
    /// Also allow the same action by the same agent for the life of its cgroup.
    #[arg(long)]
    always: bool,
}

impl ScopeArgs {
    fn scope(&self) -> anyhow::Result<Scope> {
        if self.always {
            return Ok(Scope::Always);
        }
        match &self.duration {
            Some(text) => {
                let duration = humantime::parse_duration(text).map_err(|e| anyhow!("--for {text:?}: {e}"))?;
                Ok(Scope::For(duration.as_secs().max(1)))
            }
            None => Ok(Scope::Once),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyturn: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn call(config: &Config, request: &Request) -> anyhow::Result<serde_json::Value> {
    api::call(&config.socket, request).map_err(|e| anyhow!(e))
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`keyturn status | head`) is not an error worth a panic.
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(value)?);
    Ok(0)
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Console { action } = &cli.command {
        return run_console(cli.config.as_deref(), action.as_ref());
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Console { .. } => unreachable!("handled above: it does not read the daemon's config"),
        Command::Daemon => {
            init_logging();
            keyturn::daemon::check_not_running(&config)?;
            tokio::runtime::Runtime::new()?.block_on(keyturn::daemon::run(config))?;
            Ok(0)
        }
        Command::Run { policy, name, requester: RequesterArg { requester }, command } => {
            run_agent(&config, policy, name, requester, &command)
        }
        Command::Tag { path, policy, name, requester: RequesterArg { requester } } => {
            print_json(&call(&config, &Request::Tag { path, policy, name, requester })?)
        }
        Command::Untag { path } => print_json(&call(&config, &Request::Untag { path })?),
        Command::Tags { json } => {
            let tags = call(&config, &Request::Tags)?;
            if json {
                return print_json(&tags);
            }
            for agent in tags.as_array().into_iter().flatten() {
                let text = |key: &str| agent[key].as_str().unwrap_or("").to_owned();
                println!(
                    "{}\t{}\tpolicy={}\trequester={}",
                    text("path"),
                    text("name"),
                    text("policy"),
                    text("requester")
                );
            }
            Ok(0)
        }
        Command::Pending { json } => {
            let pending = call(&config, &Request::Pending)?;
            if json {
                return print_json(&pending);
            }
            print_pending(&pending);
            Ok(0)
        }
        Command::Approve { id, scope, reason } => {
            print_json(&call(&config, &Request::Approve { id, scope: scope.scope()?, reason })?)
        }
        Command::Deny { id, reason } => print_json(&call(&config, &Request::Deny { id, reason })?),
        Command::Audit { verify: Some(AuditCommand::Verify), .. } => {
            let head = audit::verify(&config.audit_dir())?;
            println!("audit trail intact: {} records, last hash {}", head.records, head.hash);
            Ok(0)
        }
        Command::Audit { verify: None, json, follow } => show_audit(&config.audit_dir(), json, follow),
        Command::Status => print_json(&call(&config, &Request::Status)?),
        Command::Doctor { json } => {
            let report = keyturn::doctor::report();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                keyturn::doctor::print(&report);
            }
            Ok(i32::from(report.mode.is_none()))
        }
        Command::Install { root } => install(root.as_deref()),
    }
}

/// `keyturn console`: the console's own config file, not the daemon's.
fn run_console(config: Option<&Path>, action: Option<&ConsoleCommand>) -> anyhow::Result<i32> {
    let config = console::Config::load(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    match action {
        None => {
            init_logging();
            runtime.block_on(console::run(config))?;
        }
        Some(ConsoleCommand::Token { host, ttl }) => {
            let ttl = humantime::parse_duration(ttl).map_err(|e| anyhow!("--ttl {ttl:?}: {e}"))?;
            println!("{}", runtime.block_on(console::issue_token(&config, host, ttl))?);
        }
        Some(ConsoleCommand::ApiToken { person, role, name, ttl }) => {
            let lifetime = humantime::parse_duration(ttl).map_err(|e| anyhow!("--ttl {ttl:?}: {e}"))?;
            if lifetime.is_zero() || lifetime > console::people::MAX_TOKEN_LIFETIME {
                bail!("--ttl {ttl:?}: a token lasts from a second to 365 days");
            }
            let (id, token) =
                runtime.block_on(console::issue_api_token(&config, person, *role, name, lifetime))?;
            eprintln!("API token {id} for {person} ({role}); shown this once:");
            println!("{token}");
        }
    }
    Ok(0)
}

fn print_pending(pending: &serde_json::Value) {
    let holds = pending.as_array().map(Vec::as_slice).unwrap_or_default();
    if holds.is_empty() {
        println!("no held actions");
        return;
    }
    println!("{:<14} {:<7} {:<16} {:>8} {:<10} WHAT", "ID", "KIND", "AGENT", "PID", "USER");
    for hold in holds {
        let text = |key: &str| hold[key].as_str().unwrap_or("").to_owned();
        let what = if text("kind") == "exec" {
            let argv = hold["argv"].as_array().into_iter().flatten().skip(1).filter_map(|a| a.as_str());
            std::iter::once(text("path").as_str()).chain(argv).map(shown_word).collect::<Vec<_>>().join(" ")
        } else {
            format!("{} {}:{}", text("protocol"), text("address"), hold["port"])
        };
        println!(
            "{:<14} {:<7} {:<16} {:>8} {:<10} {what}  [{}]",
            text("id"),
            text("kind"),
            text("agent"),
            hold["pid"],
            text("user"),
            text("policy_rule")
        );
    }
}

/// One word of a command line in the `pending` table: as it is, or in double quotes when it
/// is empty or has blanks or quotes, so that words never run together. The daemon already
/// made it printable (`context::printable`), where a backslash is always escaped.
fn shown_word(word: &str) -> String {
    if !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        return word.to_owned();
    }
    format!("\"{}\"", word.replace('"', "\\\""))
}

fn show_audit(dir: &Path, json: bool, follow: bool) -> anyhow::Result<i32> {
    let mut shown = 0;
    loop {
        let records = audit::read_all(dir)?;
        for record in records.iter().skip(shown) {
            if json {
                println!("{}", serde_json::to_string(record)?);
            } else {
                let kind = record.event["type"].as_str().unwrap_or("?");
                println!("{} #{} {kind} {}", record.time, record.seq, record.event);
            }
        }
        shown = records.len();
        std::io::stdout().flush()?;
        if !follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Starts CMD held back until the daemon has put it in its own tagged cgroup, then lets
/// it exec, waits, and returns its status (128 + signal when killed).
fn run_agent(
    config: &Config,
    policy: String,
    name: Option<String>,
    requester: Option<String>,
    command: &[OsString],
) -> anyhow::Result<i32> {
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| anyhow!("{} contains a NUL byte", a.display())))
        .collect::<Result<_, _>>()?;
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    let (gate_read, gate_write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only calls async-signal-safe functions (close, read, execvp, write, _exit)
    // on memory prepared before the fork. std's spawn cannot be used: it waits for the exec,
    // which must wait for the daemon.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            // Only the parent writes: a refusal closes the gate, and the read sees its end.
            libc::close(gate_write.as_raw_fd());
            let mut go = [0u8; 1];
            if libc::read(gate_read.as_raw_fd(), go.as_mut_ptr().cast(), 1) == 1 {
                libc::execvp(pointers[0], pointers.as_ptr());
                let message = b"keyturn: cannot execute the command\n";
                libc::write(2, message.as_ptr().cast(), message.len());
                libc::_exit(127);
            }
            libc::_exit(126);
        }
    }
    drop(gate_read);
    let pid = u32::try_from(pid).expect("fork returned a pid");
    if let Err(e) = call(config, &Request::Run { pid, policy, name, requester }) {
        drop(gate_write);
        wait_for(pid)?;
        return Err(e);
    }
    std::fs::File::from(gate_write).write_all(b"1").context("releasing the command")?;
    wait_for(pid)
}

/// Waits for child `pid`; its exit code, or 128 + the signal that killed it.
fn wait_for(pid: u32) -> anyhow::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid.cast_signed(), &raw mut status, 0) };
        if rc >= 0 {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            bail!("waiting for the command: {error}");
        }
    }
    let status = std::process::ExitStatus::from_raw(status);
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

const UNIT: &str = include_str!("../../packaging/keyturn.service");
const DEFAULT_CONFIG: &str = include_str!("../../packaging/keyturn.toml");
const BINARY: &str = "/usr/local/bin/keyturn";
const UNIT_PATH: &str = "/etc/systemd/system/keyturn.service";
/// What `systemctl enable` creates for the unit's `WantedBy=multi-user.target`.
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/keyturn.service";
const POLICIES_DIR: &str = "/etc/keyturn/policies";

/// Installs the binary, the unit and (unless one exists) the config, under `root` or `/`.
/// Running it again updates the binary and the unit and never touches an existing config.
fn install(root: Option<&Path>) -> anyhow::Result<i32> {
    let under = |path: &str| root.unwrap_or(Path::new("/")).join(path.trim_start_matches('/'));
    let exe = std::env::current_exe().context("finding this executable")?;
    let binary = under(BINARY);
    if !same_file(&exe, &binary) {
        place(&binary, 0o755, |to| std::fs::copy(&exe, to).map(drop))?;
    }
    place(&under(UNIT_PATH), 0o644, |to| std::fs::write(to, UNIT))?;
    let config = under(keyturn::config::DEFAULT_PATH);
    let kept = config.exists();
    if !kept {
        place(&config, 0o644, |to| std::fs::write(to, DEFAULT_CONFIG))?;
    }
    make_dirs(&under(POLICIES_DIR))?;
    println!("installed {}, {}", binary.display(), under(UNIT_PATH).display());
    if kept {
        println!("kept the existing {}", config.display());
    } else {
        println!("wrote {}", config.display());
    }
    if root.is_some() {
        let link = under(WANTS_LINK);
        make_dirs(link.parent().expect("the link has a directory"))?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(UNIT_PATH, &link)
            .with_context(|| format!("creating {}", link.display()))?;
        println!("keyturn.service enabled in {} (not started)", link.display());
        return Ok(0);
    }
    for args in [&["daemon-reload"][..], &["enable", "--now", "keyturn.service"]] {
        let status = Process::new("systemctl")
            .args(args)
            .status()
            .context("running systemctl (is systemd the init system? --root DIR stages without it)")?;
        if !status.success() {
            bail!("systemctl {} failed: {status}", args.join(" "));
        }
    }
    println!("keyturn.service enabled and started");
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
