//! Every map of keyturn's BPF side. All are pinned by name in bpffs, so enforcement and
//! pending holds outlive a daemon restart; capacities live in `agent_common::capacity`.

use agent_common::{
    CachedTag, Config, DnsConfig, DnsRedirect, DnsSender, EgressKey, EgressRule, ExecKey, Hold, HoldKey,
    PolicyDefaults, Resolved, ResolvedKey, Stop, Tag, capacity, counter,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// Tagged cgroup roots (cgroup id → tag). Written by user space on tag and untag; read by
/// every hook when it resolves a cgroup it has not cached.
#[map]
pub static TAGGED_ROOTS: HashMap<u64, Tag> = HashMap::pinned(capacity::TAGGED_ROOTS, 0);

/// Per-cgroup cache of the tag resolution, written by the hooks. An LRU: eviction only
/// costs a re-walk of the ancestors. Entries carry `Config::generation` and are ignored
/// once user space changed the tags.
#[map]
pub static CGROUP_CACHE: LruHashMap<u64, CachedTag> = LruHashMap::pinned(capacity::CGROUP_CACHE, 0);

/// `CONFIG[0]`: heartbeat, liveness timeout and tag generation. Written by user space.
#[map]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Per-policy defaults, indexed by policy id. Written by user space.
#[map]
pub static POLICIES: Array<PolicyDefaults> = Array::pinned(capacity::POLICIES, 0);

/// Verdicts for executables by file identity. Written by user space.
#[map]
pub static EXEC_RULES: HashMap<ExecKey, u32> = HashMap::pinned(capacity::EXEC_RULES, 0);

/// Destination prefixes per policy, port rules folded in. Written by user space.
#[map]
pub static EGRESS_RULES: LpmTrie<EgressKey, EgressRule> = LpmTrie::pinned(capacity::EGRESS_RULES, 0);

/// Addresses names resolved to, per agent, and what the domain rules naming them say.
/// Written by the daemon's resolver when it answers a query; read by the egress hooks,
/// before the CIDR rules.
#[map]
pub static RESOLVED: LruHashMap<ResolvedKey, Resolved> = LruHashMap::pinned(capacity::RESOLVED, 0);

/// `DNS[0]`: where keyturn's resolver listens. Written by user space.
#[map]
pub static DNS: Array<DnsConfig> = Array::pinned(1, 0);

/// Sender index (the low 24 bits of the loopback source a redirected DNS socket got) →
/// who sent it. Written by the DNS hooks, read by the resolver.
#[map]
pub static DNS_SENDERS: LruHashMap<u32, DnsSender> = LruHashMap::pinned(capacity::DNS_SENDERS, 0);

/// Socket cookie → the DNS server a redirected UDP socket asked for. Written by the DNS
/// hooks, read by `recvmsg4` to make replies come from it.
#[map]
pub static DNS_REDIRECTS: LruHashMap<u64, DnsRedirect> = LruHashMap::pinned(capacity::DNS_REDIRECTS, 0);

/// Hold records: created by the hooks, decided (approved, denied) or removed by user
/// space, consumed by the hook when the held syscall restarts.
#[map]
pub static HOLDS: HashMap<HoldKey, Hold> = HashMap::pinned(capacity::HOLDS, 0);

/// Processes keyturn stopped and has not resumed or killed (tgid → stop): written by the
/// hooks on every stop, removed by user space just before it resumes or kills one. Lets
/// the daemon tell its own stops from anyone else's, even after a restart.
#[map]
pub static STOPS: HashMap<u32, Stop> = HashMap::pinned(capacity::STOPS, 0);

/// Holds ever raised per tagged root; incremented only by the hooks.
#[map]
pub static HOLDS_STARTED: HashMap<u64, u64> = HashMap::pinned(capacity::TAGGED_ROOTS, 0);

/// Holds ever closed per tagged root; written only by user space. Started minus finished
/// is what is pending, bounded by `Tag::max_pending`.
#[map]
pub static HOLDS_FINISHED: HashMap<u64, u64> = HashMap::pinned(capacity::TAGGED_ROOTS, 0);

/// Every hold, deferral and rogue SIGCONT, for user space.
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS_BYTES, 0);

/// Failure and activity counters, indexed by `agent_common::counter`; read by `status`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);
