//! Bounds on the connections a server holds, so that no client can starve others of them:
//! at most `max_connections` open at once, each closed once it has carried no request for
//! `idle_timeout`, and the requests each carries counted.
//!
//! A connection that never sends a byte costs the server a socket and a task, not a request,
//! and must never be counted as one (a few hundred idle sockets made every call, health
//! checks included, fail with RESOURCE_EXHAUSTED while admission counted the runtime's tasks).
//! When the bound is reached, a new connection takes the place of the oldest idle one (one
//! that never carried a request first: raw sockets that sit there), so an attacker holding
//! sockets open cannot lock out a client that actually calls; when every open connection is
//! busy, the new one is refused.
//!
//! Closing is abrupt (the socket reports an error to hyper, which drops the connection): only
//! idle connections are ever closed, so no request is cut short. A client that sends a request
//! at the very moment its idle connection is closed sees it fail, which is why the idle timeout
//! is long by default. Connections in use are retired gracefully by the server's maximum age
//! instead (HTTP/2 GOAWAY, see `server`).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The open connections of one server.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    table: Arc<Table>,
}

#[derive(Debug)]
struct Table {
    open: Mutex<BTreeMap<u64, Arc<ConnectionState>>>,
    count: AtomicUsize,
    next_id: AtomicU64,
    max_connections: usize,
    idle_timeout: Duration,
    /// When the table was made: instants are kept as microseconds since it, in atomics.
    epoch: Instant,
}

/// One connection, as the server and the requests it carries see it.
#[derive(Debug)]
pub struct ConnectionState {
    id: u64,
    /// Requests in flight on it.
    active: AtomicUsize,
    /// Whether it ever carried a request.
    used: AtomicBool,
    /// When its last request ended (or it was accepted), in µs since the table's epoch.
    last_active_us: AtomicU64,
    /// Set to close it: the next read or write fails.
    closing: AtomicBool,
    /// Wakes the connection's task so it notices `closing`.
    waker: AtomicWaker,
}

impl Connections {
    pub(crate) fn new(max_connections: usize, idle_timeout: Duration) -> Self {
        Self {
            table: Arc::new(Table {
                open: Mutex::new(BTreeMap::new()),
                count: AtomicUsize::new(0),
                next_id: AtomicU64::new(0),
                max_connections: max_connections.max(1),
                idle_timeout,
                epoch: Instant::now(),
            }),
        }
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.table.count.load(Ordering::Relaxed)
    }

    /// Takes in an accepted socket, making room for it if the bound is reached; `None`
    /// when every open connection is busy (the socket is then closed).
    pub(crate) fn admit(&self, stream: TcpStream) -> Option<TrackedIo> {
        let table = &self.table;
        let mut open = table
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.len() >= table.max_connections {
            // The oldest never-used connection, else the one idle the longest.
            let victim = open
                .values()
                .filter(|state| {
                    state.active.load(Ordering::Acquire) == 0
                        && !state.closing.load(Ordering::Acquire)
                })
                .min_by_key(|state| {
                    (
                        state.used.load(Ordering::Relaxed),
                        state.last_active_us.load(Ordering::Relaxed),
                    )
                })
                .cloned();
            match victim {
                Some(victim) => {
                    victim.close();
                    open.remove(&victim.id);
                    table.count.store(open.len(), Ordering::Relaxed);
                    tracing::debug!(
                        id = victim.id,
                        "connection limit reached: closed the oldest idle connection"
                    );
                }
                None => {
                    tracing::warn!(
                        max_connections = table.max_connections,
                        "connection limit reached and every connection is busy: refusing a new one"
                    );
                    return None;
                }
            }
        }
        let state = Arc::new(ConnectionState {
            id: table.next_id.fetch_add(1, Ordering::Relaxed),
            active: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            last_active_us: AtomicU64::new(self.now_us()),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        open.insert(state.id, Arc::clone(&state));
        table.count.store(open.len(), Ordering::Relaxed);
        drop(open);
        let info = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: stream.peer_addr().ok(),
        };
        Some(TrackedIo {
            stream,
            idle: Box::pin(tokio::time::sleep(table.idle_timeout)),
            info,
            state,
            connections: self.clone(),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.table.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn forget(&self, id: u64) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.remove(&id);
        self.table.count.store(open.len(), Ordering::Relaxed);
    }
}

impl ConnectionState {
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The connection a request came on, as request extensions carry it, with a guard that
/// counts the request as in flight until dropped.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    state: Arc<ConnectionState>,
    connections: Connections,
}

impl ConnectionInfo {
    /// Counts a request on this connection until the guard is dropped.
    pub(crate) fn request_started(&self) -> RequestGuard {
        self.state.used.store(true, Ordering::Relaxed);
        self.state.active.fetch_add(1, Ordering::AcqRel);
        RequestGuard {
            state: Arc::clone(&self.state),
            connections: self.connections.clone(),
        }
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    state: Arc<ConnectionState>,
    connections: Connections,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.state
            .last_active_us
            .store(self.connections.now_us(), Ordering::Relaxed);
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted socket that closes itself when evicted or idle too long.
#[derive(Debug)]
pub struct TrackedIo {
    stream: TcpStream,
    idle: Pin<Box<Sleep>>,
    info: TcpConnectInfo,
    state: Arc<ConnectionState>,
    connections: Connections,
}

impl TrackedIo {
    /// Fails once the connection is to be closed: evicted, or idle past the timeout.
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.state.waker.register(cx.waker());
        loop {
            if self.state.closing.load(Ordering::Acquire) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed by the server to make room for another connection",
                ));
            }
            if self.idle.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let timeout = self.connections.table.idle_timeout;
            let now = self.connections.now_us();
            let busy = self.state.active.load(Ordering::Acquire) > 0;
            let last = self.state.last_active_us.load(Ordering::Relaxed);
            let idle_for = Duration::from_micros(now.saturating_sub(last));
            if !busy && idle_for >= timeout {
                self.state.closing.store(true, Ordering::Release);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("closed by the server after {timeout:?} without a request"),
                ));
            }
            // Not idle long enough (or busy): look again when it could be.
            let wait = if busy { timeout } else { timeout - idle_for };
            self.idle.as_mut().reset(Instant::now() + wait);
        }
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        self.connections.forget(self.state.id);
    }
}

impl Connected for TrackedIo {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            tcp: self.info.clone(),
            state: Arc::clone(&self.state),
            connections: self.connections.clone(),
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(error) = self.check_open(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
