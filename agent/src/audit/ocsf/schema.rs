//! The OCSF objects keyturn writes, with only the attributes it fills: every field name is
//! the schema's own, so the validator in the tests judges these types, not a copy of them.

use std::path::Path;

use serde::Serialize;

#[derive(Serialize)]
pub(super) struct Event {
    pub(super) class_uid: u32,
    pub(super) category_uid: u32,
    pub(super) activity_id: u32,
    pub(super) activity_name: &'static str,
    pub(super) type_uid: u64,
    pub(super) severity_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) status_id: Option<u32>,
    pub(super) time: i64,
    pub(super) message: String,
    pub(super) metadata: Metadata,
    pub(super) device: Device,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) actor: Option<Actor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) dst_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) src_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) connection_info: Option<ConnectionInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) api: Option<Api>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) resources: Option<Vec<Resource>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) app: Option<Product>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) command_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) disposition_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) policy: Option<Policy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) count: Option<u64>,
    pub(super) unmapped: Unmapped,
}

#[derive(Serialize)]
pub(super) struct Metadata {
    pub(super) version: &'static str,
    pub(super) product: Product,
    pub(super) profiles: [&'static str; 2],
    /// The record's hash: unique, and what the next record chains to.
    pub(super) uid: String,
    pub(super) sequence: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) correlation_uid: Option<String>,
    pub(super) log_name: &'static str,
}

#[derive(Clone, Serialize)]
pub(super) struct Product {
    pub(super) name: &'static str,
    pub(super) vendor_name: &'static str,
    pub(super) version: &'static str,
}

pub(super) const KEYTURN: Product =
    Product { name: "keyturn", vendor_name: "keyturn", version: env!("CARGO_PKG_VERSION") };

/// The host the trail is from.
#[derive(Clone, Serialize)]
pub struct Device {
    /// 0: unknown (a host may be a server, a laptop or a VM; keyturn does not guess).
    pub(super) type_id: u32,
    pub(super) hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) uid: Option<String>,
}

impl Device {
    /// This host: its name, and its systemd machine id where it has one.
    pub fn this_host() -> Self {
        let hostname =
            nix::unistd::gethostname().map_or_else(|_| "localhost".into(), |h| h.to_string_lossy().into());
        let uid = std::fs::read_to_string(Path::new("/etc/machine-id"))
            .ok()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
        Self { type_id: 0, hostname, uid }
    }
}

#[derive(Default, Serialize)]
pub(super) struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) app_name: Option<String>,
}

#[derive(Default, Serialize)]
pub(super) struct Process {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cmd_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) working_directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[expect(clippy::struct_field_names, reason = "OCSF's own attribute name")]
    pub(super) parent_process: Option<Box<Process>>,
}

#[derive(Serialize)]
pub(super) struct File {
    pub(super) name: String,
    pub(super) path: String,
    /// 1: a regular file.
    pub(super) type_id: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) hashes: Vec<Fingerprint>,
}

#[derive(Serialize)]
pub(super) struct Fingerprint {
    /// 3: SHA-256.
    pub(super) algorithm_id: u32,
    pub(super) value: String,
}

#[derive(Serialize)]
pub(super) struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) uid: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) svc_name: Option<String>,
}

#[derive(Serialize)]
pub(super) struct ConnectionInfo {
    /// 2: outbound.
    pub(super) direction_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) protocol_name: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Api {
    pub(super) operation: String,
    pub(super) service: Service,
}

#[derive(Serialize)]
pub(super) struct Service {
    pub(super) name: &'static str,
}

#[derive(Serialize)]
pub(super) struct Resource {
    pub(super) uid: String,
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
}

#[derive(Serialize)]
pub(super) struct Policy {
    pub(super) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) desc: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Unmapped {
    pub(super) keyturn: KeyturnRecord,
}

/// The trail's record as written, so the chain can be checked from the export alone.
#[derive(Serialize)]
pub(super) struct KeyturnRecord {
    pub(super) seq: u64,
    pub(super) time: String,
    pub(super) prev: String,
    pub(super) hash: String,
    pub(super) event: serde_json::Value,
}
