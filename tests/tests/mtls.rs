//! The `connect` listener with `tls:`: an HTTPS proxy where the caller's SVID is its identity.
//! The client is curl (`--proxy https://… --proxy-cert …`), a real client nobody here wrote, and
//! the certificates come from `egress-gateway certs dev`.

use std::path::{Path, PathBuf};
use std::process::Command;

use egress_tests::dns::DnsServer;
use egress_tests::gateway::{binary, temp_dir, Gateway};
use egress_tests::upstream::{Behaviour, Upstream};

fn certs_dev(dir: &Path, workloads: &[&str]) {
    let mut cmd = Command::new(binary());
    cmd.args(["certs", "dev", "--out"]).arg(dir);
    for w in workloads {
        cmd.args(["--workload", w]);
    }
    let out = cmd.output().expect("certs dev");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const POLICY: &str = r#"version: 1
rules:
  - name: payments-to-web
    action: allow
    from:
      - namespace: payments
        via: [mtls]
    to:
      - host: web.test
        ports: ["*"]
        allowPrivateAddresses: true
"#;

struct Setup {
    _dns: DnsServer,
    web: Upstream,
    gw: Gateway,
    pki: PathBuf,
}

async fn setup(client_auth: &str) -> Setup {
    let pki = temp_dir("pki");
    certs_dev(
        &pki,
        &[
            "spiffe://cluster.local/ns/payments/sa/checkout",
            "spiffe://cluster.local/ns/billing/sa/invoicer",
        ],
    );
    let dns = DnsServer::start().await;
    dns.set("web.test", &["127.0.0.1"]);
    let web = Upstream::start("127.0.0.1:0", Behaviour::Http).await;
    let tls = format!(
        "    tls:\n      cert: {}\n      key: {}\n      clientCa: [{}]\n      clientAuth: {client_auth}\n",
        pki.join("gateway.crt").display(),
        pki.join("gateway.key").display(),
        pki.join("ca.crt").display()
    );
    let gw = Gateway::start_with_listener(
        POLICY,
        &tls,
        &format!("dns:\n  nameservers: [\"{}\"]\n", dns.addr),
    )
    .await;
    Setup {
        _dns: dns,
        web,
        gw,
        pki,
    }
}

/// curl through the HTTPS proxy as `who` (a workload of `pki`, or none); returns (success, stdout, stderr).
async fn curl(s: &Setup, pki: &Path, who: Option<&str>, tunnel: bool) -> (bool, String, String) {
    // tokio's process API: the DNS server and the upstream live on this test's runtime.
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--proxy"])
        .arg(format!("https://{}", s.gw.proxy))
        .arg("--proxy-cacert")
        .arg(s.pki.join("ca.crt"));
    if let Some(w) = who {
        cmd.arg("--proxy-cert").arg(pki.join(format!("{w}.crt")));
        cmd.arg("--proxy-key").arg(pki.join(format!("{w}.key")));
    }
    if tunnel {
        cmd.arg("-p");
    }
    cmd.arg(format!("http://web.test:{}/hello", s.web.addr.port()));
    let out = cmd.output().await.expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_svid_is_allowed_or_denied_as_the_policy_says_for_its_spiffe_id() {
    let s = setup("required").await;
    for tunnel in [true, false] {
        let (ok, body, err) = curl(&s, &s.pki, Some("checkout"), tunnel).await;
        assert!(ok, "checkout (tunnel {tunnel}) must be allowed: {err}");
        assert_eq!(body, "ok");
    }
    let line =
        s.gw.wait_audit("checkout's line", |v| {
            v["identity_source"] == "mtls" && v["decision"] == "allow"
        })
        .await;
    assert_eq!(
        line["identity"],
        "spiffe://cluster.local/ns/payments/sa/checkout"
    );
    assert_eq!(line["namespace"], "payments");
    assert_eq!(line["service_account"], "checkout");
    assert_eq!(line["rule"], "payments-to-web");

    let (ok, _, err) = curl(&s, &s.pki, Some("invoicer"), true).await;
    assert!(!ok && err.contains("403"), "invoicer must get 403: {err}");
    let line =
        s.gw.wait_audit("invoicer's line", |v| {
            v["identity"] == "spiffe://cluster.local/ns/billing/sa/invoicer"
        })
        .await;
    assert_eq!(line["reason"], "no_matching_rule");
    s.web.expect_accepted(2).await;
}

#[tokio::test]
async fn handshakes_without_a_trusted_certificate_fail_and_are_counted_by_reason() {
    let s = setup("required").await;
    let other = temp_dir("other-pki");
    certs_dev(&other, &["spiffe://cluster.local/ns/payments/sa/checkout"]);
    let (ok, _, _) = curl(&s, &other, Some("checkout"), true).await;
    assert!(
        !ok,
        "a certificate from an untrusted CA must not get through"
    );
    let (ok, _, _) = curl(&s, &s.pki, None, true).await;
    assert!(!ok, "no client certificate with clientAuth: required");
    for reason in ["untrusted_ca", "no_client_certificate"] {
        let sample = format!(
            "egress_tls_handshake_failures_total{{listener=\"proxy\",reason=\"{reason}\"}}"
        );
        let mut seen = None;
        for _ in 0..100 {
            seen = s.gw.metric(&sample).await;
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(seen, Some(1.0), "{sample}");
    }
    s.gw.wait_audit("a handshake failure line", |v| {
        v["reason"] == "tls_handshake" && v["details"] == "untrusted_ca"
    })
    .await;
    s.web.expect_no_connection().await;
}

#[tokio::test]
async fn with_optional_client_auth_a_caller_without_certificate_has_no_mtls_identity() {
    let s = setup("optional").await;
    let (ok, _, err) = curl(&s, &s.pki, None, true).await;
    assert!(
        !ok && err.contains("407"),
        "an anonymous caller gets 407: {err}"
    );
    let line =
        s.gw.wait_audit("the anonymous line", |v| v["reason"] == "unknown_identity")
            .await;
    assert_eq!(line["identity_source"], "none");
    let (ok, _, err) = curl(&s, &s.pki, Some("checkout"), true).await;
    assert!(ok, "checkout still gets through: {err}");
}
