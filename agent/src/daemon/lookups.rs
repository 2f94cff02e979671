//! Lookups keyturn's resolver holds: listed as egress holds of their own kind (protocol
//! `dns`, the name, the server the agent asked), their sender stopped until decided.

use agent_common::{Action, Hold, HoldEvent, event_type, hold_state, kind};
use tokio::sync::oneshot;

use super::{Daemon, decisions::Held, grants::unix_now};
use crate::{
    audit::AuditEvent,
    dns::{LookupDecision, LookupHold},
    hold::{
        context::{self, FromMemory},
        process::{HeldError, LookupProcess, NS_PER_TICK, OnDeny},
        procfs,
    },
    kernel::monotonic_ns,
    policy::Asks,
};

/// A held lookup's side of its pending hold: the resolver waits on `decided`.
pub(super) struct HeldLookup {
    decided: oneshot::Sender<LookupDecision>,
    process: LookupProcess,
}

impl HeldLookup {
    /// Whether it can no longer be decided: its process exited, or the resolver stopped
    /// waiting.
    pub(super) fn gone(&self) -> bool {
        self.process.exited() || self.decided.is_closed()
    }

    /// The process keyturn stopped for it.
    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Approved, as its hold asked (`asks`): the resolver asks upstream, answers, then
    /// resumes the process (or it is resumed here, if the resolver is gone).
    pub(super) fn approve(self, enforcer: &mut crate::kernel::Enforcer, asks: Asks) -> Result<(), HeldError> {
        let decision = LookupDecision { approved: Some(asks), process: Some(self.process) };
        self.decided.send(decision).or_else(|unsent| resume(enforcer, unsent))
    }

    /// Refused: killed if `on_deny` says so; otherwise answered `REFUSED`, then resumed.
    pub(super) fn deny(
        self,
        enforcer: &mut crate::kernel::Enforcer,
        on_deny: OnDeny,
    ) -> Result<(), HeldError> {
        if on_deny == OnDeny::Kill {
            return self.process.kill(enforcer);
        }
        let decision = LookupDecision { approved: None, process: Some(self.process) };
        self.decided.send(decision).or_else(|unsent| resume(enforcer, unsent))
    }
}

/// Resumes the process of a decision the resolver was no longer there to take.
fn resume(enforcer: &mut crate::kernel::Enforcer, unsent: LookupDecision) -> Result<(), HeldError> {
    let Some(process) = unsent.process else { return Ok(()) };
    process.resume(|pid| {
        let _ = enforcer.forget_stop(pid);
    })
}

impl Daemon {
    /// A lookup the resolver holds: its sender stopped and the hold listed. A grant that
    /// covers it (the resolver's copy may be older) approves it at once. It is refused
    /// (the decision dropped), audited, when its agent is no longer known, already has its
    /// maximum of pending holds (kernel and lookup holds alike), or its sender cannot be
    /// stopped (gone, or no longer under the agent's root).
    pub(super) fn hold_lookup(&mut self, hold: LookupHold) {
        let LookupHold { sender, name, rule, asks, notify, decided } = hold;
        let root = sender.root;
        let action = Action {
            kind: kind::LOOKUP,
            protocol: sender.protocol,
            port: sender.port,
            addr: sender.addr,
            ..Action::default()
        };
        // Its process gone already: nothing to hold, stop or describe.
        let Some(event) = lookup_event(&sender, action) else { return };
        let id = context::hold_id(&event);
        if self.agent_and_policy(root).is_none() {
            return self.refuse_lookup(id, sender.tgid, "no agent known for this cgroup".into());
        }
        if self.grants.iter().any(|grant| grant.covers(root, &action, Some(&name), asks, unix_now())) {
            let why = Some("an earlier approval's scope covers it".into());
            self.record(AuditEvent::Release { id, by: "keyturn".into(), why });
            self.stats.auto_released += 1;
            let _ = decided.send(LookupDecision { approved: Some(asks), process: None });
            return;
        }
        let pending = self.pending.values().filter(|pending| pending.root == root).count();
        if pending >= usize::try_from(self.config.max_pending).unwrap_or(usize::MAX) {
            let error = format!("the agent has {pending} holds pending, its maximum");
            return self.refuse_lookup(id, sender.tgid, error);
        }
        let process = match LookupProcess::stop(&mut self.enforcer, &self.hierarchy, sender.tgid, root) {
            Ok(process) => process,
            Err(e) => {
                return self.refuse_lookup(id, sender.tgid, format!("its sender could not be stopped: {e}"));
            }
        };
        let mut view = self.view_of(&event, None, FromMemory::read(&event, None));
        (view.domain, view.policy_rule, view.notify) = (Some(name.to_string()), rule, notify);
        (view.quorum, view.in_console) = (asks.quorum, asks.in_console);
        self.list_pending(Held::Lookup(HeldLookup { decided, process }), view, &event, Vec::new(), false);
    }

    /// Audits a held lookup refused before it was listed (its decision is dropped: the
    /// resolver answers `REFUSED`).
    fn refuse_lookup(&mut self, id: String, pid: u32, error: String) {
        tracing::warn!(id, pid, %error, "DNS: refused a held lookup");
        self.record(AuditEvent::HoldRefused { id, pid, error: error.into() });
    }
}

/// The hold record a lookup by `sender` would have, had a hook held it: what the views,
/// the audit trail and the console describe. `None` once the process is gone.
fn lookup_event(sender: &agent_common::DnsSender, action: Action) -> Option<HoldEvent> {
    let stat = procfs::stat(sender.tgid)?;
    let (uid, gid) = procfs::ids(sender.tgid)?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).ok()?;
    let now = monotonic_ns();
    let process_start = stat.start_ticks * NS_PER_TICK;
    let hold = Hold {
        action,
        nonce: u64::from_ne_bytes(nonce),
        thread_start: process_start,
        process_start,
        root: sender.root,
        held_at_ns: now,
        decided_at_ns: 0,
        state: hold_state::PENDING,
        event_type: event_type::HELD,
        rogue_reported: 0,
        padding: 0,
    };
    let mut comm = [0u8; 16];
    let name = &stat.comm[..stat.comm.len().min(15)];
    comm[..name.len()].copy_from_slice(name);
    Some(HoldEvent {
        event_type: event_type::HELD,
        policy: 0,
        hold,
        at_ns: now,
        cgroup: 0,
        tgid: sender.tgid,
        tid: sender.tid,
        uid,
        gid,
        comm,
        path: [0; agent_common::capacity::PATH_BYTES],
    })
}

#[cfg(test)]
mod tests {
    use agent_common::DnsSender;

    use super::*;

    #[test]
    fn a_lookup_is_described_as_its_sender_asked_it() {
        let pid = std::process::id();
        let sender =
            DnsSender { root: 7, tgid: pid, tid: pid, protocol: 17, port: 53, ..DnsSender::default() };
        let action = Action { kind: kind::LOOKUP, port: 53, ..Action::default() };
        let event = lookup_event(&sender, action).expect("this process");
        let view = context::describe(&event, "agent", "/agent", "default", None, FromMemory::default());
        assert_eq!((view.protocol.as_deref(), view.port, view.pid), (Some("dns"), Some(53), pid));
        assert_eq!(view.uid, nix::unistd::getuid().as_raw(), "the real uid, whatever /proc/PID's owner");
        assert_eq!(context::hold_id(&event).len(), 12);
        assert_ne!(lookup_event(&sender, action).unwrap().hold.nonce, event.hold.nonce, "a nonce per hold");
    }
}
