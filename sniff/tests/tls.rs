//! ClientHello scenarios: real captures, fragmentation, and the odd or hostile hellos of the threat
//! model (missing, IP-literal, duplicate and malformed names, ECH, overruns, trailing bytes).

mod support;

use egress_sniff::{sniff, SniName, Sniff, MAX_CLIENT_HELLO_LEN};
use support::*;

fn host(info: &egress_sniff::ClientHelloInfo) -> Option<&str> {
    match &info.server_name {
        SniName::Host(name) => Some(name.as_str()),
        _ => None,
    }
}

fn server_name(bytes: &[u8]) -> SniName {
    hello_info(bytes).server_name
}

fn sni_of(hello: Hello) -> SniName {
    server_name(&hello.record())
}

// --- Real clients -------------------------------------------------------------------------------

#[test]
fn real_client_hellos_give_their_server_name_and_alpn() {
    for capture in CAPTURES {
        let info = hello_info(capture.bytes);
        assert_eq!(host(&info), capture.sni, "{}", capture.file);
        if capture.sni.is_none() {
            assert_eq!(info.server_name, SniName::Absent, "{}", capture.file);
        }
        let alpn: Vec<&[u8]> = info.alpn.iter().map(Vec::as_slice).collect();
        assert_eq!(alpn, capture.alpn, "{}", capture.file);
        assert!(!info.ech, "{}", capture.file);
        assert_eq!(info.record_bytes, capture.bytes.len(), "{}", capture.file);
    }
}

#[test]
fn java_mixed_case_server_name_is_lower_cased() {
    let capture = CAPTURES
        .iter()
        .find(|c| c.file.starts_with("java17"))
        .expect("java capture");
    assert!(capture
        .bytes
        .windows(22)
        .any(|w| w == b"Mixed.Case.Example.NET"));
    assert_eq!(
        host(&hello_info(capture.bytes)),
        Some("mixed.case.example.net")
    );
}

#[test]
fn openssl_hello_with_an_ip_address_as_server_name_is_an_ip_literal() {
    assert_eq!(server_name(OPENSSL_IP_SNI), SniName::IpLiteral);
}

#[test]
fn every_prefix_of_a_real_hello_needs_more_until_the_last_byte() {
    for capture in CAPTURES {
        for end in 0..capture.bytes.len() {
            assert_eq!(
                sniff(&capture.bytes[..end]),
                Sniff::NeedMore,
                "{} cut at {end}",
                capture.file
            );
        }
    }
}

#[test]
fn bytes_after_the_hello_records_are_left_unread() {
    let capture = &CAPTURES[1];
    let mut stream = capture.bytes.to_vec();
    // A middlebox-compatibility change_cipher_spec record, then early application data.
    stream.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
    stream.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x03, 0xaa, 0xbb, 0xcc]);
    let info = hello_info(&stream);
    assert_eq!(info.record_bytes, capture.bytes.len());
    assert_eq!(host(&info), Some("example.com"));
}

// --- Fragmentation ------------------------------------------------------------------------------

#[test]
fn hello_split_into_two_three_and_many_records_gives_the_same_answer() {
    for capture in CAPTURES {
        let message = handshake_of(capture.bytes);
        let whole = hello_info(capture.bytes);
        let layouts: [&[usize]; 5] = [&[100], &[1, 2], &[4, 60, 7], &[3], &[message.len() - 1]];
        for sizes in layouts {
            let stream = reframe(&message, sizes);
            let info = hello_info(&stream);
            assert_eq!(
                info.server_name, whole.server_name,
                "{} {sizes:?}",
                capture.file
            );
            assert_eq!(info.alpn, whole.alpn);
            assert_eq!(info.record_bytes, stream.len());
        }
        for size in [1, 2, 5, 64] {
            let stream = reframe_every(&message, size);
            let info = hello_info(&stream);
            assert_eq!(
                info.server_name, whole.server_name,
                "{} every {size}",
                capture.file
            );
            assert_eq!(info.record_bytes, stream.len());
        }
    }
}

#[test]
fn hello_in_one_byte_records_fed_byte_by_byte_needs_more_until_the_last_byte() {
    let stream = reframe_every(&handshake_of(CAPTURES[2].bytes), 1);
    for end in 0..stream.len() {
        assert_eq!(sniff(&stream[..end]), Sniff::NeedMore, "cut at {end}");
    }
    assert_eq!(host(&hello_info(&stream)), Some("api.example.org"));
}

#[test]
fn post_quantum_hello_larger_than_a_tcp_segment_parses_once_complete() {
    let hello = post_quantum_hello();
    let record = hello.record();
    assert!(
        (1700..2000).contains(&record.len()),
        "{} bytes",
        record.len()
    );
    assert!(record.windows(2).any(|w| w == X25519MLKEM768.to_be_bytes()));
    // The first TCP segment (MSS 1460) ends inside the record.
    assert_eq!(sniff(&record[..1460]), Sniff::NeedMore);
    let info = hello_info(&record);
    assert_eq!(host(&info), Some("api.example.com"));
    assert!(info.ech, "Chrome-like hellos carry a GREASE ECH extension");
    assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(info.record_bytes, record.len());
    // The same hello split as record fragmentation attacks do.
    let message = hello.message();
    for sizes in [&[512][..], &[1, 1, 1, 1], &[1500, 200]] {
        assert_eq!(
            host(&hello_info(&reframe(&message, sizes))),
            Some("api.example.com")
        );
    }
}

#[test]
fn hello_longer_than_one_record_is_accepted_only_split_across_records() {
    let hello = Hello::new().with(EXT_PADDING, vec![0; 17_000]);
    let message = hello.message();
    assert!(message.len() > 1 << 14);
    let mut one_record = vec![0x16, 0x03, 0x01];
    one_record.extend(u16::try_from(message.len()).expect("fits").to_be_bytes());
    one_record.extend(&message);
    assert_eq!(opaque_reason(&one_record), "record longer than 2^14 bytes");
    // Rejected as soon as the record header arrives, not after 17 KB.
    assert_eq!(
        opaque_reason(&one_record[..5]),
        "record longer than 2^14 bytes"
    );
    let split = reframe_every(&message, 1 << 14);
    assert_eq!(host(&hello_info(&split)), Some("example.com"));
}

// --- Server names -------------------------------------------------------------------------------

#[test]
fn hello_without_server_name_extension_has_no_name() {
    assert_eq!(
        sni_of(Hello::new().without(EXT_SERVER_NAME)),
        SniName::Absent
    );
}

#[test]
fn tls12_hello_without_an_extensions_block_has_no_name() {
    let mut hello = Hello::new();
    hello.extensions = None;
    let info = hello_info(&hello.record());
    assert_eq!(info.server_name, SniName::Absent);
    assert!(info.alpn.is_empty());
}

#[test]
fn two_host_names_in_one_extension_are_multiple() {
    let hello = Hello::new().sni(&[b"allowed.example", b"evil.example"]);
    assert_eq!(sni_of(hello), SniName::Multiple);
    let same_twice = Hello::new().sni(&[b"allowed.example", b"allowed.example"]);
    assert_eq!(sni_of(same_twice), SniName::Multiple);
}

#[test]
fn server_name_extension_twice_is_multiple() {
    let hello = Hello::new().push(EXT_SERVER_NAME, sni_data(&[(0, b"evil.example")]));
    assert_eq!(sni_of(hello), SniName::Multiple);
}

#[test]
fn entry_of_an_unknown_name_type_is_invalid() {
    let hello = Hello::new().with(EXT_SERVER_NAME, sni_data(&[(1, b"example.com")]));
    assert_eq!(sni_of(hello), SniName::Invalid);
}

#[test]
fn server_name_is_lower_cased_without_its_trailing_dot() {
    let info = hello_info(&Hello::new().sni(&[b"API.Example.COM."]).record());
    assert_eq!(host(&info), Some("api.example.com"));
}

#[test]
fn ip_literals_in_any_spelling_are_not_host_names() {
    for literal in [
        &b"192.0.2.7"[..],
        b"169.254.169.254.",
        b"127.1",
        b"0x7f.1",
        b"2130706433",
        b"::1",
        b"::ffff:a9fe:a9fe",
        b"2001:db8::1",
    ] {
        let hello = Hello::new().sni(&[literal]);
        assert_eq!(sni_of(hello), SniName::IpLiteral, "{literal:?}");
    }
}

#[test]
fn malformed_host_names_are_invalid() {
    let long_label = [b'a'; 64];
    let long_name = [b"a.".repeat(127), b"ab".to_vec()].concat();
    assert_eq!(long_name.len(), 256);
    let cases: &[&[u8]] = &[
        b"",
        b".",
        b"a..example.com",
        b".example.com",
        b"example.com..",
        b"exa\0mple.com",
        b"example.com\0.evil.example",
        b"exa mple.com",
        b"b\xc3\xbccher.example",
        b"\xff\xfe",
        b"evil.example/",
        b"user@example.com",
        b"[::1]",
        b"fe80::1%eth0",
        b"example.com:443",
        b"-leading.example",
        &long_label,
        &long_name,
    ];
    for &name in cases {
        let hello = Hello::new().sni(&[name]);
        assert_eq!(
            sni_of(hello),
            SniName::Invalid,
            "{:?}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn longest_valid_name_is_253_bytes() {
    let name = [b"a.".repeat(125), b"abc".to_vec()].concat();
    assert_eq!(name.len(), 253);
    assert!(matches!(
        sni_of(Hello::new().sni(&[&name])),
        SniName::Host(_)
    ));
    let too_long = [b"a.".repeat(125), b"abcd".to_vec()].concat();
    assert_eq!(sni_of(Hello::new().sni(&[&too_long])), SniName::Invalid);
}

// --- ECH and ALPN -------------------------------------------------------------------------------

#[test]
fn encrypted_client_hello_extension_marks_the_name_as_outer() {
    let hello = Hello::new().sni(&[b"public.cdn.example"]).with(
        EXT_ECH,
        vec![
            0x00, 0x00, 0x01, 0x00, 0x01, 0x07, 0x00, 0x00, 0x00, 0x01, 0xee,
        ],
    );
    let info = hello_info(&hello.record());
    assert!(info.ech);
    assert_eq!(host(&info), Some("public.cdn.example"));
}

#[test]
fn malformed_alpn_is_opaque() {
    let empty_name = Hello::new().with(EXT_ALPN, u16_vec(&[0, 2, b'h', b'2']));
    assert_eq!(
        opaque_reason(&empty_name.record()),
        "empty ALPN protocol name"
    );
    let overrun = Hello::new().with(EXT_ALPN, u16_vec(&[5, b'h', b'2']));
    assert_eq!(
        opaque_reason(&overrun.record()),
        "an ALPN protocol name overruns the list"
    );
    let empty_list = Hello::new().with(EXT_ALPN, u16_vec(&[]));
    assert_eq!(opaque_reason(&empty_list.record()), "empty ALPN list");
}

// --- Record layer -------------------------------------------------------------------------------

#[test]
fn non_handshake_record_before_the_hello_is_complete_is_opaque() {
    let message = handshake_of(CAPTURES[0].bytes);
    let mut stream = reframe(&message[..100], &[]);
    stream.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb]);
    assert_eq!(
        opaque_reason(&stream),
        "a record other than handshake arrived before the ClientHello was complete"
    );
    // A change_cipher_spec or alert record in the middle is no better.
    let mut stream = reframe(&message[..100], &[]);
    stream.push(0x14);
    assert!(matches!(sniff(&stream), Sniff::Opaque { .. }));
}

#[test]
fn empty_handshake_record_is_opaque() {
    let mut stream = vec![0x16, 0x03, 0x01, 0x00, 0x00];
    assert_eq!(opaque_reason(&stream), "empty handshake record");
    let message = Hello::new().message();
    stream = reframe(&message[..10], &[]);
    stream.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x00]);
    assert_eq!(opaque_reason(&stream), "empty handshake record");
}

#[test]
fn record_version_other_than_3_x_is_opaque() {
    let mut record = Hello::new().record();
    record[1] = 0x02;
    assert_eq!(opaque_reason(&record[..2]), "record version is not 3.x");
    record[1] = 0x03;
    record[5] = 0x01; // handshake type stays ClientHello
    let body_version = 4 + 5;
    record[body_version] = 0x02;
    assert_eq!(
        opaque_reason(&record),
        "ClientHello legacy_version is not 3.x"
    );
}

#[test]
fn handshake_other_than_client_hello_is_opaque_from_its_first_byte() {
    let server_hello = reframe(&handshake(2, &Hello::new().body()), &[]);
    assert_eq!(
        opaque_reason(&server_hello[..6]),
        "handshake message is not a ClientHello"
    );
}

#[test]
fn claimed_hello_length_over_the_cap_is_opaque_from_its_header() {
    let len = u32::try_from(MAX_CLIENT_HELLO_LEN + 1)
        .expect("small")
        .to_be_bytes();
    let stream = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, len[1], len[2], len[3]];
    assert_eq!(
        opaque_reason(&stream),
        "ClientHello longer than the 64 KiB cap"
    );
    let max = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    assert_eq!(
        opaque_reason(&max),
        "ClientHello longer than the 64 KiB cap"
    );
}

#[test]
fn bytes_after_the_hello_inside_its_record_are_opaque() {
    let mut message = Hello::new().message();
    message.extend_from_slice(&[0x0f, 0x00, 0x00, 0x00]);
    assert_eq!(
        opaque_reason(&reframe(&message, &[])),
        "bytes follow the ClientHello inside its last record"
    );
}

// --- Lengths inside the hello -------------------------------------------------------------------

/// A hello whose handshake length matches `body` exactly, whatever `body` claims inside.
fn record_of_body(body: &[u8]) -> Vec<u8> {
    reframe(&handshake(1, body), &[])
}

#[test]
fn trailing_bytes_after_the_extensions_are_opaque() {
    let mut body = Hello::new().body();
    body.extend_from_slice(&[0x00, 0x00]);
    assert_eq!(
        opaque_reason(&record_of_body(&body)),
        "bytes follow the extensions inside the ClientHello"
    );
}

#[test]
fn every_overlong_length_field_is_opaque() {
    let hello = Hello::new().without(EXT_ALPN);
    let body = hello.body();
    let session_id_len = 2 + 32;
    let suites_len = session_id_len + 1 + 32;
    let compression_len = suites_len + 2 + 10;
    let extensions_len = compression_len + 1 + 1;
    let first_ext_len = extensions_len + 2 + 2;
    let sni_list_len = first_ext_len + 2;
    let sni_name_len = sni_list_len + 2 + 1;
    let cases = [
        (session_id_len, 33, "legacy_session_id longer than 32 bytes"),
        (
            session_id_len,
            0xff,
            "ClientHello fields overrun the message",
        ),
        (
            suites_len + 1,
            0xff,
            "ClientHello fields overrun the message",
        ),
        (suites_len + 1, 11, "cipher_suites empty or of odd length"),
        (
            compression_len,
            0xff,
            "ClientHello fields overrun the message",
        ),
        (compression_len, 0, "legacy_compression_methods empty"),
        (
            extensions_len + 1,
            0xff,
            "ClientHello fields overrun the message",
        ),
        (
            first_ext_len + 1,
            0xff,
            "an extension overruns the extensions block",
        ),
        (
            sni_list_len + 1,
            0xff,
            "server_name list overruns its extension",
        ),
        (
            sni_name_len + 1,
            0xff,
            "a server_name entry overruns the list",
        ),
    ];
    for (at, value, reason) in cases {
        let mut mutated = body.clone();
        mutated[at] = value;
        assert_eq!(
            opaque_reason(&record_of_body(&mutated)),
            reason,
            "byte {at} = {value}"
        );
    }
    // The field offsets above point where they should: the unmutated hello parses.
    assert_eq!(
        host(&hello_info(&record_of_body(&body))),
        Some("example.com")
    );
}

#[test]
fn truncated_hello_is_opaque_when_its_length_says_it_ended() {
    let body = Hello::new().body();
    for cut in [0, 1, 2, 33, 34, 40, body.len() - 1] {
        assert!(
            matches!(sniff(&record_of_body(&body[..cut])), Sniff::Opaque { .. }),
            "cut at {cut}"
        );
    }
}

#[test]
fn duplicate_extension_other_than_server_name_is_opaque() {
    let hello = Hello::new().push(EXT_ALPN, alpn_data(&[b"h2"]));
    assert_eq!(opaque_reason(&hello.record()), "an extension appears twice");
    let grease = Hello::new().push(0x0a0a, vec![]).push(0x0a0a, vec![0]);
    assert_eq!(
        opaque_reason(&grease.record()),
        "an extension appears twice"
    );
}

#[test]
fn empty_server_name_list_is_opaque() {
    let hello = Hello::new().with(EXT_SERVER_NAME, u16_vec(&[]));
    assert_eq!(opaque_reason(&hello.record()), "empty server_name list");
    let no_list = Hello::new().with(EXT_SERVER_NAME, vec![]);
    assert!(matches!(sniff(&no_list.record()), Sniff::Opaque { .. }));
}

// --- Not TLS at all -----------------------------------------------------------------------------

#[test]
fn bytes_that_do_not_start_a_handshake_record_are_opaque() {
    assert_eq!(sniff(b""), Sniff::NeedMore);
    for prefix in [
        &[0x80, 0x2e, 0x01, 0x03, 0x01][..], // SSLv2-compatible ClientHello
        &[0x17, 0x03, 0x03],                 // application data
        &[0x00],
        &[0xff, 0xff],
        b"\x16\x00",
        b"get / HTTP/1.1\r\n",
        b" GET / HTTP/1.1\r\n",
    ] {
        assert!(matches!(sniff(prefix), Sniff::Opaque { .. }), "{prefix:?}");
    }
}

#[test]
fn a_lone_handshake_byte_needs_more() {
    assert_eq!(sniff(&[0x16]), Sniff::NeedMore);
    assert_eq!(sniff(&[0x16, 0x03]), Sniff::NeedMore);
}
