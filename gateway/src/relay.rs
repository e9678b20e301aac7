//! Relaying bytes between caller and upstream, both ways, with half-close, an idle timeout and
//! forced close on drain.
//!
//! Each direction waits for readiness without holding a buffer, and borrows one from a small
//! per-thread pool only while data is flowing, so an idle tunnel costs two sockets and a task.
//! A direction that carries bulk data (a read fills a whole buffer) switches to `splice(2)`
//! through a pipe: the bytes then move socket to socket inside the kernel. When one side
//! finishes sending (EOF), the other side's write half is shut down and the opposite direction
//! keeps going until it finishes too.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::sys::{shutdown_write, Pipe};

/// Bytes read per readiness burst in copy mode.
const CHUNK: usize = 32 * 1024;
/// Buffers kept per worker thread for reuse.
const POOL: usize = 64;

thread_local! {
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from the per-thread pool, returned on drop (to the pool of the thread that drops it).
struct PooledBuf(Vec<u8>);

impl PooledBuf {
    fn take() -> Self {
        let buf = BUFFERS
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(CHUNK));
        PooledBuf(buf)
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        BUFFERS.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL {
                p.push(buf);
            }
        });
    }
}

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Both sides finished sending.
    Eof,
    IdleTimeout,
    /// The gateway shut down and the drain period ran out.
    Drain,
    /// The caller's certificate no longer chains to a trusted CA (the trust bundles changed).
    TrustRevoked,
    /// A socket error (a reset, usually).
    Error,
}

impl Close {
    pub fn as_str(self) -> &'static str {
        match self {
            Close::Eof => "eof",
            Close::IdleTimeout => "idle_timeout",
            Close::Drain => "drain",
            Close::TrustRevoked => "trust_revoked",
            Close::Error => "error",
        }
    }
}

/// What went through a tunnel.
#[derive(Debug)]
pub struct Relayed {
    pub up: u64,
    pub down: u64,
    pub close: Close,
}

/// Where a relay reports progress.
pub struct Meters<'a> {
    pub up: &'a Counter,
    pub down: &'a Counter,
}

/// Why a tunnel must end early; resolves with the [`Close`] to record.
pub type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = Close> + Send>>;

/// The caller's side of a tunnel: a plain socket (relayed with readiness and `splice(2)`), or a
/// TLS stream (relayed through buffers, since its bytes must be decrypted).
pub trait Caller: AsyncRead + AsyncWrite + Unpin + Send {
    /// Relays both ways; see [`relay`].
    fn relay_with<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
        idle: Duration,
        stop: Stop,
        meters: Meters<'a>,
    ) -> impl std::future::Future<Output = Relayed> + Send + 'a;

    /// Relays upstream to caller only; see [`relay_down`].
    fn relay_down_with<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
        idle: Duration,
        stop: Stop,
        counter: &'a Counter,
    ) -> impl std::future::Future<Output = (u64, Close)> + Send + 'a;

    /// The TCP connection underneath.
    fn socket(&self) -> &TcpStream;
}

impl Caller for TcpStream {
    fn relay_with<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
        idle: Duration,
        stop: Stop,
        meters: Meters<'a>,
    ) -> impl std::future::Future<Output = Relayed> + Send + 'a {
        relay(self, upstream, idle, stop, meters)
    }

    fn relay_down_with<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
        idle: Duration,
        stop: Stop,
        counter: &'a Counter,
    ) -> impl std::future::Future<Output = (u64, Close)> + Send + 'a {
        relay_down(self, upstream, idle, stop, counter)
    }

    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Caller for tokio_rustls::server::TlsStream<TcpStream> {
    fn relay_with<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
        idle: Duration,
        stop: Stop,
        meters: Meters<'a>,
    ) -> impl std::future::Future<Output = Relayed> + Send + 'a {
        relay_streams(self, upstream, idle, stop, meters)
    }

    fn relay_down_with<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
        idle: Duration,
        stop: Stop,
        counter: &'a Counter,
    ) -> impl std::future::Future<Output = (u64, Close)> + Send + 'a {
        relay_streams_down(self, upstream, idle, stop, counter)
    }

    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Relays a stream caller (TLS) both ways, with the same half-close, idle and drain rules.
async fn relay_streams<S: AsyncRead + AsyncWrite + Unpin + Send>(
    client: &mut S,
    upstream: &mut TcpStream,
    idle: Duration,
    stop: impl std::future::Future<Output = Close>,
    meters: Meters<'_>,
) -> Relayed {
    let last = Activity::now();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = upstream.split();
    let close = {
        let both = async {
            tokio::try_join!(
                copy_stream(&mut cr, &mut uw, &up, meters.up, &last),
                copy_stream(&mut ur, &mut cw, &down, meters.down, &last),
            )
        };
        tokio::select! {
            r = both => if r.is_ok() { Close::Eof } else { Close::Error },
            () = last.idle_for(idle) => Close::IdleTimeout,
            c = stop => c,
        }
    };
    Relayed {
        up: up.into_inner(),
        down: down.into_inner(),
        close,
    }
}

async fn relay_streams_down<S: AsyncRead + AsyncWrite + Unpin + Send>(
    client: &mut S,
    upstream: &mut TcpStream,
    idle: Duration,
    stop: impl std::future::Future<Output = Close>,
    counter: &Counter,
) -> (u64, Close) {
    let last = Activity::now();
    let down = AtomicU64::new(0);
    let close = tokio::select! {
        r = copy_stream(upstream, client, &down, counter, &last) => if r.is_ok() { Close::Eof } else { Close::Error },
        () = last.idle_for(idle) => Close::IdleTimeout,
        c = stop => c,
    };
    (down.into_inner(), close)
}

/// One direction between streams, through a buffer; at EOF the writer is shut down (for TLS:
/// `close_notify`, then the socket's half-close).
pub async fn copy_stream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    src: &mut R,
    dst: &mut W,
    total: &AtomicU64,
    counter: &Counter,
    last: &Activity,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            dst.shutdown().await?;
            return Ok(());
        }
        dst.write_all(&buf[..n]).await?;
        dst.flush().await?;
        total.fetch_add(n as u64, Ordering::Relaxed);
        counter.inc_by(n as u64);
        last.touch();
    }
}

/// Relays until both directions are done, the tunnel is idle for `idle`, or `stop` says why it
/// must end (drain, trust revoked).
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    idle: Duration,
    stop: impl std::future::Future<Output = Close>,
    meters: Meters<'_>,
) -> Relayed {
    let last = Activity::now();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let one_done = AtomicBool::new(false);
    let close = {
        let both = async {
            tokio::try_join!(
                pump(client, upstream, &up, meters.up, &last, &one_done),
                pump(upstream, client, &down, meters.down, &last, &one_done),
            )
        };
        tokio::select! {
            r = both => if r.is_ok() { Close::Eof } else { Close::Error },
            () = last.idle_for(idle) => Close::IdleTimeout,
            c = stop => c,
        }
    };
    Relayed {
        up: up.into_inner(),
        down: down.into_inner(),
        close,
    }
}

/// Relays only upstream to caller (the response of a forwarded request), until EOF.
pub async fn relay_down(
    client: &TcpStream,
    upstream: &TcpStream,
    idle: Duration,
    stop: impl std::future::Future<Output = Close>,
    counter: &Counter,
) -> (u64, Close) {
    let last = Activity::now();
    let down = AtomicU64::new(0);
    // One direction only: its EOF always half-closes the caller.
    let only_one = AtomicBool::new(false);
    let close = tokio::select! {
        r = pump(upstream, client, &down, counter, &last, &only_one) => if r.is_ok() { Close::Eof } else { Close::Error },
        () = last.idle_for(idle) => Close::IdleTimeout,
        c = stop => c,
    };
    (down.into_inner(), close)
}

/// Resets the connection as soon as the peer has acknowledged everything written to it, or has
/// gone, or after `http::LINGER`: the bytes already sent are delivered, and the end reads as a
/// reset.
pub(crate) async fn reset_when_delivered(socket: &TcpStream) {
    let deadline = tokio::time::Instant::now() + crate::http::LINGER;
    let fd = socket.as_raw_fd();
    // A connection the peer has reset keeps its count of unacknowledged bytes, but has no peer.
    while crate::sys::unacknowledged(fd).is_ok_and(|n| n > 0)
        && socket.peer_addr().is_ok()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The close that follows, when the connection's task ends, sends the reset.
    let _ = socket.set_zero_linger();
}

/// A tunnel that ended in an error (a reset, usually, on either side) passes it on: both sides
/// are reset once what was relayed to them has been delivered, so neither end takes the cut for
/// a clean close. The side that reset is gone already and costs no wait.
pub(crate) async fn pass_reset_on(close: Close, client: &TcpStream, upstream: &TcpStream) {
    if close == Close::Error {
        tokio::join!(reset_when_delivered(client), reset_when_delivered(upstream));
    }
}

/// When a tunnel last moved bytes, in milliseconds of the coarse monotonic clock: read at every
/// relayed chunk, so it must be cheap, and an idle timeout needs no finer grain than its tick.
pub struct Activity(AtomicU64);

impl Activity {
    pub fn now() -> Self {
        Activity(AtomicU64::new(crate::sys::coarse_millis()))
    }

    pub fn touch(&self) {
        self.0.store(crate::sys::coarse_millis(), Ordering::Relaxed);
    }

    /// Returns once no bytes have moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            let due = self.0.load(Ordering::Relaxed).saturating_add(idle_ms);
            let now = crate::sys::coarse_millis();
            if now >= due {
                return;
            }
            tokio::time::sleep(Duration::from_millis(due - now)).await;
        }
    }
}

/// One read into `buf`'s spare capacity, when tokio has seen the socket readable or in error. A
/// short read means the socket had nothing more: the readiness is cleared then (as tokio's own
/// `poll_read` does), so the next wait is for new data.
///
/// The error readiness matters. tokio clears a readiness only when an operation made through it
/// would block, and its own reads go through the readable one. An error seen after the data was
/// read (a reset right behind the last bytes, polled before the socket closed) or with none at
/// all (a time-stamp on the error queue) would then stay set, and a wait that includes it would
/// return at once, forever, with no read tried: a loop that never yields. So a socket in error
/// is read too: the read tells a reset (its error) from a healthy socket (it would block, and
/// the error readiness is cleared until the next event). The two readinesses are tried one at a
/// time, since tokio's `try_io` runs nothing for a combined interest.
pub(crate) fn read_some(src: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    match read_when(src, Interest::READABLE, buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => read_when(src, Interest::ERROR, buf),
        r => r,
    }
}

/// [`read_some`] for one readiness: nothing is read unless tokio has seen `ready`.
fn read_when(src: &TcpStream, ready: Interest, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut got = None;
    let r = src.try_io(ready, || {
        let n = crate::sys::read_spare(src.as_raw_fd(), buf)?;
        if n > 0 && buf.len() < buf.capacity() {
            got = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, got) {
        (_, Some(n)) => Ok(n),
        (r, None) => r,
    }
}

/// Whether a short read that followed `ready` has read up to the peer's FIN, so that the next
/// read would return 0. The peer's FIN (`EPOLLRDHUP`) was known before the read, and a short read
/// empties the receive queue, so everything before the FIN has been read. After a reset
/// (`EPOLLERR`) this says nothing, and the next read returns the error. The read it saves is one
/// system call per direction per connection.
fn fin_read(ready: tokio::io::Ready) -> bool {
    ready.is_read_closed() && !ready.is_error()
}

/// Writes all of `data`, waiting for writability as needed.
pub async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs one step of an allowed connection that comes before its relay (a `100 Continue`, tunnel
/// data the caller sent early, a peeked ClientHello replayed) under the relay's rules: the step
/// ends after `idle` without completing, or when `stop` says the connection must end.
pub async fn step<T>(
    idle: Duration,
    stop: &mut Stop,
    work: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, Close> {
    tokio::select! {
        r = tokio::time::timeout(idle, work) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Close::Error),
            Err(_) => Err(Close::IdleTimeout),
        },
        c = stop => Err(c),
    }
}

/// Sends `data` upstream before the relay starts, as a [`step`], adding what was written to
/// `sent` (also when the step ends partway). A write that the socket takes whole at once, as a
/// fresh connection's first write is, arms no timer.
pub async fn send_early(
    dst: &TcpStream,
    data: &[u8],
    idle: Duration,
    stop: &mut Stop,
    sent: &mut u64,
) -> Result<(), Close> {
    let mut left = data;
    match dst.try_write(left) {
        Ok(n) => {
            *sent += n as u64;
            left = &left[n..];
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => return Err(Close::Error),
    }
    if left.is_empty() {
        return Ok(());
    }
    let rest = async {
        while !left.is_empty() {
            dst.writable().await?;
            match dst.try_write(left) {
                Ok(n) => {
                    *sent += n as u64;
                    left = &left[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    step(idle, stop, rest).await
}

/// Writes all of `data` to `dst`, adding each write to `total` and marking `last`: a write the
/// socket takes at once costs one system call and no wait.
pub async fn put(
    dst: &TcpStream,
    mut data: &[u8],
    total: &AtomicU64,
    last: &Activity,
) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(n) => {
                total.fetch_add(n as u64, Ordering::Relaxed);
                last.touch();
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One direction: `src` to `dst` until `src` sends EOF, then half-close `dst`.
///
/// `one_done` is shared with the opposite direction. The first direction to finish half-closes
/// its `dst`; the second skips that system call, because both sockets are closed as soon as it
/// returns, and closing a socket whose incoming side has been read to EOF sends the same FIN.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    total: &AtomicU64,
    counter: &Counter,
    last: &Activity,
    one_done: &AtomicBool,
) -> io::Result<()> {
    let finish = || {
        if one_done.swap(true, Ordering::AcqRel) {
            Ok(())
        } else {
            shutdown_write(dst.as_raw_fd())
        }
    };
    let account = |n: usize| {
        total.fetch_add(n as u64, Ordering::Relaxed);
        counter.inc_by(n as u64);
        last.touch();
    };
    // Copy mode: small exchanges (requests, handshakes) never pay for a pipe.
    if copy(src, dst, &account, true).await? == Copied::Eof {
        return finish();
    }
    // Bulk mode: splice through a pipe. If no pipe can be had (fd limit), keep copying.
    let mut pipe = match Pipe::new() {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "no pipe for splice; copying");
            copy(src, dst, &account, false).await?;
            return finish();
        }
    };
    // Neither side waits for the other: when `dst` is full, the pipe keeps taking from `src`
    // (up to its size), and when `src` is empty, the pipe keeps draining into `dst`.
    let mut eof = false;
    let mut spins = 0u32;
    loop {
        let mut progressed = false;
        // Take all that is there (up to the pipe's size), then pass all of it on: large,
        // infrequent transfers wake the peers less often than many small ones.
        while !eof && pipe.pending < pipe.capacity {
            let filled = if pipe.pending == 0 {
                // An empty pipe has room, so EAGAIN means that `src` is empty: tokio may clear
                // its readiness and wait for the next edge.
                src.try_io(Interest::READABLE, || pipe.fill_from(src.as_raw_fd()))
            } else {
                // A pipe is full when its slots run out (one per received fragment), which can
                // be long before `capacity` bytes. That EAGAIN does not mean `src` is empty and
                // must not clear its readiness: edge-triggered, no new edge would come while
                // its queue still holds data, and the tunnel would hang.
                pipe.fill_from(src.as_raw_fd())
            };
            match filled {
                Ok(0) => eof = true,
                Ok(_) => progressed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while pipe.pending > 0 {
            match dst.try_io(Interest::WRITABLE, || pipe.drain_to(dst.as_raw_fd())) {
                Ok(n) => {
                    account(n);
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if eof && pipe.pending == 0 {
            return finish();
        }
        if progressed {
            // Stay fair to the other tasks on this worker (and to the opposite direction).
            spins += 1;
            if spins.is_multiple_of(32) {
                tokio::task::yield_now().await;
            }
            continue;
        }
        // Nothing moved. An empty pipe waits for `src`. A pipe with bytes in it could not give
        // any (`dst` is full), and whether it could take more is unknown (see above): only
        // `dst` can move things on.
        if pipe.pending == 0 {
            src.readable().await?;
        } else {
            dst.writable().await?;
        }
    }
}

/// How a copy loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Copied {
    /// `src` sent EOF (the caller half-closes `dst`).
    Eof,
    /// A read filled a whole buffer (only when asked to stop there): bulk data is flowing.
    Bulk,
}

/// Copies through pooled buffers until EOF, or until the first full read if `stop_on_bulk`.
async fn copy(
    src: &TcpStream,
    dst: &TcpStream,
    account: &impl Fn(usize),
    stop_on_bulk: bool,
) -> io::Result<Copied> {
    loop {
        let ready = src.ready(Interest::READABLE | Interest::ERROR).await?;
        let mut buf = PooledBuf::take();
        match read_some(src, &mut buf.0) {
            Ok(0) => return Ok(Copied::Eof),
            Ok(n) => {
                write_all(dst, &buf.0[..n]).await?;
                account(n);
                let full = n == buf.0.capacity();
                if stop_on_bulk && full {
                    return Ok(Copied::Bulk);
                }
                if !full && fin_read(ready) {
                    return Ok(Copied::Eof);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{relay, Close, Meters};
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("address"))
            .await
            .expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    /// `send_early` returns at once when the socket takes everything (no timer, `stop` not
    /// polled); towards a peer that never reads it ends at the idle timeout, or when `stop`
    /// resolves, and in both cases counts what the socket did take.
    #[tokio::test]
    async fn early_sends_end_at_the_idle_timeout_or_the_stop_and_count_what_was_sent() {
        use super::{send_early, Stop};
        let ready = || -> Stop { Box::pin(std::future::ready(Close::Drain)) };
        let (a, _b) = pair().await;
        let mut sent = 0;
        let mut stop = ready();
        let r = send_early(
            &a,
            b"hello",
            Duration::from_secs(3600),
            &mut stop,
            &mut sent,
        );
        assert_eq!(r.await, Ok(()));
        assert_eq!(sent, 5);

        let big = vec![7u8; 64 * 1024 * 1024];
        let pending = || -> Stop { Box::pin(std::future::pending()) };
        let (a, _b) = pair().await;
        let mut sent = 0;
        let mut stop = pending();
        let r = send_early(&a, &big, Duration::from_millis(200), &mut stop, &mut sent);
        assert_eq!(r.await, Err(Close::IdleTimeout));
        assert!(sent > 0 && sent < big.len() as u64, "{sent}");

        let (a, _b) = pair().await;
        let mut sent = 0;
        let mut stop = ready();
        let r = send_early(&a, &big, Duration::from_secs(3600), &mut stop, &mut sent);
        assert_eq!(r.await, Err(Close::Drain));
        assert!(sent > 0 && sent < big.len() as u64, "{sent}");
    }

    /// A bulk download through pipes that are full after one page, though they claim 256 KiB:
    /// every bulk fill then ends in an EAGAIN from the pipe while the socket still holds data.
    /// All of it must arrive, with the sender's socket still open (no FIN to wake the relay).
    #[tokio::test(flavor = "current_thread")]
    async fn bulk_relay_goes_on_when_the_pipe_fills_before_its_byte_count() {
        crate::sys::tests::shrink_pipes_on_this_thread();
        const TOTAL: usize = 8 << 20;
        let (mut sender, src) = pair().await;
        let (dst, mut receiver) = pair().await;
        let (up, down) = (Counter::default(), Counter::default());
        let meters = Meters {
            up: &up,
            down: &down,
        };
        let tunnel = relay(
            &src,
            &dst,
            Duration::from_secs(3600),
            std::future::pending::<Close>(),
            meters,
        );
        let send = async {
            let chunk = vec![0x5a_u8; 256 * 1024];
            for _ in 0..TOTAL / chunk.len() {
                sender.write_all(&chunk).await.expect("send");
            }
            // Keep `sender` open: the relay must not depend on an EOF to see the rest.
            std::future::pending::<()>().await
        };
        let receive = async {
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = 0;
            while got < TOTAL {
                let n = receiver.read(&mut buf).await.expect("receive");
                assert!(n > 0, "the relay closed after {got} bytes");
                assert!(buf[..n].iter().all(|&b| b == 0x5a));
                got += n;
                // A slow reader: the pipe's bytes wait on `dst`, and `src` backs up meanwhile.
                if got % (256 * 1024) < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            got
        };
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::select! {
                got = receive => got,
                () = send => unreachable!("the sender never finishes"),
                r = tunnel => panic!("the relay ended early: {:?}", r.close),
            }
        })
        .await
        .expect("the relay stalled with data queued in the gateway");
        assert_eq!(got, TOTAL);
    }

    /// The copy loop waits for data or an error. An error readiness that comes without data must
    /// lead to a read, which tells a reset from a healthy socket, and not to a loop that retries
    /// without yielding: on the one-thread scheduler that froze the whole gateway. A reset right
    /// behind an upstream's last bytes can be seen so (`EPOLLERR` before `EPOLLHUP`), rarely; a
    /// transmit time-stamp on the socket's error queue is the same readiness, every time, on a
    /// connection that is healthy and must go on.
    #[test]
    fn an_error_readiness_without_data_neither_spins_nor_ends_the_tunnel() {
        use std::os::fd::AsRawFd;
        let (done, finished) = std::sync::mpsc::channel();
        // Its own thread and runtime: a spinning relay would block a test runtime's timers too.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _ = done.send(rt.block_on(async {
                let (mut caller, client) = pair().await;
                let (upstream, mut server) = pair().await;
                crate::sys::tests::stamp_transmits(upstream.as_raw_fd());
                let (up, down) = (Counter::default(), Counter::default());
                let meters = Meters {
                    up: &up,
                    down: &down,
                };
                let idle = Duration::from_secs(3600);
                let tunnel = relay(&client, &upstream, idle, std::future::pending(), meters);
                let talk = async {
                    let mut buf = [0u8; 4];
                    caller.write_all(b"ping").await.expect("ping");
                    // Relayed: its time-stamp is on the upstream socket's error queue.
                    server.read_exact(&mut buf).await.expect("ping relayed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // The readiness this test is about, or it tests nothing.
                    let fd = upstream.as_raw_fd();
                    assert!(
                        crate::sys::tests::polls_in_error(fd),
                        "no time-stamp queued"
                    );
                    server.write_all(b"pong").await.expect("pong");
                    caller.read_exact(&mut buf).await.expect("pong relayed");
                    assert_eq!(&buf, b"pong");
                    caller.shutdown().await.expect("caller's FIN");
                    server.shutdown().await.expect("server's FIN");
                };
                let (relayed, ()) = tokio::join!(tunnel, talk);
                (relayed.close, relayed.up, relayed.down)
            }));
        });
        match finished.recv_timeout(Duration::from_secs(20)) {
            Ok(ended) => assert_eq!(ended, (Close::Eof, 4, 4)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the relay's thread stalled: a loop that never yields")
            }
            Err(e) => panic!("the relay's thread failed (its panic is above): {e}"),
        }
    }
}
