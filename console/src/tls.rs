//! The console's certificate authority: its key and certificate on disk (shared by the
//! replicas), each replica's server certificate, and host certificates issued at enrolment.

use std::{
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use ed25519_dalek::VerifyingKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ED25519, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use sha2::{Digest as _, Sha256};

const CA_KEY: &str = "ca.key";
const CA_CERT: &str = "ca.pem";
/// How long a host certificate is valid; a host enrols again (new token) after that.
const HOST_CERT_DAYS: i64 = 397;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Certificate { what: String, source: rcgen::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_owned(), source }
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError + '_ {
    move |source| TlsError::Certificate { what: what.to_owned(), source }
}

/// SHA-256 of a certificate's DER, lower-case hex: how the console recognises the
/// certificate it issued to a host.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The CA's parameters. They are rebuilt the same way at every start, so the issuer name
/// in the certificates this replica signs matches the CA certificate on disk.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "keyturn console CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A host's Ed25519 public key, for a certificate whose private key only the host holds.
struct HostKey([u8; 32]);

impl PublicKeyData for HostKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// A PEM certificate and its PEM private key.
pub struct PemIdentity {
    pub certificate: String,
    pub key: String,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    certificate: String,
}

impl Authority {
    /// Loads the CA in `dir`, or creates it there (key mode 0600) on the first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let (key_path, cert_path) = (dir.join(CA_KEY), dir.join(CA_CERT));
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(cert_error("the CA key"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                let key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_error("a CA key"))?;
                let certificate = ca_params().self_signed(&key).map_err(cert_error("the CA certificate"))?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, key.serialize_pem().as_bytes()))
                    .map_err(io(&key_path))?;
                std::fs::write(&cert_path, certificate.pem()).map_err(io(&cert_path))?;
                tracing::info!(dir = %dir.display(), "created the console's certificate authority");
                key
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let certificate = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        Ok(Self { issuer: Issuer::new(ca_params(), key), certificate })
    }

    /// The CA certificate (PEM) hosts trust the console by, and the console trusts hosts by.
    pub fn certificate(&self) -> &str {
        &self.certificate
    }

    /// A fresh server certificate for this replica, valid for `names` (DNS names or IPs).
    pub fn server_identity(&self, names: &[String]) -> Result<PemIdentity, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(cert_error("a server key"))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(cert_error("the server names"))?;
        params.distinguished_name.push(DnType::CommonName, "keyturn console");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let certificate =
            params.signed_by(&key, &self.issuer).map_err(cert_error("the server certificate"))?;
        Ok(PemIdentity { certificate: certificate.pem(), key: key.serialize_pem() })
    }

    /// A client certificate for `host` over its key; PEM and the fingerprint of its DER.
    pub fn host_certificate(&self, host: &str, key: &VerifyingKey) -> Result<(String, String), TlsError> {
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(cert_error("the host name"))?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // A random serial: two certificates for one key, even in the same second, differ, so
        // re-enrolling retires the certificate issued before.
        let mut serial = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        // A little slack before now, for hosts whose clock runs behind.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(HOST_CERT_DAYS);
        let certificate = params
            .signed_by(&HostKey(key.to_bytes()), &self.issuer)
            .map_err(cert_error("the host certificate"))?;
        Ok((certificate.pem(), certificate_fingerprint(certificate.der())))
    }
}
