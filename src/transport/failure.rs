//! Why a peer could not be used, classified once from quinn's and rustls's typed errors
//! (connection error kinds, TLS alert codes, application close codes). Callers match on
//! [`PeerFailure`]; no decision depends on the wording of an error message.

use std::fmt;
use std::net::SocketAddr;

use quinn::ConnectionError;
use rustls::AlertDescription;

use crate::names::Fingerprint;

/// Application close codes of this protocol (QUIC `CONNECTION_CLOSE` with an application code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// The node is stopping (or a connection is closed for a normal reason).
    Stopping = 0,
    /// The peer's certificate does not match the record it was dialled for.
    IdentityMismatch = 1,
    /// The peer's certificate was revoked (deny list reloaded).
    Revoked = 2,
    /// The connection was replaced by a fresh one (after a burst of streams, to give back the
    /// memory it held); nothing is wrong with either side.
    Retired = 3,
}

impl CloseCode {
    /// The code on the wire.
    pub fn varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    fn from_wire(code: u64) -> Option<Self> {
        match code {
            0 => Some(Self::Stopping),
            1 => Some(Self::IdentityMismatch),
            2 => Some(Self::Revoked),
            3 => Some(Self::Retired),
            _ => None,
        }
    }
}

/// The QUIC transport error codes that carry a TLS alert: `0x100 | alert`.
const CRYPTO_CODES: std::ops::Range<u64> = 0x100..0x200;

/// A TLS alert from a transport error code, if it is one.
fn alert_of(code: quinn::TransportErrorCode) -> Option<AlertDescription> {
    let code = u64::from(code);
    CRYPTO_CODES
        .contains(&code)
        .then(|| AlertDescription::from((code & 0xff) as u8))
}

/// Why a peer proved not to be who its record claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refutation {
    /// This node's verifier refused the peer's certificate (another mesh's root, a name other
    /// than the record's, expired, revoked): the TLS alert this node sent.
    Certificate(AlertDescription),
    /// The certificate is valid but is not the one the record published.
    FingerprintMismatch {
        /// From the record.
        expected: Fingerprint,
        /// From the handshake.
        got: Option<Fingerprint>,
    },
}

/// Why a peer could not be reached or used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFailure {
    /// No address to dial.
    NoAddress,
    /// The peer is not who its record claims (or not a member of this mesh).
    NotWhoItClaims {
        /// The address that answered.
        addr: SocketAddr,
        /// How it was refuted.
        why: Refutation,
    },
    /// The peer refuses this node's certificate (it is revoked, expired or of another mesh in
    /// the peer's eyes): changes only with an operator's hand.
    RefusesOurCertificate(AlertDescription),
    /// No answer: handshake or idle timeout, a reset, the network.
    Unreachable(Unreachable),
    /// The peer closed the connection itself, with one of our application codes (or another).
    ClosedByPeer(Option<CloseCode>),
    /// This node closed the connection (its own stop, a revocation).
    ClosedHere,
    /// Another QUIC or TLS failure (a protocol violation, a non-certificate alert such as no
    /// common ALPN): the peer speaks something else.
    Protocol(String),
}

/// How a peer proved unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The handshake got no answer within its bound.
    HandshakeTimeout,
    /// The open connection went silent past the idle timeout.
    IdleTimeout,
    /// The peer's stack lost the connection (it restarted).
    Reset,
    /// The address cannot be dialled from this socket (family, port 0).
    BadAddress,
}

impl PeerFailure {
    /// Classifies why a connection ended or a handshake failed.
    pub fn classify(e: &ConnectionError, addr: SocketAddr) -> Self {
        match e {
            ConnectionError::TransportError(te) => match alert_of(te.code) {
                Some(alert) if is_certificate_alert(alert) => Self::NotWhoItClaims {
                    addr,
                    why: Refutation::Certificate(alert),
                },
                _ => Self::Protocol(te.to_string()),
            },
            ConnectionError::ConnectionClosed(cc) => match alert_of(cc.error_code) {
                Some(alert) if is_certificate_alert(alert) => Self::RefusesOurCertificate(alert),
                // An application close sent before the handshake completed (a peer stopping
                // meanwhile) travels as this transport code, without its application code.
                _ if cc.error_code == quinn::TransportErrorCode::APPLICATION_ERROR => {
                    Self::ClosedByPeer(None)
                }
                _ => Self::Protocol(cc.to_string()),
            },
            ConnectionError::ApplicationClosed(ac) => {
                Self::ClosedByPeer(CloseCode::from_wire(ac.error_code.into_inner()))
            }
            ConnectionError::Reset => Self::Unreachable(Unreachable::Reset),
            ConnectionError::TimedOut => Self::Unreachable(Unreachable::IdleTimeout),
            ConnectionError::LocallyClosed => Self::ClosedHere,
            ConnectionError::VersionMismatch | ConnectionError::CidsExhausted => {
                Self::Protocol(e.to_string())
            }
        }
    }

    /// Whether the record this failure came from must never be used again.
    pub fn refutes_record(&self) -> bool {
        matches!(self, Self::NotWhoItClaims { .. })
    }
}

/// Alerts a certificate verifier sends (rustls maps each `CertificateError` to one of these).
fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
            | AlertDescription::CertificateRequired
            | AlertDescription::NoCertificate
    )
}

impl fmt::Display for Refutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate(alert) => write!(f, "its certificate was refused ({alert:?})"),
            Self::FingerprintMismatch {
                expected,
                got: Some(got),
            } => write!(
                f,
                "it presented certificate {got}, but its record says {expected}"
            ),
            Self::FingerprintMismatch {
                expected,
                got: None,
            } => write!(
                f,
                "it presented no readable certificate, but its record says {expected}"
            ),
        }
    }
}

impl fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAddress => f.write_str("no usable address for the peer"),
            Self::NotWhoItClaims { addr, why } => {
                write!(f, "the peer at {addr} is not who its record claims: {why}")
            }
            Self::RefusesOurCertificate(alert) => {
                write!(f, "the peer refuses this node's certificate ({alert:?})")
            }
            Self::Unreachable(Unreachable::HandshakeTimeout) => {
                f.write_str("no answer to the QUIC handshake")
            }
            Self::Unreachable(Unreachable::IdleTimeout) => {
                f.write_str("the peer went silent (idle timeout)")
            }
            Self::Unreachable(Unreachable::Reset) => f.write_str("the peer reset the connection"),
            Self::Unreachable(Unreachable::BadAddress) => {
                f.write_str("the address cannot be dialled from this socket")
            }
            Self::ClosedByPeer(Some(CloseCode::Stopping)) => f.write_str("the peer is stopping"),
            Self::ClosedByPeer(Some(CloseCode::Revoked)) => {
                f.write_str("the peer closed the connection: certificate revoked")
            }
            Self::ClosedByPeer(Some(CloseCode::IdentityMismatch)) => {
                f.write_str("the peer closed the connection: identity mismatch")
            }
            Self::ClosedByPeer(Some(CloseCode::Retired)) => {
                f.write_str("the peer replaced the connection with a fresh one")
            }
            Self::ClosedByPeer(None) => f.write_str("the peer closed the connection"),
            Self::ClosedHere => f.write_str("closed by this node"),
            Self::Protocol(detail) => write!(f, "QUIC/TLS failure: {detail}"),
        }
    }
}

impl std::error::Error for PeerFailure {}
