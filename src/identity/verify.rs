//! Certificate verification on top of webpki: the deny list of revoked certificate
//! fingerprints, checked during the handshake on both sides.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::fingerprint;
use crate::names::Fingerprint;

/// Fingerprints (SHA-256 hex of a certificate) that are refused whatever their chain.
#[derive(Debug, Default)]
pub struct DenyList {
    path: Option<PathBuf>,
    set: RwLock<HashSet<Fingerprint>>,
}

/// Why a deny list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read deny list {path}: {why}")]
pub struct DenyError {
    path: PathBuf,
    why: String,
}

fn parse_deny(path: &Path) -> Result<HashSet<Fingerprint>, DenyError> {
    let err = |why: String| DenyError {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut set = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fp: String = line.chars().filter(|c| *c != ':').collect();
        let fp = Fingerprint::parse(&fp).map_err(|_| {
            err(format!(
                "line {}: expected a SHA-256 certificate fingerprint (64 hex digits)",
                n + 1
            ))
        })?;
        set.insert(fp);
    }
    Ok(set)
}

impl DenyList {
    /// An empty list.
    pub fn empty() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Loads a list from a file (one fingerprint a line; `#` comments; `:` separators allowed).
    pub fn load(path: &Path) -> Result<Arc<Self>, DenyError> {
        let set = parse_deny(path)?;
        Ok(Arc::new(Self {
            path: Some(path.to_path_buf()),
            set: RwLock::new(set),
        }))
    }

    /// Re-reads the file; on error the old list stays.
    pub fn reload(&self) -> Result<usize, DenyError> {
        let Some(path) = &self.path else { return Ok(0) };
        let set = parse_deny(path)?;
        let n = set.len();
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(n)
    }

    /// Whether a certificate fingerprint (hex SHA-256) is denied.
    pub fn denies_fingerprint(&self, fp: &Fingerprint) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fp)
    }

    /// Whether the certificate is denied.
    pub fn denies(&self, cert: &CertificateDer<'_>) -> bool {
        self.denies_fingerprint(&fingerprint(cert))
    }
}

fn revoked() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
}

/// The signature checks of a verifier, handed to its webpki `inner` verifier unchanged (the
/// deny list concerns certificates, not signatures).
macro_rules! delegate_signatures {
    () => {
        delegate_signatures!(@check verify_tls12_signature);
        delegate_signatures!(@check verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
    (@check $name:ident) => {
        fn $name(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.$name(message, cert, dss)
        }
    };
}

/// Server-side verifier: webpki, then the deny list.
#[derive(Debug)]
pub(super) struct ClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) deny: Arc<DenyList>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.deny.denies(end_entity) {
            return Err(revoked());
        }
        Ok(ok)
    }

    delegate_signatures!();
}

/// Client-side verifier: webpki (chain and node name), then the deny list.
#[derive(Debug)]
pub(super) struct ServerVerifier {
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) deny: Arc<DenyList>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if self.deny.denies(end_entity) {
            return Err(revoked());
        }
        Ok(ok)
    }

    delegate_signatures!();
}
