//! Host names and IP literals as the policy and the listeners see them.
//!
//! Every name that reaches a decision goes through [`parse_host`] once: it is lower-cased, loses one
//! trailing dot, is converted to its ASCII (punycode) form, and is checked label by label. Numeric
//! spellings such as `2130706433`, `0x7f.1` or `127.1` are refused here, so they can never reach a
//! resolver (which would turn them into addresses) nor match a `host` entry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest name DNS can carry, without the trailing dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A destination host: a normalised DNS name or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Name(HostName),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n.as_str()),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A DNS name in canonical form: ASCII, lower case, no trailing dot, labels of `[a-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The proper dot-suffixes of this name, longest first: `a.b.c` gives `b.c`, then `c`.
    pub fn parent_suffixes(&self) -> impl Iterator<Item = &str> {
        self.0
            .char_indices()
            .filter(|&(_, c)| c == '.')
            .map(move |(i, _)| &self.0[i + 1..])
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not an acceptable host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("{0:?} is a numeric IP spelling that is not a canonical dotted quad")]
    NonCanonicalNumeric(String),
    #[error("IPv6 zone identifiers are not allowed: {0:?}")]
    ZoneId(String),
    #[error("invalid IPv6 literal {0:?}")]
    BadIpv6(String),
    #[error("invalid internationalised name {0:?}")]
    Idna(String),
    #[error("name longer than 253 characters")]
    TooLong,
    #[error("invalid label {label:?} in {name:?}")]
    BadLabel { name: String, label: String },
}

/// Parses a host as it appears in a request target, an SNI or a policy: a bracketed IPv6 literal,
/// a canonical dotted-quad IPv4 literal, or a DNS name.
pub fn parse_host(input: &str) -> Result<Host, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if let Some(inner) = input.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| HostError::BadIpv6(input.to_owned()))?;
        return parse_ipv6(inner).map(|ip| Host::Ip(canonical_ip(IpAddr::V6(ip))));
    }
    if input.contains(':') {
        // An unbracketed IPv6 literal: accepted where no port can follow (policy check, SNI).
        return parse_ipv6(input).map(|ip| Host::Ip(canonical_ip(IpAddr::V6(ip))));
    }
    if let Ok(ip) = input.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    parse_name(input).map(Host::Name)
}

fn parse_ipv6(s: &str) -> Result<Ipv6Addr, HostError> {
    if s.contains('%') {
        return Err(HostError::ZoneId(s.to_owned()));
    }
    s.parse::<Ipv6Addr>()
        .map_err(|_| HostError::BadIpv6(s.to_owned()))
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address it carries: it is checked
/// and dialed as such, so no rule or guard can be dodged by spelling an address in IPv6.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// [`canonical_ip`] for a socket address: an IPv4 caller of a dual-stack `[::]` socket is IPv4.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// Parses a DNS name (never an IP literal) into canonical form.
pub fn parse_name(input: &str) -> Result<HostName, HostError> {
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(HostError::Empty);
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed).map_err(|_| HostError::Idna(input.to_owned()))?
    };
    if ascii.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    let bad_label = |label: &str| HostError::BadLabel {
        name: input.to_owned(),
        label: label.to_owned(),
    };
    for label in ascii.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad_label(label));
        }
    }
    // The WHATWG URL rule: a name whose last label is a number is an IPv4 address in some
    // spelling. Only the canonical dotted quad (handled by the caller) is an address we accept.
    let last = ascii.rsplit('.').next().unwrap_or_default();
    if is_numeric_label(last) {
        return Err(HostError::NonCanonicalNumeric(input.to_owned()));
    }
    Ok(HostName(ascii))
}

fn is_numeric_label(label: &str) -> bool {
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit())
}

/// A `host` entry of a policy: an exact name, or `*.suffix` matching one or more labels before
/// `.suffix` (never `suffix` itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(HostName),
    Subdomains(HostName),
}

impl HostPattern {
    pub fn parse(input: &str) -> Result<Self, String> {
        let (wild, rest) = match input.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        if rest.contains('*') {
            return Err(format!(
                "misplaced wildcard in {input:?}: only a leading '*.' label is allowed, as in '*.example.com'"
            ));
        }
        match parse_host(rest) {
            Ok(Host::Name(name)) if wild => Ok(HostPattern::Subdomains(name)),
            Ok(Host::Name(name)) => Ok(HostPattern::Exact(name)),
            Ok(Host::Ip(_)) => Err(format!(
                "{input:?} is an IP address: a host entry never matches IP literals, use a cidr entry"
            )),
            Err(HostError::NonCanonicalNumeric(_)) => Err(format!(
                "{input:?} is a numeric IP spelling: a host entry never matches IP literals, use a cidr entry"
            )),
            Err(e) => Err(format!("invalid host {input:?}: {e}")),
        }
    }

    pub fn matches(&self, name: &HostName) -> bool {
        match self {
            HostPattern::Exact(n) => n == name,
            HostPattern::Subdomains(suffix) => {
                let (n, s) = (name.as_str(), suffix.as_str());
                n.len() > s.len() + 1
                    && n.ends_with(s)
                    && n.as_bytes()[n.len() - s.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => write!(f, "{n}"),
            HostPattern::Subdomains(n) => write!(f, "*.{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> HostName {
        parse_name(s).expect("test name is valid")
    }

    #[test]
    fn names_compare_case_insensitively_without_trailing_dot() {
        assert_eq!(name("API.Stripe.COM."), name("api.stripe.com"));
    }

    #[test]
    fn internationalised_names_become_punycode() {
        assert_eq!(name("bücher.example").as_str(), "xn--bcher-kva.example");
        assert_eq!(name("BÜCHER.example"), name("xn--bcher-kva.example"));
        // A Cyrillic 'а' is not a Latin 'a'.
        assert_ne!(name("\u{430}pi.stripe.com"), name("api.stripe.com"));
    }

    #[test]
    fn numeric_spellings_are_never_names() {
        for s in [
            "2130706433",
            "0x7f.1",
            "127.1",
            "0177.0.0.1",
            "0x7f000001",
            "1.2.3.04",
            "127.0.0.1.",
            "10.1",
        ] {
            assert!(
                matches!(parse_host(s), Err(HostError::NonCanonicalNumeric(_))),
                "{s} must be refused as a numeric spelling, got {:?}",
                parse_host(s)
            );
        }
        assert_eq!(
            parse_host("127.0.0.1"),
            Ok(Host::Ip("127.0.0.1".parse().expect("literal")))
        );
        assert!(matches!(parse_host("123.example.com"), Ok(Host::Name(_))));
    }

    #[test]
    fn ipv6_literals_are_bracketed_canonical_and_zone_free() {
        assert_eq!(
            parse_host("[::1]"),
            Ok(Host::Ip("::1".parse().expect("literal")))
        );
        assert_eq!(
            parse_host("[::ffff:127.0.0.1]"),
            Ok(Host::Ip("127.0.0.1".parse().expect("literal")))
        );
        assert!(matches!(
            parse_host("[fe80::1%25eth0]"),
            Err(HostError::ZoneId(_))
        ));
        assert!(matches!(
            parse_host("[fe80::1%eth0]"),
            Err(HostError::ZoneId(_))
        ));
        assert!(parse_host("[::1").is_err());
    }

    #[test]
    fn bad_characters_are_refused() {
        for s in [
            "a b.com",
            "a\0.com",
            "a\r\n.com",
            "a..com",
            ".com",
            "-a.com",
            "a/b.com",
            "a%2e.com",
            "a@b.com",
        ] {
            assert!(parse_host(s).is_err(), "{s:?} must be refused");
        }
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_never_apex_or_lookalikes() {
        let p = HostPattern::parse("*.example.com").expect("valid pattern");
        assert!(p.matches(&name("a.example.com")));
        assert!(p.matches(&name("a.b.example.com")));
        assert!(!p.matches(&name("example.com")));
        assert!(!p.matches(&name("badexample.com")));
        assert!(!p.matches(&name("example.com.evil.net")));
    }

    #[test]
    fn misplaced_wildcards_and_ip_hosts_are_refused() {
        for s in [
            "*",
            "*foo.com",
            "foo.*.com",
            "*.*.com",
            "foo.com*",
            "127.0.0.1",
            "2130706433",
            "[::1]",
        ] {
            assert!(HostPattern::parse(s).is_err(), "{s:?} must be refused");
        }
    }

    #[test]
    fn parent_suffixes_walk_towards_the_root() {
        let n = name("a.b.example.com");
        let v: Vec<_> = n.parent_suffixes().collect();
        assert_eq!(v, ["b.example.com", "example.com", "com"]);
    }
}
