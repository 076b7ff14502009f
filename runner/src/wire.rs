//! HTTP/1 connections for generation streams, each driven by the task that reads its
//! response.
//!
//! hyper's pooled client runs every connection in a task of its own, which reads the socket
//! and hands each body frame over a channel to the task reading the response: two task
//! wake-ups per chunk, often on different threads. Here the generation's own task polls the
//! connection ([`hyper::client::conn::http1`]) while it waits for the response head and
//! while it reads the body, so a chunk costs one wake-up and no hand-over. Between requests
//! an idle connection sits in a small LIFO pool ([`Pool`]) unpolled; one the server closed
//! meanwhile is noticed when it is taken out (its connection future completes) and replaced.
//!
//! Sockets are [`StampedTcp`]: every read carries the kernel's receive time ([`Arrival`]).

use crate::arrival::{Arrival, StampedTcp};
use bytes::Bytes;
use futures::Stream;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

type Driver = Pin<Box<http1::Connection<StampedTcp, Full<Bytes>>>>;

/// One HTTP/1 connection: the request handle, the connection future (polled only by the
/// task using it), and the socket's arrival record.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
    /// The connection future completed (the server closed it, or it failed).
    ended: bool,
    pub arrival: Arrival,
    /// Taken from the pool rather than opened for this request.
    pub reused: bool,
}

impl Conn {
    /// Poll the connection future unless it has completed.
    fn poll_driver(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        poll_driver(&mut self.driver, &mut self.ended, cx)
    }

    /// Send a request and wait for the response head.
    pub async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let Conn {
            sender,
            driver,
            ended,
            ..
        } = self;
        // Ready at once on an idle connection; an error if it was closed.
        let ready = std::pin::pin!(std::future::poll_fn(|cx| sender.poll_ready(cx)));
        match drive(driver, ended, ready).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(SendError::NotSent(e.into())),
            Err(e) => return Err(SendError::NotSent(e)),
        }
        let response = std::pin::pin!(sender.try_send_request(req));
        match drive(driver, ended, response).await {
            Ok(Ok(r)) => Ok(r),
            // hyper hands the request back when none of it was written.
            Ok(Err(e)) if e.message().is_some() => Err(SendError::NotSent(e.into_error().into())),
            Ok(Err(e)) => Err(SendError::Failed(e.into_error().into())),
            Err(e) => Err(SendError::Failed(e)),
        }
    }

    /// The response body's data frames, read while driving the connection.
    pub fn body(&mut self, body: Incoming) -> Driven<'_> {
        Driven { conn: self, body }
    }
}

fn poll_driver(
    driver: &mut Driver,
    ended: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), hyper::Error>> {
    if *ended {
        return Poll::Ready(Ok(()));
    }
    let r = driver.as_mut().poll(cx);
    *ended = r.is_ready();
    r
}

/// Await `fut` while driving the connection; an error if the connection ends first.
async fn drive<F: Future + Unpin>(
    driver: &mut Driver,
    ended: &mut bool,
    mut fut: F,
) -> Result<F::Output, WireError> {
    std::future::poll_fn(|cx| {
        let conn = poll_driver(driver, ended, cx);
        if let Poll::Ready(out) = Pin::new(&mut fut).poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match conn {
            Poll::Ready(Ok(())) => Poll::Ready(Err(WireError::Closed)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(WireError::Http(e))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// What went wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed by the server")]
    Closed,
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why a request got no response head: `NotSent` when none of it reached the connection
/// (so it can be sent again elsewhere), `Failed` when the server may have received it.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    NotSent(WireError),
    #[error("{0}")]
    Failed(WireError),
}

/// A response body's data frames, each read by polling the connection first.
pub struct Driven<'a> {
    conn: &'a mut Conn,
    body: Incoming,
}

impl Stream for Driven<'_> {
    type Item = Result<Bytes, WireError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // Moves bytes from the socket into the body (or ends it); the body's waker is
            // this task.
            let driver = this.conn.poll_driver(cx);
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            // The body waits for bytes: only the connection can bring them.
            return match driver {
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Ok(())) => Poll::Ready(Some(Err(WireError::Closed))),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// Idle connections to one server (LIFO), and how to open new ones.
#[derive(Clone)]
pub struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle: Arc<Mutex<Vec<Conn>>>,
    max_idle: usize,
}

impl Pool {
    /// A pool for `http://host[:port]` (`https` is not supported for generation streams).
    pub fn new(base: &str, connect_timeout: Duration, max_idle: usize) -> Result<Pool, String> {
        let uri: http::Uri = base
            .parse()
            .map_err(|e| format!("bad server URL {base:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") | None => {}
            Some(s) => return Err(format!("server URL {base:?}: scheme {s} is not supported")),
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("server URL {base:?} has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Pool {
            host,
            port: uri.port_u16().unwrap_or(80),
            connect_timeout,
            idle: Arc::new(Mutex::new(Vec::new())),
            max_idle,
        })
    }

    /// An idle connection that is still open, or a new one.
    pub async fn checkout(&self) -> Result<Conn, WireError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut conn) = idle else { break };
            // A connection the server closed while it sat idle completes now.
            let waker = std::task::Waker::noop();
            let open = conn
                .poll_driver(&mut Context::from_waker(waker))
                .is_pending();
            if open && !conn.sender.is_closed() {
                conn.reused = true;
                return Ok(conn);
            }
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<Conn, WireError> {
        let addr = (self.host.as_str(), self.port);
        let tcp = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {}:{} took longer than {:.0} s",
                        self.host,
                        self.port,
                        self.connect_timeout.as_secs_f64()
                    ),
                )
            })??;
        tcp.set_nodelay(true)?;
        let io = StampedTcp::new(tcp);
        let arrival = io.arrival();
        let (sender, driver) = http1::handshake(io).await?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            ended: false,
            arrival,
            reused: false,
        })
    }

    /// Put back a connection whose response was read to its end.
    pub fn checkin(&self, conn: Conn) {
        if conn.ended || conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// `host:port`, for the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering `per_conn` requests on each connection it accepts, then closing
    /// it (after reading one more request, unanswered, with `swallow`); returns its URL and
    /// the number of connections it accepted so far.
    async fn server(
        per_conn: usize,
        swallow: bool,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    for i in 0.. {
                        if i == per_conn && !swallow {
                            return;
                        }
                        let mut req = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => req.extend_from_slice(&buf[..k]),
                            }
                        }
                        if i == per_conn {
                            return;
                        }
                        let body = format!("connection {n}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    // Closed after `per_conn` responses.
                });
            }
        });
        (url, accepted)
    }

    fn request(pool: &Pool) -> http::Request<Full<Bytes>> {
        http::Request::get("/")
            .header(http::header::HOST, pool.authority())
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn get(pool: &Pool) -> (String, bool) {
        let mut conn = pool.checkout().await.unwrap();
        let resp = conn.send(request(pool)).await.unwrap();
        let mut body = Vec::new();
        let mut frames = conn.body(resp.into_body());
        while let Some(b) = frames.next().await {
            body.extend_from_slice(&b.unwrap());
        }
        let reused = conn.reused;
        pool.checkin(conn);
        (String::from_utf8(body).unwrap(), reused)
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_carries_the_next_request() {
        let (url, accepted) = server(usize::MAX, false).await;
        let pool = Pool::new(&url, Duration::from_secs(5), 8).unwrap();
        assert_eq!(get(&pool).await, ("connection 1".into(), false));
        assert_eq!(get(&pool).await, ("connection 1".into(), true));
        assert_eq!(get(&pool).await, ("connection 1".into(), true));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced() {
        let (url, accepted) = server(1, false).await;
        let pool = Pool::new(&url, Duration::from_secs(5), 8).unwrap();
        assert_eq!(get(&pool).await.0, "connection 1");
        // Let the close reach this side.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&pool).await, ("connection 2".into(), false));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&pool).await, ("connection 3".into(), false));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// A request the server read before it closed the connection may have been acted on: it
    /// fails as sent, and is not to be sent again.
    #[tokio::test]
    async fn a_request_the_server_read_and_dropped_is_failed_not_resendable() {
        let (url, accepted) = server(1, true).await;
        let pool = Pool::new(&url, Duration::from_secs(5), 8).unwrap();
        assert_eq!(get(&pool).await.0, "connection 1");
        let mut conn = pool.checkout().await.unwrap();
        assert!(conn.reused);
        match conn.send(request(&pool)).await {
            Err(SendError::Failed(_)) => {}
            other => panic!("expected a failure after sending, got {other:?}"),
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn urls_other_than_plain_http_are_refused_with_the_reason() {
        let e = Pool::new("https://example.com", Duration::from_secs(1), 1).err();
        assert!(e.unwrap().contains("scheme https"));
        let p = Pool::new("http://[::1]:8080", Duration::from_secs(1), 1).unwrap();
        assert_eq!(p.authority(), "[::1]:8080");
        let p = Pool::new("http://localhost", Duration::from_secs(1), 1).unwrap();
        assert_eq!(p.authority(), "localhost:80");
    }
}
