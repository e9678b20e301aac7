//! Captured ClientHellos and a builder for synthetic ones, shared by the test files.
//!
//! Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use egress_sniff::{sniff, ClientHelloInfo, Sniff};

/// A captured ClientHello: file name, bytes, the SNI the client sent (if any), its ALPN list.
pub struct Capture {
    pub file: &'static str,
    pub bytes: &'static [u8],
    pub sni: Option<&'static str>,
    pub alpn: &'static [&'static [u8]],
}

/// ClientHellos captured from real clients; see `tests/fixtures/README.md`.
pub const CAPTURES: &[Capture] = &[
    Capture {
        file: "openssl_s_client_example_com.bin",
        bytes: include_bytes!("../fixtures/openssl_s_client_example_com.bin"),
        sni: Some("example.com"),
        alpn: &[],
    },
    Capture {
        file: "curl_example_com.bin",
        bytes: include_bytes!("../fixtures/curl_example_com.bin"),
        sni: Some("example.com"),
        alpn: &[b"h2", b"http/1.1"],
    },
    Capture {
        file: "node_api_example_org.bin",
        bytes: include_bytes!("../fixtures/node_api_example_org.bin"),
        sni: Some("api.example.org"),
        alpn: &[b"h2", b"http/1.1"],
    },
    Capture {
        file: "java17_mixed_case.bin",
        bytes: include_bytes!("../fixtures/java17_mixed_case.bin"),
        sni: Some("mixed.case.example.net"),
        alpn: &[b"h2", b"http/1.1"],
    },
    Capture {
        file: "wget_gnutls_localhost.bin",
        bytes: include_bytes!("../fixtures/wget_gnutls_localhost.bin"),
        sni: Some("localhost"),
        alpn: &[],
    },
    Capture {
        file: "openssl_s_client_no_sni.bin",
        bytes: include_bytes!("../fixtures/openssl_s_client_no_sni.bin"),
        sni: None,
        alpn: &[],
    },
];

/// A failing case names the file; its bytes are in the fixture.
impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.file)
    }
}

pub const OPENSSL_IP_SNI: &[u8] = include_bytes!("../fixtures/openssl_s_client_ip_sni.bin");
pub const CURL_HTTP_GET: &[u8] = include_bytes!("../fixtures/curl_http_get.bin");

pub const EXT_SERVER_NAME: u16 = 0;
pub const EXT_SUPPORTED_GROUPS: u16 = 10;
pub const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
pub const EXT_ALPN: u16 = 16;
pub const EXT_PADDING: u16 = 21;
pub const EXT_SUPPORTED_VERSIONS: u16 = 43;
pub const EXT_PSK_MODES: u16 = 45;
pub const EXT_KEY_SHARE: u16 = 51;
pub const EXT_ECH: u16 = 0xfe0d;
pub const X25519MLKEM768: u16 = 0x11ec;
pub const X25519: u16 = 0x001d;

/// The handshake message inside a capture that holds it in a single record.
pub fn handshake_of(record: &[u8]) -> Vec<u8> {
    record[5..].to_vec()
}

/// Frames a handshake message as TLS records carrying `sizes` bytes each, in turn; the last record
/// takes whatever remains (so `&[]` gives one record). Record version 3.1, as clients use.
pub fn reframe(message: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = message;
    let mut sizes = sizes.iter();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (fragment, tail) = rest.split_at(n);
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(
            &u16::try_from(n)
                .expect("fragment fits a record")
                .to_be_bytes(),
        );
        out.extend_from_slice(fragment);
        rest = tail;
    }
    out
}

/// Frames a handshake message as one record per `size` bytes.
pub fn reframe_every(message: &[u8], size: usize) -> Vec<u8> {
    reframe(message, &vec![size; message.len().div_ceil(size)])
}

pub fn u16_vec(data: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(data.len())
        .expect("short vector")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(data);
    out
}

/// `server_name` extension data with the given (name_type, name) entries.
pub fn sni_data(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend(u16_vec(name));
    }
    u16_vec(&list)
}

pub fn alpn_data(protocols: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protocols {
        list.push(u8::try_from(p.len()).expect("short protocol name"));
        list.extend_from_slice(p);
    }
    u16_vec(&list)
}

/// A synthetic ClientHello, shaped like a current browser's: TLS 1.3 with a 1.2 fallback.
#[derive(Clone)]
pub struct Hello {
    pub legacy_version: u16,
    pub session_id: Vec<u8>,
    pub cipher_suites: Vec<u8>,
    pub compression: Vec<u8>,
    /// `None` leaves out the extensions block entirely, as TLS 1.2 clients may.
    pub extensions: Option<Vec<(u16, Vec<u8>)>>,
}

impl Hello {
    /// A hello for `example.com` with an X25519 key share.
    pub fn new() -> Self {
        let mut key_share = Vec::new();
        key_share.extend(X25519.to_be_bytes());
        key_share.extend(u16_vec(&[0x42; 32]));
        Hello {
            legacy_version: 0x0303,
            session_id: vec![0x5a; 32],
            cipher_suites: vec![0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b, 0xc0, 0x2f],
            compression: vec![0],
            extensions: Some(vec![
                (EXT_SERVER_NAME, sni_data(&[(0, b"example.com")])),
                (EXT_SUPPORTED_GROUPS, u16_vec(&[0x00, 0x1d, 0x00, 0x17])),
                (EXT_SIGNATURE_ALGORITHMS, u16_vec(&[0x04, 0x03, 0x08, 0x04])),
                (EXT_ALPN, alpn_data(&[b"h2", b"http/1.1"])),
                (EXT_SUPPORTED_VERSIONS, vec![4, 0x03, 0x04, 0x03, 0x03]),
                (EXT_PSK_MODES, vec![1, 1]),
                (EXT_KEY_SHARE, u16_vec(&key_share)),
            ]),
        }
    }

    /// Replaces (or adds, at the end) the extension of type `kind`.
    pub fn with(mut self, kind: u16, data: Vec<u8>) -> Self {
        let exts = self.extensions.get_or_insert_with(Vec::new);
        match exts.iter_mut().find(|(k, _)| *k == kind) {
            Some(slot) => slot.1 = data,
            None => exts.push((kind, data)),
        }
        self
    }

    /// Adds an extension at the end, even if one of that type is already present.
    pub fn push(mut self, kind: u16, data: Vec<u8>) -> Self {
        self.extensions
            .get_or_insert_with(Vec::new)
            .push((kind, data));
        self
    }

    pub fn without(mut self, kind: u16) -> Self {
        if let Some(exts) = &mut self.extensions {
            exts.retain(|(k, _)| *k != kind);
        }
        self
    }

    /// A hello whose `server_name` lists these host names.
    pub fn sni(self, names: &[&[u8]]) -> Self {
        let entries: Vec<(u8, &[u8])> = names.iter().map(|n| (0, *n)).collect();
        self.with(EXT_SERVER_NAME, sni_data(&entries))
    }

    /// The ClientHello body (after the handshake header).
    pub fn body(&self) -> Vec<u8> {
        let mut b = self.legacy_version.to_be_bytes().to_vec();
        b.extend_from_slice(&[0x11; 32]);
        b.push(u8::try_from(self.session_id.len()).expect("short session id"));
        b.extend_from_slice(&self.session_id);
        b.extend(u16_vec(&self.cipher_suites));
        b.push(u8::try_from(self.compression.len()).expect("short list"));
        b.extend_from_slice(&self.compression);
        if let Some(exts) = &self.extensions {
            let mut block = Vec::new();
            for (kind, data) in exts {
                block.extend(kind.to_be_bytes());
                block.extend(u16_vec(data));
            }
            b.extend(u16_vec(&block));
        }
        b
    }

    /// The handshake message: type 1, 24-bit length, body.
    pub fn message(&self) -> Vec<u8> {
        handshake(1, &self.body())
    }

    /// The message in one record (it must fit).
    pub fn record(&self) -> Vec<u8> {
        reframe(&self.message(), &[])
    }
}

/// A handshake message of type `kind` around `body`.
pub fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("short body").to_be_bytes();
    let mut m = vec![kind, len[1], len[2], len[3]];
    m.extend_from_slice(body);
    m
}

/// A Chrome-like post-quantum hello: an X25519MLKEM768 key share of 1216 bytes (a 1184-byte ML-KEM-768
/// encapsulation key and a 32-byte X25519 share) beside a plain X25519 one, and a GREASE ECH
/// extension. About 1.8 KB, larger than one TCP segment.
pub fn post_quantum_hello() -> Hello {
    let mut shares = Vec::new();
    shares.extend(X25519MLKEM768.to_be_bytes());
    shares.extend(u16_vec(&[0x7e; 1216]));
    shares.extend(X25519.to_be_bytes());
    shares.extend(u16_vec(&[0x42; 32]));
    let mut ech = vec![0x00, 0x00, 0x01, 0x00, 0x01, 0x2a];
    ech.extend(u16_vec(&[0x33; 32]));
    ech.extend(u16_vec(&[0x44; 208]));
    Hello::new()
        .sni(&[b"api.example.com"])
        .with(
            EXT_SUPPORTED_GROUPS,
            u16_vec(&[0x11, 0xec, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]),
        )
        .with(
            EXT_SIGNATURE_ALGORITHMS,
            u16_vec(&[4, 3, 8, 4, 4, 1, 5, 3, 8, 5, 5, 1, 8, 6, 6, 1]),
        )
        .with(EXT_KEY_SHARE, u16_vec(&shares))
        .with(EXT_ECH, ech)
        .with(0x0a0a, vec![]) // GREASE
        .with(5, vec![1, 0, 0, 0, 0]) // status_request
        .with(11, vec![1, 0]) // ec_point_formats
        .with(18, vec![]) // signed_certificate_timestamp
        .with(23, vec![]) // extended_master_secret
        .with(27, vec![2, 0, 2]) // compress_certificate: brotli
        .with(35, vec![]) // session_ticket
        .with(17513, u16_vec(&[2, b'h', b'2'])) // application_settings
        .with(0xff01, vec![0]) // renegotiation_info
        .with(0x3a3a, vec![0]) // GREASE
}

/// Sniffs `bytes` and insists on a parsed ClientHello.
pub fn hello_info(bytes: &[u8]) -> ClientHelloInfo {
    match sniff(bytes) {
        Sniff::Tls(info) => info,
        other => panic!("expected a ClientHello, got {other:?}"),
    }
}

/// The reason of an `Opaque` answer, or a panic.
pub fn opaque_reason(bytes: &[u8]) -> &'static str {
    match sniff(bytes) {
        Sniff::Opaque { reason } => reason,
        other => panic!("expected Opaque, got {other:?}"),
    }
}
