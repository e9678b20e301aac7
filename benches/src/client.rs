//! The client side: how a tunnel is opened (plain TCP or HTTP CONNECT) and the three measurements.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::sys;
use crate::Via;

/// Dial plus CONNECT handshake.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection-rate cycle.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest CONNECT response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Write size of the throughput stream.
const THROUGHPUT_BUF: usize = 128 * 1024;
/// How long the throughput client waits for the discard server's count after its EOF.
const COUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// Payload of one connection-rate cycle.
const ECHO_BYTES: usize = 64;
/// What a connection-rate cycle writes and expects back.
pub const ECHO_PAYLOAD: [u8; ECHO_BYTES] = [0x5a; ECHO_BYTES];
/// Pause after a failed cycle, so that a refusing target does not turn a worker into a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// Where the client connects and how it reaches the upstream from there.
pub struct Route {
    target: SocketAddr,
    via: Via,
    /// Number of source addresses (127.0.0.1, 127.0.0.2, ...) the connections are spread over.
    sources: u8,
    next_source: AtomicU32,
    /// The CONNECT request, built once.
    request: Vec<u8>,
    label: String,
    /// `SO_MARK` for the client's sockets (needs CAP_NET_ADMIN), e.g. for an iptables rule that
    /// redirects only the client's connections.
    mark: Option<u32>,
}

/// An open path to the upstream, with any bytes that arrived behind the CONNECT response head.
pub struct Tunnel {
    pub stream: TcpStream,
    pub leftover: Vec<u8>,
}

impl Route {
    pub fn new(
        target: SocketAddr,
        via: Via,
        connect_to: SocketAddr,
        sources: u8,
        label: String,
        mark: Option<u32>,
    ) -> Self {
        let request = format!("CONNECT {connect_to} HTTP/1.1\r\nHost: {connect_to}\r\n\r\n");
        Route {
            target,
            via,
            sources: sources.max(1),
            next_source: AtomicU32::new(0),
            request: request.into_bytes(),
            label,
            mark,
        }
    }

    /// Dial the target and, for CONNECT, complete the handshake (status 200 required).
    pub async fn open(&self) -> Result<Tunnel> {
        timeout(OPEN_TIMEOUT, self.open_inner())
            .await
            .map_err(|_| anyhow!("opening a tunnel via {} timed out", self.target))?
    }

    async fn open_inner(&self) -> Result<Tunnel> {
        let mut stream = self
            .dial()
            .await
            .with_context(|| format!("connecting to {}", self.target))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let leftover = match self.via {
            Via::Tcp => Vec::new(),
            Via::Connect => {
                stream
                    .write_all(&self.request)
                    .await
                    .context("sending CONNECT")?;
                read_connect_head(&mut stream).await?
            }
        };
        Ok(Tunnel { stream, leftover })
    }

    /// Connect to the target, from the next source address in turn when there are several.
    async fn dial(&self) -> std::io::Result<TcpStream> {
        if let Some(mark) = self.mark {
            let socket = TcpSocket::new_v4()?;
            sys::set_mark(socket.as_raw_fd(), mark)?;
            return socket.connect(self.target).await;
        }
        dial(self.target, self.sources, &self.next_source).await
    }
}

/// Connect to `target` from the next of `sources` source addresses (127.0.0.1, 127.0.0.2, ...),
/// taken in turn with the counter `next`; with one source, from wherever the kernel chooses.
pub async fn dial(target: SocketAddr, sources: u8, next: &AtomicU32) -> std::io::Result<TcpStream> {
    if sources <= 1 {
        return TcpStream::connect(target).await;
    }
    let n = next.fetch_add(1, Ordering::Relaxed) % u32::from(sources);
    // 127.0.0.1 + n, n < 255: never leaves 127.0.0.0/8.
    let src = Ipv4Addr::new(127, 0, 0, 1 + n as u8);
    let socket = TcpSocket::new_v4()?;
    sys::set_bind_address_no_port(socket.as_raw_fd())?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    socket.connect(target).await
}

/// Read the CONNECT response head up to the blank line, require status 200, and return whatever
/// was read past the head.
pub async fn read_connect_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>> {
    let (head, rest) = read_head(stream, "CONNECT response").await?;
    check_status(&head, "CONNECT refused")?;
    Ok(rest)
}

/// Read an HTTP/1 response head up to and including the blank line. Returns the head and whatever
/// was read past it. `what` names the response in errors.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    what: &str,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .with_context(|| format!("reading the {what}"))?;
        if n == 0 {
            bail!(
                "the peer closed the connection before the end of the {what} head ({})",
                first_line(&buf)
            );
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find(&buf[from..], b"\r\n\r\n") {
            let end = from + pos + 4;
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            bail!("{what} head longer than {MAX_HEAD} bytes");
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn first_line(head: &[u8]) -> String {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    let line = &line[..line.len().min(200)];
    if line.is_empty() {
        "no status line".to_string()
    } else {
        format!("{:?}", String::from_utf8_lossy(line))
    }
}

/// `HTTP/1.x 200 ...` passes; anything else is an error naming the status line, after `refused`
/// when the response is HTTP/1 with another status.
pub fn check_status(head: &[u8], refused: &str) -> Result<()> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or(&[]);
    let code = parts.next().unwrap_or(&[]);
    if !version.starts_with(b"HTTP/1.") {
        bail!("not an HTTP/1 response: {}", first_line(head));
    }
    if code != b"200" {
        bail!("{refused}: {}", first_line(head));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// throughput

/// One stream: write 128 KiB buffers for `secs`, half-close, and read the discard server's count
/// of bytes received. Prints `throughput <label> <Gbit/s> Gbit/s`.
pub async fn throughput(route: &Route, secs: Duration) -> Result<()> {
    let Tunnel {
        mut stream,
        leftover,
    } = route.open().await?;
    if !leftover.is_empty() {
        bail!(
            "the discard upstream sent {} bytes before EOF",
            leftover.len()
        );
    }
    let buf = vec![0xa5u8; THROUGHPUT_BUF];
    let start = Instant::now();
    let deadline = start + secs;
    let mut written: u64 = 0;
    loop {
        // write() is cancel-safe: at the deadline nothing half-written is lost from the count.
        match timeout_at(deadline, stream.write(&buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => bail!("the tunnel accepted no more bytes after {written}"),
            Ok(Ok(n)) => written += n as u64,
            Ok(Err(e)) => {
                return Err(e)
                    .with_context(|| format!("writing to the tunnel after {written} bytes"))
            }
        }
    }
    let write_end = Instant::now();

    // Half-close, then wait for the upstream's count (or for the proxy to close the tunnel).
    let outcome = timeout(COUNT_TIMEOUT, async {
        stream.shutdown().await.context("half-closing the tunnel")?;
        let mut reply = Vec::with_capacity(8);
        let mut tmp = [0u8; 64];
        loop {
            let n = stream.read(&mut tmp).await.context("reading the count")?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&tmp[..n]);
            if reply.len() > 8 {
                bail!("the discard upstream sent more than its 8-byte count");
            }
        }
        Ok::<_, anyhow::Error>(reply)
    })
    .await;

    let (bytes, end, source) = match outcome {
        Ok(Ok(reply)) => match <[u8; 8]>::try_from(reply.as_slice()) {
            Ok(count) => (
                u64::from_le_bytes(count),
                Instant::now(),
                "counted by the upstream",
            ),
            Err(_) if reply.is_empty() => (
                written,
                Instant::now(),
                "proxy closed without relaying the count: bytes written, until the close",
            ),
            Err(_) => bail!("a count of {} bytes, expected 8", reply.len()),
        },
        Ok(Err(e)) => {
            eprintln!("throughput {}: {e:#}; using bytes written", route.label);
            (written, write_end, "bytes written, until the last write")
        }
        Err(_) => (
            written,
            write_end,
            "no count or close within 10 s: bytes written, until the last write",
        ),
    };
    let elapsed = end.duration_since(start).as_secs_f64();
    if bytes != written {
        eprintln!(
            "throughput {}: upstream counted {bytes} bytes, client wrote {written}",
            route.label
        );
    }
    let gbits = bytes as f64 * 8.0 / elapsed / 1e9;
    eprintln!(
        "throughput {}: {bytes} bytes in {elapsed:.3} s ({source})",
        route.label
    );
    println!("throughput {} {gbits:.2} Gbit/s", route.label);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// connection rate

#[derive(Default)]
pub struct WorkerStats {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

/// `concurrency` workers, each in a loop until the deadline: open, write 64 bytes, read them back,
/// close. Cycles still in flight at the deadline count neither way.
pub async fn connrate(route: Route, concurrency: usize, secs: Duration) -> Result<()> {
    let route = Arc::new(route);
    let deadline = Instant::now() + secs;
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let route = route.clone();
        set.spawn(worker(deadline, move || {
            let route = route.clone();
            async move { cycle(&route, &ECHO_PAYLOAD).await }
        }));
    }
    let total = gather(set, "a connection-rate worker failed").await?;
    report(
        &RateReport {
            metric: "connrate",
            label: &route.label,
            cycles: "cycles",
            unit: "conn/s",
        },
        total,
        concurrency,
        secs,
    );
    Ok(())
}

/// How a rate measurement names itself in its output lines.
pub struct RateReport<'a> {
    /// First word of both lines, e.g. `connrate`.
    pub metric: &'a str,
    pub label: &'a str,
    /// What one successful cycle is called on stderr, plural.
    pub cycles: &'a str,
    /// Unit of the rate on stdout, e.g. `conn/s`.
    pub unit: &'a str,
}

/// Wait for every worker and add up their figures.
pub async fn gather(mut set: JoinSet<WorkerStats>, what: &'static str) -> Result<WorkerStats> {
    let mut total = WorkerStats::default();
    while let Some(r) = set.join_next().await {
        let s = r.context(what)?;
        total.ok += s.ok;
        total.errors += s.errors;
        total.latencies_us.extend(s.latencies_us);
        if total.first_error.is_none() {
            total.first_error = s.first_error;
        }
    }
    Ok(total)
}

/// Details on stderr, then one line on stdout:
/// `<metric> <label> <rate> <unit> errors <n> p50_us <a> p99_us <b>`.
pub fn report(r: &RateReport<'_>, mut total: WorkerStats, concurrency: usize, secs: Duration) {
    total.latencies_us.sort_unstable();
    let rate = total.ok as f64 / secs.as_secs_f64();
    let p50 = percentile(&total.latencies_us, 50.0);
    let p99 = percentile(&total.latencies_us, 99.0);
    if let Some(e) = &total.first_error {
        eprintln!("{} {}: first error: {e}", r.metric, r.label);
    }
    eprintln!(
        "{} {}: {} {}, {} errors in {} s with {concurrency} workers; \
         latency us p50 {p50} p90 {} p99 {p99} p99.9 {} max {}",
        r.metric,
        r.label,
        total.ok,
        r.cycles,
        total.errors,
        secs.as_secs(),
        percentile(&total.latencies_us, 90.0),
        percentile(&total.latencies_us, 99.9),
        total.latencies_us.last().copied().unwrap_or(0),
    );
    println!(
        "{} {} {rate:.0} {} errors {} p50_us {p50} p99_us {p99}",
        r.metric, r.label, r.unit, total.errors
    );
}

/// One worker: run `cycle` in a loop until `deadline`, each cycle bounded by [`CYCLE_TIMEOUT`],
/// timing the successful ones. A cycle still in flight at the deadline counts neither way.
pub async fn worker<F, Fut>(deadline: Instant, mut cycle: F) -> WorkerStats
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut st = WorkerStats::default();
    loop {
        let t0 = Instant::now();
        if t0 >= deadline {
            break;
        }
        let limit = (t0 + CYCLE_TIMEOUT).min(deadline);
        match timeout_at(limit, cycle()).await {
            Ok(Ok(())) => {
                st.ok += 1;
                let us = t0.elapsed().as_micros();
                st.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(Err(e)) => {
                st.errors += 1;
                st.first_error.get_or_insert_with(|| format!("{e:#}"));
                sleep(ERROR_BACKOFF).await;
            }
            // In flight when the measurement ended: not counted.
            Err(_) if limit == deadline => break,
            Err(_) => {
                st.errors += 1;
                st.first_error
                    .get_or_insert_with(|| format!("cycle timed out after {CYCLE_TIMEOUT:?}"));
            }
        }
    }
    st
}

/// One connection: open, one echo round trip of `payload`, close (by drop).
async fn cycle(route: &Route, payload: &[u8]) -> Result<()> {
    let mut t = route.open().await?;
    t.stream.write_all(payload).await.context("writing")?;
    echo_back(&mut t, payload).await
}

/// Read `payload.len()` bytes (the leftover of the CONNECT head first) and compare with `payload`.
async fn echo_back(t: &mut Tunnel, payload: &[u8]) -> Result<()> {
    read_echo(&mut t.stream, &mut t.leftover, payload).await
}

/// Read `payload.len()` bytes from `leftover` (what arrived behind the CONNECT response head,
/// consumed) and then `stream`, and compare them with `payload`.
pub async fn read_echo<S: AsyncRead + Unpin>(
    stream: &mut S,
    leftover: &mut Vec<u8>,
    payload: &[u8],
) -> Result<()> {
    let mut got = vec![0u8; payload.len()];
    let pre = leftover.len();
    if pre > got.len() {
        bail!("{pre} unexpected bytes after the CONNECT response");
    }
    got[..pre].copy_from_slice(leftover);
    leftover.clear();
    stream
        .read_exact(&mut got[pre..])
        .await
        .context("reading the echo")?;
    if got != payload {
        bail!("the echo differs from what was sent");
    }
    Ok(())
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// idle memory

/// Open `count` tunnels to the echo upstream (one 1-byte round trip each), and report how much the
/// proxy's VmRSS grew per tunnel. Prints `idle <label> <bytes> B/tunnel`.
pub async fn idle(route: &Route, count: usize, pid: u32, settle: Duration) -> Result<()> {
    let before = sys::vm_rss_bytes(pid)?;
    let mut tunnels = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        let t = timeout(CYCLE_TIMEOUT, async {
            let mut t = route.open().await?;
            t.stream.write_all(b"i").await.context("writing")?;
            echo_back(&mut t, b"i").await?;
            Ok::<_, anyhow::Error>(t)
        })
        .await
        .map_err(|_| anyhow!("timed out"))
        .and_then(|r| r)
        .with_context(|| format!("tunnel {} of {count}", i + 1))?;
        tunnels.push(t);
    }
    let opened_in = started.elapsed();
    sleep(settle).await;
    let after = sys::vm_rss_bytes(pid)?;
    let per = (after as f64 - before as f64) / count as f64;
    eprintln!(
        "idle {}: VmRSS of pid {pid} {before} -> {after} bytes with {count} tunnels (opened in {:.2} s)",
        route.label,
        opened_in.as_secs_f64()
    );
    println!("idle {} {per:.0} B/tunnel", route.label);
    drop(tunnels);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        assert!(check_status(b"HTTP/1.1 200 Connection established\r\n\r\n", "refused").is_ok());
        assert!(check_status(b"HTTP/1.0 200\r\n\r\n", "refused").is_ok());
        assert!(check_status(b"HTTP/1.1 403 Forbidden\r\n\r\n", "refused").is_err());
        assert!(check_status(b"HTTP/1.1 2000 x\r\n\r\n", "refused").is_err());
        assert!(check_status(b"SSH-2.0\r\n\r\n", "refused").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[], 99.0), 0);
        assert_eq!(percentile(&[7], 1.0), 7);
    }
}
