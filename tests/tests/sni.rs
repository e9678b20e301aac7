//! The `sni` listener on loopback, with real ClientHellos captured from real clients
//! (`sniff/tests/fixtures`): the peeked bytes reach the upstream unchanged, and every way a peek
//! can fail ends in a refusal with its reason: a silent client, a client that dribbles its
//! hello, a hello without a usable name, plain HTTP, garbage. The transparent listener's path
//! through iptables is in `netns.rs`.

use std::time::Duration;

use egress_tests::gateway::Gateway;
use egress_tests::upstream::{Behaviour, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POLICY: &str = r#"version: 1
rules:
  - name: example
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: example.com
        ports: ["*"]
        allowPrivateAddresses: true
"#;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../sniff/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The gateway with one `sni` listener whose upstream port is the echo server's.
async fn start(echo_port: u16) -> Gateway {
    Gateway::start_full(
        POLICY,
        |policy| {
            format!(
                "listeners:\n  - {{name: sni, kind: sni, address: \"127.0.0.1:0\", upstreamPort: {echo_port}}}\nadmin: {{address: \"127.0.0.1:0\"}}\npolicy: {{path: {}}}\ndns: {{hosts: {{example.com: [127.0.0.1]}}}}\nlimits: {{headerReadTimeout: 1s}}\nlog: {{format: json, level: info}}\n",
                policy.display()
            )
        },
        None,
    )
    .await
}

/// Everything the gateway sends back until it closes (bounded in time).
async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    out
}

/// A real ClientHello with one more extension, `encrypted_client_hello` (0xfe0d) with `body`, at
/// the end of its extension block; every enclosing length is fixed up.
fn with_ech(hello: &[u8], body: &[u8]) -> Vec<u8> {
    let ext_len = 4 + body.len();
    let mut out = hello.to_vec();
    out.extend_from_slice(&[0xfe, 0x0d]);
    out.extend_from_slice(&u16::try_from(body.len()).expect("small").to_be_bytes());
    out.extend_from_slice(body);
    let bump16 = |buf: &mut Vec<u8>, at: usize| {
        let v = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize + ext_len;
        buf[at..at + 2].copy_from_slice(&u16::try_from(v).expect("fits").to_be_bytes());
    };
    // Record length (bytes 3-4), handshake length (24 bits at 6-8).
    bump16(&mut out, 3);
    let hs = u32::from_be_bytes([0, out[6], out[7], out[8]]) as usize + ext_len;
    out[6..9].copy_from_slice(&u32::try_from(hs).expect("fits").to_be_bytes()[1..]);
    // The extensions length: after version (2), random (32), session id, suites, compression.
    let mut at = 9 + 2 + 32;
    at += 1 + out[at] as usize;
    at += 2 + u16::from_be_bytes([out[at], out[at + 1]]) as usize;
    at += 1 + out[at] as usize;
    bump16(&mut out, at);
    out
}

const ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

#[tokio::test]
async fn a_real_client_hello_is_replayed_upstream_byte_for_byte() {
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let gw = start(echo.addr.port()).await;
    for capture in ["openssl_s_client_example_com.bin", "curl_example_com.bin"] {
        let hello = fixture(capture);
        let mut s = TcpStream::connect(gw.proxy).await.expect("connect");
        // In two TCP writes, the second after a pause: the peek must wait for the rest.
        let (a, b) = hello.split_at(hello.len() / 2);
        s.write_all(a).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b).await.expect("write");
        let mut back = vec![0u8; hello.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, hello, "{capture}: the upstream got other bytes");
    }
    let line = gw
        .wait_audit("allow", |a| {
            a["decision"] == "allow" && a["host"] == "example.com"
        })
        .await;
    assert_eq!(line["port"], echo.addr.port());
    assert_eq!(line["rule"], "example");

    // With an encrypted_client_hello extension: decided on the outer name, and said so.
    let hello = with_ech(&fixture("openssl_s_client_example_com.bin"), &[0u8; 32]);
    let mut s = TcpStream::connect(gw.proxy).await.expect("connect");
    s.write_all(&hello).await.expect("write");
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, hello);
    drop(s);
    gw.wait_audit("ech", |a| {
        a["decision"] == "allow"
            && a["details"]
                .as_str()
                .is_some_and(|d| d.contains("encrypted_client_hello"))
    })
    .await;
}

/// An upstream that resets after its answer has the reset passed on to the caller, after the
/// answer: a tunnel must not turn a reset into a clean FIN.
#[tokio::test]
async fn an_upstream_reset_is_passed_on_to_the_caller() {
    let up = Upstream::start("127.0.0.1:0", Behaviour::GreetThenReset).await;
    let gw = start(up.addr.port()).await;
    let mut s = TcpStream::connect(gw.proxy).await.expect("connect");
    s.write_all(&fixture("curl_example_com.bin"))
        .await
        .expect("write");
    let (got, end) = egress_tests::client::read_until_the_end(&mut s).await;
    assert_eq!(got, b"hello");
    egress_tests::client::assert_reset(&end);
    let line = gw
        .wait_audit("allow", |a| {
            a["decision"] == "allow" && a["host"] == "example.com"
        })
        .await;
    assert_eq!(line["close"], "error", "{line}");
}

#[tokio::test]
async fn peeks_that_fail_are_refused_with_their_reason() {
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let gw = start(echo.addr.port()).await;

    // Silent until headerReadTimeout.
    let mut s = TcpStream::connect(gw.proxy).await.expect("connect");
    assert!(read_all(&mut s).await.is_empty());
    gw.wait_audit("silent", |a| a["reason"] == "header_timeout")
        .await;

    // A hello without a usable server name gets the TLS alert.
    for (capture, why) in [
        ("openssl_s_client_no_sni.bin", "without a server name"),
        ("openssl_s_client_ip_sni.bin", "IP literal"),
    ] {
        let mut s = TcpStream::connect(gw.proxy).await.expect("connect");
        s.write_all(&fixture(capture)).await.expect("write");
        assert_eq!(read_all(&mut s).await, ACCESS_DENIED, "{capture}");
        gw.wait_audit(capture, |a| {
            a["reason"] == "bad_request" && a["details"].as_str().is_some_and(|d| d.contains(why))
        })
        .await;
    }

    // Plain HTTP is not for an sni listener; garbage is neither TLS nor HTTP. No alert for them.
    for (opening, why) in [
        (fixture("curl_http_get.bin"), "TLS only"),
        (b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(), "neither TLS nor HTTP"),
    ] {
        let mut s = TcpStream::connect(gw.proxy).await.expect("connect");
        s.write_all(&opening).await.expect("write");
        assert!(read_all(&mut s).await.is_empty());
        gw.wait_audit(why, |a| {
            a["reason"] == "bad_request" && a["details"].as_str().is_some_and(|d| d.contains(why))
        })
        .await;
    }

    // A client that dribbles its hello a few bytes at a time runs out of reads.
    let hello = fixture("openssl_s_client_example_com.bin");
    let mut s = TcpStream::connect(gw.proxy).await.expect("connect");
    for piece in hello.chunks(3).take(80) {
        if s.write_all(piece).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = read_all(&mut s).await;
    gw.wait_audit("dribble", |a| {
        a["reason"] == "header_too_large"
            && a["details"].as_str().is_some_and(|d| d.contains("reads"))
    })
    .await;
    assert_eq!(echo.accepted(), 0, "nothing refused may reach the upstream");

    // Each nameless refusal is counted by its cause; plain HTTP had a name (the wrong protocol
    // for this listener) and is not.
    let (_, metrics) = gw.admin_get("/metrics").await;
    let mut nameless: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("egress_nameless_connections_total{"))
        .collect();
    nameless.sort_unstable();
    let expected: Vec<String> = ["ip_sni", "no_sni", "opaque", "silent", "too_large"]
        .iter()
        .map(|cause| {
            format!("egress_nameless_connections_total{{listener=\"sni\",cause=\"{cause}\",decision=\"deny\"}} 1")
        })
        .collect();
    assert_eq!(nameless, expected, "{metrics}");
}
