//! The address guard: runs after DNS on every address that would be dialed, so that a name (or an
//! IP literal) cannot steer the gateway into the cluster, the node, or a cloud metadata service.
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped and -compatible, NAT64, 6to4, Teredo) are
//! judged by the IPv4 address they carry, so no blocked address can be reached by spelling it in
//! IPv6. The guard only classifies; the exceptions that policy rules grant are applied by the
//! caller (see `connect::select_addresses`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egress_policy::{canonical_ip, parse_cidr};
use ipnet::IpNet;

/// The special-purpose ranges that `blocked: [default]` stands for.
pub const DEFAULT_BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "168.63.129.16/32",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fec0::/10",
    "fe80::/10",
    "ff00::/8",
];

/// The classification of one address.
#[derive(Clone, Debug)]
pub struct AddressGuard {
    blocked: Vec<IpNet>,
    allowed: Vec<IpNet>,
}

impl AddressGuard {
    pub fn new(blocked: &[String], allowed: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for b in blocked {
            if b == "default" {
                nets.extend(
                    DEFAULT_BLOCKED
                        .iter()
                        .map(|c| c.parse::<IpNet>().expect("constant CIDR is valid")),
                );
            } else {
                nets.push(parse_cidr(b)?);
            }
        }
        let allowed = allowed
            .iter()
            .map(|a| parse_cidr(a))
            .collect::<Result<_, _>>()?;
        Ok(AddressGuard {
            blocked: nets,
            allowed,
        })
    }

    /// Whether `ip` lies in `addressGuard.allowed`.
    pub fn is_excepted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// The blocked range that `ip` (or the IPv4 address it carries) falls in, if any.
    pub fn blocked_range(&self, ip: IpAddr) -> Option<IpNet> {
        let ip = canonical_ip(ip);
        if let Some(net) = self.blocked.iter().find(|n| n.contains(&ip)) {
            return Some(*net);
        }
        if let IpAddr::V6(v6) = ip {
            for v4 in embedded_ipv4(v6) {
                if let Some(net) = self.blocked.iter().find(|n| n.contains(&IpAddr::V4(v4))) {
                    return Some(*net);
                }
            }
        }
        None
    }
}

/// The IPv4 addresses an IPv6 address carries in the transition formats.
fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let b = v6.octets();
    let seg = v6.segments();
    let low = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let mut out = Vec::new();
    // IPv4-compatible ::a.b.c.d (deprecated, but still routed by some stacks).
    if seg[..6] == [0; 6] {
        out.push(low);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push(low);
    }
    // 6to4 2002:AABB:CCDD::/48.
    if seg[0] == 0x2002 {
        out.push(Ipv4Addr::new(b[2], b[3], b[4], b[5]));
    }
    // Teredo 2001:0000:SERVER:..:~CLIENT.
    if seg[0] == 0x2001 && seg[1] == 0 {
        out.push(Ipv4Addr::new(b[4], b[5], b[6], b[7]));
        out.push(Ipv4Addr::new(!b[12], !b[13], !b[14], !b[15]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> AddressGuard {
        AddressGuard::new(&["default".into()], &[]).expect("default guard")
    }

    #[test]
    fn default_ranges_block_special_addresses_in_every_spelling() {
        let g = guard();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "168.63.129.16",
            "100.100.100.200",
            "0.0.0.0",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:a9fe:a9fe",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::",
            "2001::5601:5601",
            // Teredo with a public server field: the bit-inverted client field is 169.254.169.254.
            "2001:0:5db8:d822::5601:5601",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            let addr: IpAddr = ip.parse().expect("test address");
            assert!(g.blocked_range(addr).is_some(), "{ip} must be blocked");
        }
    }

    #[test]
    fn public_addresses_pass_including_transition_forms_of_public_ipv4() {
        let g = guard();
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "::ffff:93.184.216.34",
        ] {
            let addr: IpAddr = ip.parse().expect("test address");
            assert!(g.blocked_range(addr).is_none(), "{ip} must pass");
        }
    }

    #[test]
    fn allowed_ranges_are_exceptions() {
        let g = AddressGuard::new(&["default".into()], &["10.50.0.0/16".into()]).expect("valid");
        assert!(g.is_excepted("10.50.1.1".parse().expect("literal")));
        assert!(g.is_excepted("::ffff:10.50.1.1".parse().expect("literal")));
        assert!(!g.is_excepted("10.51.1.1".parse().expect("literal")));
    }
}
