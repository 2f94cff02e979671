//! Policy files (`/etc/keyturn/policies/NAME.toml`) and the built-in `default` policy:
//! parsed strictly, every error naming file, line and reason.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{Action, EgressRule, protocol, verdict};
use serde::Deserialize;

use crate::{
    dns::name::{DomainPattern, Name},
    hold::identity::{Digests, Executable},
    hold::process::OnDeny,
    policy::{
        Asks, EgressSpec, KernelPolicy, Verdict, display_cidr,
        kernel::Cidr,
        names::{self, NameJudgement, NameRule},
    },
};

/// A policy as written in its file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_on")]
    on_timeout: OnDeny,
    #[serde(default = "default_on")]
    on_deny: OnDeny,
    #[serde(default)]
    exec: Vec<ExecRuleFile>,
    #[serde(default)]
    egress: Vec<EgressRuleFile>,
    egress_default: Option<DefaultFile>,
    exec_default: Option<DefaultFile>,
}

fn default_timeout() -> String {
    "10m".into()
}

fn default_on() -> OnDeny {
    OnDeny::Kill
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecRuleFile {
    path: String,
    action: Verdict,
    #[serde(default)]
    argv: Vec<String>,
    quorum: Option<i64>,
    #[serde(default)]
    approve_in: ApproveIn,
    notify: Option<Vec<String>>,
}

/// Where the holds a rule flags may be decided.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ApproveIn {
    /// Wherever an approver works: the console, chat, the API, the host.
    #[default]
    Anywhere,
    /// In the console (its web UI and API) after its own sign-in, or on the host: never
    /// with a chat account, whose click is announced with **Open in console** only.
    Console,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum PortFile {
    One(u16),
    Range(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ProtocolFile {
    Tcp,
    Udp,
    #[default]
    Any,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressRuleFile {
    cidr: Option<String>,
    domain: Option<String>,
    #[serde(default)]
    ports: Vec<PortFile>,
    #[serde(default)]
    protocol: ProtocolFile,
    action: Verdict,
    quorum: Option<i64>,
    #[serde(default)]
    approve_in: ApproveIn,
    notify: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultFile {
    action: Verdict,
    notify: Option<Vec<String>>,
}

/// An exec rule user space applies while the process is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRule {
    /// The path or glob as written.
    pub pattern: String,
    /// The pattern's directory with its symlinks resolved, matched against the canonical
    /// path of what runs.
    dir: PathBuf,
    /// The pattern's file name, which may be a glob.
    name: String,
    pub action: Verdict,
    /// Hold only when argv contains all these words; otherwise the exec is allowed.
    pub argv: Vec<String>,
    /// How many distinct people must approve a hold this rule flags.
    pub quorum: u32,
    /// Whether its holds are decided in the console only (`approve_in = "console"`).
    pub in_console: bool,
    /// The people told directly of each hold it flags (`notify`).
    pub notify: Vec<String>,
}

impl ExecRule {
    /// Whether this rule names `exe`: by its canonical path, or by its content being that
    /// of a file the pattern names now (a copy, a link, an older or newer install).
    fn names(&self, exe: &Executable, digests: &Digests) -> bool {
        let by_path = exe.path.parent() == Some(self.dir.as_path())
            && exe.path.file_name().is_some_and(|n| glob_match(self.name.as_bytes(), n.as_bytes()));
        by_path || digests.named_by(&self.pattern, &resolve_executables(&self.pattern), &exe.sha256)
    }

    fn describe(&self) -> String {
        if self.argv.is_empty() {
            format!("exec path {:?} action {:?}", self.pattern, self.action)
        } else {
            format!("exec path {:?} argv {:?} action {:?}", self.pattern, self.argv, self.action)
        }
    }
}

/// What a policy says of an exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecJudgement {
    pub verdict: Verdict,
    /// The rule that decided, as an approver reads it.
    pub rule: String,
    /// Whether argv took part: then the verdict is for this exec only, not for every exec
    /// of the same file version.
    pub argv_dependent: bool,
    /// What approving it asks, if the verdict is a hold.
    pub asks: Asks,
    /// The people told directly of the hold, if the verdict is a hold.
    pub notify: Vec<String>,
}

impl ExecJudgement {
    /// A hold of an exec no rule could judge (`why`): for one person, anywhere, and for
    /// this exec only.
    pub fn unverified(why: String) -> Self {
        Self { verdict: Verdict::Hold, rule: why, argv_dependent: true, asks: Asks::ONE, notify: vec![] }
    }
}

/// A loaded, valid policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub timeout: Duration,
    pub on_timeout: OnDeny,
    pub on_deny: OnDeny,
    /// Checked in order: the first rule that names the program (and whose argv words all
    /// appear) decides.
    pub exec: Vec<ExecRule>,
    /// The verdict for a program no rule names, and whom its hold is told of directly.
    pub exec_default: Verdict,
    pub exec_default_notify: Vec<String>,
    /// Whom a hold `egress_default` flags is told of directly.
    pub egress_default_notify: Vec<String>,
    pub kernel: KernelPolicy,
    /// Domain rules, in order: judged by keyturn's resolver when an agent looks a name up.
    pub names: Vec<NameRule>,
    /// The policy's text as written, and its SHA-256 (hex): what was in force, for audits.
    pub text: String,
    pub sha256: String,
}

impl Policy {
    /// Judges an exec the kernel held. `argv` (as `context::printable` shows it; `None` if
    /// it cannot be read, and then a rule with argv words holds) is called only if such a
    /// rule names the program, at most once.
    pub fn judge_exec(
        &self,
        exe: &Executable,
        digests: &Digests,
        argv: impl FnOnce() -> Option<Vec<String>>,
    ) -> ExecJudgement {
        let mut argv = Some(argv);
        let mut words: Option<Vec<String>> = None;
        let mut argv_dependent = false;
        for rule in &self.exec {
            if !rule.names(exe, digests) {
                continue;
            }
            // This rule's hold with `why` it holds, or its own verdict.
            let judged = |verdict, why: &str, argv_dependent| ExecJudgement {
                verdict,
                rule: format!("{why}{}", rule.describe()),
                argv_dependent,
                asks: Asks { quorum: rule.quorum, in_console: rule.in_console },
                notify: rule.notify.clone(),
            };
            if !rule.argv.is_empty() {
                if let Some(read) = argv.take() {
                    words = read();
                }
                argv_dependent = true;
                let Some(words) = &words else {
                    return judged(Verdict::Hold, "argv could not be read to check ", true);
                };
                // A rule's words are compared as argv is shown: escaped.
                let has = |word: &String| words.contains(&crate::hold::context::printable(word.as_bytes()));
                if !rule.argv.iter().all(has) {
                    if crate::hold::context::argv_cut(words) {
                        // A word could sit in the part not read: ask rather than go on.
                        return judged(Verdict::Hold, "argv too long to check ", true);
                    }
                    continue;
                }
            }
            return judged(rule.action, "", argv_dependent);
        }
        ExecJudgement {
            verdict: self.exec_default,
            rule: "exec_default".into(),
            argv_dependent,
            asks: Asks::ONE,
            notify: self.exec_default_notify.clone(),
        }
    }

    /// What this policy says of a name an agent looks up.
    pub fn judge_name(&self, name: &Name) -> NameJudgement {
        names::judge(&self.names, (self.kernel.egress_default, &self.egress_default_notify), name)
    }

    /// What the kernel lets the agent reach at `addr` (kernel form), an address of `name`,
    /// once looking the name up was approved as `approved` asks: every port the policy would
    /// hold for no more (see [`Asks::met_by`]) is let through, what it denies or allows or
    /// holds for more stays so. `None` where the domain and CIDR rules together have more
    /// port rules than the kernel's rule holds (then the daemon releases the connections the
    /// approval covers).
    pub fn approved_rule(&self, name: &Name, addr: [u8; 16], approved: Asks) -> Option<EgressRule> {
        let host = Cidr { addr, prefix: 128 };
        // The rules as the approval leaves them: a hold it is enough for, an allow.
        let released = |verdict, asks: Asks| {
            if verdict == Verdict::Hold && asks.met_by(approved) { Verdict::Allow } else { verdict }
        };
        let domains: Vec<NameRule> = self
            .names
            .iter()
            .map(|rule| NameRule { verdict: released(rule.verdict, rule.asks()), ..rule.clone() })
            .collect();
        let kernel = KernelPolicy {
            egress_default: released(self.kernel.egress_default, Asks::ONE),
            egress: self
                .kernel
                .egress
                .iter()
                .map(|rule| EgressSpec { verdict: released(rule.verdict, rule.asks()), ..rule.clone() })
                .collect(),
            executables: Vec::new(),
            ..self.kernel
        };
        let mut rule = names::judge(&domains, (kernel.egress_default, &[]), name)
            .kernel
            .unwrap_or(EgressRule { fallback: verdict::NONE, ..EgressRule::default() });
        if rule.fallback == verdict::NONE {
            // The ports the domain rules leave to the CIDR rules, as those judge the address.
            let cidr = kernel.folded(host).ok()?;
            let (count, more) = (rule.count as usize, cidr.count as usize);
            rule.ports.get_mut(count..count + more)?.copy_from_slice(&cidr.ports[..more]);
            (rule.count, rule.fallback) = (rule.count + cidr.count, cidr.fallback);
        }
        Some(rule)
    }

    /// What decides an egress action, as an approver reads it: a domain rule naming `name`
    /// (the name the agent resolved the address from, if any), else the CIDR rule, else
    /// `egress_default`.
    pub fn egress_rule(&self, action: &Action, name: Option<&Name>) -> EgressJudgement {
        let port = u16::try_from(action.port).unwrap_or(0);
        if let Some(rule) = name.and_then(|name| names::rule_for(&self.names, name, port, action.protocol)) {
            let (verdict, asks, notify) = (rule.verdict, rule.asks(), rule.notify.clone());
            return EgressJudgement { verdict, rule: rule.describe(), asks, notify };
        }
        self.kernel.rule_for(action.addr, port, action.protocol).map_or_else(
            || EgressJudgement {
                verdict: self.kernel.egress_default,
                rule: "egress_default".into(),
                asks: Asks::ONE,
                notify: self.egress_default_notify.clone(),
            },
            |r| EgressJudgement {
                verdict: r.verdict,
                rule: format!("egress {} action {:?}", display_cidr(&r.cidr), r.verdict),
                asks: r.asks(),
                notify: r.notify.clone(),
            },
        )
    }
}

/// What a policy says of an egress action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressJudgement {
    pub verdict: Verdict,
    /// The rule that decides, as an approver reads it.
    pub rule: String,
    /// How many distinct people must approve it, when it is held, and where.
    pub asks: Asks,
    /// The people told directly of it, when it is held.
    pub notify: Vec<String>,
}

/// Why a policy was refused: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Programs whose exec the built-in policy holds: they export data, raise privileges or
/// change infrastructure.
const FLAGGED_PROGRAMS: &[&str] = &[
    "curl",
    "wget",
    "scp",
    "sftp",
    "rsync",
    "nc",
    "ncat",
    "netcat",
    "socat",
    "ssh",
    "telnet",
    "ftp",
    "sudo",
    "su",
    "doas",
    "pkexec",
    "kubectl",
    "helm",
    "terraform",
    "aws",
    "gcloud",
    "az",
    "psql",
    "mysql",
    "mongo",
    "mongosh",
    "mongodump",
    "pg_dump",
    "mysqldump",
    "redis-cli",
];

/// Directories the built-in policy looks in for [`FLAGGED_PROGRAMS`].
const PROGRAM_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// The built-in `default` policy, as a policy file would say it.
pub fn default_policy_text() -> String {
    let mut text = String::from(
        "# keyturn's built-in default policy\ntimeout = \"10m\"\non_timeout = \"kill\"\non_deny = \"kill\"\n\n",
    );
    for program in FLAGGED_PROGRAMS {
        for dir in PROGRAM_DIRS {
            let _ = write!(text, "[[exec]]\npath = \"{dir}/{program}\"\naction = \"hold\"\n\n");
        }
    }
    for loopback in ["127.0.0.0/8", "::1/128"] {
        let _ = write!(text, "[[egress]]\ncidr = \"{loopback}\"\naction = \"allow\"\n\n");
    }
    text.push_str("[egress_default]\naction = \"hold\"\n");
    text
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line of the `index`-th `[[table]]` header, for errors about its rule.
fn rule_line(text: &str, table: &str, index: usize) -> usize {
    let header = format!("[[{table}]]");
    text.match_indices(&header).nth(index).map_or(1, |(offset, _)| line_of(text, offset))
}

/// Most distinct approvers a rule may ask for.
const MAX_QUORUM: i64 = 9;

/// A rule's `approve_in`: whether its holds are decided in the console only; only a
/// rule that holds may say where.
fn in_console(approve_in: ApproveIn, action: Verdict) -> Result<bool, String> {
    match (approve_in, action) {
        (ApproveIn::Console, Verdict::Hold) => Ok(true),
        (ApproveIn::Console, _) => {
            Err("approve_in says where a hold is decided: only a rule that holds has one".into())
        }
        (ApproveIn::Anywhere, _) => Ok(false),
    }
}

/// Most people a rule may name in `notify`.
const MAX_NOTIFY: usize = 16;

/// A rule's `notify`: none unless written; only a rule that holds tells anyone, and each
/// of 1 to [`MAX_NOTIFY`] people is named once (without regard to case, as the console
/// compares them), as the console names people (`console::chat::is_person_name`).
fn parse_notify(notify: Option<&[String]>, action: Verdict) -> Result<Vec<String>, String> {
    let Some(notify) = notify else { return Ok(Vec::new()) };
    if action != Verdict::Hold {
        return Err("notify says whom a hold is told of: only a rule that holds has one".into());
    }
    if notify.is_empty() {
        return Err("notify is empty: name at least one person, or leave it out".into());
    }
    if notify.len() > MAX_NOTIFY {
        return Err(format!("notify names {} people: at most {MAX_NOTIFY}", notify.len()));
    }
    for (index, person) in notify.iter().enumerate() {
        if !console::chat::is_person_name(person) {
            return Err(format!(
                "notify {person:?}: a person is named in 1 to 256 bytes, without whitespace, \
                 control or invisible characters"
            ));
        }
        if notify[..index].iter().any(|earlier| earlier.to_lowercase() == person.to_lowercase()) {
            return Err(format!("notify names {person:?} twice"));
        }
    }
    Ok(notify.to_vec())
}

/// A rule's `quorum`: 1 unless written, else 1 to [`MAX_QUORUM`].
fn parse_quorum(quorum: Option<i64>) -> Result<u32, String> {
    match quorum {
        None => Ok(1),
        Some(n @ 1..=MAX_QUORUM) => Ok(u32::try_from(n).expect("1 to 9")),
        Some(n) => Err(format!("quorum {n}: must be 1 to {MAX_QUORUM} distinct approvers")),
    }
}

fn parse_port(port: &PortFile) -> Result<(u16, u16), String> {
    match port {
        PortFile::One(p) => Ok((*p, *p)),
        PortFile::Range(range) => {
            let (low, high) =
                range.split_once('-').ok_or_else(|| format!("port range {range:?} is not \"low-high\""))?;
            let parse = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("port {p:?} is not 0-65535"));
            let (low, high) = (parse(low)?, parse(high)?);
            if low > high {
                return Err(format!("port range {range:?} is empty (low > high)"));
            }
            Ok((low, high))
        }
    }
}

/// Whether `pattern` (with `*` and `?`) matches `name`, in time linear in their lengths
/// times the stars: on a mismatch only the latest `*` takes one more byte, so a pattern
/// like `*a*a*a…b` never backtracks exponentially.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The latest `*` seen and the name position it matches up to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    star = Some((star_p, star_n + 1));
                    (p, n) = (star_p + 1, star_n + 1);
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The existing files a path or glob (in its last component only) names.
pub fn resolve_executables(pattern: &str) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains(['*', '?']) {
        return if path.is_file() { vec![path.to_owned()] } else { vec![] };
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| glob_match(name.as_bytes(), e.file_name().as_encoded_bytes()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

/// Parses and checks a policy; `file` names it in errors.
pub fn parse(name: &str, file: &str, text: &str) -> Result<Policy, PolicyError> {
    let error = |line: usize, reason: String| PolicyError { file: file.into(), line, reason };
    let raw: PolicyFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(text, span.start));
        // Some toml errors (a NUL byte, say) carry no message of their own.
        let reason = if e.message().trim().is_empty() {
            e.to_string().lines().last().unwrap_or("not valid TOML").trim().to_owned()
        } else {
            e.message().to_owned()
        };
        error(line, if reason.is_empty() { "not valid TOML".to_owned() } else { reason })
    })?;
    let timeout = humantime::parse_duration(&raw.timeout).map_err(|e| {
        error(line_of(text, text.find("timeout").unwrap_or(0)), format!("timeout {:?}: {e}", raw.timeout))
    })?;
    if timeout.is_zero() {
        return Err(error(1, "timeout must be longer than zero".into()));
    }

    let mut exec = Vec::new();
    for (index, rule) in raw.exec.iter().enumerate() {
        let line = rule_line(text, "exec", index);
        if !rule.path.starts_with('/') {
            return Err(error(line, format!("exec path {:?} must be absolute", rule.path)));
        }
        if Path::new(&rule.path).parent().is_some_and(|d| d.to_string_lossy().contains(['*', '?'])) {
            return Err(error(
                line,
                format!("exec path {:?}: globs are only allowed in the file name", rule.path),
            ));
        }
        if rule.action == Verdict::Allow && !rule.argv.is_empty() {
            return Err(error(
                line,
                "argv only narrows a hold or deny; an allow with argv is impossible".into(),
            ));
        }
        if exec.iter().any(|r: &ExecRule| r.pattern == rule.path && r.argv == rule.argv) {
            return Err(error(line, format!("exec path {:?} has two rules for the same argv", rule.path)));
        }
        let quorum = parse_quorum(rule.quorum).map_err(|e| error(line, e))?;
        let in_console = in_console(rule.approve_in, rule.action).map_err(|e| error(line, e))?;
        let notify = parse_notify(rule.notify.as_deref(), rule.action).map_err(|e| error(line, e))?;
        let path = Path::new(&rule.path);
        let dir = path.parent().unwrap_or(Path::new("/"));
        exec.push(ExecRule {
            pattern: rule.path.clone(),
            dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()),
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            action: rule.action,
            argv: rule.argv.clone(),
            quorum,
            in_console,
            notify,
        });
    }

    let (egress, domains) = parse_egress(file, text, &raw.egress)?;
    // A default's verdict (`unset` unless written) and whom its holds are told of.
    let default = |table: &str, default: &Option<DefaultFile>, unset| match default {
        None => Ok((unset, Vec::new())),
        Some(DefaultFile { action, notify }) => {
            let line = line_of(text, text.find(&format!("[{table}]")).unwrap_or(0));
            Ok((*action, parse_notify(notify.as_deref(), *action).map_err(|e| error(line, e))?))
        }
    };
    let exec_default = default("exec_default", &raw.exec_default, Verdict::Allow);
    let egress_default = default("egress_default", &raw.egress_default, Verdict::Hold);
    let (exec_default, exec_default_notify) = exec_default?;
    let (egress_default, egress_default_notify) = egress_default?;
    // The kernel asks about every program it has no recorded verdict for: the daemon
    // identifies it (path, content) and records the verdict for that file version.
    let kernel =
        KernelPolicy { exec_default: Verdict::Hold, egress_default, executables: Vec::new(), egress };
    kernel.compile(0).map_err(|e| error(1, e))?;
    Ok(Policy {
        name: name.into(),
        timeout,
        on_timeout: raw.on_timeout,
        on_deny: raw.on_deny,
        exec,
        exec_default,
        exec_default_notify,
        egress_default_notify,
        kernel,
        names: domains,
        text: text.to_owned(),
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
    })
}

/// The `[[egress]]` rules: by CIDR, for the kernel, and by domain, for the resolver.
fn parse_egress(
    file: &str,
    text: &str,
    rules: &[EgressRuleFile],
) -> Result<(Vec<EgressSpec>, Vec<NameRule>), PolicyError> {
    let error = |line: usize, reason: String| PolicyError { file: file.into(), line, reason };
    let mut egress = Vec::new();
    let mut domains: Vec<NameRule> = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let line = rule_line(text, "egress", index);
        let ports =
            rule.ports.iter().map(parse_port).collect::<Result<Vec<_>, _>>().map_err(|e| error(line, e))?;
        let protocol = match rule.protocol {
            ProtocolFile::Tcp => protocol::TCP,
            ProtocolFile::Udp => protocol::UDP,
            ProtocolFile::Any => protocol::ANY,
        };
        let (verdict, quorum) = (rule.action, parse_quorum(rule.quorum).map_err(|e| error(line, e))?);
        let notify = parse_notify(rule.notify.as_deref(), verdict).map_err(|e| error(line, e))?;
        let in_console = in_console(rule.approve_in, rule.action).map_err(|e| error(line, e))?;
        match (&rule.cidr, &rule.domain) {
            (None, Some(domain)) => {
                let pattern = DomainPattern::parse(domain)
                    .map_err(|e| error(line, format!("domain {domain:?}: {e}")))?;
                let rule = NameRule { pattern, ports, protocol, verdict, quorum, in_console, notify };
                if domains.iter().any(|d| {
                    (&d.pattern, &d.ports, d.protocol) == (&rule.pattern, &rule.ports, rule.protocol)
                }) {
                    return Err(error(line, format!("egress rule for {domain} repeats an earlier one")));
                }
                names::check(&domains, &rule).map_err(|e| error(line, e))?;
                domains.push(rule);
            }
            (Some(cidr), None) => {
                let cidr_parsed = cidr.parse().map_err(|e| error(line, e))?;
                let spec =
                    EgressSpec { cidr: cidr_parsed, ports, protocol, verdict, quorum, in_console, notify };
                if egress.iter().any(|e: &EgressSpec| {
                    (e.cidr, &e.ports, e.protocol) == (spec.cidr, &spec.ports, spec.protocol)
                }) {
                    return Err(error(line, format!("egress rule for {cidr} repeats an earlier one")));
                }
                egress.push(spec);
            }
            _ => return Err(error(line, "an egress rule names either a cidr or a domain, not both".into())),
        }
    }
    Ok((egress, domains))
}

/// The built-in default policy.
pub fn builtin_default() -> Policy {
    parse("default", "<built-in default>", &default_policy_text()).expect("the built-in policy is valid")
}

/// Every policy in `dir` (`NAME.toml`), plus the built-in `default` unless a file
/// overrides it. One bad file fails the whole load: the caller keeps the last good set.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Policy>, PolicyError> {
    let mut policies = BTreeMap::new();
    policies.insert("default".to_owned(), builtin_default());
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(policies) };
    for entry in entries.flatten() {
        let path = entry.path();
        // Hidden files are editors' (an emacs lock is a dangling `.#NAME.toml` symlink).
        let hidden = entry.file_name().as_bytes().starts_with(b".");
        if hidden || path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| PolicyError {
            file: file.clone(),
            line: 1,
            reason: e.to_string(),
        })?;
        policies.insert(name.clone(), parse(&name, &file, &text)?);
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> PolicyError {
        parse("t", "t.toml", text).expect_err("must be refused")
    }

    #[test]
    fn builtin_default_holds_data_exporters_and_allows_loopback() {
        let policy = builtin_default();
        assert_eq!(policy.timeout, Duration::from_mins(10));
        assert!(policy.exec.iter().any(|r| r.pattern == "/usr/bin/curl" && r.action == Verdict::Hold));
        assert_eq!(policy.kernel.egress_default, Verdict::Hold);
        let loopback: crate::policy::kernel::Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(policy.kernel.egress.iter().any(|e| e.cidr == loopback && e.verdict == Verdict::Allow));
    }

    #[test]
    fn the_documented_example_parses() {
        let text = r#"
timeout = "10m"
on_timeout = "kill"
on_deny = "fail"

[[exec]]
path = "/usr/bin/scp*"
action = "hold"

[[exec]]
path = "/usr/bin/git"
action = "hold"
argv = ["push"]
quorum = 2

[[egress]]
cidr = "10.0.0.0/8"
ports = [443, "8000-8100"]
protocol = "tcp"
action = "hold"
quorum = 9

[egress_default]
action = "deny"
"#;
        let policy = parse("example", "example.toml", text).unwrap();
        assert_eq!(policy.on_deny, OnDeny::Fail);
        assert_eq!(policy.kernel.egress[0].ports, vec![(443, 443), (8000, 8100)]);
        assert_eq!(policy.kernel.egress_default, Verdict::Deny);
        assert_eq!(policy.exec[1].argv, vec!["push".to_owned()]);
        assert_eq!((policy.exec[0].quorum, policy.exec[1].quorum, policy.kernel.egress[0].quorum), (1, 2, 9));
    }

    #[test]
    fn bad_policies_name_the_line_and_reason() {
        let e = err(
            "timeout = \"10m\"\n\n[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"hold\"\ncolour = \"red\"\n",
        );
        assert_eq!((e.file.as_str(), e.line), ("t.toml", 6));
        assert!(e.reason.contains("colour"), "{e}");

        let e = err(
            "[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"hold\"\n\n[[egress]]\ncidr = \"300.0.0.0/8\"\naction = \"allow\"\n",
        );
        assert_eq!(e.line, 5);
        assert!(e.reason.contains("300.0.0.0/8"));

        let e = err("[[egress]]\ncidr = \"10.0.0.0/8\"\nports = [\"90-80\"]\naction = \"hold\"\n");
        assert!(e.reason.contains("empty"), "{e}");

        let e = err("[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"maybe\"\n");
        assert_eq!(e.line, 3);

        assert!(err("timeout = \"soon\"\n").reason.contains("timeout"));
        assert!(err("timeout = \"0s\"\n").reason.contains("longer than zero"));
        assert!(err("[[exec]]\npath = \"curl\"\naction = \"hold\"\n").reason.contains("absolute"));
        assert!(err("[[exec]]\npath = \"/usr/*/curl\"\naction = \"hold\"\n").reason.contains("file name"));
        assert!(
            err("[[exec]]\npath = \"/x\"\naction = \"allow\"\nargv = [\"a\"]\n")
                .reason
                .contains("impossible")
        );
        let twice = "[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"hold\"\n";
        assert!(err(&format!("{twice}\n{twice}")).reason.contains("repeats"));
    }

    #[test]
    fn domain_rules_are_checked_name_by_name_and_judge_lookups() {
        let allow = "[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"allow\"\n\n";
        let domain = |d: &str| err(&format!("{allow}[[egress]]\ndomain = \"{d}\"\naction = \"allow\"\n"));
        for (bad, reason) in [
            ("", "empty"),
            ("a..example.com", "label 2 is empty"),
            (&format!("{}.example.com", "a".repeat(64)), "longer than 63"),
            (
                &format!(
                    "{}.com",
                    ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(60)].join(".")
                ),
                "253",
            ),
            ("api.*.example.com", "wildcard"),
            ("*", "wildcard"),
            ("bücher.example", "punycode"),
            ("a b.example", "not allowed"),
        ] {
            let e = domain(bad);
            assert_eq!(e.line, 5, "{bad}: {e}");
            assert!(e.reason.contains(reason), "{bad}: {e}");
        }
        let both = err("[[egress]]\ncidr = \"10.0.0.0/8\"\ndomain = \"a.example\"\naction = \"allow\"\n");
        assert!(both.reason.contains("either a cidr or a domain"), "{both}");
        assert!(err("[[egress]]\naction = \"allow\"\n").reason.contains("either a cidr or a domain"));

        let policy = parse(
            "p",
            "p.toml",
            "[[egress]]\ndomain = \"*.GitHub.com\"\nports = [443]\naction = \"allow\"\n\n\
             [[egress]]\ndomain = \"evil.example\"\naction = \"deny\"\n",
        )
        .unwrap();
        let judged = |name: &str| policy.judge_name(&Name::parse(name).unwrap()).verdict;
        assert_eq!(judged("api.github.com"), Verdict::Allow);
        assert_eq!(judged("github.com"), Verdict::Hold, "egress_default: the suffix needs a label before it");
        assert_eq!(judged("evil.example"), Verdict::Deny);
        assert_eq!(policy.names[0].pattern.to_string(), "*.github.com");
    }

    #[test]
    fn an_approved_lookup_lets_through_what_the_policy_would_hold_and_nothing_it_denies() {
        let policy = parse(
            "p",
            "p.toml",
            "[[egress]]\ndomain = \"*.example.com\"\nports = [22]\naction = \"deny\"\n\n\
             [[egress]]\ndomain = \"*.example.com\"\nports = [443]\naction = \"hold\"\n\n\
             [[egress]]\ncidr = \"10.0.0.0/8\"\nports = [25]\nprotocol = \"tcp\"\naction = \"allow\"\n\n\
             [[egress]]\ncidr = \"10.9.0.0/16\"\naction = \"hold\"\nquorum = 2\n",
        )
        .unwrap();
        let name = Name::parse("api.example.com").unwrap();
        let addr = |text: &str| crate::policy::kernel::kernel_addr(text.parse().unwrap());
        let two = Asks { quorum: 2, in_console: false };
        let rule = policy.approved_rule(&name, addr("10.1.2.3"), Asks::ONE).expect("one approver suffices");
        let ports: Vec<(u16, u32)> =
            rule.ports[..rule.count as usize].iter().map(|p| (p.low, u32::from(p.verdict))).collect();
        assert_eq!(ports, [(22, verdict::DENY), (443, verdict::ALLOW), (25, verdict::ALLOW)]);
        assert_eq!(rule.fallback, verdict::ALLOW, "egress_default's hold, approved");
        let asks_two = policy.approved_rule(&name, addr("10.9.0.1"), Asks::ONE).unwrap();
        assert_eq!((asks_two.count, asks_two.fallback), (2, verdict::HOLD), "that address asks two people");
        assert_eq!(policy.approved_rule(&name, addr("10.9.0.1"), two).unwrap().fallback, verdict::ALLOW);
        let denying = parse("p", "p.toml", "[egress_default]\naction = \"deny\"\n").unwrap();
        let rule = denying.approved_rule(&name, addr("192.0.2.1"), Asks::ONE).unwrap();
        assert_eq!((rule.count, rule.fallback), (0, verdict::DENY), "a denial stays one");
    }

    #[test]
    fn an_approved_lookup_leaves_what_the_policy_keeps_to_the_console_held_unless_approved_there() {
        let policy = parse(
            "p",
            "p.toml",
            "[[egress]]\ndomain = \"api.example.com\"\nports = [443]\naction = \"hold\"\n\n\
             [[egress]]\ndomain = \"*.example.com\"\nports = [8443]\naction = \"hold\"\napprove_in = \"console\"\n\n\
             [[egress]]\ncidr = \"10.9.0.0/16\"\nports = [22]\naction = \"hold\"\napprove_in = \"console\"\n",
        )
        .unwrap();
        let name = Name::parse("api.example.com").unwrap();
        let addr = crate::policy::kernel::kernel_addr("10.9.0.1".parse().unwrap());
        let ports = |approved| {
            let rule = policy.approved_rule(&name, addr, approved).unwrap();
            let ports: Vec<(u16, u32)> =
                rule.ports[..rule.count as usize].iter().map(|p| (p.low, u32::from(p.verdict))).collect();
            (ports, rule.fallback)
        };
        let held = [(443, verdict::ALLOW), (8443, verdict::HOLD), (22, verdict::HOLD)];
        assert_eq!(ports(Asks::ONE), (held.to_vec(), verdict::ALLOW), "approved in chat: the rest only");
        let console = Asks { in_console: true, ..Asks::ONE };
        let all = [(443, verdict::ALLOW), (8443, verdict::ALLOW), (22, verdict::ALLOW)];
        assert_eq!(ports(console), (all.to_vec(), verdict::ALLOW), "approved in the console: all of it");
        let lookup = policy.judge_name(&name);
        assert_eq!(
            (lookup.verdict, lookup.asks),
            (Verdict::Hold, Asks::ONE),
            "the first rule decides the lookup"
        );
        let connect = |port| Action {
            kind: agent_common::kind::EGRESS,
            protocol: protocol::TCP,
            port,
            addr,
            ..Action::default()
        };
        assert_eq!(policy.egress_rule(&connect(8443), Some(&name)).asks, console);
        assert_eq!(policy.egress_rule(&connect(22), None).asks, console);
        assert_eq!(policy.egress_rule(&connect(443), Some(&name)).asks, Asks::ONE);
    }

    #[test]
    fn approve_in_console_is_for_rules_that_hold() {
        let policy = "[[exec]]\npath = \"/x\"\naction = \"hold\"\napprove_in = \"console\"\n\n\
                      [[exec]]\npath = \"/y\"\naction = \"hold\"\napprove_in = \"anywhere\"\n\n\
                      [[exec]]\npath = \"/z\"\naction = \"hold\"\n\n\
                      [[egress]]\ndomain = \"a.example\"\naction = \"hold\"\napprove_in = \"console\"\n\n\
                      [[egress]]\ndomain = \"b.example\"\naction = \"hold\"\n\n\
                      [[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"hold\"\napprove_in = \"console\"\n\n\
                      [[egress]]\ncidr = \"10.1.0.0/16\"\naction = \"hold\"\n";
        let parsed = parse("t", "t.toml", policy).unwrap();
        let in_console: Vec<bool> = parsed.exec.iter().map(|rule| rule.in_console).collect();
        assert_eq!(in_console, [true, false, false]);
        let in_console: Vec<bool> = parsed.names.iter().map(|rule| rule.in_console).collect();
        assert_eq!(in_console, [true, false]);
        let in_console: Vec<bool> = parsed.kernel.egress.iter().map(|rule| rule.in_console).collect();
        assert_eq!(in_console, [true, false]);
        let lookup = |name: &str| parsed.judge_name(&Name::parse(name).unwrap()).asks.in_console;
        assert!(lookup("a.example") && !lookup("b.example"), "a lookup is the first domain rule's to decide");
        let hold = "[[exec]]\npath = \"/x\"\naction = \"hold\"\n\n";
        for rule in [
            "[[exec]]\npath = \"/w\"\naction = \"allow\"\napprove_in = \"console\"\n",
            "[[egress]]\ndomain = \"a.example\"\naction = \"allow\"\napprove_in = \"console\"\n",
            "[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"deny\"\napprove_in = \"console\"\n",
        ] {
            let e = parse("t", "t.toml", &format!("{hold}{rule}")).unwrap_err();
            assert_eq!(e.line, 5, "{e}");
            assert!(e.reason.contains("only a rule that holds"), "{e}");
        }
        assert!(
            parse("t", "t.toml", "[[exec]]\npath = \"/x\"\naction = \"hold\"\napprove_in = \"slack\"\n")
                .is_err()
        );
    }

    #[test]
    fn notify_names_people_on_rules_and_defaults_that_hold() {
        let text = "[[exec]]\npath = \"/x\"\naction = \"hold\"\nnotify = [\"alice@example.com\", \"bob\"]\n\n\
                    [[exec]]\npath = \"/y\"\naction = \"hold\"\n\n\
                    [[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"hold\"\nnotify = [\"carol\"]\n\n\
                    [[egress]]\ndomain = \"*.example.com\"\naction = \"hold\"\nnotify = [\"dave\"]\n\n\
                    [exec_default]\naction = \"hold\"\nnotify = [\"erin\"]\n\n\
                    [egress_default]\naction = \"hold\"\nnotify = [\"frank\"]\n";
        let policy = parse("t", "t.toml", text).unwrap();
        assert_eq!(policy.exec[0].notify, ["alice@example.com", "bob"]);
        assert!(policy.exec[1].notify.is_empty());
        assert_eq!(policy.kernel.egress[0].notify, ["carol"]);
        let name = |text: &str| Name::parse(text).unwrap();
        assert_eq!(policy.judge_name(&name("api.example.com")).notify, ["dave"]);
        assert_eq!(policy.judge_name(&name("example.org")).notify, ["frank"], "egress_default's");
        assert_eq!(policy.exec_default_notify, ["erin"]);
        let to = |addr: [u8; 4]| Action {
            kind: agent_common::kind::EGRESS,
            protocol: protocol::TCP,
            port: 443,
            addr: crate::policy::kernel::kernel_addr(addr.into()),
            ..Action::default()
        };
        assert_eq!(policy.egress_rule(&to([10, 1, 2, 3]), None).notify, ["carol"]);
        assert_eq!(policy.egress_rule(&to([192, 0, 2, 1]), Some(&name("a.example.com"))).notify, ["dave"]);
        assert_eq!(policy.egress_rule(&to([192, 0, 2, 1]), None).notify, ["frank"]);
    }

    #[test]
    fn notify_is_refused_at_its_rule_unless_it_names_people_once_each() {
        let exec = |action: &str, notify: &str| {
            format!("timeout = \"1m\"\n\n[[exec]]\npath = \"/x\"\naction = \"{action}\"\nnotify = {notify}\n")
        };
        let many: Vec<String> = (0..17).map(|n| format!("\"p{n}\"")).collect();
        let many = format!("[{}]", many.join(", "));
        let long = format!("[\"{}\"]", "a".repeat(257));
        let whom = "a person is named in 1 to 256 bytes";
        for (text, line, says) in [
            (exec("allow", "[\"bob\"]"), 3, "only a rule that holds"),
            (exec("deny", "[\"bob\"]"), 3, "only a rule that holds"),
            (exec("hold", "[]"), 3, "notify is empty"),
            (exec("hold", &many), 3, "notify names 17 people: at most 16"),
            (exec("hold", "[\"bob\", \"alice\", \"Bob\"]"), 3, "notify names \"Bob\" twice"),
            (exec("hold", "[\"\"]"), 3, whom),
            (exec("hold", &long), 3, whom),
            (exec("hold", "[\"bob smith\"]"), 3, whom),
            (exec("hold", "[\"bob\\t\"]"), 3, whom),
            (exec("hold", "[\"bob\\u0007\"]"), 3, whom),
            (exec("hold", "[\"bo\\u200Bb\"]"), 3, whom),
            (exec("hold", "[\"\\u202Ebob\"]"), 3, whom),
            (exec("hold", "\"bob\""), 6, "invalid type: string \"bob\", expected a sequence"),
            (
                "[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"allow\"\nnotify = [\"bob\"]\n".into(),
                1,
                "only a rule that holds",
            ),
            (
                "[[egress]]\ndomain = \"a.example\"\naction = \"hold\"\nnotify = [\"a\u{00AD}b\"]\n".into(),
                1,
                whom,
            ),
            (
                "timeout = \"1m\"\n[exec_default]\naction = \"allow\"\nnotify = [\"bob\"]\n".into(),
                2,
                "only a rule that holds",
            ),
            (
                "\n\n[egress_default]\naction = \"deny\"\nnotify = [\"bob\"]\n".into(),
                3,
                "only a rule that holds",
            ),
            ("[egress_default]\naction = \"hold\"\nnotify = []\n".into(), 1, "notify is empty"),
        ] {
            let e = err(&text);
            assert_eq!((e.file.as_str(), e.line), ("t.toml", line), "{e}");
            assert!(e.reason.contains(says), "{e} does not say {says:?}");
        }
        let sixteen: Vec<String> = (0..16).map(|n| format!("\"p{n}\"")).collect();
        let sixteen = parse("t", "t.toml", &exec("hold", &format!("[{}]", sixteen.join(", ")))).unwrap();
        assert_eq!(sixteen.exec[0].notify.len(), 16);
        let longest = format!("[\"{}\"]", "a".repeat(256));
        assert!(parse("t", "t.toml", &exec("hold", &longest)).is_ok());
    }

    #[test]
    fn a_quorum_is_1_to_9_and_anything_else_is_refused_at_its_rule() {
        let exec = |quorum: &str| {
            format!("timeout = \"1m\"\n\n[[exec]]\npath = \"/x\"\naction = \"hold\"\nquorum = {quorum}\n")
        };
        let egress = |quorum: &str| {
            format!("[[egress]]\ncidr = \"10.0.0.0/8\"\naction = \"hold\"\nquorum = {quorum}\n")
        };
        assert_eq!(parse("t", "t.toml", &exec("1")).unwrap().exec[0].quorum, 1);
        assert_eq!(parse("t", "t.toml", &egress("3")).unwrap().kernel.egress[0].quorum, 3);
        for (text, line, says) in [
            (exec("0"), 3, "quorum 0: must be 1 to 9 distinct approvers"),
            (exec("-2"), 3, "quorum -2: must be 1 to 9 distinct approvers"),
            (exec("10"), 3, "quorum 10: must be 1 to 9 distinct approvers"),
            (egress("0"), 1, "quorum 0: must be 1 to 9 distinct approvers"),
            (egress("99999999999"), 1, "quorum 99999999999: must be 1 to 9"),
            (exec("1.5"), 6, "invalid type: floating point `1.5`, expected i64"),
            (exec("\"2\""), 6, "invalid type: string \"2\", expected i64"),
            (egress("true"), 4, "invalid type: boolean `true`, expected i64"),
        ] {
            let e = err(&text);
            assert_eq!((e.file.as_str(), e.line), ("t.toml", line), "{e}");
            assert!(e.reason.contains(says), "{e} does not say {says:?}");
        }
    }

    /// Mutation fuzzing: thousands of corrupted variants of valid policies must each be
    /// either accepted or refused with a line inside the file, never panic.
    #[test]
    fn mutated_policies_never_panic_and_errors_point_into_the_file() {
        const ALPHABET: &[&str] = &[
            "\"", "[", "]", "[[", "]]", "=", "\n", "#", "-", "/", ".", ":", "0", "9", "65536", "-1", "1e9",
            "a", "é", "\u{0}", "\\", "'", "{", "}", ",", " ", "action", "hold", "cidr", "ports", "quorum",
            "::", "/129",
        ];
        let seeds = [
            default_policy_text(),
            "timeout = \"1m\"\n[[exec]]\npath = \"/bin/sh\"\naction = \"hold\"\nargv = [\"-c\"]\nquorum = 2\n[[egress]]\n\
             cidr = \"fd00::/8\"\nports = [22, \"80-90\"]\nprotocol = \"udp\"\naction = \"deny\"\n"
                .to_owned(),
        ];
        // xorshift: deterministic, so a failure reproduces.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % bound as u64).expect("fits")
        };
        let mut refused = 0;
        for round in 0..4000 {
            let mut text = seeds[round % seeds.len()].clone();
            for _ in 0..=next(4) {
                let mut at = next(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let end = (at + next(8)).min(text.len());
                let end = (end..=text.len()).find(|&e| text.is_char_boundary(e)).unwrap_or(text.len());
                text.replace_range(at..end, ALPHABET[next(ALPHABET.len())]);
            }
            if let Err(e) = parse("fuzz", "fuzz.toml", &text) {
                refused += 1;
                let lines = text.lines().count().max(1);
                assert!(
                    e.line >= 1 && e.line <= lines + 1,
                    "line {} outside 1..={}: {e}\n{text}",
                    e.line,
                    lines + 1
                );
                assert!(!e.reason.is_empty(), "empty reason for:\n{text}");
            }
        }
        assert!(refused > 100, "the mutations must produce refusals to be worth anything ({refused})");
    }

    #[test]
    fn globs_match_file_names() {
        assert!(glob_match(b"scp*", b"scp"));
        assert!(glob_match(b"scp*", b"scp-wrapper"));
        assert!(!glob_match(b"scp*", b"sscp"));
        assert!(glob_match(b"py?hon", b"python"));
        assert!(glob_match(b"*", b"") && glob_match(b"a*b*c", b"aXbYc") && !glob_match(b"a*b*c", b"aXbY"));
        assert!(glob_match(b"*.py", b"test.py") && !glob_match(b"?", b""));
        // Exponential for a backtracking matcher; instant here.
        let name = [b'a'; 200];
        assert!(!glob_match(&b"*a".repeat(40).into_iter().chain(*b"b").collect::<Vec<_>>(), &name));
        assert!(!resolve_executables("/bin/ech*").is_empty(), "/bin/echo exists on every test machine");
    }

    /// A scratch directory holding `flagged` (a copy of /bin/true), an unrelated program
    /// (a copy of /bin/false), and a copy of the flagged one under an innocent name.
    fn programs(test: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("kt-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (flagged, other, copy) = (dir.join("flagged"), dir.join("other"), dir.join("innocent"));
        std::fs::copy("/bin/true", &flagged).unwrap();
        std::fs::copy("/bin/false", &other).unwrap();
        std::fs::copy("/bin/true", &copy).unwrap();
        (dir, flagged, other, copy)
    }

    fn executable(path: &Path, digests: &Digests) -> Executable {
        let (file, sha256) = digests.of_path(path).unwrap();
        Executable { file, path: std::fs::canonicalize(path).unwrap(), sha256 }
    }

    #[test]
    fn exec_rules_name_programs_by_path_and_by_content() {
        let (dir, flagged, other, copy) = programs("content");
        let policy =
            parse("t", "t.toml", &format!("[[exec]]\npath = \"{}\"\naction = \"hold\"\n", flagged.display()))
                .unwrap();
        let digests = Digests::default();
        let no_argv = || -> Option<Vec<String>> { panic!("no rule has argv words") };
        for (program, verdict) in
            [(&flagged, Verdict::Hold), (&copy, Verdict::Hold), (&other, Verdict::Allow)]
        {
            let judged = policy.judge_exec(&executable(program, &digests), &digests, no_argv);
            assert_eq!(judged.verdict, verdict, "{}", program.display());
            assert!(!judged.argv_dependent);
        }
        // The flagged file is upgraded (a new inode, new content): the new content is
        // flagged wherever it lives, and a copy of the old one made before still is.
        std::fs::remove_file(&flagged).unwrap();
        std::fs::copy("/bin/false", &flagged).unwrap();
        for program in [&copy, &other] {
            let judged = policy.judge_exec(&executable(program, &digests), &digests, no_argv);
            assert_eq!(judged.verdict, Verdict::Hold, "{}", program.display());
        }
        let fresh = Digests::default();
        let judged = policy.judge_exec(&executable(&copy, &fresh), &fresh, no_argv);
        assert_eq!(judged.verdict, Verdict::Allow, "only contents seen at the pattern are remembered");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_first_rule_that_names_a_program_decides_and_argv_makes_it_one_off() {
        let (dir, flagged, _, _) = programs("first-rule");
        let text = format!(
            "[[exec]]\npath = \"{0}\"\naction = \"deny\"\nargv = [\"push\", \"--force\"]\n\n\
             [[exec]]\npath = \"{1}/fl*\"\naction = \"hold\"\nargv = [\"push\"]\n\n\
             [exec_default]\naction = \"hold\"\n",
            flagged.display(),
            dir.display()
        );
        let policy = parse("t", "t.toml", &text).unwrap();
        let digests = Digests::default();
        let exe = executable(&flagged, &digests);
        let judge = |argv: &[&str], digests: &Digests| {
            let argv: Vec<String> = argv.iter().map(|&a| a.to_owned()).collect();
            policy.judge_exec(&exe, digests, move || Some(argv))
        };
        let forced = judge(&["git", "push", "--force"], &digests);
        assert_eq!((forced.verdict, forced.argv_dependent), (Verdict::Deny, true));
        assert_eq!(judge(&["git", "push"], &digests).verdict, Verdict::Hold);
        let status = judge(&["git", "status"], &digests);
        assert_eq!((status.verdict, status.rule.as_str()), (Verdict::Hold, "exec_default"));
        assert!(status.argv_dependent, "argv decided that no rule applies: not for every exec");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn every_write_makes_a_new_file_version() {
        let (dir, flagged, _, _) = programs("version");
        let digests = Digests::default();
        let (before, _) = digests.of_path(&flagged).unwrap();
        std::fs::write(&flagged, b"#!/bin/sh\n").unwrap();
        let (after, _) = digests.of_path(&flagged).unwrap();
        assert_ne!(before, after, "a write makes a new file version");
        std::fs::remove_dir_all(dir).ok();
    }
}
