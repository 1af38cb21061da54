//! Socket addresses as people type them, one parser for every address option: `IP:PORT`,
//! `[IPv6]:PORT`, a bare `IP` where the option has a default port (as `dig @10.0.0.53` means
//! port 53), and `HOST:PORT` where host names are resolved. A malformed value is one line that
//! shows a correct example.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// What one address option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrKind {
    /// The port a bare IP gets; `None`: a port is required.
    pub default_port: Option<u16>,
    /// Host names are accepted (and resolved now, as configuration is checked).
    pub host_names: bool,
    /// A bare port means that port on 127.0.0.1 (loopback unless asked).
    pub bare_port: bool,
    /// Correct values, shown in errors.
    pub examples: &'static str,
}

/// `--dns-server` / `dns_server`: a bare IP means port 53.
pub const DNS_SERVER: AddrKind = AddrKind {
    default_port: Some(53),
    host_names: false,
    bare_port: false,
    examples: "10.0.0.53 or 10.0.0.53:5353",
};

/// `--bind` / `bind`: a bare IP means port 0, an ephemeral port.
pub const BIND: AddrKind = AddrKind {
    default_port: Some(0),
    host_names: false,
    bare_port: false,
    examples: "0.0.0.0 (an ephemeral port) or 0.0.0.0:7443",
};

/// `--backend` / `backends`: no sensible default port, so one is required.
pub const BACKEND: AddrKind = AddrKind {
    default_port: None,
    host_names: true,
    bare_port: false,
    examples: "10.0.0.7:7443 or node-b.lan:7443",
};

/// `--admin` / `[admin] listen`: a bare port is on loopback, a bare IP gets port 9180.
pub const ADMIN: AddrKind = AddrKind {
    default_port: Some(9180),
    host_names: false,
    bare_port: true,
    examples: "9180 (127.0.0.1:9180), 127.0.0.1:9180 or 0.0.0.0:9180",
};

/// `connect --http` / `[http] listen`: a bare port is on loopback, a bare IP gets port 80.
pub const HTTP: AddrKind = AddrKind {
    default_port: Some(80),
    host_names: false,
    bare_port: true,
    examples: "8080 (127.0.0.1:8080), 0.0.0.0 (port 80) or 0.0.0.0:8080",
};

/// An address option's value that is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Not of the option's grammar.
    #[error("bad {name} {text:?}: expected {grammar}, e.g. {examples}", grammar = kind.grammar(), examples = kind.examples)]
    Malformed {
        /// The option or key, e.g. `--dns-server` or `dns_server`.
        name: &'static str,
        /// The value given.
        text: String,
        /// What the option takes.
        kind: AddrKind,
    },
    /// A well-formed `HOST:PORT` whose host does not resolve.
    #[error("bad {name} {text:?}: cannot resolve {host:?}: {why}")]
    Unresolved {
        /// The option or key.
        name: &'static str,
        /// The value given.
        text: String,
        /// The host part.
        host: String,
        /// The resolver's reason.
        why: String,
    },
}

impl AddrKind {
    /// The grammar, for errors.
    fn grammar(&self) -> &'static str {
        match (self.default_port, self.host_names) {
            (Some(_), false) if self.bare_port => "PORT, IP or IP:PORT",
            (Some(_), false) => "IP or IP:PORT",
            (Some(_), true) => "HOST, IP or HOST:PORT",
            (None, true) => "HOST:PORT",
            (None, false) => "IP:PORT",
        }
    }

    /// Parses the value `text` of the option `name`.
    pub fn parse(&self, name: &'static str, text: &str) -> Result<SocketAddr, AddrError> {
        let malformed = || AddrError::Malformed {
            name,
            text: text.to_string(),
            kind: *self,
        };
        let t = text.trim();
        if let Ok(addr) = t.parse::<SocketAddr>() {
            return Ok(addr);
        }
        if self.bare_port
            && let Ok(port) = t.parse::<u16>()
        {
            return Ok(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                port,
            ));
        }
        if let Some(port) = self.default_port {
            // `::1` and `[::1]` alike.
            let bare = t
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(t);
            if let Ok(ip) = bare.parse::<IpAddr>() {
                return Ok(SocketAddr::new(ip, port));
            }
        }
        if !self.host_names {
            return Err(malformed());
        }
        let (host, port) = t.rsplit_once(':').ok_or_else(malformed)?;
        let port = port.parse::<u16>().map_err(|_| malformed())?;
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ':') {
            return Err(malformed());
        }
        let unresolved = |why: String| AddrError::Unresolved {
            name,
            text: text.to_string(),
            host: host.to_string(),
            why,
        };
        (host, port)
            .to_socket_addrs()
            .map_err(|e| unresolved(e.to_string()))?
            .next()
            .ok_or_else(|| unresolved("no address".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bare_ip_gets_the_default_port() {
        let p = |t| DNS_SERVER.parse("--dns-server", t).unwrap();
        assert_eq!(p("10.0.0.53"), sa("10.0.0.53:53"));
        assert_eq!(p("10.0.0.53:5353"), sa("10.0.0.53:5353"));
        assert_eq!(p("::1"), sa("[::1]:53"));
        assert_eq!(p("[::1]"), sa("[::1]:53"));
        assert_eq!(p("[::1]:5353"), sa("[::1]:5353"));
        assert_eq!(p(" 10.0.0.53 "), sa("10.0.0.53:53"));
        assert_eq!(BIND.parse("--bind", "0.0.0.0").unwrap(), sa("0.0.0.0:0"));
        assert_eq!(
            BIND.parse("--bind", "127.0.0.1:7443").unwrap(),
            sa("127.0.0.1:7443")
        );
    }

    #[test]
    fn malformed_values_show_an_example() {
        assert_eq!(
            DNS_SERVER
                .parse("--dns-server", "10.0.0.53:x")
                .unwrap_err()
                .to_string(),
            "bad --dns-server \"10.0.0.53:x\": expected IP or IP:PORT, e.g. 10.0.0.53 or 10.0.0.53:5353"
        );
        for bad in [
            "",
            "dns.lan",
            "10.0.0.53:70000",
            "10.0.0",
            "[::1",
            "::1]:53",
        ] {
            assert!(DNS_SERVER.parse("dns_server", bad).is_err(), "{bad}");
            assert!(BIND.parse("bind", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backends_need_a_port_and_may_be_host_names() {
        let p = |t| BACKEND.parse("backend", t);
        assert_eq!(p("10.0.0.7:7443").unwrap(), sa("10.0.0.7:7443"));
        assert_eq!(p("localhost:7443").unwrap().port(), 7443);
        assert_eq!(
            p("10.0.0.7").unwrap_err().to_string(),
            "bad backend \"10.0.0.7\": expected HOST:PORT, e.g. 10.0.0.7:7443 or node-b.lan:7443"
        );
        for bad in ["not an address", ":7443", "host:x", "a b:1"] {
            assert!(
                matches!(p(bad), Err(AddrError::Malformed { .. })),
                "{bad}: {:?}",
                p(bad)
            );
        }
        assert!(matches!(
            p("no-such-host.invalid:7443"),
            Err(AddrError::Unresolved { .. })
        ));
    }
}
