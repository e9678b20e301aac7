//! Every reason code of the design, produced by the situation it names, with its status, its
//! `Proxy-Status` header, its metric, and no connection attempt upstream on any denial.

use std::time::Duration;

use egress_tests::client::{self, connect, read_response};
use egress_tests::dns::DnsServer;
use egress_tests::gateway::Gateway;
use egress_tests::upstream::{Behaviour, Upstream};
use tokio::io::AsyncWriteExt;

fn policy(port: u16) -> String {
    format!(
        r#"version: 1
rules:
  - name: deny-forbidden
    action: deny
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: forbidden.test
        ports: ["*"]
  - name: vm-allowed
    action: allow
    from:
      - spiffe: spiffe://corp.example/vm/batch
    to:
      - host: "*.allowed.test"
        ports: ["*"]
        allowPrivateAddresses: true
      - host: forbidden.test
        ports: ["*"]
        allowPrivateAddresses: true
      - host: private.test
        ports: [{port}]
"#
    )
}

async fn gateway(dns: &DnsServer, echo: &Upstream, extra: &str) -> Gateway {
    for name in [
        "forbidden.test",
        "private.test",
        "unlisted.test",
        "echo.allowed.test",
    ] {
        dns.set(name, &["127.0.0.1"]);
    }
    let config = format!(
        "identity:\n  static:\n    - cidr: 127.0.0.2/32\n      spiffe: spiffe://corp.example/vm/batch\ndns:\n  nameservers: [\"{}\"]\nupstream:\n  connectTimeout: 400ms\nlimits:\n  headerReadTimeout: 700ms\n  maxHeaderBytes: 1024\n{extra}",
        dns.addr
    );
    Gateway::start(&policy(echo.addr.port()), &config).await
}

struct Expect {
    status: u16,
    reason: &'static str,
}

async fn assert_rejected(gw: &Gateway, r: &client::Response, want: Expect) {
    assert_eq!(r.status, want.status, "{}", r.head);
    assert_eq!(
        r.proxy_status_error().as_deref(),
        Some(want.reason),
        "{}",
        r.head
    );
    assert!(r
        .header("proxy-status")
        .expect("Proxy-Status")
        .starts_with("egress-gateway; error="));
    let sample = format!(
        "egress_connections_total{{listener=\"proxy\",decision=\"deny\",reason=\"{}\"}}",
        want.reason
    );
    let line = gw
        .wait_audit(want.reason, |v| v["reason"] == want.reason)
        .await;
    assert_eq!(line["decision"], "deny");
    assert!(
        gw.metric(&sample).await.unwrap_or(0.0) >= 1.0,
        "metric {sample}"
    );
}

#[tokio::test]
async fn policy_refusals_have_their_codes_and_never_reach_the_upstream() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let gw = gateway(&dns, &echo, "").await;
    let port = echo.addr.port();

    // A deny rule wins over an allow rule that also matches.
    let (_, r) = connect("127.0.0.2", gw.proxy, &format!("forbidden.test:{port}")).await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 403,
            reason: "denied_by_rule",
        },
    )
    .await;
    assert!(r
        .header("proxy-status")
        .expect("header")
        .contains("deny-forbidden"));

    // A known caller, no rule for this destination.
    let (_, r) = connect("127.0.0.2", gw.proxy, &format!("unlisted.test:{port}")).await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 403,
            reason: "no_matching_rule",
        },
    )
    .await;

    // An anonymous caller that no rule could allow.
    let (_, r) = connect("127.0.0.3", gw.proxy, &format!("unlisted.test:{port}")).await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 407,
            reason: "unknown_identity",
        },
    )
    .await;
    assert!(
        r.header("proxy-authenticate").is_some(),
        "407 carries a challenge"
    );

    // Allowed by name, but the name resolves to a blocked address.
    let (_, r) = connect("127.0.0.2", gw.proxy, &format!("private.test:{port}")).await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 403,
            reason: "blocked_address",
        },
    )
    .await;

    // Malformed target: no port.
    let (_, r) = connect("127.0.0.2", gw.proxy, "echo.allowed.test").await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 400,
            reason: "bad_request",
        },
    )
    .await;

    echo.expect_no_connection().await;
    // Policy refusals happen before DNS: only private.test was ever looked up.
    assert!(
        dns.names().iter().all(|n| n == "private.test"),
        "{:?}",
        dns.names()
    );
}

#[tokio::test]
async fn numeric_ip_spellings_are_refused_before_any_dns_lookup() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let gw = gateway(&dns, &echo, "").await;
    for target in [
        "2130706433:80",
        "0x7f.1:80",
        "127.1:80",
        "0177.0.0.1:80",
        "[fe80::1%25lo]:80",
        "user@echo.allowed.test:80",
    ] {
        let (_, r) = connect("127.0.0.2", gw.proxy, target).await;
        assert_eq!(r.status, 400, "{target}: {}", r.head);
        assert_eq!(r.proxy_status_error().as_deref(), Some("bad_request"));
    }
    assert_eq!(dns.queries(), 0, "a numeric spelling reached the resolver");
    echo.expect_no_connection().await;
}

#[tokio::test]
async fn resolution_and_dial_failures_have_their_codes() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let gw = gateway(&dns, &echo, "").await;

    let (_, r) = connect("127.0.0.2", gw.proxy, "nxdomain.allowed.test:443").await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 502,
            reason: "dns_failure",
        },
    )
    .await;

    // A port where nothing listens.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    dns.set("closed.allowed.test", &["127.0.0.1"]);
    let (_, r) = connect(
        "127.0.0.2",
        gw.proxy,
        &format!("closed.allowed.test:{closed_port}"),
    )
    .await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 502,
            reason: "upstream_refused",
        },
    )
    .await;

    // A listener whose accept queue is full drops SYNs: the dial times out.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let full = socket.listen(1).expect("listen");
    let full_addr = full.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(200), s.connect(full_addr)).await
        {
            fillers.push(c);
        }
    }
    dns.set("silent.allowed.test", &["127.0.0.1"]);
    let (_, r) = connect(
        "127.0.0.2",
        gw.proxy,
        &format!("silent.allowed.test:{}", full_addr.port()),
    )
    .await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 504,
            reason: "upstream_timeout",
        },
    )
    .await;
    drop(fillers);
}

#[tokio::test]
async fn slow_and_oversized_heads_are_cut_off() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let gw = gateway(&dns, &echo, "").await;

    // A trickle of one byte every 100 ms never completes the head: the whole-head deadline
    // (700 ms) ends it although the client is never idle for long.
    let s = client::connect_from("127.0.0.2", gw.proxy).await;
    let started = tokio::time::Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"CONNECT echo.allowed.test:443 HTTP/1.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head.iter().take(40) {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let r = client::read_response_from(&mut rd).await;
    trickle.abort();
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 408,
            reason: "header_timeout",
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off at the deadline, not when the client stopped"
    );

    let mut s = client::connect_from("127.0.0.2", gw.proxy).await;
    let big = format!(
        "CONNECT echo.allowed.test:443 HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let r = read_response(&mut s).await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 431,
            reason: "header_too_large",
        },
    )
    .await;
    echo.expect_no_connection().await;
}

#[tokio::test]
async fn pipelined_request_after_a_denied_connect_is_never_processed() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let gw = gateway(&dns, &echo, "").await;
    let port = echo.addr.port();
    let mut s = client::connect_from("127.0.0.2", gw.proxy).await;
    s.write_all(
        format!("CONNECT forbidden.test:{port} HTTP/1.1\r\n\r\nCONNECT echo.allowed.test:{port} HTTP/1.1\r\n\r\nGET http://echo.allowed.test:{port}/ HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 403);
    let rest = egress_tests::client::read_to_end(&mut s).await;
    let all = [r.rest.as_slice(), rest.as_slice()].concat();
    assert!(
        !String::from_utf8_lossy(&all).contains("HTTP/1.1"),
        "a second response came back: {}",
        String::from_utf8_lossy(&all)
    );
    gw.wait_audit("the denial", |v| v["reason"] == "denied_by_rule")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo.expect_no_connection().await;
    assert_eq!(
        gw.audit().len(),
        1,
        "exactly one request was handled: {:?}",
        gw.audit()
    );
}

#[tokio::test]
async fn max_connections_answers_503() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let gw = gateway(&dns, &echo, "  maxConnections: 1\n").await;
    let port = echo.addr.port();
    let (_tunnel, r) = connect("127.0.0.2", gw.proxy, &format!("echo.allowed.test:{port}")).await;
    assert_eq!(r.status, 200);
    let (_, r) = connect("127.0.0.2", gw.proxy, &format!("echo.allowed.test:{port}")).await;
    assert_rejected(
        &gw,
        &r,
        Expect {
            status: 503,
            reason: "overloaded",
        },
    )
    .await;
    echo.expect_accepted(1).await;
}
