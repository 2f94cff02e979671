//! The maps keyturn's resolver shares with the DNS and egress hooks, opened from their pins:
//! who sent a query (`DNS_SENDERS`, read here), which policy each tagged root has now
//! (`TAGGED_ROOTS`, read here), what names resolved to (`RESOLVED`, written only here), and
//! the stops of the processes whose held lookups it answers (`STOPS`, forgotten here).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use agent_common::{DnsSender, EgressRule, Resolved, ResolvedKey, Stop, Tag, dns};
use aya::maps::{HashMap, Map, MapData, MapError};

use crate::{kernel::EnforcerError, policy::kernel::kernel_addr, sys::monotonic_ns};

/// The resolver's handles on the maps it shares with the kernel.
pub struct NameMaps {
    senders: HashMap<MapData, u32, DnsSender>,
    roots: HashMap<MapData, u64, Tag>,
    resolved: HashMap<MapData, ResolvedKey, Resolved>,
    stops: HashMap<MapData, u32, Stop>,
}

/// What rejudging the recorded addresses did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rejudged {
    /// Addresses no longer let through by name.
    pub forgotten: usize,
    /// Addresses whose entry could be neither updated nor removed.
    pub failed: usize,
}

fn open<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
    kind: fn(MapData) -> Map,
) -> Result<HashMap<MapData, K, V>, EnforcerError> {
    let map_error = |source| EnforcerError::Map { map: name, source };
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_error)?;
    HashMap::try_from(kind(data)).map_err(map_error)
}

impl NameMaps {
    /// Opens the maps an [`Enforcer`](crate::kernel::Enforcer) pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, EnforcerError> {
        Ok(Self {
            senders: open(pin_dir, "DNS_SENDERS", Map::LruHashMap)?,
            roots: open(pin_dir, "TAGGED_ROOTS", Map::HashMap)?,
            resolved: open(pin_dir, "RESOLVED", Map::LruHashMap)?,
            stops: open(pin_dir, "STOPS", Map::HashMap)?,
        })
    }

    /// How many holds the agent under `root` may have pending at once; `None` once it is
    /// untagged.
    pub fn max_pending(&self, root: u64) -> Option<u32> {
        self.roots.get(&root, 0).ok().map(|tag| tag.max_pending)
    }

    /// Forgets keyturn's stop of process `tgid`, just before resuming it.
    pub fn forget_stop(&mut self, tgid: u32) {
        match self.stops.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => tracing::warn!(error = %e, tgid, "DNS: forgetting the stop of a held lookup's process"),
        }
    }

    /// The kernel id of the policy the root `root` is tagged with now; `None` once it is
    /// untagged.
    pub fn policy_of(&self, root: u64) -> Option<u32> {
        self.roots.get(&root, 0).ok().map(|tag| tag.policy)
    }

    /// Who sends DNS (over TCP if `tcp`) from `source`: a sender address the DNS hooks gave
    /// the socket, or the port of a socket the agent had bound itself (sending from
    /// `127.0.0.1`). `None`: neither, or a sender long forgotten.
    pub fn sender(&self, source: SocketAddrV4, tcp: bool) -> Option<DnsSender> {
        let bits = u32::from(*source.ip());
        let index = bits & dns::SENDER_MASK;
        let key = if bits & !dns::SENDER_MASK == dns::SENDER_NET && index >= dns::FIRST_SENDER {
            index
        } else if *source.ip() == Ipv4Addr::LOCALHOST {
            dns::port_key(tcp, source.port())
        } else {
            return None;
        };
        self.senders.get(&key, 0).ok()
    }

    /// Lets the kernel judge egress to `addr` by the agent under `root` with `rule` (the
    /// port rules of the domain rules naming the name it resolved from) for `ttl`.
    pub fn record(
        &mut self,
        root: u64,
        addr: IpAddr,
        ttl: Duration,
        rule: EgressRule,
    ) -> Result<(), EnforcerError> {
        let key = ResolvedKey { root, addr: kernel_addr(addr) };
        self.resolved.insert(key, Resolved { expires_ns: expiry(ttl), rule }, 0).map_err(resolved_error)
    }

    /// Judges again every address the kernel lets agents reach by a name they resolved:
    /// `judge(root, policy, addr)`, with the policy the root is tagged with now (`None`:
    /// untagged), is the rule it gets now and at most how much longer it lasts, or `None` to
    /// forget it (the CIDR rules judge it from then on). An entry that cannot be updated is
    /// removed; one that can be neither is counted as failed, and the rest are judged all
    /// the same.
    pub fn rejudge(
        &mut self,
        judge: impl Fn(u64, Option<u32>, IpAddr) -> Option<(EgressRule, Duration)>,
    ) -> Result<Rejudged, EnforcerError> {
        let keys: Vec<ResolvedKey> =
            self.resolved.keys().collect::<Result<_, _>>().map_err(resolved_error)?;
        let mut done = Rejudged::default();
        for key in keys {
            let addr = Ipv6Addr::from(key.addr).to_canonical();
            let updated = match (judge(key.root, self.policy_of(key.root), addr), self.resolved.get(&key, 0))
            {
                // Gone meanwhile: expired out of the LRU map.
                (_, Err(MapError::KeyNotFound)) => continue,
                (Some((rule, lasts)), Ok(resolved)) => {
                    let expires_ns = resolved.expires_ns.min(expiry(lasts));
                    self.resolved.insert(key, Resolved { expires_ns, rule }, 0).is_ok()
                }
                (None, _) | (Some(_), Err(_)) => false,
            };
            if updated {
                continue;
            }
            match self.resolved.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => done.forgotten += 1,
                Err(_) => done.failed += 1,
            }
        }
        Ok(done)
    }
}

/// `CLOCK_MONOTONIC` nanoseconds `lasts` from now, as the kernel compares them.
fn expiry(lasts: Duration) -> u64 {
    monotonic_ns().saturating_add(u64::try_from(lasts.as_nanos()).unwrap_or(u64::MAX))
}

fn resolved_error(source: MapError) -> EnforcerError {
    EnforcerError::Map { map: "RESOLVED", source }
}
