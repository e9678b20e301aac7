//! Pod identity from the Kubernetes API, end to end: the real gateway binary watches the test API
//! server (HTTPS, bearer token, a real kubeconfig, real Pod JSON), and callers bound to loopback
//! addresses play the Pods.

use std::time::Duration;

use egress_tests::apiserver::{ApiServer, PodBuilder};
use egress_tests::client::connect;
use egress_tests::gateway::Gateway;
use egress_tests::upstream::{Behaviour, Upstream};

const POLICY: &str = r#"version: 1
rules:
  - name: checkout-to-api
    action: allow
    from:
      - namespace: payments
        serviceAccount: checkout
    to:
      - host: api.example.com
        ports: ["*"]
        allowPrivateAddresses: true
  - name: gold-tier
    action: allow
    from:
      - podLabels: {tier: gold}
        via: [kubernetes]
    to:
      - host: gold.example.com
        ports: ["*"]
        allowPrivateAddresses: true
  - name: web-by-spiffe
    action: allow
    from:
      - spiffe: spiffe://cluster.local/ns/web/sa/*
    to:
      - host: web.example.com
        ports: ["*"]
        allowPrivateAddresses: true
"#;

fn config(api: &ApiServer, extra: &str) -> String {
    format!(
        "identity:\n  kubernetes:\n    enabled: true\n    kubeconfig: {}\n{extra}dns:\n  hosts:\n    api.example.com: [127.0.0.1]\n    gold.example.com: [127.0.0.1]\n    web.example.com: [127.0.0.1]\n",
        api.kubeconfig().display()
    )
}

/// A running Pod of the payments namespace with the `checkout` service account.
fn checkout(name: &str, ip: &str) -> serde_json::Value {
    PodBuilder::new("payments", name, ip)
        .service_account("checkout")
        .build()
}

/// An API server with `checkout-1` (127.0.0.2), an echo upstream, and the target that reaches
/// it through the `api.example.com` rule.
async fn api_and_echo() -> (ApiServer, Upstream, String) {
    let api = ApiServer::start().await;
    api.upsert(checkout("checkout-1", "127.0.0.2"));
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let target = format!("api.example.com:{}", echo.addr.port());
    (api, echo, target)
}

async fn status(gw: &Gateway, source: &str, target: &str) -> (u16, Option<String>) {
    let (_, r) = connect(source, gw.proxy, target).await;
    (r.status, r.proxy_status_error())
}

/// A connection from `source` to `target` gets `code` at once.
async fn expect(gw: &Gateway, source: &str, target: &str, code: u16) {
    let (got, err) = status(gw, source, target).await;
    assert_eq!(got, code, "{source} -> {target}: {err:?}");
}

/// Waits until `/readyz` answers 200: the first full list is in.
async fn wait_ready(gw: &Gateway) {
    let end = tokio::time::Instant::now() + egress_tests::DEADLINE;
    loop {
        if gw.admin_get("/readyz").await.0 == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "gateway never became ready: {}",
            gw.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the API server and waits until the gateway's watch has failed on it.
async fn stop_and_wait_for_the_gateway_to_notice(api: &mut ApiServer, gw: &Gateway) {
    api.stop();
    assert!(
        gw.wait_metric("egress_pod_cache_watch_errors_total", 1.0)
            .await
            >= Some(1.0),
        "the gateway sees the API server go away"
    );
}

/// Polls until a connection from `source` to `target` gets `want`, within the deadline.
async fn until_status(gw: &Gateway, source: &str, target: &str, want: u16) {
    let end = tokio::time::Instant::now() + egress_tests::DEADLINE * 2;
    loop {
        let (got, _) = status(gw, source, target).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{source} -> {target}: still {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pods_are_allowed_or_denied_by_namespace_service_account_and_labels() {
    let api = ApiServer::start().await;
    api.upsert(checkout("checkout-1", "127.0.0.2"));
    api.upsert(
        PodBuilder::new("payments", "batch-1", "127.0.0.3")
            .service_account("batch")
            .label("tier", "gold")
            .build(),
    );
    api.upsert(
        PodBuilder::new("web", "frontend-1", "127.0.0.4")
            .service_account("frontend")
            .build(),
    );
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let p = echo.addr.port();
    let gw = Gateway::start(POLICY, &config(&api, "")).await;
    wait_ready(&gw).await;

    expect(&gw, "127.0.0.2", &format!("api.example.com:{p}"), 200).await;
    // Same namespace, other service account.
    expect(&gw, "127.0.0.3", &format!("api.example.com:{p}"), 403).await;
    // A label rule.
    expect(&gw, "127.0.0.3", &format!("gold.example.com:{p}"), 200).await;
    expect(&gw, "127.0.0.2", &format!("gold.example.com:{p}"), 403).await;
    // The SPIFFE ID built from namespace and service account.
    expect(&gw, "127.0.0.4", &format!("web.example.com:{p}"), 200).await;
    expect(&gw, "127.0.0.4", &format!("api.example.com:{p}"), 403).await;
    // Not a Pod: no identity.
    let (code, err) = status(&gw, "127.0.0.9", &format!("api.example.com:{p}")).await;
    assert_eq!(code, 407);
    assert!(err.is_some_and(|e| e.contains("unknown_identity")));

    let line = gw
        .wait_audit("audit line", |a| {
            a["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.2:"))
        })
        .await;
    assert_eq!(line["identity_source"], "kubernetes");
    assert_eq!(line["pod"], "checkout-1");
    assert_eq!(line["namespace"], "payments");
    assert_eq!(line["service_account"], "checkout");
    assert_eq!(
        line["identity"],
        "spiffe://cluster.local/ns/payments/sa/checkout"
    );
    assert_eq!(line["rule"], "checkout-to-api");
    assert!(api.unauthorized() == 0);
    assert_eq!(gw.metric("egress_pod_cache_pods").await, Some(3.0));
    assert_eq!(gw.metric("egress_pod_cache_synced").await, Some(1.0));
}

#[tokio::test]
async fn a_reused_address_is_nobodys_until_the_old_pod_is_gone() {
    let (api, _echo, target) = api_and_echo().await;
    let gw = Gateway::start(POLICY, &config(&api, "")).await;
    wait_ready(&gw).await;
    expect(&gw, "127.0.0.2", &target, 200).await;

    // The old Pod is terminating; its address is handed to a Pod of another namespace while the
    // deletion is still in flight: both claim it.
    api.upsert(
        PodBuilder::new("web", "intruder", "127.0.0.2")
            .service_account("checkout")
            .build(),
    );
    until_status(&gw, "127.0.0.2", &target, 407).await;
    let line = gw
        .wait_audit("audit line", |a| {
            a["decision"] == "deny"
                && a["details"]
                    .as_str()
                    .is_some_and(|d| d.contains("more than one live Pod"))
        })
        .await;
    assert_eq!(line["identity_source"], "none");

    // The old Pod is deleted: the address is the new Pod's, with the new Pod's rights only.
    api.delete("payments", "checkout-1");
    until_status(&gw, "127.0.0.2", &target, 403).await;
    let line = gw
        .wait_audit("audit line", |a| a["pod"] == "intruder")
        .await;
    assert_eq!(line["namespace"], "web");
    assert_eq!(line["decision"], "deny");

    // And once that Pod is gone too, nobody.
    api.delete("web", "intruder");
    until_status(&gw, "127.0.0.2", &target, 407).await;
}

#[tokio::test]
async fn host_network_completed_and_addressless_pods_own_nothing() {
    let api = ApiServer::start().await;
    // A host-network Pod reports the node's address: it must not make the node a Pod.
    api.upsert(
        PodBuilder::new("payments", "node-agent", "127.0.0.5")
            .service_account("checkout")
            .host_network()
            .build(),
    );
    // A completed Job Pod keeps its podIP, which a running Pod now has.
    api.upsert(
        PodBuilder::new("payments", "migrate-job", "127.0.0.6")
            .service_account("checkout")
            .phase("Succeeded")
            .build(),
    );
    api.upsert(
        PodBuilder::new("web", "frontend-1", "127.0.0.6")
            .service_account("frontend")
            .build(),
    );
    // Scheduled, no address yet.
    api.upsert(
        PodBuilder::new("payments", "starting", "127.0.0.7")
            .service_account("checkout")
            .without_ip()
            .build(),
    );
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let p = echo.addr.port();
    let gw = Gateway::start(POLICY, &config(&api, "")).await;
    wait_ready(&gw).await;

    expect(&gw, "127.0.0.5", &format!("api.example.com:{p}"), 407).await;
    // The running Pod owns the address, not the completed Job.
    expect(&gw, "127.0.0.6", &format!("api.example.com:{p}"), 403).await;
    expect(&gw, "127.0.0.6", &format!("web.example.com:{p}"), 200).await;
    expect(&gw, "127.0.0.7", &format!("api.example.com:{p}"), 407).await;

    // The starting Pod gets its address: it is known from the next event on.
    api.upsert(
        PodBuilder::new("payments", "starting2", "127.0.0.7")
            .service_account("checkout")
            .build(),
    );
    until_status(&gw, "127.0.0.7", &format!("api.example.com:{p}"), 200).await;
    assert_eq!(gw.metric("egress_pod_cache_pods").await, Some(2.0));
}

#[tokio::test]
async fn known_pods_keep_working_while_the_api_server_is_away_and_it_converges_after() {
    let (mut api, _echo, target) = api_and_echo().await;
    api.upsert(checkout("checkout-2", "127.0.0.3"));
    let gw = Gateway::start(POLICY, &config(&api, "")).await;
    wait_ready(&gw).await;
    assert_eq!(gw.metric("egress_pod_cache_relists_total").await, Some(1.0));

    stop_and_wait_for_the_gateway_to_notice(&mut api, &gw).await;
    assert_eq!(gw.metric("egress_pod_cache_up").await, Some(0.0));
    // Served from the last known map; still ready.
    expect(&gw, "127.0.0.2", &target, 200).await;
    expect(&gw, "127.0.0.3", &target, 200).await;
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
    let age = gw
        .metric("egress_pod_cache_last_event_age_seconds")
        .await
        .expect("age");
    assert!(age >= 0.0);

    // Meanwhile: checkout-2 is deleted and its address reused by another namespace; a new Pod
    // appears; and the history is compacted, so the gateway's resourceVersion is gone (410).
    api.delete("payments", "checkout-2");
    api.upsert(
        PodBuilder::new("web", "frontend-1", "127.0.0.3")
            .service_account("frontend")
            .build(),
    );
    api.upsert(checkout("checkout-3", "127.0.0.4"));
    api.compact();
    let lists_before = api.requests("list");
    api.restart().await;

    assert!(
        gw.wait_metric("egress_pod_cache_relists_total", 2.0).await >= Some(2.0),
        "the gateway re-lists after 410 Gone"
    );
    assert!(api.requests("list") > lists_before);
    until_status(&gw, "127.0.0.4", &target, 200).await;
    expect(&gw, "127.0.0.3", &target, 403).await;
    expect(&gw, "127.0.0.2", &target, 200).await;
    assert_eq!(gw.metric("egress_pod_cache_pods").await, Some(3.0));
    assert_eq!(gw.metric("egress_pod_cache_up").await, Some(1.0));
}

/// With `maxStaleness`, the last known Pods are trusted only that long into a watch failure: then
/// their addresses get no Pod identity, and the details say why. An API server that answers but
/// cannot list does not end that; a complete list does.
#[tokio::test]
async fn with_max_staleness_known_pods_lose_their_identity_when_the_watch_fails_too_long() {
    let (mut api, _echo, target) = api_and_echo().await;
    let gw = Gateway::start(POLICY, &config(&api, "    maxStaleness: 1s\n")).await;
    wait_ready(&gw).await;
    expect(&gw, "127.0.0.2", &target, 200).await;

    stop_and_wait_for_the_gateway_to_notice(&mut api, &gw).await;
    until_status(&gw, "127.0.0.2", &target, 407).await;
    let line = gw
        .wait_audit("the withheld identity", |a| {
            a["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.2:"))
                && a["reason"] == "unknown_identity"
        })
        .await;
    assert!(line["identity"].is_null(), "{line}");
    let details = line["details"].as_str().expect("details");
    assert!(details.contains("Pod identity withheld"), "{details}");
    // Still ready: callers with a certificate or a static identity are not affected.
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
    let stale = gw.metric("egress_pod_cache_stale_seconds").await;
    assert!(
        stale > Some(1.0),
        "stale for longer than maxStaleness: {stale:?}"
    );

    // The API server comes back without its history and with etcd away: the resumed watch gets
    // 410 Gone, and every re-list fails. The watcher starts each attempt afresh, but nothing of
    // that makes the map current: the identity stays withheld through several retries.
    api.fail_lists(true);
    api.compact();
    api.restart().await;
    for attempt in 0..7 {
        expect(&gw, "127.0.0.2", &target, 407).await;
        if attempt < 6 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert!(api.requests("list") >= 1, "the gateway tried to re-list");

    // A whole list gets through: the map is current, the Pod is trusted again.
    api.fail_lists(false);
    until_status(&gw, "127.0.0.2", &target, 200).await;
    assert_eq!(gw.metric("egress_pod_cache_stale_seconds").await, Some(0.0));
}

/// With `maxStaleness`, an API server that comes back with nothing new ends the withholding
/// through the probe: a resumed watch says nothing until a Pod changes, so once the watch has not
/// failed for 10 s, the probe's answer makes the map current again.
#[tokio::test]
async fn with_max_staleness_a_quiet_return_of_the_api_server_is_seen_by_the_probe() {
    let (mut api, _echo, target) = api_and_echo().await;
    let gw = Gateway::start(POLICY, &config(&api, "    maxStaleness: 1s\n")).await;
    wait_ready(&gw).await;
    stop_and_wait_for_the_gateway_to_notice(&mut api, &gw).await;
    until_status(&gw, "127.0.0.2", &target, 407).await;

    let lists = api.requests("list");
    api.restart().await;
    // About 10 s of quiet after the last failure, then the next probe (every 5 s); no Pod changes.
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (got, _) = status(&gw, "127.0.0.2", &target).await;
        if got == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "still {got} 40 s after the API server came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(gw.metric("egress_pod_cache_stale_seconds").await, Some(0.0));
    // No re-list made it current: only probes (lists of one) reached the API server.
    assert_eq!(gw.metric("egress_pod_cache_relists_total").await, Some(1.0));
    assert!(api.requests("list") > lists, "the probe asked");
}

#[tokio::test]
async fn not_ready_before_the_first_full_list() {
    let (mut api, _echo, target) = api_and_echo().await;
    let kubeconfig = api.kubeconfig();
    api.stop();
    let gw = Gateway::start(
        POLICY,
        &format!(
            "identity:\n  kubernetes:\n    enabled: true\n    kubeconfig: {}\ndns:\n  hosts:\n    api.example.com: [127.0.0.1]\n",
            kubeconfig.display()
        ),
    )
    .await;
    let (code, body) = gw.admin_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("first full list of Pods"), "{body}");
    // Unknown until synced: the Pod's address is nobody's.
    expect(&gw, "127.0.0.2", &target, 407).await;
    assert_eq!(gw.metric("egress_pod_cache_synced").await, Some(0.0));

    api.restart().await;
    wait_ready(&gw).await;
    expect(&gw, "127.0.0.2", &target, 200).await;
}

#[tokio::test]
async fn a_scoped_watch_sees_only_its_namespace_and_labels() {
    let api = ApiServer::start().await;
    api.upsert(
        PodBuilder::new("payments", "checkout-1", "127.0.0.2")
            .service_account("checkout")
            .label("egress", "yes")
            .build(),
    );
    api.upsert(checkout("checkout-2", "127.0.0.3"));
    api.upsert(
        PodBuilder::new("other", "checkout-3", "127.0.0.4")
            .service_account("checkout")
            .label("egress", "yes")
            .build(),
    );
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let target = format!("api.example.com:{}", echo.addr.port());
    let gw = Gateway::start(
        POLICY,
        &config(
            &api,
            "    namespace: payments\n    labelSelector: egress=yes\n",
        ),
    )
    .await;
    wait_ready(&gw).await;
    expect(&gw, "127.0.0.2", &target, 200).await;
    expect(&gw, "127.0.0.3", &target, 407).await;
    expect(&gw, "127.0.0.4", &target, 407).await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_gateway_never_becomes_ready() {
    let api = ApiServer::start().await;
    api.upsert(PodBuilder::new("payments", "checkout-1", "127.0.0.2").build());
    let gw = Gateway::start(
        POLICY,
        &format!(
            "identity:\n  kubernetes:\n    enabled: true\n    kubeconfig: {}\n",
            api.kubeconfig_with_token("wrong").display()
        ),
    )
    .await;
    assert!(
        gw.wait_metric("egress_pod_cache_watch_errors_total", 1.0)
            .await
            >= Some(1.0),
        "the watch fails"
    );
    assert!(api.unauthorized() >= 1);
    assert_eq!(gw.admin_get("/readyz").await.0, 503);
}

#[tokio::test]
async fn an_api_server_certificate_from_another_ca_is_refused_and_no_token_is_sent() {
    let api = ApiServer::start().await;
    api.upsert(checkout("checkout-1", "127.0.0.2"));
    let gw = Gateway::start(
        POLICY,
        &format!(
            "identity:\n  kubernetes:\n    enabled: true\n    kubeconfig: {}\n",
            api.kubeconfig_with_other_ca().display()
        ),
    )
    .await;
    assert!(
        gw.wait_metric("egress_pod_cache_watch_errors_total", 1.0)
            .await
            >= Some(1.0)
    );
    assert_eq!(gw.admin_get("/readyz").await.0, 503);
    // The handshake failed, so no request (and no token) ever reached the server.
    assert_eq!(api.requests("list") + api.requests("watch"), 0);
    assert_eq!(api.unauthorized(), 0);
    assert!(
        gw.logs().iter().any(|l| l.contains("pod watch failed")),
        "{}",
        gw.logs().join("\n")
    );
}

#[tokio::test]
async fn an_unreadable_kubeconfig_stops_the_start() {
    let dir = egress_tests::gateway::temp_dir("kubeconfig");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "identity:\n  kubernetes:\n    enabled: true\n    kubeconfig: {}\n",
            dir.join("missing").display()
        ),
    )
    .expect("write");
    let out = std::process::Command::new(egress_tests::gateway::binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("identity.kubernetes.kubeconfig"), "{err}");
}

#[tokio::test]
async fn the_watch_is_reported_up_again_when_the_api_server_returns_with_nothing_new() {
    let mut api = ApiServer::start().await;
    api.upsert(checkout("checkout-1", "127.0.0.2"));
    let gw = Gateway::start(POLICY, &config(&api, "")).await;
    wait_ready(&gw).await;
    assert_eq!(gw.metric("egress_pod_cache_up").await, Some(1.0));
    api.stop();
    assert!(
        gw.wait_metric("egress_pod_cache_watch_errors_total", 1.0)
            .await
            >= Some(1.0)
    );
    assert_eq!(gw.metric("egress_pod_cache_up").await, Some(0.0));
    // Back, with no change at all: the resumed watch sends no event, the probe sees the server.
    api.restart().await;
    assert_eq!(
        gw.wait_metric("egress_pod_cache_up", 1.0).await,
        Some(1.0),
        "up again without any Pod event"
    );
    assert_eq!(gw.metric("egress_pod_cache_relists_total").await, Some(1.0));
}

/// Who the caller is, per listener: the client certificate when one is presented, else the Pod
/// that owns the source address, else `identity.static`, else nobody; and an address two live
/// Pods claim is nobody's, even inside a static range.
#[tokio::test]
async fn identity_sources_are_tried_in_order_certificate_pod_static() {
    let pki = egress_tests::gateway::temp_dir("pki");
    let out = std::process::Command::new(egress_tests::gateway::binary())
        .args(["certs", "dev", "--out"])
        .arg(&pki)
        .args([
            "--workload",
            "spiffe://cluster.local/ns/billing/sa/invoicer",
        ])
        .output()
        .expect("certs dev");
    assert!(out.status.success());
    let api = ApiServer::start().await;
    api.upsert(checkout("checkout-1", "127.0.0.2"));
    for (ns, name) in [("a", "one"), ("b", "two")] {
        api.upsert(PodBuilder::new(ns, name, "127.0.0.3").build());
    }
    let web = Upstream::start("127.0.0.1:0", Behaviour::Http).await;
    let policy = "version: 1\nrules:\n  - name: loopback\n    action: allow\n    from:\n      - cidr: 127.0.0.0/8\n    to:\n      - host: web.test\n        ports: [\"*\"]\n        allowPrivateAddresses: true\n";
    let kubeconfig = api.kubeconfig();
    let gw = Gateway::start_full(
        policy,
        |policy| {
            format!(
                "listeners:\n  - {{name: plain, kind: connect, address: \"127.0.0.1:0\"}}\n  - name: mtls\n    kind: connect\n    address: \"127.0.0.1:0\"\n    tls: {{cert: {pki}/gateway.crt, key: {pki}/gateway.key, clientCa: {pki}/ca.crt, clientAuth: optional}}\nadmin: {{address: \"127.0.0.1:0\"}}\npolicy: {{path: {}}}\nidentity:\n  kubernetes: {{enabled: true, kubeconfig: {}}}\n  static:\n    - {{cidr: 127.0.0.0/8, spiffe: \"spiffe://corp.example/vm/batch\"}}\ndns: {{hosts: {{web.test: [127.0.0.1]}}}}\nlog: {{format: json, level: info}}\n",
                policy.display(),
                kubeconfig.display(),
                pki = pki.display(),
            )
        },
        None,
    )
    .await;
    wait_ready(&gw).await;
    let address_of = |listener: &str| -> String {
        gw.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "listening" && v["listener"] == listener)
            .and_then(|v| v["address"].as_str().map(str::to_owned))
            .expect("listener address")
    };
    let (plain, mtls) = (address_of("plain"), address_of("mtls"));
    let url = format!("http://web.test:{}/", web.addr.port());
    let curl = |source: &str, args: Vec<String>| {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "--interface",
            source,
        ])
        .args(args)
        .arg(&url);
        cmd
    };
    let pki_file = |f: &str| pki.join(f).display().to_string();
    let cases: [(&str, Vec<String>, &str, &str); 5] = [
        // A Pod's address on the plain listener: the Pod.
        (
            "127.0.0.2",
            vec!["-x".into(), format!("http://{plain}")],
            "kubernetes",
            "spiffe://cluster.local/ns/payments/sa/checkout",
        ),
        // Not a Pod: the static table.
        (
            "127.0.0.9",
            vec!["-x".into(), format!("http://{plain}")],
            "static",
            "spiffe://corp.example/vm/batch",
        ),
        // Two live Pods: nobody, although the static range covers it.
        (
            "127.0.0.3",
            vec!["-x".into(), format!("http://{plain}")],
            "none",
            "",
        ),
        // The Pod's address, with a client certificate: the certificate.
        (
            "127.0.0.2",
            vec![
                "--proxy".into(),
                format!("https://{mtls}"),
                "--proxy-cacert".into(),
                pki_file("ca.crt"),
                "--proxy-cert".into(),
                pki_file("invoicer.crt"),
                "--proxy-key".into(),
                pki_file("invoicer.key"),
            ],
            "mtls",
            "spiffe://cluster.local/ns/billing/sa/invoicer",
        ),
        // The TLS listener without a certificate: the Pod again.
        (
            "127.0.0.2",
            vec![
                "--proxy".into(),
                format!("https://{mtls}"),
                "--proxy-cacert".into(),
                pki_file("ca.crt"),
            ],
            "kubernetes",
            "spiffe://cluster.local/ns/payments/sa/checkout",
        ),
    ];
    for (i, (source, args, want_source, want_id)) in cases.into_iter().enumerate() {
        let out = curl(source, args).output().await.expect("curl");
        let seen = gw.audit().len();
        let line = gw
            .wait_audit("audit line of the case", |a| {
                a["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("{source}:")))
                    && a["identity_source"] == want_source
            })
            .await;
        assert_eq!(
            line["identity"].as_str().unwrap_or_default(),
            want_id,
            "case {i}: {line}"
        );
        if want_source == "none" {
            assert!(
                !out.status.success() || line["decision"] == "allow",
                "case {i}"
            );
        }
        let _ = seen;
    }
}
