//! HTTP/1.0 and HTTP/1.1 request heads: the request line and header fields up to the blank line.
//!
//! Only the `Host` header and the request target are interpreted, but the whole head is checked
//! strictly (RFC 9112), because the bytes are replayed to a server that may read a sloppy head
//! differently: lines end in CRLF (a bare LF or CR is rejected), header names are non-empty tokens
//! directly followed by `:`, a line starting with whitespace (obs-fold) is rejected, values hold no
//! control bytes but tab, and there are at most [`MAX_HEADER_FIELDS`] fields. Each line is also
//! checked as it arrives, so a protocol that merely starts with a capital letter is refused without
//! waiting for a line end.
//!
//! `Host` must appear exactly once. An absolute-form target (`http://host[:port]/...`), which a server
//! uses instead of `Host` (RFC 9112 §3.2.2), and a `CONNECT` target must name the same host and port
//! as `Host`, else the host is [`HostHeader::Invalid`].

use crate::name::{parse_host, DnsName, Host};
use crate::Sniff;

/// Most header fields accepted in a request head (HAProxy and Envoy use about the same).
pub const MAX_HEADER_FIELDS: usize = 100;
/// Longest method accepted; the longest registered method names are about 17 bytes.
const MAX_METHOD_LEN: usize = 24;

type Reason = &'static str;

/// What a complete HTTP/1 request head says about its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpInfo {
    /// The `Host` header, checked against the request target.
    pub host: HostHeader,
    /// Length of the request head in bytes, up to and including the blank line's CRLF. Bytes after
    /// it (a body, a pipelined request) were not read.
    pub head_len: usize,
}

/// The `Host` header of a request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHeader {
    /// Exactly one `Host` header, holding a valid DNS name and an optional port in 1..=65535, and
    /// an absolute-form or `CONNECT` target, if any, that names the same host and port.
    Host {
        /// The host name (see [`DnsName`]).
        name: DnsName,
        /// The port the client wrote, if it wrote one.
        port: Option<u16>,
    },
    /// No `Host` header.
    Absent,
    /// `Host` is an IPv4 address (in any spelling) or a bracketed IPv6 address, with an optional
    /// valid port.
    IpLiteral,
    /// `Host` is malformed (bad name, bad port, empty), or the request target names another host or
    /// port.
    Invalid,
    /// More than one `Host` header.
    Multiple,
}

/// The HTTP half of [`crate::sniff`]; `buf` starts with an ASCII upper-case letter.
pub(crate) fn sniff(buf: &[u8]) -> Sniff {
    match parse_head(buf) {
        Ok(Some(info)) => Sniff::Http(info),
        Ok(None) => Sniff::NeedMore,
        Err(reason) => Sniff::Opaque { reason },
    }
}

/// One line of the head: complete (its CRLF has arrived; the line excludes it) or the partial last
/// line (any CR at its end excluded, as its LF may be next).
enum Line<'a> {
    Complete { line: &'a [u8], after: &'a [u8] },
    Partial(&'a [u8]),
}

fn next_line(rest: &[u8]) -> Result<Line<'_>, Reason> {
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        return Ok(Line::Partial(rest.strip_suffix(b"\r").unwrap_or(rest)));
    };
    let (Some(with_cr), Some(after)) = (rest.get(..lf), rest.get(lf..).and_then(|s| s.get(1..)))
    else {
        return Err("line overruns the buffer");
    };
    match with_cr.strip_suffix(b"\r") {
        Some(line) => Ok(Line::Complete { line, after }),
        None => Err("bare LF: a line does not end in CRLF"),
    }
}

fn parse_head(buf: &[u8]) -> Result<Option<HttpInfo>, Reason> {
    let (line, mut rest) = match next_line(buf)? {
        Line::Complete { line, after } => (line, after),
        Line::Partial(prefix) => {
            request_line(prefix, false)?;
            return Ok(None);
        }
    };
    let request = request_line(line, true)?.ok_or("incomplete request line")?;
    let mut fields = 0usize;
    let mut hosts = Vec::new();
    loop {
        match next_line(rest)? {
            Line::Partial(prefix) => {
                header_field(prefix, false)?;
                return Ok(None);
            }
            Line::Complete { line: [], after } => {
                rest = after;
                break;
            }
            Line::Complete { line, after } => {
                rest = after;
                fields = fields.saturating_add(1);
                if fields > MAX_HEADER_FIELDS {
                    return Err("more than 100 header fields");
                }
                if let Some(field) = header_field(line, true)? {
                    if field.name.eq_ignore_ascii_case(b"host") {
                        hosts.push(field.value);
                    }
                }
            }
        }
    }
    let target = target_authority(&request)?;
    let host = match *hosts.as_slice() {
        [] => HostHeader::Absent,
        [value] => {
            let host = parse_authority(value);
            match target {
                Some(target) if !target.same_as(&host) => HostHeader::Invalid,
                _ => host.public(),
            }
        }
        _ => HostHeader::Multiple,
    };
    Ok(Some(HttpInfo {
        host,
        head_len: buf.len().saturating_sub(rest.len()),
    }))
}

struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
}

/// Checks a request line, `METHOD SP target SP HTTP/1.x`, or as much of it as has arrived.
fn request_line(line: &[u8], complete: bool) -> Result<Option<RequestLine<'_>>, Reason> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if method.len() > MAX_METHOD_LEN
        || !method
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err("bad method");
    }
    let Some(target) = parts.next() else {
        return if complete {
            Err("request line has no target")
        } else {
            Ok(None)
        };
    };
    if !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err("bad byte in request target");
    }
    let Some(version) = parts.next() else {
        return if complete {
            Err("request line has no HTTP version")
        } else {
            Ok(None)
        };
    };
    if method.is_empty() || target.is_empty() {
        return Err("empty method or request target");
    }
    let known = [&b"HTTP/1.1"[..], &b"HTTP/1.0"[..]];
    if complete {
        if !known.contains(&version) {
            return Err("not HTTP/1.0 or HTTP/1.1");
        }
        Ok(Some(RequestLine { method, target }))
    } else {
        if !known.iter().any(|v| v.starts_with(version)) {
            return Err("not HTTP/1.0 or HTTP/1.1");
        }
        Ok(None)
    }
}

/// Checks a header field line, `name ":" OWS value OWS`, or as much of it as has arrived.
fn header_field(line: &[u8], complete: bool) -> Result<Option<Field<'_>>, Reason> {
    if let Some(b' ' | b'\t') = line.first() {
        return Err("obs-fold: a header line starts with whitespace");
    }
    let colon = line.iter().position(|&b| b == b':');
    let (name, value) = match colon.and_then(|at| line.split_at_checked(at)) {
        Some((name, colon_value)) => (name, colon_value.get(1..).unwrap_or_default()),
        None => (line, &[][..]),
    };
    if !name.iter().all(|&b| is_token_byte(b)) {
        return Err("bad byte in header name");
    }
    if colon.is_some() && name.is_empty() {
        return Err("empty header name");
    }
    if !value.iter().all(|&b| is_field_value_byte(b)) {
        return Err("bad byte in header value");
    }
    if !complete {
        return Ok(None);
    }
    if colon.is_none() {
        return Err("header line without a colon");
    }
    Ok(Some(Field {
        name,
        value: trim_whitespace(value),
    }))
}

/// A complete header field: its name, and its value without surrounding whitespace.
struct Field<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 `field-vchar`, space and tab; `obs-text` (0x80 and up) is allowed but is never part of a
/// valid `Host`.
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_whitespace(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// A host and port as written in a `Host` header or a request target.
struct Authority {
    host: Host,
    port: Option<u16>,
    /// The port a missing one stands for: the scheme's for an absolute-form target, none otherwise.
    default_port: Option<u16>,
}

impl Authority {
    fn effective_port(&self) -> Option<u16> {
        self.port.or(self.default_port)
    }

    /// Whether the target and the `Host` header name the same host and port.
    fn same_as(&self, host: &Authority) -> bool {
        self.host.same_as(&host.host) && self.effective_port() == host.port.or(self.default_port)
    }

    fn public(self) -> HostHeader {
        match self.host {
            Host::Name(name) => HostHeader::Host {
                name,
                port: self.port,
            },
            Host::Ip(_) => HostHeader::IpLiteral,
            Host::Invalid => HostHeader::Invalid,
        }
    }
}

/// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; anything malformed gives [`Host::Invalid`].
fn parse_authority(raw: &[u8]) -> Authority {
    const INVALID: Authority = Authority {
        host: Host::Invalid,
        port: None,
        default_port: None,
    };
    let (host, port) = match raw.strip_prefix(b"[") {
        Some(bracketed) => {
            let Some(close) = bracketed.iter().position(|&b| b == b']') else {
                return INVALID;
            };
            let Some((inner, close_and_port)) = bracketed.split_at_checked(close) else {
                return INVALID;
            };
            if !inner.contains(&b':') {
                // Only IPv6 belongs in brackets; an IPvFuture literal is refused too.
                return INVALID;
            }
            (
                parse_host(inner),
                close_and_port.get(1..).unwrap_or_default(),
            )
        }
        None => match raw.iter().position(|&b| b == b':') {
            Some(colon) => match raw.split_at_checked(colon) {
                Some((name, port)) => (parse_host(name), port),
                None => return INVALID,
            },
            None => (parse_host(raw), &[][..]),
        },
    };
    let port = match port {
        [] => None,
        [b':', digits @ ..] => match parse_port(digits) {
            Some(port) => Some(port),
            None => return INVALID,
        },
        _ => return INVALID,
    };
    Authority {
        host,
        port,
        default_port: None,
    }
}

/// A port in 1..=65535, in decimal without sign or leading zeros.
fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || digits.first() == Some(&b'0') {
        return None;
    }
    let mut port = 0u32;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        port = port
            .checked_mul(10)?
            .checked_add(u32::from(d.checked_sub(b'0')?))?;
    }
    u16::try_from(port).ok()
}

/// The authority named by the request target, if it names one: absolute-form (with the scheme's
/// default port) or a `CONNECT` request's authority-form (port required). Origin-form (`/path`) and
/// `OPTIONS *` name none.
fn target_authority(request: &RequestLine<'_>) -> Result<Option<Authority>, Reason> {
    let target = request.target;
    if request.method == b"CONNECT" {
        let authority = parse_authority(target);
        if matches!(authority.host, Host::Invalid) || authority.port.is_none() {
            return Err("CONNECT target is not host:port");
        }
        return Ok(Some(authority));
    }
    if target.starts_with(b"/") {
        return Ok(None);
    }
    if target == b"*" {
        return match request.method {
            b"OPTIONS" => Ok(None),
            _ => Err("asterisk-form target outside OPTIONS"),
        };
    }
    let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
        return Err("request target is neither origin-form nor absolute-form");
    };
    let (Some(scheme), Some(after_scheme)) = (
        target.get(..scheme_end),
        target.get(scheme_end..).and_then(|s| s.get(3..)),
    ) else {
        return Err("request target is neither origin-form nor absolute-form");
    };
    let default_port = if scheme.eq_ignore_ascii_case(b"http") {
        80
    } else if scheme.eq_ignore_ascii_case(b"https") {
        443
    } else {
        return Err("absolute-form target with a scheme other than http or https");
    };
    let end = after_scheme
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after_scheme.len());
    let raw = after_scheme.get(..end).unwrap_or_default();
    if raw.contains(&b'@') {
        return Err("userinfo in the request target");
    }
    Ok(Some(Authority {
        default_port: Some(default_port),
        ..parse_authority(raw)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_decimal_between_1_and_65535() {
        assert_eq!(parse_port(b"1"), Some(1));
        assert_eq!(parse_port(b"65535"), Some(65535));
        for bad in [
            &b""[..],
            b"0",
            b"080",
            b"65536",
            b"99999",
            b"123456",
            b"+80",
            b"8a",
            b" 80",
        ] {
            assert_eq!(parse_port(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn whitespace_is_trimmed_from_both_ends_only() {
        assert_eq!(trim_whitespace(b" \t a b \t"), b"a b");
        assert_eq!(trim_whitespace(b" \t "), b"");
    }
}
