//! The console's trail as OCSF 1.4.0 events, as the host's trail is: a hold is Process or
//! Network Activity with its disposition, a vote is API Activity, a sign-in Authentication.
//!
//! One event per record, the record itself in `unmapped.keyturn`; except a `decided`
//! record, which is two facts the host's trail keeps apart: the last vote (API Activity) and
//! the hold's outcome (Approved or Rejected). Both carry the record; the vote's
//! `metadata.uid` is the record's hash with `/vote` after it.

use ::ocsf::{
    Actor, Api, Class, ConnectionInfo, Device, Endpoint, Event, File, Fingerprint, KEYTURN, Metadata, OTHER,
    PROFILES, Policy, Process, Resource, Service, User, VERSION, disposition, severity, status,
};
use proto::v1::{HoldRaised, hold_raised::Detail};
use serde::Serialize;

use super::KeyturnRecord;
use crate::audit::{AuditEvent, ChatLinkHow, Vote};

/// What OCSF has no attribute for: the record, verbatim.
#[derive(Serialize)]
pub struct Unmapped<'a> {
    pub keyturn: &'a KeyturnRecord<'a>,
}

/// API Activity's activities.
const CREATE: (u32, &str) = (1, "Create");
const READ: (u32, &str) = (2, "Read");
const UPDATE: (u32, &str) = (3, "Update");
const DELETE: (u32, &str) = (4, "Delete");
/// Authentication's Logon.
const LOGON: (u32, &str) = (1, "Logon");
/// Device Config State Change: what happened, by name (`activity_id` 99).
const TRAIL_CHANGED: (u32, &str) = (OTHER, "Trail Changed");
const POLICY_IN_FORCE: (u32, &str) = (OTHER, "Policy In Force");
const POLICY_RETIRED: (u32, &str) = (OTHER, "Policy Retired");

/// The service people sign in to.
const CONSOLE: &str = "keyturn console";
/// Where people and hosts reach the console.
const API: &str = "keyturn console API";
const HOST_STREAM: &str = "keyturn host stream";
const COMMAND_LINE: &str = "keyturn console command line";

/// The OCSF events of one record: `hold` is the hold's context when the record is about one.
#[expect(clippy::too_many_lines, reason = "one arm per kind of record, each a few lines")]
pub fn events<'a>(
    record: &'a KeyturnRecord<'a>,
    event: &AuditEvent,
    hold: Option<&HoldRaised>,
    console: &Device,
) -> Vec<Event<Unmapped<'a>>> {
    let new = |class, activity, message: String, device: Device| {
        Event::new(
            class,
            activity,
            record.at_ms,
            message,
            metadata(record),
            device,
            Unmapped { keyturn: record },
        )
    };
    let on_console = |class, activity, message| new(class, activity, message, console.clone());
    match (event, hold) {
        (AuditEvent::HoldRaised { host, .. }, Some(hold)) => {
            let mut e = action(new, host, hold, Attempt, disposition::DELAYED, "held for a decision");
            e.severity_id = severity::LOW;
            vec![e]
        }
        (AuditEvent::ApprovalRecorded { host, hold: id, by, approvals, quorum }, Some(hold)) => {
            let message =
                format!("{by} approved {} ({approvals} of {quorum} approvals)", summary(host, hold));
            vec![vote(new(Class::ApiActivity, UPDATE, message, device(host)), by, "approve", id)]
        }
        (AuditEvent::Decided { host, hold: id, verdict, scope, by, reason, .. }, Some(hold)) => {
            let (operation, disposition, done) = match verdict {
                Vote::Approve => ("approve", disposition::APPROVED, "approved"),
                Vote::Deny => ("deny", disposition::REJECTED, "denied"),
            };
            let because = if reason.is_empty() { String::new() } else { format!(": {reason}") };
            let message = format!("{by} {done} {} ({scope}){because}", summary(host, hold));
            let mut cast = vote(new(Class::ApiActivity, UPDATE, message, device(host)), by, operation, id);
            cast.metadata.uid = format!("{}/vote", record.hash);
            let mut outcome =
                action(new, host, hold, Attempt, disposition, &format!("{done} by {by}{because}"));
            outcome.severity_id = if *verdict == Vote::Deny { severity::MEDIUM } else { severity::LOW };
            vec![cast, outcome]
        }
        (AuditEvent::DecisionRefused { host, hold: id, by, why, .. }, _) => {
            let mut e = vote(
                new(
                    Class::ApiActivity,
                    UPDATE,
                    format!("a decision by {by} was refused: {why}"),
                    device(host),
                ),
                by,
                "decide",
                id,
            );
            e.status_id = Some(status::FAILURE);
            e.severity_id = severity::HIGH;
            vec![e]
        }
        (AuditEvent::HoldClosed { host, reason, .. }, Some(hold)) => {
            let closed = Step::Other("Hold Closed");
            vec![action(
                new,
                host,
                hold,
                closed,
                disposition::NO_ACTION,
                &format!("closed by its host: {reason}"),
            )]
        }
        (AuditEvent::HoldExpired { host, .. }, Some(hold)) => {
            let expired = Step::Other("Expired");
            let mut e = action(new, host, hold, expired, disposition::BLOCKED, "no decision in time");
            e.severity_id = severity::MEDIUM;
            vec![e]
        }
        (AuditEvent::HostEnrolled { host, certificate, .. }, _) => {
            let how = if certificate.is_some() { "with a bootstrap token" } else { "by its first key" };
            let e = new(Class::ApiActivity, CREATE, format!("host {host} enrolled {how}"), device(host));
            vec![call(e, host_actor(), HOST_STREAM, "enrol", (host, "host"), status::SUCCESS)]
        }
        (AuditEvent::HostRefused { host, why, .. }, _) => {
            let e = new(Class::ApiActivity, READ, format!("host {host} refused: {why}"), device(host));
            let mut e = call(e, host_actor(), HOST_STREAM, "stream", (host, "host"), status::FAILURE);
            e.severity_id = severity::HIGH;
            vec![e]
        }
        (AuditEvent::EnrolmentRefused { host, .. }, _) => {
            let message = format!("host {host} offered an unknown, used or expired bootstrap token");
            let e = new(Class::ApiActivity, CREATE, message, device(host));
            let mut e = call(e, host_actor(), HOST_STREAM, "enrol", (host, "host"), status::FAILURE);
            e.severity_id = severity::HIGH;
            vec![e]
        }
        (AuditEvent::TokenIssued { host, .. }, _) => {
            let e = on_console(Class::ApiActivity, CREATE, format!("bootstrap token issued for host {host}"));
            vec![call(e, operator(), COMMAND_LINE, "issue_enrolment_token", (host, "host"), status::SUCCESS)]
        }
        (AuditEvent::SignedIn { person, role, how }, _) => {
            let mut e =
                on_console(Class::Authentication, LOGON, format!("{person} signed in ({how:?}) as {role}"));
            e.user = Some(user(person));
            e.service = Some(Service { name: CONSOLE });
            e.status_id = Some(status::SUCCESS);
            vec![e]
        }
        (AuditEvent::SignInRefused { person, .. }, _) => {
            let message = format!("{person} has no role here: sign-in refused");
            let mut e = on_console(Class::Authentication, LOGON, message);
            e.user = Some(user(person));
            e.service = Some(Service { name: CONSOLE });
            e.status_id = Some(status::FAILURE);
            e.severity_id = severity::MEDIUM;
            vec![e]
        }
        (AuditEvent::SignInLinkIssued { person }, _) => {
            let e =
                on_console(Class::ApiActivity, CREATE, format!("one-time sign-in link issued for {person}"));
            vec![call(e, operator(), COMMAND_LINE, "issue_sign_in_link", (person, "person"), status::SUCCESS)]
        }
        (AuditEvent::ApiTokenCreated { token, person, role, by, .. }, _) => {
            let message = format!("{by} created API token {token} for {person} as {role}");
            let e = on_console(Class::ApiActivity, CREATE, message);
            vec![call(e, person_actor(by), API, "create_api_token", (token, "api_token"), status::SUCCESS)]
        }
        (AuditEvent::ApiTokenRevoked { token, by }, _) => {
            let e = on_console(Class::ApiActivity, DELETE, format!("{by} revoked API token {token}"));
            vec![call(e, person_actor(by), API, "revoke_api_token", (token, "api_token"), status::SUCCESS)]
        }
        (AuditEvent::ChatLinked { account, person, role, by, how }, _) => {
            let message = match how {
                ChatLinkHow::Admin => format!("{by} linked chat account {account} to {person} as {role}"),
                ChatLinkHow::Offer => format!(
                    "{by} linked chat account {account} to themselves as {role}, with a link offered in chat"
                ),
                ChatLinkHow::SignIn => format!(
                    "{by} signed in and their identity provider named chat account {account} theirs: linked as {role}"
                ),
            };
            let e = on_console(Class::ApiActivity, CREATE, message);
            vec![call(
                e,
                person_actor(by),
                API,
                "link_chat_account",
                (account, "chat_account"),
                status::SUCCESS,
            )]
        }
        (AuditEvent::ChatUnlinked { account, by }, _) => {
            let e = on_console(Class::ApiActivity, DELETE, format!("{by} unlinked chat account {account}"));
            vec![call(
                e,
                person_actor(by),
                API,
                "unlink_chat_account",
                (account, "chat_account"),
                status::SUCCESS,
            )]
        }
        (AuditEvent::HostTrailTampered { host, detail }, _) => {
            let message = format!("host {host}'s audit trail changed after it was anchored: {detail}");
            let mut e = new(Class::DeviceConfigStateChange, TRAIL_CHANGED, message, device(host));
            e.status_id = Some(status::FAILURE);
            e.severity_id = severity::HIGH;
            vec![e]
        }
        (
            AuditEvent::HostPolicyInForce { host, policy, sha256 }
            | AuditEvent::HostPolicyRetired { host, policy, sha256 },
            _,
        ) => {
            let (activity, now) = if matches!(event, AuditEvent::HostPolicyInForce { .. }) {
                (POLICY_IN_FORCE, "in force")
            } else {
                (POLICY_RETIRED, "no longer in force")
            };
            let message = format!("host {host}: policy {policy} (SHA-256 {sha256}) {now}");
            let mut e = new(Class::DeviceConfigStateChange, activity, message, device(host));
            e.policy = Some(Policy { name: policy.clone(), uid: Some(sha256.clone()), desc: None });
            e.status_id = Some(status::SUCCESS);
            vec![e]
        }
        (AuditEvent::EvidenceExported { by, from_ms, to_ms, .. }, _) => {
            let message = format!("{by} exported the evidence pack of {from_ms}..{to_ms} (ms)");
            let e = on_console(Class::ApiActivity, READ, message);
            vec![call(
                e,
                person_actor(by),
                API,
                "export_evidence",
                ("evidence", "evidence_pack"),
                status::SUCCESS,
            )]
        }
        (AuditEvent::AuditExported { by, format, .. }, _) => {
            let e =
                on_console(Class::ApiActivity, READ, format!("{by} exported the audit trail as {format}"));
            vec![call(e, person_actor(by), API, "export_audit", ("audit", "audit_trail"), status::SUCCESS)]
        }
        (
            AuditEvent::HoldRaised { .. }
            | AuditEvent::ApprovalRecorded { .. }
            | AuditEvent::Decided { .. }
            | AuditEvent::HoldClosed { .. }
            | AuditEvent::HoldExpired { .. },
            None,
        ) => unreachable!("the exporter looks up the hold of every record about one"),
    }
}

fn metadata(record: &KeyturnRecord<'_>) -> Metadata {
    Metadata {
        version: VERSION,
        product: KEYTURN,
        profiles: PROFILES,
        uid: record.hash.to_owned(),
        sequence: record.seq.cast_unsigned(),
        correlation_uid: None,
        log_name: "keyturn console audit trail",
    }
}

/// A host as the console knows it: by the name it enrolled with.
fn device(host: &str) -> Device {
    Device { type_id: 0, hostname: host.to_owned(), uid: None }
}

/// A person as the console names them ([`crate::oidc`]): a verified email address, else
/// `SUBJECT@ISSUER` (the identity provider's subject, and its issuer as the user's domain),
/// else an API token's person as its maker named them.
fn user(person: &str) -> User {
    let name = Some(person.to_owned());
    if let Some(scheme) = person.find("://")
        && let Some(at) = person[..scheme].rfind('@')
    {
        return User {
            name,
            uid: Some(person[..at].to_owned()),
            domain: Some(person[at + 1..].to_owned()),
            ..User::default()
        };
    }
    let email = person.contains('@').then(|| person.to_owned());
    User { name, uid: Some(person.to_owned()), email_addr: email, ..User::default() }
}

fn person_actor(person: &str) -> Actor {
    Actor { user: Some(user(person)), ..Actor::default() }
}

/// An operator on the console's own machine (`keyturn console token`, `… login`).
fn operator() -> Actor {
    Actor { app_name: Some("keyturn console".into()), ..Actor::default() }
}

/// A host's daemon, calling in.
fn host_actor() -> Actor {
    Actor { app_name: Some("keyturn daemon".into()), ..Actor::default() }
}

/// `e` as an API call to the console: who, through what, which operation on what, and how
/// it ended.
fn call<U>(
    mut e: Event<U>,
    actor: Actor,
    via: &str,
    operation: &str,
    (uid, kind): (&str, &'static str),
    status_id: u32,
) -> Event<U> {
    e.actor = Some(actor);
    e.src_endpoint = Some(Endpoint { svc_name: Some(via.to_owned()), ..Endpoint::default() });
    e.api = Some(Api { operation: operation.to_owned(), service: Service { name: "keyturn" } });
    e.resources = Some(vec![Resource { uid: uid.to_owned(), kind }]);
    e.status_id = Some(status_id);
    e
}

/// `person`'s vote (`operation`) on hold `id`.
fn vote<U>(e: Event<U>, person: &str, operation: &str, id: &str) -> Event<U> {
    let mut e = call(e, person_actor(person), API, operation, (id, "hold"), status::SUCCESS);
    e.severity_id = severity::LOW;
    e.metadata.correlation_uid = Some(id.to_owned());
    e
}

/// What an event about a held action says happened to it.
#[derive(Clone, Copy)]
enum Step {
    /// The action itself: an exec launches, an egress opens.
    Attempt,
    /// Something else, by name.
    Other(&'static str),
}
use Step::Attempt;

impl Step {
    fn activity(self, attempt: (u32, &'static str)) -> (u32, &'static str) {
        match self {
            Self::Attempt => attempt,
            Self::Other(name) => (OTHER, name),
        }
    }
}

/// "agent claude on web-01: exec /usr/bin/curl" or "…: egress tcp 10.0.0.1:443".
fn summary(host: &str, hold: &HoldRaised) -> String {
    let what = match &hold.detail {
        Some(Detail::Exec(exec)) => format!("exec {}", exec.path),
        Some(Detail::Egress(egress)) => {
            if egress.domain.is_empty() {
                format!("egress {} {}:{}", egress.protocol, egress.address, egress.port)
            } else {
                format!("egress {} {} ({}):{}", egress.protocol, egress.domain, egress.address, egress.port)
            }
        }
        None => "an action".into(),
    };
    format!("agent {} on {host}: {what}", hold.agent)
}

/// The held action's event, made by `new`: Process Activity for an exec (the new program as
/// `process`, the one that asked as the actor), Network Activity for an egress.
fn action<'a>(
    new: impl Fn(Class, (u32, &'static str), String, Device) -> Event<Unmapped<'a>>,
    host: &str,
    hold: &HoldRaised,
    step: Step,
    disposition_id: u32,
    what: &str,
) -> Event<Unmapped<'a>> {
    let message = format!("{}: {what}", summary(host, hold));
    let user = (!hold.user.is_empty()).then(|| User {
        name: Some(hold.user.clone()),
        uid: Some(hold.uid.to_string()),
        ..User::default()
    });
    let mut asker = Process { pid: Some(hold.pid), ..Process::default() };
    let mut e = match &hold.detail {
        Some(Detail::Egress(egress)) => {
            let mut e = new(Class::NetworkActivity, step.activity((1, "Open")), message, device(host));
            e.dst_endpoint = Some(Endpoint {
                ip: Some(egress.address.clone()),
                hostname: (!egress.domain.is_empty()).then(|| egress.domain.clone()),
                port: u16::try_from(egress.port).ok(),
                svc_name: None,
            });
            e.connection_info =
                Some(ConnectionInfo { direction_id: 2, protocol_name: Some(egress.protocol.clone()) });
            asker.user = user;
            e
        }
        exec => {
            let mut e = new(Class::ProcessActivity, step.activity((1, "Launch")), message, device(host));
            let mut program = Process { pid: Some(hold.pid), user, ..Process::default() };
            if let Some(Detail::Exec(exec)) = exec {
                let name = exec.path.rsplit('/').next().unwrap_or_default().to_owned();
                program.name = Some(name.clone());
                program.cmd_line = (!exec.argv.is_empty()).then(|| exec.argv.join(" "));
                program.working_directory = (!exec.cwd.is_empty()).then(|| exec.cwd.clone());
                program.file = Some(File {
                    name,
                    path: exec.path.clone(),
                    type_id: 1,
                    hashes: (!exec.sha256.is_empty())
                        .then(|| Fingerprint { algorithm_id: 3, value: exec.sha256.clone() })
                        .into_iter()
                        .collect(),
                });
                asker.parent_process = Process::ancestry(
                    exec.parents.iter().map(|p| (p.pid, p.comm.as_str(), p.argv.as_slice())),
                );
            }
            e.process = Some(program);
            e
        }
    };
    e.actor = Some(Actor { process: Some(asker), app_name: Some(hold.agent.clone()), ..Actor::default() });
    e.disposition_id = Some(disposition_id);
    e.policy = Some(Policy {
        name: if hold.policy.is_empty() { "keyturn policy".into() } else { hold.policy.clone() },
        uid: None,
        desc: (!hold.policy_rule.is_empty()).then(|| hold.policy_rule.clone()),
    });
    e.metadata.correlation_uid = Some(hold.id.clone());
    e
}
