//! Name resolution through hickory-resolver. `dns.hosts` entries answer first; everything else
//! goes to `dns.nameservers` (or /etc/resolv.conf). Names are always queried as absolute names:
//! a destination from a caller is never expanded with the resolver's search domains, which could
//! turn `api.example.com` into an in-cluster Service name.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use egress_policy::{canonical_ip, HostName};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

/// The gateway's resolver.
pub struct Dns {
    hosts: BTreeMap<String, Vec<IpAddr>>,
    resolver: TokioResolver,
}

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{0} has no addresses")]
    NoAddresses(String),
    #[error("resolving {name}: {message}")]
    Failed { name: String, message: String },
}

impl Dns {
    pub fn new(
        nameservers: &[SocketAddr],
        hosts: BTreeMap<String, Vec<IpAddr>>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let mut config = ResolverConfig::new();
            for ns in nameservers {
                config.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, provider)
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = timeout;
        opts.attempts = 2;
        opts.ndots = 0;
        Ok(Dns {
            hosts,
            resolver: builder.build(),
        })
    }

    /// All addresses of `name`, IPv4-mapped ones in their IPv4 form, without duplicates.
    pub async fn resolve(&self, name: &HostName) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(ips) = self.hosts.get(name.as_str()) {
            return Ok(dedup(ips.iter().copied()));
        }
        let fqdn = format!("{}.", name.as_str());
        // Boxed: the resolver's future is large, and every connection's task would otherwise
        // carry its size, `dns.hosts` hits and IP literals included.
        let lookup = Box::pin(self.resolver.lookup_ip(fqdn)).await.map_err(|e| {
            if e.is_no_records_found() {
                DnsError::NoAddresses(name.to_string())
            } else {
                DnsError::Failed {
                    name: name.to_string(),
                    message: e.to_string(),
                }
            }
        })?;
        let ips = dedup(lookup.iter());
        if ips.is_empty() {
            return Err(DnsError::NoAddresses(name.to_string()));
        }
        Ok(ips)
    }
}

fn dedup(ips: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips.map(canonical_ip) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}
