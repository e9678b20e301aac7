//! Learns where a connection is going from the first bytes its client sends.
//!
//! The `transparent` and `sni` listeners peek at a new connection before they decide anything.
//! [`sniff`] reads those peeked bytes and recognises one of two openings:
//!
//! - a TLS ClientHello (`tls` module): the `server_name` (SNI), whether an
//!   `encrypted_client_hello` extension is present, and the ALPN list. The hello may be split
//!   across several TLS records and across TCP segments.
//! - an HTTP/1.0 or HTTP/1.1 request head (`http` module): the `Host` header, cross-checked against
//!   an absolute-form or authority-form request target.
//!
//! The first byte decides which parser runs: `0x16` (a TLS handshake record) or an ASCII upper-case
//! letter (an HTTP method). Anything else, and anything malformed, is [`Sniff::Opaque`]: the caller
//! then knows only the connection's original destination address. Names come back checked and in
//! canonical form ([`DnsName`], the `name` module); IP literals, missing names and ambiguous names
//! are outcomes of their own, so a caller can never mistake one of them for a host name.
//!
//! The crate keeps no state and does no I/O. The caller owns the buffer, its size cap and the read
//! deadline: after every read it calls [`sniff`] again with the whole, grown buffer, until the answer
//! is something other than [`Sniff::NeedMore`]. Every length read from the input is bounds-checked;
//! no input makes it panic, index out of range or recurse.
//!
//! What it cannot see: only the first request head (or the ClientHello) is read, and nothing inside
//! TLS. Later requests on a kept-alive connection may carry other `Host` values, and an ECH client's
//! real name is encrypted, so a caller must send the connection only to what the sniffed name
//! resolves to: a different name can then reach only that same server (domain fronting there stays
//! a residual risk).

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::panic,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]

mod http;
mod name;
mod reader;
mod tls;

pub use http::{HostHeader, HttpInfo, MAX_HEADER_FIELDS};
pub use name::DnsName;
pub use tls::{ClientHelloInfo, SniName, MAX_CLIENT_HELLO_LEN};

/// What the first bytes of a connection say about its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniff {
    /// The bytes so far are a valid beginning but not yet complete. The caller reads more (up to its
    /// own size and time limits) and calls [`sniff`] again with the whole buffer.
    NeedMore,
    /// A complete TLS ClientHello was parsed.
    Tls(ClientHelloInfo),
    /// A complete HTTP/1.0 or HTTP/1.1 request head was parsed.
    Http(HttpInfo),
    /// The bytes are neither a TLS ClientHello nor an HTTP/1 request head, or are malformed.
    /// Waiting for more bytes would not change this answer.
    Opaque {
        /// A short fixed text saying why, for logs. It never contains input bytes.
        reason: &'static str,
    },
}

/// Sniffs the first bytes a client sent on a connection.
///
/// `buf` is everything peeked so far, from the first byte of the connection. The answer depends only
/// on `buf`, so calling again with a longer buffer is how a caller waits for more.
///
/// Each call reads the whole buffer again, so a client that trickles its bytes one per segment makes
/// the total work grow with the square of the buffer size. Besides a size cap and a deadline, a
/// caller should cap the number of calls per connection: real clients need one to three reads.
///
/// ```
/// use egress_sniff::{sniff, HostHeader, Sniff};
///
/// let head = b"GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n";
/// assert_eq!(sniff(&head[..20]), Sniff::NeedMore);
/// let Sniff::Http(info) = sniff(head) else { panic!("a complete request head") };
/// let HostHeader::Host { name, port } = info.host else { panic!("a valid Host") };
/// assert_eq!((name.as_str(), port), ("example.com", Some(8080)));
/// assert_eq!(info.head_len, head.len());
///
/// assert!(matches!(sniff(b"SSH-2.0-OpenSSH_9.6\r\n"), Sniff::Opaque { .. }));
/// ```
#[must_use]
pub fn sniff(buf: &[u8]) -> Sniff {
    match buf.first() {
        None => Sniff::NeedMore,
        Some(&tls::HANDSHAKE_RECORD) => tls::sniff(buf),
        Some(byte) if byte.is_ascii_uppercase() => http::sniff(buf),
        Some(_) => Sniff::Opaque {
            reason: "first byte starts neither a TLS handshake record nor an HTTP/1 method",
        },
    }
}
