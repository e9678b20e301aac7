//! The mTLS handshake rate: workers in a loop that open a TCP connection, complete a full TLS 1.3
//! handshake with a client certificate, make one small exchange and close.
//!
//! * `connect`: the target is an HTTPS proxy (egress-gateway's `tls:` listener): `CONNECT` to the
//!   echo upstream inside the TLS session, status 200, one 64-byte echo round trip.
//! * `http`: the target is a TLS terminator that answers any request (nginx on 9106): one
//!   `GET /`, status 200, the body read to its Content-Length (or to EOF).
//!
//! Every worker builds its own client configuration with resumption disabled, so no session is
//! ever resumed: each cycle is a full handshake, and a cycle whose handshake was not a full
//! TLS 1.3 one counts as an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::client::{self, RateReport, ECHO_PAYLOAD};

/// Largest response body read in `http` mode.
const MAX_BODY: usize = 64 * 1024;

/// What happens inside the TLS session.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, Debug)]
pub enum MtlsMode {
    /// HTTP CONNECT to the echo upstream, then a 64-byte echo round trip.
    Connect,
    /// One `GET /` answered with status 200.
    Http,
}

/// The PEM files of the client: trust anchors for the server, own chain and key.
pub struct PemPaths {
    pub ca: PathBuf,
    /// The client certificate chain and key; none for a client without a certificate.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Offer a post-quantum-sized key share first ([`crate::pq`]).
    pub pq_share: bool,
}

/// Where the workers connect and what they do there.
pub struct MtlsTarget {
    pub target: SocketAddr,
    pub mode: MtlsMode,
    pub server_name: ServerName<'static>,
    /// Number of source addresses (127.0.0.1, 127.0.0.2, ...) the connections are spread over.
    pub sources: u8,
    /// The request sent once the handshake is done (CONNECT or GET), built once.
    pub request: Vec<u8>,
    pub label: String,
}

impl MtlsTarget {
    /// `connect_to` is the CONNECT authority (mode `connect`); `host` the Host header (mode `http`).
    pub fn request(mode: MtlsMode, connect_to: SocketAddr, host: &str) -> Vec<u8> {
        match mode {
            MtlsMode::Connect => format!("CONNECT {connect_to} HTTP/1.1\r\n\r\n").into_bytes(),
            MtlsMode::Http => {
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
            }
        }
    }
}

/// Shared by the workers of one run.
struct Shared {
    target: MtlsTarget,
    next_source: AtomicU32,
    /// Cycles whose exchange succeeded but whose close (close_notify, FIN) failed: still counted as
    /// handshakes, and reported on stderr.
    close_errors: AtomicU64,
    client_cert: bool,
}

/// The client's TLS material, loaded once; each worker builds its own configuration from it.
struct Material {
    roots: Arc<RootCertStore>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    pq_share: bool,
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: bad PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no CERTIFICATE block", path.display());
    }
    Ok(certs)
}

fn load_material(p: &PemPaths) -> Result<Material> {
    let mut roots = RootCertStore::empty();
    for (i, ca) in load_certs(&p.ca)?.into_iter().enumerate() {
        roots
            .add(ca)
            .with_context(|| format!("{}: certificate {i} is not a usable CA", p.ca.display()))?;
    }
    let client = match &p.cert {
        Some((cert, key)) => {
            let chain = load_certs(cert)?;
            // The error of from_pem_file never contains key material, only what is wrong with
            // the file.
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("{}: no usable private key", key.display()))?;
            Some((chain, key))
        }
        None => None,
    };
    Ok(Material {
        roots: Arc::new(roots),
        client,
        pq_share: p.pq_share,
    })
}

/// One worker's configuration: ring, TLS 1.3 only, the client certificate if any, no resumption
/// (no session cache, no tickets, no 0-RTT), so every connection is a full handshake.
fn client_config(m: &Material) -> Result<Arc<ClientConfig>> {
    let mut provider = rustls::crypto::ring::default_provider();
    if m.pq_share {
        provider.kx_groups.insert(0, crate::pq::GROUP);
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_root_certificates(Arc::clone(&m.roots));
    let mut config = match &m.client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .context("the client certificate and key do not form a usable pair")?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// `concurrency` workers, each in a loop until the deadline: TCP connect, full mTLS handshake,
/// one exchange, close. Prints `mtls-rate <label> <rate> hs/s errors <n> p50_us <a> p99_us <b>`.
pub async fn mtls_rate(
    target: MtlsTarget,
    pems: &PemPaths,
    concurrency: usize,
    secs: Duration,
) -> Result<()> {
    let material = load_material(pems)?;
    let configs = (0..concurrency)
        .map(|_| client_config(&material))
        .collect::<Result<Vec<_>>>()?;
    drop(material);
    let shared = Arc::new(Shared {
        target,
        next_source: AtomicU32::new(0),
        close_errors: AtomicU64::new(0),
        client_cert: pems.cert.is_some(),
    });
    eprintln!(
        "mtls-rate {}: {} mode {:?}, server name {:?}, {} sources, {concurrency} workers, {} s",
        shared.target.label,
        shared.target.target,
        shared.target.mode,
        shared.target.server_name.to_str(),
        shared.target.sources,
        secs.as_secs(),
    );
    let deadline = Instant::now() + secs;
    let mut set = JoinSet::new();
    for config in configs {
        let connector = TlsConnector::from(config);
        let shared = Arc::clone(&shared);
        set.spawn(client::worker(deadline, move || {
            let shared = Arc::clone(&shared);
            let connector = connector.clone();
            async move { cycle(&shared, &connector).await }
        }));
    }
    let total = client::gather(set, "an mtls-rate worker failed").await?;
    let close_errors = shared.close_errors.load(Ordering::Relaxed);
    if close_errors > 0 {
        eprintln!(
            "mtls-rate {}: {close_errors} connections failed to close cleanly after a good exchange \
             (counted as handshakes)",
            shared.target.label
        );
    }
    client::report(
        &RateReport {
            metric: if shared.client_cert {
                "mtls-rate"
            } else {
                "tls-rate"
            },
            label: &shared.target.label,
            cycles: "full handshakes",
            unit: "hs/s",
        },
        total,
        concurrency,
        secs,
    );
    Ok(())
}

/// One connection: dial, handshake, exchange, close_notify.
async fn cycle(s: &Shared, connector: &TlsConnector) -> Result<()> {
    let t = &s.target;
    let tcp = client::dial(t.target, t.sources, &s.next_source)
        .await
        .with_context(|| format!("connecting to {}", t.target))?;
    tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
    let mut tls = connector
        .connect(t.server_name.clone(), tcp)
        .await
        .context("TLS handshake")?;
    {
        let (_, conn) = tls.get_ref();
        if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
            bail!("negotiated {:?}, not TLS 1.3", conn.protocol_version());
        }
        if conn.handshake_kind() != Some(HandshakeKind::Full) {
            bail!("a {:?} handshake, not a full one", conn.handshake_kind());
        }
    }
    tls.write_all(&t.request)
        .await
        .context("sending the request")?;
    tls.flush().await.context("sending the request")?;
    match t.mode {
        MtlsMode::Connect => {
            let mut leftover = client::read_connect_head(&mut tls).await?;
            tls.write_all(&ECHO_PAYLOAD).await.context("writing")?;
            tls.flush().await.context("writing")?;
            client::read_echo(&mut tls, &mut leftover, &ECHO_PAYLOAD).await?;
        }
        MtlsMode::Http => {
            let (head, rest) = client::read_head(&mut tls, "HTTP response").await?;
            client::check_status(&head, "HTTP status is not 200")?;
            read_body(&mut tls, &head, rest.len()).await?;
        }
    }
    // close_notify, then FIN. The exchange is complete: a failure here does not undo it.
    if tls.shutdown().await.is_err() {
        s.close_errors.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Read the rest of a response body: `have` bytes of it arrived with the head. With a
/// Content-Length, until that many; otherwise until EOF (`Connection: close` was asked for).
async fn read_body<S: AsyncRead + Unpin>(stream: &mut S, head: &[u8], have: usize) -> Result<()> {
    let length = content_length(head)?;
    if let Some(n) = length {
        if n > MAX_BODY {
            bail!("Content-Length {n} is above {MAX_BODY}");
        }
    }
    let mut got = have;
    let mut buf = [0u8; 4096];
    while length.is_none_or(|n| got < n) {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => got += k,
            // No close_notify before the TCP close: the end of a close-delimited body all the same.
            Err(e) if length.is_none() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).context("reading the response body"),
        }
        if got > MAX_BODY {
            bail!("response body longer than {MAX_BODY} bytes");
        }
    }
    if let Some(n) = length {
        if got < n {
            bail!("response body ended after {got} of {n} bytes");
        }
    }
    Ok(())
}

/// The Content-Length of a response head, if it has one (and no Transfer-Encoding).
fn content_length(head: &[u8]) -> Result<Option<usize>> {
    let text = std::str::from_utf8(head).context("the response head is not UTF-8")?;
    let mut length = None;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Ok(None);
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .trim()
                .parse()
                .with_context(|| format!("bad Content-Length {:?}", value.trim()))?;
            if length.is_some_and(|m| m != n) {
                bail!("conflicting Content-Length headers");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths() {
        let h = b"HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(content_length(h).expect("valid"), Some(3));
        let h = b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n";
        assert_eq!(content_length(h).expect("valid"), None);
        let h = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(content_length(h).expect("valid"), None);
        assert!(content_length(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(content_length(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        .is_err());
    }

    #[test]
    fn requests() {
        let to: SocketAddr = "127.0.0.1:9000".parse().expect("literal");
        assert_eq!(
            MtlsTarget::request(MtlsMode::Connect, to, "localhost"),
            b"CONNECT 127.0.0.1:9000 HTTP/1.1\r\n\r\n"
        );
        assert_eq!(
            MtlsTarget::request(MtlsMode::Http, to, "localhost"),
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn bodies() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        let mut r: &[u8] = b"k\n";
        assert!(read_body(&mut r, head, 1).await.is_ok());
        let mut r: &[u8] = b"k";
        assert!(read_body(&mut r, head, 1).await.is_err());
        let mut r: &[u8] = b"anything";
        assert!(read_body(&mut r, b"HTTP/1.1 200 OK\r\n\r\n", 0)
            .await
            .is_ok());
    }
}
