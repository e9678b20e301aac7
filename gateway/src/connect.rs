//! The `connect` listener: HTTP CONNECT tunnels and absolute-form plain-HTTP forwarding.
//!
//! [`proxy`] is the whole life of a connection, top to bottom:
//! `head -> request -> identity -> policy -> resolve -> guard -> dial -> reply -> relay`.
//! Each step returns `Result<_, Reject>`; [`handle`] is the one place that turns a rejection into
//! a response, a metric and an audit line. After a rejection the gateway answers, shuts down its
//! side and discards whatever the client still sends: bytes after a refused CONNECT are never
//! processed.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use egress_policy::{Action, Identity, IdentitySource, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::audit::{AuditRecord, AuditSink, ShadowEntry};
use crate::config::{GatewayConfig, ListenerConfig, ListenerKind};
use crate::dns::Dns;
use crate::http::{self, Body, ChunkedScanner, ProxyRequest};
use crate::identity::Identities;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::policy_store::PolicyStore;
use crate::reason::{Reason, Reject};
use crate::relay::{self, Caller, Close, Meters};
use crate::tls::Presented;

/// What every listener shares.
pub struct Gateway {
    pub config: GatewayConfig,
    pub policy: Arc<PolicyStore>,
    pub dns: Dns,
    pub metrics: Arc<Metrics>,
    pub audit: AuditSink,
    pub identities: Identities,
    /// The gateway's own listening sockets, never dialed.
    pub own_sockets: crate::upstream::OwnSockets,
    pub conns: ConnTracker,
    /// Turns true when the drain period is over: live tunnels close.
    pub force_close: watch::Receiver<bool>,
}

/// How many connections refused for `maxConnections` may be answered at once. They hold no
/// `maxConnections` slot while their answer is written and they linger (up to `http::LINGER`), so
/// without this bound a flood would hold about half its connection rate per second in extra
/// descriptors. Past it, a refused connection is closed at once, unanswered.
pub const MAX_OVERLOAD_ANSWERS: usize = 1024;

/// Counts live connections against `maxConnections`, and lets shutdown wait for zero.
pub struct ConnTracker {
    active: AtomicUsize,
    max: usize,
    idle: Notify,
    /// Refused connections being answered, against `answer_cap`.
    answering: AtomicUsize,
    answer_cap: usize,
}

impl ConnTracker {
    pub fn new(max: usize) -> Self {
        Self::with_answer_cap(max, MAX_OVERLOAD_ANSWERS)
    }

    fn with_answer_cap(max: usize, answer_cap: usize) -> Self {
        ConnTracker {
            active: AtomicUsize::new(0),
            max,
            idle: Notify::new(),
            answering: AtomicUsize::new(0),
            answer_cap,
        }
    }

    /// For a connection `enter` refused: its rejection, and whether it may be answered (a slot
    /// among `MAX_OVERLOAD_ANSWERS`, held until the refusal is dropped).
    /// A connection just accepted: admitted under `maxConnections`, or refused.
    pub(crate) fn admit<'a>(&'a self, metrics: &'a ListenerMetrics) -> Admission<'a> {
        self.enter(metrics).ok_or_else(|| self.refuse())
    }

    fn refuse(&self) -> Refusal<'_> {
        let prev = self.answering.fetch_add(1, Ordering::AcqRel);
        if prev >= self.answer_cap {
            self.answering.fetch_sub(1, Ordering::AcqRel);
            return Refusal {
                tracker: None,
                reject: Reject::new(
                    Reason::Overloaded,
                    "maxConnections reached; closed unanswered: too many refusals are being answered",
                ),
            };
        }
        Refusal {
            tracker: Some(self),
            reject: Reject::new(Reason::Overloaded, "maxConnections reached"),
        }
    }

    fn enter<'a>(&'a self, metrics: &'a ListenerMetrics) -> Option<Active<'a>> {
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        let guard = Active {
            tracker: self,
            metrics,
        };
        metrics.active.inc();
        if prev >= self.max {
            drop(guard);
            return None;
        }
        Some(guard)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) struct Active<'a> {
    tracker: &'a ConnTracker,
    metrics: &'a ListenerMetrics,
}

/// What `ConnTracker::admit` decided for one connection; held until the connection closes.
pub(crate) type Admission<'a> = Result<Active<'a>, Refusal<'a>>;

/// Whether a connection that ends in a rejection gets an answer and a linger: all admitted ones,
/// and refused ones that hold an answer slot.
pub(crate) fn answers(admission: &Admission<'_>) -> bool {
    admission.as_ref().err().is_none_or(Refusal::answered)
}

/// A connection refused for `maxConnections`.
pub(crate) struct Refusal<'a> {
    /// Set while this refusal holds an answer slot.
    tracker: Option<&'a ConnTracker>,
    pub reject: Reject,
}

impl Refusal<'_> {
    /// Whether the caller gets an answer and a linger, or is closed at once.
    pub fn answered(&self) -> bool {
        self.tracker.is_some()
    }
}

impl Drop for Refusal<'_> {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker {
            tracker.answering.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.metrics.active.dec();
        if self.tracker.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}

/// One `connect` listener.
pub struct ConnectListener {
    pub name: String,
    /// With `tls:`: an HTTPS proxy whose callers may prove their identity with a certificate.
    pub tls: Option<Arc<crate::tls::CertStore>>,
    pub gateway: Arc<Gateway>,
    pub metrics: ListenerMetrics,
}

/// How long the kernel holds a connection that has sent nothing before handing it over anyway
/// (`TCP_DEFER_ACCEPT`): one SYN-ACK retransmission.
pub const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Accepts until `stop` turns true.
pub async fn serve(listener: TcpListener, ctx: Arc<ConnectListener>, stop: watch::Receiver<bool>) {
    let name = ctx.name.clone();
    accept_until_stopped(listener, &name, stop, |stream, peer| {
        tokio::spawn(Box::pin(handle(Arc::clone(&ctx), stream, peer)));
    })
    .await;
}

/// Binds a listener of any kind; a TPROXY listener gets `IP_TRANSPARENT` first.
///
/// The listening socket has `TCP_NODELAY`, and Linux copies it into every socket it accepts: small
/// writes (the 200, handshakes, interactive tunnel traffic) go out at once, without a system call
/// per connection to ask for it.
///
/// With `deferAccept`, it also has `TCP_DEFER_ACCEPT` for [`DEFER_ACCEPT_SECS`]: the kernel
/// completes the handshake but wakes the gateway only when the caller's first bytes (its
/// ClientHello or request head) are there, so a connection costs one wake-up less and its first
/// read finds data. A caller that sends nothing is handed over after about a second, and its
/// `headerReadTimeout` starts then.
pub fn bind(cfg: &ListenerConfig) -> std::io::Result<TcpListener> {
    let socket = if cfg.address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    if cfg.kind == ListenerKind::Transparent && cfg.tproxy {
        crate::sys::set_transparent(socket.as_raw_fd(), cfg.address.is_ipv6())?;
    }
    if cfg.defer_accept {
        crate::sys::set_defer_accept(socket.as_raw_fd(), DEFER_ACCEPT_SECS)?;
    }
    socket.bind(cfg.address)?;
    socket.listen(1024)
}

/// The accept loop of every listener: hands each connection to `accepted` until `stop` turns
/// true.
pub(crate) async fn accept_until_stopped(
    listener: TcpListener,
    name: &str,
    mut stop: watch::Receiver<bool>,
    mut accepted: impl FnMut(TcpStream, SocketAddr),
) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => break,
            result = listener.accept() => match result {
                // An IPv4 caller of a dual-stack `[::]` listener is IPv4 from here on: to the
                // identity table, the policy, the audit log and the logs.
                Ok((stream, peer)) => accepted(stream, egress_policy::canonical_addr(peer)),
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!(listener = %name, "stopped accepting");
}

async fn handle(ctx: Arc<ConnectListener>, client: TcpStream, peer: SocketAddr) {
    // A connection counts against maxConnections from accept, its TLS handshake included.
    let admission = ctx.gateway.conns.admit(&ctx.metrics);
    // One deadline from accept: for a TLS listener, the handshake and the request head together.
    let deadline = Instant::now() + ctx.gateway.config.limits.header_read_timeout;
    let Some(store) = ctx.tls.as_ref() else {
        return serve_caller(&ctx, client, peer, Mtls::NotTls, deadline, admission).await;
    };
    if admission.is_err() {
        // No HTTP answer is possible before a handshake, and a handshake is what overload
        // cannot afford: the connection is closed, counted and audited.
        let gw = &ctx.gateway;
        gw.metrics
            .count_connection(&ctx.metrics, Verdict::Deny, Reason::Overloaded);
        let mut audit = AuditRecord::new(&ctx.name, peer);
        audit.decision = Verdict::Deny.as_str();
        audit.reason = Reason::Overloaded.as_str();
        audit.details = Some("maxConnections reached; closed before the TLS handshake".to_owned());
        gw.audit.write(audit);
        return;
    }
    let generation = store.generation();
    let acceptor = store.current().acceptor.clone();
    // The TLS path is boxed: a handshake and a TLS stream are large, and a plain connection's
    // task should not be sized for them (every task is as large as its largest state).
    match tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(client))).await {
        Ok(Ok(tls)) => {
            let mtls = match tls.get_ref().1.peer_certificates() {
                None | Some([]) => Mtls::NoCertificate,
                Some(chain) => {
                    let presented = Presented {
                        chain: chain.to_vec(),
                        generation,
                    };
                    match egress_certs::spiffe::spiffe_id_of(&chain[0]) {
                        Ok(id) => Mtls::Identity(id.to_string(), presented),
                        Err(why) => Mtls::NotAnIdentity(why.to_string(), presented),
                    }
                }
            };
            Box::pin(serve_caller(&ctx, tls, peer, mtls, deadline, admission)).await;
        }
        Ok(Err(e)) => {
            let reason = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or("io", egress_certs::server::handshake_failure_reason);
            handshake_failed(&ctx, peer, reason, &e.to_string());
        }
        Err(_) => handshake_failed(
            &ctx,
            peer,
            "timeout",
            "no TLS handshake within headerReadTimeout",
        ),
    }
}

/// What the caller's client certificate said.
enum Mtls {
    /// A plain listener.
    NotTls,
    /// A TLS listener with `clientAuth: optional`, and no certificate.
    NoCertificate,
    /// A verified certificate that is not an X.509-SVID: no identity. Its chain is re-checked
    /// when the trust bundles change, as an identity's is.
    NotAnIdentity(String, Presented),
    /// The SPIFFE ID, and the chain it came with (re-checked when the trust bundles change).
    Identity(String, Presented),
}

/// A failed handshake: counted by reason, logged with the peer address (never key material),
/// and audited.
fn handshake_failed(ctx: &ConnectListener, peer: SocketAddr, reason: &'static str, error: &str) {
    let gw = &ctx.gateway;
    gw.metrics.tls_handshake_failure(&ctx.name, reason);
    tracing::info!(listener = %ctx.name, source = %peer, reason, error, "TLS handshake failed");
    let mut audit = AuditRecord::new(&ctx.name, peer);
    audit.decision = Verdict::Deny.as_str();
    audit.reason = "tls_handshake";
    audit.details = Some(reason.to_owned());
    gw.audit.write(audit);
}

async fn serve_caller<S: Caller>(
    ctx: &ConnectListener,
    mut client: S,
    peer: SocketAddr,
    mtls: Mtls,
    head_deadline: Instant,
    admission: Admission<'_>,
) {
    let gw = &ctx.gateway;
    let mut audit = AuditRecord::new(&ctx.name, peer);
    let result = match &admission {
        Ok(_) => proxy(ctx, &mut client, peer, mtls, head_deadline, &mut audit).await,
        Err(refusal) => Err(refusal.reject.clone()),
    };
    record_outcome(gw, &ctx.name, &ctx.metrics, peer, &mut audit, &result);
    if let Err(reject) = &result {
        if answers(&admission) {
            refuse(&mut client, reject).await;
        }
    }
    drop(admission);
    gw.audit.write(audit);
}

/// Answers a rejection, then closes: our side is shut down at once, and what the client still
/// sends is read and dropped for a short while (so the answer is not lost to a reset), never
/// parsed.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S, reject: &Reject) {
    let response = reject.http_response();
    let _ = tokio::time::timeout(http::LINGER, client.write_all(&response)).await;
    close_discarding(client).await;
}

/// Shuts our side down, then reads and drops what the client still sends for a short while (so
/// an answer already written is not lost to a reset), never parsing it.
pub(crate) async fn close_discarding<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S) {
    let deadline = Instant::now() + http::LINGER;
    // Bounded too: a TLS shutdown writes `close_notify`, and waits if the caller's window is shut.
    let _ = tokio::time::timeout_at(deadline, client.shutdown()).await;
    // On the heap: only refused connections and some forwarded requests get here, and a buffer
    // inside this future would make every connection's task larger.
    let mut sink = vec![0u8; 4096];
    let mut discarded = 0usize;
    while discarded < 256 * 1024 {
        match tokio::time::timeout_at(deadline, client.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// The life of one connection. Returns the verdict and reason of an allowed connection once its
/// relay has ended. The request head must be complete by `head_deadline`.
async fn proxy<S: Caller>(
    ctx: &ConnectListener,
    client: &mut S,
    peer: SocketAddr,
    mtls: Mtls,
    head_deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<(Verdict, Reason), Reject> {
    let gw = &*ctx.gateway;
    let limits = &gw.config.limits;

    let head = http::read_head(client, head_deadline, limits.max_header_bytes).await?;
    let request = http::parse_request(&head.buf[..head.len])?;
    let leftover = head.leftover().to_vec();
    drop(head);
    let dest = request.destination().clone();
    audit.host = Some(dest.host.to_string());
    audit.port = Some(dest.port);

    // Order of identity sources: the client certificate when it carries an identity; a caller
    // whose certificate is not an X.509-SVID has no identity at all; else the static table.
    let mut presented_chain = None;
    let mut note = None;
    let identity = match mtls {
        Mtls::Identity(id, presented) => {
            presented_chain = Some(presented);
            Identity::from_spiffe(IdentitySource::Mtls, &id, Some(peer.ip()))
        }
        Mtls::NotAnIdentity(why, presented) => {
            tracing::debug!(source = %peer, why, "client certificate is not an X.509-SVID: no identity");
            presented_chain = Some(presented);
            Identity::anonymous(Some(peer.ip()))
        }
        Mtls::NotTls | Mtls::NoCertificate => {
            let found = gw.identities.identify(peer.ip());
            note = found.note;
            found.identity
        }
    };
    audit.set_identity(&identity);
    // The trust bundles may have changed since the handshake (a CA removed while the caller
    // took its time with the request head): a certificate they no longer trust is no identity.
    if let (Some(store), Some(presented)) = (&ctx.tls, &presented_chain) {
        if !store.still_trusts(presented) {
            return Err(Reject::new(
                Reason::UnknownIdentity,
                "the client certificate no longer chains to a trusted CA: the trust bundles changed after the handshake",
            ));
        }
    }

    let (loaded, decision) = decide(gw, audit, &identity, &dest, note.as_slice())?;
    let mut upstream = dial_allowed(gw, loaded, &identity, &decision, &dest, audit).await?;

    let allowed = (decision.verdict, Reason::from(decision.reason));
    let mut force_close = gw.force_close.clone();
    let store = ctx.tls.clone();
    // Why a live tunnel must end early: the drain period is over, or its caller's certificate
    // stopped chaining to a trusted CA.
    let mut stop: relay::Stop = Box::pin(async move {
        let drain = async {
            let _ = force_close.wait_for(|d| *d).await;
        };
        let revoked = async {
            match (&store, &presented_chain) {
                (Some(store), Some(chain)) => store.until_untrusted(chain).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = drain => Close::Drain,
            () = revoked => Close::TrustRevoked,
        }
    });
    let idle = gw.config.upstream.idle_timeout;
    match request {
        ProxyRequest::Connect { .. } => {
            let reply = client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n");
            if reply.await.is_err() {
                audit.close = Some(Close::Error.as_str());
                return Ok(allowed);
            }
            // Bytes the client sent after the head (optimistic tunnel data) go upstream only now
            // that the tunnel is allowed and established.
            let mut early = 0;
            if !leftover.is_empty() {
                let sent = relay::send_early(&upstream, &leftover, idle, &mut stop, &mut early);
                let sent = sent.await;
                ctx.metrics.bytes_up.inc_by(early);
                if let Err(close) = sent {
                    audit.bytes_up = early;
                    audit.close = Some(close.as_str());
                    relay::pass_reset_on(close, client.socket(), &upstream).await;
                    return Ok(allowed);
                }
            }
            drop(leftover);
            let meters = Meters {
                up: &ctx.metrics.bytes_up,
                down: &ctx.metrics.bytes_down,
            };
            let relayed = client.relay_with(&mut upstream, idle, stop, meters).await;
            audit.bytes_up = relayed.up + early;
            audit.bytes_down = relayed.down;
            audit.close = Some(relayed.close.as_str());
            relay::pass_reset_on(relayed.close, client.socket(), &upstream).await;
        }
        ProxyRequest::Forward {
            head,
            body,
            continue_first,
            ..
        } => {
            // The client waits for this before it sends the body; the upstream never saw the
            // expectation.
            if continue_first {
                let interim = async {
                    client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                    client.flush().await
                };
                if let Err(close) = relay::step(idle, &mut stop, interim).await {
                    audit.close = Some(close.as_str());
                    return Ok(allowed);
                }
            }
            if body == Body::Length(0) {
                // No body: the head, then the answer, spliced for a plain caller.
                let mut up = 0;
                let sent = relay::send_early(&upstream, &head, idle, &mut stop, &mut up).await;
                ctx.metrics.bytes_up.inc_by(up);
                audit.bytes_up = up;
                let close = match sent {
                    Ok(()) => {
                        let (down, close) = client
                            .relay_down_with(&mut upstream, idle, stop, &ctx.metrics.bytes_down)
                            .await;
                        audit.bytes_down = down;
                        close
                    }
                    Err(close) => close,
                };
                audit.close = Some(close.as_str());
                end_forwarded(client, close, false).await;
            } else {
                let body = BodySource {
                    framing: body,
                    leftover,
                    idle,
                };
                let done = exchange(client, &mut upstream, &head, body, stop, &ctx.metrics).await;
                audit.bytes_up = done.up;
                audit.bytes_down = done.down;
                audit.close = Some(done.close.as_str());
                if done.cut_short {
                    tracing::debug!(
                        bytes_up = done.up,
                        bytes_down = done.down,
                        "the upstream finished, or stopped taking the body, before the request body ended"
                    );
                }
                end_forwarded(client, done.close, done.cut_short).await;
            }
        }
    }
    Ok(allowed)
}

/// Ends a forwarded request's connection once its answer has been relayed, or has not.
///
/// - The upstream stopped taking the body (`cut_short`) after it answered, or closed: that answer
///   is whole as far as the upstream is concerned. Our side is shut down, and what the caller
///   still sends of its body is read and dropped for a while, so the caller reads the answer
///   before the close (closing with unread bytes would reset the connection at once and drop
///   what the caller has not yet received).
/// - The answer was relayed to the upstream's end: the same if the caller sent more than its
///   request (pipelined bytes, a stray CRLF) and some of it is still unread; else nothing to do.
/// - Any other end (a reset on either side, a body cut short or badly framed, the idle timeout,
///   the drain, revoked trust): the answer may be cut. The caller is reset once what was relayed
///   has been delivered, never closed with a FIN or a `close_notify`, so a caller whose answer
///   ends at the close sees it cut, not complete.
async fn end_forwarded<S: Caller>(client: &mut S, close: Close, cut_short: bool) {
    let fd = client.socket().as_raw_fd();
    if cut_short || close == Close::Eof {
        if cut_short || crate::sys::unread(fd).is_ok_and(|n| n > 0) {
            close_discarding(client).await;
        }
    } else {
        relay::reset_when_delivered(client.socket()).await;
    }
}

/// Counts how a connection ended; a rejection also goes into its audit line.
pub(crate) fn record_outcome(
    gw: &Gateway,
    listener: &str,
    metrics: &ListenerMetrics,
    peer: SocketAddr,
    audit: &mut AuditRecord,
    result: &Result<(Verdict, Reason), Reject>,
) {
    match result {
        Ok((verdict, reason)) => gw.metrics.count_connection(metrics, *verdict, *reason),
        Err(reject) => {
            tracing::debug!(listener, source = %peer, reason = reject.reason.as_str(), details = %reject.details, "rejected");
            audit.decision = Verdict::Deny.as_str();
            audit.reason = reject.reason.as_str();
            audit.details = Some(reject.details.clone());
            gw.metrics
                .count_connection(metrics, Verdict::Deny, reject.reason);
        }
    }
}

/// Decides one connection by the policy in force and puts the decision into the audit line. A
/// denial becomes a rejection whose details name the rule (or that none allows the caller),
/// followed by each of `notes` in parentheses.
pub(crate) fn decide(
    gw: &Gateway,
    audit: &mut AuditRecord,
    identity: &Identity,
    dest: &egress_policy::Destination,
    notes: &[&str],
) -> Result<
    (
        Arc<crate::policy_store::LoadedPolicy>,
        egress_policy::Decision,
    ),
    Reject,
> {
    let loaded = gw.policy.load();
    let decision = loaded.policy.decide(identity, dest);
    record_decision(gw, &loaded, audit, &decision);
    if decision.verdict == Verdict::Deny {
        let mut details = match &decision.rule {
            Some(rule) => format!("rule {rule}"),
            None => format!("no rule allows this caller to reach {dest}"),
        };
        for note in notes {
            details.push_str(&format!(" ({note})"));
        }
        return Err(Reject::new(decision.reason.into(), details));
    }
    Ok((loaded, decision))
}

/// After an allow: resolves the destination, keeps the addresses the guard and the policy let
/// through, and dials them in turn; the dialed address goes into the audit line. The policy is
/// released before the dial.
pub(crate) async fn dial_allowed(
    gw: &Gateway,
    loaded: Arc<crate::policy_store::LoadedPolicy>,
    identity: &Identity,
    decision: &egress_policy::Decision,
    dest: &egress_policy::Destination,
    audit: &mut AuditRecord,
) -> Result<TcpStream, Reject> {
    let candidates = crate::upstream::resolve(&gw.dns, dest, &gw.metrics).await?;
    let addrs = crate::upstream::select_addresses(
        &gw.own_sockets,
        &gw.config.guard,
        &loaded.policy,
        identity,
        decision,
        dest,
        candidates,
    )?;
    drop(loaded);
    let (upstream, dialed) =
        crate::upstream::dial(&gw.config.upstream, &addrs, dest.port, &gw.metrics).await?;
    audit.upstream = Some(crate::audit::addr_string(dialed));
    Ok(upstream)
}

/// Puts the decision into the audit line and counts the rule hits.
pub(crate) fn record_decision(
    gw: &Gateway,
    loaded: &crate::policy_store::LoadedPolicy,
    audit: &mut AuditRecord,
    decision: &egress_policy::Decision,
) {
    audit.decision = decision.verdict.as_str();
    audit.reason = Reason::from(decision.reason).as_str();
    audit.rule = decision.rule.as_deref().map(str::to_owned);
    if let Some(rule) = &decision.rule {
        let kind = decision.verdict.as_str();
        loaded
            .hits
            .inc(&gw.metrics, decision.rule_index, rule, kind);
    }
    for s in &decision.shadow {
        audit.shadow.push(ShadowEntry {
            rule: s.rule.to_string(),
            action: s.action.as_str(),
        });
        let kind = match s.action {
            Action::Allow => "shadow_allow",
            Action::Deny => "shadow_deny",
        };
        loaded
            .hits
            .inc(&gw.metrics, Some(s.rule_index), &s.rule, kind);
    }
}

/// Where a forwarded request's body ends, tracked as its bytes stream through.
enum BodyFraming {
    Length(u64),
    Chunked(ChunkedScanner),
}

impl BodyFraming {
    fn new(body: Body) -> Self {
        match body {
            Body::Length(n) => BodyFraming::Length(n),
            Body::Chunked => BodyFraming::Chunked(ChunkedScanner::default()),
        }
    }

    /// How many bytes of `data` belong to the body, and whether the body is then complete.
    fn take(&mut self, data: &[u8]) -> std::io::Result<(usize, bool)> {
        match self {
            BodyFraming::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            BodyFraming::Chunked(scanner) => match scanner.feed(data) {
                Ok(Some(end)) => Ok((end, true)),
                Ok(None) => Ok((data.len(), false)),
                Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            },
        }
    }
}

/// A forwarded request's body: how it is framed, what of it came with the head, and how long
/// the client may leave it waiting.
struct BodySource {
    framing: Body,
    leftover: Vec<u8>,
    /// `upstream.idleTimeout`: the longest the exchange may go without a byte moving either way.
    idle: Duration,
}

/// Why a forwarded request's body stopped before its end.
enum Upload {
    /// The caller's body was cut short, badly framed or unreadable: the request cannot stand.
    Client,
    /// The upstream stopped taking it (a reset, usually after an early answer).
    Upstream,
}

/// What a forwarded request with a body moved, and how it ended.
struct Exchanged {
    up: u64,
    down: u64,
    close: Close,
    /// The upstream finished, or stopped taking the body, before the body's end: the caller may
    /// still be sending it.
    cut_short: bool,
}

/// Sends a forwarded request (the rewritten head, then exactly its body) while the upstream's
/// answer is relayed to the caller, both at once: an upstream may answer before the body ends
/// (a `413`, a `401`; an interim `103`), and its answer must not wait behind the body. The body
/// goes on after an interim answer; it stops when the upstream has finished its answer, or
/// stops taking the body, and what the upstream said is still relayed. Bytes after the body are
/// not forwarded: one request per client connection. The exchange ends once the answer has been
/// relayed to the upstream's end, when no byte has moved either way for `upstream.idleTimeout`,
/// or at `stop` (drain, trust revoked).
async fn exchange<S: Caller>(
    client: &mut S,
    upstream: &mut TcpStream,
    head: &[u8],
    body: BodySource,
    stop: relay::Stop,
    metrics: &ListenerMetrics,
) -> Exchanged {
    let last = relay::Activity::now();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_upstream, to_upstream) = upstream.split();
    let to_upstream: &TcpStream = to_upstream.as_ref();
    let upload = async {
        relay::put(to_upstream, head, &up, &last)
            .await
            .map_err(|_| Upload::Upstream)?;
        let mut framing = BodyFraming::new(body.framing);
        let mut buf = vec![0u8; 16 * 1024];
        let mut chunk: &[u8] = &body.leftover;
        loop {
            let (take, done) = framing.take(chunk).map_err(|e| {
                tracing::debug!(error = %e, "the request body's framing is invalid");
                Upload::Client
            })?;
            if take > 0 {
                relay::put(to_upstream, &chunk[..take], &up, &last)
                    .await
                    .map_err(|_| Upload::Upstream)?;
            }
            if done {
                return Ok(());
            }
            let n = from_client
                .read(&mut buf)
                .await
                .map_err(|_| Upload::Client)?;
            if n == 0 {
                // The body was cut short.
                return Err(Upload::Client);
            }
            last.touch();
            chunk = &buf[..n];
        }
    };
    let answer = relay::copy_stream(
        &mut from_upstream,
        &mut to_client,
        &down,
        &metrics.bytes_down,
        &last,
    );
    // Whether the answer was relayed to its end, and whether the body was cut short.
    let both = async {
        tokio::pin!(answer);
        let uploaded = tokio::select! {
            biased;
            u = upload => u,
            a = &mut answer => return (a.is_ok(), true),
        };
        match uploaded {
            Ok(()) => (answer.await.is_ok(), false),
            Err(Upload::Upstream) => (answer.await.is_ok(), true),
            Err(Upload::Client) => (false, false),
        }
    };
    let (close, cut_short) = tokio::select! {
        (ok, cut_short) = both => (if ok { Close::Eof } else { Close::Error }, cut_short),
        () = last.idle_for(body.idle) => (Close::IdleTimeout, false),
        c = stop => (c, false),
    };
    let (up, down) = (up.into_inner(), down.into_inner());
    metrics.bytes_up.inc_by(up);
    // An upstream that hung up on the request without a word failed it.
    let close = if cut_short && down == 0 && close == Close::Eof {
        Close::Error
    } else {
        close
    };
    Exchanged {
        up,
        down,
        close,
        cut_short,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refusals for `maxConnections` are answered only up to the cap; past it they are closed
    /// unanswered and say so, and a refusal that ends gives its slot back.
    #[test]
    fn overload_refusals_are_answered_only_up_to_the_cap() {
        let conns = ConnTracker::with_answer_cap(1, 2);
        let first = conns.refuse();
        let second = conns.refuse();
        assert!(first.answered() && second.answered());
        assert_eq!(first.reject.details, "maxConnections reached");
        let third = conns.refuse();
        assert!(!third.answered());
        assert_eq!(third.reject.reason, Reason::Overloaded);
        assert!(
            third.reject.details.contains("closed unanswered"),
            "{}",
            third.reject.details
        );
        drop(third);
        assert!(
            !conns.refuse().answered(),
            "an unanswered refusal holds no slot"
        );
        drop(first);
        let fourth = conns.refuse();
        assert!(fourth.answered());
        assert_eq!(conns.answering.load(Ordering::Acquire), 2);
        drop((second, fourth));
        assert_eq!(conns.answering.load(Ordering::Acquire), 0);
    }

    /// Every kind of listener hands out sockets with `TCP_NODELAY` already on: the handlers no
    /// longer set it themselves.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        for kind in [
            ListenerKind::Connect,
            ListenerKind::Transparent,
            ListenerKind::Sni,
        ] {
            let cfg = ListenerConfig {
                name: "t".to_owned(),
                kind,
                address: "127.0.0.1:0".parse().expect("address"),
                tls: None,
                upstream_port: 443,
                tproxy: false,
                defer_accept: false,
                silent_client_timeout: None,
            };
            let listener = bind(&cfg).expect("bind");
            let addr = listener.local_addr().expect("local address");
            let client = TcpStream::connect(addr).await.expect("connect");
            let (accepted, _) = listener.accept().await.expect("accept");
            assert!(accepted.nodelay().expect("TCP_NODELAY"), "{kind:?}");
            // The connecting side is not ours to change: only accepted sockets inherit.
            assert!(!client.nodelay().expect("TCP_NODELAY"));
        }
    }

    /// With `deferAccept`, a connection that has sent nothing is not handed to `accept()` (it
    /// would be after about a second); its first byte hands it over at once (well within that
    /// second), with the byte waiting to be read. Without, the handshake alone hands it over.
    #[tokio::test]
    async fn deferred_accept_waits_for_the_first_byte() {
        use tokio::io::AsyncWriteExt;
        for defer_accept in [true, false] {
            let cfg = ListenerConfig {
                name: "t".to_owned(),
                kind: ListenerKind::Sni,
                address: "127.0.0.1:0".parse().expect("address"),
                tls: None,
                upstream_port: 443,
                tproxy: false,
                defer_accept,
                silent_client_timeout: None,
            };
            let listener = bind(&cfg).expect("bind");
            let addr = listener.local_addr().expect("local address");
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
            assert_eq!(
                early.is_ok(),
                !defer_accept,
                "accepted before any byte: {early:?}"
            );
            if defer_accept {
                client.write_all(b"\x16").await.expect("write");
                let (accepted, _) =
                    tokio::time::timeout(Duration::from_millis(500), listener.accept())
                        .await
                        .expect("the first byte hands the connection over")
                        .expect("accept");
                accepted.readable().await.expect("readable");
                let mut one = [0u8; 1];
                assert_eq!(accepted.try_read(&mut one).expect("read"), 1);
            }
        }
    }
}
