//! `egress-bench`: the end-to-end load generator for egress-gateway and its peers.
//!
//! One client drives the direct path, every peer proxy and the gateway, so that the figures of one
//! run compare as ratios. Every address it dials or binds must lie in 127.0.0.0/8.
//!
//! ```text
//! egress-bench upstreams  --echo 127.0.0.1:9000 --discard 127.0.0.1:9001
//! egress-bench throughput --target ADDR [--via tcp|connect] [--connect-to 127.0.0.1:9001] --seconds N
//! egress-bench connrate   --target ADDR [--via tcp|connect] [--connect-to 127.0.0.1:9000] --concurrency 50 --seconds N
//! egress-bench idle       --target ADDR [--via tcp|connect] [--connect-to 127.0.0.1:9000] --count N --pid PID
//! egress-bench mtls-rate  --target ADDR --mode connect|http --ca CA.pem --cert CLIENT.pem --key CLIENT.key
//!                         [--server-name localhost] [--connect-to 127.0.0.1:9000] --concurrency 50 --seconds N
//! ```
//!
//! Each measurement prints one line on stdout (`<metric> <label> <value> <unit> ...`); details go to
//! stderr.

mod client;
mod mtls;
mod pq;
mod sys;
mod upstreams;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::Route;
use crate::mtls::{MtlsMode, MtlsTarget, PemPaths};

/// Default echo upstream, the CONNECT target for connection-rate and idle work.
const ECHO_DEFAULT: &str = "127.0.0.1:9000";
/// Default discard upstream, the CONNECT target for throughput work.
const DISCARD_DEFAULT: &str = "127.0.0.1:9001";

#[derive(Parser)]
#[command(
    name = "egress-bench",
    version,
    about = "End-to-end load generator for egress-gateway and its peers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the echo and discard upstreams until killed.
    Upstreams {
        /// Echo server: echoes bytes back; after the client's EOF finishes echoing, then shuts down.
        #[arg(long, default_value = ECHO_DEFAULT)]
        echo: SocketAddr,
        /// Discard server: drops what it reads; on EOF replies with the byte count (8 bytes, LE).
        #[arg(long, default_value = DISCARD_DEFAULT)]
        discard: SocketAddr,
    },
    /// One stream writing 128 KiB buffers for N seconds into the discard upstream.
    Throughput {
        #[command(flatten)]
        path: PathArgs,
        /// Duration of the measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Workers in a loop: open, one 64-byte echo round trip, close.
    Connrate {
        #[command(flatten)]
        path: PathArgs,
        /// Number of concurrent workers.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Duration of the measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Memory of the proxy process (VmRSS) per open, idle tunnel.
    Idle {
        #[command(flatten)]
        path: PathArgs,
        /// Number of tunnels to hold open at once.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Process id of the proxy whose VmRSS is read from /proc.
        #[arg(long)]
        pid: u32,
        /// Pause between opening the last tunnel and reading VmRSS again.
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
    },
    /// Workers in a loop: open, full TLS 1.3 handshake with a client certificate (no resumption),
    /// one small exchange (CONNECT + 64-byte echo, or GET /), close_notify. Without --cert/--key:
    /// the same with no client certificate (`tls-rate` in the result line), e.g. through an SNI
    /// router to a TLS server.
    #[command(alias = "tls-rate")]
    MtlsRate(MtlsArgs),
}

#[derive(Args)]
struct MtlsArgs {
    /// The TLS endpoint to dial: an HTTPS CONNECT proxy (mode connect) or an HTTPS server (http).
    #[arg(long)]
    target: SocketAddr,
    /// What to do inside the TLS session.
    #[arg(long, value_enum)]
    mode: MtlsMode,
    /// PEM trust bundle for the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// PEM client certificate chain, leaf first (omit, with --key, for a client without one:
    /// the result line then says tls-rate).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of the client certificate (PKCS#8, SEC1 or PKCS#1).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Offer an X25519MLKEM768-sized key share first (plus X25519, which the server picks): a
    /// ClientHello of post-quantum size, about 1.7 KB.
    #[arg(long)]
    pq_share: bool,
    /// Name the server's certificate is checked against (SNI too, unless an IP address); in mode
    /// http also the Host header.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// With `--mode connect`: the authority to CONNECT to (default: the echo upstream).
    #[arg(long)]
    connect_to: Option<SocketAddr>,
    /// Number of concurrent workers, each with its own TLS client configuration.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Duration of the measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Name printed in the result line (default: the target address).
    #[arg(long)]
    label: Option<String>,
    /// Spread the connections over this many source addresses, 127.0.0.1 upwards (1..=254).
    #[arg(long, default_value_t = 1)]
    sources: u8,
}

#[derive(Args)]
struct PathArgs {
    /// The address to dial: a TCP proxy, a CONNECT proxy, or an upstream itself (direct).
    #[arg(long)]
    target: SocketAddr,
    /// How to reach the upstream through the target.
    #[arg(long, value_enum, default_value_t = Via::Tcp)]
    via: Via,
    /// With `--via connect`: the authority to CONNECT to (default: discard for throughput, echo
    /// otherwise).
    #[arg(long)]
    connect_to: Option<SocketAddr>,
    /// Name printed in the result line (default: the target address).
    #[arg(long)]
    label: Option<String>,
    /// Spread the connections over this many source addresses, 127.0.0.1 upwards (1..=254).
    /// Loopback connect() reuses a local port only once its TIME_WAIT is about a second old, which
    /// caps one source address near 14k connections/s; more sources lift that cap off the client.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Set this `SO_MARK` on the client's sockets (root), so that an iptables rule can pick out
    /// the client's connections (and not the proxy's) for a `REDIRECT`. Not with --sources > 1.
    #[arg(long, value_parser = parse_mark, conflicts_with = "sources")]
    mark: Option<u32>,
}

fn parse_mark(s: &str) -> std::result::Result<u32, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Via {
    /// The target relays raw TCP (or is the upstream itself).
    Tcp,
    /// The target is an HTTP/1.1 CONNECT proxy.
    Connect,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match start(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(cli: Cli) -> Result<()> {
    match sys::raise_nofile_limit() {
        Ok((from, to)) if from != to => {
            eprintln!("egress-bench: RLIMIT_NOFILE raised {from} -> {to}")
        }
        Ok(_) => {}
        Err(e) => eprintln!("egress-bench: could not raise RLIMIT_NOFILE: {e}"),
    }
    // One thread: the client is pinned to one CPU, and a single-threaded runtime spends the least
    // of it on coordination, the same for every peer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(run(cli.cmd))
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Upstreams { echo, discard } => {
            upstreams::run(loopback(echo, "--echo")?, loopback(discard, "--discard")?).await
        }
        Cmd::Throughput { path, seconds } => {
            let route = route(path, DISCARD_DEFAULT)?;
            client::throughput(&route, duration(seconds)?).await
        }
        Cmd::Connrate {
            path,
            concurrency,
            seconds,
        } => {
            if !(1..=10_000).contains(&concurrency) {
                bail!("--concurrency must be between 1 and 10000");
            }
            let route = route(path, ECHO_DEFAULT)?;
            client::connrate(route, concurrency, duration(seconds)?).await
        }
        Cmd::Idle {
            path,
            count,
            pid,
            settle_ms,
        } => {
            if !(1..=1_000_000).contains(&count) {
                bail!("--count must be between 1 and 1000000");
            }
            if settle_ms > 60_000 {
                bail!("--settle-ms must be at most 60000");
            }
            let route = route(path, ECHO_DEFAULT)?;
            client::idle(&route, count, pid, Duration::from_millis(settle_ms)).await
        }
        Cmd::MtlsRate(a) => {
            let (target, pems, concurrency, secs) = mtls_target(a)?;
            mtls::mtls_rate(target, &pems, concurrency, secs).await
        }
    }
}

fn mtls_target(a: MtlsArgs) -> Result<(MtlsTarget, PemPaths, usize, Duration)> {
    let target = loopback(a.target, "--target")?;
    if a.mode == MtlsMode::Http && a.connect_to.is_some() {
        bail!("--connect-to only applies to --mode connect");
    }
    let connect_to = match a.connect_to {
        Some(c) => c,
        None => ECHO_DEFAULT
            .parse()
            .context("parsing the default --connect-to")?,
    };
    let connect_to = loopback(connect_to, "--connect-to")?;
    if !(1..=10_000).contains(&a.concurrency) {
        bail!("--concurrency must be between 1 and 10000");
    }
    if !(1..=254).contains(&a.sources) {
        bail!("--sources must be between 1 and 254");
    }
    let secs = duration(a.seconds)?;
    let server_name =
        rustls::pki_types::ServerName::try_from(a.server_name.clone()).with_context(|| {
            format!(
                "--server-name {:?}: not a DNS name or IP address",
                a.server_name
            )
        })?;
    let label = one_word(a.label.unwrap_or_else(|| target.to_string()))?;
    let target = MtlsTarget {
        target,
        mode: a.mode,
        server_name,
        sources: a.sources,
        request: MtlsTarget::request(a.mode, connect_to, &a.server_name),
        label,
    };
    let pems = PemPaths {
        ca: a.ca,
        cert: a.cert.zip(a.key),
        pq_share: a.pq_share,
    };
    Ok((target, pems, a.concurrency, secs))
}

fn one_word(label: String) -> Result<String> {
    if label.is_empty() || label.chars().any(char::is_whitespace) {
        bail!("--label must be one word");
    }
    Ok(label)
}

fn duration(seconds: u64) -> Result<Duration> {
    if !(1..=3600).contains(&seconds) {
        bail!("--seconds must be between 1 and 3600");
    }
    Ok(Duration::from_secs(seconds))
}

fn route(p: PathArgs, default_connect_to: &str) -> Result<Route> {
    let target = loopback(p.target, "--target")?;
    let connect_to = match p.connect_to {
        Some(a) => a,
        None => default_connect_to
            .parse()
            .context("parsing the default --connect-to")?,
    };
    let connect_to = loopback(connect_to, "--connect-to")?;
    if p.via == Via::Tcp && p.connect_to.is_some() {
        bail!("--connect-to only applies to --via connect");
    }
    if !(1..=254).contains(&p.sources) {
        bail!("--sources must be between 1 and 254");
    }
    let label = one_word(p.label.unwrap_or_else(|| target.to_string()))?;
    Ok(Route::new(
        target, p.via, connect_to, p.sources, label, p.mark,
    ))
}

/// Accept only IPv4 loopback addresses (127.0.0.0/8): this tool never touches a real network.
fn loopback(addr: SocketAddr, flag: &str) -> Result<SocketAddr> {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => Ok(addr),
        _ => bail!("{flag} {addr}: only 127.0.0.0/8 addresses are allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_v4() {
        let ok: SocketAddr = "127.0.0.2:1".parse().expect("literal");
        assert!(loopback(ok, "x").is_ok());
        for bad in ["10.0.0.1:1", "[::1]:1", "0.0.0.0:1", "128.0.0.1:1"] {
            let a: SocketAddr = bad.parse().expect("literal");
            assert!(loopback(a, "x").is_err(), "{bad}");
        }
    }
}
