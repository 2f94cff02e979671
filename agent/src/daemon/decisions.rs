//! Decisions: pending holds, the rules of who may decide them, and what approval, denial
//! and closing do.

use std::{collections::HashSet, time::Instant};

use agent_common::{Action, HoldKey};
use host_client::ClientEvent;
use proto::v1::{CloseReason, Decision};
use serde_json::json;

use super::{
    Daemon,
    api::{Peer, Reply, Scope},
    grants::{Grant, unix_now},
    lookups::HeldLookup,
};
use crate::{
    audit::{AuditEvent, DecidedBy},
    console_link,
    hold::{
        context::{self, HoldView},
        process::{HeldError, OnDeny},
    },
};

/// Why a pending hold was closed without a decision: (the audit record's `why`, the end of
/// "hold ID was …" for a late decision).
pub(super) type Closed = (&'static str, &'static str);

pub(super) const EXITED: Closed = ("the process exited", "closed before a decision: the process exited");

pub(super) const SUPERSEDED: Closed = (
    "the process exited or left the held syscall; its pid carries a newer hold",
    "closed before a decision: the process exited or left the held syscall",
);

/// What a pending hold holds.
pub(super) enum Held {
    /// A syscall the kernel holds, by its thread.
    Kernel(HoldKey),
    /// A lookup keyturn's resolver holds.
    Lookup(HeldLookup),
}

pub(super) struct Pending {
    pub(super) held: Held,
    /// The kernel's nonce for this hold: a console decision must name it.
    pub(super) nonce: u64,
    pub(super) view: HoldView,
    pub(super) root: u64,
    pub(super) action: Action,
    pub(super) deadline: Instant,
    pub(super) on_timeout: OnDeny,
    pub(super) on_deny: OnDeny,
}

/// Who decides a hold: an approver on this host (known by the socket's credentials), or a
/// person at the console (named in a decision the client verified).
pub(super) enum Decider<'a> {
    Local(Peer),
    Console(&'a Decision),
}

impl Decider<'_> {
    /// Their name in the audit trail.
    pub(super) fn name(&self) -> String {
        match self {
            Self::Local(peer) => context::user_name(peer.uid),
            Self::Console(decision) => decision.decided_by.clone(),
        }
    }

    /// Who they are, as the audit trail records a decision.
    pub(super) fn audited(&self) -> DecidedBy {
        match self {
            Self::Local(peer) => DecidedBy::Local { by_uid: peer.uid, by_user: context::user_name(peer.uid) },
            Self::Console(decision) => DecidedBy::Console {
                by: decision.decided_by.clone(),
                via: "console".into(),
                approvers: decision.approvers.clone(),
            },
        }
    }

    /// What the console is told about a hold they decided.
    pub(super) fn closed(&self, approved: bool) -> CloseReason {
        match (self, approved) {
            (Self::Console(_), _) => CloseReason::Decided,
            (Self::Local(_), true) => CloseReason::ApprovedLocally,
            (Self::Local(_), false) => CloseReason::DeniedLocally,
        }
    }
}

/// Why `decider` may not decide the pending hold `id` (approve it if `approve`, else deny
/// it), if they may not: the rules every decision meets, wherever it comes from.
pub(super) fn refusal(id: &str, pending: &Pending, decider: &Decider, approve: bool) -> Option<String> {
    match decider {
        Decider::Local(peer) if pending.view.uid == peer.uid => Some(format!(
            "refused: you run as uid {}, the user of the held process; no one approves their own action",
            peer.uid
        )),
        Decider::Local(_) if approve && pending.view.quorum > 1 => Some(format!(
            "refused: hold {id} needs {} distinct approvers; approve it in the console \
             (keyturn deny still works here)",
            pending.view.quorum
        )),
        Decider::Console(decision) if decision.nonce != pending.nonce => Some(format!(
            "decision for hold {id} names nonce {}, but the hold's nonce is {}",
            decision.nonce, pending.nonce
        )),
        // The console counts approvers; the host checks its count against its own policy,
        // naming people as the console compares them: without regard to case.
        Decider::Console(decision) if approve => {
            let approvers: HashSet<String> = decision.approvers.iter().map(|a| a.to_lowercase()).collect();
            if approvers.len() < pending.view.quorum as usize {
                Some(format!(
                    "approval of hold {id} names {} distinct approvers, but the hold needs {}",
                    approvers.len(),
                    pending.view.quorum
                ))
            } else if approvers.contains(&pending.view.requester.to_lowercase()) {
                Some(format!(
                    "approval of hold {id} counts its requester {:?} among the approvers",
                    pending.view.requester
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// What a denial under `on_deny` does to the held action, as the audit trail says it.
pub(super) fn denial_outcome(on_deny: OnDeny) -> String {
    if on_deny == OnDeny::Kill { "killed" } else { "failed with EPERM" }.to_owned()
}

impl Daemon {
    /// Takes pending hold `id` for `decider` to approve (or deny), or says why they cannot.
    pub(super) fn take_pending(
        &mut self,
        id: &str,
        decider: &Decider,
        approve: bool,
    ) -> Result<Pending, String> {
        if let Decider::Local(peer) = decider {
            self.check_approver(*peer)?;
        }
        if let Some(pending) = self.pending.get(id)
            && let Some(closed) = self.gone(id, &pending.held)
        {
            self.close_gone(id, closed);
        }
        let Some(pending) = self.pending.get(id) else {
            return Err(match self.decided.get(id) {
                Some(how) => format!("hold {id} was {how}"),
                None => format!("unknown hold id {id:?} (see keyturn pending)"),
            });
        };
        if let Some(refusal) = refusal(id, pending, decider, approve) {
            return Err(refusal);
        }
        Ok(self.pending.remove(id).expect("present"))
    }

    /// Why pending hold `id`, which holds `held`, can no longer be decided, if it cannot:
    /// its process exited, or its pid carries a newer hold (the process exited and the pid
    /// was reused, or it left the held syscall). A decision must never reach that newer hold.
    pub(super) fn gone(&self, id: &str, held: &Held) -> Option<Closed> {
        let key = match held {
            Held::Kernel(key) => *key,
            Held::Lookup(lookup) => return lookup.gone().then_some(EXITED),
        };
        match self.holds.get(key) {
            Some(held) if context::hold_id(held.event()) == id => held.exited().then_some(EXITED),
            _ => Some(SUPERSEDED),
        }
    }

    /// Closes pending hold `id` without a decision.
    pub(super) fn close_gone(&mut self, id: &str, (why, how): Closed) {
        let Some(pending) = self.pending.remove(id) else { return };
        self.record(AuditEvent::HoldClosed { id: id.to_owned(), why: why.to_owned() });
        self.report_closed(id, pending.nonce, CloseReason::ProcessExited);
        self.decision(id, how);
        // Only this hold's own record: a newer hold of the same pid is left alone. A lookup's
        // resolver learns it is refused as its decision is dropped.
        if let Held::Kernel(key) = pending.held
            && self.holds.get(key).is_some_and(|held| context::hold_id(held.event()) == id)
            && let Err(e) = self.holds.close(&mut self.enforcer, key)
        {
            tracing::error!(error = %e, "closing the hold of an exited process");
        }
        self.stats.exits += 1;
    }

    /// Remembers how hold `id` ended, for a clear error on a late decision
    /// ("hold ID was HOW").
    pub(super) fn decision(&mut self, id: &str, how: &'static str) {
        self.decided.insert(id.to_owned(), how);
        if self.decided.len() > 10_000 {
            self.decided.clear();
        }
    }

    /// Tells the console, if there is one, that hold `id` ended on this host.
    pub(super) fn report_closed(&self, id: &str, nonce: u64, reason: CloseReason) {
        if let Some(link) = &self.link {
            link.close(id, nonce, reason);
        }
    }

    pub(super) fn approve(&mut self, id: &str, scope: Scope, reason: Option<&str>, peer: Peer) -> Reply {
        let decider = Decider::Local(peer);
        let pending = self.take_pending(id, &decider, true)?;
        self.release(id, pending, scope, reason, &decider)
    }

    pub(super) fn deny(&mut self, id: &str, reason: Option<&str>, peer: Peer) -> Reply {
        let decider = Decider::Local(peer);
        let pending = self.take_pending(id, &decider, false)?;
        self.refuse(id, pending, reason, &decider)
    }

    /// Applies `decider`'s approval of hold `id`, taken from the pending holds.
    pub(super) fn release(
        &mut self,
        id: &str,
        pending: Pending,
        scope: Scope,
        reason: Option<&str>,
        decider: &Decider,
    ) -> Reply {
        self.record(AuditEvent::Decision {
            id: id.to_owned(),
            verdict: "approve".into(),
            reason: reason.map(str::to_owned),
            by: decider.audited(),
            scope: Some(scope),
            on_deny: None,
        });
        self.decision(id, "already decided: approved");
        let until = match scope {
            Scope::Once => None,
            Scope::For(seconds) => Some(Some(unix_now().saturating_add(seconds))),
            Scope::Always => Some(None),
        };
        if let Some(until) = until {
            // An egress hold shown with a name approves the name: the service, not one of
            // its addresses.
            let name = pending.view.domain.as_deref().and_then(|domain| domain.parse().ok());
            let (root, action, quorum) = (pending.root, pending.action, pending.view.quorum);
            let in_console = pending.view.in_console;
            self.grants.push(Grant { root, action, until, name, quorum, in_console });
            self.save_grants();
        }
        let released = match pending.held {
            Held::Kernel(key) => self.holds.approve(&mut self.enforcer, key).map(drop),
            Held::Lookup(lookup) => lookup.approve(&mut self.enforcer, pending.view.asks()),
        };
        let released = released.map_err(|e| e.to_string());
        self.report_closed(id, pending.nonce, decider.closed(true));
        released?;
        self.stats.approvals += 1;
        self.record(AuditEvent::Release { id: id.to_owned(), by: decider.name(), why: None });
        Ok(json!({"id": id, "released": true}))
    }

    /// Applies `decider`'s denial of hold `id`, taken from the pending holds.
    pub(super) fn refuse(
        &mut self,
        id: &str,
        pending: Pending,
        reason: Option<&str>,
        decider: &Decider,
    ) -> Reply {
        self.record(AuditEvent::Decision {
            id: id.to_owned(),
            verdict: "deny".into(),
            reason: reason.map(str::to_owned),
            by: decider.audited(),
            scope: None,
            on_deny: Some(pending.on_deny),
        });
        self.decision(id, "already decided: denied");
        let denied = self.deny_held(pending.held, pending.on_deny).map_err(|e| e.to_string());
        self.report_closed(id, pending.nonce, decider.closed(false));
        denied?;
        self.stats.denials += 1;
        let outcome = denial_outcome(pending.on_deny);
        self.record(AuditEvent::Denied { id: id.to_owned(), outcome: outcome.clone() });
        Ok(json!({"id": id, "outcome": outcome}))
    }

    /// Refuses what `held` holds: kills its process, or fails its syscall (`EPERM`) or
    /// lookup (`REFUSED`), as `on_deny` says.
    pub(super) fn deny_held(&mut self, held: Held, on_deny: OnDeny) -> Result<(), HeldError> {
        match held {
            Held::Kernel(key) => self.holds.deny(&mut self.enforcer, key, on_deny).map(drop),
            Held::Lookup(lookup) => lookup.deny(&mut self.enforcer, on_deny),
        }
    }

    /// What the console link reports.
    pub(super) fn on_console(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected { anchored_records } => {
                tracing::info!("connected to the console");
                self.console_connected = true;
                self.anchored = match crate::audit::head_at(&self.config.audit_dir(), anchored_records) {
                    Ok(head) => head,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the audit trail to anchor it");
                        None
                    }
                };
                self.anchor();
            }
            ClientEvent::Disconnected(_) => {
                self.console_connected = false;
                self.anchored_at = None;
            }
            ClientEvent::Decision(decision) => self.console_decision(&decision),
            ClientEvent::Rejected(rejection) => self.record(AuditEvent::DecisionRejected {
                id: None,
                by: None,
                via: "console".into(),
                reason: rejection.to_string(),
            }),
        }
    }

    /// Anchors the audit trail at the console: where it ends now, witnessing where the
    /// console's latest anchor ended (as the trail has it now).
    pub(super) fn anchor(&mut self) {
        let Some(link) = &self.link else { return };
        let head = self.audit.head();
        link.anchor(&head, self.anchored.as_ref());
        self.anchored = Some(head);
        self.anchored_at = Some(Instant::now());
    }

    /// A decision the client verified (signature, host, a hold it waits on, its nonce),
    /// applied like a local one: refused, and audited, if the hold is no longer pending.
    pub(super) fn console_decision(&mut self, decision: &Decision) {
        let id = decision.hold_id.as_str();
        let decider = Decider::Console(decision);
        // Anything but an explicit approval denies.
        let approve = proto::v1::Verdict::try_from(decision.verdict) == Ok(proto::v1::Verdict::Approve);
        let pending = match self.take_pending(id, &decider, approve) {
            Ok(pending) => pending,
            Err(why) => {
                tracing::warn!(id, by = %decision.decided_by, error = %why, "refused a decision from the console");
                self.record(AuditEvent::DecisionRejected {
                    id: Some(id.to_owned()),
                    by: Some(decision.decided_by.clone()),
                    via: "console".into(),
                    reason: why,
                });
                return;
            }
        };
        let reason = Some(decision.reason.as_str()).filter(|r| !r.is_empty());
        let applied = if approve {
            self.release(id, pending, console_link::scope(decision), reason, &decider)
        } else {
            self.refuse(id, pending, reason, &decider)
        };
        if let Err(error) = applied {
            tracing::error!(id, error = %error, "applying a decision from the console");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use agent_common::{Action, HoldKey};
    use proto::v1::Decision;

    use super::*;

    const HELD_UID: u32 = 1000;

    fn pending(quorum: u32) -> Pending {
        let view =
            HoldView { uid: HELD_UID, quorum, requester: "Alice@example.com".into(), ..HoldView::default() };
        Pending {
            held: Held::Kernel(HoldKey { tgid: 1, tid: 1 }),
            nonce: 7,
            view,
            root: 1,
            action: Action::default(),
            deadline: Instant::now(),
            on_timeout: OnDeny::Kill,
            on_deny: OnDeny::Kill,
        }
    }

    fn local(uid: u32) -> Decider<'static> {
        Decider::Local(Peer { uid, gid: uid, pid: 1 })
    }

    fn console(nonce: u64, approvers: &[&str]) -> Decision {
        Decision {
            nonce,
            approvers: approvers.iter().map(|a| (*a).to_owned()).collect(),
            ..Decision::default()
        }
    }

    #[test]
    fn no_one_decides_their_own_process_s_hold_on_the_host() {
        assert!(
            refusal("h", &pending(1), &local(HELD_UID), true).unwrap().contains("no one approves their own")
        );
        assert!(refusal("h", &pending(1), &local(HELD_UID), false).is_some(), "nor denies it");
        assert_eq!(refusal("h", &pending(1), &local(0), true), None);
    }

    #[test]
    fn a_quorum_is_approved_only_at_the_console_but_denied_anywhere() {
        assert!(refusal("h", &pending(2), &local(0), true).unwrap().contains("needs 2 distinct approvers"));
        assert_eq!(refusal("h", &pending(2), &local(0), false), None);
        let two = console(7, &["bob@example.com", "carol@example.com"]);
        assert_eq!(refusal("h", &pending(2), &Decider::Console(&two), true), None);
    }

    #[test]
    fn a_console_decision_must_name_the_hold_s_nonce() {
        let wrong = console(8, &["bob@example.com"]);
        assert!(refusal("h", &pending(1), &Decider::Console(&wrong), false).unwrap().contains("nonce 8"));
    }

    #[test]
    fn approvers_are_counted_once_each_whatever_their_case_and_never_the_requester() {
        let same_person = console(7, &["bob@example.com", "BOB@example.com"]);
        assert!(
            refusal("h", &pending(2), &Decider::Console(&same_person), true)
                .unwrap()
                .contains("names 1 distinct")
        );
        let requester = console(7, &["alice@EXAMPLE.com", "bob@example.com"]);
        assert!(
            refusal("h", &pending(2), &Decider::Console(&requester), true).unwrap().contains("requester")
        );
        // A denial needs no count.
        assert_eq!(refusal("h", &pending(2), &Decider::Console(&console(7, &[])), false), None);
    }
}
