//! The stream protocol: every tunnel stream starts with a request header from the consumer and
//! a reply from the provider; after an `Ok` reply the stream carries the raw bytes.
//!
//! ```text
//! request: "AM" | version u8 | flags u8 | name_len u8 | service name (1..=63 bytes)
//!          [ tag_len u8 | instance tag (1..=32 bytes) ]   (with FLAG_TAG)
//! reply:   "AM" | version u8 | code u8  | detail_len u8 | detail (UTF-8, 0..=255 bytes)
//! ```
//! Decoding is check-then-parse over a buffer, with a typed result for "incomplete".

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::names::{InstanceTag, ServiceName};

/// Protocol version spoken by this build.
pub const VERSION: u8 = 1;
const MAGIC: [u8; 2] = *b"AM";
/// Length of the fixed part of a request or reply.
pub const FIXED_LEN: usize = 5;
/// Request flag: a liveness probe. The provider answers as it would, but connects nothing.
pub const FLAG_PROBE: u8 = 0x01;
/// Request flag: the control stream of this connection (see [`super::control`]): the
/// provider answers `Ok` and then sends what it serves, now and on every change. The service
/// name is not used.
pub const FLAG_CONTROL: u8 = 0x02;
/// Request flag: an instance tag follows the service name: which of the provider's instances
/// of the service is meant (it has several, one per container). Sent only to instances whose
/// record carries a tag, so a provider that does not know the flag never receives it.
pub const FLAG_TAG: u8 = 0x04;
/// Longest service name on the wire.
pub const MAX_NAME: usize = 63;

/// What the consumer asks for on a new stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The service to reach.
    pub service: ServiceName,
    /// Flags ([`FLAG_PROBE`]; unknown bits are ignored). [`FLAG_TAG`] is set by
    /// [`Request::encode`] when `tag` is given, and read by [`Request::decode`].
    pub flags: u8,
    /// Which of the provider's instances of the service is meant.
    pub tag: Option<InstanceTag>,
}

/// Why a request header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not enough bytes yet.
    #[error("incomplete header")]
    Incomplete,
    /// The stream does not start with the magic bytes.
    #[error("not an ambassador stream (bad magic)")]
    BadMagic,
    /// A version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A name longer than allowed.
    #[error("service name of {0} bytes is too long")]
    TooLong(usize),
    /// The name is not a valid service name.
    #[error("invalid service name")]
    BadName,
    /// An unknown reply code.
    #[error("unknown reply code {0}")]
    BadCode(u8),
    /// The peer closed or reset the stream, or did not send in time.
    #[error("stream ended before a complete header: {0}")]
    Io(String),
    /// The peer did not send the header within the bound.
    #[error("no header within {0:?}")]
    Timeout(Duration),
}

impl Request {
    /// Encodes the request header.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.service.as_str().as_bytes();
        let mut out = Vec::with_capacity(FIXED_LEN + name.len() + 33);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let tag_flag = if self.tag.is_some() { FLAG_TAG } else { 0 };
        out.push((self.flags & !FLAG_TAG) | tag_flag);
        // Service names are at most 63 bytes (validated by ServiceName): fits in a u8.
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        if let Some(tag) = &self.tag {
            // At most 32 bytes (validated by InstanceTag).
            out.push(tag.as_str().len() as u8);
            out.extend_from_slice(tag.as_str().as_bytes());
        }
        out
    }

    /// Decodes a request from the start of `buf`: the request and the bytes it used, or
    /// `Incomplete` when more bytes are needed.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), HeaderError> {
        let (flags, len) = check_fixed(buf)?;
        if len > MAX_NAME {
            return Err(HeaderError::TooLong(len));
        }
        let end = FIXED_LEN + len;
        let name = buf.get(FIXED_LEN..end).ok_or(HeaderError::Incomplete)?;
        let name = std::str::from_utf8(name).map_err(|_| HeaderError::BadName)?;
        let service = ServiceName::parse(name).map_err(|_| HeaderError::BadName)?;
        if flags & FLAG_TAG == 0 {
            let tag = None;
            return Ok((
                Self {
                    service,
                    flags,
                    tag,
                },
                end,
            ));
        }
        let len = *buf.get(end).ok_or(HeaderError::Incomplete)? as usize;
        if len > InstanceTag::MAX {
            return Err(HeaderError::TooLong(len));
        }
        let tag = buf
            .get(end + 1..end + 1 + len)
            .ok_or(HeaderError::Incomplete)?;
        let tag = std::str::from_utf8(tag)
            .ok()
            .and_then(|t| InstanceTag::parse(t).ok())
            .ok_or(HeaderError::BadName)?;
        let tag = Some(tag);
        Ok((
            Self {
                service,
                flags,
                tag,
            },
            end + 1 + len,
        ))
    }

    /// Reads one request from a stream, within `timeout`.
    pub async fn read_from<R: AsyncRead + Unpin>(
        r: &mut R,
        timeout: Duration,
    ) -> Result<Self, HeaderError> {
        read_framed(r, timeout, Self::decode, request_len).await
    }
}

/// Checks magic and version of a fixed part and returns (flags/code, variable length).
fn check_fixed(buf: &[u8]) -> Result<(u8, usize), HeaderError> {
    if let Some(magic) = buf.get(..2)
        && magic != MAGIC
    {
        return Err(HeaderError::BadMagic);
    }
    if buf.len() < FIXED_LEN {
        return Err(HeaderError::Incomplete);
    }
    if buf[2] != VERSION {
        return Err(HeaderError::UnsupportedVersion(buf[2]));
    }
    Ok((buf[3], buf[4] as usize))
}

async fn read_framed<R, T>(
    r: &mut R,
    timeout: Duration,
    decode: impl Fn(&[u8]) -> Result<(T, usize), HeaderError>,
    header_len: fn(&[u8]) -> usize,
) -> Result<T, HeaderError>
where
    R: AsyncRead + Unpin,
{
    let work = async {
        // Read exactly what the header says it holds, part by part (the fixed part, the name,
        // then a tag's length and the tag): no byte after the header is consumed, so the
        // payload that follows stays in the stream.
        let mut buf = vec![0u8; FIXED_LEN];
        r.read_exact(&mut buf)
            .await
            .map_err(|e| HeaderError::Io(e.to_string()))?;
        loop {
            match decode(&buf) {
                Err(HeaderError::Incomplete) => {}
                other => return other.map(|(v, _)| v),
            }
            let have = buf.len();
            let want = header_len(&buf).max(have + 1);
            buf.resize(want, 0);
            r.read_exact(&mut buf[have..])
                .await
                .map_err(|e| HeaderError::Io(e.to_string()))?;
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HeaderError::Timeout(timeout))?
}

/// How long a reply is, as far as its first bytes tell: the fixed part and the detail.
fn reply_len(buf: &[u8]) -> usize {
    FIXED_LEN + buf.get(4).map_or(0, |&l| l as usize)
}

/// How long a request is, as far as its first bytes tell: the fixed part and the name, then,
/// with [`FLAG_TAG`], the tag's length byte and the tag.
fn request_len(buf: &[u8]) -> usize {
    let Some(&len) = buf.get(4) else {
        return FIXED_LEN;
    };
    let end = FIXED_LEN + len as usize;
    let tagged = buf.get(3).is_some_and(|f| f & FLAG_TAG != 0);
    match (tagged, buf.get(end)) {
        (true, Some(&tag_len)) => end + 1 + tag_len as usize,
        (true, None) => end + 1,
        (false, _) => end,
    }
}

/// The provider's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The target is connected; raw bytes follow.
    Ok,
    /// The stream is refused; nothing reached the target.
    Refused(Refusal),
}

/// A typed refusal with a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of refusal.
    pub code: RefusalCode,
    /// Details for logs (never a secret).
    pub detail: String,
}

/// Kinds of refusal. Numbers are part of the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RefusalCode {
    /// The provider does not announce this service.
    UnknownService = 1,
    /// This consumer may not use the service.
    NotAllowed = 2,
    /// The target refused the TCP connection.
    TargetRefused = 3,
    /// The target could not be reached in time.
    TargetUnreachable = 4,
    /// The provider's health check finds the target down.
    TargetDown = 5,
    /// The provider is draining before it stops.
    Draining = 6,
    /// The request header was malformed.
    BadRequest = 7,
}

impl RefusalCode {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::UnknownService,
            2 => Self::NotAllowed,
            3 => Self::TargetRefused,
            4 => Self::TargetUnreachable,
            5 => Self::TargetDown,
            6 => Self::Draining,
            7 => Self::BadRequest,
            _ => return None,
        })
    }

    /// The refusal as a metric label value (`target_down`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownService => "unknown_service",
            Self::NotAllowed => "not_allowed",
            Self::TargetRefused => "target_refused",
            Self::TargetUnreachable => "target_unreachable",
            Self::TargetDown => "target_down",
            Self::Draining => "draining",
            Self::BadRequest => "bad_request",
        }
    }

    /// Whether another instance may succeed where this one refused.
    pub fn retry_elsewhere(self) -> bool {
        !matches!(self, Self::NotAllowed | Self::BadRequest)
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UnknownService => "unknown service",
            Self::NotAllowed => "not allowed",
            Self::TargetRefused => "target refused",
            Self::TargetUnreachable => "target unreachable",
            Self::TargetDown => "target down",
            Self::Draining => "draining",
            Self::BadRequest => "bad request",
        })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.detail)
        }
    }
}

impl Reply {
    /// A refusal reply.
    pub fn refuse(code: RefusalCode, detail: impl Into<String>) -> Self {
        Self::Refused(Refusal {
            code,
            detail: detail.into(),
        })
    }

    /// Encodes the reply.
    pub fn encode(&self) -> Vec<u8> {
        let (code, detail) = match self {
            Reply::Ok => (0u8, &[][..]),
            Reply::Refused(r) => {
                let d = r.detail.as_bytes();
                // Cut the detail to 255 bytes on a character boundary.
                let mut end = d.len().min(255);
                while !r.detail.is_char_boundary(end) {
                    end -= 1;
                }
                (r.code as u8, &d[..end])
            }
        };
        let mut out = Vec::with_capacity(FIXED_LEN + detail.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(code);
        out.push(detail.len() as u8);
        out.extend_from_slice(detail);
        out
    }

    /// Decodes a reply from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), HeaderError> {
        let (code, len) = check_fixed(buf)?;
        let end = FIXED_LEN + len;
        let detail = buf.get(FIXED_LEN..end).ok_or(HeaderError::Incomplete)?;
        if code == 0 {
            return Ok((Reply::Ok, end));
        }
        let code = RefusalCode::from_u8(code).ok_or(HeaderError::BadCode(code))?;
        let detail = String::from_utf8_lossy(detail).into_owned();
        Ok((Reply::Refused(Refusal { code, detail }), end))
    }

    /// Reads one reply from a stream, within `timeout`.
    pub async fn read_from<R: AsyncRead + Unpin>(
        r: &mut R,
        timeout: Duration,
    ) -> Result<Self, HeaderError> {
        read_framed(r, timeout, Self::decode, reply_len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_incomplete() {
        let req = Request {
            service: ServiceName::parse("redis").unwrap(),
            flags: 0,
            tag: None,
        };
        let bytes = req.encode();
        assert_eq!(Request::decode(&bytes).unwrap(), (req.clone(), bytes.len()));
        // With an instance tag: the flag is set and the tag follows the name.
        let tagged = Request {
            flags: FLAG_TAG,
            tag: Some(InstanceTag::parse("c0ffee12").unwrap()),
            ..req.clone()
        };
        let b = tagged.encode();
        assert_eq!(b[3] & FLAG_TAG, FLAG_TAG);
        assert_eq!(Request::decode(&b).unwrap(), (tagged.clone(), b.len()));
        for cut in 0..b.len() {
            assert_eq!(Request::decode(&b[..cut]), Err(HeaderError::Incomplete));
        }
        for cut in 0..bytes.len() {
            assert_eq!(
                Request::decode(&bytes[..cut]).unwrap_err(),
                HeaderError::Incomplete,
                "cut {cut}"
            );
        }
        let mut v2 = bytes.clone();
        v2[2] = 9;
        assert_eq!(
            Request::decode(&v2).unwrap_err(),
            HeaderError::UnsupportedVersion(9)
        );
        assert_eq!(
            Request::decode(b"GET / HTTP/1.1").unwrap_err(),
            HeaderError::BadMagic
        );
        assert_eq!(
            Request::decode(b"AM\x01\x00\xff").unwrap_err(),
            HeaderError::TooLong(255)
        );
        assert_eq!(
            Request::decode(b"AM\x01\x00\x02a b").unwrap_err(),
            HeaderError::BadName
        );
    }

    #[test]
    fn reply_round_trip() {
        for reply in [
            Reply::Ok,
            Reply::refuse(RefusalCode::TargetRefused, "connection refused"),
            Reply::refuse(RefusalCode::Draining, "é".repeat(200)),
        ] {
            let bytes = reply.encode();
            let (decoded, used) = Reply::decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            if let (Reply::Refused(a), Reply::Refused(b)) = (&reply, &decoded) {
                assert_eq!(a.code, b.code);
                assert!(a.detail.starts_with(&b.detail));
            } else {
                assert_eq!(reply, decoded);
            }
        }
        assert_eq!(
            Reply::decode(b"AM\x01\x63\x00").unwrap_err(),
            HeaderError::BadCode(0x63)
        );
    }

    #[tokio::test]
    async fn read_leaves_payload() {
        let req = Request {
            service: ServiceName::parse("redis").unwrap(),
            flags: 0,
            tag: None,
        };
        let mut data = req.encode();
        data.extend_from_slice(b"PING\r\n");
        let mut r = &data[..];
        assert_eq!(
            Request::read_from(&mut r, Duration::from_secs(1))
                .await
                .unwrap(),
            req
        );
        assert_eq!(r, b"PING\r\n");
        // A tagged request too: exactly its bytes are read.
        let tagged = Request {
            flags: FLAG_TAG,
            tag: Some(InstanceTag::parse("0123456789ab").unwrap()),
            ..req
        };
        let mut data = tagged.encode();
        data.extend_from_slice(b"PING\r\n");
        let mut r = &data[..];
        let got = Request::read_from(&mut r, Duration::from_secs(1)).await;
        assert_eq!(got.unwrap(), tagged);
        assert_eq!(r, b"PING\r\n");
        // A refusal whose code has the tag flag's bit (target unreachable, 4) is no request.
        let reply = Reply::refuse(RefusalCode::TargetUnreachable, "x").encode();
        let mut r = &reply[..];
        assert!(matches!(
            Reply::read_from(&mut r, Duration::from_secs(1)).await,
            Ok(Reply::Refused(_))
        ));
    }
}
