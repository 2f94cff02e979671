//! Intake: the kernel's events become holds: judged, released, refused or pending.

use std::{
    net::{IpAddr, Ipv6Addr},
    os::unix::ffi::OsStrExt as _,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime},
};

use agent_common::{Action, HoldEvent, HoldKey, hold_state, kind};
use proto::v1::CloseReason;

use super::{
    Daemon,
    agents::Agent,
    decisions::{Held, Pending},
    grants::unix_now,
};

/// How long the judges may go without progress on an exec hold (waiting for a judge, or
/// reading its file) before it goes to a person as it is. A large file read slowly (a
/// 100 MB runtime under emulation) is progress; a read that never returns is not.
const JUDGING_STALL: Duration = Duration::from_secs(10);
/// How long the judges may take over a hold in all, progress or not: a file served a byte
/// at a time must not keep a hold from ever being listed.
const JUDGING_LIMIT: Duration = Duration::from_mins(1);

/// An exec hold with the judges.
pub(super) struct Judging {
    nonce: u64,
    event: HoldEvent,
    restored: bool,
    /// Bytes of its file the judge has read so far, and the count last looked at.
    progress: Arc<AtomicU64>,
    seen: u64,
    deadline: Instant,
    /// When the judges first had it (a policy reload judges it again, from then on).
    since: Instant,
}
use crate::{
    audit::AuditEvent,
    dns::name::Name,
    hold::{
        context::{self, FromMemory, HoldView},
        identity::Executable,
        judge::Judged,
        process::{HeldProcess, OnDeny, event_from_record},
        table::Happened,
    },
    kernel::error_chain,
    policy::{ExecJudgement, Policy, Verdict},
};

impl Daemon {
    /// Holds a previous daemon left in the pinned map: picked up again, none lost.
    pub(super) fn restore_holds(&mut self) {
        let records = self.enforcer.holds().unwrap_or_default();
        for (key, hold) in records {
            if hold.state != hold_state::PENDING {
                continue;
            }
            let event = event_from_record(key, &hold);
            self.on_event(&event, true);
        }
    }

    pub(super) fn drain_events(&mut self) {
        for event in self.enforcer.read_events() {
            self.on_event(&event, false);
        }
    }

    /// Audits the first SIGCONT that was not keyturn's at the hold `key`.
    fn rogue_sigcont(&mut self, event: &HoldEvent, key: HoldKey, outcome: &'static str) {
        let id = context::hold_id(event);
        self.record(AuditEvent::RogueSigcont { id, pid: key.tgid, tid: key.tid, outcome: outcome.into() });
    }

    pub(super) fn on_event(&mut self, event: &HoldEvent, restored: bool) {
        match self.holds.on_event(&mut self.enforcer, event) {
            Ok(Happened::Held(key)) => self.new_hold(key, event, restored),
            Ok(Happened::GoneBeforeOpen(key)) => {
                let why = if key.tid == 0 || key.tid == key.tgid {
                    "process gone".to_owned()
                } else {
                    format!("process gone (its thread {} held)", key.tid)
                };
                self.record(AuditEvent::HoldClosed { id: context::hold_id(event), why });
            }
            Ok(Happened::RogueContinueReheld(key)) => self.rogue_sigcont(event, key, "held again"),
            Ok(Happened::ReheldAfterRelease(key)) => {
                self.record(AuditEvent::HeldAgain {
                    id: context::hold_id(event),
                    pid: key.tgid,
                    tid: key.tid,
                    why: "keyturn resumed the process for another of its threads".into(),
                });
            }
            Ok(Happened::RogueContinueFrozen(key)) => self.rogue_sigcont(event, key, "still held (frozen)"),
            Ok(Happened::RogueContinueKilled(key)) => {
                let id = context::hold_id(event);
                if let Some(pending) = self.pending.remove(&id) {
                    // Killed by keyturn: the hold could not be kept.
                    self.report_closed(&id, pending.nonce, CloseReason::Abandoned);
                }
                self.decided.insert(id, "killed after a rogue SIGCONT");
                self.rogue_sigcont(event, key, "killed");
            }
            Err(e) => tracing::error!(error = %e, "handling a kernel event"),
        }
    }

    /// The name the agent under `root` last resolved to the destination of `action`.
    fn resolved_name(&self, root: u64, action: &Action) -> Option<Name> {
        let v6 = Ipv6Addr::from(action.addr);
        let addr = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
        self.names.name_of(root, addr)
    }

    /// The agent and policy a hold under `root` is judged by. Every tag names a loaded
    /// policy (tagging and reloads check it); `default` is always loaded.
    pub(super) fn agent_and_policy(&self, root: u64) -> Option<(&Agent, &Arc<Policy>)> {
        let agent = self.agents.get(&root)?;
        let policy = self.policies.get(&agent.policy).or_else(|| self.policies.get("default"))?;
        Some((agent, policy))
    }

    /// A new hold: an exec goes to the judges (their answer arrives in [`Self::judged`]),
    /// an egress, which the kernel's policy already sent to a person, is described here.
    pub(super) fn new_hold(&mut self, key: HoldKey, event: &HoldEvent, restored: bool) {
        let Some((_, policy)) = self.agent_and_policy(event.hold.root) else {
            self.refuse_agentless(key, event);
            return;
        };
        if event.hold.action.kind != kind::EXEC {
            // On the owner task: handed to the judges, a JVM's held connect was never
            // listed in the VMs (cause not yet found), so an agent's memory served from
            // FUSE can still stall this read (README).
            let name = self.resolved_name(event.hold.root, &event.hold.action);
            let egress = policy.egress_rule(&event.hold.action, name.as_ref());
            let judgement = ExecJudgement {
                verdict: Verdict::Hold,
                rule: egress.rule,
                argv_dependent: false,
                asks: egress.asks,
                notify: egress.notify,
            };
            let memory = FromMemory::read(event, None);
            self.settle_new_hold(key, event, restored, &judgement, None, memory, Vec::new());
            return;
        }
        let policy = policy.clone();
        self.judge_hold(key, event, restored, policy, Instant::now());
    }

    /// Fails closed: a hold under a root no agent is known for (never tagged, or untagged
    /// while the hold was judged) is refused, its process killed.
    fn refuse_agentless(&mut self, key: HoldKey, event: &HoldEvent) {
        self.record(AuditEvent::HoldRefused {
            id: context::hold_id(event),
            pid: event.tgid,
            error: "no agent known for this cgroup".into(),
        });
        let _ = self.holds.deny(&mut self.enforcer, key, OnDeny::Kill);
    }

    /// Hands the hold `key` to the judges, with deadlines for their progress and for
    /// their answer (counted from `since`).
    fn judge_hold(
        &mut self,
        key: HoldKey,
        event: &HoldEvent,
        restored: bool,
        policy: Arc<Policy>,
        since: Instant,
    ) {
        let progress = Arc::new(AtomicU64::new(0));
        let judging = Judging {
            nonce: event.hold.nonce,
            event: *event,
            restored,
            progress: progress.clone(),
            seen: 0,
            deadline: Instant::now() + JUDGING_STALL,
            since,
        };
        self.judging.insert(key, judging);
        self.judge.submit(key, event, restored, policy, progress);
    }

    /// A judged exec hold, if it is still being judged (its process may have gone, or its
    /// judgement timed out, meanwhile). A judgement under a policy since replaced is made
    /// again under the new one.
    pub(super) fn judged(&mut self, judged: Judged) {
        let Judged { key, event, restored, outcome, memory, policy: judged_under } = judged;
        let Some(since) = self
            .judging
            .get(&key)
            .filter(|judging| judging.nonce == event.hold.nonce)
            .map(|judging| judging.since)
        else {
            return;
        };
        self.judging.remove(&key);
        let Some((agent_name, policy)) = self
            .agent_and_policy(event.hold.root)
            .map(|(agent, policy)| (agent.name.clone(), policy.clone()))
        else {
            self.refuse_agentless(key, &event);
            return;
        };
        if !Arc::ptr_eq(&policy, &judged_under) {
            self.judge_hold(key, &event, restored, policy, since);
            return;
        }
        let policy_name = policy.name.clone();
        let mut records = Vec::new();
        let (judgement, executable) = match outcome {
            Ok((exe, judgement)) => {
                // A verdict that does not depend on argv holds for every exec of this file
                // version: the kernel decides those by itself from now on.
                let recorded = judgement.verdict == Verdict::Allow && !judgement.argv_dependent;
                if recorded
                    && let Some(&policy_id) = self.policy_ids.get(&policy_name)
                    && let Err(e) = self.enforcer.record_exec_verdict(policy_id, exe.file, Verdict::Allow)
                {
                    tracing::warn!(error = %error_chain(&e), "recording an exec verdict in the kernel");
                }
                records.push(AuditEvent::ExecJudged {
                    id: context::hold_id(&event),
                    pid: event.tgid,
                    agent: agent_name,
                    path: context::printable(exe.path.as_os_str().as_bytes()),
                    sha256: exe.sha256.clone(),
                    verdict: judgement.verdict,
                    rule: judgement.rule.clone(),
                    recorded_in_kernel: recorded,
                });
                (judgement, Some(exe))
            }
            // Only a person can judge a program keyturn cannot verify.
            Err(why) => (ExecJudgement::unverified(why), None),
        };
        self.settle_new_hold(key, &event, restored, &judgement, executable.as_ref(), memory, records);
    }

    /// Sends to a person every exec hold whose judgement has stalled, or taken too long in
    /// all: whatever holds the judges up (a file or memory that answers slowly or never, a
    /// FUSE mount the agent serves), the hold is listed without what could not be read,
    /// saying so, and its timeout runs. A late judgement is then ignored.
    pub(super) fn judgements_overdue(&mut self) {
        let now = Instant::now();
        let mut overdue = Vec::new();
        for (key, judging) in &mut self.judging {
            let read = judging.progress.load(Ordering::Relaxed);
            if read != judging.seen {
                (judging.seen, judging.deadline) = (read, now + JUDGING_STALL);
            }
            if judging.deadline <= now || now.duration_since(judging.since) >= JUDGING_LIMIT {
                overdue.push(*key);
            }
        }
        for key in overdue {
            let Some(Judging { event, restored, .. }) = self.judging.remove(&key) else { continue };
            let rule = format!(
                "could not be judged: reading its file or its process's memory stalled for \
                 {JUDGING_STALL:?} or took {JUDGING_LIMIT:?} (slow storage, or an agent \
                 serving its own files): shown without them"
            );
            let judgement = ExecJudgement::unverified(rule);
            let memory = FromMemory::default();
            self.settle_new_hold(key, &event, restored, &judgement, None, memory, Vec::new());
        }
    }

    /// Ends a judged hold: released when the policy or an earlier approval's scope allows
    /// it, refused when the policy denies it, else pending for a person. `records` (the
    /// judgement's) are written with the outcome's, with one flush to disk.
    #[expect(clippy::too_many_arguments, reason = "one hold's judgement, handed on whole")]
    pub(super) fn settle_new_hold(
        &mut self,
        key: HoldKey,
        event: &HoldEvent,
        restored: bool,
        judgement: &ExecJudgement,
        executable: Option<&Executable>,
        memory: FromMemory,
        mut records: Vec<AuditEvent>,
    ) {
        let root = event.hold.root;
        if self.holds.get(key).is_none_or(HeldProcess::exited) {
            // Gone while it was judged: nothing is described, frozen or decided by its pid.
            if let Err(e) = self.holds.close(&mut self.enforcer, key) {
                tracing::error!(error = %e, "closing the hold of an exited process");
            }
            self.record(AuditEvent::HoldClosed {
                id: context::hold_id(event),
                why: "the process exited".into(),
            });
            self.stats.exits += 1;
            return;
        }
        if self.agent_and_policy(root).is_none() {
            self.refuse_agentless(key, event);
            return;
        }
        let id = context::hold_id(event);
        let verdict = judgement.verdict;
        let name = (event.hold.action.kind == kind::EGRESS)
            .then(|| self.resolved_name(root, &event.hold.action))
            .flatten();
        let (action, asks) = (&event.hold.action, judgement.asks);
        let granted = self.grants.iter().any(|g| g.covers(root, action, name.as_ref(), asks, unix_now()));
        if granted || verdict == Verdict::Allow {
            let why = if granted { "an earlier approval's scope covers it" } else { "the policy allows it" };
            records.push(AuditEvent::Release { id, by: "keyturn".into(), why: Some(why.into()) });
            self.record_all(records);
            match self.holds.approve(&mut self.enforcer, key) {
                Ok(_) => self.stats.auto_released += 1,
                Err(e) => tracing::error!(error = %e, "auto-release"),
            }
            return;
        }
        if verdict == Verdict::Deny {
            let on_deny = self.agent_and_policy(root).map_or(OnDeny::Kill, |(_, policy)| policy.on_deny);
            records.push(AuditEvent::Deny { id, by: "keyturn".into(), why: "the policy denies it".into() });
            self.record_all(records);
            let _ = self.holds.deny(&mut self.enforcer, key, on_deny);
            return;
        }
        let mut view = self.view_of(event, executable, memory);
        view.domain = name.map(|name| name.to_string());
        (view.policy_rule, view.quorum, view.in_console, view.notify) = (
            judgement.rule.clone(),
            judgement.asks.quorum,
            judgement.asks.in_console,
            judgement.notify.clone(),
        );
        self.list_pending(Held::Kernel(key), view, event, records, restored);
    }

    /// What an approver sees of the hold `event` reports (with the verified `executable` of
    /// an exec, and what the judges read of its memory).
    pub(super) fn view_of(
        &self,
        event: &HoldEvent,
        executable: Option<&Executable>,
        memory: FromMemory,
    ) -> HoldView {
        let (agent, policy) = self
            .agent_and_policy(event.hold.root)
            .map(|(agent, policy)| (agent.name.as_str(), policy.name.as_str()))
            .unwrap_or_default();
        let cgroup = self.hierarchy.relative(&self.hierarchy.of_process(event.tgid).unwrap_or_default());
        let mut view = context::describe(event, agent, &cgroup, policy, executable, memory);
        view.requester =
            self.agents.get(&event.hold.root).map(|agent| agent.requester.clone()).unwrap_or_default();
        view
    }

    /// Lists `held`, seen as `view`, as pending a person's decision: audited after
    /// `records` (one flush to disk), announced to the console, and timed out by its
    /// policy, counted from when `event` was held. Callers have checked its agent is known.
    pub(super) fn list_pending(
        &mut self,
        held: Held,
        view: HoldView,
        event: &HoldEvent,
        mut records: Vec<AuditEvent>,
        restored: bool,
    ) {
        let root = event.hold.root;
        let Some((timeout, on_timeout, on_deny)) = self
            .agent_and_policy(root)
            .map(|(_, policy)| (policy.timeout, policy.on_timeout, policy.on_deny))
        else {
            return;
        };
        records.push(AuditEvent::Hold { restored, hold: Box::new(view.clone()) });
        self.record_all(records);
        if let Held::Kernel(key) = held {
            self.holds.park(key);
        }
        let now = Instant::now();
        let waited =
            Duration::from_nanos(crate::kernel::monotonic_ns().saturating_sub(event.hold.held_at_ns));
        let id = view.id.clone();
        tracing::warn!(id = %id, kind = ?view.kind, agent = %view.agent, pid = event.tgid, rule = %view.policy_rule,
            "action held, waiting for a decision: keyturn approve {id} | keyturn deny {id}");
        let deadline = now + timeout.saturating_sub(waited);
        if let Some(link) = &self.link {
            let requested_at = context::wall_time(event.hold.held_at_ns);
            link.raise(&view, event.hold.nonce, requested_at, SystemTime::now() + (deadline - now));
        }
        let pending = Pending {
            held,
            nonce: event.hold.nonce,
            view,
            root,
            action: event.hold.action,
            deadline,
            on_timeout,
            on_deny,
        };
        self.pending.insert(id, pending);
    }
}
