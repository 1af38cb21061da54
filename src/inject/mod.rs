//! Credentials injection: the provider's ambassador authenticates to the target on each new
//! connection, so the application holds no secret. Redis `AUTH` (password or ACL user), and
//! HTTP headers (`http`).

pub(crate) mod http;

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::secret_file::{SecretFileError, read_secret};

/// Redis credentials. `Debug` prints a mask; the password is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAuth {
    user: Option<String>,
    password: String,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// Why credentials could not be loaded. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unreadable file.
    #[error("cannot read Redis credentials file {path}: {why}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// Readable by others.
    #[error(
        "Redis credentials file {path} is readable by others (mode {mode:03o}): run `chmod 600 {path}` or pass --insecure-key-permissions"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// Malformed contents.
    #[error("Redis credentials {origin}: expected `password` or `user password` on one line")]
    Malformed {
        /// Where they came from.
        origin: String,
    },
}

/// Why authenticating to the target failed.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The target answered AUTH with an error (its message; Redis never echoes the password).
    #[error("the target rejected the credentials: {0}")]
    Rejected(String),
    /// I/O or protocol trouble.
    #[error("talking to the target: {0}")]
    Io(String),
}

impl RedisAuth {
    /// Parses `password` or `user password`.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AuthError> {
        let malformed = || AuthError::Malformed {
            origin: origin.to_string(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(malformed)?;
        let mut parts = line.split_whitespace();
        let (a, b) = (parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(malformed());
        }
        match (a, b) {
            (Some(p), None) => Ok(Self {
                user: None,
                password: p.to_string(),
            }),
            (Some(u), Some(p)) => Ok(Self {
                user: Some(u.to_string()),
                password: p.to_string(),
            }),
            _ => Err(malformed()),
        }
    }

    /// Reads a credentials file, refusing one that others can read unless `insecure`.
    pub fn read_file(path: &Path, insecure: bool) -> Result<Self, AuthError> {
        let shown = path.display().to_string();
        let text = read_secret(path, insecure).map_err(|e| match e {
            SecretFileError::Read(e) => AuthError::Read {
                path: shown.clone(),
                why: e.to_string(),
            },
            SecretFileError::Permissions(mode) => AuthError::Permissions {
                path: shown.clone(),
                mode,
            },
        })?;
        Self::parse(&text, &shown)
    }

    fn command(&self) -> Vec<u8> {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = &self.user {
            args.push(u.as_bytes());
        }
        args.push(self.password.as_bytes());
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Sends AUTH on a fresh target connection and checks the reply (`+OK`), within `bound`.
    /// Reads exactly the reply line, so nothing of the later traffic is consumed.
    pub async fn authenticate(
        &self,
        tcp: &mut TcpStream,
        bound: Duration,
    ) -> Result<(), InjectError> {
        let work = async {
            tcp.write_all(&self.command())
                .await
                .map_err(|e| InjectError::Io(e.to_string()))?;
            let mut line = Vec::with_capacity(64);
            loop {
                let b = tcp
                    .read_u8()
                    .await
                    .map_err(|e| InjectError::Io(e.to_string()))?;
                line.push(b);
                if line.ends_with(b"\r\n") {
                    break;
                }
                if line.len() > 1024 {
                    return Err(InjectError::Io("over-long reply to AUTH".into()));
                }
            }
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            match text.strip_prefix('+') {
                Some("OK") => Ok(()),
                _ => Err(InjectError::Rejected(
                    text.trim_start_matches('-').to_string(),
                )),
            }
        };
        tokio::time::timeout(bound, work)
            .await
            .map_err(|_| InjectError::Io(format!("no reply to AUTH within {bound:?}")))?
    }
}

/// The RESP error the application receives when the target rejects the ambassador's
/// credentials (names the ambassador, never the secret).
pub(crate) const AUTH_FAILED_REPLY: &[u8] =
    b"-ERR ambassador: the target rejected the ambassador's Redis credentials (see its log)\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_mask() {
        let a = RedisAuth::parse("s3cret\n", "test").unwrap();
        assert_eq!(a.command(), b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n");
        let b = RedisAuth::parse("  app  s3cret ", "test").unwrap();
        assert_eq!(
            b.command(),
            b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$6\r\ns3cret\r\n"
        );
        assert!(!format!("{b:?}").contains("s3cret"));
        assert!(RedisAuth::parse("", "t").is_err());
        let e = RedisAuth::parse("a b c", "t").unwrap_err().to_string();
        assert!(!e.contains('a') || !e.contains("b c"));
    }
}
