//! Holds and the audit trail over HTTP: list, read, approve, deny, search, verify.

use axum::{
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse as _, Response},
};
use proto::v1::{Scope, Verdict, hold_raised::Detail};
use serde::Deserialize;

use super::{Api, ApiError, auth::require, body, ok};
use crate::{
    Console,
    audit::AuditEvent,
    people::{Principal, Role},
    search::{AuditFilter, HoldDetail, HoldFilter},
    store::{DecisionRequest, Outcome, StoreError, now_ms},
};

/// Holds listed when the caller names no limit.
const DEFAULT_LIMIT: i64 = 100;
/// Longest reason an approver may give.
pub(crate) const MAX_REASON: usize = 1024;
/// Longest approval `for` a duration: thirty days.
pub(crate) const MAX_DURATION_SECS: u64 = 30 * 24 * 3600;
/// Most words an audit search matches.
const MAX_SEARCH_WORDS: usize = 8;

pub(super) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

/// `HOLD@HOST`, the API's name for hold HOLD of host HOST.
fn split_id(id: &str) -> Result<(&str, &str), ApiError> {
    id.split_once('@')
        .filter(|(hold, host)| !hold.is_empty() && !host.is_empty())
        .map(|(hold, host)| (host, hold))
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_hold", format!("{id:?} is not HOLD@HOST"))
        })
}

fn scope_name(scope: i32) -> &'static str {
    match Scope::try_from(scope) {
        Ok(Scope::ForDuration) => "for",
        Ok(Scope::Always) => "always",
        _ => "once",
    }
}

/// A hold as the API shows it: what was asked, by whom, under which rule, and its fate.
fn view(hold: &HoldDetail) -> serde_json::Value {
    let (record, raised) = (&hold.record, &hold.raised);
    let detail = match &raised.detail {
        Some(Detail::Exec(exec)) => serde_json::json!({"exec": {
            "path": exec.path, "argv": exec.argv, "cwd": exec.cwd, "sha256": exec.sha256,
            "parents": exec.parents.iter().map(|p| serde_json::json!({"pid": p.pid, "comm": p.comm, "argv": p.argv})).collect::<Vec<_>>(),
        }}),
        Some(Detail::Egress(egress)) => serde_json::json!({"egress": {
            "protocol": egress.protocol, "address": egress.address, "port": egress.port,
            "domain": (!egress.domain.is_empty()).then_some(&egress.domain),
        }}),
        None => serde_json::json!({}),
    };
    let decision = hold.decision.as_ref().map(|d| {
        serde_json::json!({
            "verdict": if d.verdict == i32::from(Verdict::Approve) { "approve" } else { "deny" },
            "scope": scope_name(d.scope), "duration_secs": d.duration_secs, "reason": d.reason,
            "by": d.decided_by, "at_ms": d.decided_at_ms,
        })
    });
    let mut value = serde_json::json!({
        "id": format!("{}@{}", record.id, record.host), "host": record.host, "hold_id": record.id,
        "kind": record.kind, "status": record.status, "agent": raised.agent, "cgroup": raised.cgroup,
        "pid": raised.pid, "uid": raised.uid, "user": raised.user, "requester": raised.requester,
        "policy": raised.policy, "rule": raised.policy_rule, "requested_at_ms": record.requested_at_ms,
        "deadline_ms": record.deadline_ms, "quorum": record.quorum, "approvals": record.approvals,
        "in_console": raised.in_console, "notify": raised.notify,
        "approvers": hold.approvers, "decision": decision, "closed_reason": record.closed_reason,
    });
    if let (Some(value), serde_json::Value::Object(detail)) = (value.as_object_mut(), detail) {
        value.extend(detail);
    }
    value
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldsQuery {
    status: Option<String>,
    host: Option<String>,
    agent: Option<String>,
    before_ms: Option<i64>,
    limit: Option<i64>,
}

pub async fn list(
    State(api): State<Api>,
    _: Principal,
    q: Result<Query<HoldsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let status = q.status.unwrap_or_default();
    if !["", "pending", "approved", "denied", "expired", "closed"].contains(&status.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("status {status:?}: pending, approved, denied, expired or closed"),
        ));
    }
    let filter = HoldFilter {
        status,
        host: q.host.unwrap_or_default(),
        agent: q.agent.unwrap_or_default(),
        before_ms: q.before_ms.unwrap_or(0),
        limit: q.limit.unwrap_or(DEFAULT_LIMIT),
    };
    let holds = api.console.store().holds(&filter).await?;
    Ok(ok(serde_json::json!({"now_ms": now_ms(), "holds": holds.iter().map(view).collect::<Vec<_>>()})))
}

pub async fn one(State(api): State<Api>, _: Principal, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (host, hold_id) = split_id(&id)?;
    let hold = api
        .console
        .store()
        .hold_detail(host, hold_id)
        .await?
        .ok_or_else(|| StoreError::UnknownHold { host: host.to_owned(), hold_id: hold_id.to_owned() })?;
    Ok(ok(serde_json::json!({"now_ms": now_ms(), "hold": view(&hold)})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// `once` (the default), `for` (with `duration_secs`) or `always` (this agent, this action).
    scope: Option<String>,
    duration_secs: Option<u64>,
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Denial {
    reason: Option<String>,
}

pub(crate) fn reason(reason: Option<String>) -> Result<String, ApiError> {
    let reason = reason.unwrap_or_default();
    if reason.chars().count() > MAX_REASON || reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("a reason is at most {MAX_REASON} characters, without control characters"),
        ));
    }
    Ok(reason)
}

pub async fn approve(
    State(api): State<Api>,
    principal: Principal,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let approval: Approval = body(bytes)?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let (scope, duration_secs) = match (approval.scope.as_deref().unwrap_or("once"), approval.duration_secs) {
        ("once", None) => (Scope::Once, 0),
        ("always", None) => (Scope::Always, 0),
        ("for", Some(secs @ 1..=MAX_DURATION_SECS)) => (Scope::ForDuration, secs),
        ("for", _) => {
            return Err(bad(format!("scope `for` needs duration_secs from 1 to {MAX_DURATION_SECS}")));
        }
        ("once" | "always", Some(_)) => return Err(bad("duration_secs goes with scope `for` only".into())),
        (other, _) => return Err(bad(format!("scope {other:?}: once, for or always"))),
    };
    decide(&api, &principal, &id, Verdict::Approve, scope, duration_secs, reason(approval.reason)?).await
}

pub async fn deny(
    State(api): State<Api>,
    principal: Principal,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let denial: Denial = body(bytes)?;
    decide(&api, &principal, &id, Verdict::Deny, Scope::Once, 0, reason(denial.reason)?).await
}

async fn decide(
    api: &Api,
    principal: &Principal,
    id: &str,
    verdict: Verdict,
    scope: Scope,
    duration_secs: u64,
    reason: String,
) -> Result<Response, ApiError> {
    let (host, hold_id) = split_id(id)?;
    let asked = Asked { host, hold_id, verdict, scope, duration_secs, reason };
    match decide_as(&api.console, principal, asked).await? {
        Outcome::Decided(_) => {
            let status = if verdict == Verdict::Approve { "approved" } else { "denied" };
            Ok(ok(serde_json::json!({"status": status})))
        }
        Outcome::AwaitingQuorum { approvals, quorum } => Ok((
            StatusCode::ACCEPTED,
            ok(serde_json::json!({"status": "awaiting_quorum", "approvals": approvals, "quorum": quorum})),
        )
            .into_response()),
    }
}

/// A decision someone asks for: hold `hold_id` of `host`, `verdict` with its scope and reason.
pub struct Asked<'a> {
    pub host: &'a str,
    pub hold_id: &'a str,
    pub verdict: Verdict,
    pub scope: Scope,
    pub duration_secs: u64,
    pub reason: String,
}

/// Decides as `principal` asked, wherever they asked it (API, web UI, chat), by the rules
/// every decision meets: the role, no self-approval, quorum, one decision; a refusal on a
/// hold that exists is audited.
pub async fn decide_as(
    console: &Console,
    principal: &Principal,
    asked: Asked<'_>,
) -> Result<Outcome, ApiError> {
    let Asked { host, hold_id, verdict, scope, duration_secs, reason } = asked;
    let store = console.store();
    let refused = async |error: ApiError| {
        let event = AuditEvent::DecisionRefused {
            host: host.to_owned(),
            hold: hold_id.to_owned(),
            by: principal.person.clone(),
            verdict: verdict.as_str_name().to_owned(),
            code: error.code.to_owned(),
            why: error.message.clone(),
        };
        store.record(&event).await?;
        Err::<Outcome, _>(error)
    };
    if let Err(error) = require(principal, Role::Approver) {
        // Only refusals on holds that exist are worth a record: the path is the caller's.
        if store.hold(host, hold_id).await?.is_none() {
            return Err(StoreError::UnknownHold { host: host.to_owned(), hold_id: hold_id.to_owned() }.into());
        }
        return refused(error).await;
    }
    let request = DecisionRequest {
        host: host.to_owned(),
        hold_id: hold_id.to_owned(),
        verdict,
        scope,
        duration_secs,
        reason,
        decided_by: principal.person.clone(),
        credential: principal.credential.clone(),
    };
    match console.decide(&request).await {
        Err(error @ StoreError::SelfApproval { .. }) => refused(error.into()).await,
        outcome => Ok(outcome?),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    q: Option<String>,
    before_seq: Option<i64>,
    limit: Option<i64>,
}

pub async fn audit(
    State(api): State<Api>,
    _: Principal,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let text = q.q.unwrap_or_default();
    if text.split_whitespace().count() > MAX_SEARCH_WORDS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("search for at most {MAX_SEARCH_WORDS} words"),
        ));
    }
    let filter =
        AuditFilter { text, before_seq: q.before_seq.unwrap_or(0), limit: q.limit.unwrap_or(DEFAULT_LIMIT) };
    Ok(ok(serde_json::json!({"records": api.console.store().audit_records(&filter).await?})))
}

/// Each host's audit trail as anchored: its latest anchor, and every finding of a trail cut
/// or rewritten after one.
pub async fn host_trails(State(api): State<Api>, _: Principal) -> Result<Response, ApiError> {
    let hosts: Vec<serde_json::Value> = api
        .console
        .store()
        .trail_states()
        .await?
        .into_iter()
        .map(|state| {
            serde_json::json!({"host": state.host, "anchors": state.anchors.len(),
                "latest": state.anchors.last(), "findings": state.findings})
        })
        .collect();
    Ok(ok(serde_json::json!({"hosts": hosts})))
}

/// Checks the whole audit chain: its length and last hash, or the first broken record.
pub async fn verify_audit(State(api): State<Api>, _: Principal) -> Result<Response, ApiError> {
    let head = api.console.store().verify_audit().await?;
    Ok(ok(serde_json::json!({"records": head.records, "hash": head.hash})))
}
