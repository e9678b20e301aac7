//! TLS ClientHello: reassembly from handshake records, then the few fields the gateway needs.
//!
//! A ClientHello may be split across several records (each with its own 5-byte header) and a record
//! across TCP segments; a post-quantum key share alone makes a hello larger than one segment. The
//! message is complete when the bytes carried by consecutive handshake records reach the length in
//! its 4-byte handshake header. Until then the answer is [`Sniff::NeedMore`], unless what has arrived
//! is already wrong, which is rejected at once.
//!
//! Parsing is strict because a lenient parser here is a bypass: a name that a server would read
//! differently from the gateway lets a client pass one check and reach another host. Every length
//! must fit its container exactly, an extension may appear only once (RFC 8446 §4.2), and nothing may
//! follow the hello inside its records. Only `server_name` (RFC 6066 §3), `application_layer_protocol_
//! negotiation` (RFC 7301) and the presence of `encrypted_client_hello` are interpreted; TLS 1.3's
//! other extensions are checked for framing only.

use crate::name::{parse_host, DnsName, Host};
use crate::reader::Reader;
use crate::Sniff;

/// Content type of a TLS handshake record, also the first byte of every TLS connection.
pub(crate) const HANDSHAKE_RECORD: u8 = 22;
const RECORD_HEADER_LEN: usize = 5;
/// Largest plaintext record fragment (RFC 8446 §5.1: 2^14 bytes).
const MAX_RECORD_LEN: usize = 1 << 14;
const CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HEADER_LEN: usize = 4;
const RANDOM_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 32;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
const SNI_HOST_NAME: u8 = 0;

/// Largest ClientHello body accepted, in bytes (the handshake length field; the whole message is 4
/// bytes more). Real hellos are 200 to 600 bytes, about 1.8 KB with a post-quantum key share, and
/// padded ones reach at most 16 KiB; 64 KiB is also the largest handshake message rustls accepts.
/// A longer claimed length is rejected as soon as the handshake header arrives. A caller's peek
/// buffer should hold at least 16 KiB plus record headers to let every real hello through.
pub const MAX_CLIENT_HELLO_LEN: usize = 0xffff;

type Reason = &'static str;

/// What a complete ClientHello says about its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The `server_name` extension's host name.
    pub server_name: SniName,
    /// An `encrypted_client_hello` extension (type `0xfe0d`) is present, so `server_name` may be an
    /// outer, public name that many hosts share, and the real one is encrypted. Clients also send
    /// this extension with random contents ("GREASE ECH") when they are not using ECH, so it means
    /// "the name may be an outer one", not "ECH is in use".
    pub ech: bool,
    /// The ALPN protocol names offered, in the client's order (e.g. `h2`, `http/1.1`); empty if the
    /// extension is absent. Each name is 1 to 255 bytes.
    pub alpn: Vec<Vec<u8>>,
    /// Bytes from the start of the buffer up to the end of the last record that carried the hello,
    /// headers included. Bytes after it (a `change_cipher_spec` record, early data) were not read.
    pub record_bytes: usize,
}

/// The host name in a ClientHello's `server_name` extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SniName {
    /// Exactly one `host_name` entry, a valid DNS name (see [`DnsName`]).
    Host(DnsName),
    /// No `server_name` extension.
    Absent,
    /// The one entry is an IPv4 or IPv6 literal, in any spelling, which RFC 6066 forbids.
    IpLiteral,
    /// The one entry is not a valid host name (bad byte, empty label, too long, ...) or is not of
    /// type `host_name`.
    Invalid,
    /// More than one entry in the list, or the extension appears twice.
    Multiple,
}

/// The TLS half of [`crate::sniff`]; `buf` starts with [`HANDSHAKE_RECORD`].
pub(crate) fn sniff(buf: &[u8]) -> Sniff {
    let (message, record_bytes) = match reassemble(buf) {
        Ok(Some(done)) => done,
        Ok(None) => return Sniff::NeedMore,
        Err(reason) => return Sniff::Opaque { reason },
    };
    match parse_client_hello(&message) {
        Ok(hello) => Sniff::Tls(ClientHelloInfo {
            server_name: hello.server_name,
            ech: hello.ech,
            alpn: hello.alpn,
            record_bytes,
        }),
        Err(reason) => Sniff::Opaque { reason },
    }
}

/// Collects the handshake message carried by the handshake records at the start of `buf`, and the
/// number of bytes those records take. `Ok(None)`: a valid beginning, not complete yet.
fn reassemble(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Reason> {
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        check_record_header(rest)?;
        let Some((header, body)) = rest.split_at_checked(RECORD_HEADER_LEN) else {
            return Ok(None);
        };
        let &[_, _, _, hi, lo] = header else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let (fragment, after) = match body.split_at_checked(len) {
            Some((fragment, after)) => (fragment, Some(after)),
            None => (body, None),
        };
        message.extend_from_slice(fragment);
        let expected = check_handshake_header(&message)?;
        let Some(after) = after else {
            return Ok(None);
        };
        rest = after;
        let Some(expected) = expected else {
            continue;
        };
        if message.len() == expected {
            let record_bytes = buf.len().saturating_sub(rest.len());
            return Ok(Some((message, record_bytes)));
        }
        if message.len() > expected {
            return Err("bytes follow the ClientHello inside its last record");
        }
    }
}

/// Checks as much of a record header as has arrived.
fn check_record_header(prefix: &[u8]) -> Result<(), Reason> {
    if prefix.first().is_some_and(|&t| t != HANDSHAKE_RECORD) {
        return Err("a record other than handshake arrived before the ClientHello was complete");
    }
    if prefix.get(1).is_some_and(|&major| major != 3) {
        return Err("record version is not 3.x");
    }
    if let (Some(&hi), Some(&lo)) = (prefix.get(3), prefix.get(4)) {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err("empty handshake record");
        }
        if len > MAX_RECORD_LEN {
            return Err("record longer than 2^14 bytes");
        }
    }
    Ok(())
}

/// Checks as much of the handshake header as has arrived; once all of it has, returns the length of
/// the whole message, header included.
fn check_handshake_header(message: &[u8]) -> Result<Option<usize>, Reason> {
    if message.first().is_some_and(|&t| t != CLIENT_HELLO) {
        return Err("handshake message is not a ClientHello");
    }
    let Some(&[_, a, b, c]) = message.get(..HANDSHAKE_HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes([0, a, b, c])).map_err(|_| TOO_LONG)?;
    if len > MAX_CLIENT_HELLO_LEN {
        return Err(TOO_LONG);
    }
    HANDSHAKE_HEADER_LEN
        .checked_add(len)
        .map(Some)
        .ok_or(TOO_LONG)
}

const TOO_LONG: Reason = "ClientHello longer than the 64 KiB cap";

/// The interpreted fields of a ClientHello.
struct Hello {
    server_name: SniName,
    ech: bool,
    alpn: Vec<Vec<u8>>,
}

/// Parses a complete ClientHello message (handshake header included, already checked), RFC 8446
/// §4.1.2. TLS 1.2 and earlier may omit the extensions block entirely.
fn parse_client_hello(message: &[u8]) -> Result<Hello, Reason> {
    const TRUNCATED: Reason = "ClientHello fields overrun the message";
    let mut r = Reader::new(message);
    r.take(HANDSHAKE_HEADER_LEN).ok_or(TRUNCATED)?;
    let legacy_version = r.u16().ok_or(TRUNCATED)?;
    if legacy_version >> 8 != 3 {
        return Err("ClientHello legacy_version is not 3.x");
    }
    r.take(RANDOM_LEN).ok_or(TRUNCATED)?;
    let session_id = r.vec8().ok_or(TRUNCATED)?;
    if session_id.len() > MAX_SESSION_ID_LEN {
        return Err("legacy_session_id longer than 32 bytes");
    }
    let cipher_suites = r.vec16().ok_or(TRUNCATED)?;
    if cipher_suites.is_empty() || !cipher_suites.len().is_multiple_of(2) {
        return Err("cipher_suites empty or of odd length");
    }
    let compression_methods = r.vec8().ok_or(TRUNCATED)?;
    if compression_methods.is_empty() {
        return Err("legacy_compression_methods empty");
    }
    let mut hello = Hello {
        server_name: SniName::Absent,
        ech: false,
        alpn: Vec::new(),
    };
    if r.is_empty() {
        return Ok(hello);
    }
    let extensions = r.vec16().ok_or(TRUNCATED)?;
    if !r.is_empty() {
        return Err("bytes follow the extensions inside the ClientHello");
    }
    parse_extensions(extensions, &mut hello)?;
    Ok(hello)
}

fn parse_extensions(extensions: &[u8], hello: &mut Hello) -> Result<(), Reason> {
    let mut r = Reader::new(extensions);
    // Every extension takes at least four bytes (type and length): one allocation holds them all.
    let mut seen = Vec::with_capacity(extensions.len() / 4);
    while !r.is_empty() {
        let (Some(kind), Some(data)) = (r.u16(), r.vec16()) else {
            return Err("an extension overruns the extensions block");
        };
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => hello.server_name = parse_server_name(data)?,
            EXT_ENCRYPTED_CLIENT_HELLO => hello.ech = true,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    seen.sort_unstable();
    let mut server_name_twice = false;
    for pair in seen.windows(2) {
        if let [a, b] = *pair {
            if a == b && a == EXT_SERVER_NAME {
                server_name_twice = true;
            } else if a == b {
                return Err("an extension appears twice");
            }
        }
    }
    if server_name_twice {
        hello.server_name = SniName::Multiple;
    }
    Ok(())
}

/// `server_name` extension data: a non-empty list of (name_type, opaque name<1..2^16-1>) entries.
/// Every entry is framed with a two-byte length, as OpenSSL and rustls read them.
fn parse_server_name(data: &[u8]) -> Result<SniName, Reason> {
    let mut r = Reader::new(data);
    let list = r.vec16().ok_or("server_name list overruns its extension")?;
    if !r.is_empty() {
        return Err("bytes follow the server_name list");
    }
    if list.is_empty() {
        return Err("empty server_name list");
    }
    let mut entries = Reader::new(list);
    let mut first = None;
    let mut count = 0usize;
    while !entries.is_empty() {
        let (Some(name_type), Some(name)) = (entries.u8(), entries.vec16()) else {
            return Err("a server_name entry overruns the list");
        };
        count = count.saturating_add(1);
        first.get_or_insert((name_type, name));
    }
    Ok(match first {
        _ if count > 1 => SniName::Multiple,
        Some((SNI_HOST_NAME, name)) => match parse_host(name) {
            Host::Name(name) => SniName::Host(name),
            Host::Ip(_) => SniName::IpLiteral,
            Host::Invalid => SniName::Invalid,
        },
        _ => SniName::Invalid,
    })
}

/// ALPN extension data: a non-empty list of non-empty protocol names (RFC 7301 §3.1).
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, Reason> {
    let mut r = Reader::new(data);
    let list = r.vec16().ok_or("ALPN list overruns its extension")?;
    if !r.is_empty() {
        return Err("bytes follow the ALPN list");
    }
    if list.is_empty() {
        return Err("empty ALPN list");
    }
    let mut names = Reader::new(list);
    let mut protocols = Vec::new();
    while !names.is_empty() {
        match names.vec8() {
            Some([]) => return Err("empty ALPN protocol name"),
            Some(name) => protocols.push(name.to_vec()),
            None => return Err("an ALPN protocol name overruns the list"),
        }
    }
    Ok(protocols)
}
