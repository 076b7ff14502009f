//! When response bytes reached this machine, as stamped by the kernel.
//!
//! Generation streams go through [`StampedTcp`] connections ([`crate::wire`]): each socket
//! has `SO_TIMESTAMPNS` on, and every read takes the kernel's receive time of the newest
//! segment it returned (`recvmsg` ancillary data). A token's arrival is then the moment the
//! kernel queued it to our socket, not the moment our process got round to reading it: with
//! hundreds of streams receiving at once, or a busy CPU, the two differ by milliseconds.
//!
//! The kernel stamps with the real-time clock. Right after each read, the age of the stamp
//! (`real-time now − stamp`) is taken off the monotonic clock, so what is stored is a
//! monotonic instant (nanoseconds since [`base`]); a clock step can only move it within
//! [last arrival on this connection, now]. Without a stamp, the read's own monotonic time is
//! used: a kernel that gives none, or the first bytes of the process's first connection (the
//! kernel turns stamping on a moment after the first socket asks for it).
//!
//! The connection's latest arrival is shared with the task reading its response
//! ([`Arrival`]); HTTP/1 runs one request at a time per connection, and hyper hands a body
//! frame over before it reads the next bytes, so when a frame comes out the latest arrival
//! is that of the read that completed it. The same handle tells when the request began to
//! be written to the socket (the first write after the previous response's last read), so
//! a request's send time excludes the wait for a connection and for the writing task.

use hyper::rt::{Read, ReadBufCursor, Write};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;

/// The real-time and the monotonic clock read at one moment: the real-time reading with the
/// midpoint of two monotonic readings around it. A thread preempted between two reads would
/// otherwise shift a stamp taken across clocks by the preemption (milliseconds on a busy
/// CPU); a wide bracket is read again, and the narrowest of three is kept.
fn clock_pair() -> (SystemTime, Instant) {
    let mut best: Option<(Duration, SystemTime, Instant)> = None;
    for _ in 0..3 {
        let before = Instant::now();
        let real = SystemTime::now();
        let after = Instant::now();
        let gap = after - before;
        let mid = before + gap / 2;
        if gap <= Duration::from_micros(2) {
            return (real, mid);
        }
        if best.is_none_or(|b| gap < b.0) {
            best = Some((gap, real, mid));
        }
    }
    let (_, real, mid) = best.expect("three readings");
    (real, mid)
}

/// The origin of stored arrivals (the first use in this process).
pub fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// One connection's latest arrival, latest send and latest request start, in nanoseconds
/// since [`base`] (0: none yet).
#[derive(Clone, Debug, Default)]
pub struct Arrival(Arc<[AtomicU64; 3]>);

const RECEIVED: usize = 0;
const SENT: usize = 1;
const STARTED: usize = 2;

impl Arrival {
    /// The arrival of the bytes read last, if any.
    pub fn latest(&self) -> Option<Instant> {
        self.get(RECEIVED)
    }

    /// When the latest request began to be written: the first write after a read (HTTP/1
    /// writes a request whole before its response comes).
    pub fn sent(&self) -> Option<Instant> {
        self.get(SENT)
    }

    /// The arrival of the first bytes read after the latest write (or of the connection's
    /// first bytes): on a server's connection, when the request being served began to
    /// arrive (HTTP/1 reads a request before it writes the response).
    pub fn request_started(&self) -> Option<Instant> {
        self.get(STARTED)
    }

    fn get(&self, i: usize) -> Option<Instant> {
        match self.0[i].load(Ordering::Acquire) {
            0 => None,
            n => Some(base() + Duration::from_nanos(n)),
        }
    }

    fn store(&self, i: usize, at: Instant) {
        let n = at.saturating_duration_since(base()).as_nanos() as u64;
        self.0[i].store(n.max(1), Ordering::Release);
    }
}

/// A TCP stream whose reads record the kernel's receive time.
pub struct StampedTcp {
    tcp: TcpStream,
    arrival: Arrival,
    /// The kernel gives stamps on this socket.
    stamped: bool,
    /// When the connection was made (no arrival precedes it).
    opened: Instant,
    /// A write happened since the last read (the current request's start is recorded).
    writing: bool,
    /// No read since the last write (or ever): the next bytes read start a request.
    next_read_starts: bool,
    /// Reads land here (initialized memory, so no unsafe code) and are copied into hyper's
    /// buffer.
    scratch: Vec<u8>,
    cmsg: Vec<u8>,
}

impl StampedTcp {
    pub fn new(tcp: TcpStream) -> StampedTcp {
        let stamped = setsockopt(&tcp, sockopt::ReceiveTimestampns, &true).is_ok();
        let opened = Instant::now().max(base());
        StampedTcp {
            tcp,
            arrival: Arrival::default(),
            stamped,
            opened,
            writing: false,
            next_read_starts: true,
            scratch: vec![0; 16 * 1024],
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
        }
    }

    /// The connection's arrival record (shared).
    pub fn arrival(&self) -> Arrival {
        self.arrival.clone()
    }

    /// One non-blocking read into `scratch[..want]`: bytes read and the kernel's stamp.
    ///
    /// A read that returns fewer bytes than asked for has emptied the socket's receive queue,
    /// so, as tokio's own `TcpStream` does, it also clears the socket's read readiness: the
    /// next poll waits for the next epoll event instead of calling `recvmsg` only to be told
    /// `EAGAIN` (one system call less per streamed chunk). Readiness is cleared only if no
    /// event arrived since the read began (tokio's readiness ticks), so no data is missed.
    fn recv(&mut self, want: usize) -> io::Result<(usize, Option<SystemTime>)> {
        let fd = self.tcp.as_raw_fd();
        let (scratch, cmsg, stamped) = (&mut self.scratch, &mut self.cmsg, self.stamped);
        let mut drained = None;
        let read = self.tcp.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut scratch[..want])];
            let space = if stamped { Some(&mut cmsg[..]) } else { None };
            let msg =
                recvmsg::<()>(fd, &mut iov, space, MsgFlags::empty()).map_err(io::Error::from)?;
            let mut at = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmTimestampns(ts) = c {
                        let (s, ns) = (ts.tv_sec(), ts.tv_nsec());
                        if s >= 0 && (0..1_000_000_000).contains(&ns) {
                            at = Some(SystemTime::UNIX_EPOCH + Duration::new(s as u64, ns as u32));
                        }
                    }
                }
            }
            if msg.bytes > 0 && msg.bytes < want {
                // try_io clears readiness on WouldBlock; the bytes go out through `drained`.
                drained = Some((msg.bytes, at));
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok((msg.bytes, at))
        });
        match (read, drained) {
            (_, Some(got)) => Ok(got),
            (read, None) => read,
        }
    }

    /// Record the arrival of a read that just returned: its kernel stamp taken back onto the
    /// monotonic clock, kept within [previous arrival (or the connection's opening), now].
    fn note(&mut self, stamp: Option<SystemTime>) {
        let (real_now, now) = clock_pair();
        let age = stamp
            .and_then(|s| real_now.duration_since(s).ok())
            .unwrap_or_default();
        let floor = self.arrival.latest().unwrap_or(self.opened);
        let at = now.checked_sub(age).unwrap_or(floor).max(floor).min(now);
        self.arrival.store(RECEIVED, at);
        if self.next_read_starts {
            self.next_read_starts = false;
            self.arrival.store(STARTED, at);
        }
        self.writing = false;
    }

    /// Read into `scratch[..want]` once the socket is readable; the bytes read (0: end of
    /// stream), their arrival recorded.
    fn poll_recv(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.recv(want) {
                Ok((n, stamp)) => {
                    if n > 0 {
                        self.note(stamp);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl StampedTcp {
    /// The first write after a read starts a request: record when.
    fn starting_to_write(&mut self) {
        self.next_read_starts = true;
        if !self.writing {
            self.writing = true;
            self.arrival.store(SENT, Instant::now());
        }
    }
}

impl Read for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(this.scratch.len());
        let n = ready!(this.poll_recv(cx, want))?;
        buf.put_slice(&this.scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

/// The same socket for tokio users (the simulated server's connections, [`StampingListener`]).
impl AsyncRead for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(this.scratch.len());
        let n = ready!(this.poll_recv(cx, want))?;
        buf.put_slice(&this.scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Write::poll_write(self, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Write::poll_write_vectored(self, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Write::poll_flush(self, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Write::poll_shutdown(self, cx)
    }
}

impl Write for StampedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.starting_to_write();
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.starting_to_write();
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A TCP listener for axum whose connections are [`StampedTcp`] (with `TCP_NODELAY`, as
/// uvicorn sets it), so a handler can tell when its request's first bytes reached this
/// machine ([`ConnArrival`]).
pub struct StampingListener(pub tokio::net::TcpListener);

impl axum::serve::Listener for StampingListener {
    type Io = StampedTcp;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (StampedTcp, std::net::SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    return (StampedTcp::new(tcp), addr);
                }
                // A connection that failed while queued concerns only that client; anything
                // else (out of file descriptors) gets a pause before the next try, as axum's
                // own listener does.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!("accept error: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A server connection's [`Arrival`], for handlers (`ConnectInfo<ConnArrival>`).
#[derive(Clone, Debug)]
pub struct ConnArrival(pub Arrival);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, StampingListener>>
    for ConnArrival
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, StampingListener>) -> ConnArrival {
        ConnArrival(stream.io().arrival())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Bytes written long before they are read arrive when they were written: the stamp is
    /// the kernel's, not the read's.
    #[tokio::test]
    async fn a_late_read_keeps_the_time_the_bytes_arrived() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut tcp = StampedTcp::new(client);
        assert!(tcp.stamped, "SO_TIMESTAMPNS is available on Linux");
        // The kernel turns stamping on for the first such socket a moment later (a deferred
        // static key).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let written = Instant::now();
        server.write_all(b"first token").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut buf = [0u8; 64];
        let n = std::future::poll_fn(|cx| {
            let mut rb = hyper::rt::ReadBuf::new(&mut buf);
            match Read::poll_read(Pin::new(&mut tcp), cx, rb.unfilled()) {
                Poll::Ready(r) => Poll::Ready(r.map(|()| rb.filled().len())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
        .unwrap();
        let read = Instant::now();
        assert_eq!(&buf[..n], b"first token");
        let at = tcp.arrival.latest().expect("an arrival");
        assert!(at >= written, "arrival before the write");
        assert!(
            at - written < Duration::from_millis(50),
            "arrival {:?} after the write, read {:?} after it",
            at - written,
            read - written
        );
        assert!(read - at >= Duration::from_millis(150));
    }

    async fn write(tcp: &mut StampedTcp, b: &[u8]) {
        std::future::poll_fn(|cx| Write::poll_write(Pin::new(&mut *tcp), cx, b))
            .await
            .unwrap();
    }

    /// The first write after a read marks a request's start; later writes of the same
    /// request do not move it.
    #[tokio::test]
    async fn a_request_starts_at_its_first_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut tcp = StampedTcp::new(client);
        assert_eq!(tcp.arrival.sent(), None);
        let before = Instant::now();
        write(&mut tcp, b"POST /generate").await;
        let first = tcp.arrival.sent().expect("a send");
        assert!(first >= before);
        tokio::time::sleep(Duration::from_millis(20)).await;
        write(&mut tcp, b" body").await;
        assert_eq!(tcp.arrival.sent(), Some(first), "the same request");
        server.write_all(b"reply").await.unwrap();
        let mut buf = [0u8; 16];
        std::future::poll_fn(|cx| {
            let mut rb = hyper::rt::ReadBuf::new(&mut buf);
            Read::poll_read(Pin::new(&mut tcp), cx, rb.unfilled())
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        write(&mut tcp, b"POST /generate").await;
        let second = tcp.arrival.sent().unwrap();
        assert!(
            second >= first + Duration::from_millis(40),
            "the next request"
        );
    }

    /// On a server's connection, a request starts with the first bytes read after the
    /// previous response was written; bytes read after them belong to the same request.
    #[tokio::test]
    async fn a_request_starts_with_its_first_bytes_on_the_server_side() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server = StampedTcp::new(server);
        let arrival = server.arrival();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 64];
        client.write_all(b"POST /generate").await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"POST /generate");
        let first = arrival.request_started().expect("a request start");
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b" body").await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b" body");
        assert_eq!(arrival.request_started(), Some(first), "the same request");
        assert!(arrival.latest().unwrap() >= first + Duration::from_millis(20));
        AsyncWriteExt::write_all(&mut server, b"response")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let written = Instant::now();
        client.write_all(b"POST /generate").await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"POST /generate");
        let second = arrival.request_started().unwrap();
        assert!(
            second >= written,
            "the next request starts after it was written"
        );
        assert!(
            second - written < Duration::from_millis(25),
            "its arrival, not its read: {:?} after the write",
            second - written
        );
    }
}
