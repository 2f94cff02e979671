//! The Open Cybersecurity Schema Framework's objects, as keyturn writes them (host trails and
//! the console's alike): only the attributes keyturn fills, each under the schema's own name,
//! so that the OCSF project's schema, run by the tests, judges these very types.

#[cfg(feature = "validator")]
pub mod validator;

use serde::Serialize;

/// The OCSF release the events follow.
pub const VERSION: &str = "1.4.0";
/// Profiles every event uses: `host` (the device and actor) and `security_control` (the
/// disposition and the policy).
pub const PROFILES: [&str; 2] = ["host", "security_control"];

/// An OCSF event class keyturn writes; its number is the `class_uid`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    BaseEvent = 0,
    Authentication = 3002,
    ProcessActivity = 1007,
    NetworkActivity = 4001,
    DeviceConfigStateChange = 5019,
    ApplicationLifecycle = 6002,
    ApiActivity = 6003,
    ProcessRemediationActivity = 7003,
}

impl Class {
    pub fn uid(self) -> u32 {
        self as u32
    }

    /// The category the class is in: its thousands.
    pub fn category_uid(self) -> u32 {
        self.uid() / 1000
    }

    /// The event type of `activity_id` in this class.
    pub fn type_uid(self, activity_id: u32) -> u64 {
        u64::from(self.uid()) * 100 + u64::from(activity_id)
    }
}

/// `activity_id` 99: the activity is named by `activity_name`.
pub const OTHER: u32 = 99;

/// `disposition_id` values (`security_control` profile).
pub mod disposition {
    pub const ALLOWED: u32 = 1;
    pub const BLOCKED: u32 = 2;
    pub const APPROVED: u32 = 8;
    pub const DELAYED: u32 = 14;
    pub const NO_ACTION: u32 = 16;
    pub const REJECTED: u32 = 25;
}

/// `severity_id` values.
pub mod severity {
    pub const INFORMATIONAL: u32 = 1;
    pub const LOW: u32 = 2;
    pub const MEDIUM: u32 = 3;
    pub const HIGH: u32 = 4;
}

/// `status_id` values.
pub mod status {
    pub const SUCCESS: u32 = 1;
    pub const FAILURE: u32 = 2;
}

/// One OCSF event; `U` is what the source keeps in `unmapped`.
#[derive(Serialize)]
pub struct Event<U> {
    pub class_uid: u32,
    pub category_uid: u32,
    pub activity_id: u32,
    pub activity_name: &'static str,
    pub type_uid: u64,
    pub severity_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_id: Option<u32>,
    pub time: i64,
    pub message: String,
    pub metadata: Metadata,
    pub device: Device,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// The person signing in (Authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// The service signed in to (Authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_info: Option<ConnectionInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<Resource>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<Product>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disposition_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// What the source knows that OCSF has no attribute for.
    pub unmapped: U,
}

impl<U> Event<U> {
    /// An event of `class`'s `activity_id` (named `activity_name`), informational, with only
    /// the attributes every event has; the caller sets the rest.
    pub fn new(
        class: Class,
        (activity_id, activity_name): (u32, &'static str),
        time: i64,
        message: String,
        metadata: Metadata,
        device: Device,
        unmapped: U,
    ) -> Self {
        Self {
            class_uid: class.uid(),
            category_uid: class.category_uid(),
            activity_id,
            activity_name,
            type_uid: class.type_uid(activity_id),
            severity_id: severity::INFORMATIONAL,
            status_id: None,
            time,
            message,
            metadata,
            device,
            actor: None,
            user: None,
            service: None,
            process: None,
            dst_endpoint: None,
            src_endpoint: None,
            connection_info: None,
            api: None,
            resources: None,
            app: None,
            command_uid: None,
            disposition_id: None,
            policy: None,
            count: None,
            unmapped,
        }
    }
}

#[derive(Serialize)]
pub struct Metadata {
    pub version: &'static str,
    pub product: Product,
    pub profiles: [&'static str; 2],
    /// Unique for the record (keyturn: its hash, which the next record chains to).
    pub uid: String,
    pub sequence: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_uid: Option<String>,
    pub log_name: &'static str,
}

#[derive(Clone, Serialize)]
pub struct Product {
    pub name: &'static str,
    pub vendor_name: &'static str,
    pub version: &'static str,
}

/// keyturn, as the product that wrote an event.
pub const KEYTURN: Product =
    Product { name: "keyturn", vendor_name: "keyturn", version: env!("CARGO_PKG_VERSION") };

/// The host the trail is from.
#[derive(Clone, Serialize)]
pub struct Device {
    /// 0: unknown (a host may be a server, a laptop or a VM; keyturn does not guess).
    pub type_id: u32,
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl Device {
    /// This host: its name, and its systemd machine id where it has one.
    pub fn this_host() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "localhost".into(), |name| name.trim().to_owned());
        let uid = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
        Self { type_id: 0, hostname, uid }
    }
}

#[derive(Default, Serialize)]
pub struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
}

#[derive(Default, Serialize)]
pub struct Process {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_process: Option<Box<Process>>,
}

impl Process {
    /// Parent processes as OCSF nests them, from `(pid, command name, argv)` of each,
    /// nearest first.
    pub fn ancestry<'a>(
        parents: impl DoubleEndedIterator<Item = (u32, &'a str, &'a [String])>,
    ) -> Option<Box<Self>> {
        parents.rev().fold(None, |older, (pid, comm, argv)| {
            Some(Box::new(Self {
                pid: Some(pid),
                name: Some(comm.to_owned()),
                cmd_line: (!argv.is_empty()).then(|| argv.join(" ")),
                parent_process: older,
                ..Self::default()
            }))
        })
    }
}

#[derive(Serialize)]
pub struct File {
    pub name: String,
    pub path: String,
    /// 1: a regular file.
    pub type_id: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hashes: Vec<Fingerprint>,
}

#[derive(Serialize)]
pub struct Fingerprint {
    /// 3: SHA-256.
    pub algorithm_id: u32,
    pub value: String,
}

#[derive(Default, Serialize)]
pub struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_addr: Option<String>,
    /// Where the user is defined: for a person known by an identity provider, its issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

#[derive(Default, Serialize)]
pub struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The name the address was resolved from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svc_name: Option<String>,
}

#[derive(Serialize)]
pub struct ConnectionInfo {
    /// 2: outbound.
    pub direction_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_name: Option<String>,
}

#[derive(Serialize)]
pub struct Api {
    pub operation: String,
    pub service: Service,
}

#[derive(Serialize)]
pub struct Service {
    pub name: &'static str,
}

#[derive(Serialize)]
pub struct Resource {
    pub uid: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Serialize)]
pub struct Policy {
    pub name: String,
    /// keyturn: the SHA-256 of the policy's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
}
