//! The one owner of keyturn's loaded BPF object: picks the enforcement mode, loads and
//! attaches the programs, pins everything in bpffs, and is the only writer of its maps
//! (but `RESOLVED`, which the resolver writes through [`super::names`]).

use std::{
    fs,
    io::ErrorKind,
    net::SocketAddrV4,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{
    Config, DnsConfig, EgressKey, EgressRule, ExecKey, Hold, HoldEvent, HoldKey, PolicyDefaults, Stop, Tag,
    counter, hold_state,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, LsmCgroup, Program, ProgramError,
        links::{FdLink, PinnedLink},
    },
};

use crate::{
    cgroup::{self, CgroupError},
    kernel::btf::{Btf, BtfError},
    kernel::mode::Mode,
    policy::{FileId, KernelPolicy, Verdict},
    sys::monotonic_ns,
};

/// The compiled BPF object, built by build.rs from `agent-ebpf`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keyturn"));

#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("loading keyturn's BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("reading the kernel's BTF for aya: {0}")]
    AyaBtf(#[from] aya::BtfError),
    #[error("BPF program {program}: {source}")]
    Program { program: &'static str, source: ProgramError },
    #[error("BPF program {program}: attached without a pinnable link (kernel before 5.7?): {source}")]
    Link { program: &'static str, source: aya::programs::links::LinkError },
    #[error("BPF map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("pinning in bpffs at {path}: {source}")]
    Pin { path: PathBuf, source: std::io::Error },
    #[error(
        "pinned map {path} was made by another keyturn build ({found}; this build's is {expected}): \
         decide the holds pending there with the build that made it, then remove {dir} (which ends \
         its enforcement) before starting this one"
    )]
    IncompatiblePin { path: PathBuf, dir: PathBuf, found: MapShape, expected: MapShape },
    #[error("reading keyturn's BPF object: {0}")]
    Object(#[from] aya_obj::ParseError),
    #[error("no enforcement mode works on this kernel: {0}")]
    NoMode(String),
    #[error("hold {0:?} does not exist (decided already, or the process is gone)")]
    NoHold(HoldKey),
    #[error("hold {key:?} is not the one decided: nonce or state differs")]
    Stale { key: HoldKey },
    #[error("egress rule: {0}")]
    Policy(String),
}

type Result<T, E = EnforcerError> = std::result::Result<T, E>;

/// How a BPF program is loaded and attached.
#[derive(Clone, Copy)]
enum Hook {
    /// Global `lsm/` program on this LSM hook.
    Lsm(&'static str),
    /// `lsm_cgroup/` program on this LSM hook, attached per tagged cgroup.
    LsmCgroup(&'static str),
    /// Global `tp_btf/` program on this tracepoint.
    TpBtf(&'static str),
    /// `cgroup/sock_addr` program, attached per tagged cgroup.
    SockAddr,
    /// `cgroup/sock_create` program, attached per tagged cgroup.
    SockCreate,
}

impl Hook {
    /// Attached once for the whole host, rather than to each tagged cgroup.
    fn is_global(self) -> bool {
        matches!(self, Hook::Lsm(_) | Hook::TpBtf(_))
    }
}

struct ProgramSpec {
    name: &'static str,
    hook: Hook,
}

const fn spec(name: &'static str, hook: Hook) -> ProgramSpec {
    ProgramSpec { name, hook }
}

/// Attached to each tagged cgroup in every mode: DNS goes to keyturn's resolver, and no
/// socket that reaches the network around the egress hooks (raw, ICMP) is made.
const EVERY_MODE: &[ProgramSpec] = &[
    spec("socket_create", Hook::SockCreate),
    spec("dns_connect4", Hook::SockAddr),
    spec("dns_sendmsg4", Hook::SockAddr),
    spec("dns_connect6", Hook::SockAddr),
    spec("dns_sendmsg6", Hook::SockAddr),
    spec("dns_recvmsg4", Hook::SockAddr),
    spec("dns_bind4", Hook::SockAddr),
    spec("dns_bind6", Hook::SockAddr),
];
const LSM_CGROUP: &[ProgramSpec] = &[
    spec("exec_lsm_cgroup", Hook::LsmCgroup("bprm_check_security")),
    spec("connect_lsm_cgroup", Hook::LsmCgroup("socket_connect")),
    spec("sendmsg_lsm_cgroup", Hook::LsmCgroup("socket_sendmsg")),
];
const LSM: &[ProgramSpec] = &[
    spec("exec_lsm", Hook::Lsm("bprm_check_security")),
    spec("connect_lsm", Hook::Lsm("socket_connect")),
    spec("sendmsg_lsm", Hook::Lsm("socket_sendmsg")),
];
const CGROUP_SOCK_HOLD: &[ProgramSpec] = &[
    spec("exec_tp", Hook::TpBtf("sched_process_exec")),
    spec("signal_tp", Hook::TpBtf("signal_generate")),
    spec("connect4_hold", Hook::SockAddr),
    spec("connect6_hold", Hook::SockAddr),
    spec("sendmsg4_hold", Hook::SockAddr),
    spec("sendmsg6_hold", Hook::SockAddr),
];
const CGROUP_SOCK_RETRY: &[ProgramSpec] = &[
    spec("exec_tp", Hook::TpBtf("sched_process_exec")),
    spec("signal_tp", Hook::TpBtf("signal_generate")),
    spec("connect4_retry", Hook::SockAddr),
    spec("connect6_retry", Hook::SockAddr),
    spec("sendmsg4_retry", Hook::SockAddr),
    spec("sendmsg6_retry", Hook::SockAddr),
];

/// How a held egress waits in the chosen mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressHold {
    /// Stopped in the syscall, which restarts on release.
    Stop,
    /// The syscall fails with EPERM; an approved retry succeeds (no signals from
    /// `sock_addr` programs on this kernel).
    FailThenRetry,
}

/// What start-up tried, for `keyturn doctor`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attempt {
    pub what: String,
    pub result: Result<(), String>,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Force this mode instead of the strongest that loads.
    pub mode: Option<Mode>,
    /// Where maps and links are pinned, on a bpffs.
    pub pin_dir: PathBuf,
    /// Flagged actions fail with EPERM when no heartbeat was seen for this long.
    pub liveness_timeout: Duration,
    /// In `cgroup-sock` mode, use the fail-then-retry egress programs even where the
    /// kernel allows holds (to exercise the path older kernels take).
    pub egress_retry: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: None,
            pin_dir: PathBuf::from("/sys/fs/bpf/keyturn"),
            liveness_timeout: Duration::from_secs(10),
            egress_retry: false,
        }
    }
}

/// `bpf_map_update_elem`'s flag: only where the key is absent.
const BPF_NOEXIST: u64 = 1;
/// The kernel's "operation not supported" (not in libc: it is kernel-internal).
const ENOTSUPP: i32 = 524;

/// Whose hold record [`Enforcer::rewrite_hold`] found under its key.
enum Taken {
    Absent,
    /// The hold it was asked to rewrite.
    Ours,
    /// Another hold (a newer one of a reused pid): put back as it was.
    Another,
}

pub struct Enforcer {
    ebpf: Ebpf,
    mode: Mode,
    egress_hold: EgressHold,
    programs: &'static [ProgramSpec],
    pin_dir: PathBuf,
    liveness_timeout: Duration,
    events: RingBuf<MapData>,
}

fn map_error(map: &'static str) -> impl FnOnce(MapError) -> EnforcerError {
    move |source| EnforcerError::Map { map, source }
}

/// A map removal's result, with "no such key" counted as done.
fn absent_ok(removed: Result<(), MapError>) -> Result<(), MapError> {
    match removed {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn pin_error(path: &Path) -> impl FnOnce(std::io::Error) -> EnforcerError + '_ {
    move |source| EnforcerError::Pin { path: path.to_owned(), source }
}

/// Makes sure `dir` is on a mounted bpffs, mounting one at /sys/fs/bpf if needed.
fn ensure_bpffs(dir: &Path) -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    let mounted =
        fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.lines().any(|l| l.contains(" - bpf ")));
    if !mounted {
        let _ = fs::create_dir_all(bpffs);
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(bpffs)
            .status()
            .map_err(pin_error(bpffs))?;
        if !status.success() {
            return Err(EnforcerError::Pin { path: bpffs.into(), source: ErrorKind::NotFound.into() });
        }
    }
    fs::create_dir_all(dir.join("links")).map_err(pin_error(dir))
}

impl Enforcer {
    /// Loads keyturn's programs in the strongest mode this kernel supports (or the forced
    /// one), reusing maps and global links a previous daemon pinned.
    pub fn load(options: &Options) -> Result<Self> {
        let (mut ebpf, btf) = load_object(&options.pin_dir)?;

        let candidates: Vec<Mode> = options.mode.map_or_else(|| Mode::ALL.to_vec(), |m| vec![m]);
        let (attempts, chosen) = choose_mode(&mut ebpf, &btf, &candidates, true, options.egress_retry);
        let Some((mode, programs)) = chosen else {
            let why = attempts.iter().filter_map(|a| a.result.clone().err()).collect::<Vec<_>>();
            return Err(EnforcerError::NoMode(why.join("; ")));
        };
        let egress_hold = if std::ptr::eq(programs, CGROUP_SOCK_RETRY) {
            EgressHold::FailThenRetry
        } else {
            EgressHold::Stop
        };
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").expect("EVENTS is in the object"))
            .map_err(map_error("EVENTS"))?;
        let mut enforcer = Self {
            ebpf,
            mode,
            egress_hold,
            programs,
            pin_dir: options.pin_dir.clone(),
            liveness_timeout: options.liveness_timeout,
            events,
        };
        enforcer.heartbeat()?;
        enforcer.remove_foreign_links()?;
        enforcer.attach_global()?;
        Ok(enforcer)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn egress_hold(&self) -> EgressHold {
        self.egress_hold
    }

    /// The mode's programs, and those every mode has.
    fn specs(&self) -> impl Iterator<Item = &'static ProgramSpec> + use<> {
        self.programs.iter().chain(EVERY_MODE)
    }

    /// Where the link of `program` for `owner` (`global` or a cgroup id) is pinned. One
    /// directory per owner: bpffs refuses names with dots.
    fn link_path(&self, owner: &str, program: &str) -> Result<PathBuf> {
        let dir = self.pin_dir.join("links").join(owner);
        fs::create_dir_all(&dir).map_err(pin_error(&dir))?;
        Ok(dir.join(program))
    }

    /// Detaches links pinned by a daemon that ran in another mode.
    fn remove_foreign_links(&self) -> Result<()> {
        let dir = self.pin_dir.join("links");
        for owner in fs::read_dir(&dir).map_err(pin_error(&dir))?.flatten() {
            for link in fs::read_dir(owner.path()).map_err(pin_error(&owner.path()))?.flatten() {
                let name = link.file_name().to_string_lossy().into_owned();
                if !self.specs().any(|spec| spec.name == name) {
                    unpin(&link.path())?;
                }
            }
        }
        Ok(())
    }

    /// Attaches the global programs of the mode, unless a previous daemon's are pinned.
    fn attach_global(&mut self) -> Result<()> {
        self.attach_pinned("global", None)
    }

    /// Attaches and pins, as `owner`, the mode's global programs (no `cgroup`) or its
    /// per-cgroup ones; links already pinned by an earlier daemon are kept as they are.
    fn attach_pinned(&mut self, owner: &str, cgroup: Option<BorrowedFd<'_>>) -> Result<()> {
        for spec in self.specs() {
            if spec.hook.is_global() != cgroup.is_none() {
                continue;
            }
            let path = self.link_path(owner, spec.name)?;
            if path.exists() {
                continue;
            }
            let program = self.ebpf.program_mut(spec.name).expect("program in object");
            let link = attach(program, spec, cgroup)?;
            link.pin(&path).map_err(|e| EnforcerError::Pin { path, source: std::io::Error::other(e) })?;
        }
        Ok(())
    }

    /// Tags the cgroup at `dir` (an absolute cgroupfs directory): its processes and those
    /// of every cgroup below it, now or later, are enforced under `tag`.
    pub fn tag(&mut self, dir: &Path, tag: Tag) -> Result<u64> {
        let id = cgroup::id(dir)?;
        let cgroup_fd = fs::File::open(dir).map_err(|source| CgroupError::Io { path: dir.into(), source })?;
        self.attach_pinned(&id.to_string(), Some(cgroup_fd.as_fd()))?;
        let mut roots: HashMap<_, u64, Tag> = self.map_mut("TAGGED_ROOTS")?;
        roots.insert(id, tag, 0).map_err(map_error("TAGGED_ROOTS"))?;
        self.bump_generation()?;
        Ok(id)
    }

    /// Stops enforcing on the cgroup tagged as `id` and detaches its programs.
    pub fn untag(&mut self, id: u64) -> Result<()> {
        let mut roots: HashMap<_, u64, Tag> = self.map_mut("TAGGED_ROOTS")?;
        absent_ok(roots.remove(&id)).map_err(map_error("TAGGED_ROOTS"))?;
        self.bump_generation()?;
        for spec in self.specs() {
            let path = self.link_path(&id.to_string(), spec.name)?;
            if path.exists() {
                unpin(&path)?;
            }
        }
        let dir = self.pin_dir.join("links").join(id.to_string());
        fs::remove_dir(&dir).map_err(pin_error(&dir))
    }

    /// Tagged roots: cgroup id → tag.
    #[cfg(feature = "test-helpers")]
    pub fn tags(&self) -> Result<Vec<(u64, Tag)>> {
        let roots: HashMap<_, u64, Tag> = self.map("TAGGED_ROOTS")?;
        roots.iter().collect::<Result<_, _>>().map_err(map_error("TAGGED_ROOTS"))
    }

    fn config(&self) -> Result<Config> {
        let config: Array<_, Config> = self.map("CONFIG")?;
        config.get(&0, 0).map_err(map_error("CONFIG"))
    }

    fn write_config(&mut self, update: impl FnOnce(&mut Config)) -> Result<()> {
        let mut value = self.config()?;
        update(&mut value);
        let mut config: Array<_, Config> = self.map_mut("CONFIG")?;
        config.set(0, value, 0).map_err(map_error("CONFIG"))
    }

    fn bump_generation(&mut self) -> Result<()> {
        self.write_config(|c| c.generation += 1)
    }

    /// Tells the kernel the daemon is alive; without it, flagged actions fail with EPERM
    /// after the liveness timeout instead of waiting for a decision nobody can make.
    pub fn heartbeat(&mut self) -> Result<()> {
        let timeout = u64::try_from(self.liveness_timeout.as_nanos()).unwrap_or(u64::MAX);
        self.write_config(|c| {
            c.heartbeat_ns = monotonic_ns();
            c.liveness_timeout_ns = timeout;
        })
    }

    /// Tells the DNS hooks where keyturn's resolver listens (an IPv4 loopback address):
    /// DNS from tagged cgroups goes there from now on. Until then, and after `None` (the
    /// daemon stops, or its resolver could not start), it is refused.
    pub fn set_resolver(&mut self, at: Option<SocketAddrV4>) -> Result<()> {
        let value = at.map_or_else(DnsConfig::default, |at| DnsConfig {
            addr_be: u32::from(*at.ip()).to_be(),
            port: u32::from(at.port()),
        });
        let mut dns: Array<_, DnsConfig> = self.map_mut("DNS")?;
        dns.set(0, value, 0).map_err(map_error("DNS"))
    }

    /// Installs policy `id` in the kernel. New entries are written before stale ones are
    /// removed, so there is no moment where neither the old nor the new rule applies.
    pub fn set_policy(&mut self, id: u32, policy: &KernelPolicy) -> Result<()> {
        let compiled = policy.compile(id).map_err(EnforcerError::Policy)?;
        let mut defaults: Array<_, PolicyDefaults> = self.map_mut("POLICIES")?;
        defaults.set(id, compiled.defaults, 0).map_err(map_error("POLICIES"))?;

        let mut exec: HashMap<_, ExecKey, u32> = self.map_mut("EXEC_RULES")?;
        for (key, verdict) in &compiled.exec {
            exec.insert(key, verdict, 0).map_err(map_error("EXEC_RULES"))?;
        }
        let stale: Vec<ExecKey> = exec
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.policy == id && !compiled.exec.iter().any(|(key, _)| key == k))
            .collect();
        for key in stale {
            let _ = exec.remove(&key);
        }

        let mut egress: LpmTrie<_, EgressKey, EgressRule> = self.map_mut("EGRESS_RULES")?;
        for (key, rule) in &compiled.egress {
            egress.insert(key, rule, 0).map_err(map_error("EGRESS_RULES"))?;
        }
        let stale: Vec<Key<EgressKey>> = egress
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                k.data().policy_be == id.to_be_bytes()
                    && !compiled
                        .egress
                        .iter()
                        .any(|(key, _)| key.prefix_len() == k.prefix_len() && key.data() == k.data())
            })
            .collect();
        for key in stale {
            let _ = egress.remove(&key);
        }
        Ok(())
    }

    /// Records what policy `id` says of one executable file version, so the kernel decides
    /// its next execs by itself. Loading the policy again forgets every such record.
    pub fn record_exec_verdict(&mut self, id: u32, file: FileId, verdict: Verdict) -> Result<()> {
        let mut exec: HashMap<_, ExecKey, u32> = self.map_mut("EXEC_RULES")?;
        exec.insert(file.key(id), verdict.kernel(), 0).map_err(map_error("EXEC_RULES"))
    }

    /// The ring buffer's fd, for polling.
    pub fn events_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }

    /// Drains the events the kernel has reported so far.
    pub fn read_events(&mut self) -> Vec<HoldEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<HoldEvent>() {
                // The ring buffer aligns records to 8 bytes only.
                events.push(bytemuck::pod_read_unaligned(&item[..size_of::<HoldEvent>()]));
            }
        }
        events
    }

    /// Waits up to `timeout` for events.
    #[cfg(feature = "test-helpers")]
    pub fn wait_events(&mut self, timeout: Duration) -> Vec<HoldEvent> {
        let events = self.read_events();
        if !events.is_empty() {
            return events;
        }
        crate::sys::readable(&self.events, u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX));
        self.read_events()
    }

    /// All hold records in the kernel.
    pub fn holds(&self) -> Result<Vec<(HoldKey, Hold)>> {
        let holds: HashMap<_, HoldKey, Hold> = self.map("HOLDS")?;
        holds.iter().collect::<Result<_, _>>().map_err(map_error("HOLDS"))
    }

    /// Moves the pending hold `key` (named by its `nonce`) to `state`, so the next restart
    /// of exactly that action is let through (`APPROVED`) or refused (`DENIED`).
    pub fn decide(&mut self, key: HoldKey, nonce: u64, state: u32) -> Result<Hold> {
        let mut decided = None;
        let taken = self.rewrite_hold(key, nonce, |hold| {
            if hold.state != hold_state::PENDING {
                return Some(hold);
            }
            let hold = Hold { state, decided_at_ns: monotonic_ns(), ..hold };
            decided = Some(hold);
            Some(hold)
        })?;
        match (taken, decided) {
            (Taken::Absent, _) => Err(EnforcerError::NoHold(key)),
            (_, Some(hold)) => Ok(hold),
            (_, None) => Err(EnforcerError::Stale { key }),
        }
    }

    /// Lets the kernel report the next SIGCONT that restarts the pending hold `key` (named by
    /// its `nonce`): keyturn is about to resume its process for another thread's decision.
    pub fn expect_rehold(&mut self, key: HoldKey, nonce: u64) -> Result<()> {
        self.rewrite_hold(key, nonce, |hold| {
            Some(if hold.state == hold_state::PENDING { Hold { rogue_reported: 0, ..hold } } else { hold })
        })
        .map(drop)
    }

    /// Removes the hold `key` if it still carries `nonce`.
    pub fn forget(&mut self, key: HoldKey, nonce: u64) -> Result<()> {
        self.rewrite_hold(key, nonce, |_| None).map(drop)
    }

    /// Rewrites hold record `key` as `rewrite` says (`None`: removes it), if it is still the
    /// hold named by `nonce`. A pid is reused at any time, and a new hold of it replaces the
    /// record: the record is taken out and put back (rewritten, or as it was) each in one
    /// step, and a record the kernel wrote meanwhile is kept, so that a newer hold is never
    /// removed or overwritten by what was meant for an older one.
    fn rewrite_hold(
        &mut self,
        key: HoldKey,
        nonce: u64,
        rewrite: impl FnOnce(Hold) -> Option<Hold>,
    ) -> Result<Taken> {
        let map = self.ebpf.map("HOLDS").expect("map in object");
        let aya::maps::Map::HashMap(data) = map else { unreachable!("HOLDS is a hash map") };
        let taken = match crate::sys::bpf_map_take::<HoldKey, Hold>(data.fd(), &key) {
            Ok(taken) => taken,
            // Before Linux 5.14 a hash map cannot be taken from in one step: read, then
            // remove. A newer hold written between the two is lost there, and its process
            // is settled by the orphan sweep (killed): never let through.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | ENOTSUPP)) => {
                let mut holds: HashMap<_, HoldKey, Hold> = self.map_mut("HOLDS")?;
                match holds.get(&key, 0) {
                    Ok(hold) => {
                        absent_ok(holds.remove(&key)).map_err(map_error("HOLDS"))?;
                        Some(hold)
                    }
                    Err(MapError::KeyNotFound) => None,
                    Err(e) => return Err(map_error("HOLDS")(e)),
                }
            }
            Err(io_error) => {
                let call = "bpf_map_lookup_and_delete_elem";
                return Err(map_error("HOLDS")(MapError::from(aya::sys::SyscallError { call, io_error })));
            }
        };
        let Some(hold) = taken else { return Ok(Taken::Absent) };
        let (put_back, taken) =
            if hold.nonce == nonce { (rewrite(hold), Taken::Ours) } else { (Some(hold), Taken::Another) };
        if let Some(record) = put_back {
            let mut holds: HashMap<_, HoldKey, Hold> = self.map_mut("HOLDS")?;
            match holds.insert(key, record, BPF_NOEXIST) {
                Ok(()) => {}
                // The kernel wrote a newer hold meanwhile: it wins.
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_error("HOLDS")(e)),
            }
        }
        Ok(taken)
    }

    /// The processes the hooks stopped that user space has not resumed or killed since:
    /// tgid → stop.
    pub fn stops(&self) -> Result<Vec<(u32, Stop)>> {
        let stops: HashMap<_, u32, Stop> = self.map("STOPS")?;
        stops.iter().collect::<Result<_, _>>().map_err(map_error("STOPS"))
    }

    /// Records that keyturn stopped process `tgid` itself (a held lookup's sender), as the
    /// hooks record their stops: the orphan sweep then accounts for it.
    pub fn record_stop(&mut self, tgid: u32, stop: Stop) -> Result<()> {
        let mut stops: HashMap<_, u32, Stop> = self.map_mut("STOPS")?;
        stops.insert(tgid, stop, 0).map_err(map_error("STOPS"))
    }

    /// Forgets the stop of process `tgid`: called just before keyturn resumes or kills it
    /// (a hook that stops it again meanwhile records the new stop after this).
    pub fn forget_stop(&mut self, tgid: u32) -> Result<()> {
        let mut stops: HashMap<_, u32, Stop> = self.map_mut("STOPS")?;
        absent_ok(stops.remove(&tgid)).map_err(map_error("STOPS"))
    }

    /// Records that one hold under `root` is closed, freeing a pending slot.
    pub fn finish(&mut self, root: u64) -> Result<()> {
        let mut finished: HashMap<_, u64, u64> = self.map_mut("HOLDS_FINISHED")?;
        let count = finished.get(&root, 0).unwrap_or(0);
        finished.insert(root, count + 1, 0).map_err(map_error("HOLDS_FINISHED"))
    }

    /// The kernel's counters, summed over CPUs, indexed by `agent_common::counter`.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize]> {
        let counters: PerCpuArray<_, u64> = self.map("COUNTERS")?;
        let mut sums = [0; counter::COUNT as usize];
        for (index, sum) in (0..).zip(sums.iter_mut()) {
            *sum = counters.get(&index, 0).map_err(map_error("COUNTERS"))?.iter().sum();
        }
        Ok(sums)
    }

    /// Bytes of kernel memory the maps may use at their current capacities (upper bound).
    #[cfg(feature = "test-helpers")]
    pub fn maps_memory(&self) -> u64 {
        self.ebpf.maps().filter_map(|(_, map)| map_memlock(map)).sum::<u64>()
            + map_memlock_data(self.events.as_raw_fd()).unwrap_or(0)
    }

    fn map<'a, M: TryFrom<&'a aya::maps::Map, Error = MapError>>(&'a self, name: &'static str) -> Result<M> {
        let map = self.ebpf.map(name).expect("map in object");
        M::try_from(map).map_err(map_error(name))
    }

    fn map_mut<'a, M: TryFrom<&'a mut aya::maps::Map, Error = MapError>>(
        &'a mut self,
        name: &'static str,
    ) -> Result<M> {
        let map = self.ebpf.map_mut(name).expect("map in object");
        M::try_from(map).map_err(map_error(name))
    }

    /// Detaches everything and removes the pins: enforcement stops. Pending holds are
    /// lost, so the caller must have decided them.
    #[cfg(feature = "test-helpers")]
    pub fn uninstall(self) -> Result<()> {
        let dir = self.pin_dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).map_err(pin_error(&dir))
    }
}

/// The layout of a map: what two builds must agree on to share it through a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "keys of {} bytes, values of {}, {} entries",
            self.key_size, self.value_size, self.max_entries
        )
    }
}

/// Refuses pins in `pin_dir` whose layout differs from this build's maps: aya reuses a
/// pinned map by name without looking, and a map another build made (a value grown or
/// reordered across an upgrade) would be read and written as if it were this build's.
fn check_pins(pin_dir: &Path) -> Result<()> {
    let object = aya_obj::Object::parse(PROGRAMS)?;
    for (name, map) in &object.maps {
        let path = pin_dir.join(name);
        if !matches!(map.pinning(), aya_obj::maps::PinningType::ByName) || !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|source| EnforcerError::Map { map: "pinned", source })?;
        let found = MapShape {
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        let expected = MapShape {
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
        };
        if found != expected {
            return Err(EnforcerError::IncompatiblePin { path, dir: pin_dir.to_owned(), found, expected });
        }
    }
    Ok(())
}

/// Loads the BPF object with its maps pinned in `pin_dir` (reusing existing pins of the
/// same layout).
fn load_object(pin_dir: &Path) -> Result<(Ebpf, aya::Btf)> {
    ensure_bpffs(pin_dir)?;
    check_pins(pin_dir)?;
    let offsets = Btf::from_sys_fs()?.kernel_offsets()?;
    let btf = aya::Btf::from_sys_fs()?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .default_map_pin_directory(pin_dir)
        .override_global("OFFSETS", &offsets, true)
        .load(PROGRAMS)?;
    Ok((ebpf, btf))
}

type Chosen = Option<(Mode, &'static [ProgramSpec])>;

/// Loads the programs of each candidate mode in turn; the first whose programs all load
/// is chosen. With `first_only` false every candidate is tried, for the report.
fn choose_mode(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    candidates: &[Mode],
    first_only: bool,
    egress_retry: bool,
) -> (Vec<Attempt>, Chosen) {
    let mut attempts = Vec::new();
    let mut chosen = None;
    for &mode in candidates {
        let sets: &[&'static [ProgramSpec]] = match mode {
            Mode::LsmCgroup => &[LSM_CGROUP],
            Mode::Lsm => &[LSM],
            Mode::CgroupSock if egress_retry => &[CGROUP_SOCK_RETRY],
            Mode::CgroupSock => &[CGROUP_SOCK_HOLD, CGROUP_SOCK_RETRY],
        };
        for &programs in sets {
            let result = programs.iter().chain(EVERY_MODE).try_for_each(|spec| load_program(ebpf, spec, btf));
            attempts.push(Attempt {
                what: format!("{mode}: load {}", names(programs)),
                result: result.map_err(|e| error_chain(&e)),
            });
            if attempts.last().is_some_and(|a| a.result.is_ok()) {
                chosen = chosen.or(Some((mode, programs)));
                break;
            }
        }
        if first_only && chosen.is_some() {
            break;
        }
    }
    (attempts, chosen)
}

/// Loads every mode's programs without attaching anything, in a scratch pin directory:
/// what `keyturn doctor` reports. Returns the attempts and the mode start-up would pick.
pub fn probe() -> Result<(Vec<Attempt>, Option<Mode>)> {
    let dir = PathBuf::from(format!("/sys/fs/bpf/keyturn-probe-{}", std::process::id()));
    let result = load_object(&dir).map(|(mut ebpf, btf)| {
        let (attempts, chosen) = choose_mode(&mut ebpf, &btf, &Mode::ALL, false, false);
        (attempts, chosen.map(|(mode, _)| mode))
    });
    let _ = fs::remove_dir_all(&dir);
    result
}

/// An error with its sources, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

fn unpin(path: &Path) -> Result<()> {
    let link = PinnedLink::from_pin(path)
        .map_err(|e| EnforcerError::Pin { path: path.into(), source: std::io::Error::other(e) })?;
    // Dropping the unpinned link's last fd detaches it.
    drop(link.unpin().map_err(pin_error(path))?);
    Ok(())
}

fn names(programs: &[ProgramSpec]) -> String {
    programs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

/// Attaches `program` (globally, or to `cgroup`) and returns its link, ready to pin.
fn attach(program: &mut Program, spec: &ProgramSpec, cgroup: Option<BorrowedFd<'_>>) -> Result<FdLink> {
    let program_error = |source| EnforcerError::Program { program: spec.name, source };
    match (spec.hook, cgroup) {
        (Hook::Lsm(_), None) => {
            let p: &mut Lsm = program.try_into().map_err(program_error)?;
            let id = p.attach().map_err(program_error)?;
            Ok(p.take_link(id).map_err(program_error)?.into())
        }
        (Hook::TpBtf(_), None) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(program_error)?;
            let id = p.attach().map_err(program_error)?;
            Ok(p.take_link(id).map_err(program_error)?.into())
        }
        (Hook::LsmCgroup(_), Some(cgroup)) => {
            let p: &mut LsmCgroup = program.try_into().map_err(program_error)?;
            let id = p.attach(cgroup).map_err(program_error)?;
            Ok(p.take_link(id).map_err(program_error)?.into())
        }
        (Hook::SockAddr, Some(cgroup)) => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(program_error)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(program_error)?;
            // Links (kernel 5.7+) are the only attachments that can be pinned.
            FdLink::try_from(p.take_link(id).map_err(program_error)?)
                .map_err(|source| EnforcerError::Link { program: spec.name, source })
        }
        (Hook::SockCreate, Some(cgroup)) => {
            let p: &mut CgroupSock = program.try_into().map_err(program_error)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(program_error)?;
            FdLink::try_from(p.take_link(id).map_err(program_error)?)
                .map_err(|source| EnforcerError::Link { program: spec.name, source })
        }
        _ => unreachable!("attach_pinned pairs global hooks with no cgroup and cgroup hooks with one"),
    }
}

fn load_program(ebpf: &mut Ebpf, spec: &ProgramSpec, btf: &aya::Btf) -> Result<()> {
    let program = ebpf.program_mut(spec.name).expect("program in object");
    if program.fd().is_ok() {
        return Ok(());
    }
    let program_error = |source| EnforcerError::Program { program: spec.name, source };
    match spec.hook {
        Hook::Lsm(hook) => {
            let p: &mut Lsm = program.try_into().map_err(program_error)?;
            p.load(hook, btf)
        }
        Hook::LsmCgroup(hook) => {
            let p: &mut LsmCgroup = program.try_into().map_err(program_error)?;
            p.load(hook, btf)
        }
        Hook::TpBtf(tracepoint) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(program_error)?;
            p.load(tracepoint, btf)
        }
        Hook::SockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(program_error)?;
            p.load()
        }
        Hook::SockCreate => {
            let p: &mut CgroupSock = program.try_into().map_err(program_error)?;
            p.load()
        }
    }
    .map_err(program_error)
}

#[cfg(feature = "test-helpers")]
fn map_memlock(map: &aya::maps::Map) -> Option<u64> {
    let fd = match map {
        aya::maps::Map::Array(m)
        | aya::maps::Map::HashMap(m)
        | aya::maps::Map::LruHashMap(m)
        | aya::maps::Map::LpmTrie(m)
        | aya::maps::Map::PerCpuArray(m) => m.fd().as_fd().as_raw_fd(),
        _ => return None,
    };
    map_memlock_data(fd)
}

/// The `memlock` the kernel reports for a map fd in `/proc/self/fdinfo`.
#[cfg(feature = "test-helpers")]
fn map_memlock_data(fd: RawFd) -> Option<u64> {
    fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}
