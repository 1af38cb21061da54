use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

#[cfg(not(any(target_os = "linux", target_os = "android")))]
use std::task::ready;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use tokio::io::Interest;
use tokio::time::{Sleep, sleep_until};

#[cfg(not(any(target_os = "linux", target_os = "android")))]
use super::UdpPollHelper;
use super::{AsyncTimer, AsyncUdpSocket, Runtime};

/// A Quinn runtime for Tokio
#[derive(Debug)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(sleep_until(t.into()))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return Ok(Arc::new(linux::UdpSocket::new(sock)?));
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        Ok(Arc::new(UdpSocket {
            inner: udp::UdpSocketState::new((&sock).into())?,
            io: tokio::net::UdpSocket::from_std(sock)?,
        }))
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

impl AsyncTimer for Sleep {
    fn reset(self: Pin<&mut Self>, t: Instant) {
        Self::reset(self, t.into())
    }
    fn poll(self: Pin<&mut Self>, cx: &mut Context) -> Poll<()> {
        Future::poll(self, cx)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[derive(Debug)]
struct UdpSocket {
    io: tokio::net::UdpSocket,
    inner: udp::UdpSocketState,
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl AsyncUdpSocket for UdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn super::UdpPoller>> {
        Box::pin(UdpPollHelper::new(move || {
            let socket = self.clone();
            async move { socket.io.writable().await }
        }))
    }

    fn try_send(&self, transmit: &udp::Transmit) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.inner.send((&self.io).into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            if let Ok(res) = self.io.try_io(Interest::READABLE, || {
                self.inner.recv((&self.io).into(), bufs, meta)
            }) {
                return Poll::Ready(Ok(res));
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.gro_segments()
    }
}

/// The socket on Linux (ambassador's patch, see PATCH.md): the same calls as above, two system
/// calls fewer per wake-up.
///
/// - It is registered for readability only. Linux signals writability on a UDP socket each time
///   a sent datagram leaves the send buffer, which on loopback and veth is during the `sendmsg`
///   itself, so a socket registered for both woke the next `epoll_wait` after every send for
///   nothing. Writability is watched only after a send found the buffer full: a duplicate of the
///   descriptor is registered for it until then (the two registrations are separate epoll
///   entries, each woken only for its own events).
/// - A `recvmmsg` that fills fewer slots than it was given has drained the queue (an unconnected
///   socket without `IP_RECVERR` has no pending error to stop a batch early), so its readiness
///   is cleared at once instead of by a second `recvmmsg` that finds the queue empty. A datagram
///   that arrives after the call raises a new edge, which the next `epoll_wait` reports. (Were
///   quinn-udp to set `IP_RECVERR`, an ICMP error could end a batch early with datagrams still
///   queued; they would wait for the next datagram's edge. Check this when updating quinn-udp.)
#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use std::{
        future::Future,
        io,
        os::fd::{AsFd, OwnedFd},
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        task::{Context, Poll, ready},
    };

    use tokio::io::{Interest, unix::AsyncFd};

    use super::super::{AsyncUdpSocket, UdpPoller};

    #[derive(Debug)]
    pub(super) struct UdpSocket {
        io: AsyncFd<std::net::UdpSocket>,
        inner: udp::UdpSocketState,
        /// False from a send that found the send buffer full until a poller saw it writable.
        writable: AtomicBool,
    }

    impl UdpSocket {
        pub(super) fn new(sock: std::net::UdpSocket) -> io::Result<Self> {
            sock.set_nonblocking(true)?;
            Ok(Self {
                inner: udp::UdpSocketState::new((&sock).into())?,
                // SAFETY: the `UdpSocket` owns its descriptor, and nothing closes or replaces it
                // while the `AsyncFd` holds it.
                io: unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE)? },
                writable: AtomicBool::new(true),
            })
        }

        /// Waits until the socket can take a datagram, through a duplicate descriptor
        /// registered for writability (registration reports a socket that already is).
        async fn wait_writable(self: Arc<Self>) -> io::Result<()> {
            let dup: OwnedFd = self.io.get_ref().as_fd().try_clone_to_owned()?;
            // SAFETY: `dup` owns its descriptor and is closed only when `watch` drops it.
            let watch = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE)? };
            let _ready = watch.writable().await?;
            self.writable.store(true, Ordering::Relaxed);
            Ok(())
        }
    }

    impl AsyncUdpSocket for UdpSocket {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(WritablePoller {
                socket: self,
                wait: None,
            })
        }

        fn try_send(&self, transmit: &udp::Transmit) -> io::Result<()> {
            let sent = self.inner.send(self.io.get_ref().into(), transmit);
            if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                self.writable.store(false, Ordering::Relaxed);
            }
            sent
        }

        fn poll_recv(
            &self,
            cx: &mut Context,
            bufs: &mut [std::io::IoSliceMut<'_>],
            meta: &mut [udp::RecvMeta],
        ) -> Poll<io::Result<usize>> {
            let slots = bufs.len().min(udp::BATCH_SIZE);
            loop {
                let mut guard = ready!(self.io.poll_read_ready(cx))?;
                match self.inner.recv(self.io.get_ref().into(), bufs, meta) {
                    Ok(n) => {
                        if n < slots {
                            guard.clear_ready();
                        }
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                    // As upstream: other receive errors (none is expected on an unconnected
                    // socket) are skipped.
                    Err(_) => {}
                }
            }
        }

        fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
            self.io.get_ref().local_addr()
        }

        fn may_fragment(&self) -> bool {
            self.inner.may_fragment()
        }

        fn max_transmit_segments(&self) -> usize {
            self.inner.max_gso_segments()
        }

        fn max_receive_segments(&self) -> usize {
            self.inner.gro_segments()
        }
    }

    /// Ready at once while no send has found the buffer full (quinn asks before every send);
    /// otherwise waits through [`UdpSocket::wait_writable`].
    struct WritablePoller {
        socket: Arc<UdpSocket>,
        /// The wait under way, with its registration of the duplicate descriptor.
        wait: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
    }

    impl std::fmt::Debug for WritablePoller {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("WritablePoller").finish_non_exhaustive()
        }
    }

    impl UdpPoller for WritablePoller {
        fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
            let this = &mut *self;
            if this.socket.writable.load(Ordering::Relaxed) {
                // Another connection's wait saw the room: drop ours, whose registration would
                // otherwise stay and be woken after every send.
                this.wait = None;
                return Poll::Ready(Ok(()));
            }
            let wait = this
                .wait
                .get_or_insert_with(|| Box::pin(this.socket.clone().wait_writable()));
            let done = wait.as_mut().poll(cx);
            if done.is_ready() {
                this.wait = None;
            }
            done
        }
    }
}
