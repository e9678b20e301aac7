//! Relaying bytes between caller and upstream, both ways, with half-close, an idle timeout and
//! forced close on drain.
//!
//! Each direction waits for readiness without holding a buffer, and borrows one only while data
//! is flowing, so an idle tunnel costs two sockets and a task, not two 64 KiB buffers. When one
//! side finishes sending (EOF), the other side's write half is shut down and the opposite
//! direction keeps going until it finishes too.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Bytes read per readiness burst.
const CHUNK: usize = 64 * 1024;

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Both sides finished sending.
    Eof,
    IdleTimeout,
    /// The gateway shut down and the drain period ran out.
    Drain,
    /// A socket error (a reset, usually).
    Error,
}

impl Close {
    pub fn as_str(self) -> &'static str {
        match self {
            Close::Eof => "eof",
            Close::IdleTimeout => "idle_timeout",
            Close::Drain => "drain",
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

/// Relays until both directions are done, the tunnel is idle for `idle`, or `drain` turns true.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle: Duration,
    drain: &mut watch::Receiver<bool>,
    meters: Meters<'_>,
) -> Relayed {
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (cr, mut cw) = client.split();
    let (ur, mut uw) = upstream.split();
    let close = {
        let both = async {
            tokio::try_join!(
                pump(&cr, &mut uw, &up, meters.up, &last, epoch),
                pump(&ur, &mut cw, &down, meters.down, &last, epoch),
            )
        };
        tokio::select! {
            r = both => if r.is_ok() { Close::Eof } else { Close::Error },
            () = idle_watch(&last, epoch, idle) => Close::IdleTimeout,
            _ = async { drain.wait_for(|d| *d).await.map(|_| ()) } => Close::Drain,
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
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle: Duration,
    drain: &mut watch::Receiver<bool>,
    counter: &Counter,
) -> (u64, Close) {
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let (_, mut cw) = client.split();
    let (ur, _) = upstream.split();
    let close = tokio::select! {
        r = pump(&ur, &mut cw, &down, counter, &last, epoch) => if r.is_ok() { Close::Eof } else { Close::Error },
        () = idle_watch(&last, epoch, idle) => Close::IdleTimeout,
        _ = async { drain.wait_for(|d| *d).await.map(|_| ()) } => Close::Drain,
    };
    (down.into_inner(), close)
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn pump(
    src: &ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    total: &AtomicU64,
    counter: &Counter,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        loop {
            buf.clear();
            match src.try_read_buf(&mut buf) {
                Ok(0) => {
                    // Half-close: the peer will see our EOF; the other direction goes on.
                    dst.shutdown().await?;
                    return Ok(());
                }
                Ok(n) => {
                    dst.write_all(&buf[..n]).await?;
                    total.fetch_add(n as u64, Ordering::Relaxed);
                    counter.inc_by(n as u64);
                    last.store(millis_since(epoch), Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn idle_watch(last: &AtomicU64, epoch: Instant, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let due = last.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = millis_since(epoch);
        if now >= due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(due - now)).await;
    }
}
