//! The two upstreams every path ends at: an echo server and a discard server.
//!
//! * echo: writes back every byte it reads; after the client's EOF it finishes echoing, then shuts
//!   down its write side (so a half-closing client reads everything back, then EOF).
//! * discard: reads and drops everything; on the client's EOF it writes the number of bytes it
//!   received as 8 bytes little-endian, then closes. The throughput client divides that count (what
//!   actually arrived) by the elapsed time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read buffer of one discard connection.
const DISCARD_BUF: usize = 256 * 1024;
/// Pause after a failed accept (EMFILE and friends) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a discard connection may take to deliver its 8-byte reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Totals {
    echo_conns: AtomicU64,
    echo_bytes: AtomicU64,
    discard_conns: AtomicU64,
    discard_bytes: AtomicU64,
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    Discard,
}

pub async fn run(echo: SocketAddr, discard: SocketAddr) -> Result<()> {
    let el = TcpListener::bind(echo)
        .await
        .with_context(|| format!("binding the echo server on {echo}"))?;
    let dl = TcpListener::bind(discard)
        .await
        .with_context(|| format!("binding the discard server on {discard}"))?;
    eprintln!("upstreams: echo on {echo}, discard on {discard}");
    let totals = Arc::new(Totals::default());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        () = accept_loop(el, Kind::Echo, totals.clone()) => {}
        () = accept_loop(dl, Kind::Discard, totals.clone()) => {}
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
    }
    eprintln!(
        "upstreams: stopping; echo {} connections {} bytes, discard {} connections {} bytes",
        totals.echo_conns.load(Ordering::Relaxed),
        totals.echo_bytes.load(Ordering::Relaxed),
        totals.discard_conns.load(Ordering::Relaxed),
        totals.discard_bytes.load(Ordering::Relaxed),
    );
    Ok(())
}

async fn accept_loop(listener: TcpListener, kind: Kind, totals: Arc<Totals>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let totals = totals.clone();
                tokio::spawn(async move {
                    // A reset or a vanished client ends a connection; nothing to report.
                    let _ = match kind {
                        Kind::Echo => echo(stream, &totals).await,
                        Kind::Discard => discard(stream, &totals).await,
                    };
                });
            }
            Err(e) => {
                eprintln!("upstreams: accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn echo(mut stream: TcpStream, totals: &Totals) -> std::io::Result<()> {
    totals.echo_conns.fetch_add(1, Ordering::Relaxed);
    stream.set_nodelay(true)?;
    let (mut r, mut w) = stream.split();
    // copy() returns at the client's EOF, after everything read has been written back.
    let n = tokio::io::copy(&mut r, &mut w).await?;
    totals.echo_bytes.fetch_add(n, Ordering::Relaxed);
    w.shutdown().await
}

async fn discard(mut stream: TcpStream, totals: &Totals) -> std::io::Result<()> {
    totals.discard_conns.fetch_add(1, Ordering::Relaxed);
    let mut buf = vec![0u8; DISCARD_BUF];
    let mut count: u64 = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                count += n as u64;
                totals.discard_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let reply = async {
        stream.write_all(&count.to_le_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}
