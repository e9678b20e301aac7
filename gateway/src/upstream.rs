//! From a decided destination to a connected upstream socket: resolve, apply the address guard
//! and the policy to every answer, dial exactly the addresses that passed.
//!
//! The addresses dialed are the addresses checked: nothing here resolves twice or falls back to
//! another source of addresses. Answers that are blocked are skipped; the others are tried in the
//! order the resolver gave them.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use egress_policy::{Decision, Destination, Host, Identity, Mode, Policy};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::config::UpstreamConfig;
use crate::dns::{Dns, DnsError};
use crate::guard::AddressGuard;
use crate::metrics::Metrics;
use crate::reason::{Reason, Reject};

/// The candidate addresses of a destination: the literal itself, or what DNS says.
pub async fn resolve(
    dns: &Dns,
    dest: &Destination,
    metrics: &Metrics,
) -> Result<Vec<IpAddr>, Reject> {
    match &dest.host {
        Host::Ip(ip) => Ok(vec![*ip]),
        Host::Name(name) => {
            let started = Instant::now();
            let result = dns.resolve(name).await;
            metrics
                .dns_resolve_seconds
                .observe(started.elapsed().as_secs_f64());
            result.map_err(|e| match e {
                DnsError::NoAddresses(_) | DnsError::Failed { .. } => {
                    Reject::new(Reason::DnsFailure, e.to_string())
                }
            })
        }
    }
}

/// The gateway's own listening sockets: never a destination, whatever the policy says, so a
/// caller cannot chain the gateway into itself or reach the admin server through it.
#[derive(Clone, Debug, Default)]
pub struct OwnSockets(Vec<SocketAddr>);

impl OwnSockets {
    /// The bound addresses, canonical (`[::ffff:0.0.0.0]` is the IPv4 wildcard).
    pub fn new(bound: Vec<SocketAddr>) -> Self {
        OwnSockets(
            bound
                .into_iter()
                .map(egress_policy::canonical_addr)
                .collect(),
        )
    }

    fn contains(&self, target: SocketAddr) -> bool {
        self.contains_with(target, crate::sys::is_local_address)
    }

    /// A connection to an unspecified address goes to loopback, so `0.0.0.0:P` and `[::]:P` are
    /// the gateway's own whenever it listens on port P at all. A socket bound to an unspecified
    /// address (`0.0.0.0`, `[::]`, or `[::ffff:0.0.0.0]`) is reachable on every local address of
    /// the host: loopback, and whatever `is_local` says (the Pod IP; a node IP under
    /// `hostNetwork`), asked only then. Both families count for either kind of socket, as `[::]`
    /// is dual-stack. When `is_local` cannot answer, the target counts as the gateway's own: fail
    /// closed.
    fn contains_with(
        &self,
        target: SocketAddr,
        is_local: impl FnOnce(IpAddr) -> std::io::Result<bool>,
    ) -> bool {
        let ip = egress_policy::canonical_ip(target.ip());
        let mut any = false;
        let mut wildcard = false;
        for own in self.0.iter().filter(|own| own.port() == target.port()) {
            if own.ip() == ip {
                return true;
            }
            any = true;
            wildcard |= own.ip().is_unspecified();
        }
        if !any {
            return false;
        }
        if ip.is_unspecified() {
            return true;
        }
        if !wildcard {
            return false;
        }
        if ip.is_loopback() {
            return true;
        }
        match is_local(ip) {
            Ok(local) => local,
            Err(e) => {
                tracing::warn!(
                    target = %target,
                    error = %e,
                    "cannot tell whether the address is local; not dialing what may be the gateway's own socket"
                );
                true
            }
        }
    }
}

/// Keeps the addresses that may be dialed. An address is dropped when it is one of the gateway's
/// own sockets, when an enforce-mode deny rule's `cidr` entry covers it, or when the guard blocks
/// it and no exception applies: the address lies in `addressGuard.allowed`, in a `cidr` entry of
/// an allow rule for this caller, or the matching `host` entry says `allowPrivateAddresses: true`.
pub fn select_addresses(
    own: &OwnSockets,
    guard: &AddressGuard,
    policy: &Policy,
    identity: &Identity,
    decision: &Decision,
    dest: &Destination,
    candidates: Vec<IpAddr>,
) -> Result<Vec<IpAddr>, Reject> {
    let mut allowed = Vec::with_capacity(candidates.len());
    let mut refused: Option<Reject> = None;
    for ip in candidates {
        if own.contains(SocketAddr::new(ip, dest.port)) {
            refused = Some(Reject::new(
                Reason::BlockedAddress,
                format!("{ip}:{} is the gateway itself", dest.port),
            ));
            continue;
        }
        let by_address = match dest.host {
            Host::Ip(_) => decision.clone(),
            Host::Name(_) => policy.decide(
                identity,
                &Destination {
                    host: Host::Ip(ip),
                    port: dest.port,
                },
            ),
        };
        if by_address.denied_by_rule() && policy.mode == Mode::Enforce {
            refused.get_or_insert_with(|| {
                Reject::new(
                    Reason::DeniedByRule,
                    format!(
                        "{ip} is denied by rule {}",
                        by_address.rule.as_deref().unwrap_or("?")
                    ),
                )
            });
            continue;
        }
        if let Some(range) = guard.blocked_range(ip) {
            let excepted = guard.is_excepted(ip)
                || decision.allow_private_addresses
                || by_address.allowed_by_rule();
            if !excepted {
                let r = Reject::new(
                    Reason::BlockedAddress,
                    format!("{ip} is in blocked range {range}"),
                );
                // A guard refusal explains more than a rule refusal when both happened.
                if refused
                    .as_ref()
                    .is_none_or(|x| x.reason != Reason::BlockedAddress)
                {
                    refused = Some(r);
                }
                continue;
            }
        }
        allowed.push(ip);
    }
    if allowed.is_empty() {
        return Err(refused.unwrap_or_else(|| Reject::new(Reason::DnsFailure, "no addresses")));
    }
    Ok(allowed)
}

/// Dials the addresses in order until one answers. `connectTimeout` bounds the whole attempt.
pub async fn dial(
    cfg: &UpstreamConfig,
    addrs: &[IpAddr],
    port: u16,
    metrics: &Metrics,
) -> Result<(TcpStream, SocketAddr), Reject> {
    let started = Instant::now();
    let deadline = started + cfg.connect_timeout;
    let mut last: Option<Reject> = None;
    for ip in addrs {
        let target = SocketAddr::new(*ip, port);
        let socket = match open_socket(cfg, *ip) {
            Ok(s) => s,
            Err(r) => {
                last = Some(r);
                continue;
            }
        };
        match tokio::time::timeout_at(deadline, socket.connect(target)).await {
            Ok(Ok(stream)) => {
                metrics
                    .upstream_connect_seconds
                    .observe(started.elapsed().as_secs_f64());
                let _ = stream.set_nodelay(true);
                return Ok((stream, target));
            }
            Ok(Err(e)) => last = Some(Reject::new(Reason::UpstreamRefused, dial_error(target, &e))),
            Err(_) => {
                return Err(Reject::new(
                    Reason::UpstreamTimeout,
                    format!("{target}: no answer within connectTimeout"),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| Reject::new(Reason::UpstreamRefused, "no address to dial")))
}

/// Why a dial failed, for the audit line. A local port shortage is this host's limit, not the
/// upstream's answer, and says which settings raise it.
fn dial_error(target: SocketAddr, e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
        format!(
            "{target}: no free local port toward this destination ({e}): every port of \
             net.ipv4.ip_local_port_range is in use or in TIME_WAIT toward it; widen the range \
             or enable net.ipv4.tcp_tw_reuse"
        )
    } else {
        format!("{target}: {e}")
    }
}

fn open_socket(cfg: &UpstreamConfig, ip: IpAddr) -> Result<TcpSocket, Reject> {
    let fail = |what: &str, e: std::io::Error| {
        Reject::new(Reason::UpstreamRefused, format!("{what}: {e}"))
    };
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| fail("socket", e))?;
    if let Some(mark) = cfg.mark {
        crate::sys::set_mark(socket.as_raw_fd(), mark).map_err(|e| fail("SO_MARK", e))?;
    }
    if let Some(bind) = cfg.bind_address {
        if bind.is_ipv4() != ip.is_ipv4() {
            return Err(Reject::new(
                Reason::UpstreamRefused,
                format!("{ip}: bindAddress {bind} is of the other address family"),
            ));
        }
        crate::sys::set_bind_address_no_port(socket.as_raw_fd())
            .map_err(|e| fail("IP_BIND_ADDRESS_NO_PORT", e))?;
        socket
            .bind(SocketAddr::new(bind, 0))
            .map_err(|e| fail("bind", e))?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// A host whose only non-loopback address is 10.1.2.3.
    fn pod_ip(ip: IpAddr) -> std::io::Result<bool> {
        Ok(ip.is_loopback() || ip == IpAddr::from([10, 1, 2, 3]))
    }

    #[test]
    fn a_wildcard_socket_is_reached_on_every_local_address() {
        let own = OwnSockets::new(vec![
            addr("0.0.0.0:9901"),
            addr("[::]:15001"),
            addr("[::ffff:0.0.0.0]:15002"),
            addr("10.9.9.9:3128"),
            addr("127.0.0.1:9100"),
        ]);
        for target in [
            "10.1.2.3:9901",
            "127.0.0.1:9901",
            "127.8.0.1:9901",
            "0.0.0.0:9901",
            "[::1]:9901",
            "10.1.2.3:15001",
            "[::ffff:10.1.2.3]:15001",
            "[::ffff:10.1.2.3]:9901",
            "10.1.2.3:15002",
            "10.9.9.9:3128",
            "[::ffff:10.9.9.9]:3128",
            "0.0.0.0:3128",
            "127.0.0.1:9100",
            "0.0.0.0:9100",
            "[::]:9100",
            "[::ffff:0.0.0.0]:9100",
        ] {
            assert!(own.contains_with(addr(target), pod_ip), "{target}");
        }
        for target in [
            "10.1.2.4:9901",
            "10.1.2.3:9902",
            "10.1.2.3:3128",
            "10.9.9.9:9901",
            "127.0.0.2:9100",
            "10.1.2.3:9100",
            "0.0.0.0:9102",
        ] {
            assert!(!own.contains_with(addr(target), pod_ip), "{target}");
        }
    }

    #[test]
    fn the_kernel_is_asked_only_for_a_wildcard_port_and_no_answer_fails_closed() {
        let own = OwnSockets::new(vec![addr("0.0.0.0:9901"), addr("10.9.9.9:3128")]);
        let unasked = |_: IpAddr| -> std::io::Result<bool> {
            panic!("asked for a port the gateway has no wildcard socket on")
        };
        assert!(!own.contains_with(addr("10.1.2.3:443"), unasked));
        assert!(!own.contains_with(addr("10.1.2.3:3128"), unasked));
        let failing = |_: IpAddr| Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(own.contains_with(addr("10.1.2.3:9901"), failing));
    }

    /// The kernel's answer: all of 127/8 is local (a `local` route, not one interface address);
    /// TEST-NET-1 is not.
    #[test]
    fn the_kernel_says_which_addresses_are_local() {
        for (ip, local) in [
            ("127.0.0.1", true),
            ("127.45.6.7", true),
            ("192.0.2.1", false),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(
                crate::sys::is_local_address(ip).expect("probe"),
                local,
                "{ip}"
            );
        }
    }
}
