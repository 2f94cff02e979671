//! The orphan sweep: every stop keyturn made has a pending hold, checked on every tick.

use proto::v1::CloseReason;

use std::time::{Duration, Instant};

use super::{
    Daemon,
    decisions::{Held, Pending, denial_outcome},
};

/// How long something must stay an orphan, sweep after sweep, before it is settled.
const SUSPECT_GRACE: Duration = Duration::from_secs(2);
use crate::hold::{
    orphans::{self, Orphan},
    process::{self, HeldError, HeldProcess, OnDeny, event_from_record},
};
use crate::{audit::AuditEvent, dns::Resolver};

impl Daemon {
    /// Enforces the invariant that no process in a tagged cgroup is stopped or frozen by
    /// keyturn without a pending hold (see [`orphans`]): every orphan is settled at once by
    /// its policy's `on_timeout`, audited as `hold_orphaned` and counted.
    pub(super) fn sweep_orphans(&mut self) {
        // Events already reported are holds, not orphans.
        self.drain_events();
        let mut snapshot = orphans::Snapshot {
            now_ns: crate::kernel::monotonic_ns(),
            records: self.enforcer.holds().unwrap_or_default(),
            stops: self.enforcer.stops().unwrap_or_default(),
            kept: self.holds.kept(),
            lookups: self.stopped_for_lookups(),
            ..orphans::Snapshot::default()
        };
        snapshot.observe(self.agents.values().filter_map(|agent| self.hierarchy.dir(&agent.path).ok()));
        for cell in snapshot.empty_cells.drain(..) {
            self.holds.remove_cell_later(cell);
        }
        // An orphan is settled only once it has stayed one for a grace period, however
        // old the kernel says it is: its event may have been waiting behind others.
        let found = orphans::find(&snapshot);
        let now = Instant::now();
        self.suspects.retain(|orphan, _| found.contains(orphan));
        for orphan in found {
            let since = *self.suspects.entry(orphan.clone()).or_insert(now);
            if now.duration_since(since) >= SUSPECT_GRACE {
                self.suspects.remove(&orphan);
                self.settle_orphan(&orphan);
            }
        }
        for pid in orphans::stale_stops(&snapshot) {
            let _ = self.enforcer.forget_stop(pid);
        }
        for (key, nonce) in orphans::stale_records(&snapshot) {
            let _ = self.enforcer.forget(key, nonce);
        }
    }

    /// The processes stopped for lookups: held, or decided and waiting for their answers.
    fn stopped_for_lookups(&self) -> std::collections::HashSet<u32> {
        let held = self.pending.values().filter_map(|pending| match &pending.held {
            Held::Lookup(lookup) => Some(lookup.pid()),
            Held::Kernel(_) => None,
        });
        let answering = self.resolver.as_ref().map(Resolver::answering).unwrap_or_default();
        held.chain(answering).collect()
    }

    /// The `on_timeout` of the policy of the agent tagged at `root`: kill if none is known.
    pub(super) fn on_timeout_of(&self, root: u64) -> OnDeny {
        self.agents
            .get(&root)
            .and_then(|agent| self.policies.get(&agent.policy))
            .map_or(OnDeny::Kill, |policy| policy.on_timeout)
    }

    /// Settles one orphan and audits how.
    pub(super) fn settle_orphan(&mut self, orphan: &Orphan) {
        let (pid, tid, outcome) = match orphan {
            Orphan::Record { key, hold } => {
                let on_timeout = self.on_timeout_of(hold.root);
                let outcome = if let Ok(held) = HeldProcess::open(&event_from_record(*key, hold)) {
                    match held.deny(&mut self.enforcer, on_timeout) {
                        Ok(()) => {
                            self.holds.remove_cell_later_of(&held);
                            denial_outcome(on_timeout)
                        }
                        Err(e) => format!("could not be settled: {e}"),
                    }
                } else {
                    let _ = self.enforcer.forget(*key, hold.nonce);
                    let _ = self.enforcer.finish(hold.root);
                    "record removed: the process is gone".to_owned()
                };
                (key.tgid, Some(key.tid), outcome)
            }
            Orphan::Lost { key } => {
                // Its record is gone: an approval could never release it, and a denial
                // could never fail its syscall. Only a kill ends the stop.
                let holds_key = |pending: &Pending| matches!(pending.held, Held::Kernel(k) if k == *key);
                if let Some(id) = self.pending.iter().find(|(_, p)| holds_key(p)).map(|(id, _)| id.clone())
                    && let Some(pending) = self.pending.remove(&id)
                {
                    self.report_closed(&id, pending.nonce, CloseReason::Abandoned);
                    self.decision(&id, "closed: its kernel record was lost");
                }
                let outcome = match self.holds.deny(&mut self.enforcer, *key, OnDeny::Kill) {
                    Ok(_) | Err(HeldError::Gone(_)) => "killed".to_owned(),
                    Err(e) => format!("could not be settled: {e}"),
                };
                (key.tgid, Some(key.tid), outcome)
            }
            Orphan::Stopped { pid, start_ticks } | Orphan::Frozen { pid, start_ticks, .. } => {
                let outcome = match process::kill(&mut self.enforcer, *pid, *start_ticks) {
                    Ok(()) => "killed".to_owned(),
                    Err(HeldError::Gone(_)) => "gone".to_owned(),
                    Err(e) => format!("could not be settled: {e}"),
                };
                if let Orphan::Frozen { cell, .. } = orphan {
                    self.holds.remove_cell_later(cell.clone());
                }
                (*pid, None, outcome)
            }
        };
        tracing::error!(pid, reason = orphan.reason(), %outcome, "settled a stop no pending hold accounted for");
        self.stats.orphaned += 1;
        self.record(AuditEvent::HoldOrphaned { pid, tid, reason: orphan.reason().into(), outcome });
    }
}
