//! The console's decision-signing key; key files and key names are `host_client::keys`.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use host_client::keys::key_id;
use prost::Message as _;
use proto::v1::{Decision, SignedDecision};

/// The console's signing key.
pub struct Signer {
    key: SigningKey,
    id: String,
}

impl Signer {
    pub fn new(key: SigningKey) -> Self {
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    pub fn key_id(&self) -> &str {
        &self.id
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Encodes `decision` and signs exactly those bytes.
    pub fn sign(&self, decision: &Decision) -> SignedDecision {
        let bytes = decision.encode_to_vec();
        let signature: Signature = self.key.sign(&proto::decision_message(&bytes));
        SignedDecision { decision: bytes, signature: signature.to_bytes().to_vec(), key_id: self.id.clone() }
    }

    /// Signs an evidence pack's `manifest.json`, under its own context.
    pub fn sign_evidence_manifest(&self, manifest: &[u8]) -> Signature {
        self.key.sign(&proto::evidence_manifest_message(manifest))
    }
}

#[cfg(test)]
mod tests {
    use host_client::keys::public_key_from_hex;

    use super::*;

    #[test]
    fn a_signature_covers_the_exact_decision_bytes_under_a_context() {
        let signer = Signer::new(SigningKey::from_bytes(&[1; 32]));
        let signed = signer.sign(&Decision { hold_id: "h1".into(), nonce: 9, ..Decision::default() });
        let signature = Signature::from_slice(&signed.signature).unwrap();
        let public = signer.public_key();
        assert!(public.verify_strict(&proto::decision_message(&signed.decision), &signature).is_ok());
        // Without the context prefix (a signature made for anything else) it does not verify.
        assert!(public.verify_strict(&signed.decision, &signature).is_err());
        assert_eq!(signed.key_id, key_id(&public));
        assert_eq!(public_key_from_hex(&hex::encode(public.as_bytes())).unwrap(), public);
        assert!(public_key_from_hex("00").is_err());
    }

    #[test]
    fn a_decision_signature_and_a_manifest_signature_never_pass_for_each_other() {
        let signer = Signer::new(SigningKey::from_bytes(&[1; 32]));
        let public = signer.public_key();
        let signed = signer.sign(&Decision { hold_id: "h1".into(), ..Decision::default() });
        let decision = Signature::from_slice(&signed.signature).unwrap();
        // The same bytes, offered as a manifest: refused.
        let as_manifest = proto::evidence_manifest_message(&signed.decision);
        assert!(public.verify_strict(&as_manifest, &decision).is_err());
        let manifest = signer.sign_evidence_manifest(&signed.decision);
        assert!(public.verify_strict(&as_manifest, &manifest).is_ok());
        assert!(public.verify_strict(&proto::decision_message(&signed.decision), &manifest).is_err());
    }
}
