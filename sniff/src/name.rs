//! Host names as a client wrote them in an SNI or a `Host` header, checked once.
//!
//! [`parse_host`] sorts raw bytes into a DNS name in canonical form, an IP literal, or nothing
//! usable. The rules are those the policy applies to host entries (lower case, one trailing dot
//! removed, labels of `[a-z0-9_-]` not starting or ending with `-`), so a name this module accepts is
//! one a policy can match. Numeric spellings such as `127.1`, `0x7f.1` or `2130706433` are IP
//! literals, never names: a resolver would turn them into addresses. Nothing here decodes
//! internationalised names: on the wire both SNI and `Host` carry the ASCII (punycode) form, so any
//! other byte makes the name invalid.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest name DNS can carry, without the trailing dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A host name in canonical form: ASCII, lower case, no trailing dot, at most 253 bytes, labels of
/// 1 to 63 bytes of `[a-z0-9_-]` that neither start nor end with `-`, the last label not numeric.
///
/// Only this crate creates values of this type, so holding one proves the checks were made.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(String);

impl DnsName {
    /// The name, e.g. `api.example.com`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host part of an SNI or an authority, sorted.
#[derive(Clone, Debug)]
pub(crate) enum Host {
    Name(DnsName),
    /// An IP address in some spelling. The text is a normalised form kept only to compare two
    /// literals with each other: the canonical address where it parses as one, else the lower-cased
    /// spelling.
    Ip(String),
    Invalid,
}

impl Host {
    /// Whether two hosts certainly name the same thing. Nothing matches [`Host::Invalid`].
    pub(crate) fn same_as(&self, other: &Host) -> bool {
        match (self, other) {
            (Host::Name(a), Host::Name(b)) => a == b,
            (Host::Ip(a), Host::Ip(b)) => a == b,
            _ => false,
        }
    }
}

/// Sorts the bytes of a host: an unbracketed IPv6 literal (anything with a `:`), a dotted-quad or
/// other numeric IPv4 spelling, or a DNS name.
pub(crate) fn parse_host(raw: &[u8]) -> Host {
    if raw.contains(&b':') {
        return match std::str::from_utf8(raw).map(str::parse::<Ipv6Addr>) {
            // An IPv4-mapped address is the IPv4 address it carries.
            Ok(Ok(ip)) => Host::Ip(IpAddr::V6(ip).to_canonical().to_string()),
            _ => Host::Invalid,
        };
    }
    let trimmed = raw.strip_suffix(b".").unwrap_or(raw);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME_LEN {
        return Host::Invalid;
    }
    let mut last_label: &[u8] = &[];
    for label in trimmed.split(|&b| b == b'.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-');
        if !ok {
            return Host::Invalid;
        }
        last_label = label;
    }
    // Every byte is ASCII now, so this conversion cannot fail; failing closed costs nothing.
    let Ok(lower) = String::from_utf8(trimmed.to_ascii_lowercase()) else {
        return Host::Invalid;
    };
    // The WHATWG URL rule: a name whose last label is a number is an IPv4 address in some spelling.
    if is_numeric_label(last_label) {
        return match lower.parse::<Ipv4Addr>() {
            Ok(ip) => Host::Ip(ip.to_string()),
            Err(_) => Host::Ip(lower),
        };
    }
    Host::Name(DnsName(lower))
}

fn is_numeric_label(label: &[u8]) -> bool {
    match label
        .strip_prefix(b"0x")
        .or_else(|| label.strip_prefix(b"0X"))
    {
        Some(hex) => hex.iter().all(u8::is_ascii_hexdigit),
        None => !label.is_empty() && label.iter().all(u8::is_ascii_digit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> Option<String> {
        match parse_host(raw.as_bytes()) {
            Host::Name(n) => Some(n.as_str().to_owned()),
            _ => None,
        }
    }

    fn ip(raw: &str) -> Option<String> {
        match parse_host(raw.as_bytes()) {
            Host::Ip(text) => Some(text),
            _ => None,
        }
    }

    #[test]
    fn names_are_lower_cased_and_lose_one_trailing_dot() {
        assert_eq!(name("API.Example.COM."), Some("api.example.com".into()));
        assert_eq!(
            name("_dmarc.example.com"),
            Some("_dmarc.example.com".into())
        );
        assert_eq!(
            name("xn--bcher-kva.example"),
            Some("xn--bcher-kva.example".into())
        );
        assert_eq!(name("localhost"), Some("localhost".into()));
        assert_eq!(name("example.com.."), None);
    }

    #[test]
    fn malformed_names_are_invalid() {
        let long_label = "a".repeat(64);
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(long_name.len(), 254);
        for raw in [
            "",
            ".",
            "a..b",
            ".example.com",
            "-a.example.com",
            "a-.example.com",
            "exa mple.com",
            "exa\0mple.com",
            "example.com\r\n",
            "b\u{fc}cher.example",
            "%65xample.com",
            "[::1]",
            "fe80::1%eth0",
            "1.2.3.4:443",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(
                matches!(parse_host(raw.as_bytes()), Host::Invalid),
                "{raw:?} should be invalid"
            );
        }
        let longest = &long_name[1..];
        assert_eq!(name(longest).map(|n| n.len()), Some(253));
        assert_eq!(name(&format!("{longest}.")).map(|n| n.len()), Some(253));
    }

    #[test]
    fn numeric_spellings_are_ip_literals_not_names() {
        assert_eq!(ip("192.0.2.7"), Some("192.0.2.7".into()));
        assert_eq!(ip("192.0.2.7."), Some("192.0.2.7".into()));
        assert_eq!(ip("127.1"), Some("127.1".into()));
        assert_eq!(ip("0x7F.1"), Some("0x7f.1".into()));
        assert_eq!(ip("2130706433"), Some("2130706433".into()));
        assert_eq!(ip("example.0x"), Some("example.0x".into()));
        assert_eq!(ip("2001:DB8::1"), Some("2001:db8::1".into()));
        assert_eq!(ip("::ffff:169.254.169.254"), Some("169.254.169.254".into()));
        assert_eq!(name("1.example.com"), Some("1.example.com".into()));
        assert_eq!(name("example.0xg"), Some("example.0xg".into()));
    }

    #[test]
    fn nothing_is_the_same_as_an_invalid_host() {
        assert!(!Host::Invalid.same_as(&Host::Invalid));
        assert!(parse_host(b"A.example").same_as(&parse_host(b"a.example.")));
        assert!(parse_host(b"::ffff:192.0.2.1").same_as(&parse_host(b"192.0.2.1")));
        assert!(!parse_host(b"192.0.2.1").same_as(&parse_host(b"192.0.2.2")));
    }
}
