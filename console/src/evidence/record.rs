//! What an evidence pack's JSON files hold, as types: each hold with its context, votes and
//! decision; the manifest; the chain's state at export.

use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message as _;
use proto::v1::{Decision, HoldRaised, Scope, SignedDecision, Verdict, hold_raised::Detail};
use serde::{Deserialize, Serialize};

use super::utc;
use crate::{people::Credential, store::decode_stored};

/// A moment, in Unix milliseconds and as people read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct At {
    pub ms: i64,
    pub utc: String,
}

impl At {
    pub fn new(ms: i64) -> Self {
        Self { ms, utc: utc(ms) }
    }
}

/// What became of a hold at the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still waiting at export.
    Pending,
    Approved,
    Denied,
    /// Its deadline passed without a decision at the console.
    Expired,
    /// Its host ended it (decided locally, process gone, timed out there): see `closed_reason`.
    Closed,
}

impl Status {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "expired" => Self::Expired,
            "closed" => Self::Closed,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictName {
    Approve,
    Deny,
}

/// What an approval lets through besides the held action itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granted {
    /// This action only.
    Once,
    /// The same action by the same agent for `duration_secs`.
    For,
    /// The same action by the same agent for the life of its cgroup.
    Always,
}

/// A held action as its host reported it: every field of the `HoldRaised` message, and the
/// message's exact bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub kind: String,
    pub agent: String,
    pub cgroup: String,
    pub pid: u32,
    pub uid: u32,
    pub user: String,
    /// Who started the agent, as the host named them: they could not approve.
    pub requester: String,
    pub policy: String,
    pub policy_rule: String,
    pub exec: Option<ExecContext>,
    pub egress: Option<EgressContext>,
    /// The `HoldRaised` message as the host sent it: hex of its protobuf encoding.
    pub raised: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecContext {
    pub path: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub sha256: String,
    pub parents: Vec<ParentContext>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentContext {
    pub pid: u32,
    pub comm: String,
    pub argv: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressContext {
    pub protocol: String,
    pub address: String,
    pub port: u32,
    /// The name the agent resolved the address from through keyturn's resolver, if any
    /// (absent in packs of holds raised before hosts reported names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Context {
    /// The context `raised` (hex of a `HoldRaised`) carries, for hold `hold_id`.
    pub fn from_raised(hold_id: &str, raised: &str) -> Result<Self, crate::store::StoreError> {
        let hold: HoldRaised = decode_stored(hold_id, raised)?;
        let kind = hold.kind().as_str_name().trim_start_matches("HOLD_KIND_").to_lowercase();
        let (exec, egress) = match hold.detail {
            Some(Detail::Exec(exec)) => (
                Some(ExecContext {
                    path: exec.path,
                    argv: exec.argv,
                    cwd: exec.cwd,
                    sha256: exec.sha256,
                    parents: exec
                        .parents
                        .into_iter()
                        .map(|p| ParentContext { pid: p.pid, comm: p.comm, argv: p.argv })
                        .collect(),
                }),
                None,
            ),
            Some(Detail::Egress(egress)) => (
                None,
                Some(EgressContext {
                    protocol: egress.protocol,
                    address: egress.address,
                    port: egress.port,
                    domain: Some(egress.domain).filter(|domain| !domain.is_empty()),
                }),
            ),
            None => (None, None),
        };
        Ok(Self {
            kind,
            agent: hold.agent,
            cgroup: hold.cgroup,
            pid: hold.pid,
            uid: hold.uid,
            user: hold.user,
            requester: hold.requester,
            policy: hold.policy,
            policy_rule: hold.policy_rule,
            exec,
            egress,
            raised: raised.to_owned(),
        })
    }
}

/// One person's vote on a hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    pub verdict: VerdictName,
    /// The person as the console knows them: a verified email, `SUBJECT@ISSUER`, or a
    /// token's person.
    pub person: String,
    /// How they proved who they are when they voted.
    pub credential: Credential,
    pub at: At,
    pub reason: String,
}

/// The decision the console signed and sent to the host, decoded from `signed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    pub verdict: VerdictName,
    pub scope: Granted,
    pub duration_secs: u64,
    pub reason: String,
    pub decided_by: String,
    pub decided_at: At,
    /// Everyone who approved (all of a quorum).
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub nonce: u64,
    /// The console key that signed it.
    pub key_id: String,
    /// The `SignedDecision` sent to the host, hex of its protobuf encoding: Ed25519 over
    /// `keyturn.v1.decision\0` and the encoded `Decision`, by the console's key.
    pub signed: String,
}

/// Why a stored or packed signed decision cannot be read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum DecisionProblem {
    #[error("not hex of a SignedDecision: {0}")]
    Encoding(String),
    #[error("its signature does not verify under the console's key")]
    Signature,
    #[error("it decides hold {hold} of host {host}, not this one")]
    OtherHold { host: String, hold: String },
}

impl DecisionRecord {
    /// The decision in `signed` (hex of a `SignedDecision`) on hold `hold_id` of `host`,
    /// checked against `key` when one is given.
    pub fn from_signed(
        host: &str,
        hold_id: &str,
        signed: &str,
        key: Option<&VerifyingKey>,
    ) -> Result<Self, DecisionProblem> {
        let encoding = |e: String| DecisionProblem::Encoding(e);
        let envelope =
            SignedDecision::decode(hex::decode(signed).map_err(|e| encoding(e.to_string()))?.as_slice())
                .map_err(|e| encoding(e.to_string()))?;
        if let Some(key) = key {
            let signature =
                Signature::from_slice(&envelope.signature).map_err(|_| DecisionProblem::Signature)?;
            key.verify_strict(&proto::decision_message(&envelope.decision), &signature)
                .map_err(|_| DecisionProblem::Signature)?;
        }
        let decision = Decision::decode(envelope.decision.as_slice()).map_err(|e| encoding(e.to_string()))?;
        if decision.host != host || decision.hold_id != hold_id {
            return Err(DecisionProblem::OtherHold { host: decision.host, hold: decision.hold_id });
        }
        Ok(Self {
            verdict: if decision.verdict() == Verdict::Approve {
                VerdictName::Approve
            } else {
                VerdictName::Deny
            },
            scope: match decision.scope() {
                Scope::ForDuration => Granted::For,
                Scope::Always => Granted::Always,
                Scope::Once | Scope::Unspecified => Granted::Once,
            },
            duration_secs: decision.duration_secs,
            reason: decision.reason,
            decided_by: decision.decided_by,
            decided_at: At::new(i64::try_from(decision.decided_at_ms).unwrap_or(i64::MAX)),
            approvers: decision.approvers,
            quorum: decision.quorum,
            nonce: decision.nonce,
            key_id: envelope.key_id,
            signed: signed.to_owned(),
        })
    }
}

/// When things happened to a hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Times {
    /// By the host's clock.
    pub requested: At,
    /// By the console's clock.
    pub received: At,
    /// After this the host applies the policy's `on_timeout`; the console refuses to decide.
    pub deadline: At,
    pub decided: Option<At>,
}

/// One hold of the period and everything that became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldEvidence {
    /// `HOLD@HOST`, as the API and the web UI name it.
    pub id: String,
    pub host: String,
    pub hold_id: String,
    /// The kernel's nonce: the signed decision is valid for this hold only.
    pub nonce: u64,
    pub status: Status,
    /// How its host reported it ended, if it did (`CLOSE_REASON_…`).
    pub closed_reason: Option<String>,
    /// Distinct approvers it needed.
    pub quorum: i64,
    pub times: Times,
    pub context: Context,
    /// Every vote, oldest first: approvals, and the denial that decided it, if any.
    pub votes: Vec<Vote>,
    pub decision: Option<DecisionRecord>,
    /// The sequence numbers of the records in `audit/segment.jsonl` about this hold.
    pub audit_records: Vec<i64>,
}

/// The console's key, as the manifest names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleKey {
    /// The first 16 hex digits of the SHA-256 of the public key (as decisions name it).
    pub key_id: String,
    /// The Ed25519 public key, 64 hex digits.
    pub public_key: String,
}

/// The period as the manifest states it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodRecord {
    /// Holds requested from this moment on (inclusive)…
    pub from: At,
    /// …until this one (exclusive).
    pub to: At,
}

/// One file of the pack and its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`: what the pack is and every other file in it; `manifest.sig` signs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub console: ConsoleKey,
    pub period: PeriodRecord,
    /// When the pack was made (differs between two exports of one period).
    pub exported_at: At,
    /// Who asked for it (differs between two exports of one period).
    pub exported_by: String,
    pub files: Vec<FileRecord>,
}

/// `audit/chain.json`: the segment's bounds, and the whole chain as verified at export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainState {
    /// The record just before the period, which the segment starts with so that it chains;
    /// none when the trail begins inside the period.
    pub anchor_seq: Option<i64>,
    /// The first and last record of the segment (none when it is empty).
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The whole chain, from its first record, verified at export: how many records and the
    /// hash of the last, the head (both grow between two exports of one period).
    pub verified_at: At,
    pub chain_records: i64,
    pub chain_head: String,
}

#[cfg(test)]
mod tests {
    use proto::v1::{Egress, HoldKind};

    use super::*;

    fn raised(domain: &str) -> String {
        let egress = Egress {
            protocol: "tcp".into(),
            address: "93.184.215.14".into(),
            port: 443,
            domain: domain.into(),
        };
        let hold = HoldRaised {
            id: "abc".into(),
            kind: HoldKind::Egress.into(),
            detail: Some(Detail::Egress(egress)),
            ..HoldRaised::default()
        };
        hex::encode(hold.encode_to_vec())
    }

    #[test]
    fn an_egress_context_names_the_domain_its_host_reported_and_only_then() {
        let named = Context::from_raised("abc", &raised("api.example.com")).unwrap();
        let egress = named.egress.as_ref().unwrap();
        assert_eq!(
            (egress.address.as_str(), egress.domain.as_deref()),
            ("93.184.215.14", Some("api.example.com"))
        );
        let text = serde_json::to_value(&named).unwrap();
        assert_eq!(text["egress"]["domain"], "api.example.com");
        assert_eq!(serde_json::from_value::<Context>(text).unwrap(), named);

        let unnamed = Context::from_raised("abc", &raised("")).unwrap();
        let text = serde_json::to_value(&unnamed).unwrap();
        assert!(text["egress"].get("domain").is_none(), "{text}");
        assert_eq!(
            serde_json::from_value::<Context>(text).unwrap(),
            unnamed,
            "packs without names still read"
        );
    }
}
