//! The HTTP/1.1 request head of the `connect` listener: read under a whole-header deadline and a
//! size cap, parsed with httparse, and turned into a typed [`ProxyRequest`]. Every refusal is a
//! [`Reject`] with a reason code; nothing here resolves or dials.

use std::time::Duration;

use egress_policy::{parse_host, Destination, HostError};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::reason::{Reason, Reject};

/// Most header fields a request may carry (HAProxy's default is 101).
const MAX_HEADERS: usize = 100;

/// What the caller asked for.
#[derive(Debug)]
pub enum ProxyRequest {
    /// `CONNECT host:port`: a raw tunnel.
    Connect { destination: Destination },
    /// An absolute-form plain-HTTP request, rewritten for the origin.
    Forward {
        destination: Destination,
        /// The request head to send upstream (origin-form, `Host` from the URI, `Connection: close`).
        head: Vec<u8>,
        body: Body,
        /// An HTTP/1.1 client with a body asked `Expect: 100-continue`: the gateway answers
        /// `100 Continue` itself once the upstream connection is up (the body is only read from
        /// the client after that). `Expect` is never forwarded: the gateway meets it, or
        /// ignores it (HTTP/1.0, no body); any other expectation is refused.
        continue_first: bool,
    },
}

impl ProxyRequest {
    pub fn destination(&self) -> &Destination {
        match self {
            ProxyRequest::Connect { destination } | ProxyRequest::Forward { destination, .. } => {
                destination
            }
        }
    }
}

/// How a forwarded request's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Length(u64),
    Chunked,
}

/// A request head read off the wire, and the bytes the client sent after it.
pub struct Head {
    pub buf: Vec<u8>,
    pub len: usize,
}

impl Head {
    pub fn leftover(&self) -> &[u8] {
        &self.buf[self.len..]
    }
}

/// Reads one request head. The whole head must arrive before `deadline` (a trickle of bytes does
/// not extend it) and fit in `max_bytes`.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Instant,
    max_bytes: usize,
) -> Result<Head, Reject> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max_bytes + 1));
    loop {
        if buf.len() > max_bytes {
            return Err(Reject::new(
                Reason::HeaderTooLarge,
                format!("request head exceeds {max_bytes} bytes"),
            ));
        }
        if buf.capacity() == buf.len() {
            // Grow geometrically, but never past one byte over the limit: that byte is how we
            // know the head is too large.
            let room = max_bytes + 1 - buf.len();
            // `reserve_exact`: `reserve` may round up to twice the length, past the limit.
            buf.reserve_exact(buf.len().max(1024).min(room));
        }
        let searched = buf.len().saturating_sub(3);
        let n = match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => {
                return Err(Reject::new(
                    Reason::HeaderTimeout,
                    "request head not complete within headerReadTimeout",
                ))
            }
            Ok(Err(e)) => {
                return Err(Reject::new(
                    Reason::BadRequest,
                    format!("reading request: {e}"),
                ))
            }
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(Reject::new(
                Reason::BadRequest,
                if buf.is_empty() {
                    "connection closed before a request"
                } else {
                    "connection closed inside the request head"
                },
            ));
        }
        if let Some(end) = find_head_end(&buf, searched) {
            if end > max_bytes {
                return Err(Reject::new(
                    Reason::HeaderTooLarge,
                    format!("request head exceeds {max_bytes} bytes"),
                ));
            }
            return Ok(Head { buf, len: end });
        }
    }
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

fn bad(details: impl Into<String>) -> Reject {
    Reject::new(Reason::BadRequest, details)
}

/// Parses and validates a request head.
pub fn parse_request(head: &[u8]) -> Result<ProxyRequest, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::new(
                Reason::HeaderTooLarge,
                format!("more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => return Err(bad(format!("malformed request: {e}"))),
    }
    let method = req.method.ok_or_else(|| bad("missing method"))?;
    let target = req.path.ok_or_else(|| bad("missing request target"))?;
    let minor = req.version.ok_or_else(|| bad("missing HTTP version"))?;
    let fields = Fields::collect(req.headers)?;

    if method == "CONNECT" {
        if fields.content_length.is_some_and(|n| n > 0) || fields.chunked {
            return Err(bad("CONNECT must not carry a body"));
        }
        let destination = parse_authority(target, None)?;
        if let Some(host) = fields.host {
            let from_host = parse_authority(host, Some(destination.port))
                .map_err(|_| bad("invalid Host header"))?;
            if from_host != destination {
                return Err(bad("Host header does not match the CONNECT target"));
            }
        }
        return Ok(ProxyRequest::Connect { destination });
    }

    let lower = target
        .get(..8)
        .map(|p| p.to_ascii_lowercase())
        .unwrap_or_default();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        return Err(bad(
            "absolute-form https is not proxied: use CONNECT host:443",
        ));
    } else {
        return Err(bad(
            "not a proxy request: use CONNECT host:port or an absolute http:// URI",
        ));
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = path.split('#').next().unwrap_or_default();
    let destination = parse_authority(authority, Some(80))?;
    let body = if fields.chunked {
        Body::Chunked
    } else {
        Body::Length(fields.content_length.unwrap_or(0))
    };
    // An HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1), and so is one without a body.
    let continue_first = fields.expect_continue && minor == 1 && body != Body::Length(0);
    let mut out = Vec::with_capacity(head.len() + 64);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    if path.is_empty() {
        out.push(b'/');
    } else if path.starts_with('?') {
        out.push(b'/');
        out.extend_from_slice(path.as_bytes());
    } else {
        out.extend_from_slice(path.as_bytes());
    }
    out.extend_from_slice(format!(" HTTP/1.{minor}\r\nHost: {authority}\r\n").as_bytes());
    for h in req.headers.iter() {
        if fields.is_hop_by_hop(h.name) || h.name.eq_ignore_ascii_case("expect") {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(ProxyRequest::Forward {
        destination,
        head: out,
        body,
        continue_first,
    })
}

/// The header fields the proxy itself acts on.
struct Fields<'a> {
    host: Option<&'a str>,
    content_length: Option<u64>,
    chunked: bool,
    /// Header names listed in `Connection`, lower-cased: hop-by-hop too.
    connection_tokens: Vec<String>,
    /// One `Expect` header, and it says `100-continue`: the gateway answers it itself.
    expect_continue: bool,
}

impl<'a> Fields<'a> {
    fn collect(headers: &'a [httparse::Header<'a>]) -> Result<Self, Reject> {
        let mut f = Fields {
            host: None,
            content_length: None,
            chunked: false,
            connection_tokens: Vec::new(),
            expect_continue: false,
        };
        let mut saw_te = false;
        for h in headers {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| bad(format!("non-UTF-8 value in {}", h.name)))?;
            if h.name.eq_ignore_ascii_case("host") {
                if f.host.is_some() {
                    return Err(bad("duplicate Host header"));
                }
                f.host = Some(value.trim());
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let v = value.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 18 {
                    return Err(bad("invalid Content-Length"));
                }
                let n: u64 = v.parse().map_err(|_| bad("invalid Content-Length"))?;
                if f.content_length.is_some() {
                    return Err(bad("duplicate Content-Length"));
                }
                f.content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                if saw_te || !value.trim().eq_ignore_ascii_case("chunked") {
                    return Err(bad(
                        "unsupported Transfer-Encoding: only a single 'chunked' is accepted",
                    ));
                }
                saw_te = true;
                f.chunked = true;
            } else if h.name.eq_ignore_ascii_case("expect") {
                // The gateway meets `100-continue` itself; it cannot vouch for any other
                // expectation, and an upstream's interim answer to one would be taken for its
                // answer to the request.
                if f.expect_continue || !value.trim().eq_ignore_ascii_case("100-continue") {
                    return Err(bad(
                        "unsupported Expect: only a single '100-continue' is accepted",
                    ));
                }
                f.expect_continue = true;
            } else if h.name.eq_ignore_ascii_case("connection") {
                f.connection_tokens.extend(
                    value
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty()),
                );
            }
        }
        if f.chunked && f.content_length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        Ok(f)
    }

    fn is_hop_by_hop(&self, name: &str) -> bool {
        const HOP: [&str; 9] = [
            "host",
            "connection",
            "proxy-connection",
            "keep-alive",
            "proxy-authorization",
            "proxy-authenticate",
            "te",
            "trailer",
            "upgrade",
        ];
        // A `Connection` header may name the body's framing headers, but they are never dropped:
        // the body is forwarded as they frame it, and without them the upstream would read that
        // body as a request of its own.
        HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || self.connection_tokens.iter().any(|t| {
                t.eq_ignore_ascii_case(name)
                    && !t.eq_ignore_ascii_case("transfer-encoding")
                    && !t.eq_ignore_ascii_case("content-length")
            })
    }
}

/// Parses `host:port` (authority-form). With `default_port`, the port may be left out. No
/// userinfo, no zone IDs, no numeric IP spellings other than the canonical ones.
pub fn parse_authority(s: &str, default_port: Option<u16>) -> Result<Destination, Reject> {
    if s.is_empty() {
        return Err(bad("empty authority"));
    }
    if s.contains('@') {
        return Err(bad("userinfo is not allowed in the request target"));
    }
    if s.contains('/') || s.contains('?') || s.contains('#') {
        return Err(bad("the request target must be host:port"));
    }
    let (host, port) = if s.starts_with('[') {
        let close = s
            .find(']')
            .ok_or_else(|| bad("unterminated IPv6 literal"))?;
        let (h, rest) = s.split_at(close + 1);
        match rest.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if rest.is_empty() => (h, None),
            None => return Err(bad("garbage after IPv6 literal")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => {
                if h.contains(':') {
                    return Err(bad("IPv6 literals must be bracketed"));
                }
                (h, Some(p))
            }
            None => (s, None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad("the request target needs a port: host:port")),
    };
    let host = parse_host(host).map_err(|e| match e {
        HostError::NonCanonicalNumeric(_) => bad(format!("{e}; refused before any DNS lookup")),
        other => bad(other.to_string()),
    })?;
    Ok(Destination { host, port })
}

fn parse_port(p: &str) -> Result<u16, Reject> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("invalid port {p:?}")));
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad(format!("invalid port {p:?}"))),
    }
}

/// Tracks the framing of a chunked body as it streams through, to find where it ends. Chunk-size
/// lines and trailers are bounded so a hostile client cannot make the scanner buffer anything.
#[derive(Debug)]
pub struct ChunkedScanner {
    state: ChunkState,
    line_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size {
        value: u64,
        digits: u32,
        ext: bool,
    },
    /// Whitespace after the size: only more of it, a `;` (an extension) or the line end may
    /// follow. `5 5` would be 5 here and 0x55 to a parser that skips the space.
    SizeWs {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    Trailer {
        empty_line: bool,
    },
    TrailerLf {
        empty_line: bool,
    },
    Done,
}

const MAX_CHUNK_LINE: usize = 4096;

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
            line_len: 0,
        }
    }
}

/// A control byte other than HTAB (CR is handled by the scanner's states): never part of a chunk
/// extension or a trailer field, and a bare LF among them is a line end to lenient parsers.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

impl ChunkedScanner {
    /// Feeds bytes; returns how many belong to the body (`Some(n)` with the body complete after
    /// `n` bytes) or `None` when all of `data` belongs to it and more is to come.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                ChunkState::Size { value, digits, ext } => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err("chunk-size line too long");
                    }
                    match b {
                        b'\r' if digits > 0 => ChunkState::SizeLf { value },
                        // A bare LF, NUL or other control byte in an extension: an upstream that
                        // ends lines at LF would see a different body end than ours.
                        _ if ext && is_control(b) => {
                            return Err("control byte in a chunk extension")
                        }
                        _ if ext => ChunkState::Size { value, digits, ext },
                        b';' if digits > 0 => ChunkState::Size {
                            value,
                            digits,
                            ext: true,
                        },
                        b' ' | b'\t' if digits > 0 => ChunkState::SizeWs { value },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or("invalid chunk size")?;
                            if digits >= 15 {
                                return Err("chunk size too large");
                            }
                            ChunkState::Size {
                                value: value * 16 + u64::from(d),
                                digits: digits + 1,
                                ext,
                            }
                        }
                    }
                }
                ChunkState::SizeWs { value } => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err("chunk-size line too long");
                    }
                    match b {
                        b' ' | b'\t' => ChunkState::SizeWs { value },
                        b';' => ChunkState::Size {
                            value,
                            digits: 1,
                            ext: true,
                        },
                        b'\r' => ChunkState::SizeLf { value },
                        _ => {
                            return Err(
                                "chunk size followed by whitespace and more than an extension",
                            )
                        }
                    }
                }
                ChunkState::SizeLf { value } => {
                    if b != b'\n' {
                        return Err("expected LF after chunk size");
                    }
                    self.line_len = 0;
                    if value == 0 {
                        ChunkState::Trailer { empty_line: true }
                    } else {
                        ChunkState::Data { left: value }
                    }
                }
                ChunkState::Data { left } => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { left }
                    };
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err("expected CRLF after chunk data");
                    }
                    ChunkState::DataLf
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("expected CRLF after chunk data");
                    }
                    ChunkState::Size {
                        value: 0,
                        digits: 0,
                        ext: false,
                    }
                }
                ChunkState::Trailer { empty_line } => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err("trailer line too long");
                    }
                    if b == b'\r' {
                        ChunkState::TrailerLf { empty_line }
                    } else if is_control(b) {
                        return Err("control byte in a trailer field");
                    } else {
                        ChunkState::Trailer { empty_line: false }
                    }
                }
                ChunkState::TrailerLf { empty_line } => {
                    if b != b'\n' {
                        return Err("expected LF in trailer");
                    }
                    self.line_len = 0;
                    if empty_line {
                        self.state = ChunkState::Done;
                        return Ok(Some(i + 1));
                    }
                    ChunkState::Trailer { empty_line: true }
                }
                ChunkState::Done => return Ok(Some(i)),
            };
            i += 1;
        }
        Ok(if self.state == ChunkState::Done {
            Some(0)
        } else {
            None
        })
    }
}

/// How long a rejected client gets to read its response while we discard what it still sends.
pub const LINGER: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_of(req: &str) -> Reason {
        match parse_request(req.as_bytes()) {
            Ok(r) => panic!("{req:?} must be refused, got {r:?}"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn connect_needs_an_authority_with_a_port() {
        for t in [
            "example.com",
            "/",
            "http://example.com:80",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+80",
            "user@example.com:443",
            "[fe80::1%25eth0]:443",
            "[example.com]:443",
            "::1:443",
            "2130706433:443",
            "0x7f.1:443",
            "127.1:443",
        ] {
            assert_eq!(
                reason_of(&format!("CONNECT {t} HTTP/1.1\r\n\r\n")),
                Reason::BadRequest,
                "{t}"
            );
        }
        let ok =
            parse_request(b"CONNECT Example.COM.:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
                .expect("valid");
        assert_eq!(ok.destination().to_string(), "example.com:443");
        let v6 = parse_request(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").expect("valid");
        assert_eq!(v6.destination().to_string(), "[::1]:8443");
    }

    #[test]
    fn host_header_must_agree_and_appear_once() {
        assert_eq!(
            reason_of("CONNECT a.com:443 HTTP/1.1\r\nHost: b.com:443\r\n\r\n"),
            Reason::BadRequest
        );
        assert_eq!(
            reason_of("CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\nHost: a.com:443\r\n\r\n"),
            Reason::BadRequest
        );
        assert_eq!(
            reason_of("CONNECT a.com:443 HTTP/1.1\r\n: empty\r\n\r\n"),
            Reason::BadRequest
        );
    }

    #[test]
    fn absolute_form_is_rewritten_to_origin_form_with_uri_host() {
        let r = parse_request(
            b"POST http://Example.com:8080/a?b HTTP/1.1\r\nHost: evil.com\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: x\r\nConnection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 3\r\n\r\n",
        )
        .expect("valid");
        let ProxyRequest::Forward {
            destination,
            head,
            body,
            ..
        } = r
        else {
            panic!("expected a forward");
        };
        assert_eq!(destination.to_string(), "example.com:8080");
        assert_eq!(body, Body::Length(3));
        let head = String::from_utf8(head).expect("ascii");
        assert_eq!(
            head,
            "POST /a?b HTTP/1.1\r\nHost: Example.com:8080\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert_eq!(reason_of("POST http://a.com/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), Reason::BadRequest);
        assert_eq!(
            reason_of(
                "POST http://a.com/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            ),
            Reason::BadRequest
        );
        assert_eq!(
            reason_of("POST http://a.com/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Reason::BadRequest
        );
        assert_eq!(
            reason_of("GET / HTTP/1.1\r\nHost: a.com\r\n\r\n"),
            Reason::BadRequest
        );
        assert_eq!(
            reason_of("GET https://a.com/ HTTP/1.1\r\n\r\n"),
            Reason::BadRequest
        );
        assert_eq!(
            reason_of("CONNECT a.com:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Reason::BadRequest
        );
    }

    #[test]
    fn too_many_headers_is_header_too_large() {
        let mut req = String::from("CONNECT a.com:443 HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            req.push_str(&format!("X-{i}: v\r\n"));
        }
        req.push_str("\r\n");
        assert_eq!(reason_of(&req), Reason::HeaderTooLarge);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_heads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn near_miss_heads_never_panic(
            method in "(CONNECT|GET|POST|connect)",
            target in "[a-zA-Z0-9:/\\[\\]@%.?#*-]{0,40}",
            headers in proptest::collection::vec("[A-Za-z-]{1,12}: [ -~]{0,20}", 0..6),
        ) {
            let head = format!("{method} {target} HTTP/1.1\r\n{}\r\n", headers.iter().map(|h| format!("{h}\r\n")).collect::<String>());
            let _ = parse_request(head.as_bytes());
        }

        #[test]
        fn chunked_scanner_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), split in 0usize..512) {
            let mut s = ChunkedScanner::default();
            let split = split.min(bytes.len());
            if let Ok(None) = s.feed(&bytes[..split]) {
                let _ = s.feed(&bytes[split..]);
            }
        }
    }

    #[test]
    fn chunked_scanner_finds_the_end_across_splits() {
        let body = b"4;ext=1\r\nWiki\r\n5 \t;a=1\r\npedia\r\n3 \r\nabc\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut s = ChunkedScanner::default();
            let first = s.feed(&body[..split]).expect("valid");
            let end = match first {
                Some(n) => n,
                None => split + s.feed(&body[split..]).expect("valid").expect("complete"),
            };
            assert_eq!(&body[end..], b"NEXT", "split at {split}");
        }
        assert!(ChunkedScanner::default().feed(b"zz\r\n").is_err());
        assert!(ChunkedScanner::default().feed(b"4\r\nWikiXX").is_err());
    }

    /// A bare LF (or another control byte) where our scanner would read on, but a lenient
    /// upstream would end a line, is refused: otherwise the two would disagree on where the body
    /// ends, and what follows would reach the upstream as a request of its own.
    #[test]
    fn chunked_scanner_refuses_control_bytes_in_extensions_and_trailers() {
        for body in [
            &b"0\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"5;a\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX-T: 1\nGET / HTTP/1.1\r\n\r\n",
            b"0\r\nX-T: a\x7fb\r\n\r\n",
        ] {
            assert!(
                ChunkedScanner::default().feed(body).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(body)
            );
        }
        // A tab, and obs-text (bytes 0x80 to 0xff), in an extension or a trailer are allowed.
        let ok = b"5;a=\t\"\xe9\"\r\nhello\r\n0\r\nX-T:\t1 \xe9\r\n\r\n";
        assert_eq!(ChunkedScanner::default().feed(ok), Ok(Some(ok.len())));
    }

    /// After the size, whitespace may only lead to an extension or the line end: `5 5` is 5 to
    /// a scanner that stops at the space and 0x55 to one that skips it.
    #[test]
    fn chunked_scanner_refuses_whitespace_before_anything_but_an_extension() {
        for body in [&b"5 5\r\n"[..], b"5\tx\r\n", b"5 =1\r\n", b" 5\r\n"] {
            assert_eq!(
                ChunkedScanner::default().feed(body),
                Err(if body[0] == b' ' {
                    "invalid chunk size"
                } else {
                    "chunk size followed by whitespace and more than an extension"
                }),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let spaced = b"5 \t;a=1\r\nhello\r\n3 \r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            ChunkedScanner::default().feed(spaced),
            Ok(Some(spaced.len()))
        );
    }

    /// `Expect: 100-continue` with a body, from an HTTP/1.1 client, is the gateway's to answer;
    /// without a body or from HTTP/1.0 it is ignored. It is never forwarded, and any other
    /// expectation is refused.
    #[test]
    fn expect_100_continue_is_answered_by_the_gateway_only_where_it_applies() {
        let forward = |head: &str| match parse_request(head.as_bytes()).expect("valid") {
            ProxyRequest::Forward {
                head,
                continue_first,
                ..
            } => (String::from_utf8(head).expect("ascii"), continue_first),
            ProxyRequest::Connect { .. } => panic!("expected a forward"),
        };
        let (head, first) = forward(
            "POST http://a.com/ HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n",
        );
        assert!(first);
        assert!(!head.to_ascii_lowercase().contains("expect"), "{head}");
        let (_, first) = forward(
            "POST http://a.com/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        );
        assert!(first);
        for (request, why) in [
            (
                "GET http://a.com/ HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
                "no body",
            ),
            (
                "POST http://a.com/ HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
                "HTTP/1.0",
            ),
        ] {
            let (head, first) = forward(request);
            assert!(!first, "{why}");
            assert!(
                !head.to_ascii_lowercase().contains("expect"),
                "{why}: {head}"
            );
        }
        for request in [
            "POST http://a.com/ HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
            "POST http://a.com/ HTTP/1.1\r\nContent-Length: 5\r\nExpect: something\r\n\r\n",
            "CONNECT a.com:443 HTTP/1.1\r\nExpect: 100-continue, x\r\n\r\n",
        ] {
            let reject = parse_request(request.as_bytes()).expect_err(request);
            assert_eq!(reject.reason, Reason::BadRequest, "{request}");
            assert!(reject.details.contains("Expect"), "{}", reject.details);
        }
    }

    /// `Connection: content-length` must not strip the body's length: the upstream would read
    /// the body as a request of its own.
    #[test]
    fn framing_headers_named_in_connection_are_kept() {
        let r = parse_request(
            b"POST http://a.com/ HTTP/1.1\r\nContent-Length: 40\r\nConnection: Content-Length, x-drop\r\nX-Drop: 1\r\n\r\n",
        )
        .expect("valid");
        let ProxyRequest::Forward { head, body, .. } = r else {
            panic!("expected a forward");
        };
        assert_eq!(body, Body::Length(40));
        assert_eq!(
            String::from_utf8(head).expect("ascii"),
            "POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 40\r\nConnection: close\r\n\r\n"
        );
        let r = parse_request(
            b"POST http://a.com/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n",
        )
        .expect("valid");
        let ProxyRequest::Forward { head, .. } = r else {
            panic!("expected a forward");
        };
        assert!(String::from_utf8(head)
            .expect("ascii")
            .contains("\r\nTransfer-Encoding: chunked\r\n"));
    }
}
