//! Every record the daemon writes to its audit trail, one variant each: the trail's
//! `type` is the variant's name in snake case, and its fields are the variant's.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::{
    daemon::api::Scope,
    hold::{context::HoldView, process::OnDeny},
    kernel::{EgressHold, mode::Mode},
    policy::Verdict,
};

/// Text the daemon wrote: a fixed phrase when written, owned when read back.
pub type Text = Cow<'static, str>;

/// One audit record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEvent {
    DaemonStart {
        mode: Mode,
        egress_hold: EgressHold,
        version: Text,
    },
    DaemonStop,
    PolicyLoad {
        policy: String,
        id: u32,
        /// SHA-256 of the policy's text (absent in trails written before it was recorded).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sha256: String,
    },
    PolicyReload {
        trigger: String,
    },
    PolicyLoadFailed {
        trigger: String,
        error: String,
    },
    Tag {
        cgroup: String,
        agent: String,
        policy: String,
        requester: String,
        /// 0: a unit that is not running, tagged when systemd makes its cgroup.
        cgroup_id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
    },
    /// A tagged unit's tag, moved to the cgroup systemd made for it when it (re)started.
    TagFollowed {
        unit: String,
        agent: String,
        cgroup: String,
        cgroup_id: u64,
    },
    /// A tag a previous daemon kept that could not be applied again.
    TagLost {
        cgroup: String,
        error: String,
    },
    Untag {
        cgroup: String,
        agent: String,
    },
    /// What the policy says of an executable the kernel had not seen.
    ExecJudged {
        id: String,
        pid: u32,
        agent: String,
        path: String,
        sha256: String,
        verdict: Verdict,
        rule: String,
        recorded_in_kernel: bool,
    },
    /// A hold waiting for a person, with everything they are shown.
    Hold {
        restored: bool,
        hold: Box<HoldView>,
    },
    /// A hold under a cgroup no agent is known for: refused (killed).
    HoldRefused {
        id: String,
        pid: u32,
        error: Text,
    },
    /// The held action let through: by a person (after their `decision`) or by keyturn.
    Release {
        id: String,
        by: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        why: Option<Text>,
    },
    /// The policy denies the held action: refused by keyturn.
    Deny {
        id: String,
        by: Text,
        why: Text,
    },
    /// A person's decision.
    Decision {
        id: String,
        verdict: Text,
        reason: Option<String>,
        #[serde(flatten)]
        by: DecidedBy,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<Scope>,
        #[serde(skip_serializing_if = "Option::is_none")]
        on_deny: Option<OnDeny>,
    },
    /// What a denial did.
    Denied {
        id: String,
        outcome: String,
    },
    Timeout {
        id: String,
        on_timeout: OnDeny,
    },
    /// A hold that ended without a decision.
    HoldClosed {
        id: String,
        why: String,
    },
    /// A decision from the console that the host refused.
    DecisionRejected {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        via: Text,
        reason: String,
    },
    /// The first SIGCONT that was not keyturn's at a hold.
    RogueSigcont {
        id: String,
        pid: u32,
        tid: u32,
        outcome: Text,
    },
    /// A thread held again because keyturn resumed its process for another thread.
    HeldAgain {
        id: String,
        pid: u32,
        tid: u32,
        why: Text,
    },
    /// A stop, frozen cell or kernel record no pending hold accounted for, settled.
    HoldOrphaned {
        pid: u32,
        tid: Option<u32>,
        reason: Text,
        outcome: String,
    },
    /// Actions the kernel refused since the last such record, for one reason.
    Refused {
        reason: Text,
        count: u64,
    },
    /// SIGCONTs that were not keyturn's since the last such record.
    RogueSigconts {
        count: u64,
    },
}

/// Who made a decision.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DecidedBy {
    /// An approver on this host, known by the local socket's credentials.
    Local { by_uid: u32, by_user: String },
    /// A person at the console, as its signed decision names them.
    Console { by: String, via: Text, approvers: Vec<String> },
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The trail's shape is what auditors and the console read: `type` and flat fields.
    #[test]
    fn events_are_written_as_flat_typed_records() {
        let decision = AuditEvent::Decision {
            id: "abc".into(),
            verdict: "approve".into(),
            reason: None,
            by: DecidedBy::Local { by_uid: 1000, by_user: "alice".into() },
            scope: Some(Scope::For(600)),
            on_deny: None,
        };
        assert_eq!(
            serde_json::to_value(&decision).unwrap(),
            json!({"type": "decision", "id": "abc", "verdict": "approve", "reason": null, "by_uid": 1000,
                "by_user": "alice", "scope": {"for": 600}})
        );
        let release = AuditEvent::Release {
            id: "abc".into(),
            by: "keyturn".into(),
            why: Some("the policy allows it".into()),
        };
        assert_eq!(
            serde_json::to_value(&release).unwrap(),
            json!({"type": "release", "id": "abc", "by": "keyturn", "why": "the policy allows it"})
        );
        assert_eq!(serde_json::to_value(AuditEvent::DaemonStop).unwrap(), json!({"type": "daemon_stop"}));
    }
}
