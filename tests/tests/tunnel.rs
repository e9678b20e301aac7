//! An allowed CONNECT tunnel end to end: bytes both ways, half-close in each direction, TLS
//! inside the tunnel, optimistic data after the head, plain-HTTP forwarding, and the audit line.

use egress_tests::client::{self, connect, read_to_end};
use egress_tests::dns::DnsServer;
use egress_tests::gateway::Gateway;
use egress_tests::upstream::{Behaviour, TlsUpstream, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn policy(port: u16) -> String {
    format!(
        r#"version: 1
rules:
  - name: batch-to-echo
    action: allow
    from:
      - spiffe: spiffe://corp.example/vm/batch
    to:
      - host: echo.test
        ports: [{port}]
        allowPrivateAddresses: true
  - name: loopback-callers
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: "*.tunnel.test"
        ports: "*"
        allowPrivateAddresses: true
"#
    )
}

fn config(dns: &DnsServer) -> String {
    format!(
        "identity:\n  static:\n    - cidr: 127.0.0.2/32\n      spiffe: spiffe://corp.example/vm/batch\ndns:\n  nameservers: [\"{}\"]\n",
        dns.addr
    )
}

#[tokio::test]
async fn allowed_tunnel_carries_bytes_both_ways_and_survives_client_half_close() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    dns.set("echo.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(echo.addr.port()), &config(&dns)).await;

    let (mut s, r) = connect(
        "127.0.0.2",
        gw.proxy,
        &format!("echo.test:{}", echo.addr.port()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    s.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.expect("echo");
    assert_eq!(&got, b"ping");
    // Half-close from the caller: the upstream sees EOF, finishes, and its EOF comes back.
    s.write_all(b"last").await.expect("write");
    s.shutdown().await.expect("half-close");
    assert_eq!(read_to_end(&mut s).await, b"last");

    let line = gw
        .wait_audit("the tunnel's audit line", |v| v["host"] == "echo.test")
        .await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["reason"], "allowed_by_rule");
    assert_eq!(line["rule"], "batch-to-echo");
    assert_eq!(line["identity"], "spiffe://corp.example/vm/batch");
    assert_eq!(line["identity_source"], "static");
    assert_eq!(line["listener"], "proxy");
    assert_eq!(line["port"], echo.addr.port());
    assert_eq!(line["upstream"], echo.addr.to_string());
    assert_eq!(line["bytes_up"], 8);
    assert_eq!(line["bytes_down"], 8);
    assert_eq!(line["close"], "eof");
    assert!(line["source"]
        .as_str()
        .expect("source")
        .starts_with("127.0.0.2:"));
    for key in [
        "ts",
        "namespace",
        "service_account",
        "pod",
        "duration_ms",
        "shadow",
    ] {
        assert!(line.get(key).is_some(), "audit line lacks {key}: {line}");
    }
}

#[tokio::test]
async fn upstream_half_close_still_lets_the_caller_send() {
    let dns = DnsServer::start().await;
    let up = Upstream::start("127.0.0.1:0", Behaviour::GreetThenHalfClose).await;
    dns.set("greet.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;

    let (mut s, r) = connect(
        "127.0.0.3",
        gw.proxy,
        &format!("greet.tunnel.test:{}", up.addr.port()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    // The greeting may arrive together with the 200 head. Then the upstream half-closes: we
    // see EOF, yet our direction stays open.
    let mut greeting = r.rest.clone();
    let mut buf = [0u8; 16];
    loop {
        let n = s.read(&mut buf).await.expect("read greeting");
        if n == 0 {
            break;
        }
        greeting.extend_from_slice(&buf[..n]);
    }
    assert_eq!(greeting, b"hello");
    s.write_all(b"still here")
        .await
        .expect("write after upstream EOF");
    s.shutdown().await.expect("close");
    egress_tests::eventually("the upstream to receive the late bytes", || {
        (up.received() == b"still here").then_some(())
    })
    .await;
    let line = gw
        .wait_audit("audit line", |v| v["host"] == "greet.tunnel.test")
        .await;
    assert_eq!(line["bytes_up"], 10);
    assert_eq!(line["bytes_down"], 5);
    assert_eq!(line["identity_source"], "none");
    assert_eq!(line["rule"], "loopback-callers");
}

/// Bytes followed by a reset end the tunnel as an error, not as an EOF: the relay takes a short
/// read after the peer's FIN for the end of the stream, and must not do so after a reset.
#[tokio::test]
async fn upstream_reset_after_data_ends_the_tunnel_as_an_error() {
    let dns = DnsServer::start().await;
    let up = Upstream::start("127.0.0.1:0", Behaviour::GreetThenReset).await;
    dns.set("reset.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;

    let (mut s, r) = connect(
        "127.0.0.3",
        gw.proxy,
        &format!("reset.tunnel.test:{}", up.addr.port()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    s.write_all(b"go").await.expect("write");
    let (rest, end) = client::read_until_the_end(&mut s).await;
    let got = [r.rest.clone(), rest].concat();
    assert_eq!(got, b"hello");
    // The upstream's reset is passed on, after its bytes: not a FIN, which would look clean.
    egress_tests::client::assert_reset(&end);
    drop(s);
    let line = gw
        .wait_audit("audit line", |v| v["host"] == "reset.tunnel.test")
        .await;
    assert_eq!(line["close"], "error", "{line}");
}

/// A caller that resets its tunnel has the reset passed on to the upstream, which would
/// otherwise see a FIN and take a cut stream for a whole one.
#[tokio::test]
async fn a_caller_reset_is_passed_on_to_the_upstream() {
    let dns = DnsServer::start().await;
    dns.set("callerreset.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = upstream.local_addr().expect("address").port();
    let (got_first, first) = tokio::sync::oneshot::channel();
    let ended = tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.expect("accept");
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.expect("the first byte");
        let _ = got_first.send(());
        client::read_until_the_end(&mut conn).await
    });
    let (s, r) = connect(
        "127.0.0.3",
        gw.proxy,
        &format!("callerreset.tunnel.test:{port}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let mut s = s;
    s.write_all(b"x").await.expect("write");
    tokio::time::timeout(egress_tests::DEADLINE, first)
        .await
        .expect("the byte reaches the upstream")
        .expect("the upstream says so");
    s.set_zero_linger().expect("SO_LINGER");
    drop(s);
    let (rest, end) = ended.await.expect("the upstream's task");
    assert!(rest.is_empty(), "{rest:?}");
    egress_tests::client::assert_reset(&end);
    let line = gw
        .wait_audit("audit line", |v| v["host"] == "callerreset.tunnel.test")
        .await;
    assert_eq!(line["close"], "error", "{line}");
}

#[tokio::test]
async fn tls_runs_inside_the_tunnel_and_optimistic_bytes_wait_for_the_tunnel() {
    let dns = DnsServer::start().await;
    let tls = TlsUpstream::start("secure.tunnel.test").await;
    dns.set("secure.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;

    let mut s = client::connect_from("127.0.0.4", gw.proxy).await;
    let target = format!("secure.tunnel.test:{}", tls.addr.port());
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("CONNECT");
    let r = client::read_response(&mut s).await;
    assert_eq!(r.status, 200);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.cert_der.clone()).expect("trust the upstream");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("secure.tunnel.test").expect("name");
    let mut t = connector
        .connect(name, s)
        .await
        .expect("TLS handshake through the tunnel");
    t.write_all(b"over tls").await.expect("write");
    let mut got = [0u8; 8];
    t.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"over tls");

    // Bytes sent right behind the CONNECT head are held until the tunnel is up, then delivered.
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    dns.set("opt.tunnel.test", &["127.0.0.1"]);
    let mut s = client::connect_from("127.0.0.4", gw.proxy).await;
    let target = format!("opt.tunnel.test:{}", echo.addr.port());
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\nearly").as_bytes())
        .await
        .expect("CONNECT with early data");
    let r = client::read_response(&mut s).await;
    assert_eq!(r.status, 200);
    let mut got = r.rest.clone();
    while got.len() < 5 {
        let mut b = [0u8; 16];
        let n = s.read(&mut b).await.expect("read");
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"early");
}

#[tokio::test]
async fn absolute_form_http_is_forwarded_once_in_origin_form() {
    let dns = DnsServer::start().await;
    let http = Upstream::start("127.0.0.1:0", Behaviour::Http).await;
    dns.set("web.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;

    let mut s = client::connect_from("127.0.0.5", gw.proxy).await;
    let port = http.addr.port();
    s.write_all(
        format!("GET http://web.tunnel.test:{port}/p?q=1 HTTP/1.1\r\nHost: elsewhere.test\r\nProxy-Authorization: secret\r\nUser-Agent: t\r\n\r\nGET http://other.test/ HTTP/1.1\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send");
    let reply = read_to_end(&mut s).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(reply.ends_with(b"ok"));
    let seen = String::from_utf8(http.received()).expect("ascii");
    assert_eq!(
        seen,
        format!("GET /p?q=1 HTTP/1.1\r\nHost: web.tunnel.test:{port}\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"),
        "the origin sees origin-form, the URI's host, no proxy credentials, and nothing of the second request"
    );
    http.expect_accepted(1).await;
}

#[tokio::test]
async fn curl_fetches_through_the_gateway() {
    let dns = DnsServer::start().await;
    let http = Upstream::start("127.0.0.1:0", Behaviour::Http).await;
    dns.set("curl.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-p", "-x"])
        .arg(format!("http://{}", gw.proxy))
        .arg(format!(
            "http://curl.tunnel.test:{}/hello",
            http.addr.port()
        ))
        .output()
        .await
        .expect("run curl (install it: apt-get install curl)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"ok");
    let denied = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-p", "-x"])
        .arg(format!("http://{}", gw.proxy))
        .arg("http://not-allowed.example:80/")
        .output()
        .await
        .expect("run curl");
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("407"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
}

#[tokio::test]
async fn bulk_transfers_arrive_intact_in_both_directions() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    dns.set("bulk.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    let (s, r) = connect(
        "127.0.0.6",
        gw.proxy,
        &format!("bulk.tunnel.test:{}", echo.addr.port()),
    )
    .await;
    assert_eq!(r.status, 200);
    // 8 MiB of a non-repeating pattern: big enough to take the spliced bulk path.
    let data: Vec<u8> = (0u32..8 * 1024 * 1024 / 4)
        .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
        .collect();
    let (mut rd, mut wr) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(100_003) {
            wr.write_all(chunk).await.expect("write");
        }
        wr.shutdown().await.expect("half-close");
        wr
    });
    let mut got = Vec::with_capacity(data.len());
    tokio::time::timeout(egress_tests::DEADLINE, rd.read_to_end(&mut got))
        .await
        .expect("echo within the deadline")
        .expect("read");
    let _wr = writer.await.expect("writer");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the echoed bytes differ from the sent bytes");
    let line = gw
        .wait_audit("the bulk line", |v| v["host"] == "bulk.tunnel.test")
        .await;
    assert_eq!(line["bytes_up"], data.len());
    assert_eq!(line["bytes_down"], data.len());
}

#[tokio::test]
async fn forwarded_request_bodies_end_where_their_framing_says() {
    let dns = DnsServer::start().await;
    dns.set("body.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    for (framing, body) in [
        ("Content-Length: 11", "hello world".to_owned()),
        (
            "Transfer-Encoding: chunked",
            "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_owned(),
        ),
    ] {
        let http = Upstream::start("127.0.0.1:0", Behaviour::HttpSlurp).await;
        let port = http.addr.port();
        let mut s = client::connect_from("127.0.0.5", gw.proxy).await;
        let head = format!("POST http://body.tunnel.test:{port}/up HTTP/1.1\r\nHost: body.tunnel.test\r\n{framing}\r\n\r\n");
        // The body arrives in two writes, followed by a smuggling attempt that must go nowhere.
        s.write_all(head.as_bytes()).await.expect("head");
        let (a, b) = body.split_at(body.len() / 2);
        s.write_all(a.as_bytes()).await.expect("body part 1");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.write_all(format!("{b}GET http://other.test/ HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .expect("body part 2");
        let reply = read_to_end(&mut s).await;
        assert!(
            reply.starts_with(b"HTTP/1.1 200 OK"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        let seen = String::from_utf8(http.received()).expect("ascii");
        let expected = format!("POST /up HTTP/1.1\r\nHost: body.tunnel.test:{port}\r\n{framing}\r\nConnection: close\r\n\r\n{body}");
        assert_eq!(seen, expected, "{framing}");
    }
}

/// A client that stops sending in the middle of a request body holds its connection only for
/// `upstream.idleTimeout`, as an idle tunnel does, and the audit line says so.
#[tokio::test]
async fn a_stalled_request_body_ends_at_the_idle_timeout() {
    let dns = DnsServer::start().await;
    dns.set("stall.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(
        &policy(1),
        &format!("{}upstream:\n  idleTimeout: 1s\n", config(&dns)),
    )
    .await;
    // It waits for the whole body, as most servers do: it answers nothing.
    let http = Upstream::start("127.0.0.1:0", Behaviour::Sink).await;
    let port = http.addr.port();
    let mut s = client::connect_from("127.0.0.5", gw.proxy).await;
    let head = format!("POST http://stall.tunnel.test:{port}/up HTTP/1.1\r\nHost: stall.tunnel.test\r\nContent-Length: 10\r\n\r\nabc");
    s.write_all(head.as_bytes()).await.expect("head");
    // Seven of the ten body bytes never come, and the client never closes: only the gateway's
    // idle timeout ends the connection (the read gives up after 10 s), with a reset.
    let (got, end) = client::read_until_the_end(&mut s).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    egress_tests::client::assert_reset(&end);
    let line = gw
        .wait_audit("the stalled request's line", |v| {
            v["host"] == "stall.tunnel.test"
        })
        .await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["close"], "idle_timeout");
    // What did reach the upstream (the head and 3 bytes of body) is in the audit line.
    let seen = http.received();
    assert!(seen.ends_with(b"\r\n\r\nabc"), "{seen:?}");
    assert_eq!(line["bytes_up"], seen.len());
}

/// A client that asks `Expect: 100-continue` gets `100 Continue` from the gateway once the
/// upstream connection is up, sends its body only then, and gets the upstream's answer; the
/// upstream never sees the expectation (so it sends no interim answer of its own).
#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let dns = DnsServer::start().await;
    dns.set("expect.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    let http = Upstream::start("127.0.0.1:0", Behaviour::HttpSlurp).await;
    let port = http.addr.port();
    let mut s = client::connect_from("127.0.0.5", gw.proxy).await;
    let head = format!("PUT http://expect.tunnel.test:{port}/up HTTP/1.1\r\nHost: expect.tunnel.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("head");
    read_exactly(
        &mut s,
        b"HTTP/1.1 100 Continue\r\n\r\n",
        "100 Continue before the body",
    )
    .await;
    s.write_all(b"hello").await.expect("body");
    let reply = read_to_end(&mut s).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let seen = String::from_utf8(http.received()).expect("ascii");
    assert_eq!(
        seen,
        format!("PUT /up HTTP/1.1\r\nHost: expect.tunnel.test:{port}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    );
}

/// An upstream that answers before the request body is whole (here `413`) gets no more of the
/// body, and the caller, still sending, gets the answer at once rather than after the body or
/// the idle timeout: whether the upstream then stops reading and holds the connection, or
/// closes it at once (its unread bytes make the kernel send a reset to the gateway).
#[tokio::test]
async fn an_answer_before_the_end_of_the_body_reaches_the_caller_at_once() {
    const BODY: usize = 64 << 20;
    let dns = DnsServer::start().await;
    dns.set("early.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    for (n, holds) in [(0, true), (1, false)] {
        let host = format!("early{n}.tunnel.test");
        dns.set(&host, &["127.0.0.1"]);
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = upstream.local_addr().expect("address").port();
        tokio::spawn(async move {
            let (mut conn, _) = upstream.accept().await.expect("accept");
            read_head(&mut conn).await;
            let _ = conn
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            if holds {
                let _ = conn.shutdown().await;
                // It reads no more: a gateway that keeps sending the body stalls on a full
                // window.
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
        });
        let s = client::connect_from("127.0.0.5", gw.proxy).await;
        let (mut rx, mut tx) = s.into_split();
        let head = format!("PUT http://{host}:{port}/up HTTP/1.1\r\nHost: {host}\r\nContent-Length: {BODY}\r\n\r\n");
        tx.write_all(head.as_bytes()).await.expect("head");
        let sender = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..BODY / chunk.len() {
                if tx.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        // The caller reads only later, as one busy sending would: the answer must still be there.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut reply = Vec::new();
        let read = tokio::time::timeout(egress_tests::DEADLINE, rx.read_to_end(&mut reply)).await;
        sender.abort();
        assert!(
            matches!(read, Ok(Ok(_))) && reply.starts_with(b"HTTP/1.1 413 Content Too Large\r\n"),
            "holds {holds}: {read:?}: {}",
            String::from_utf8_lossy(&reply)
        );
        let line = gw
            .wait_audit("the early answer's line", |v| v["host"] == host.as_str())
            .await;
        assert_eq!(line["decision"], "allow");
        assert!(
            line["bytes_up"].as_u64().is_some_and(|up| up < BODY as u64),
            "{line}"
        );
        assert_eq!(line["bytes_down"], 72, "{line}");
        if holds {
            assert_eq!(line["close"], "eof");
        }
    }
}

/// Reads as many bytes as `expected` has, within the deadline, and checks they are those.
async fn read_exactly(s: &mut tokio::net::TcpStream, expected: &[u8], what: &str) {
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(egress_tests::DEADLINE, s.read_exact(&mut got))
        .await
        .expect(what)
        .expect("read");
    assert_eq!(got, expected, "{what}");
}

/// Reads one request head from `conn` (and whatever came with it).
async fn read_head(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// An interim answer (`103 Early Hints`) sent while the body is still coming reaches the caller
/// at once, and the body goes on: the caller here sends its body only after it has seen the
/// interim answer, then gets the final one, and the upstream has the whole body.
#[tokio::test]
async fn an_interim_answer_during_the_body_is_relayed_and_the_body_goes_on() {
    let dns = DnsServer::start().await;
    dns.set("hints.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = upstream.local_addr().expect("address").port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.expect("accept");
        let mut got = read_head(&mut conn).await;
        conn.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            .await
            .expect("interim");
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"0123456789") {
            match tokio::time::timeout(egress_tests::DEADLINE, conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        conn.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .expect("final");
        got
    });
    let mut s = client::connect_from("127.0.0.5", gw.proxy).await;
    let head = format!("POST http://hints.tunnel.test:{port}/up HTTP/1.1\r\nHost: hints.tunnel.test\r\nContent-Length: 10\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("head");
    let interim = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
    read_exactly(&mut s, interim, "the interim answer before the body").await;
    s.write_all(b"0123456789").await.expect("body");
    let reply = read_to_end(&mut s).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 201 Created\r\n"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let seen = server.await.expect("server");
    assert!(
        seen.ends_with(b"\r\n\r\n0123456789"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let line = gw
        .wait_audit("the line", |v| v["host"] == "hints.tunnel.test")
        .await;
    assert_eq!(line["close"], "eof");
    assert_eq!(line["bytes_up"], seen.len());
}

/// An answer that the upstream cuts with a reset, after the whole request went up, reaches the
/// caller as far as it came, then as a reset: a caller whose answer ends at the close (no
/// length, not chunked) must not take a cut answer for a whole one. With and without a body.
#[tokio::test]
async fn an_answer_cut_by_an_upstream_reset_ends_in_a_reset_for_the_caller() {
    let dns = DnsServer::start().await;
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    for (n, body) in [(0, ""), (1, "hello")] {
        let host = format!("cut{n}.tunnel.test");
        dns.set(&host, &["127.0.0.1"]);
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = upstream.local_addr().expect("address").port();
        tokio::spawn(async move {
            let (mut conn, _) = upstream.accept().await.expect("accept");
            let mut request = read_head(&mut conn).await;
            let mut buf = [0u8; 64];
            while !request.ends_with(body.as_bytes()) {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => request.extend_from_slice(&buf[..k]),
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\npart of it").await;
            let _ = conn.set_zero_linger();
        });
        let mut s = client::connect_from("127.0.0.5", gw.proxy).await;
        let method = if body.is_empty() { "GET" } else { "POST" };
        let request = format!(
            "{method} http://{host}:{port}/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.expect("request");
        let (got, end) = client::read_until_the_end(&mut s).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            "HTTP/1.1 200 OK\r\n\r\npart of it",
            "{method}"
        );
        assert_eq!(
            end.as_ref().map_err(std::io::Error::kind).err(),
            Some(std::io::ErrorKind::ConnectionReset),
            "{method}: {end:?}"
        );
        let line = gw
            .wait_audit("the cut answer's line", |v| v["host"] == host.as_str())
            .await;
        assert_eq!(line["close"], "error", "{line}");
        assert_eq!(line["bytes_down"], 29, "{line}");
    }
}

/// Bytes the caller sends after its request (a pipelined request here) are never forwarded, and
/// must not cost it the end of its answer: a socket closed with unread bytes is reset at once,
/// and what the caller had not yet received would be lost.
#[tokio::test]
async fn bytes_after_the_request_do_not_cut_the_answer_short() {
    const ANSWER: usize = 8 << 20;
    let dns = DnsServer::start().await;
    dns.set("pipelined.tunnel.test", &["127.0.0.1"]);
    let gw = Gateway::start(&policy(1), &config(&dns)).await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = upstream.local_addr().expect("address").port();
    let (forwarded, head_forwarded) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.expect("accept");
        read_head(&mut conn).await;
        let _ = forwarded.send(());
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {ANSWER}\r\n\r\n");
        let _ = conn.write_all(head.as_bytes()).await;
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..ANSWER / chunk.len() {
            if conn.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    // A small receive window keeps the gateway's send queue full until the end of the answer.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    socket
        .bind("127.0.0.5:0".parse().expect("address"))
        .expect("bind");
    let mut s = socket.connect(gw.proxy).await.expect("connect");
    let head = format!(
        "GET http://pipelined.tunnel.test:{port}/ HTTP/1.1\r\nHost: pipelined.tunnel.test\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("request");
    // Once the gateway has forwarded the first request, a second one stays unread in its socket.
    tokio::time::timeout(egress_tests::DEADLINE, head_forwarded)
        .await
        .expect("the request reaches the upstream")
        .expect("the upstream says so");
    s.write_all(b"GET /second HTTP/1.1\r\nHost: pipelined.tunnel.test\r\n\r\n")
        .await
        .expect("second request");
    let (got, end) = client::read_until_the_end(&mut s).await;
    let answer_head = format!("HTTP/1.1 200 OK\r\nContent-Length: {ANSWER}\r\n\r\n");
    assert!(end.is_ok(), "{end:?} after {} bytes", got.len());
    assert_eq!(got.len(), answer_head.len() + ANSWER);
    let line = gw
        .wait_audit("the pipelined request's line", |v| {
            v["host"] == "pipelined.tunnel.test"
        })
        .await;
    assert_eq!(line["close"], "eof", "{line}");
}
