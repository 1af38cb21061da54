//! How many tunnel streams a pooled connection carries, so that one which carried a burst is
//! replaced once the burst is over (issue 16, point 4).
//!
//! quinn keeps a connection's stream tables (and a free list of receive states) at the size
//! of the most streams it ever had open at once: after 10,000 concurrent TCP connections, the
//! pooled connection holds tens of MiB it never gives back. The pool therefore counts the
//! streams open on each connection; when the count falls well below a large peak it dials a
//! fresh connection for new streams, closes the old one once its last stream ends, and asks
//! the allocator to return the freed memory to the system.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use quinn::{Connection, RecvStream, SendStream};

/// A connection whose peak was below this many concurrent streams is never replaced: what it
/// holds is small (a few KiB per stream of its peak).
pub(super) const RETIRE_PEAK: usize = 1024;

/// A connection that carried at least this many streams in all may have held many at once:
/// when it ends, its side gives the freed memory back (see [`give_back_soon`]).
pub const BURST_STREAMS: u64 = RETIRE_PEAK as u64;

/// A connection is replaced once its open streams fall to this fraction of its peak.
const RETIRE_FRACTION: usize = 8;

/// Tunnel streams open on one pooled connection now, and the most there were at once.
#[derive(Debug, Default)]
pub(super) struct Load {
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl Load {
    /// Streams open now.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether the connection carried a burst that is now over: replacing it gives back what
    /// the burst made quinn keep.
    pub(super) fn worth_retiring(&self) -> bool {
        let peak = self.peak.load(Ordering::Relaxed);
        peak >= RETIRE_PEAK && self.open() <= peak / RETIRE_FRACTION
    }
}

/// One pooled connection and the count of tunnel streams on it. Dereferences to the
/// connection.
#[derive(Debug, Clone)]
pub struct PooledConnection {
    pub(super) conn: Connection,
    pub(super) load: Arc<Load>,
}

impl PooledConnection {
    pub(super) fn new(conn: Connection) -> Self {
        Self {
            conn,
            load: Arc::default(),
        }
    }

    /// Counts one more tunnel stream on this connection until the ticket drops.
    pub fn ticket(&self) -> StreamTicket {
        let open = self.load.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.load.peak.fetch_max(open, Ordering::Relaxed);
        StreamTicket(self.load.clone())
    }
}

impl Deref for PooledConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// A tunnel stream counted on its connection while this lives (see [`PooledConnection`]).
#[derive(Debug)]
pub struct StreamTicket(Arc<Load>);

impl Drop for StreamTicket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open tunnel stream, counted on its pooled connection while it lives.
#[derive(Debug)]
pub struct Tunnel {
    /// Towards the provider.
    pub send: SendStream,
    /// From the provider.
    pub recv: RecvStream,
    /// Keeps the stream counted; drop it with the stream.
    pub ticket: StreamTicket,
}

/// Gives memory freed by a retired connection back to the system soon: the allocator keeps
/// freed pages for reuse otherwise. Calls within one pause are served by one purge.
pub fn give_back_soon() {
    use std::sync::atomic::AtomicBool;
    static PENDING: AtomicBool = AtomicBool::new(false);
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        // quinn frees a closed connection's state after its draining period (3 PTO, a few ms
        // on a LAN); a second is well past it.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        PENDING.store(false, Ordering::Release);
        purge();
    });
}

/// Returns the free pages of every jemalloc arena to the system (`arena.<all>.purge`). The
/// binary's global allocator is jemalloc; in a test binary this purges jemalloc's own, unused
/// arenas, which is harmless.
#[cfg(not(target_env = "msvc"))]
fn purge() {
    // MALLCTL_ARENAS_ALL is 4096: the purge applies to every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated, and `purge` reads and writes no value, so the null
    // pointers and zero length are what mallctl expects for it.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(rc, "jemalloc purge failed");
    }
}

#[cfg(target_env = "msvc")]
fn purge() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_that_is_over_is_worth_retiring() {
        let load = Arc::new(Load::default());
        let ticket = || {
            StreamTicket({
                let open = load.open.fetch_add(1, Ordering::Relaxed) + 1;
                load.peak.fetch_max(open, Ordering::Relaxed);
                load.clone()
            })
        };
        let mut held: Vec<StreamTicket> = (0..RETIRE_PEAK - 1).map(|_| ticket()).collect();
        held.clear();
        assert!(!load.worth_retiring(), "a small peak is kept");
        let mut held: Vec<StreamTicket> = (0..RETIRE_PEAK).map(|_| ticket()).collect();
        assert!(!load.worth_retiring(), "a burst in progress is kept");
        held.truncate(RETIRE_PEAK / RETIRE_FRACTION + 1);
        assert!(!load.worth_retiring());
        held.pop();
        assert!(load.worth_retiring(), "open at an eighth of the peak");
        assert_eq!(load.open(), RETIRE_PEAK / RETIRE_FRACTION);
    }
}
