//! Newtypes for the names that must never be mixed up: services and nodes.

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

/// A service name such as `redis`: a DNS label (letters, digits, `-`, `_`), lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    /// Validates and lower-cases a service name.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_label("service", name, &['_'])?;
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    }
}
