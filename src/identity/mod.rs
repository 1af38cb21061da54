//! Node identity: the mesh key, the trust root every key holder derives from it, this node's
//! own certificate, and the rustls configurations that make QUIC mutually authenticated.
//!
//! The mesh key is a 32-byte secret shared by every member. From it each node derives, on its
//! own, the *same* Ed25519 root key (HKDF-SHA256 → seed → PKCS#8) and a self-signed root with a
//! fixed name. webpki uses only a trust anchor's subject and public key, so every node's root
//! verifies every other node's leaf. Leaves use fresh per-process keys and name the node.

pub mod ca;
mod key;
mod verify;

pub use key::{MeshKey, MeshKeySource, default_key_path, load_or_create_default};
pub use verify::{DenyError, DenyList};

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use ring::digest::{SHA256, digest};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::names::{Fingerprint, MeshId, NodeName, ServiceName};

/// ALPN protocol id of the tunnel; both sides require it.
pub const ALPN: &[u8] = b"ambassador/1";

/// A name every node certificate carries besides its node name, so that a peer whose node name
/// is not known in advance (a static backend) can still be dialled and its chain verified.
pub const ANY_NODE_SAN: &str = "node.ambassador.invalid";

/// Errors while building an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Certificate generation failed (rcgen).
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// TLS configuration failed (rustls).
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// The crypto provider of every mesh TLS configuration: ring, as the process default that
/// `main` installs for libraries, but with AES-128-GCM offered first. The handshake's own
/// strength is 128 bits (X25519, Ed25519), so AES-256-GCM, which rustls offers first, adds none
/// and costs ~8 % more per packet to seal and open (on Zen 4, 1,416-byte packets: 254 against
/// 276 ns to seal, 299 against 325 to open; benches/results-lan.md). Go's TLS and BoringSSL
/// offer it first for the same reason. A server follows the client's order, so members of an
/// older version still connect.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Identity of the mesh: what every member derives from the shared key.
#[derive(Clone)]
pub struct MeshRoot {
    /// DER of this node's copy of the root certificate.
    cert: CertificateDer<'static>,
    /// Short public id of the mesh: a hash of the root's public key (never of the secret).
    mesh_id: MeshId,
    /// The root's signing key, used to sign this node's leaf. Lives only in memory.
    key: Arc<KeyPair>,
}

impl std::fmt::Debug for MeshRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRoot")
            .field("mesh_id", &self.mesh_id)
            .finish_non_exhaustive()
    }
}

/// PKCS#8 v1 prefix of an Ed25519 private key document; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ambassador");
    params
        .distinguished_name
        .push(DnType::CommonName, "ambassador mesh root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl MeshRoot {
    /// Derives the mesh root from the shared key. Deterministic: every holder gets the same
    /// root public key and name.
    pub fn derive(key: &MeshKey) -> Result<Self, IdentityError> {
        let seed = key.derive_root_seed();
        let mut pkcs8 = Vec::with_capacity(48);
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.extend_from_slice(&seed);
        let der = PrivatePkcs8KeyDer::from(pkcs8);
        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ED25519)?;
        let cert = root_params().self_signed(&key_pair)?;
        let mesh_id = mesh_id_of(key_pair.public_key_raw());
        Ok(Self {
            cert: cert.der().clone(),
            mesh_id,
            key: Arc::new(key_pair),
        })
    }

    /// The public mesh id published in records.
    pub fn mesh_id(&self) -> &MeshId {
        &self.mesh_id
    }

    /// Issues a certificate for `node` with a fresh key pair.
    pub fn issue(&self, node: &NodeName) -> Result<NodeIdentity, IdentityError> {
        self.issue_with(leaf_params(node)?, node)
    }

    /// Issues a certificate valid only between two times (tests of expired certificates).
    #[cfg(test)]
    pub(crate) fn issue_valid(
        &self,
        node: &NodeName,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<NodeIdentity, IdentityError> {
        let mut params = leaf_params(node)?;
        params.not_before = not_before;
        params.not_after = not_after;
        self.issue_with(params, node)
    }

    fn issue_with(
        &self,
        params: CertificateParams,
        node: &NodeName,
    ) -> Result<NodeIdentity, IdentityError> {
        let leaf_key = KeyPair::generate_for(&PKCS_ED25519)?;
        let issuer = Issuer::new(root_params(), self.key.as_ref());
        let cert = params.signed_by(&leaf_key, &issuer)?;
        let cert_der = cert.der().clone();
        Ok(NodeIdentity {
            node: node.clone(),
            fingerprint: fingerprint(&cert_der),
            chain: vec![cert_der],
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
            root: self.cert.clone(),
            mesh_id: self.mesh_id.clone(),
            services: None,
        })
    }
}

pub(crate) fn leaf_params(node: &NodeName) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::new(vec![node.to_string(), ANY_NODE_SAN.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The mesh id for a root public key: the first 8 bytes of its SHA-256, in hex.
pub(crate) fn mesh_id_of(public_key: &[u8]) -> MeshId {
    MeshId::of_digest(digest(&SHA256, public_key).as_ref())
}

/// SHA-256 fingerprint of a certificate, in hex (the TXT `id`).
pub fn fingerprint(cert: &CertificateDer<'_>) -> Fingerprint {
    Fingerprint::of_digest(digest(&SHA256, cert.as_ref()).as_ref())
}

/// This node's identity: its certificate chain and key, and the mesh root it trusts.
pub struct NodeIdentity {
    /// The node's name, as its certificate names it.
    pub node: NodeName,
    /// SHA-256 of the leaf certificate (published as TXT `id`).
    pub fingerprint: Fingerprint,
    /// The public mesh id.
    pub mesh_id: MeshId,
    /// The services this node may announce (`None`: any).
    pub services: Option<Vec<ServiceName>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    root: CertificateDer<'static>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node", &self.node)
            .field("fingerprint", &self.fingerprint)
            .field("mesh_id", &self.mesh_id)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// When this node's certificate expires (Unix seconds); `None` if it cannot be read (a
    /// loaded bundle was parsed on load, a derived one is made here: never expected).
    pub fn not_after_unix(&self) -> Option<i64> {
        let leaf = self.chain.first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(parsed.validity().not_after.timestamp())
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, IdentityError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone())?;
        Ok(Arc::new(roots))
    }

    /// TLS server configuration: TLS 1.3 only, client certificate required and chained to the
    /// mesh root.
    pub fn server_config(
        &self,
        deny: Arc<DenyList>,
    ) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = provider();
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let verifier = Arc::new(verify::ClientVerifier { inner, deny });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// TLS client configuration: TLS 1.3 only, the server must chain to the mesh root, and
    /// this node presents its own certificate.
    pub fn client_config(
        &self,
        deny: Arc<DenyList>,
    ) -> Result<rustls::ClientConfig, IdentityError> {
        self.client_config_with(provider(), deny)
    }

    fn client_config_with(
        &self,
        provider: Arc<CryptoProvider>,
        deny: Arc<DenyList>,
    ) -> Result<rustls::ClientConfig, IdentityError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| IdentityError::Quic(e.to_string()))?;
        let verifier = Arc::new(verify::ServerVerifier { inner, deny });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The identity a verified peer presented: its leaf fingerprint and the node name it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SHA-256 of the peer's leaf certificate.
    pub fingerprint: Fingerprint,
    /// The node name from the certificate's common name; `None` when the certificate carries
    /// no valid node name (a chain that verified but names no node: never from our own CA).
    pub node: Option<NodeName>,
    /// The services the certificate allows its node to announce (`None`: any). Names that are
    /// not valid service names are dropped (they could never match a record).
    pub services: Option<Vec<ServiceName>>,
}

impl PeerIdentity {
    /// Extracts the identity from a connection's verified peer certificates.
    pub fn from_certs(certs: &[CertificateDer<'static>]) -> Option<Self> {
        let leaf = certs.first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let node = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .and_then(|cn| NodeName::parse(cn).ok());
        let mut services: Option<Vec<ServiceName>> = None;
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name
                    && let Some(svc) = uri.strip_prefix(ca::SERVICE_URI_PREFIX)
                {
                    let list = services.get_or_insert_with(Vec::new);
                    if let Ok(svc) = ServiceName::parse(svc) {
                        list.push(svc);
                    }
                }
            }
        }
        Some(Self {
            fingerprint: fingerprint(leaf),
            node,
            services,
        })
    }

    /// Whether the certificate allows announcing `service`.
    pub fn may_announce(&self, service: &ServiceName) -> bool {
        self.services
            .as_ref()
            .is_none_or(|list| list.contains(service))
    }

    /// The node name for logs and refusals: the certificate's, or a placeholder.
    pub fn node_label(&self) -> &str {
        self.node.as_ref().map_or("(unnamed)", NodeName::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn node(n: &str) -> NodeName {
        NodeName::parse(n).unwrap()
    }

    /// Runs a TLS handshake in memory and returns the suite the two sides agreed on.
    fn negotiated(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> rustls::SupportedCipherSuite {
        let name = rustls::pki_types::ServerName::try_from("node-b").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        let suite = c.negotiated_cipher_suite().unwrap();
        assert_eq!(
            Some(suite.suite()),
            s.negotiated_cipher_suite().map(|s| s.suite())
        );
        suite
    }

    #[test]
    fn members_agree_on_aes_128_gcm_and_still_meet_a_client_that_prefers_aes_256() {
        let root = MeshRoot::derive(&MeshKey::generate().unwrap()).unwrap();
        let a = root.issue(&node("node-a")).unwrap();
        let b = root.issue(&node("node-b")).unwrap();
        let deny = DenyList::empty();
        let suite = negotiated(
            a.client_config(deny.clone()).unwrap(),
            b.server_config(deny.clone()).unwrap(),
        );
        assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);

        // A member of an earlier version offers rustls's order (AES-256-GCM first): the server
        // follows it.
        let older = Arc::new(rustls::crypto::ring::default_provider());
        let suite = negotiated(
            a.client_config_with(older, deny.clone()).unwrap(),
            b.server_config(deny).unwrap(),
        );
        assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    #[test]
    fn same_key_same_root_and_mesh_id() {
        let key = MeshKey::generate().unwrap();
        let a = MeshRoot::derive(&key).unwrap();
        let b = MeshRoot::derive(&key).unwrap();
        assert_eq!(a.mesh_id(), b.mesh_id());
        let other = MeshRoot::derive(&MeshKey::generate().unwrap()).unwrap();
        assert_ne!(a.mesh_id(), other.mesh_id());
        // The mesh id is never a substring of the secret's text form.
        assert!(!key.to_text().contains(a.mesh_id().as_str()));
    }

    #[test]
    fn leaves_of_separately_derived_roots_verify_each_other() {
        let key = MeshKey::generate().unwrap();
        let a = MeshRoot::derive(&key)
            .unwrap()
            .issue(&node("node-a"))
            .unwrap();
        let b = MeshRoot::derive(&key)
            .unwrap()
            .issue(&node("node-b"))
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            a.roots().unwrap(),
            provider(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("node-b").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&b.chain[0], &[], &name, &[], now)
            .unwrap();
        // The wrong name is refused.
        let wrong = rustls::pki_types::ServerName::try_from("node-c").unwrap();
        assert!(
            verifier
                .verify_server_cert(&b.chain[0], &[], &wrong, &[], now)
                .is_err()
        );
        // A leaf of another mesh is refused.
        let rogue = MeshRoot::derive(&MeshKey::generate().unwrap())
            .unwrap()
            .issue(&node("node-b"))
            .unwrap();
        assert!(
            verifier
                .verify_server_cert(&rogue.chain[0], &[], &name, &[], now)
                .is_err()
        );
        let peer = PeerIdentity::from_certs(&b.chain).unwrap();
        assert_eq!(peer.node, Some(node("node-b")));
        assert_eq!(peer.fingerprint, b.fingerprint);
    }
}
