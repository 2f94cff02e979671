//! Ed25519 keys: the console's decision-signing key and a host's identity key, how each is
//! named (fingerprint, key id), and the key files they live in (a 32-byte seed, hex,
//! readable by its owner only).

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: not 64 hex digits (a 32-byte Ed25519 seed)")]
    Malformed { path: PathBuf },
    #[error("public key {0:?}: not 64 hex digits of a valid Ed25519 point")]
    BadPublicKey(String),
}

/// SHA-256 of a public key, lower-case hex: what a host's `Hello` names itself by.
pub fn fingerprint(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A console key's id in `SignedDecision.key_id`: the first 16 hex digits of its fingerprint.
pub fn key_id(key: &VerifyingKey) -> String {
    fingerprint(key)[..16].to_owned()
}

/// Parses a public key from 64 hex digits (what `keyturn console` prints at start).
pub fn public_key_from_hex(text: &str) -> Result<VerifyingKey, KeyError> {
    let bad = || KeyError::BadPublicKey(text.to_owned());
    let bytes: [u8; 32] = hex::decode(text.trim()).map_err(|_| bad())?.try_into().map_err(|_| bad())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// Reads the Ed25519 key in `path`, or makes one there (mode 0600) if there is none.
/// Console replicas that serve one database share one key file.
pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyError::Malformed { path: path.to_owned() })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut OsRng);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            writeln!(file, "{}", hex::encode(key.to_bytes())).map_err(io)?;
            tracing::info!(path = %path.display(), "created a new Ed25519 key");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_key_file_is_made_private_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("kt-console-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("console.key");
        let made = load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap().to_bytes(), made.to_bytes());
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(matches!(load_or_create(&path), Err(KeyError::Malformed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
