//! The `keyturn` command line: the daemon, the console, and the commands operators and
//! approvers use; [`print`] shows replies, [`launch`] starts agents, [`install`] the unit.

mod generate;
mod install;
mod launch;
mod print;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand};

use crate::{
    audit,
    config::Config,
    daemon::{
        Agent, Status,
        api::{self, Request, Scope, SignInLink, Target},
    },
    hold::context::HoldView,
};
use install::install;
use launch::run_agent;
use print::{ExportFormat, export_audit, print_json, print_pending, show_audit, verify_host};

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
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Tag a cgroup or a systemd unit as an agent's.
    Tag {
        #[command(flatten)]
        target: TargetArgs,
        /// The tagged service is starting: tag its new cgroup (run by its drop-in).
        #[arg(long, hide = true, requires = "unit", conflicts_with_all = ["policy", "name", "requester"])]
        starting: bool,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Stop enforcing on a tagged cgroup or unit.
    Untag {
        #[command(flatten)]
        target: TargetArgs,
    },
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
        command: Option<AuditCommand>,
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
    /// Write the man pages (DIR/man) and shell completions (DIR/completions), for packaging.
    #[command(hide = true)]
    Generate { dir: PathBuf },
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
    /// Link a Slack or Teams account to PERSON: their clicks in chat decide as PERSON, with
    /// ROLE.
    Link {
        /// The person the account acts as (as decisions and the audit trail name them).
        person: String,
        #[command(flatten)]
        account: ChatAccountArg,
        /// viewer or approver (a chat account is never an admin).
        #[arg(long, default_value = "approver")]
        role: console::Role,
    },
    /// Unlink a Slack or Teams account: its clicks decide nothing from now on.
    Unlink {
        #[command(flatten)]
        account: ChatAccountArg,
    },
    /// Check HOST's audit trail against the anchors the console keeps of it: names a trail
    /// cut or rewritten after an anchor. Exits 1 on any finding.
    VerifyHost {
        host: String,
        /// A copy of the host's trail (its `state_dir/audit`) to check record by record.
        #[arg(long, value_name = "DIR")]
        trail: Option<PathBuf>,
    },
    /// Print a one-time link that signs you in to this host's embedded console as an admin
    /// (valid 10 minutes, used once). The daemon gives one to root and the approver group
    /// only; here --config names the daemon's file.
    Login,
    /// Write the signed evidence pack of a period for auditors (a zip), or verify one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Evidence {
        #[command(subcommand)]
        verify: Option<EvidenceCommand>,
        /// Holds requested from this time on: RFC 3339 in UTC, or a date (midnight UTC).
        #[arg(long, required = true, value_name = "DATE")]
        from: Option<String>,
        /// Up to this time (exclusive), or a date (included whole).
        #[arg(long, required = true, value_name = "DATE")]
        to: Option<String>,
        /// Where to write the pack.
        #[arg(long, required = true, value_name = "PACK.zip")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EvidenceCommand {
    /// Check a pack offline, with only the console's public key: the signature, every
    /// file's digest, the audit chain segment and each signed decision.
    Verify {
        pack: PathBuf,
        /// The console's public key (64 hex digits, as `keyturn console` logs it at start);
        /// without it, the public half of the key file the console's --config names.
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every record; names the first one edited, removed, reordered or cut.
    Verify,
    /// Write the records of a period as JSON lines, after verifying the whole trail.
    Export {
        /// `ocsf`: Open Cybersecurity Schema Framework events; `keyturn`: the records as written.
        #[arg(long, value_enum, default_value = "keyturn")]
        format: ExportFormat,
        /// From this time on (RFC 3339, or a date: midnight UTC).
        #[arg(long, value_parser = print::parse_time)]
        since: Option<std::time::SystemTime>,
        /// Up to (not including) this time.
        #[arg(long, value_parser = print::parse_time)]
        until: Option<std::time::SystemTime>,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// The cgroup, relative to the cgroup v2 root.
    path: Option<String>,
    /// A systemd service or slice: the tag follows it to every cgroup systemd makes for it,
    /// and a service starts only once keyturn watches it (a drop-in keyturn writes).
    #[arg(long)]
    unit: Option<String>,
}

impl From<TargetArgs> for Target {
    fn from(target: TargetArgs) -> Self {
        match (target.path, target.unit) {
            (_, Some(unit)) => Self::Unit(unit),
            (path, None) => Self::Path(path.unwrap_or_default()),
        }
    }
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ChatAccountArg {
    /// A Slack account: TEAM/USER (Slack's ids, such as T0123ABC/U0456DEF).
    #[arg(long, value_name = "TEAM/USER", value_parser = console::chat::ChatAccount::slack)]
    slack: Option<console::chat::ChatAccount>,
    /// A Microsoft Teams account: TENANT/USER (the Entra ID tenant id and the user's
    /// object id).
    #[arg(long, value_name = "TENANT/USER", value_parser = console::chat::ChatAccount::teams)]
    teams: Option<console::chat::ChatAccount>,
}

impl ChatAccountArg {
    fn account(&self) -> &console::chat::ChatAccount {
        self.slack.as_ref().or(self.teams.as_ref()).expect("clap requires one")
    }
}

#[derive(Args)]
struct AgentArgs {
    /// The policy the agent's actions are judged by.
    #[arg(long, default_value = "default")]
    policy: String,
    /// The agent's name in listings and in the console.
    #[arg(long)]
    name: Option<String>,
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
    /// Also allow the same action by the same agent for this long (e.g. 10m); for a
    /// connection shown with a name, every address of that name on the same port.
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<String>,
    /// Also allow the same action by the same agent for the life of its cgroup; for a
    /// connection shown with a name, every address of that name on the same port.
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

/// Runs the command line and exits with its status.
pub fn main() {
    let cli = Cli::parse();
    // The daemon and the console serve until stopped: a peer that goes away must not end
    // them. Every other command writes for a reader, and stops when it leaves.
    if !matches!(cli.command, Command::Daemon | Command::Console { action: None }) {
        crate::sys::end_on_closed_pipe();
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyturn: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// The daemon's reply to `request`, as a `T`.
fn call_as<T: serde::de::DeserializeOwned>(config: &Config, request: &Request) -> anyhow::Result<T> {
    serde_json::from_value(call(config, request)?).context("reading the daemon's reply")
}

pub(crate) fn call(config: &Config, request: &Request) -> anyhow::Result<serde_json::Value> {
    api::call(&config.socket, request).map_err(|e| anyhow!(e))
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Console { action } => return run_console(cli.config.as_deref(), action.as_ref()),
        Command::Generate { dir } => return generate::generate(&Cli::command(), dir),
        _ => {}
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Console { .. } | Command::Generate { .. } => {
            unreachable!("handled above: they do not read the daemon's config")
        }
        Command::Daemon => {
            crate::logging::init();
            crate::daemon::check_not_running(&config)?;
            tokio::runtime::Runtime::new()?.block_on(crate::daemon::run(config))?;
            Ok(0)
        }
        Command::Run { agent: AgentArgs { policy, name, requester }, command } => {
            run_agent(&config, policy, name, requester, &command)
        }
        Command::Tag { target, starting: true, .. } => {
            let unit = target.unit.expect("clap: --starting requires --unit");
            print_json(&call(&config, &Request::UnitStarting { unit })?)
        }
        Command::Tag { target, starting: false, agent: AgentArgs { policy, name, requester } } => {
            print_json(&call(&config, &Request::Tag { target: target.into(), policy, name, requester })?)
        }
        Command::Untag { target } => print_json(&call(&config, &Request::Untag { target: target.into() })?),
        Command::Tags { json } => {
            let tags: Vec<Agent> = call_as(&config, &Request::Tags)?;
            if json {
                return print_json(&tags);
            }
            for agent in tags {
                let unit = agent.unit.map(|unit| format!("\tunit={unit}")).unwrap_or_default();
                println!(
                    "{}\t{}\tpolicy={}\trequester={}{unit}",
                    agent.path, agent.name, agent.policy, agent.requester
                );
            }
            Ok(0)
        }
        Command::Pending { json } => {
            let pending: Vec<HoldView> = call_as(&config, &Request::Pending)?;
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
        Command::Audit { command: Some(AuditCommand::Verify), .. } => {
            let head = audit::verify(&config.audit_dir())?;
            println!("audit trail intact: {} records, last hash {}", head.records, head.hash);
            Ok(0)
        }
        Command::Audit { command: Some(AuditCommand::Export { format, since, until }), .. } => {
            export_audit(&config.audit_dir(), format, since, until)
        }
        Command::Audit { command: None, json, follow } => show_audit(&config.audit_dir(), json, follow),
        Command::Status => print_json(&call_as::<Status>(&config, &Request::Status)?),
        Command::Doctor { json } => {
            let report = crate::kernel::doctor::report();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                crate::kernel::doctor::print(&report);
            }
            Ok(i32::from(report.mode.is_none()))
        }
        Command::Install { root } => install(root.as_deref()),
    }
}

/// `keyturn console`: the console's own config file, not the daemon's (but for `login`,
/// which asks the daemon).
/// The operator running this command, as the console's audit trail names them.
fn operator() -> String {
    format!("unix:{}", crate::hold::context::user_name(nix::unistd::getuid().as_raw()))
}

fn run_console(config: Option<&Path>, action: Option<&ConsoleCommand>) -> anyhow::Result<i32> {
    let console_config = || console::Config::load(config);
    let runtime = tokio::runtime::Runtime::new()?;
    match action {
        None => {
            let config = console_config()?;
            crate::logging::init();
            runtime.block_on(console::run(config))?;
        }
        Some(ConsoleCommand::Token { host, ttl }) => {
            let config = console_config()?;
            let ttl = humantime::parse_duration(ttl).map_err(|e| anyhow!("--ttl {ttl:?}: {e}"))?;
            println!("{}", runtime.block_on(console::issue_token(&config, host, ttl))?);
        }
        Some(ConsoleCommand::ApiToken { person, role, name, ttl }) => {
            let config = console_config()?;
            let lifetime = humantime::parse_duration(ttl).map_err(|e| anyhow!("--ttl {ttl:?}: {e}"))?;
            if lifetime.is_zero() || lifetime > console::people::MAX_TOKEN_LIFETIME {
                bail!("--ttl {ttl:?}: a token lasts from a second to 365 days");
            }
            let (id, token) =
                runtime.block_on(console::issue_api_token(&config, person, *role, name, lifetime))?;
            eprintln!("API token {id} for {person} ({role}); shown this once:");
            println!("{token}");
        }
        Some(ConsoleCommand::Link { person, account, role }) => {
            let (config, account) = (console_config()?, account.account());
            runtime.block_on(console::link_chat(&config, account, person, *role, &operator()))?;
            eprintln!("{account} now decides as {person} ({role})");
        }
        Some(ConsoleCommand::Unlink { account }) => {
            let (config, account) = (console_config()?, account.account());
            if !runtime.block_on(console::unlink_chat(&config, account, &operator()))? {
                bail!("{account} was not linked");
            }
            eprintln!("{account} is unlinked");
        }
        Some(ConsoleCommand::VerifyHost { host, trail }) => {
            let config = console_config()?;
            let state = runtime
                .block_on(async { console::Store::open(&config.database).await?.trail_state(host).await })?;
            return verify_host(&state, trail.as_deref());
        }
        Some(ConsoleCommand::Login) => {
            let link: SignInLink = call_as(&Config::load(config)?, &Request::ConsoleLogin)?;
            eprintln!(
                "A sign-in link for {} (admin), good once within {} minutes:",
                link.person,
                link.valid_secs / 60
            );
            println!("{}", link.url);
        }
        Some(ConsoleCommand::Evidence {
            verify: Some(EvidenceCommand::Verify { pack, public_key }), ..
        }) => {
            let key = match public_key {
                Some(hex) => host_client::keys::public_key_from_hex(hex)?,
                None => console::public_key(&console_config()?)?,
            };
            let bytes = std::fs::read(pack).with_context(|| format!("reading {}", pack.display()))?;
            println!("{}", console::evidence::verify(&bytes, &key)?);
        }
        Some(ConsoleCommand::Evidence { verify: None, from, to, out }) => {
            let (Some(from), Some(to), Some(out)) = (from, to, out) else {
                unreachable!("clap: --from, --to and --out are required")
            };
            let config = console_config()?;
            let period = console::evidence::Period::parse(from, to)?;
            let pack = runtime.block_on(console::export_evidence(&config, period, &operator()))?;
            std::fs::write(out, &pack).with_context(|| format!("writing {}", out.display()))?;
            let summary = console::evidence::verify(&pack, &console::public_key(&config)?)?;
            eprintln!("wrote {} ({} bytes)\n{summary}", out.display(), pack.len());
        }
    }
    Ok(0)
}
