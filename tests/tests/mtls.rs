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

/// Issues a client certificate from the dev CA in `pki`, shaped by `tweak`; returns its file stem.
fn issue(pki: &Path, stem: &str, tweak: impl FnOnce(&mut rcgen::CertificateParams)) -> String {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).expect("ca.key"))
            .expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki.join("ca.crt")).expect("ca.crt"),
        ca_key,
    )
    .expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/payments/sa/checkout"
            .try_into()
            .expect("ascii"),
    )];
    tweak(&mut p);
    let cert = p.signed_by(&key, &issuer).expect("sign");
    std::fs::write(pki.join(format!("{stem}.crt")), cert.pem()).expect("write");
    std::fs::write(pki.join(format!("{stem}.key")), key.serialize_pem()).expect("write");
    stem.to_owned()
}

fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().expect("ascii"))
}

#[tokio::test]
async fn bad_client_certificates_fail_the_handshake_each_with_its_reason() {
    let s = setup("required").await;
    let cases: Vec<(String, &str)> = vec![
        (
            issue(&s.pki, "expired", |p| {
                p.not_before = rcgen::date_time_ymd(2000, 1, 1);
                p.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }),
            "expired",
        ),
        (
            issue(&s.pki, "future", |p| {
                p.not_before = rcgen::date_time_ymd(2999, 1, 1);
                p.not_after = rcgen::date_time_ymd(3000, 1, 1);
            }),
            "not_yet_valid",
        ),
        (
            issue(&s.pki, "ca-leaf", |p| {
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
            }),
            "ca_leaf",
        ),
        (
            issue(&s.pki, "server-only", |p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]
            }),
            "wrong_eku",
        ),
    ];
    for (stem, reason) in &cases {
        let (ok, _, _) = curl(&s, &s.pki, Some(stem), true).await;
        assert!(!ok, "{stem} must not get through");
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
        assert_eq!(seen, Some(1.0), "{stem}: {sample}");
    }
    s.web.expect_no_connection().await;
}

#[tokio::test]
async fn certificates_that_are_not_svids_give_no_identity() {
    let s = setup("optional").await;
    let cases = [
        issue(&s.pki, "two-uris", |p| {
            p.subject_alt_names = vec![
                uri("spiffe://cluster.local/ns/payments/sa/checkout"),
                uri("spiffe://cluster.local/ns/payments/sa/other"),
            ]
        }),
        issue(&s.pki, "dns-san", |p| {
            p.subject_alt_names = vec![rcgen::SanType::DnsName(
                "spiffe://cluster.local/ns/payments/sa/checkout"
                    .try_into()
                    .expect("ascii"),
            )]
        }),
        issue(&s.pki, "upper", |p| {
            p.subject_alt_names = vec![uri("SPIFFE://cluster.local/ns/payments/sa/checkout")]
        }),
        issue(&s.pki, "dotdot", |p| {
            p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/payments/sa/../checkout")]
        }),
        issue(&s.pki, "escaped", |p| {
            p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/payments%2fsa/checkout")]
        }),
        issue(&s.pki, "empty-seg", |p| {
            p.subject_alt_names = vec![uri("spiffe://cluster.local/ns//payments/sa/checkout")]
        }),
        issue(&s.pki, "trailing", |p| {
            p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/payments/sa/checkout/")]
        }),
    ];
    for stem in &cases {
        let (ok, _, err) = curl(&s, &s.pki, Some(stem), true).await;
        assert!(
            !ok && err.contains("407"),
            "{stem} must be an anonymous caller (407): {err}"
        );
    }
    egress_tests::eventually("an anonymous audit line per certificate", || {
        let anonymous =
            s.gw.audit()
                .iter()
                .filter(|v| v["reason"] == "unknown_identity" && v["identity_source"] == "none")
                .count();
        (anonymous == cases.len()).then_some(())
    })
    .await;
    s.web.expect_no_connection().await;
}
