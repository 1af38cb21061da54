//! Newtypes for the names and ids that must never be mixed up: services, nodes, certificate
//! fingerprints, mesh ids, and the two kinds of backend address (an ambassador's QUIC port
//! versus a plain TCP target).

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {why}")]
pub struct NameError {
    kind: &'static str,
    name: String,
    why: &'static str,
}

fn check_label(kind: &'static str, name: &str, extra: &[char]) -> Result<(), NameError> {
    let err = |why| {
        Err(NameError {
            kind,
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > 63 {
        return err("it is longer than 63 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c))
    {
        return err("use only letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return err("it may not start or end with '-'");
    }
    Ok(())
}

/// The text accessors of a string newtype: `as_str` and `Display`.
macro_rules! text_newtype {
    ($name:ident) => {
        impl $name {
            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A service name such as `redis`: a DNS label (letters, digits, `-`, `_`), lower-cased.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl TryFrom<String> for ServiceName {
    type Error = NameError;

    fn try_from(name: String) -> Result<Self, NameError> {
        Self::parse(&name)
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> String {
        name.0
    }
}

impl ServiceName {
    /// Validates and lower-cases a service name.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_label("service", name, &['_'])?;
        Ok(Self(name.to_ascii_lowercase()))
    }
}

text_newtype!(ServiceName);

/// What tells apart several instances of one service on one node (a container's short id):
/// 1 to [`InstanceTag::MAX`] lower-case letters and digits. Records carry it (TXT `ci`), the
/// control stream too, and a stream's request names it, so the provider knows which of its
/// targets is meant.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceTag(String);

impl TryFrom<String> for InstanceTag {
    type Error = NameError;

    fn try_from(tag: String) -> Result<Self, NameError> {
        Self::parse(&tag)
    }
}

impl From<InstanceTag> for String {
    fn from(tag: InstanceTag) -> String {
        tag.0
    }
}

impl InstanceTag {
    /// The longest tag.
    pub const MAX: usize = 32;

    /// Validates and lower-cases a tag.
    pub fn parse(tag: &str) -> Result<Self, NameError> {
        let bad = |why: &'static str| NameError {
            kind: "instance tag",
            name: tag.to_string(),
            why,
        };
        if tag.is_empty() || tag.len() > Self::MAX {
            return Err(bad("it must be 1 to 32 characters"));
        }
        if !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("it may hold only letters and digits"));
        }
        Ok(Self(tag.to_ascii_lowercase()))
    }
}

text_newtype!(InstanceTag);

/// An HTTP host name an application answers to (`blog.example.com`): lower-cased, without a
/// trailing dot or a port, as requests are routed by it (their `Host`, or HTTP/2
/// `:authority`).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl TryFrom<String> for HostName {
    type Error = NameError;

    fn try_from(name: String) -> Result<Self, NameError> {
        Self::parse(&name)
    }
}

impl From<HostName> for String {
    fn from(name: HostName) -> String {
        name.0
    }
}

impl HostName {
    /// Validates a host name: dot-separated DNS labels, 253 characters at most.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let bad = |why: &'static str| NameError {
            kind: "HTTP host",
            name: name.to_string(),
            why,
        };
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if trimmed.is_empty() || trimmed.len() > 253 {
            return Err(bad("it must be 1 to 253 characters"));
        }
        for label in trimmed.split('.') {
            check_label("HTTP host", label, &['_'])
                .map_err(|_| bad("each dot-separated part must be a DNS label"))?;
        }
        Ok(Self(trimmed.to_ascii_lowercase()))
    }

    /// The host a request names: its `Host` (or `:authority`) without the port, lower-cased,
    /// a trailing dot ignored; `None` when it is no host name.
    pub fn of_request(authority: &str) -> Option<Self> {
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        };
        Self::parse(host).ok()
    }
}

text_newtype!(HostName);

/// A node name such as `node-b`: a DNS label, lower-cased. It is the TLS server name of the
/// node's certificate, so it must be a valid DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct NodeName(String);

impl NodeName {
    /// Validates and lower-cases a node name.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_label("node", name, &[])?;
        if name.chars().all(|c| c.is_ascii_digit()) {
            return Err(NameError {
                kind: "node",
                name: name.to_string(),
                why: "it must contain a letter",
            });
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The default node name: the host name made into a DNS label, plus a random suffix so
    /// that hosts sharing a host name (namespaces, cloned VMs, containers) never collide.
    pub fn default_for_host(suffix: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let mut label: String = host
            .trim()
            .split('.')
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        label.truncate(48);
        let label = label.trim_matches('-');
        let label = if label.is_empty() { "node" } else { label };
        Self(format!("{label}-{suffix}"))
    }
}

text_newtype!(NodeName);

/// Checks a fixed-length hex id and lower-cases it.
/// `why` names the expected form (e.g. "expected 64 hex digits").
fn hex_id(
    kind: &'static str,
    text: &str,
    len: usize,
    why: &'static str,
) -> Result<String, NameError> {
    if text.len() != len || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NameError {
            kind,
            name: text.to_string(),
            why,
        });
    }
    Ok(text.to_ascii_lowercase())
}

/// The SHA-256 fingerprint of a node certificate, as 64 lower-case hex digits (TXT `id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Validates a fingerprint (64 hex digits, any case).
    pub fn parse(text: &str) -> Result<Self, NameError> {
        hex_id("fingerprint", text, 64, "expected 64 hex digits").map(Self)
    }

    /// The first `n` hex digits, to tell certificates apart in keys and logs.
    pub fn short(&self, n: usize) -> &str {
        self.0.get(..n).unwrap_or(&self.0)
    }

    /// The fingerprint of a SHA-256 digest.
    pub fn of_digest(digest: &[u8]) -> Self {
        Self(hex::encode(digest))
    }
}

text_newtype!(Fingerprint);

/// The public id of a mesh: the first 8 bytes of the SHA-256 of its root's public key, as 16
/// lower-case hex digits (TXT `mesh`). Never derived from a secret by anything but that hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct MeshId(String);

impl MeshId {
    /// Validates a mesh id (16 hex digits, any case).
    pub fn parse(text: &str) -> Result<Self, NameError> {
        hex_id("mesh id", text, 16, "expected 16 hex digits").map(Self)
    }

    /// The mesh id of a root public key.
    pub fn of_digest(digest: &[u8]) -> Self {
        Self(hex::encode(&digest[..digest.len().min(8)]))
    }

    /// The first 8 hex digits, which tag instance and host names (`svc@node_<tag>`).
    pub fn tag(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }
}

text_newtype!(MeshId);

/// The UDP address of an ambassador's QUIC endpoint (what mesh records and `--backend` give).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuicAddr(pub std::net::SocketAddr);

/// The TCP address of a plain service (a provider's target, or a `--direct` backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpAddr(pub std::net::SocketAddr);

impl fmt::Display for QuicAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for TcpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(ServiceName::parse("Redis").unwrap().as_str(), "redis");
        assert!(ServiceName::parse("re dis").is_err());
        assert!(ServiceName::parse("redis@x").is_err());
        assert!(ServiceName::parse("").is_err());
        assert!(NodeName::parse("node_a").is_err());
        assert!(NodeName::parse("-a").is_err());
        assert!(NodeName::parse("123").is_err());
        assert_eq!(NodeName::parse("Node-A").unwrap().as_str(), "node-a");
        let d = NodeName::default_for_host("abc123");
        assert!(d.as_str().ends_with("-abc123"));
        assert!(NodeName::parse(d.as_str()).is_ok());
        let fp = Fingerprint::parse(&"AB".repeat(32)).unwrap();
        assert_eq!(fp.as_str(), "ab".repeat(32));
        assert!(Fingerprint::parse("00").is_err());
        let mesh = MeshId::parse("0123456789ABCDEF").unwrap();
        assert_eq!(mesh.tag(), "01234567");
        assert!(MeshId::parse("xyz").is_err());
    }
}
