//! `keyturn.toml`: where the daemon keeps its state and who may approve. Every field has a
//! built-in default, so the daemon starts with no file at all.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use crate::kernel::mode::Mode;

pub const DEFAULT_PATH: &str = "/etc/keyturn/keyturn.toml";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Tags, the audit trail (`audit/`).
    pub state_dir: PathBuf,
    /// The local API's Unix socket.
    pub socket: PathBuf,
    /// Policy files, `NAME.toml`.
    pub policies_dir: PathBuf,
    /// Members of this group (and root) may approve and deny.
    pub approver_group: String,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// Force an enforcement mode instead of the best the kernel offers.
    pub mode: Option<Mode>,
    /// Flagged actions fail with EPERM after this long without a daemon heartbeat.
    #[serde(with = "humantime_serde_compat")]
    pub liveness_timeout: Duration,
    /// Holds that may be pending at once per tagged cgroup; more are refused.
    pub max_pending: u32,
    /// Audit files are rotated at this size.
    pub audit_max_bytes: u64,
    /// Prometheus metrics on this loopback address (empty: off).
    pub metrics: String,
    /// The console holds are streamed to; without it, the embedded console (if on).
    pub console: Option<ConsoleConfig>,
    /// With no `[console]`, run a console inside the daemon (web UI on 127.0.0.1:8470);
    /// off, approvals are local only.
    pub embedded_console: bool,
    /// Who each local user is at the console (`alice = "alice@example.com"`): an agent
    /// they start is recorded as theirs, so they cannot approve its holds there. Unmapped
    /// users are recorded as `unix:NAME`.
    pub people: HashMap<String, String>,
    /// The embedded console's own configuration (the format `keyturn console --config`
    /// reads); by default SQLite and its key in `state_dir`, everything on loopback.
    #[expect(clippy::struct_field_names, reason = "the key operators write in keyturn.toml")]
    pub embedded_console_config: Option<PathBuf>,
    /// `[dns]`: keyturn's resolver, which answers every DNS query of tagged cgroups.
    pub dns: DnsConfig,
}

/// `[dns]`: where keyturn's resolver listens and whom it asks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// The resolvers asked for names the policy allows, in order (`"10.0.0.2:53"`, or an
    /// address alone for port 53). Empty: the nameservers of `/etc/resolv.conf`.
    #[serde(deserialize_with = "upstreams")]
    pub upstream: Vec<SocketAddr>,
    /// The resolver's own address, on IPv4 loopback. Tagged cgroups' DNS is sent here by
    /// the kernel; they may not reach it directly.
    pub listen: SocketAddrV4,
}

impl DnsConfig {
    pub const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53053);
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self { upstream: Vec::new(), listen: Self::LISTEN }
    }
}

/// Upstream resolvers, `ADDRESS:PORT` or `ADDRESS` (port 53).
fn upstreams<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    serde::de::Error::custom(format!("dns upstream {text:?} is not ADDRESS or ADDRESS:PORT"))
                })
        })
        .collect()
}

/// `[console]`: where this host streams its holds, whose decisions it accepts, and what it
/// proves its identity with.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `https://HOST:PORT` of the console (or its load balancer); `http://` only for a
    /// console on loopback, which then serves plaintext.
    pub endpoint: String,
    /// The console's Ed25519 public keys (64 hex digits, as `keyturn console` logs at
    /// start): a decision is acted on only when one of them signed it.
    pub public_keys: Vec<String>,
    /// This host's name at the console; by default the kernel's host name.
    pub host: Option<String>,
    /// This host's Ed25519 identity key, made on first start; by default
    /// `STATE_DIR/console-host.key`.
    pub key: Option<PathBuf>,
    /// `https`: the console's CA certificate (`ca.pem` in its TLS directory).
    pub ca: Option<PathBuf>,
    /// `https`: this host's certificate, written at enrolment; by default
    /// `STATE_DIR/console-host.pem`.
    pub certificate: Option<PathBuf>,
    /// `https`: the one-time token from `keyturn console token HOST`, used to enrol while
    /// there is no certificate yet.
    pub token: Option<String>,
    /// How often this host anchors its audit trail at the console (signed length and last
    /// hash), so that a trail cut or rewritten later is found.
    #[serde(default = "ConsoleConfig::anchor_every", with = "humantime_serde_compat")]
    pub anchor_every: Duration,
}

impl ConsoleConfig {
    pub const ANCHOR_EVERY: Duration = Duration::from_mins(1);

    fn anchor_every() -> Duration {
        Self::ANCHOR_EVERY
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: "/var/lib/keyturn".into(),
            socket: "/run/keyturn/keyturn.sock".into(),
            policies_dir: "/etc/keyturn/policies".into(),
            approver_group: "keyturn".into(),
            pin_dir: "/sys/fs/bpf/keyturn".into(),
            mode: None,
            liveness_timeout: Duration::from_secs(30),
            max_pending: 64,
            audit_max_bytes: 64 << 20,
            metrics: "127.0.0.1:9474".into(),
            console: None,
            embedded_console: true,
            embedded_console_config: None,
            people: HashMap::new(),
            dns: DnsConfig::default(),
        }
    }
}

/// Durations written as "30s", "10m".
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Reads `path`; a missing default file means the built-in defaults.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let explicit = path.is_some();
        let path = path.map_or_else(|| PathBuf::from(DEFAULT_PATH), std::path::Path::to_path_buf);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.state_dir.join("audit")
    }

    /// The host's identity key for the console.
    pub fn console_key(&self, console: &ConsoleConfig) -> PathBuf {
        console.key.clone().unwrap_or_else(|| self.state_dir.join("console-host.key"))
    }

    /// The host's certificate for the console.
    pub fn console_certificate(&self, console: &ConsoleConfig) -> PathBuf {
        console.certificate.clone().unwrap_or_else(|| self.state_dir.join("console-host.pem"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALLED: &str = include_str!("../../packaging/keyturn.toml");

    /// The config `keyturn install` writes shows every setting, commented out, with its
    /// built-in default (`mode` with an example: it has no default value).
    #[test]
    fn the_installed_config_shows_the_built_in_defaults() {
        let uncommented: Vec<&str> = INSTALLED
            .lines()
            .take_while(|line| !line.starts_with("# [console]"))
            .filter_map(|line| {
                line.strip_prefix("# ").filter(|l| l.contains(" = ") && !l.starts_with("mode "))
            })
            .collect();
        assert_eq!(uncommented.len(), 9, "{uncommented:?}");
        let parsed: Config = toml::from_str(&uncommented.join("\n")).expect("parses");
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
    }

    /// Its `[console]` and `[dns]` examples, uncommented, are valid sections.
    #[test]
    fn the_installed_config_shows_a_valid_console_section() {
        let section: Vec<&str> = INSTALLED
            .lines()
            .skip_while(|line| !line.starts_with("# [console]"))
            .filter_map(|line| line.strip_prefix("# ").filter(|l| l.starts_with('[') || l.contains(" = ")))
            .collect();
        let parsed: Config = toml::from_str(&section.join("\n")).expect("parses");
        let console = parsed.console.as_ref().expect("a [console] section");
        assert_eq!(console.public_keys.len(), 1);
        assert_eq!(parsed.console_key(console), PathBuf::from("/var/lib/keyturn/console-host.key"));
        assert_eq!(parsed.dns.listen, DnsConfig::LISTEN);
        assert_eq!(parsed.dns.upstream, ["10.0.0.2:53".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn a_dns_upstream_is_an_address_with_or_without_its_port() {
        let parsed: Config = toml::from_str("[dns]\nupstream = [\"10.0.0.3\", \"[fd00::1]:5353\"]").unwrap();
        assert_eq!(
            parsed.dns.upstream,
            ["10.0.0.3:53".parse::<SocketAddr>().unwrap(), "[fd00::1]:5353".parse().unwrap()]
        );
        let bad = toml::from_str::<Config>("[dns]\nupstream = [\"ns1.example\"]").unwrap_err();
        assert!(bad.message().contains("not ADDRESS or ADDRESS:PORT"), "{bad}");
    }
}
