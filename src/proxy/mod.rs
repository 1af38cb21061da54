//! The proxy: the consumer's listeners, the provider's stream handler, and the splice between
//! a TCP connection and a QUIC stream.

pub(crate) mod consumer;
pub(crate) mod provider;
pub(crate) mod splice;
pub(crate) mod stream_io;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the connections a node carries (consumer connections and provider streams), so a
/// drain can wait until they have all ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct Activity(Arc<AtomicUsize>);

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<AtomicUsize>);

impl Activity {
    /// Counts one connection until the guard drops.
    pub(crate) fn enter(&self) -> ActiveGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.0.clone())
    }

    /// Connections open now.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
