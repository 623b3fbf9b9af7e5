//! What the daemon's listeners (the control socket, the metrics port) share: a bounded number of
//! connections per listener and per peer, accept errors backed off with their logging
//! rate-limited, and a write timeout. Each open connection holds one file descriptor: without
//! bounds, a peer that opens connections and never sends (or never reads its answers) could
//! use every descriptor the daemon has and lock everyone else out, root included.
//!
//! Reads are bounded too: hyper closes a connection that has not sent a whole request head
//! within [`READ_TIMEOUT`] (idle keep-alive connections too), and bodies have a deadline.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::broadcast,
    time::Sleep,
};

/// How many connections a listener keeps open at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From all peers but root together.
    pub total: usize,
    /// From one peer (a uid on the control socket, an address on the metrics port), root too.
    pub per_peer: usize,
}

/// The control socket: root's connections do not count towards `total`, so however many
/// connections other users hold, root has `per_peer` of its own.
pub const CONTROL: Limits = Limits { total: 512, per_peer: 64 };
/// The metrics port: Prometheus needs one or two at a time.
pub const METRICS: Limits = Limits { total: 64, per_peer: 8 };

/// An answer that the peer does not read within this is given up, with its connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that stalls in its request head (an idle connection too) or body is dropped after
/// this, so it cannot hold a connection (and a daemon file descriptor) forever.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1.1 as both listeners serve it: request heads within [`READ_TIMEOUT`], and a client
/// that shuts down its sending side once its request is sent still answered.
pub fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(READ_TIMEOUT).half_close(true);
    builder
}

/// Whose connection it is, for the per-peer limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    Uid(u32),
    Addr(IpAddr),
    /// Credentials that could not be read: counted together.
    Unknown,
}

impl PeerKey {
    fn is_root(self) -> bool {
        self == Self::Uid(0)
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "uid {uid}"),
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Unknown => write!(f, "peers of unknown credentials"),
        }
    }
}

/// Why a connection was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("too many connections from {0} ({1} at once); close some and retry")]
    Peer(PeerKey, usize),
    #[error("too many connections ({0} at once); retry later")]
    Listener(usize),
}

/// The connections a listener has open, by peer.
#[derive(Debug)]
pub struct Slots {
    limits: Limits,
    open: Mutex<(usize, HashMap<PeerKey, usize>)>,
}

/// One open connection, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    key: PeerKey,
}

impl Slots {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, open: Mutex::new((0, HashMap::new())) })
    }

    /// A slot for a connection from `key`, if both limits allow it.
    pub fn take(self: &Arc<Self>, key: PeerKey) -> Result<Slot, Full> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_peer) = &mut *open;
        let mine = by_peer.get(&key).copied().unwrap_or(0);
        if mine >= self.limits.per_peer {
            return Err(Full::Peer(key, self.limits.per_peer));
        }
        if !key.is_root() {
            if *total >= self.limits.total {
                return Err(Full::Listener(self.limits.total));
            }
            *total += 1;
        }
        by_peer.insert(key, mine + 1);
        Ok(Slot { slots: self.clone(), key })
    }

    /// Connections open now (root's included).
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).1.values().sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_peer) = &mut *open;
        if !self.key.is_root() {
            *total -= 1;
        }
        match by_peer.get_mut(&self.key) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                by_peer.remove(&self.key);
            }
        }
    }
}

/// At most one log line per `every` for a repeated event, saying how many were not logged.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self { every, last: None, suppressed: 0 }
    }

    /// `Some(n)` when this one may be logged, `n` being how many were not since the last.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// `" (N more not logged)"` for a throttled line.
fn more(n: u64) -> String {
    if n == 0 { String::new() } else { format!(" ({n} more like it not logged)") }
}

/// A listening socket.
pub trait Listener {
    type Stream: AsyncRead + AsyncWrite + Unpin;
    /// The next connection.
    fn next(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts connections until `shutdown`, each in a task of its own with a slot of `limits`.
/// `identify` names a new connection's peer: what its handler gets, and its key. A connection
/// beyond the limits gets a 503 (if its socket takes it at once) and is closed.
pub async fn serve<L: Listener, P, Fut>(
    what: &'static str,
    listener: L,
    identify: impl Fn(&L::Stream) -> (P, PeerKey),
    limits: Limits,
    connection: impl Fn(Deadlined<L::Stream>, P) -> Fut,
    mut shutdown: broadcast::Receiver<()>,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Slots::new(limits);
    let (mut refused, mut failed) = (Throttle::new(Duration::from_secs(10)), Throttle::new(Duration::from_secs(10)));
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.recv() => return,
            accepted = listener.next() => accepted,
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: retrying at once would spin.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                if let Some(n) = failed.allow(Instant::now()) {
                    tracing::warn!("{what}: accept: {e}; retrying in {backoff:?}{}", more(n));
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let (peer, key) = identify(&stream);
        match slots.take(key) {
            Ok(slot) => {
                let served = connection(Deadlined::new(stream), peer);
                tokio::spawn(async move {
                    served.await;
                    drop(slot);
                });
            }
            Err(full) => {
                if let Some(n) = refused.allow(Instant::now()) {
                    tracing::warn!("{what}: connection refused: {full}{}", more(n));
                }
                turn_away(stream, &full);
            }
        }
    }
}

/// A 503 with why, written only if the socket takes it at once; then the connection is closed.
fn turn_away<S: AsyncWrite + Unpin>(mut stream: S, full: &Full) {
    let body = serde_json::json!({ "error": full.to_string() }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = Pin::new(&mut stream).poll_write(&mut Context::from_waker(Waker::noop()), answer.as_bytes());
}

/// A stream whose writes fail with `TimedOut` once one has waited `WRITE_TIMEOUT` for the peer
/// to read: a client that sends requests and never reads its answers is let go.
pub struct Deadlined<S> {
    inner: S,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadlined<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, deadline: None }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `poll` (a write, flush or shutdown of the inner stream), with the deadline kept while it
    /// is pending.
    fn bounded<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.deadline = None;
            return poll;
        }
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {WRITE_TIMEOUT:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlined<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlined<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bounded(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.bounded(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bounded(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bounded(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises the soft limit on open files to the hard one: the limits above need more descriptors
/// than the customary soft limit of 1,024 leaves once maps, programs and links are open.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write one rlimit, valid for the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            tracing::warn!(
                "raising the open files limit from {soft} to {}: {}",
                limit.rlim_max,
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_peer_and_total_with_root_apart() {
        let slots = Slots::new(Limits { total: 3, per_peer: 2 });
        let a = PeerKey::Uid(1000);
        let b = PeerKey::Uid(1001);
        let (a1, _a2) = (slots.take(a).unwrap(), slots.take(a).unwrap());
        assert_eq!(slots.take(a).unwrap_err(), Full::Peer(a, 2));
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).unwrap_err(), Full::Listener(3));
        // Root is bounded only by its own limit.
        let root = PeerKey::Uid(0);
        let (_r1, _r2) = (slots.take(root).unwrap(), slots.take(root).unwrap());
        assert_eq!(slots.take(root).unwrap_err(), Full::Peer(root, 2));
        assert_eq!(slots.open(), 5);
        drop(a1);
        let _b2 = slots.take(b).unwrap();
        assert_eq!(slots.open(), 5);
        assert_eq!(
            Full::Peer(a, 64).to_string(),
            "too many connections from uid 1000 (64 at once); close some and retry"
        );
    }

    #[test]
    fn a_connection_turned_away_is_told_why() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut theirs = runtime.block_on(async {
            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            turn_away(ours, &Full::Peer(PeerKey::Uid(1000), 64));
            theirs.into_std().unwrap()
        });
        theirs.set_nonblocking(false).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut theirs, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too many connections from uid 1000 (64 at once); close some and retry");
    }

    #[test]
    fn throttle_counts_what_it_held_back() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_secs(21)), Some(0));
    }
}
