//! The control stream: on every verified connection, the consumer opens one stream with
//! [`FLAG_CONTROL`](super::protocol::FLAG_CONTROL), and the provider sends what it serves —
//! its services, their ports, weights and target health, and whether it drains — at once and
//! again on every change. What a consumer learns this way, over an authenticated channel,
//! outranks any mDNS record about the same node (records are only hints).
//!
//! ```text
//! frame: length u32 (big-endian, 1..=MAX_FRAME) | JSON of a ServiceSet
//! ```

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use crate::served::{ServiceSet, ServiceState};

/// Largest control frame accepted.
pub const MAX_FRAME: usize = 64 * 1024;

/// Why a control frame was not read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The stream ended or failed.
    #[error("control stream ended: {0}")]
    Io(#[from] std::io::Error),
    /// A frame longer than [`MAX_FRAME`] (or empty).
    #[error("control frame of {0} bytes refused")]
    Size(usize),
    /// A frame that is not a service set.
    #[error("malformed control frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// No frame within the bound (the first one is sent at once).
    #[error("no control frame within {0:?}")]
    Timeout(Duration),
}

impl ServiceSet {
    /// Encodes one frame.
    pub fn encode(&self) -> Vec<u8> {
        // A service set is a few small fields per service: serialising cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + json.len());
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Reads one frame.
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, ControlError> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(ControlError::Size(len));
        }
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).await?;
        Ok(serde_json::from_slice(&buf)?)
    }

    /// Reads the first frame, which the provider sends at once, within `bound`.
    pub async fn read_first<R: AsyncRead + Unpin>(
        r: &mut R,
        bound: Duration,
    ) -> Result<Self, ControlError> {
        tokio::time::timeout(bound, Self::read_from(r))
            .await
            .map_err(|_| ControlError::Timeout(bound))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ServiceName;

    #[tokio::test]
    async fn frames_round_trip_and_bounds() {
        let set = ServiceSet {
            draining: false,
            services: vec![ServiceState {
                svc: ServiceName::parse("redis").unwrap(),
                port: 6379,
                w: 3,
                up: true,
                tag: None,
            }],
        };
        let bytes = set.encode();
        let mut r = &bytes[..];
        assert_eq!(ServiceSet::read_from(&mut r).await.unwrap(), set);
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            ServiceSet::read_from(&mut &huge[..]).await,
            Err(ControlError::Size(_))
        ));
        let mut bad = 3u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{x}");
        assert!(matches!(
            ServiceSet::read_from(&mut &bad[..]).await,
            Err(ControlError::Malformed(_))
        ));
    }
}
