//! The host-matching rules and the address guard of the design, through the real gateway: what
//! a caller asks for, what DNS answers, and what actually gets dialed.

use egress_tests::client::connect;
use egress_tests::dns::DnsServer;
use egress_tests::gateway::Gateway;
use egress_tests::upstream::{Behaviour, Upstream};

const HOSTS_POLICY: &str = r#"version: 1
rules:
  - name: exact
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: api.example.com
        ports: ["*"]
        allowPrivateAddresses: true
      - host: bücher.example
        ports: ["*"]
        allowPrivateAddresses: true
  - name: wildcard
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: "*.example.org"
        ports: ["*"]
        allowPrivateAddresses: true
"#;

async fn status(gw: &Gateway, target: &str) -> (u16, Option<String>) {
    let (_, r) = connect("127.0.0.2", gw.proxy, target).await;
    (r.status, r.proxy_status_error())
}

#[tokio::test]
async fn host_names_match_by_case_trailing_dot_punycode_and_whole_labels() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    for n in [
        "api.example.com",
        "xn--bcher-kva.example",
        "a.example.org",
        "a.b.example.org",
        "example.org",
        "badexample.org",
        "example.org.evil.net",
        "api.example.com.evil.net",
    ] {
        dns.set(n, &["127.0.0.1"]);
    }
    let gw = Gateway::start(
        HOSTS_POLICY,
        &format!("dns:\n  nameservers: [\"{}\"]\n", dns.addr),
    )
    .await;
    let p = echo.addr.port();
    for allowed in [
        "api.example.com",
        "API.Example.COM",
        "api.example.com.",
        "xn--bcher-kva.example",
        "XN--BCHER-KVA.example.",
        "a.example.org",
        "a.b.example.org",
        "A.Example.Org.",
    ] {
        assert_eq!(
            status(&gw, &format!("{allowed}:{p}")).await.0,
            200,
            "{allowed} must be allowed"
        );
    }
    for denied in [
        "example.org",
        "badexample.org",
        "example.org.evil.net",
        "api.example.com.evil.net",
        "xn--pi-7kc.example.com",
    ] {
        let (code, reason) = status(&gw, &format!("{denied}:{p}")).await;
        assert_eq!(
            (code, reason.as_deref()),
            (407, Some("unknown_identity")),
            "{denied} must be denied"
        );
    }
    // IP literals never match host entries, even the address the name resolves to.
    let (code, _) = status(&gw, &format!("127.0.0.1:{p}")).await;
    assert_eq!(code, 407);
    let (code, _) = status(&gw, &format!("[::1]:{p}")).await;
    assert_eq!(code, 407);
    echo.expect_accepted(8).await;
}

const GUARD_POLICY: &str = r#"version: 1
rules:
  - name: public-names
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: "*.guard.test"
        ports: ["*"]
  - name: private-db
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: db.private.test
        ports: ["*"]
        allowPrivateAddresses: true
  - name: loopback-literal
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - cidr: 127.0.0.10/32
        ports: ["*"]
"#;

#[tokio::test]
async fn the_address_guard_refuses_special_addresses_in_every_spelling() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    dns.set("loopback.guard.test", &["127.0.0.1"]);
    dns.set("metadata.guard.test", &["169.254.169.254"]);
    dns.set("mapped.guard.test", &["::ffff:127.0.0.1"]);
    dns.set("nat64.guard.test", &["64:ff9b::7f00:1"]);
    dns.set("teredo.guard.test", &["2001::5601:5601"]);
    dns.set("sixtofour.guard.test", &["2002:a9fe:a9fe::1"]);
    dns.set("v6loop.guard.test", &["::1"]);
    let gw = Gateway::start(
        GUARD_POLICY,
        &format!("dns:\n  nameservers: [\"{}\"]\n", dns.addr),
    )
    .await;
    let p = echo.addr.port();
    for name in [
        "loopback",
        "metadata",
        "mapped",
        "nat64",
        "teredo",
        "sixtofour",
        "v6loop",
    ] {
        let (code, reason) = status(&gw, &format!("{name}.guard.test:{p}")).await;
        assert_eq!(
            (code, reason.as_deref()),
            (403, Some("blocked_address")),
            "{name}"
        );
    }
    // Literals in the request target go through the same guard.
    for literal in [
        "[::ffff:127.0.0.1]",
        "[::ffff:a9fe:a9fe]",
        "[2002:a9fe:a9fe::]",
        "[::]",
        "0.0.0.0",
    ] {
        let (code, _) = status(&gw, &format!("{literal}:{p}")).await;
        assert!(code == 403 || code == 407, "{literal}: {code}");
    }
    echo.expect_no_connection().await;
}

#[tokio::test]
async fn only_the_allowed_answers_of_a_mixed_resolution_are_dialed() {
    let dns = DnsServer::start().await;
    // Two upstreams on one port: 127.0.0.1 is blocked, 127.0.0.7 is excepted by addressGuard.allowed.
    let blocked = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let port = blocked.addr.port();
    let allowed = Upstream::start(&format!("127.0.0.7:{port}"), Behaviour::Echo).await;
    dns.set(
        "mixed.guard.test",
        &["127.0.0.1", "169.254.169.254", "127.0.0.7"],
    );
    let gw = Gateway::start(
        GUARD_POLICY,
        &format!("dns:\n  nameservers: [\"{}\"]\naddressGuard:\n  blocked: [default]\n  allowed: [127.0.0.7/32]\n", dns.addr),
    )
    .await;
    let (code, _) = status(&gw, &format!("mixed.guard.test:{port}")).await;
    assert_eq!(code, 200);
    allowed.expect_accepted(1).await;
    blocked.expect_no_connection().await;
    let line = gw
        .wait_audit("audit", |v| v["host"] == "mixed.guard.test")
        .await;
    assert_eq!(line["upstream"], format!("127.0.0.7:{port}"));
}

#[tokio::test]
async fn allow_private_addresses_and_cidr_rules_are_the_exceptions() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let port = echo.addr.port();
    let ten = Upstream::start(&format!("127.0.0.10:{port}"), Behaviour::Echo).await;
    dns.set("db.private.test", &["127.0.0.1"]);
    dns.set("ten.guard.test", &["127.0.0.10"]);
    let gw = Gateway::start(
        GUARD_POLICY,
        &format!("dns:\n  nameservers: [\"{}\"]\n", dns.addr),
    )
    .await;
    // The host entry says allowPrivateAddresses.
    assert_eq!(status(&gw, &format!("db.private.test:{port}")).await.0, 200);
    // The literal lies in an allowing rule's cidr entry.
    assert_eq!(status(&gw, &format!("127.0.0.10:{port}")).await.0, 200);
    // A name allowed by one rule resolving into another allow rule's cidr entry.
    assert_eq!(status(&gw, &format!("ten.guard.test:{port}")).await.0, 200);
    // Other loopback literals stay out of reach.
    assert_eq!(status(&gw, &format!("127.0.0.1:{port}")).await.0, 407);
    echo.expect_accepted(1).await;
    ten.expect_accepted(2).await;
}

#[tokio::test]
async fn a_deny_rule_on_an_address_range_applies_to_what_a_name_resolves_to() {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    dns.set("sneaky.guard.test", &["127.0.0.1"]);
    let policy = r#"version: 1
rules:
  - name: names
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: "*.guard.test"
        ports: ["*"]
        allowPrivateAddresses: true
  - name: never-loopback-one
    action: deny
    from:
      - cidr: 127.0.0.0/8
    to:
      - cidr: 127.0.0.1/32
        ports: ["*"]
"#;
    let gw = Gateway::start(
        policy,
        &format!("dns:\n  nameservers: [\"{}\"]\n", dns.addr),
    )
    .await;
    let (code, reason) = status(&gw, &format!("sneaky.guard.test:{}", echo.addr.port())).await;
    assert_eq!((code, reason.as_deref()), (403, Some("denied_by_rule")));
    echo.expect_no_connection().await;
}

#[tokio::test]
async fn the_gateway_never_dials_itself_even_when_the_policy_would_allow_it() {
    let policy = "version: 1\nrules:\n  - name: all-loopback\n    action: allow\n    from:\n      - cidr: 127.0.0.0/8\n    to:\n      - cidr: 127.0.0.0/8\n        ports: [\"*\"]\n";
    let gw = Gateway::start(policy, "").await;
    for target in [gw.proxy, gw.admin] {
        let (code, reason) = status(&gw, &target.to_string()).await;
        assert_eq!(
            (code, reason.as_deref()),
            (403, Some("blocked_address")),
            "{target}"
        );
    }
}

#[tokio::test]
async fn a_rebinding_name_is_dialed_only_at_the_addresses_that_passed_the_check() {
    let dns = DnsServer::start().await;
    let blocked = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let port = blocked.addr.port();
    let allowed = Upstream::start(&format!("127.0.0.7:{port}"), Behaviour::Echo).await;
    // TTL 0, and every query flips between an allowed and a blocked address.
    dns.set_rotation("rebind.guard.test", &["127.0.0.7", "127.0.0.1"]);
    let gw = Gateway::start(
        GUARD_POLICY,
        &format!(
            "dns:\n  nameservers: [\"{}\"]\naddressGuard:\n  allowed: [127.0.0.7/32]\n",
            dns.addr
        ),
    )
    .await;
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..10 {
        let (code, reason) = status(&gw, &format!("rebind.guard.test:{port}")).await;
        match code {
            200 => ok += 1,
            403 => {
                assert_eq!(reason.as_deref(), Some("blocked_address"));
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        ok >= 1 && refused >= 1,
        "the answers did not alternate: {ok} allowed, {refused} refused"
    );
    allowed.expect_accepted(ok).await;
    blocked.expect_no_connection().await;
}
