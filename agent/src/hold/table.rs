//! The held actions user space knows of, kept in step with the kernel's events: every
//! hold gets exactly one verdict, and tampering with a held process is answered.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use agent_common::{HoldEvent, HoldKey, event_type};

use crate::{
    cgroup::{self, Hierarchy},
    hold::process::{HeldError, HeldProcess, OnDeny, hold_key},
    kernel::{Enforcer, EnforcerError},
};

/// What an event meant, for the audit trail and the caller.
#[derive(Debug)]
pub enum Happened {
    /// A new hold is waiting for a decision.
    Held(HoldKey),
    /// The process of a new hold was gone before it could be opened: closed at once.
    GoneBeforeOpen(HoldKey),
    /// A SIGCONT that was not keyturn's hit a held process that the kernel held again.
    RogueContinueReheld(HoldKey),
    /// keyturn resumed the process for another of its threads' decisions, and this
    /// thread's restarted syscall found its own hold still pending: held again.
    ReheldAfterRelease(HoldKey),
    /// A SIGCONT that was not keyturn's hit an exec stopped after the fact while it was
    /// frozen: it cannot run, and the hold stands.
    RogueContinueFrozen(HoldKey),
    /// A SIGCONT that was not keyturn's released an exec stopped after the fact before it
    /// could be frozen: the process was killed.
    RogueContinueKilled(HoldKey),
}

#[derive(Default)]
pub struct Holds {
    held: HashMap<HoldKey, HeldProcess>,
    hierarchy: Option<Hierarchy>,
    /// Frozen cells of closed holds whose process was still leaving them: removed later.
    leftover_cells: Vec<PathBuf>,
    /// Holds whose process keyturn resumed for another thread's decision: their thread's
    /// restarted syscall is held again, and that is no rogue SIGCONT.
    expected_reholds: HashSet<HoldKey>,
}

impl Holds {
    /// Takes in one kernel event.
    pub fn on_event(&mut self, enforcer: &mut Enforcer, event: &HoldEvent) -> Result<Happened, HeldError> {
        let key = hold_key(event);
        if event.event_type == event_type::ROGUE_CONTINUE {
            let stopped = self
                .held
                .get(&HoldKey { tgid: event.tgid, tid: event.tgid })
                .filter(|held| held.event().event_type == event_type::STOPPED);
            return match stopped {
                Some(held) if held.frozen_since_ns().is_some_and(|since| since < event.at_ns) => {
                    Ok(Happened::RogueContinueFrozen(held.key()))
                }
                Some(held) => {
                    let key = held.key();
                    held.deny(enforcer, OnDeny::Kill)?;
                    let leftover = held.remove_cell();
                    self.leftover_cells.extend(leftover);
                    self.held.remove(&key);
                    Ok(Happened::RogueContinueKilled(key))
                }
                None if self.expected_reholds.remove(&key) => Ok(Happened::ReheldAfterRelease(key)),
                None => Ok(Happened::RogueContinueReheld(key)),
            };
        }
        // A new hold on a thread replaces whatever that thread had before.
        self.close(enforcer, key)?;
        match HeldProcess::open(event) {
            Ok(held) => {
                self.held.insert(key, held);
                Ok(Happened::Held(key))
            }
            Err(HeldError::Gone(_)) => {
                enforcer.forget(key, event.hold.nonce)?;
                enforcer.finish(event.hold.root)?;
                Ok(Happened::GoneBeforeOpen(key))
            }
            Err(e) => Err(e),
        }
    }

    /// Readies hold `key` for a long wait: an exec stopped after the fact is frozen. If
    /// that fails (a cgroup layout that does not allow it), a stray SIGCONT is still
    /// answered by a kill. Holds decided at once are never frozen: a stray SIGCONT in that
    /// short time is answered by a kill too.
    pub fn park(&mut self, key: HoldKey) {
        let Some(held) = self.held.get_mut(&key).filter(|h| h.event().event_type == event_type::STOPPED)
        else {
            return;
        };
        if self.hierarchy.is_none() {
            self.hierarchy = Hierarchy::find().ok();
        }
        let Some(hierarchy) = &self.hierarchy else { return };
        if let Err(e) = held.freeze(hierarchy) {
            tracing::warn!(pid = held.event().tgid, error = %e, "could not freeze a held exec; a stray SIGCONT will kill it");
        }
    }

    pub fn get(&self, key: HoldKey) -> Option<&HeldProcess> {
        self.held.get(&key)
    }

    /// The holds kept here (being judged or waiting for a decision): key → nonce.
    pub fn kept(&self) -> HashMap<HoldKey, u64> {
        self.held.iter().map(|(key, held)| (*key, held.event().hold.nonce)).collect()
    }

    /// Removes the frozen cell of `held`, a hold kept elsewhere, once its process left it.
    pub fn remove_cell_later_of(&mut self, held: &HeldProcess) {
        self.leftover_cells.extend(held.remove_cell());
    }

    /// Keeps `cell` to remove once its process has left it.
    pub fn remove_cell_later(&mut self, cell: PathBuf) {
        self.leftover_cells.push(cell);
    }

    /// Closes hold `key` without a decision (its process is gone, or its thread moved on
    /// to a new hold): its kernel record, if still this hold's, and its pending slot.
    pub fn close(&mut self, enforcer: &mut Enforcer, key: HoldKey) -> Result<(), HeldError> {
        if let Some(held) = self.held.remove(&key) {
            enforcer.forget(key, held.event().hold.nonce)?;
            enforcer.finish(held.event().hold.root)?;
            self.leftover_cells.extend(held.remove_cell());
        }
        Ok(())
    }

    /// Tries again to remove the frozen cells that outlived their holds.
    pub fn sweep_cells(&mut self) {
        self.leftover_cells.retain(|cell| cgroup::remove(cell).is_err());
    }

    /// Takes hold `key` out to be decided. Its process is about to be resumed (or killed):
    /// the other holds of the process will be held again, which the kernel then reports.
    fn take(&mut self, enforcer: &mut Enforcer, key: HoldKey) -> Result<HeldProcess, HeldError> {
        let held = self.held.remove(&key).ok_or(HeldError::Enforcer(EnforcerError::NoHold(key)))?;
        self.expected_reholds.retain(|expected| self.held.contains_key(expected));
        for (other, nonce) in self
            .held
            .iter()
            .filter(|(other, _)| other.tgid == key.tgid)
            .map(|(k, h)| (*k, h.event().hold.nonce))
        {
            enforcer.expect_rehold(other, nonce)?;
            self.expected_reholds.insert(other);
        }
        Ok(held)
    }

    /// Releases the held action `key`.
    pub fn approve(&mut self, enforcer: &mut Enforcer, key: HoldKey) -> Result<HeldProcess, HeldError> {
        let held = self.take(enforcer, key)?;
        held.release(enforcer)?;
        Ok(held)
    }

    /// Refuses the held action `key`.
    pub fn deny(
        &mut self,
        enforcer: &mut Enforcer,
        key: HoldKey,
        on_deny: OnDeny,
    ) -> Result<HeldProcess, HeldError> {
        let held = self.take(enforcer, key)?;
        held.deny(enforcer, on_deny)?;
        self.leftover_cells.extend(held.remove_cell());
        Ok(held)
    }
}
