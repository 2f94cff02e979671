//! keyturn's wire contract, generated from `proto/keyturn/v1/*.proto`, and the byte
//! strings that separate what each signature is for.

/// Messages and the `AgentService` client and server.
pub mod v1 {
    #![expect(clippy::pedantic, clippy::large_enum_variant, reason = "generated code")]
    tonic::include_proto!("keyturn.v1");
}

/// Prefix of what a console signs for a decision: Ed25519 over this, then the encoded
/// `Decision`. A signature made for anything else can never pass as a decision.
pub const DECISION_CONTEXT: &[u8] = b"keyturn.v1.decision\0";

/// Prefix of what a console signs for an evidence pack: Ed25519 over this, then the pack's
/// `manifest.json`. A decision's signature can never pass as a manifest's, nor the reverse.
pub const EVIDENCE_MANIFEST_CONTEXT: &[u8] = b"keyturn.v1.evidence-manifest\0";

/// Prefix of what a host signs in its `Hello`: this, the console's challenge, the host name.
pub const HELLO_CONTEXT: &[u8] = b"keyturn.v1.hello\0";

/// Prefix of what a host signs when it enrols: this, the bootstrap token, the host name.
pub const ENROL_CONTEXT: &[u8] = b"keyturn.v1.enrol\0";

/// Prefix of what a host signs to anchor its audit trail: this, the host name, a NUL, the
/// `ChainAnchor` encoded with an empty signature.
pub const ANCHOR_CONTEXT: &[u8] = b"keyturn.v1.anchor\0";

/// The bytes a host signs for `anchor` (its `signature` is left out): see [`ANCHOR_CONTEXT`].
pub fn anchor_message(host: &str, anchor: &v1::ChainAnchor) -> Vec<u8> {
    use prost::Message as _;
    let unsigned = v1::ChainAnchor { signature: Vec::new(), ..anchor.clone() };
    [ANCHOR_CONTEXT, host.as_bytes(), b"\0", &unsigned.encode_to_vec()].concat()
}

/// The bytes a host signs to enrol with `token`: see [`ENROL_CONTEXT`].
pub fn enrol_message(token: &str, host: &str) -> Vec<u8> {
    [ENROL_CONTEXT, token.as_bytes(), b"\0", host.as_bytes()].concat()
}

/// The bytes a host signs to prove it holds its key: see [`HELLO_CONTEXT`].
pub fn hello_message(challenge: &[u8], host: &str) -> Vec<u8> {
    [HELLO_CONTEXT, challenge, host.as_bytes()].concat()
}

/// The bytes a console signs for the encoded decision `decision`.
pub fn decision_message(decision: &[u8]) -> Vec<u8> {
    [DECISION_CONTEXT, decision].concat()
}

/// The bytes a console signs for an evidence pack's `manifest.json`.
pub fn evidence_manifest_message(manifest: &[u8]) -> Vec<u8> {
    [EVIDENCE_MANIFEST_CONTEXT, manifest].concat()
}
