//! The `transparent` and `sni` listeners: connections the network delivers unchanged.
//!
//! `transparent` takes connections that iptables `REDIRECT`ed (the original destination comes
//! from `SO_ORIGINAL_DST`) or `TPROXY`ed (the local address is the destination). `sni` takes TLS
//! connections that DNS steered to the gateway; the port is the listener's `upstreamPort`.
//!
//! Both peek at the first bytes, within `limits.headerReadTimeout` (on `transparent`, a client
//! silent for `silentClientTimeout` is not waited for further) and a size cap: a TLS
//! ClientHello gives the SNI, a plain HTTP/1 request head gives the `Host` header. The peeked
//! bytes are replayed upstream unchanged. The life of a connection:
//! `original destination -> peek -> destination -> identity -> policy -> resolve -> guard ->
//! dial -> replay -> relay`.
//!
//! With a host name, the gateway dials what **that name** resolves to (after the address guard),
//! never the original destination address: an SNI naming an allowed host, aimed at some other
//! IP, reaches the allowed host or nothing. Without a usable name (no SNI, an IP-literal SNI, two
//! names, another protocol, a client that waits for the server to speak first), the destination
//! is the original address, and only a `cidr` rule can allow it. A denied caller is closed; one
//! whose ClientHello was read first gets a TLS `access_denied` alert.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use egress_policy::{Destination, Host, Verdict};
use egress_sniff::{sniff, HostHeader, SniName, Sniff};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::AuditRecord;
use crate::config::{ListenerConfig, ListenerKind};
use crate::connect::{record_outcome, Gateway};
use crate::metrics::ListenerMetrics;
use crate::reason::{Reason, Reject};
use crate::relay::{Caller, Close, Meters};

/// The smallest peek cap, whatever `limits.maxHeaderBytes` says: a ClientHello with a
/// post-quantum key share is about 1.8 KB, and one padded by its client can fill a whole
/// 16 KiB record.
const MIN_PEEK: usize = 16 * 1024 + 5;

/// The most reads a peek may take. Real clients need one to three; a client that dribbles its
/// hello a byte at a time would otherwise make every read re-parse a growing buffer.
const MAX_PEEK_READS: usize = 64;

/// A TLS alert record: fatal `access_denied` (RFC 8446 §6.2), in a TLS 1.2 record header as
/// every TLS version accepts.
const ACCESS_DENIED_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

/// Why a connection on a `transparent` or `sni` listener has no host name to be decided on:
/// the `cause` label of `egress_nameless_connections_total`, so that operators can see how much
/// traffic only `cidr` rules govern, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nameless {
    /// A ClientHello without `server_name`.
    NoSni,
    /// A ClientHello whose server name is an IP literal.
    IpSni,
    /// A ClientHello whose server name is not a valid host name.
    InvalidSni,
    /// A ClientHello with more than one server name.
    MultipleSni,
    /// An HTTP/1 request head without `Host`.
    NoHost,
    /// An HTTP/1 request whose `Host` is an IP literal.
    IpHost,
    /// An HTTP/1 request whose `Host` is not a valid host name.
    InvalidHost,
    /// An HTTP/1 request with more than one `Host`.
    MultipleHost,
    /// Neither TLS nor HTTP/1.
    Opaque,
    /// Nothing sent within `silentClientTimeout` (or `headerReadTimeout`): a server-first
    /// protocol, or an idle client.
    Silent,
    /// A first byte, then no complete ClientHello or request head within `headerReadTimeout`.
    Timeout,
    /// No complete ClientHello or request head within the size cap or the read count.
    TooLarge,
    /// The client stopped sending (FIN or error) before a ClientHello or request head was
    /// complete.
    Closed,
}

impl Nameless {
    pub const ALL: [Nameless; 13] = [
        Nameless::NoSni,
        Nameless::IpSni,
        Nameless::InvalidSni,
        Nameless::MultipleSni,
        Nameless::NoHost,
        Nameless::IpHost,
        Nameless::InvalidHost,
        Nameless::MultipleHost,
        Nameless::Opaque,
        Nameless::Silent,
        Nameless::Timeout,
        Nameless::TooLarge,
        Nameless::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Nameless::NoSni => "no_sni",
            Nameless::IpSni => "ip_sni",
            Nameless::InvalidSni => "invalid_sni",
            Nameless::MultipleSni => "multiple_sni",
            Nameless::NoHost => "no_host",
            Nameless::IpHost => "ip_host",
            Nameless::InvalidHost => "invalid_host",
            Nameless::MultipleHost => "multiple_host",
            Nameless::Opaque => "opaque",
            Nameless::Silent => "silent",
            Nameless::Timeout => "timeout",
            Nameless::TooLarge => "too_large",
            Nameless::Closed => "closed",
        }
    }

    /// The position in [`Nameless::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the peek saw, for the end of the connection: whether the caller spoke TLS (a refusal
/// then gets an alert), and why no name was found, if none was.
#[derive(Default)]
struct Seen {
    hello: bool,
    nameless: Option<Nameless>,
}

/// How a listener learns where a connection was going.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// iptables `REDIRECT`: `SO_ORIGINAL_DST`.
    Redirect,
    /// `TPROXY`: the accepted socket's local address.
    Tproxy,
    /// DNS steering: only the SNI is known; dial this port.
    Sni { port: u16 },
}

/// One `transparent` or `sni` listener.
pub struct PeekListener {
    pub name: String,
    mode: Mode,
    /// Only ever set on a `transparent` listener (config.rs refuses it on `sni`, which waits the
    /// whole `headerReadTimeout` before refusing a silent client).
    silent_client_timeout: Option<std::time::Duration>,
    pub gateway: Arc<Gateway>,
    pub metrics: ListenerMetrics,
}

impl PeekListener {
    pub fn new(cfg: &ListenerConfig, gateway: Arc<Gateway>, metrics: ListenerMetrics) -> Self {
        let mode = match (cfg.kind, cfg.tproxy) {
            (ListenerKind::Sni, _) => Mode::Sni {
                port: cfg.upstream_port,
            },
            (_, true) => Mode::Tproxy,
            (_, false) => Mode::Redirect,
        };
        PeekListener {
            name: cfg.name.clone(),
            mode,
            silent_client_timeout: cfg.silent_client_timeout,
            gateway,
            metrics,
        }
    }
}

/// Accepts until `stop` turns true.
pub async fn serve(listener: TcpListener, ctx: Arc<PeekListener>, stop: watch::Receiver<bool>) {
    let name = ctx.name.clone();
    crate::connect::accept_until_stopped(listener, &name, stop, |stream, peer| {
        tokio::spawn(Box::pin(handle(Arc::clone(&ctx), stream, peer)));
    })
    .await;
}

async fn handle(ctx: Arc<PeekListener>, mut client: TcpStream, peer: SocketAddr) {
    let gw = &*ctx.gateway;
    let admission = gw.conns.admit(&ctx.metrics);
    let mut audit = AuditRecord::new(&ctx.name, peer);
    let mut seen = Seen::default();
    let result = match &admission {
        Ok(_) => proxy(&ctx, &mut client, peer, &mut audit, &mut seen).await,
        Err(refusal) => Err(refusal.reject.clone()),
    };
    record_outcome(gw, &ctx.name, &ctx.metrics, peer, &mut audit, &result);
    if let Some(cause) = seen.nameless {
        let verdict = match &result {
            Ok((verdict, _)) => *verdict,
            Err(_) => Verdict::Deny,
        };
        gw.metrics.count_nameless(&ctx.metrics, cause, verdict);
    }
    if result.is_err() && crate::connect::answers(&admission) {
        refuse(&mut client, seen.hello).await;
    }
    drop(admission);
    gw.audit.write(audit);
}

/// Closes a refused connection: an `access_denied` alert if the caller spoke TLS, then our side
/// shut down, and what the caller still sends read and dropped for a short while, never parsed.
async fn refuse(client: &mut TcpStream, tls: bool) {
    if tls {
        let _ =
            tokio::time::timeout(crate::http::LINGER, client.write_all(&ACCESS_DENIED_ALERT)).await;
    }
    crate::connect::close_discarding(client).await;
}

/// What the peek found.
enum Peeked {
    /// A host name from the SNI or the `Host` header.
    Name {
        name: String,
        /// From a ClientHello (else from an HTTP `Host` header).
        tls: bool,
        ech: bool,
    },
    /// No usable name; why (for the audit line and the metric), and the reason code an `sni`
    /// listener answers with.
    Nameless {
        why: String,
        cause: Nameless,
        reason: Reason,
    },
}

/// Reads the first bytes until they say something, the cap is reached, the client stops
/// sending, or the deadline passes.
async fn peek(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    cap: usize,
    deadline: Deadlines,
    hello_seen: &mut bool,
) -> Peeked {
    let nameless = |why: String, cause, reason| Peeked::Nameless { why, cause, reason };
    let mut reads = 0usize;
    loop {
        match sniff(buf) {
            Sniff::NeedMore => {}
            Sniff::Tls(hello) => {
                *hello_seen = true;
                let (why, cause) = match hello.server_name {
                    SniName::Host(name) => {
                        return Peeked::Name {
                            name: name.as_str().to_owned(),
                            tls: true,
                            ech: hello.ech,
                        }
                    }
                    SniName::Absent => ("a ClientHello without a server name", Nameless::NoSni),
                    SniName::IpLiteral => (
                        "a ClientHello whose server name is an IP literal",
                        Nameless::IpSni,
                    ),
                    SniName::Invalid => (
                        "a ClientHello with an invalid server name",
                        Nameless::InvalidSni,
                    ),
                    SniName::Multiple => (
                        "a ClientHello with more than one server name",
                        Nameless::MultipleSni,
                    ),
                };
                return nameless(why.to_owned(), cause, Reason::BadRequest);
            }
            Sniff::Http(info) => {
                let (why, cause) = match info.host {
                    HostHeader::Host { name, .. } => {
                        return Peeked::Name {
                            name: name.as_str().to_owned(),
                            tls: false,
                            ech: false,
                        }
                    }
                    HostHeader::Absent => ("an HTTP request without Host", Nameless::NoHost),
                    HostHeader::IpLiteral => (
                        "an HTTP request whose Host is an IP literal",
                        Nameless::IpHost,
                    ),
                    HostHeader::Invalid => (
                        "an HTTP request with an invalid Host",
                        Nameless::InvalidHost,
                    ),
                    HostHeader::Multiple => (
                        "an HTTP request with more than one Host",
                        Nameless::MultipleHost,
                    ),
                };
                return nameless(why.to_owned(), cause, Reason::BadRequest);
            }
            Sniff::Opaque { reason } => {
                return nameless(
                    format!("neither TLS nor HTTP/1 ({reason})"),
                    Nameless::Opaque,
                    Reason::BadRequest,
                )
            }
        }
        if reads >= MAX_PEEK_READS {
            return nameless(
                format!("no complete ClientHello or request head in {MAX_PEEK_READS} reads"),
                Nameless::TooLarge,
                Reason::HeaderTooLarge,
            );
        }
        reads += 1;
        if buf.len() >= cap {
            return nameless(
                format!("no complete ClientHello or request head in {cap} bytes"),
                Nameless::TooLarge,
                Reason::HeaderTooLarge,
            );
        }
        // Read straight into `buf`'s spare room: at most 4 KiB more, never past the cap (the
        // capacity only grows exactly, and starts below the cap).
        buf.reserve_exact((cap - buf.len()).min(4096));
        // Until the first byte, the shorter wait for a silent client; then the whole head's.
        let due = match deadline.silent {
            Some(silent) if buf.is_empty() => silent.min(deadline.head),
            _ => deadline.head,
        };
        let read = tokio::time::timeout_at(due, read_spare(client, buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return nameless(
                    "the client stopped sending before a ClientHello or request head was complete"
                        .to_owned(),
                    Nameless::Closed,
                    Reason::BadRequest,
                )
            }
            Ok(Ok(_)) => {}
            Err(_) => {
                let (why, cause) = if buf.is_empty() && due < deadline.head {
                    (
                        "the client sent nothing within silentClientTimeout",
                        Nameless::Silent,
                    )
                } else if buf.is_empty() {
                    (
                        "the client sent nothing within headerReadTimeout",
                        Nameless::Silent,
                    )
                } else {
                    (
                        "no complete ClientHello or request head within headerReadTimeout",
                        Nameless::Timeout,
                    )
                };
                return nameless(why.to_owned(), cause, Reason::HeaderTimeout);
            }
        }
    }
}

/// How long a peek may take.
#[derive(Clone, Copy)]
struct Deadlines {
    /// The whole ClientHello or request head: `limits.headerReadTimeout` from accept.
    head: Instant,
    /// The first byte, where silence is decided on the original destination.
    silent: Option<Instant>,
}

/// One read into `buf`'s spare capacity, which is not zeroed first.
async fn read_spare(client: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        client.readable().await?;
        match crate::relay::read_some(client, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
}

/// The life of one connection; returns the verdict and reason once an allowed relay has ended.
async fn proxy(
    ctx: &PeekListener,
    client: &mut TcpStream,
    peer: SocketAddr,
    audit: &mut AuditRecord,
    seen: &mut Seen,
) -> Result<(Verdict, Reason), Reject> {
    let gw = &*ctx.gateway;
    let limits = &gw.config.limits;
    let start = Instant::now();
    // Durations are validated to at most a year (config.rs), so these sums cannot overflow.
    let deadline = Deadlines {
        head: start + limits.header_read_timeout,
        silent: ctx.silent_client_timeout.map(|d| start + d),
    };

    // Where the connection was going, before anything is read. On a dual-stack `[::]` listener an
    // IPv4 connection has an IPv4-mapped local address: it is IPv4 (to the policy, and to netfilter,
    // which keeps its original destination in the IPv4 table).
    let local = || {
        client
            .local_addr()
            .map(egress_policy::canonical_addr)
            .map_err(|e| Reject::new(Reason::BadRequest, format!("local address: {e}")))
    };
    let original = match ctx.mode {
        Mode::Redirect => {
            let local = local()?;
            let dst =
                crate::sys::original_dst(client.as_raw_fd(), local.is_ipv6()).map_err(|e| {
                    Reject::new(
                        Reason::BadRequest,
                        format!("not a redirected connection (no original destination: {e})"),
                    )
                })?;
            // Connected straight to the listener: nothing was redirected.
            if dst == local {
                return Err(Reject::new(
                    Reason::BadRequest,
                    "not a redirected connection (the original destination is the listener itself)",
                ));
            }
            Some(dst)
        }
        Mode::Tproxy => Some(local()?),
        Mode::Sni { .. } => None,
    };
    let port = match (ctx.mode, original) {
        (Mode::Sni { port }, _) => port,
        (_, Some(dst)) => dst.port(),
        (_, None) => return Err(Reject::new(Reason::BadRequest, "no original destination")),
    };

    let cap = limits.max_header_bytes.max(MIN_PEEK);
    let mut peeked = Vec::with_capacity(4096);
    let found = peek(client, &mut peeked, cap, deadline, &mut seen.hello).await;
    let (dest, nameless) = match found {
        Peeked::Name { name, tls, ech } => {
            if matches!(ctx.mode, Mode::Sni { .. }) && !tls {
                audit.port = Some(port);
                return Err(Reject::new(
                    Reason::BadRequest,
                    "an sni listener takes TLS only: not a ClientHello",
                ));
            }
            let host = egress_policy::parse_name(&name).map_err(|e| {
                Reject::new(Reason::BadRequest, format!("server name {name:?}: {e}"))
            })?;
            if ech {
                audit.details =
                    Some("encrypted_client_hello: decided on the outer server name".to_owned());
            }
            (
                Destination {
                    host: Host::Name(host),
                    port,
                },
                None,
            )
        }
        Peeked::Nameless { why, cause, reason } => {
            seen.nameless = Some(cause);
            match original {
                // Only the original address is known: only a `cidr` rule can allow it.
                Some(dst) => (
                    Destination {
                        host: Host::Ip(egress_policy::canonical_ip(dst.ip())),
                        port,
                    },
                    Some(why),
                ),
                None => {
                    audit.port = Some(port);
                    return Err(Reject::new(reason, why));
                }
            }
        }
    };
    audit.host = Some(dest.host.to_string());
    audit.port = Some(dest.port);

    let found = gw.identities.identify(peer.ip());
    let identity = found.identity;
    audit.set_identity(&identity);

    let nameless_note = nameless.as_ref().map(|why| {
        format!("no host name: {why}; only a cidr rule on the original destination can allow it")
    });
    let notes: Vec<&str> = nameless_note
        .as_deref()
        .into_iter()
        .chain(found.note)
        .collect();
    let (loaded, decision) = crate::connect::decide(gw, audit, &identity, &dest, &notes)?;
    if let Some(why) = nameless {
        audit.details = Some(format!(
            "no host name ({why}): decided on the original destination"
        ));
    }

    let mut upstream =
        crate::connect::dial_allowed(gw, loaded, &identity, &decision, &dest, audit).await?;
    let allowed = (decision.verdict, Reason::from(decision.reason));

    let mut force_close = gw.force_close.clone();
    let mut stop: crate::relay::Stop = Box::pin(async move {
        let _ = force_close.wait_for(|d| *d).await;
        Close::Drain
    });
    let idle = gw.config.upstream.idle_timeout;
    // The peeked bytes go upstream unchanged, then the relay takes over.
    let mut early = 0;
    if !peeked.is_empty() {
        let sent = crate::relay::send_early(&upstream, &peeked, idle, &mut stop, &mut early);
        let sent = sent.await;
        ctx.metrics.bytes_up.inc_by(early);
        if let Err(close) = sent {
            audit.bytes_up = early;
            audit.close = Some(close.as_str());
            crate::relay::pass_reset_on(close, client, &upstream).await;
            return Ok(allowed);
        }
    }
    drop(peeked);
    let meters = Meters {
        up: &ctx.metrics.bytes_up,
        down: &ctx.metrics.bytes_down,
    };
    let relayed = client.relay_with(&mut upstream, idle, stop, meters).await;
    audit.bytes_up = relayed.up + early;
    audit.bytes_down = relayed.down;
    audit.close = Some(relayed.close.as_str());
    crate::relay::pass_reset_on(relayed.close, client, &upstream).await;
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::Nameless;

    #[test]
    fn nameless_causes_index_their_table_and_have_distinct_labels() {
        let mut labels = std::collections::HashSet::new();
        for (i, c) in Nameless::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert!(labels.insert(c.as_str()), "{} twice", c.as_str());
        }
    }
}
