//! CA mode: an offline CA (`ca init`), node bundles it issues (`ca issue`), and loading a bundle
//! as this node's identity (`--identity DIR`). Unlike the shared mesh key, a node holding only
//! its bundle cannot mint other identities, and a bundle may list the services its node may
//! announce (URI SANs `urn:ambassador:service:NAME`).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ED25519, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::{Duration as TimeDuration, OffsetDateTime};

use super::{NodeIdentity, fingerprint, leaf_params, mesh_id_of};
use crate::names::{Fingerprint, MeshId, NodeName, ServiceName};
use crate::secret_file::{SecretFileError, read_secret, write_new};

/// Prefix of the URI SANs that list the services a node may announce.
pub const SERVICE_URI_PREFIX: &str = "urn:ambassador:service:";

/// File names inside CA and node directories.
const CA_KEY: &str = "ca.key";
const CA_CRT: &str = "ca.crt";
const NODE_KEY: &str = "node.key";
const NODE_CRT: &str = "node.crt";

/// Errors of CA mode. Messages name the file and the mend; never a key.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A key file is readable by group or others.
    #[error(
        "{path} is readable by others (mode {mode:03o}): run `chmod 600 {path}` or pass --insecure-key-permissions"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(String),
    /// The bundle is not usable as given.
    #[error("{0}")]
    Invalid(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> CaError {
    CaError::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    write_new(path, contents, mode).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => file_err(
            path,
            format!("{e} (refusing to overwrite: choose another --out)"),
        ),
        _ => file_err(path, e),
    })
}

fn read_key(path: &Path, insecure: bool) -> Result<String, CaError> {
    read_secret(path, insecure).map_err(|e| match e {
        SecretFileError::Read(e) => file_err(path, e),
        SecretFileError::Permissions(mode) => CaError::Permissions {
            path: path.to_path_buf(),
            mode,
        },
    })
}

fn make_dir(dir: &Path) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| file_err(dir, e))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "ambassador");
    p.distinguished_name
        .push(DnType::CommonName, "ambassador mesh CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - TimeDuration::hours(1);
    p.not_after = now + TimeDuration::days(3650);
    p
}

/// `ca init --out DIR`: a new CA key (0600) and certificate. Returns the mesh id.
pub fn init(out: &Path) -> Result<MeshId, CaError> {
    make_dir(out)?;
    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| CaError::Cert(e.to_string()))?;
    let cert = ca_params()
        .self_signed(&key)
        .map_err(|e| CaError::Cert(e.to_string()))?;
    write_file(&out.join(CA_KEY), &key.serialize_pem(), 0o600)?;
    write_file(&out.join(CA_CRT), &cert.pem(), 0o644)?;
    Ok(mesh_id_of(key.public_key_raw()))
}

/// What `ca issue` makes.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The node the certificate names.
    pub node: NodeName,
    /// Services it may announce (empty: any).
    pub services: Vec<ServiceName>,
    /// Days of validity.
    pub days: u32,
    /// Start of validity (default: now).
    pub start: Option<OffsetDateTime>,
}

/// `ca issue NODE --ca DIR --out DIR2`: a node bundle (node.key 0600, node.crt, ca.crt).
/// Returns the new certificate's fingerprint.
pub fn issue(
    ca_dir: &Path,
    req: &IssueRequest,
    out: &Path,
    insecure: bool,
) -> Result<Fingerprint, CaError> {
    let ca_key_pem = read_key(&ca_dir.join(CA_KEY), insecure)?;
    let ca_crt_path = ca_dir.join(CA_CRT);
    let ca_crt_pem = fs::read_to_string(&ca_crt_path).map_err(|e| file_err(&ca_crt_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| CaError::Cert(format!("{}: {e}", ca_dir.join(CA_KEY).display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_crt_pem, ca_key)
        .map_err(|e| CaError::Cert(format!("{}: {e}", ca_crt_path.display())))?;
    let mut params = leaf_params(&req.node).map_err(|e| CaError::Cert(e.to_string()))?;
    for s in &req.services {
        let uri = format!("{SERVICE_URI_PREFIX}{s}");
        params.subject_alt_names.push(SanType::URI(
            uri.try_into()
                .map_err(|e: rcgen::Error| CaError::Cert(e.to_string()))?,
        ));
    }
    let start = req.start.unwrap_or_else(OffsetDateTime::now_utc);
    params.not_before = start - TimeDuration::hours(1);
    params.not_after = start + TimeDuration::days(i64::from(req.days));
    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| CaError::Cert(e.to_string()))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| CaError::Cert(e.to_string()))?;
    make_dir(out)?;
    write_file(&out.join(NODE_KEY), &key.serialize_pem(), 0o600)?;
    write_file(&out.join(NODE_CRT), &cert.pem(), 0o644)?;
    write_file(&out.join(CA_CRT), &ca_crt_pem, 0o644)?;
    Ok(fingerprint(cert.der()))
}

/// Loads a node bundle made by `ca issue`.
pub fn load(dir: &Path, insecure: bool) -> Result<NodeIdentity, CaError> {
    let key_path = dir.join(NODE_KEY);
    let key_pem = read_key(&key_path, insecure)?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| file_err(&key_path, format!("not a PKCS#8 PEM key: {e}")))?;
    let crt_path = dir.join(NODE_CRT);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt_path)
        .map_err(|e| file_err(&crt_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&crt_path, e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| file_err(&crt_path, "no certificate in the file"))?
        .clone();
    let ca_path = dir.join(CA_CRT);
    let root = CertificateDer::from_pem_file(&ca_path).map_err(|e| file_err(&ca_path, e))?;
    let (_, ca) =
        x509_parser::parse_x509_certificate(root.as_ref()).map_err(|e| file_err(&ca_path, e))?;
    let mesh_id = mesh_id_of(&ca.public_key().subject_public_key.data);
    let peer = super::PeerIdentity::from_certs(std::slice::from_ref(&leaf))
        .ok_or_else(|| file_err(&crt_path, "unreadable certificate"))?;
    let node = peer
        .node
        .ok_or_else(|| file_err(&crt_path, "the certificate names no valid node"))?;
    let services = peer.services;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| file_err(&crt_path, e))?;
    if !parsed.validity().is_valid() {
        return Err(CaError::Invalid(format!(
            "{}: the certificate is not valid now (valid {} to {}): issue a new one with `ambassador ca issue`",
            crt_path.display(),
            parsed.validity().not_before,
            parsed.validity().not_after
        )));
    }
    Ok(NodeIdentity {
        node,
        fingerprint: fingerprint(&leaf),
        mesh_id,
        services,
        chain,
        key,
        root,
    })
}
