//! The invariant: no process in a tagged cgroup is ever stopped or frozen by keyturn
//! without exactly one pending hold. [`find`] compares what the kernel and cgroupfs show
//! with the holds the daemon keeps, and names everything it cannot account for.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use agent_common::{Hold, HoldKey, Stop, hold_state};

use crate::{hold::process::NS_PER_TICK, hold::procfs};

/// How long a kernel record or stop may go unaccounted for before it is an orphan: its
/// event may still be on its way through the ring buffer and the daemon's intake.
pub const GRACE_NS: u64 = 2_000_000_000;

/// The name of a frozen cell a held process waits in, followed by its pid.
pub const CELL_PREFIX: &str = "keyturn-held-";

/// A process found in a tagged cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub pid: u32,
    /// In state `T` (stopped by a signal; a tracer's stop is `t` and is not counted).
    pub stopped: bool,
    /// Its start time in clock ticks since boot, as `/proc/PID/stat` shows it.
    pub start_ticks: u64,
    /// The frozen cell it waits in, if it is in one.
    pub cell: Option<PathBuf>,
}

/// What the daemon and the kernel hold at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `CLOCK_MONOTONIC` nanoseconds when it was taken.
    pub now_ns: u64,
    /// The kernel's hold records.
    pub records: Vec<(HoldKey, Hold)>,
    /// The kernel's record of the processes keyturn stopped (tgid → stop).
    pub stops: Vec<(u32, Stop)>,
    /// The holds the daemon keeps (being judged, or pending a decision): key → nonce.
    pub kept: HashMap<HoldKey, u64>,
    /// The processes the daemon stopped for the lookups it holds pending.
    pub lookups: HashSet<u32>,
    /// The processes of every tagged cgroup that [`find`] could name: those waiting in a
    /// frozen cell, and those keyturn recorded stopping (`stops`).
    pub processes: Vec<Observed>,
    /// Frozen cells with no process left in them.
    pub empty_cells: Vec<PathBuf>,
}

/// Something the invariant does not account for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Orphan {
    /// A pending kernel record no kept hold stands for: its thread may be stopped, and
    /// nobody would ever be asked about it.
    Record { key: HoldKey, hold: Hold },
    /// A kept hold whose kernel record is gone or replaced: it can never be released.
    Lost { key: HoldKey },
    /// A process keyturn stopped that has no kept hold; `start_ticks` as it was observed,
    /// so that a pid reused since is never taken for it.
    Stopped { pid: u32, start_ticks: u64 },
    /// A process waiting in a frozen cell that has no kept hold.
    Frozen { pid: u32, start_ticks: u64, cell: PathBuf },
}

impl Orphan {
    /// Why it is an orphan, for the audit trail.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Record { .. } => "a kernel hold record that no pending hold stands for",
            Self::Lost { .. } => "a pending hold whose kernel record is gone or replaced",
            Self::Stopped { .. } => "stopped by keyturn with no pending hold",
            Self::Frozen { .. } => "in a frozen cell with no pending hold",
        }
    }
}

/// Everything in `snapshot` the invariant does not account for. Records and stops younger
/// than [`GRACE_NS`] are left for the daemon's intake; a process counts as keyturn's stop
/// only if the kernel recorded stopping that very process (same start time), so a process
/// stopped by anyone else (a shell's job control) is left alone.
pub fn find(snapshot: &Snapshot) -> Vec<Orphan> {
    let old = |at_ns: u64| snapshot.now_ns.saturating_sub(at_ns) >= GRACE_NS;
    let mut orphans = Vec::new();
    let recorded: HashMap<HoldKey, &Hold> = snapshot.records.iter().map(|(key, hold)| (*key, hold)).collect();
    for (key, hold) in &snapshot.records {
        if hold.state == hold_state::PENDING && !snapshot.kept.contains_key(key) && old(hold.held_at_ns) {
            orphans.push(Orphan::Record { key: *key, hold: *hold });
        }
    }
    for (key, nonce) in &snapshot.kept {
        if recorded.get(key).is_none_or(|hold| hold.nonce != *nonce) {
            orphans.push(Orphan::Lost { key: *key });
        }
    }
    let kept_processes = snapshot.kept_processes();
    // A process with a record of its own is answered through the record.
    let recorded_processes: HashSet<u32> = orphans
        .iter()
        .filter_map(|orphan| match orphan {
            Orphan::Record { key, .. } => Some(key.tgid),
            _ => None,
        })
        .collect();
    let stops: HashMap<u32, &Stop> = snapshot.stops.iter().map(|(pid, stop)| (*pid, stop)).collect();
    for process in &snapshot.processes {
        if kept_processes.contains(&process.pid) || recorded_processes.contains(&process.pid) {
            continue;
        }
        let (pid, start_ticks) = (process.pid, process.start_ticks);
        if let Some(cell) = &process.cell {
            orphans.push(Orphan::Frozen { pid, start_ticks, cell: cell.clone() });
        } else if process.stopped
            && stops.get(&process.pid).is_some_and(|stop| {
                stop.process_start / NS_PER_TICK == process.start_ticks && old(stop.stopped_at_ns)
            })
        {
            orphans.push(Orphan::Stopped { pid, start_ticks });
        }
    }
    orphans
}

/// How long a decided deferred hold's record waits for the retry it lets through or fails.
const DEFERRED_DECISION_NS: u64 = 60_000_000_000;

/// Decided hold records nothing will consume: their thread (or, for a deferred hold, their
/// process) is gone, or a deferred hold was decided a minute ago and never retried. The
/// hold table is the host's: left there, they would fill it and refuse every hold.
pub fn stale_records(snapshot: &Snapshot) -> Vec<(HoldKey, u64)> {
    let started = |path: String, start_ns: u64| {
        procfs::stat_at(Path::new(&path)).is_some_and(|stat| stat.start_ticks == start_ns / NS_PER_TICK)
    };
    snapshot
        .records
        .iter()
        .filter(|(key, hold)| {
            if hold.state == hold_state::PENDING {
                return false;
            }
            if key.tid == 0 {
                return snapshot.now_ns.saturating_sub(hold.decided_at_ns) >= DEFERRED_DECISION_NS
                    || !started(format!("/proc/{}/stat", key.tgid), hold.process_start);
            }
            !started(format!("/proc/{}/task/{}/stat", key.tgid, key.tid), hold.thread_start)
        })
        .map(|(key, hold)| (*key, hold.nonce))
        .collect()
}

/// Stop records that no longer stand for a stopped process: the process is gone (or its
/// pid names another process now), or it runs and no kept hold is its.
pub fn stale_stops(snapshot: &Snapshot) -> Vec<u32> {
    let kept_processes = snapshot.kept_processes();
    snapshot
        .stops
        .iter()
        .filter(|(pid, stop)| {
            if kept_processes.contains(pid) || snapshot.now_ns.saturating_sub(stop.stopped_at_ns) < GRACE_NS {
                return false;
            }
            procfs::stat(*pid)
                .is_none_or(|stat| stat.start_ticks != stop.process_start / NS_PER_TICK || stat.state != b'T')
        })
        .map(|(pid, _)| *pid)
        .collect()
}

impl Snapshot {
    /// The processes of the holds the daemon keeps: held by the kernel, or for a lookup.
    fn kept_processes(&self) -> HashSet<u32> {
        self.kept.keys().map(|key| key.tgid).chain(self.lookups.iter().copied()).collect()
    }

    /// Adds the processes of the cgroups at `dirs` and of every cgroup below them that
    /// [`find`] could name, and their empty frozen cells. Only those processes are looked
    /// at in `/proc`: this runs on every tick, for every agent.
    pub fn observe(&mut self, dirs: impl IntoIterator<Item = PathBuf>) {
        let stopped_by_keyturn: HashSet<u32> = self.stops.iter().map(|(pid, _)| *pid).collect();
        for dir in dirs {
            self.observe_below(&dir, &stopped_by_keyturn);
        }
    }

    fn observe_below(&mut self, dir: &Path, stopped_by_keyturn: &HashSet<u32>) {
        let cell = dir
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(CELL_PREFIX))
            .then(|| dir.to_path_buf());
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<u32> = procs.lines().filter_map(|line| line.parse().ok()).collect();
        if pids.is_empty()
            && let Some(cell) = &cell
        {
            self.empty_cells.push(cell.clone());
        }
        for pid in pids.into_iter().filter(|pid| cell.is_some() || stopped_by_keyturn.contains(pid)) {
            if let Some(stat) = procfs::stat(pid) {
                let stopped = stat.state == b'T';
                self.processes.push(Observed {
                    pid,
                    stopped,
                    start_ticks: stat.start_ticks,
                    cell: cell.clone(),
                });
            }
        }
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                self.observe_below(&entry.path(), stopped_by_keyturn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{Action, event_type};

    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const NOW: u64 = 100 * SECOND;

    fn hold(nonce: u64, state: u32, held_at_ns: u64) -> Hold {
        Hold {
            action: Action::default(),
            nonce,
            thread_start: 5 * SECOND,
            process_start: 5 * SECOND,
            root: 1,
            held_at_ns,
            decided_at_ns: 0,
            state,
            event_type: event_type::HELD,
            rogue_reported: 0,
            padding: 0,
        }
    }

    fn key(tgid: u32, tid: u32) -> HoldKey {
        HoldKey { tgid, tid }
    }

    fn stopped(pid: u32) -> Observed {
        Observed { pid, stopped: true, start_ticks: 5 * SECOND / NS_PER_TICK, cell: None }
    }

    fn stop(pid: u32, at_ns: u64) -> (u32, Stop) {
        (pid, Stop { process_start: 5 * SECOND, stopped_at_ns: at_ns })
    }

    fn snapshot() -> Snapshot {
        Snapshot { now_ns: NOW, ..Snapshot::default() }
    }

    #[test]
    fn a_kept_hold_with_its_record_and_its_stop_is_accounted_for() {
        let mut s = snapshot();
        s.records.push((key(10, 11), hold(7, hold_state::PENDING, NOW - 60 * SECOND)));
        s.kept.insert(key(10, 11), 7);
        s.stops.push(stop(10, NOW - 60 * SECOND));
        s.processes.push(stopped(10));
        assert_eq!(find(&s), []);
        assert!(stale_stops(&s).is_empty());
    }

    #[test]
    fn an_unreported_pending_record_is_an_orphan_once_its_grace_is_over() {
        let mut s = snapshot();
        s.records.push((key(10, 11), hold(7, hold_state::PENDING, NOW - GRACE_NS)));
        s.records.push((key(20, 20), hold(8, hold_state::PENDING, NOW - GRACE_NS + 1)));
        s.records.push((key(30, 30), hold(9, hold_state::APPROVED, NOW - 60 * SECOND)));
        s.stops.push(stop(10, NOW - 60 * SECOND));
        s.processes.push(stopped(10));
        // The stopped process is answered once, through its record.
        assert_eq!(find(&s), [Orphan::Record { key: key(10, 11), hold: s.records[0].1 }]);
    }

    #[test]
    fn a_kept_hold_without_its_record_is_lost() {
        let mut s = snapshot();
        s.kept.insert(key(10, 11), 7);
        s.kept.insert(key(20, 21), 8);
        s.records.push((key(20, 21), hold(9, hold_state::PENDING, NOW)));
        let mut found = find(&s);
        found.sort_by_key(|orphan| match orphan {
            Orphan::Lost { key } => key.tgid,
            _ => 0,
        });
        assert_eq!(found, [Orphan::Lost { key: key(10, 11) }, Orphan::Lost { key: key(20, 21) }]);
    }

    #[test]
    fn only_keyturns_own_stops_of_that_very_process_are_orphans() {
        let mut s = snapshot();
        s.stops.push(stop(10, NOW - GRACE_NS));
        s.stops.push(stop(20, NOW - GRACE_NS));
        s.stops.push(stop(40, NOW - 1));
        s.processes.push(stopped(10));
        // Same pid, another process: started later than the stop's.
        s.processes.push(Observed { start_ticks: 6 * SECOND / NS_PER_TICK, ..stopped(20) });
        // Stopped by someone else: keyturn never stopped it.
        s.processes.push(stopped(30));
        // Stopped a moment ago: its event may not have arrived yet.
        s.processes.push(stopped(40));
        // Running.
        s.processes.push(Observed { stopped: false, ..stopped(50) });
        assert_eq!(find(&s), [Orphan::Stopped { pid: 10, start_ticks: 5 * SECOND / NS_PER_TICK }]);
    }

    /// Decided records nothing will consume go: a dead thread's, and a deferred hold's
    /// decided a minute ago; a live thread's approval waiting for its restart stays.
    #[test]
    fn decided_records_nothing_will_consume_are_stale() {
        let me = std::process::id();
        let started = procfs::stat(me).unwrap().start_ticks * NS_PER_TICK;
        let mine = |state, decided_at_ns| Hold {
            thread_start: started,
            process_start: started,
            decided_at_ns,
            ..hold(1, state, NOW - SECOND)
        };
        let mut s = snapshot();
        s.records.push((key(me, me), mine(hold_state::APPROVED, NOW - SECOND)));
        s.records.push((key(me, 0), mine(hold_state::APPROVED, NOW - SECOND)));
        s.records.push((key(me, 0), mine(hold_state::DENIED, NOW - DEFERRED_DECISION_NS)));
        s.records.push((key(me, u32::MAX), mine(hold_state::APPROVED, NOW - SECOND)));
        s.records.push((key(me, me), mine(hold_state::PENDING, 0)));
        let stale: Vec<HoldKey> = stale_records(&s).into_iter().map(|(key, _)| key).collect();
        assert_eq!(stale, [key(me, 0), key(me, u32::MAX)]);
    }

    #[test]
    fn a_frozen_cell_without_a_kept_hold_is_an_orphan() {
        let mut s = snapshot();
        let cell = PathBuf::from("/sys/fs/cgroup/agent/keyturn-held-10");
        s.processes.push(Observed { cell: Some(cell.clone()), ..stopped(10) });
        s.processes.push(Observed { cell: Some(cell.with_file_name("keyturn-held-11")), ..stopped(11) });
        s.kept.insert(key(11, 11), 3);
        s.records.push((key(11, 11), hold(3, hold_state::PENDING, NOW)));
        assert_eq!(find(&s), [Orphan::Frozen { pid: 10, start_ticks: 5 * SECOND / NS_PER_TICK, cell }]);
    }
}
