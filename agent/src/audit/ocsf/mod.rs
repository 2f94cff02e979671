//! The audit trail as the Open Cybersecurity Schema Framework's events ([`VERSION`]), for
//! SIEMs and auditors: one event per record, the record itself (chain and hash) in `unmapped`.
//!
//! Holds are Process Activity (exec) or Network Activity (egress) with a disposition saying
//! where the action stands (Delayed, Approved, Allowed, Rejected, Blocked); a person's vote
//! is API Activity; a kill is Process Remediation; policy and tag changes are Device Config
//! State Change; daemon starts and stops are Application Lifecycle; counts of what the
//! kernel refused on its own are Base Events.

use std::{
    collections::HashMap,
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

pub use ocsf::Device;
use ocsf::{
    Actor, Api, Class, ConnectionInfo, Endpoint, Event, File, Fingerprint, KEYTURN, Metadata, OTHER,
    PROFILES, Policy, Process, Product, Resource, Service, User, VERSION, disposition, severity, status,
};
use serde::Serialize;

use super::{AuditEvent, DecidedBy, Record};
use crate::{
    hold::{
        context::{ActionKind, HoldView},
        process::OnDeny,
    },
    policy::Verdict,
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("audit record {seq}: {reason}")]
    Record { seq: u64, reason: String },
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

/// What an event about a held action says happened to it.
#[derive(Clone, Copy)]
enum Step {
    /// The action itself was tried: an exec launches, an egress opens.
    Attempt,
    /// Something else, by name.
    Other(&'static str),
}

/// What OCSF has no attribute for: the trail's record as written, so that the chain can be
/// checked from the export alone.
#[derive(Serialize)]
struct Unmapped {
    keyturn: KeyturnRecord,
}

#[derive(Serialize)]
struct KeyturnRecord {
    seq: u64,
    time: String,
    prev: String,
    hash: String,
    event: serde_json::Value,
}

/// The class, activity and disposition a record maps to, and what it says.
struct Mapped {
    class: Class,
    activity_id: u32,
    activity_name: &'static str,
    severity_id: u32,
    status_id: Option<u32>,
    disposition_id: Option<u32>,
    message: String,
    hold: Option<String>,
    actor: Option<Actor>,
    process: Option<Process>,
    dst_endpoint: Option<Endpoint>,
    src_endpoint: Option<Endpoint>,
    connection_info: Option<ConnectionInfo>,
    api: Option<Api>,
    resources: Option<Vec<Resource>>,
    app: Option<Product>,
    command_uid: Option<String>,
    policy: Option<Policy>,
    count: Option<u64>,
}

impl Mapped {
    fn new(class: Class, activity_id: u32, activity_name: &'static str, message: String) -> Self {
        Self {
            class,
            activity_id,
            activity_name,
            severity_id: severity::INFORMATIONAL,
            status_id: None,
            disposition_id: None,
            message,
            hold: None,
            actor: None,
            process: None,
            dst_endpoint: None,
            src_endpoint: None,
            connection_info: None,
            api: None,
            resources: None,
            app: None,
            command_uid: None,
            policy: None,
            count: None,
        }
    }
}

/// Turns a trail into OCSF events. Holds are remembered as they are read, so a decision
/// or a kill is exported with the action it ends, even when the hold was raised before
/// the period exported.
pub struct Exporter {
    device: Device,
    holds: HashMap<String, HoldView>,
}

impl Exporter {
    pub fn new(device: Device) -> Self {
        Self { device, holds: HashMap::new() }
    }

    /// Writes every record of `records` whose time is in `[since, until)` as one line of
    /// OCSF JSON; returns how many were written. Records before `since` are still read.
    pub fn export(
        &mut self,
        records: &[Record],
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        out: &mut impl Write,
    ) -> Result<usize, ExportError> {
        let mut written = 0;
        for record in records {
            let error = |reason: String| ExportError::Record { seq: record.seq, reason };
            let at = humantime::parse_rfc3339(&record.time).map_err(|e| error(format!("time: {e}")))?;
            let event: AuditEvent = serde_json::from_value(record.event.clone())
                .map_err(|e| error(format!("not a keyturn event: {e}")))?;
            let mapped = self.map(event).map_err(error)?;
            let shown = since.is_none_or(|since| at >= since) && until.is_none_or(|until| at < until);
            if !shown {
                continue;
            }
            serde_json::to_writer(&mut *out, &self.event(record, at, mapped))
                .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        Ok(written)
    }

    fn event(&self, record: &Record, at: SystemTime, mapped: Mapped) -> Event<Unmapped> {
        Event {
            class_uid: mapped.class.uid(),
            category_uid: mapped.class.category_uid(),
            activity_id: mapped.activity_id,
            activity_name: mapped.activity_name,
            type_uid: mapped.class.type_uid(mapped.activity_id),
            severity_id: mapped.severity_id,
            status_id: mapped.status_id,
            time: at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            message: mapped.message,
            metadata: Metadata {
                version: VERSION,
                product: KEYTURN,
                profiles: PROFILES,
                uid: record.hash.clone(),
                sequence: record.seq,
                correlation_uid: mapped.hold,
                log_name: "keyturn audit trail",
            },
            device: self.device.clone(),
            actor: mapped.actor,
            user: None,
            service: None,
            process: mapped.process,
            dst_endpoint: mapped.dst_endpoint,
            src_endpoint: mapped.src_endpoint,
            connection_info: mapped.connection_info,
            api: mapped.api,
            resources: mapped.resources,
            app: mapped.app,
            command_uid: mapped.command_uid,
            disposition_id: mapped.disposition_id,
            policy: mapped.policy,
            count: mapped.count,
            unmapped: Unmapped {
                keyturn: KeyturnRecord {
                    seq: record.seq,
                    time: record.time.clone(),
                    prev: record.prev.clone(),
                    hash: record.hash.clone(),
                    event: record.event.clone(),
                },
            },
        }
    }

    /// What the hold `id` was, as an earlier record of the trail said.
    fn hold(&self, id: &str) -> Result<&HoldView, String> {
        self.holds.get(id).ok_or_else(|| format!("hold {id} has no earlier record in the trail"))
    }

    /// The hold `id`'s action, under `disposition`.
    fn of_hold(&self, id: &str, step: Step, disposition_id: u32, message: String) -> Result<Mapped, String> {
        Ok(action(self.hold(id)?, step, disposition_id, message))
    }

    #[expect(clippy::too_many_lines, reason = "one arm per kind of record, each a few lines")]
    fn map(&mut self, event: AuditEvent) -> Result<Mapped, String> {
        Ok(match event {
            AuditEvent::DaemonStart { mode, version, .. } => {
                let mut m = Mapped::new(
                    Class::ApplicationLifecycle,
                    3,
                    "Start",
                    format!("keyturn {version} started, enforcing in {} mode", mode.name()),
                );
                m.app = Some(KEYTURN);
                m.status_id = Some(status::SUCCESS);
                m
            }
            AuditEvent::DaemonStop => {
                let mut m = Mapped::new(Class::ApplicationLifecycle, 4, "Stop", "keyturn stopped".into());
                m.app = Some(KEYTURN);
                m.status_id = Some(status::SUCCESS);
                m
            }
            AuditEvent::PolicyLoad { policy, id, sha256 } => config_change(
                "Policy Load",
                status::SUCCESS,
                format!("policy {policy} (SHA-256 {sha256}) loaded as kernel policy {id}"),
                Some(Policy { name: policy, uid: (!sha256.is_empty()).then_some(sha256), desc: None }),
            ),
            AuditEvent::PolicyReload { trigger } => {
                config_change("Policy Reload", status::SUCCESS, format!("policies reloaded: {trigger}"), None)
            }
            AuditEvent::PolicyLoadFailed { trigger, error } => {
                let mut m = config_change(
                    "Policy Load",
                    status::FAILURE,
                    format!("policies not loaded ({trigger}): {error}"),
                    None,
                );
                m.severity_id = severity::MEDIUM;
                m
            }
            AuditEvent::Tag { cgroup, agent, policy, requester, unit, .. } => {
                let what = unit.map_or_else(|| format!("cgroup {cgroup}"), |unit| format!("unit {unit}"));
                config_change(
                    "Tag",
                    status::SUCCESS,
                    format!("{what} tagged as agent {agent} under policy {policy}, launched by {requester}"),
                    Some(Policy { name: policy, uid: None, desc: None }),
                )
            }
            AuditEvent::TagFollowed { unit, agent, cgroup, .. } => config_change(
                "Tag",
                status::SUCCESS,
                format!("agent {agent}: the tag of unit {unit} follows it to cgroup {cgroup}"),
                None,
            ),
            AuditEvent::TagLost { cgroup, error } => {
                let mut m = config_change(
                    "Tag",
                    status::FAILURE,
                    format!("tag of cgroup {cgroup} lost: {error}"),
                    None,
                );
                m.severity_id = severity::HIGH;
                m
            }
            AuditEvent::Untag { cgroup, agent } => config_change(
                "Untag",
                status::SUCCESS,
                format!("cgroup {cgroup} (agent {agent}) no longer tagged"),
                None,
            ),
            AuditEvent::ExecJudged { id, pid, agent, path, sha256, verdict, rule, .. } => {
                let view = HoldView {
                    id: id.clone(),
                    kind: ActionKind::Exec,
                    agent,
                    pid,
                    tid: pid,
                    path: Some(path),
                    sha256: Some(sha256),
                    policy_rule: rule.clone(),
                    ..HoldView::default()
                };
                let disposition = match verdict {
                    Verdict::Allow => disposition::ALLOWED,
                    Verdict::Deny => disposition::BLOCKED,
                    Verdict::Hold => disposition::DELAYED,
                };
                let m = action(
                    &view,
                    Step::Attempt,
                    disposition,
                    format!("the policy says {verdict:?} ({rule})"),
                );
                self.holds.insert(id, view);
                m
            }
            AuditEvent::Hold { restored, hold } => {
                let what =
                    if restored { "held (kept across a daemon restart)" } else { "held for a decision" };
                let mut m =
                    action(&hold, Step::Attempt, disposition::DELAYED, format!("{}: {what}", summary(&hold)));
                m.severity_id = severity::LOW;
                self.holds.insert(hold.id.clone(), *hold);
                m
            }
            AuditEvent::HoldRefused { id, pid, error } => {
                let mut m = remediation(
                    &id,
                    Process { pid: Some(pid), ..Process::default() },
                    format!("hold {id} refused, process {pid} killed: {error}"),
                );
                m.severity_id = severity::MEDIUM;
                m
            }
            AuditEvent::Release { id, by, why } => {
                let (disposition, because) = match why {
                    Some(why) => (disposition::ALLOWED, why.into_owned()),
                    None => (disposition::APPROVED, format!("approved by {by}")),
                };
                let message = format!("{}: released, {because}", summary(self.hold(&id)?));
                self.of_hold(&id, Step::Attempt, disposition, message)?
            }
            AuditEvent::Deny { id, by, why } => {
                let message = format!("{}: refused by {by}, {why}", summary(self.hold(&id)?));
                let mut m = self.of_hold(&id, Step::Attempt, disposition::BLOCKED, message)?;
                m.severity_id = severity::MEDIUM;
                m
            }
            AuditEvent::Decision { id, verdict, reason, by, scope, .. } => {
                let hold = self.hold(&id)?;
                let (user, via) = match &by {
                    DecidedBy::Local { by_uid, by_user } => (
                        User {
                            name: Some(by_user.clone()),
                            uid: Some(by_uid.to_string()),
                            ..User::default()
                        },
                        "keyturn local API".to_owned(),
                    ),
                    DecidedBy::Console { by, via, .. } => (
                        User { name: Some(by.clone()), uid: Some(by.clone()), ..User::default() },
                        format!("keyturn {via}"),
                    ),
                };
                let name = user.name.clone().unwrap_or_default();
                let mut m = Mapped::new(
                    Class::ApiActivity,
                    3,
                    "Update",
                    format!(
                        "{name} voted {verdict} on {}{}{}",
                        summary(hold),
                        scope.map(|s| format!(", scope {s:?}")).unwrap_or_default(),
                        reason.map(|r| format!(": {r}")).unwrap_or_default()
                    ),
                );
                m.actor = Some(Actor { user: Some(user), ..Actor::default() });
                m.src_endpoint = Some(Endpoint { svc_name: Some(via), ..Endpoint::default() });
                m.api = Some(Api { operation: verdict.into_owned(), service: Service { name: "keyturn" } });
                m.resources = Some(vec![Resource { uid: id.clone(), kind: "hold" }]);
                m.status_id = Some(status::SUCCESS);
                m.severity_id = severity::LOW;
                m.hold = Some(id);
                m
            }
            AuditEvent::Denied { id, outcome } => {
                let hold = self.hold(&id)?;
                let message = format!("{}: denied, {outcome}", summary(hold));
                let mut m = if outcome.starts_with("killed") {
                    remediation(&id, process_of(hold), message)
                } else {
                    action(hold, Step::Attempt, disposition::REJECTED, message)
                };
                m.severity_id = severity::MEDIUM;
                m
            }
            AuditEvent::Timeout { id, on_timeout } => {
                let hold = self.hold(&id)?;
                let message = format!("{}: no decision in time, {on_timeout:?}", summary(hold));
                let mut m = match on_timeout {
                    OnDeny::Kill => remediation(&id, process_of(hold), message),
                    OnDeny::Fail => action(hold, Step::Attempt, disposition::BLOCKED, message),
                };
                m.severity_id = severity::MEDIUM;
                m
            }
            AuditEvent::HoldClosed { id, why } => {
                let message = format!("{}: closed, {why}", summary(self.hold(&id)?));
                self.of_hold(&id, Step::Other("Hold Closed"), disposition::NO_ACTION, message)?
            }
            AuditEvent::DecisionRejected { id, by, via, reason } => {
                let mut m = Mapped::new(
                    Class::ApiActivity,
                    3,
                    "Update",
                    format!(
                        "a decision{} was refused: {reason}",
                        by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
                    ),
                );
                m.actor = Some(match by {
                    Some(by) => Actor {
                        user: Some(User { name: Some(by.clone()), uid: Some(by), ..User::default() }),
                        ..Actor::default()
                    },
                    None => Actor { app_name: Some("keyturn console".into()), ..Actor::default() },
                });
                m.src_endpoint =
                    Some(Endpoint { svc_name: Some(format!("keyturn {via}")), ..Endpoint::default() });
                m.api = Some(Api { operation: "decide".into(), service: Service { name: "keyturn" } });
                m.resources = id.clone().map(|id| vec![Resource { uid: id, kind: "hold" }]);
                m.status_id = Some(status::FAILURE);
                m.severity_id = severity::HIGH;
                m.hold = id;
                m
            }
            AuditEvent::RogueSigcont { id, tid, outcome, .. } => {
                let message = format!(
                    "{}: thread {tid} sent SIGCONT by someone else than keyturn, {outcome}",
                    summary(self.hold(&id)?)
                );
                let mut m = self.of_hold(&id, Step::Other("Rogue SIGCONT"), disposition::BLOCKED, message)?;
                m.severity_id = severity::HIGH;
                m
            }
            AuditEvent::HeldAgain { id, tid, why, .. } => {
                let message = format!("{}: thread {tid} held again, {why}", summary(self.hold(&id)?));
                self.of_hold(&id, Step::Other("Held Again"), disposition::DELAYED, message)?
            }
            AuditEvent::HoldOrphaned { pid, tid, reason, outcome } => {
                let process = Process { pid: Some(pid), tid, ..Process::default() };
                let mut m = remediation(
                    &format!("orphan-{pid}"),
                    process,
                    format!("process {pid}: {reason}; {outcome}"),
                );
                m.activity_id = OTHER;
                m.activity_name = "Settle";
                m.severity_id = severity::HIGH;
                m
            }
            AuditEvent::Refused { reason, count } => {
                let mut m = Mapped::new(
                    Class::BaseEvent,
                    OTHER,
                    "Refused",
                    format!("{count} actions refused by the kernel: {reason}"),
                );
                m.count = Some(count);
                m.disposition_id = Some(disposition::BLOCKED);
                m.severity_id = severity::MEDIUM;
                m
            }
            AuditEvent::RogueSigconts { count } => {
                let mut m = Mapped::new(
                    Class::BaseEvent,
                    OTHER,
                    "Rogue SIGCONT",
                    format!(
                        "{count} SIGCONTs by someone else than keyturn at held processes; each held again"
                    ),
                );
                m.count = Some(count);
                m.disposition_id = Some(disposition::BLOCKED);
                m.severity_id = severity::HIGH;
                m
            }
        })
    }
}

/// "agent claude: exec /usr/bin/curl", "agent claude: egress tcp 10.0.0.1:443", or with the
/// name the agent asked for, "agent claude: egress dns bucket.example (127.0.0.53):53".
fn summary(hold: &HoldView) -> String {
    let address = hold.address.as_deref().unwrap_or("?");
    let destination = match &hold.domain {
        Some(domain) => format!("{domain} ({address})"),
        None => address.to_owned(),
    };
    match hold.kind {
        ActionKind::Exec => format!("agent {}: exec {}", hold.agent, hold.path.as_deref().unwrap_or("?")),
        ActionKind::Egress => format!(
            "agent {}: egress {} {destination}:{}",
            hold.agent,
            hold.protocol.as_deref().unwrap_or("?"),
            hold.port.unwrap_or_default()
        ),
    }
}

fn user(hold: &HoldView) -> Option<User> {
    (!hold.user.is_empty() || hold.uid != 0).then(|| User {
        name: (!hold.user.is_empty()).then(|| hold.user.clone()),
        uid: Some(hold.uid.to_string()),
        ..User::default()
    })
}

/// The process that asked for the held action.
fn process_of(hold: &HoldView) -> Process {
    Process {
        pid: Some(hold.pid),
        tid: Some(hold.tid),
        name: (!hold.comm.is_empty()).then(|| hold.comm.clone()),
        user: user(hold),
        parent_process: hold.parents.as_deref().and_then(|parents| {
            Process::ancestry(parents.iter().map(|p| (p.pid, p.comm.as_str(), p.argv.as_slice())))
        }),
        cmd_line: (hold.kind == ActionKind::Egress)
            .then(|| hold.argv.as_ref().map(|a| a.join(" ")))
            .flatten(),
        ..Process::default()
    }
}

/// A held action's event: Process Activity for an exec (the new program as `process`,
/// the one that asked as the actor), Network Activity for an egress.
fn action(hold: &HoldView, step: Step, disposition_id: u32, message: String) -> Mapped {
    let actor =
        Actor { process: Some(process_of(hold)), app_name: Some(hold.agent.clone()), ..Actor::default() };
    let mut m = match hold.kind {
        ActionKind::Exec => {
            let (activity_id, activity_name) = step.activity(1, "Launch");
            let mut m = Mapped::new(Class::ProcessActivity, activity_id, activity_name, message);
            let path = hold.path.clone().unwrap_or_default();
            m.process = Some(Process {
                pid: Some(hold.pid),
                name: Some(path.rsplit('/').next().unwrap_or_default().to_owned()),
                cmd_line: hold.argv.as_ref().map(|a| a.join(" ")),
                working_directory: hold.cwd.clone(),
                user: user(hold),
                file: Some(File {
                    name: path.rsplit('/').next().unwrap_or_default().to_owned(),
                    path,
                    type_id: 1,
                    hashes: hold
                        .sha256
                        .iter()
                        .map(|value| Fingerprint { algorithm_id: 3, value: value.clone() })
                        .collect(),
                }),
                ..Process::default()
            });
            m
        }
        ActionKind::Egress => {
            let (activity_id, activity_name) = step.activity(1, "Open");
            let mut m = Mapped::new(Class::NetworkActivity, activity_id, activity_name, message);
            m.dst_endpoint = Some(Endpoint {
                ip: hold.address.clone(),
                hostname: hold.domain.clone(),
                port: hold.port,
                svc_name: None,
            });
            m.connection_info =
                Some(ConnectionInfo { direction_id: 2, protocol_name: hold.protocol.clone() });
            m
        }
    };
    m.actor = Some(actor);
    m.disposition_id = Some(disposition_id);
    m.policy = (!hold.policy.is_empty() || !hold.policy_rule.is_empty()).then(|| Policy {
        name: if hold.policy.is_empty() { "keyturn policy".into() } else { hold.policy.clone() },
        uid: None,
        desc: (!hold.policy_rule.is_empty()).then(|| hold.policy_rule.clone()),
    });
    m.hold = Some(hold.id.clone());
    m
}

impl Step {
    /// The activity of this step, where `attempt` is the class's id and name for the action.
    fn activity(self, attempt_id: u32, attempt_name: &'static str) -> (u32, &'static str) {
        match self {
            Self::Attempt => (attempt_id, attempt_name),
            Self::Other(name) => (OTHER, name),
        }
    }
}

/// A kill of the process that held `id` (or the one keyturn found stopped).
fn remediation(id: &str, process: Process, message: String) -> Mapped {
    let mut m = Mapped::new(Class::ProcessRemediationActivity, 2, "Evict", message);
    m.process = Some(process);
    m.command_uid = Some(id.to_owned());
    m.hold = Some(id.to_owned());
    m.actor = Some(Actor { app_name: Some("keyturn".into()), ..Actor::default() });
    m.status_id = Some(status::SUCCESS);
    m
}

fn config_change(
    activity_name: &'static str,
    status_id: u32,
    message: String,
    policy: Option<Policy>,
) -> Mapped {
    let mut m = Mapped::new(Class::DeviceConfigStateChange, OTHER, activity_name, message);
    m.actor = Some(Actor { app_name: Some("keyturn".into()), ..Actor::default() });
    m.status_id = Some(status_id);
    m.policy = policy;
    m
}

#[cfg(test)]
mod tests;
