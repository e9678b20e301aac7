//! Upstream options and policy modes seen from outside: idleTimeout, bindAddress, policy-wide
//! audit mode, shadow rules, and the metrics a connection leaves behind.

use egress_tests::client::{connect, read_to_end};
use egress_tests::dns::DnsServer;
use egress_tests::gateway::Gateway;
use egress_tests::upstream::{Behaviour, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"version: 1
rules:
  - name: echo
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: echo.test
        ports: ["*"]
        allowPrivateAddresses: true
"#;

async fn start(policy: &str, extra: &str) -> (DnsServer, Upstream, Gateway) {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    dns.set("echo.test", &["127.0.0.1"]);
    dns.set("other.test", &["127.0.0.1"]);
    let gw = Gateway::start(
        policy,
        &format!("dns:\n  nameservers: [\"{}\"]\n{extra}", dns.addr),
    )
    .await;
    (dns, echo, gw)
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_idle_timeout_and_an_active_one_is_not() {
    let (_dns, echo, gw) = start(POLICY, "upstream:\n  idleTimeout: 600ms\n").await;
    let target = format!("echo.test:{}", echo.addr.port());
    let (mut busy, r) = connect("127.0.0.2", gw.proxy, &target).await;
    assert_eq!(r.status, 200);
    let (mut idle, r) = connect("127.0.0.3", gw.proxy, &target).await;
    assert_eq!(r.status, 200);
    // Keep one tunnel busy across more than two idle periods.
    for _ in 0..8 {
        busy.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        busy.read_exact(&mut b).await.expect("echo");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        read_to_end(&mut idle).await,
        b"",
        "the idle tunnel was closed"
    );
    busy.write_all(b"y").await.expect("busy tunnel still open");
    let mut b = [0u8; 1];
    busy.read_exact(&mut b)
        .await
        .expect("busy tunnel still echoes");
    let line = gw
        .wait_audit("the idle tunnel's line", |v| v["close"] == "idle_timeout")
        .await;
    assert!(line["source"]
        .as_str()
        .expect("source")
        .starts_with("127.0.0.3:"));
}

#[tokio::test]
async fn upstream_connections_leave_from_bind_address() {
    let (_dns, echo, gw) = start(POLICY, "upstream:\n  bindAddress: 127.0.0.9\n").await;
    let (_s, r) = connect(
        "127.0.0.2",
        gw.proxy,
        &format!("echo.test:{}", echo.addr.port()),
    )
    .await;
    assert_eq!(r.status, 200);
    egress_tests::eventually("the upstream connection", || {
        (echo.accepted() == 1).then_some(())
    })
    .await;
    assert_eq!(echo.peers()[0].ip().to_string(), "127.0.0.9");
}

#[tokio::test]
async fn policy_wide_audit_mode_lets_would_deny_through_and_says_so() {
    let policy = "version: 1\nmode: audit\nrules:\n  - name: shadowed\n    action: deny\n    mode: audit\n    from:\n      - cidr: 127.0.0.0/8\n    to:\n      - host: other.test\n        ports: [\"*\"]\n";
    let (_dns, echo, gw) = start(policy, "addressGuard:\n  allowed: [127.0.0.1/32]\n").await;
    let (mut s, r) = connect(
        "127.0.0.2",
        gw.proxy,
        &format!("other.test:{}", echo.addr.port()),
    )
    .await;
    assert_eq!(r.status, 200, "audit mode lets it pass");
    s.write_all(b"z").await.expect("write");
    s.shutdown().await.expect("close");
    assert_eq!(read_to_end(&mut s).await, b"z");
    let line = gw
        .wait_audit("the audit_allow line", |v| v["host"] == "other.test")
        .await;
    assert_eq!(line["decision"], "audit_allow");
    assert_eq!(line["reason"], "unknown_identity");
    assert_eq!(line["shadow"][0]["rule"], "shadowed");
    assert_eq!(line["shadow"][0]["action"], "deny");
    assert_eq!(
        gw.metric("egress_policy_rule_hits_total{rule=\"shadowed\",decision=\"shadow_deny\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_connection_leaves_its_metrics() {
    let (_dns, echo, gw) = start(POLICY, "").await;
    let (mut s, r) = connect(
        "127.0.0.2",
        gw.proxy,
        &format!("echo.test:{}", echo.addr.port()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.metric("egress_active_connections{listener=\"proxy\"}")
            .await,
        Some(1.0)
    );
    s.write_all(b"12345").await.expect("write");
    s.shutdown().await.expect("close");
    assert_eq!(read_to_end(&mut s).await, b"12345");
    gw.wait_audit("the line", |v| v["host"] == "echo.test")
        .await;
    for (sample, want) in [
        ("egress_connections_total{listener=\"proxy\",decision=\"allow\",reason=\"allowed_by_rule\"}", 1.0),
        ("egress_active_connections{listener=\"proxy\"}", 0.0),
        ("egress_bytes_total{listener=\"proxy\",direction=\"up\"}", 5.0),
        ("egress_bytes_total{listener=\"proxy\",direction=\"down\"}", 5.0),
        ("egress_upstream_connect_seconds_count", 1.0),
        ("egress_dns_resolve_seconds_count", 1.0),
        ("egress_policy_rule_hits_total{rule=\"echo\",decision=\"allow\"}", 1.0),
        ("egress_policy_rules", 1.0),
    ] {
        assert_eq!(gw.metric(sample).await, Some(want), "{sample}");
    }
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
}
