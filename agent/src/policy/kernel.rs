//! What the kernel enforces for one policy, and its compilation into map entries.

use std::{net::IpAddr, os::unix::fs::MetadataExt as _, path::Path, str::FromStr};

use agent_common::{
    EgressKey, EgressRule, ExecKey, PolicyDefaults, PortRule, V4_MAPPED_PREFIX, capacity, protocol, verdict,
};
use aya::maps::lpm_trie::Key;

/// What a policy says of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Hold,
    Deny,
}

impl Verdict {
    pub fn kernel(self) -> u32 {
        match self {
            Verdict::Allow => verdict::ALLOW,
            Verdict::Hold => verdict::HOLD,
            Verdict::Deny => verdict::DENY,
        }
    }
}

/// An executable file as the kernel identifies it: which file, and which version of it
/// (the change time moves on every write, rename, link and chmod).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// The kernel's device number encoding, `major << 20 | minor`.
    pub dev: u32,
    pub ino: u64,
    /// The inode's ctime in nanoseconds since the epoch.
    pub changed_ns: u64,
}

impl FileId {
    /// The identity of the file `path` resolves to (symlinks followed, as exec does).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from_metadata(&std::fs::metadata(path)?))
    }

    pub fn from_metadata(meta: &std::fs::Metadata) -> Self {
        let dev = meta.dev();
        let changed_ns = u64::try_from(meta.ctime()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(meta.ctime_nsec()).unwrap_or(0);
        Self { dev: (libc::major(dev) << 20) | libc::minor(dev), ino: meta.ino(), changed_ns }
    }

    /// The identity the kernel reported for an exec.
    pub fn of_action(action: &agent_common::Action) -> Self {
        Self { dev: action.dev, ino: action.ino, changed_ns: action.changed_ns }
    }

    pub fn key(&self, policy: u32) -> ExecKey {
        ExecKey { policy, dev: self.dev, ino: self.ino, changed_ns: self.changed_ns }
    }
}

/// An IPv4 or IPv6 network, stored as IPv6 (IPv4 in its mapped form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: [u8; 16],
    /// Prefix length in IPv6 bits (an IPv4 /n is 96 + n).
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && masked(&other.addr, self.prefix) == self.addr
    }
}

fn masked(addr: &[u8; 16], prefix: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, byte) in addr.iter().enumerate() {
        let bits = usize::from(prefix).saturating_sub(i * 8).min(8);
        out[i] = if bits == 0 { 0 } else { byte & (0xffu8 << (8 - bits)) };
    }
    out
}

/// An address in the kernel's form: IPv4 mapped into IPv6.
pub fn kernel_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..12].copy_from_slice(&V4_MAPPED_PREFIX);
            addr[12..].copy_from_slice(&v4.octets());
            addr
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s.split_once('/').map_or((s, None), |(ip, len)| (ip, Some(len)));
        let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let (max, base) = if ip.is_ipv4() { (32u8, 96u8) } else { (128, 0) };
        let len: u8 = match len {
            None => max,
            Some(len) => len
                .parse()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        let addr = kernel_addr(ip);
        let prefix = base + len;
        if masked(&addr, prefix) != addr {
            return Err(format!("{s:?} has bits set after the prefix length"));
        }
        Ok(Self { addr, prefix })
    }
}

/// One egress rule: destinations in `cidr` on `ports` (all if empty) over `protocol`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressSpec {
    pub cidr: Cidr,
    pub ports: Vec<(u16, u16)>,
    /// A `agent_common::protocol` constant; `ANY` matches every protocol.
    pub protocol: u32,
    pub verdict: Verdict,
    /// How many distinct people must approve a hold this rule flags.
    pub quorum: u32,
    /// Whether its holds are decided in the console only (`approve_in = "console"`).
    pub in_console: bool,
    /// The people told directly of each hold it flags.
    pub notify: Vec<String>,
}

impl EgressSpec {
    /// What approving a hold it flags asks.
    pub fn asks(&self) -> super::Asks {
        super::Asks { quorum: self.quorum, in_console: self.in_console }
    }
}

/// The part of a policy the kernel decides by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPolicy {
    pub exec_default: Verdict,
    pub egress_default: Verdict,
    pub executables: Vec<(FileId, Verdict)>,
    pub egress: Vec<EgressSpec>,
}

/// Map entries of one policy.
pub struct Compiled {
    pub defaults: PolicyDefaults,
    pub exec: Vec<(ExecKey, u32)>,
    pub egress: Vec<(Key<EgressKey>, EgressRule)>,
}

impl KernelPolicy {
    /// Compiles into map entries. The most specific prefix containing a destination
    /// decides; within it the first matching port rule wins; port rules that do not match
    /// fall through to the prefixes containing it, and finally to `egress_default`.
    pub fn compile(&self, id: u32) -> Result<Compiled, String> {
        let exec = self.executables.iter().map(|(file, v)| (file.key(id), v.kernel())).collect();
        let mut prefixes: Vec<Cidr> = Vec::new();
        for rule in &self.egress {
            if !prefixes.contains(&rule.cidr) {
                prefixes.push(rule.cidr);
            }
        }
        let mut egress = Vec::new();
        for prefix in prefixes {
            let rule = self.folded(prefix)?;
            let key = Key::new(
                32 + u32::from(prefix.prefix),
                EgressKey { policy_be: id.to_be_bytes(), addr: prefix.addr },
            );
            egress.push((key, rule));
        }
        Ok(Compiled {
            defaults: PolicyDefaults {
                exec: self.exec_default.kernel(),
                egress: self.egress_default.kernel(),
            },
            exec,
            egress,
        })
    }
}

impl KernelPolicy {
    /// The rule of the destinations in `prefix`: the port rules of every prefix containing
    /// it, most specific first, down to the first that names all ports, else
    /// `egress_default`.
    pub fn folded(&self, prefix: Cidr) -> Result<EgressRule, String> {
        let mut chain: Vec<&EgressSpec> = self.egress.iter().filter(|r| r.cidr.contains(&prefix)).collect();
        chain.sort_by_key(|r| std::cmp::Reverse(r.cidr.prefix));
        let mut rule = EgressRule { fallback: self.egress_default.kernel(), ..EgressRule::default() };
        for spec in chain {
            if spec.ports.is_empty() && spec.protocol == protocol::ANY {
                rule.fallback = spec.verdict.kernel();
                break;
            }
            let ranges: &[(u16, u16)] = if spec.ports.is_empty() { &[(0, u16::MAX)] } else { &spec.ports };
            for &(low, high) in ranges {
                let slot = rule.ports.get_mut(rule.count as usize).ok_or_else(|| {
                    format!(
                        "more than {} port rules apply to destinations in {}",
                        capacity::PORT_RULES,
                        display_cidr(&prefix)
                    )
                })?;
                *slot = PortRule {
                    low,
                    high,
                    protocol: u16::try_from(spec.protocol).unwrap_or(0),
                    verdict: u16::try_from(spec.verdict.kernel()).unwrap_or(0),
                };
                rule.count += 1;
            }
        }
        Ok(rule)
    }

    /// The rule that decides egress to `addr` (kernel form) on `port` over `protocol`: the
    /// most specific prefix whose ports and protocol match, as [`KernelPolicy::compile`]
    /// folds them. `None`: `egress_default` decides.
    pub fn rule_for(&self, addr: [u8; 16], port: u16, protocol: u32) -> Option<&EgressSpec> {
        let host = Cidr { addr, prefix: 128 };
        let mut rules: Vec<&EgressSpec> = self.egress.iter().filter(|r| r.cidr.contains(&host)).collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.cidr.prefix));
        rules.into_iter().find(|r| {
            (r.ports.is_empty() || r.ports.iter().any(|&(low, high)| (low..=high).contains(&port)))
                && (r.protocol == protocol::ANY || r.protocol == protocol)
        })
    }
}

impl KernelPolicy {
    /// Whether a CIDR rule of this policy denies `addr` (kernel form), on some port: no
    /// name's domain rules override that.
    pub fn denies(&self, addr: [u8; 16]) -> bool {
        let host = Cidr { addr, prefix: 128 };
        self.egress.iter().any(|rule| rule.verdict == Verdict::Deny && rule.cidr.contains(&host))
    }
}

/// A CIDR as users write it.
pub fn display_cidr(cidr: &Cidr) -> String {
    let v6 = std::net::Ipv6Addr::from(cidr.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if cidr.prefix >= 96 => format!("{v4}/{}", cidr.prefix - 96),
        _ => format!("{v6}/{}", cidr.prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, ports: &[(u16, u16)], protocol: u32, verdict: Verdict) -> EgressSpec {
        EgressSpec {
            cidr: cidr.parse().unwrap(),
            ports: ports.to_vec(),
            protocol,
            verdict,
            quorum: 1,
            in_console: false,
            notify: vec![],
        }
    }

    #[test]
    fn cidrs_parse_into_kernel_form() {
        let v4: Cidr = "10.1.0.0/16".parse().unwrap();
        assert_eq!(v4.prefix, 112);
        assert_eq!(&v4.addr[10..14], &[0xff, 0xff, 10, 1]);
        let mapped: Cidr = "::ffff:10.1.0.0/112".parse().unwrap();
        assert_eq!(mapped, v4, "IPv4-mapped IPv6 is the same network as IPv4");
        assert_eq!(display_cidr(&v4), "10.1.0.0/16");
        assert!("10.1.0.1/16".parse::<Cidr>().unwrap_err().contains("bits set"));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }

    #[test]
    fn specific_prefixes_inherit_port_rules_and_fallback() {
        let policy = KernelPolicy {
            exec_default: Verdict::Allow,
            egress_default: Verdict::Hold,
            executables: vec![],
            egress: vec![
                rule("10.0.0.0/8", &[(443, 443)], protocol::TCP, Verdict::Allow),
                rule("10.0.0.0/8", &[], protocol::ANY, Verdict::Deny),
                rule("10.1.0.0/16", &[(8000, 8100)], protocol::ANY, Verdict::Hold),
            ],
        };
        let compiled = policy.compile(7).unwrap();
        assert_eq!(compiled.egress.len(), 2);
        let (key, inner) = &compiled.egress[1];
        assert_eq!(key.prefix_len(), 32 + 112);
        assert_eq!(key.data().policy_be, 7u32.to_be_bytes());
        assert_eq!(inner.count, 2, "own port rule first, then the /8's");
        assert_eq!(
            (inner.ports[0].low, inner.ports[0].verdict),
            (8000, u16::try_from(verdict::HOLD).unwrap())
        );
        assert_eq!(
            (inner.ports[1].low, inner.ports[1].protocol),
            (443, u16::try_from(protocol::TCP).unwrap())
        );
        assert_eq!(inner.fallback, verdict::DENY, "the /8's catch-all applies inside the /16");
        assert_eq!(compiled.egress[0].1.fallback, verdict::DENY);
    }

    #[test]
    fn too_many_port_rules_are_refused() {
        let ports: Vec<(u16, u16)> = (1..=9).map(|p| (p, p)).collect();
        let policy = KernelPolicy {
            exec_default: Verdict::Allow,
            egress_default: Verdict::Hold,
            executables: vec![],
            egress: vec![rule("10.0.0.0/8", &ports, protocol::ANY, Verdict::Allow)],
        };
        assert!(policy.compile(0).err().unwrap().contains("more than 8 port rules"));
    }
}
