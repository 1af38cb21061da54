//! Copying bytes between a TCP connection and a QUIC stream, both ways, with the ends mapped:
//! a TCP half-close is a stream finish and back; a reset on either side is a reset on the other.
//!
//! No buffer is held while a connection is idle: TCP is read only once readable (into a chunk
//! handed to quinn without a further copy), and QUIC data arrives in chunks quinn owns.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use quinn::{RecvStream, SendStream, VarInt};
use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

/// Largest chunk read from TCP in one go. A bulk sender keeps the socket full, so each read
/// takes a whole chunk: at 256 KiB, a quarter of the reads (and of the window updates each
/// read sends the TCP peer) that 64 KiB took, and quinn's send buffer walks fewer segments.
const CHUNK: usize = 256 * 1024;
/// Reads shorter than this are copied into an exact-size buffer, so a small message does not
/// pin a whole chunk while quinn waits for its acknowledgement.
const SMALL: usize = 4 * 1024;
/// QUIC chunks taken by the read that waits for data (one QUIC frame each, ~1.4 KB at a
/// 1500-byte MTU); part of every connection's state, so kept small.
const FIRST: usize = 32;
/// Most QUIC chunks written to TCP in one vectored call (~360 KB of full frames): when the first
/// read fills all its slots, what else quinn has ready joins the same write.
const BATCH: usize = 256;

/// How a splice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpliceEnd {
    /// Both directions finished cleanly.
    Closed,
    /// One side reset or failed (the cause: the first failure seen); the other side was reset
    /// too.
    Reset(ResetCause),
}

/// Why a splice reset both sides: which side failed first, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResetCause {
    /// Reading the TCP connection failed (typically: its peer reset it).
    TcpRead(std::io::ErrorKind),
    /// Writing the TCP connection failed (its peer went away).
    TcpWrite(std::io::ErrorKind),
    /// The remote ambassador reset the stream (its sending side), with this code.
    StreamReset(u64),
    /// The remote ambassador stopped reading the stream, with this code.
    StreamStopped(u64),
    /// The QUIC connection under the stream was lost (quinn's typed reason).
    ConnectionLost(quinn::ConnectionError),
    /// The stream was already closed (an internal misuse; never expected).
    StreamClosed,
}

impl std::fmt::Display for ResetCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TcpRead(kind) => write!(f, "TCP side: read failed ({kind})"),
            Self::TcpWrite(kind) => write!(f, "TCP side: write failed ({kind})"),
            Self::StreamReset(code) => write!(f, "stream side: reset by the peer (code {code})"),
            Self::StreamStopped(code) => {
                write!(f, "stream side: stopped by the peer (code {code})")
            }
            Self::ConnectionLost(why) => write!(f, "stream side: connection lost ({why})"),
            Self::StreamClosed => f.write_str("stream side: already closed"),
        }
    }
}

impl ResetCause {
    fn of_read(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => Self::StreamReset(code.into_inner()),
            quinn::ReadError::ConnectionLost(c) => Self::ConnectionLost(c),
            quinn::ReadError::ClosedStream
            | quinn::ReadError::IllegalOrderedRead
            | quinn::ReadError::ZeroRttRejected => Self::StreamClosed,
        }
    }

    fn of_write(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => Self::StreamStopped(code.into_inner()),
            quinn::WriteError::ConnectionLost(c) => Self::ConnectionLost(c),
            quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected => {
                Self::StreamClosed
            }
        }
    }
}

/// What a splice carried.
#[derive(Debug, Clone)]
#[must_use = "a splice's end is logged once, by its connection's task"]
pub(crate) struct SpliceStats {
    /// Bytes from TCP into the stream.
    pub tcp_to_quic: u64,
    /// Bytes from the stream into TCP.
    pub quic_to_tcp: u64,
    /// How it ended.
    pub end: SpliceEnd,
}

impl SpliceStats {
    /// The one log line of a spliced connection: a clean close at debug, a reset (with its
    /// cause) at info. `of` names what was carried (an instance, a service).
    pub(crate) fn log_end(&self, of: &dyn std::fmt::Display) {
        let (up, down) = (self.tcp_to_quic, self.quic_to_tcp);
        match &self.end {
            SpliceEnd::Closed => tracing::debug!(%of, up, down, "closed"),
            SpliceEnd::Reset(cause) => tracing::info!(%of, up, down, %cause, "reset"),
        }
    }
}

/// The byte counters one splice adds to, each way: one relaxed atomic add per chunk copied
/// (the handles are resolved once per connection, before the splice).
#[derive(Debug, Clone)]
pub(crate) struct Traffic {
    /// Bytes read from TCP and written into the stream.
    pub tcp_to_quic: Counter,
    /// Bytes read from the stream and written into TCP.
    pub quic_to_tcp: Counter,
}

/// Error code of a stream reset caused by a TCP reset or failure.
const RESET_CODE: u32 = 1;

enum Read {
    Data(Bytes),
    Eof,
    WouldBlock,
}

thread_local! {
    /// The read buffer of this thread's next TCP read. A read that stays small (a request, a
    /// reply) is copied out and leaves the buffer for the next read; a large one takes it to
    /// quinn, and the next read makes a new one. Request/response traffic so allocates no
    /// chunk per read (jemalloc's thread cache stops at 32 KiB, above which each
    /// allocation and free goes through its extent maps), and an idle connection holds none.
    static SPARE: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

fn try_read_chunk(r: &OwnedReadHalf) -> std::io::Result<Read> {
    SPARE.with_borrow_mut(|buf| {
        if buf.capacity() < CHUNK {
            *buf = BytesMut::with_capacity(CHUNK);
        }
        read_chunk_into(r, buf)
    })
}

/// One read of `r` into `buf` (empty, with room for a chunk); leaves `buf` empty again, with
/// its room when the data was copied out.
fn read_chunk_into(r: &OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<Read> {
    let stream: &TcpStream = r.as_ref();
    // A read shorter than the buffer emptied the socket's receive queue: readiness is cleared
    // at once (by answering WouldBlock to `try_io`, the data kept in `buf`), which saves the
    // read that would only say EAGAIN, one syscall per message on a request/response path.
    // Data (or a FIN) arriving after the read is a new readiness event that this clear does
    // not erase, and a seen FIN stays ready.
    let mut short = false;
    let res = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = r.try_read_buf(buf)?;
        short = n > 0 && n < CHUNK;
        if short {
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match res {
        Ok(0) => Ok(Read::Eof),
        Err(e) if !short && e.kind() == std::io::ErrorKind::WouldBlock => Ok(Read::WouldBlock),
        Err(e) if !short => Err(e),
        // Data: `buf` holds what was read.
        _ if buf.len() < SMALL => {
            let data = Bytes::copy_from_slice(buf);
            buf.clear();
            Ok(Read::Data(data))
        }
        _ => Ok(Read::Data(std::mem::take(buf).freeze())),
    }
}

async fn tcp_to_quic(
    r: &OwnedReadHalf,
    send: &mut SendStream,
    count: &mut u64,
    meter: &Counter,
) -> Result<(), ResetCause> {
    let tcp_err = |e: std::io::Error| ResetCause::TcpRead(e.kind());
    loop {
        r.readable().await.map_err(tcp_err)?;
        match try_read_chunk(r).map_err(tcp_err)? {
            Read::Data(chunk) => {
                let n = chunk.len() as u64;
                *count += n;
                meter.inc_by(n);
                send.write_chunk(chunk)
                    .await
                    .map_err(ResetCause::of_write)?;
            }
            Read::Eof => return send.finish().map_err(|_| ResetCause::StreamClosed),
            Read::WouldBlock => {}
        }
    }
}

async fn quic_to_tcp(
    recv: &mut RecvStream,
    w: &mut OwnedWriteHalf,
    count: &mut u64,
    meter: &Counter,
) -> Result<(), ResetCause> {
    let mut first: [Bytes; FIRST] = std::array::from_fn(|_| Bytes::new());
    // Runs until the stream finishes, then half-closes TCP.
    while let Some(n) = recv
        .read_chunks(&mut first)
        .await
        .map_err(ResetCause::of_read)?
    {
        if n < FIRST {
            // Fewer chunks than slots: quinn had no more (a request, a reply, a slow sender).
            account(&first[..n], count, meter);
            write_all_vectored(w, &mut first[..n]).await?;
            continue;
        }
        // A full first read: the stream is likely busy, and one write of everything ready
        // costs one syscall and one wake-up of the reader instead of one per 32 chunks.
        let mut batch = BATCHES.with_borrow_mut(std::mem::take);
        batch.extend(first.iter_mut().map(std::mem::take));
        let finished = take_ready(recv, &mut batch)?;
        account(&batch, count, meter);
        let written = write_all_vectored(w, &mut batch).await;
        batch.clear();
        BATCHES.with_borrow_mut(|spare| *spare = batch);
        written?;
        if finished {
            break;
        }
    }
    w.shutdown()
        .await
        .map_err(|e| ResetCause::TcpWrite(e.kind()))
}

thread_local! {
    /// This thread's spare vector for a large batch of chunks (emptied after each use), so a
    /// busy stream allocates none per batch and an idle connection holds none.
    static BATCHES: RefCell<Vec<Bytes>> = const { RefCell::new(Vec::new()) };
}

fn account(chunks: &[Bytes], count: &mut u64, meter: &Counter) {
    let bytes = chunks.iter().map(|c| c.len() as u64).sum::<u64>();
    *count += bytes;
    meter.inc_by(bytes);
}

/// Appends to `batch` (up to [`BATCH`] chunks) what `recv` has ready now, without waiting;
/// true when the stream finished.
fn take_ready(recv: &mut RecvStream, batch: &mut Vec<Bytes>) -> Result<bool, ResetCause> {
    use std::future::Future;
    let start = batch.len(); // FIRST, below BATCH
    batch.resize(BATCH, Bytes::new());
    // Polled once with a waker that does nothing: quinn stores it in place of this task's if
    // nothing is ready, and this task's next `read_chunks` (the loop's, always awaited before
    // the task sleeps) looks again and stores its own.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let ready = std::pin::pin!(recv.read_chunks(&mut batch[start..])).poll(&mut cx);
    let (n, finished) = match ready {
        std::task::Poll::Ready(Ok(Some(n))) => (n, false),
        std::task::Poll::Ready(Ok(None)) => (0, true),
        std::task::Poll::Ready(Err(e)) => return Err(ResetCause::of_read(e)),
        std::task::Poll::Pending => (0, false),
    };
    batch.truncate(start + n);
    Ok(finished)
}

/// Writes every chunk of `batch` (emptying them), with vectored writes.
async fn write_all_vectored(w: &mut OwnedWriteHalf, batch: &mut [Bytes]) -> Result<(), ResetCause> {
    let mut first = 0;
    while first < batch.len() {
        let mut written = match try_write_vectored(w, &batch[first..]) {
            Ok(0) => return Err(ResetCause::TcpWrite(std::io::ErrorKind::WriteZero)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                w.writable()
                    .await
                    .map_err(|e| ResetCause::TcpWrite(e.kind()))?;
                continue;
            }
            Err(e) => return Err(ResetCause::TcpWrite(e.kind())),
        };
        while written > 0 && first < batch.len() {
            let len = batch[first].len();
            if written >= len {
                written -= len;
                batch[first] = Bytes::new();
                first += 1;
            } else {
                let _ = batch[first].split_to(written);
                written = 0;
            }
        }
    }
    Ok(())
}

/// One vectored write of the first [`BATCH`] chunks of `pending`, its slices built on the
/// stack of this call (not kept in the connection's state across a wait), in an array no larger
/// than the batch needs (a request's reply fills a [`FIRST`]-slot one).
fn try_write_vectored(w: &OwnedWriteHalf, pending: &[Bytes]) -> std::io::Result<usize> {
    if pending.len() <= FIRST {
        try_write_slices::<FIRST>(w, pending)
    } else {
        try_write_slices::<BATCH>(w, pending)
    }
}

fn try_write_slices<const N: usize>(
    w: &OwnedWriteHalf,
    pending: &[Bytes],
) -> std::io::Result<usize> {
    let mut slices = [std::io::IoSlice::new(&[]); N];
    let n = pending.len().min(N);
    for (slot, chunk) in slices.iter_mut().zip(&pending[..n]) {
        *slot = std::io::IoSlice::new(chunk);
    }
    w.try_write_vectored(&slices[..n])
}

fn reset_tcp(stream: &TcpStream) {
    // Linger 0 makes the close send RST instead of FIN: a reset stays a reset.
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// Copies both ways until both directions end; see the module docs for how ends map.
pub(crate) async fn splice(
    tcp: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    traffic: &Traffic,
) -> SpliceStats {
    let _ = tcp.set_nodelay(true);
    let (r, mut w) = tcp.into_split();
    let abort = CancellationToken::new();
    let (mut up, mut down) = (0u64, 0u64);
    // Each direction ends cleanly, with its own failure, or aborted (`Err(None)`) by the other's.
    let upward = async {
        let res = tokio::select! {
            () = abort.cancelled() => Err(None),
            res = tcp_to_quic(&r, &mut send, &mut up, &traffic.tcp_to_quic) => res.map_err(Some),
        };
        if res.is_err() {
            abort.cancel();
            let _ = send.reset(VarInt::from_u32(RESET_CODE));
            reset_tcp(r.as_ref());
        }
        res
    };
    let downward = async {
        let res = tokio::select! {
            () = abort.cancelled() => Err(None),
            res = quic_to_tcp(&mut recv, &mut w, &mut down, &traffic.quic_to_tcp) => res.map_err(Some),
        };
        if res.is_err() {
            abort.cancel();
            let _ = recv.stop(VarInt::from_u32(RESET_CODE));
            reset_tcp(w.as_ref());
        }
        res
    };
    let (a, b) = tokio::join!(upward, downward);
    let end = match (a, b) {
        (Ok(()), Ok(())) => SpliceEnd::Closed,
        (Err(Some(cause)), _) | (_, Err(Some(cause))) => SpliceEnd::Reset(cause),
        // Only an abort by the other direction, which always carries a cause: unreachable,
        // but a reset all the same.
        _ => SpliceEnd::Reset(ResetCause::StreamClosed),
    };
    if end != SpliceEnd::Closed {
        // Dropping a write half would shut it down (FIN) before the close sends the RST: a
        // reset must stay a reset, so skip that shutdown.
        w.forget();
    }
    SpliceStats {
        tcp_to_quic: up,
        quic_to_tcp: down,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: the far end (to write into) and the near end's read half.
    async fn pair() -> (TcpStream, OwnedReadHalf, OwnedWriteHalf) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let far = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (near, _) = listener.accept().await.expect("accept");
        let (r, w) = near.into_split();
        (far, r, w)
    }

    /// Reads once `r` is readable (retrying a spurious readiness).
    async fn read(r: &OwnedReadHalf) -> Read {
        loop {
            r.readable().await.expect("readable");
            match try_read_chunk(r).expect("read") {
                Read::WouldBlock => continue,
                other => return other,
            }
        }
    }

    #[tokio::test]
    async fn a_small_read_is_copied_out_and_leaves_the_buffer_for_the_next() {
        let (mut far, r, _w) = pair().await;
        far.write_all(b"PING\r\n").await.expect("write");
        let Read::Data(small) = read(&r).await else {
            panic!("no data")
        };
        assert_eq!(&small[..], b"PING\r\n");
        let kept = SPARE.with_borrow(|b| (b.len(), b.capacity()));
        assert_eq!(
            kept,
            (0, CHUNK),
            "the chunk stays, empty, for the next read"
        );

        // A large read takes the chunk along (no copy) and the next read makes a new one.
        let big = vec![7u8; 3 * CHUNK];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            far.write_all(&sent).await.expect("write");
            far
        });
        let mut got = Vec::new();
        let mut first = true;
        while got.len() < big.len() {
            let Read::Data(chunk) = read(&r).await else {
                panic!("early end")
            };
            if first && chunk.len() >= SMALL {
                assert_eq!(SPARE.with_borrow(BytesMut::capacity), 0, "handed to quinn");
                first = false;
            }
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, big);
        drop(writer.await.expect("writer"));
        assert!(matches!(read(&r).await, Read::Eof));
    }
}
