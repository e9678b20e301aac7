//! HTTP/1 request head scenarios: a real curl request, reads split anywhere, and the Host, framing and
//! request-target tricks of the threat model.

mod support;

use egress_sniff::{sniff, HostHeader, HttpInfo, Sniff, MAX_HEADER_FIELDS};
use support::{opaque_reason, CURL_HTTP_GET};

fn http(bytes: &[u8]) -> HttpInfo {
    match sniff(bytes) {
        Sniff::Http(info) => info,
        other => panic!("expected a request head, got {other:?}"),
    }
}

fn host_of(bytes: &[u8]) -> HostHeader {
    http(bytes).host
}

/// The name and port of a valid `Host`, or a panic.
fn name_port(bytes: &[u8]) -> (String, Option<u16>) {
    match host_of(bytes) {
        HostHeader::Host { name, port } => (name.as_str().to_owned(), port),
        other => panic!("expected a host name, got {other:?}"),
    }
}

fn request(lines: &[&str]) -> Vec<u8> {
    let mut head = lines.join("\r\n");
    head.push_str("\r\n\r\n");
    head.into_bytes()
}

#[test]
fn curl_request_gives_host_port_and_head_length() {
    assert!(CURL_HTTP_GET.starts_with(b"GET /path?q=1 HTTP/1.1\r\nHost: example.com:44153\r\n"));
    let info = http(CURL_HTTP_GET);
    assert_eq!(info.head_len, CURL_HTTP_GET.len());
    assert_eq!(
        name_port(CURL_HTTP_GET),
        ("example.com".to_owned(), Some(44153))
    );
}

#[test]
fn normal_get_without_port_and_with_a_body_after_the_head() {
    let head = request(&[
        "GET /index.html HTTP/1.1",
        "Host: Example.COM.",
        "Accept: */*",
    ]);
    let mut stream = head.clone();
    stream.extend_from_slice(b"body bytes, or a pipelined request\r\n\r\n");
    let info = http(&stream);
    assert_eq!(info.head_len, head.len());
    assert_eq!(name_port(&stream), ("example.com".to_owned(), None));
}

#[test]
fn every_prefix_of_a_request_head_needs_more() {
    for head in [
        CURL_HTTP_GET.to_vec(),
        request(&[
            "POST /upload HTTP/1.0",
            "Host: a.example:8080",
            "Content-Length: 0",
        ]),
    ] {
        for end in 0..head.len() {
            assert_eq!(sniff(&head[..end]), Sniff::NeedMore, "cut at {end}");
        }
        assert!(matches!(sniff(&head), Sniff::Http(_)));
    }
}

#[test]
fn request_without_host_has_no_host() {
    assert_eq!(host_of(&request(&["GET / HTTP/1.0"])), HostHeader::Absent);
    assert_eq!(
        host_of(&request(&["GET / HTTP/1.1", "Hostname: x.example"])),
        HostHeader::Absent
    );
}

#[test]
fn two_host_headers_are_multiple_even_when_equal() {
    let two = request(&[
        "GET / HTTP/1.1",
        "Host: allowed.example",
        "host: evil.example",
    ]);
    assert_eq!(host_of(&two), HostHeader::Multiple);
    let equal = request(&["GET / HTTP/1.1", "Host: a.example", "HOST: a.example"]);
    assert_eq!(host_of(&equal), HostHeader::Multiple);
}

#[test]
fn obs_fold_is_opaque() {
    let folded = request(&["GET / HTTP/1.1", "Host: allowed.example", " evil.example"]);
    assert_eq!(
        opaque_reason(&folded),
        "obs-fold: a header line starts with whitespace"
    );
    let tab = b"GET / HTTP/1.1\r\nX-A: 1\r\n\tHost: evil.example";
    assert_eq!(
        opaque_reason(tab),
        "obs-fold: a header line starts with whitespace"
    );
}

#[test]
fn bad_methods_are_opaque_without_waiting_for_a_line_end() {
    assert_eq!(opaque_reason(b"GeT / HTTP/1.1\r\n"), "bad method");
    assert_eq!(opaque_reason(b"G\0T"), "bad method");
    assert_eq!(opaque_reason(b"GET\t/"), "bad method");
    assert_eq!(opaque_reason(&[b'A'; 25]), "bad method");
    assert_eq!(opaque_reason(b"SSH-2.0-OpenSSH_9.6"), "bad method");
    assert!(matches!(sniff(b"get / HTTP/1.1\r\n"), Sniff::Opaque { .. }));
    // Methods the registry knows, including ones with a hyphen, are fine.
    let m_search = request(&["M-SEARCH * HTTP/1.1", "Host: 239.255.255.250:1900"]);
    assert_eq!(
        opaque_reason(&m_search),
        "asterisk-form target outside OPTIONS"
    );
    let propfind = request(&["PROPFIND /dav HTTP/1.1", "Host: dav.example"]);
    assert_eq!(name_port(&propfind).0, "dav.example");
}

#[test]
fn other_protocols_and_versions_are_opaque() {
    assert_eq!(
        opaque_reason(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "not HTTP/1.0 or HTTP/1.1"
    );
    assert_eq!(
        opaque_reason(b"GET / HTTP/1.2\r\n"),
        "not HTTP/1.0 or HTTP/1.1"
    );
    assert_eq!(
        opaque_reason(b"GET / HTTP/1.1 \r\n"),
        "not HTTP/1.0 or HTTP/1.1"
    );
    assert_eq!(opaque_reason(b"GET / HTTQ"), "not HTTP/1.0 or HTTP/1.1");
    assert_eq!(
        opaque_reason(b"GET /\r\n"),
        "request line has no HTTP version"
    );
    assert_eq!(opaque_reason(b"GET\r\n"), "request line has no target");
    assert_eq!(
        opaque_reason(b"GET  / HTTP/1.1"),
        "empty method or request target"
    );
    assert_eq!(
        opaque_reason(b"EHLO mail.example\r\n"),
        "request line has no HTTP version"
    );
}

#[test]
fn ip_literal_hosts_are_not_host_names() {
    for value in [
        "192.0.2.1",
        "192.0.2.1:8080",
        "[2001:db8::1]",
        "[::ffff:169.254.169.254]:80",
        "127.1",
        "0x7f.0.0.1:80",
        "2130706433",
    ] {
        let head = request(&["GET / HTTP/1.1", &format!("Host: {value}")]);
        assert_eq!(host_of(&head), HostHeader::IpLiteral, "{value}");
    }
}

#[test]
fn host_with_port_is_split_and_checked() {
    let head = request(&["GET / HTTP/1.1", "Host:\t api.example.com:443 \t"]);
    assert_eq!(name_port(&head), ("api.example.com".to_owned(), Some(443)));
    let head = request(&["GET / HTTP/1.1", "Host: a.example:65535"]);
    assert_eq!(name_port(&head).1, Some(65535));
    for value in [
        "a.example:0",
        "a.example:65536",
        "a.example:",
        "a.example:080",
        "a.example:http",
        "a.example:80:80",
        "2001:db8::1",
        "[2001:db8::1]80",
        "[a.example]",
        "[fe80::1%25eth0]",
        "",
        "a.example, b.example",
        "a.example b.example",
        "allowed.example@evil.example",
        "b\u{fc}cher.example",
        "%61.example",
    ] {
        let head = request(&["GET / HTTP/1.1", &format!("Host: {value}")]);
        assert_eq!(host_of(&head), HostHeader::Invalid, "{value:?}");
    }
}

#[test]
fn absolute_form_target_must_agree_with_host() {
    let agree = request(&["GET http://a.example/x HTTP/1.1", "Host: A.example:80"]);
    assert_eq!(name_port(&agree), ("a.example".to_owned(), Some(80)));
    let agree = request(&["GET HTTPS://a.example:443?q HTTP/1.1", "Host: a.example"]);
    assert_eq!(name_port(&agree), ("a.example".to_owned(), None));
    for (target, host) in [
        ("http://evil.example/", "allowed.example"),
        ("http://allowed.example:8080/", "allowed.example"),
        ("http://allowed.example/", "allowed.example:8080"),
        ("https://allowed.example/", "allowed.example:80"),
        ("http://127.0.0.1/", "allowed.example"),
        ("http://allowed.example/", "127.0.0.1"),
        ("http://allowed.example:0/", "allowed.example"),
        ("http:///", "allowed.example"),
    ] {
        let head = request(&[&format!("GET {target} HTTP/1.1"), &format!("Host: {host}")]);
        assert_eq!(host_of(&head), HostHeader::Invalid, "{target} vs {host}");
    }
    let ips = request(&["GET http://[::ffff:192.0.2.1]/ HTTP/1.1", "Host: 192.0.2.1"]);
    assert_eq!(host_of(&ips), HostHeader::IpLiteral);
    // Without a Host header the target is not taken instead: the caller falls back to the address.
    let no_host = request(&["GET http://a.example/ HTTP/1.0"]);
    assert_eq!(host_of(&no_host), HostHeader::Absent);
}

#[test]
fn malformed_request_targets_are_opaque() {
    let cases = [
        (
            "GET http://allowed.example@evil.example/ HTTP/1.1",
            "userinfo in the request target",
        ),
        (
            "GET ftp://a.example/ HTTP/1.1",
            "absolute-form target with a scheme other than http or https",
        ),
        (
            "GET a.example/ HTTP/1.1",
            "request target is neither origin-form nor absolute-form",
        ),
        ("GET * HTTP/1.1", "asterisk-form target outside OPTIONS"),
        (
            "CONNECT a.example HTTP/1.1",
            "CONNECT target is not host:port",
        ),
        ("CONNECT / HTTP/1.1", "CONNECT target is not host:port"),
        (
            "CONNECT http://a.example:443 HTTP/1.1",
            "CONNECT target is not host:port",
        ),
    ];
    for (line, reason) in cases {
        assert_eq!(
            opaque_reason(&request(&[line, "Host: a.example"])),
            reason,
            "{line}"
        );
    }
    assert_eq!(
        opaque_reason(b"GET /a\0b HTTP/1.1"),
        "bad byte in request target"
    );
    let options = request(&["OPTIONS * HTTP/1.1", "Host: a.example"]);
    assert_eq!(name_port(&options).0, "a.example");
}

#[test]
fn connect_target_must_agree_with_host() {
    let agree = request(&["CONNECT a.example:443 HTTP/1.1", "Host: a.example:443"]);
    assert_eq!(name_port(&agree), ("a.example".to_owned(), Some(443)));
    for host in ["evil.example:443", "a.example:8443", "a.example"] {
        let head = request(&["CONNECT a.example:443 HTTP/1.1", &format!("Host: {host}")]);
        assert_eq!(host_of(&head), HostHeader::Invalid, "{host}");
    }
}

#[test]
fn line_endings_must_be_crlf() {
    assert_eq!(
        opaque_reason(b"GET / HTTP/1.1\nHost: a.example\r\n\r\n"),
        "bare LF: a line does not end in CRLF"
    );
    assert_eq!(
        opaque_reason(b"GET / HTTP/1.1\r\nHost: a.example\r\n\n"),
        "bare LF: a line does not end in CRLF"
    );
    assert_eq!(
        opaque_reason(b"GET / HTTP/1.1\r\nHost: a.example\rX-A: 1\r\n"),
        "bad byte in header value"
    );
    // A CR as the last byte may be followed by its LF.
    assert_eq!(sniff(b"GET / HTTP/1.1\r"), Sniff::NeedMore);
    assert_eq!(
        sniff(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r"),
        Sniff::NeedMore
    );
}

#[test]
fn malformed_header_fields_are_opaque() {
    let cases: [(&[u8], &str); 6] = [
        (
            b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n",
            "bad byte in header name",
        ),
        (b"GET / HTTP/1.1\r\n: empty\r\n\r\n", "empty header name"),
        (
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "header line without a colon",
        ),
        (
            b"GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            "bad byte in header value",
        ),
        (
            b"GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n",
            "bad byte in header value",
        ),
        (
            b"GET / HTTP/1.1\r\nX(A): 1\r\n\r\n",
            "bad byte in header name",
        ),
    ];
    for (head, reason) in cases {
        assert_eq!(
            opaque_reason(head),
            reason,
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
    // Other headers may carry obs-text; Host may not.
    let latin1 = b"GET / HTTP/1.1\r\nX-Name: caf\xe9\r\nHost: a.example\r\n\r\n";
    assert_eq!(name_port(latin1).0, "a.example");
    let host_latin1 = b"GET / HTTP/1.1\r\nHost: caf\xe9.example\r\n\r\n";
    assert_eq!(host_of(host_latin1), HostHeader::Invalid);
}

#[test]
fn at_most_100_header_fields_are_accepted() {
    let mut lines = vec!["GET / HTTP/1.1".to_owned(), "Host: a.example".to_owned()];
    for i in 1..MAX_HEADER_FIELDS {
        lines.push(format!("X-F{i}: {i}"));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(name_port(&request(&refs)).0, "a.example");
    lines.push("X-One-Too-Many: 1".to_owned());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(
        opaque_reason(&request(&refs)),
        "more than 100 header fields"
    );
}
