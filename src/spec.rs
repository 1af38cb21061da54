//! The SPEC grammar of `announce` and `connect` (DESIGN §2).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::names::{HostName, ServiceName};

/// A malformed SPEC; the message says what the grammar is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {kind} SPEC {spec:?}: {why} (expected {grammar})")]
pub struct SpecError {
    kind: &'static str,
    spec: String,
    why: String,
    grammar: &'static str,
}

/// One of the two SPEC grammars.
struct Grammar {
    /// `announce` or `connect`.
    kind: &'static str,
    /// The grammar, with examples.
    text: &'static str,
}

const ANNOUNCE: Grammar = Grammar {
    kind: "announce",
    text: "NAME[:PORT][=TARGET], e.g. redis:6379 or redis:6379=127.0.0.1:12345",
};
const CONNECT: Grammar = Grammar {
    kind: "connect",
    text: "NAME[:PORT][=LISTEN], e.g. redis, redis:16379 or redis=0.0.0.0:6379",
};

impl Grammar {
    /// `spec` does not follow this grammar, because of `why`.
    fn error(&self, spec: &str, why: String) -> SpecError {
        SpecError {
            kind: self.kind,
            spec: spec.to_string(),
            why,
            grammar: self.text,
        }
    }

    /// Splits `NAME[:PORT][=TAIL]` into the service, its port and the tail (unparsed).
    fn split<'s>(
        &self,
        spec: &'s str,
    ) -> Result<(ServiceName, Option<u16>, Option<&'s str>), SpecError> {
        let (head, tail) = match spec.split_once('=') {
            Some((h, t)) => (h, Some(t)),
            None => (spec, None),
        };
        let (name, port) = match head.split_once(':') {
            Some((n, p)) => (n, Some(parse_port(p).map_err(|e| self.error(spec, e))?)),
            None => (head, None),
        };
        let service = ServiceName::parse(name).map_err(|e| self.error(spec, e.to_string()))?;
        Ok((service, port, tail))
    }
}

/// One service to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceSpec {
    /// The service name.
    pub service: ServiceName,
    /// The port advertised to consumers (their default listen port).
    pub port: u16,
    /// Where the provider connects for each stream.
    pub target: Target,
}

/// Where a provider connects: an address, or a host name resolved at each connection, so a
/// target that moves (a Docker container recreated with a new address) is followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket address.
    Addr(SocketAddr),
    /// A host name and port (e.g. Docker's DNS name of a container).
    Name {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl Target {
    /// The target's port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Addr(a) => a.port(),
            Self::Name { port, .. } => *port,
        }
    }

    /// Connects it, resolving a name now; each address is tried in turn.
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        let (host, port) = match self {
            Self::Addr(a) => return tokio::net::TcpStream::connect(a).await,
            Self::Name { host, port } => (host.as_str(), *port),
        };
        let mut last = None;
        for addr in tokio::net::lookup_host((host, port)).await? {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no address"),
            )
        }))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(a) => a.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One service to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSpec {
    /// The service name.
    pub service: ServiceName,
    /// Where to listen; a port of `None` means "the advertised port", learnt from discovery.
    pub listen_ip: IpAddr,
    /// The listen port, if known now.
    pub listen_port: Option<u16>,
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{text:?} is not a port (1-65535)")),
    }
}

/// A target: `IP:PORT`, or `HOST:PORT` with a host name, checked for its form only (it is
/// resolved at each connection: it may not exist yet, as a container started later).
fn parse_target(text: &str) -> Result<Target, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err("port 0 is not allowed".into());
        }
        return Ok(Target::Addr(addr));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let port = parse_port(port)?;
    if HostName::parse(host).is_err() {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(Target::Name {
        host: host.to_string(),
        port,
    })
}

/// A bare IP (`10.1.2.3`, `::1` or `[::1]`), as a target or listen address whose port is the
/// SPEC's own.
fn bare_ip(text: &str) -> Option<IpAddr> {
    text.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(text)
        .parse()
        .ok()
}

impl AnnounceSpec {
    /// Parses `NAME[:PORT][=TARGET]`; a bare IP as TARGET takes PORT (`redis:6379=10.1.2.3`).
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let (service, port, target) = ANNOUNCE.split(spec)?;
        let target = match (target.and_then(bare_ip), port) {
            (Some(ip), Some(port)) => Some(Target::Addr(SocketAddr::new(ip, port))),
            (Some(_), None) => {
                return Err(ANNOUNCE.error(
                    spec,
                    "a bare IP target needs the SPEC's port, as in redis:6379=10.1.2.3".into(),
                ));
            }
            (None, _) => target
                .map(parse_target)
                .transpose()
                .map_err(|e| ANNOUNCE.error(spec, e))?,
        };
        let (port, target) = match (port, target) {
            (Some(port), Some(target)) => (port, target),
            (Some(port), None) => (
                port,
                Target::Addr(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)),
            ),
            (None, Some(target)) => (target.port(), target),
            (None, None) => return Err(ANNOUNCE.error(spec, "give a port or a target".into())),
        };
        Ok(Self {
            service,
            port,
            target,
        })
    }
}

impl ConnectSpec {
    /// Parses `NAME[:PORT][=LISTEN]`.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let (service, port, listen) = CONNECT.split(spec)?;
        let err = |why: String| CONNECT.error(spec, why);
        let (listen_ip, listen_port) = match listen {
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            Some(l) => match l.parse::<SocketAddr>() {
                Ok(addr) if addr.port() == 0 => return Err(err("port 0 is not allowed".into())),
                Ok(addr) => (addr.ip(), Some(addr.port())),
                Err(_) => match bare_ip(l) {
                    Some(ip) => (ip, port),
                    None => {
                        return Err(err(format!("{l:?} is not an IP or IP:PORT to listen on")));
                    }
                },
            },
        };
        Ok(Self {
            service,
            listen_ip,
            listen_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Target {
        Target::Addr(text.parse().unwrap())
    }

    #[test]
    fn announce_specs() {
        let s = AnnounceSpec::parse("redis:6379").unwrap();
        assert_eq!(
            (s.service.as_str(), s.port, s.target),
            ("redis", 6379, addr("127.0.0.1:6379"))
        );
        let s = AnnounceSpec::parse("redis:6379=127.0.0.1:12345").unwrap();
        assert_eq!((s.port, s.target), (6379, addr("127.0.0.1:12345")));
        let s = AnnounceSpec::parse("redis=10.1.2.3:6379").unwrap();
        assert_eq!((s.port, s.target), (6379, addr("10.1.2.3:6379")));
        // A bare IP target takes the SPEC's port.
        let s = AnnounceSpec::parse("redis:6379=10.1.2.3").unwrap();
        assert_eq!((s.port, s.target), (6379, addr("10.1.2.3:6379")));
        let s = AnnounceSpec::parse("redis:6379=[::1]").unwrap();
        assert_eq!(s.target, addr("[::1]:6379"));
        // A host name is kept as a name (resolved at each connection), whether it resolves now
        // or not.
        let s = AnnounceSpec::parse("redis:6379=redis:6379").unwrap();
        let name = Target::Name {
            host: "redis".into(),
            port: 6379,
        };
        assert_eq!((s.port, &s.target), (6379, &name));
        assert_eq!(s.target.to_string(), "redis:6379");
        for bad in [
            "redis",
            "redis:0",
            "redis:70000",
            ":6379",
            "re dis:1",
            "redis:6379=nope",
            "redis:6379=bad host:1",
            "redis:6379=-x:1",
            "redis=1.2.3.4",
            "redis:6379=1.2.3.4:x",
        ] {
            let e = AnnounceSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected NAME[:PORT][=TARGET]"), "{bad}: {e}");
        }
    }

    #[test]
    fn connect_specs() {
        let s = ConnectSpec::parse("redis").unwrap();
        assert_eq!(
            (s.listen_ip, s.listen_port),
            (IpAddr::V4(Ipv4Addr::LOCALHOST), None)
        );
        let s = ConnectSpec::parse("redis:16379").unwrap();
        assert_eq!(s.listen_port, Some(16379));
        let s = ConnectSpec::parse("redis=0.0.0.0:6379").unwrap();
        assert_eq!(
            (s.listen_ip, s.listen_port),
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), Some(6379))
        );
        assert!(ConnectSpec::parse("redis:x").is_err());
        assert!(ConnectSpec::parse("redis=host").is_err());
        let s = ConnectSpec::parse("redis:16379=[::1]").unwrap();
        assert_eq!(
            (s.listen_ip, s.listen_port),
            ("::1".parse().unwrap(), Some(16379))
        );
    }
}
