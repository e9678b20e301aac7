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
  - name: invoicer-by-id
    action: allow
    from:
      - spiffe: spiffe://cluster.local/ns/billing/sa/invoicer
    to:
      - host: other.test
        ports: ["*"]
        allowPrivateAddresses: true
  - name: no-cashier
    action: deny
    from:
      - namespace: payments
        serviceAccount: cashier
    to:
      - host: web.test
        ports: ["*"]
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
            "spiffe://cluster.local/ns/payments/sa/cashier",
        ],
    );
    let dns = DnsServer::start().await;
    dns.set("web.test", &["127.0.0.1"]);
    dns.set("other.test", &["127.0.0.1"]);
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
        let seen = s.gw.wait_metric(&sample, 1.0).await;
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
        let seen = s.gw.wait_metric(&sample, 1.0).await;
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

/// A Kubernetes-Secret-shaped directory: files in `..genN/`, `..data` pointing at the newest,
/// and `tls.crt`, `tls.key`, `ca.crt` as symlinks through `..data`.
fn write_secret(dir: &Path, generation: usize, cert: &Path, key: &Path, cas: &[&Path]) {
    let gen_name = format!("..gen{generation}");
    let gen = dir.join(&gen_name);
    std::fs::create_dir_all(&gen).expect("generation dir");
    std::fs::copy(cert, gen.join("tls.crt")).expect("cert");
    std::fs::copy(key, gen.join("tls.key")).expect("key");
    let bundle: String = cas
        .iter()
        .map(|c| std::fs::read_to_string(c).expect("ca"))
        .collect();
    std::fs::write(gen.join("ca.crt"), bundle).expect("bundle");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&gen_name, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap");
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).expect("link");
        }
    }
}

/// A client configuration for `who` of `pki`, trusting the server CAs `server_cas`. It keeps
/// TLS sessions, so connections made with one configuration try to resume.
fn client_config(
    server_cas: &[&Path],
    pki: &Path,
    who: &str,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in server_cas {
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
            roots.add(c.expect("ca cert")).expect("root");
        }
    }
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_file_iter(pki.join(format!("{who}.crt")))
            .expect("cert")
            .map(|c| c.expect("cert"))
            .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.join(format!("{who}.key")))
        .expect("key");
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert"),
    )
}

/// A TLS connection to the gateway as `who` of `pki`, trusting `server_ca`, then CONNECT.
async fn tls_connect(
    gw: &Gateway,
    server_ca: &Path,
    pki: &Path,
    who: &str,
    target: &str,
) -> std::io::Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, u16)> {
    tls_connect_with(gw, client_config(&[server_ca], pki, who), target).await
}

async fn tls_connect_with(
    gw: &Gateway,
    config: std::sync::Arc<rustls::ClientConfig>,
    target: &str,
) -> std::io::Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, u16)> {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await?;
    let mut tls = handshake(tcp, config).await?;
    tls.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
        .await?;
    // With TLS 1.3 a refused client certificate shows up here, as an alert instead of a head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        use tokio::io::AsyncReadExt;
        if tls.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((tls, status))
}

/// The client side of a TLS handshake with the gateway on `tcp`, and nothing sent after it.
async fn handshake(
    tcp: tokio::net::TcpStream,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await
}

/// The `tls:` block of the `connect` listener: server `cert` and `key`, client CAs in `ca`.
fn tls_block(cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "    tls:\n      cert: {}\n      key: {}\n      clientCa: {}\n",
        cert.display(),
        key.display(),
        ca.display()
    )
}

/// A gateway with `policy` and the `connect` listener's `tls` block, `web.test` resolving to a
/// loopback echo upstream, and `extra` appended to its configuration.
async fn echo_gateway(policy: &str, tls: &str, extra: &str) -> (DnsServer, Upstream, Gateway) {
    let dns = DnsServer::start().await;
    dns.set("web.test", &["127.0.0.1"]);
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    let config = format!("dns:\n  nameservers: [\"{}\"]\n{extra}", dns.addr);
    let gw = Gateway::start_with_listener(policy, tls, &config).await;
    (dns, echo, gw)
}

/// A fresh `certs dev` set (gateway, CA, and the `checkout` SVID) under a temporary directory
/// named by `tag`, and an [`echo_gateway`] that serves it.
async fn checkout_gateway(tag: &str, extra: &str) -> (PathBuf, DnsServer, Upstream, Gateway) {
    let pki = temp_dir(tag);
    certs_dev(&pki, &["spiffe://cluster.local/ns/payments/sa/checkout"]);
    let tls = tls_block(
        &pki.join("gateway.crt"),
        &pki.join("gateway.key"),
        &pki.join("ca.crt"),
    );
    let (dns, echo, gw) = echo_gateway(POLICY, &tls, extra).await;
    (pki, dns, echo, gw)
}

#[tokio::test]
async fn certificates_and_trust_bundles_rotate_through_symlink_swaps() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (one, two) = (temp_dir("pki-one"), temp_dir("pki-two"));
    certs_dev(&one, &["spiffe://cluster.local/ns/payments/sa/checkout"]);
    certs_dev(&two, &["spiffe://cluster.local/ns/payments/sa/teller"]);
    let secret = temp_dir("secret");
    write_secret(
        &secret,
        1,
        &one.join("gateway.crt"),
        &one.join("gateway.key"),
        &[&one.join("ca.crt")],
    );
    let tls = tls_block(
        &secret.join("tls.crt"),
        &secret.join("tls.key"),
        &secret.join("ca.crt"),
    );
    let (_dns, echo, gw) = echo_gateway(POLICY, &tls, "").await;
    let target = format!("web.test:{}", echo.addr.port());

    // Generation 1: CA one only. A tunnel from CA one's workload stays open across the changes.
    let (mut live, status) = tls_connect(&gw, &one.join("ca.crt"), &one, "checkout", &target)
        .await
        .expect("connect");
    assert_eq!(status, 200);
    assert!(
        tls_connect(&gw, &one.join("ca.crt"), &two, "teller", &target)
            .await
            .map(|r| r.1)
            .unwrap_or(0)
            != 200
    );

    // Generation 2: the gateway presents CA two's certificate, and trusts both CAs.
    write_secret(
        &secret,
        2,
        &two.join("gateway.crt"),
        &two.join("gateway.key"),
        &[&one.join("ca.crt"), &two.join("ca.crt")],
    );
    let mut rotated = false;
    for _ in 0..150 {
        if let Ok((_, 200)) = tls_connect(&gw, &two.join("ca.crt"), &two, "teller", &target).await {
            rotated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        rotated,
        "new handshakes did not present the new certificate, or CA two's workload was refused"
    );
    live.write_all(b"still")
        .await
        .expect("the live tunnel survives a growing bundle");
    let mut got = [0u8; 5];
    live.read_exact(&mut got).await.expect("echo");
    // CA one's workload, with a client that keeps its TLS sessions: the second connection
    // resumes, which shows that resumption is on.
    let resuming = client_config(
        &[&one.join("ca.crt"), &two.join("ca.crt")],
        &one,
        "checkout",
    );
    let (first, status) = tls_connect_with(&gw, resuming.clone(), &target)
        .await
        .expect("connect");
    assert_eq!(status, 200);
    drop(first);
    let (second, status) = tls_connect_with(&gw, resuming.clone(), &target)
        .await
        .expect("connect");
    assert_eq!(status, 200);
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    drop(second);

    // Generation 3: CA one leaves the bundle. Its workload can no longer connect, and its live
    // tunnel is closed.
    write_secret(
        &secret,
        3,
        &two.join("gateway.crt"),
        &two.join("gateway.key"),
        &[&two.join("ca.crt")],
    );
    let mut out = Vec::new();
    let closed = tokio::time::timeout(egress_tests::DEADLINE, live.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the tunnel of a no-longer-trusted CA stayed open"
    );
    let line = gw
        .wait_audit("the revoked tunnel's line", |v| {
            v["close"] == "trust_revoked"
        })
        .await;
    assert_eq!(
        line["identity"],
        "spiffe://cluster.local/ns/payments/sa/checkout"
    );
    assert!(
        tls_connect(&gw, &two.join("ca.crt"), &one, "checkout", &target)
            .await
            .map(|r| r.1)
            .unwrap_or(0)
            != 200
    );
    // Nor can it come back by resuming the session it had.
    assert!(
        tls_connect_with(&gw, resuming, &target)
            .await
            .map(|r| r.1)
            .unwrap_or(0)
            != 200,
        "a client of a removed CA resumed its way back in"
    );
    assert!(
        gw.metric("egress_tls_reloads_total{listener=\"proxy\",result=\"ok\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );

    // A broken file is rejected and the last good material stays.
    std::fs::create_dir_all(secret.join("..gen4")).expect("dir");
    std::fs::write(secret.join("..gen4/tls.crt"), "garbage").expect("write");
    std::fs::copy(two.join("gateway.key"), secret.join("..gen4/tls.key")).expect("key");
    std::fs::copy(two.join("ca.crt"), secret.join("..gen4/ca.crt")).expect("ca");
    std::os::unix::fs::symlink("..gen4", secret.join("..data_tmp")).expect("symlink");
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).expect("swap");
    let rejected = gw
        .wait_metric(
            "egress_tls_reloads_total{listener=\"proxy\",result=\"error\"}",
            1.0,
        )
        .await;
    assert!(
        rejected.is_some_and(|v| v >= 1.0),
        "the broken certificate was not reported"
    );
    let (_, status) = tls_connect(&gw, &two.join("ca.crt"), &two, "teller", &target)
        .await
        .expect("last good material");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn spiffe_id_and_service_account_selectors_apply_to_mtls_callers() {
    let s = setup("required").await;
    let ca = s.pki.join("ca.crt");
    let port = s.web.addr.port();
    // Allowed by its exact SPIFFE ID, to the one host that rule names.
    let (_, status) = tls_connect(
        &s.gw,
        &ca,
        &s.pki,
        "invoicer",
        &format!("other.test:{port}"),
    )
    .await
    .expect("connect");
    assert_eq!(status, 200);
    // Same namespace as checkout, but a deny rule names its service account.
    let (_, status) = tls_connect(&s.gw, &ca, &s.pki, "cashier", &format!("web.test:{port}"))
        .await
        .expect("connect");
    assert_eq!(status, 403);
    let line =
        s.gw.wait_audit("cashier's line", |v| v["service_account"] == "cashier")
            .await;
    assert_eq!(line["reason"], "denied_by_rule");
    assert_eq!(line["rule"], "no-cashier");
    assert_eq!(line["identity_source"], "mtls");
}

#[tokio::test]
async fn tls_handshakes_count_against_max_connections() {
    let (pki, _dns, echo, gw) =
        checkout_gateway("pki-limit", "limits:\n  maxConnections: 1\n").await;
    let target = format!("web.test:{}", echo.addr.port());
    let (_held, status) = tls_connect(&gw, &pki.join("ca.crt"), &pki, "checkout", &target)
        .await
        .expect("first");
    assert_eq!(status, 200);
    let second = tls_connect(&gw, &pki.join("ca.crt"), &pki, "checkout", &target).await;
    assert!(
        second.is_err(),
        "over the limit, the connection is closed before any handshake"
    );
    let line = gw
        .wait_audit("the overloaded line", |v| v["reason"] == "overloaded")
        .await;
    assert_eq!(line["decision"], "deny");
    assert_eq!(
        gw.metric(
            "egress_connections_total{listener=\"proxy\",decision=\"deny\",reason=\"overloaded\"}"
        )
        .await,
        Some(1.0)
    );
}

/// `headerReadTimeout` bounds the TLS handshake and the request head together, from accept: a
/// caller that spends most of it before the handshake does not get a second allowance after it.
#[tokio::test]
async fn the_handshake_and_the_request_head_share_one_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (pki, _dns, web, gw) =
        checkout_gateway("pki-deadline", "limits:\n  headerReadTimeout: 2s\n").await;
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await.expect("tcp");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let config = client_config(&[&pki.join("ca.crt")], &pki, "checkout");
    let mut tls = handshake(tcp, config).await.expect("handshake");
    // 0.8 s before the handshake and 1.5 s after it: within 2 s of the handshake's end, but past
    // 2 s from accept.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let target = format!("web.test:{}", web.addr.port());
    let _ = tls
        .write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
        .await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(egress_tests::DEADLINE, tls.read_to_end(&mut reply)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let line = gw
        .wait_audit("the timed-out line", |v| v["reason"] == "header_timeout")
        .await;
    assert_eq!(line["decision"], "deny");
}

/// A trust-bundle change between a caller's handshake and its request counts: the caller's
/// certificate is checked again before the decision (here refused, `407`), and a live tunnel
/// whose client certificate is not an X.509-SVID (no identity; allowed by a `cidr` rule) is
/// closed like an identity's when its CA leaves the bundle.
#[tokio::test]
async fn a_ca_removed_after_the_handshake_counts_for_the_request_and_for_non_svid_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (one, two) = (temp_dir("pki-late-one"), temp_dir("pki-late-two"));
    certs_dev(&one, &["spiffe://cluster.local/ns/payments/sa/checkout"]);
    certs_dev(&two, &["spiffe://cluster.local/ns/payments/sa/teller"]);
    let plain = issue(&one, "plain", |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName(
            "plain.test".try_into().expect("ascii"),
        )]
    });
    let secret = temp_dir("secret-late");
    write_secret(
        &secret,
        1,
        &one.join("gateway.crt"),
        &one.join("gateway.key"),
        &[&one.join("ca.crt")],
    );
    let tls = tls_block(
        &secret.join("tls.crt"),
        &secret.join("tls.key"),
        &secret.join("ca.crt"),
    );
    let policy = format!(
        "{POLICY}  - name: loopback-by-address\n    action: allow\n    from:\n      - cidr: 127.0.0.0/8\n    to:\n      - host: web.test\n        ports: [\"*\"]\n        allowPrivateAddresses: true\n"
    );
    let (_dns, echo, gw) = echo_gateway(&policy, &tls, "").await;
    let target = format!("web.test:{}", echo.addr.port());

    // A live tunnel of a certificate without an identity, allowed by address.
    let (mut live, status) = tls_connect(&gw, &one.join("ca.crt"), &one, &plain, &target)
        .await
        .expect("connect");
    assert_eq!(status, 200);
    // An SVID caller that has finished its handshake and not yet sent its request.
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await.expect("tcp");
    let config = client_config(&[&one.join("ca.crt")], &one, "checkout");
    let mut pending = handshake(tcp, config).await.expect("handshake");

    // CA one leaves the bundle.
    write_secret(
        &secret,
        2,
        &two.join("gateway.crt"),
        &two.join("gateway.key"),
        &[&two.join("ca.crt")],
    );
    assert!(gw
        .wait_metric(
            "egress_tls_reloads_total{listener=\"proxy\",result=\"ok\"}",
            1.0
        )
        .await
        .is_some_and(|v| v >= 1.0));

    pending
        .write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(egress_tests::DEADLINE, pending.read_to_end(&mut reply)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 407"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let line = gw
        .wait_audit("the late caller's line", |v| {
            v["reason"] == "unknown_identity"
        })
        .await;
    assert!(
        line["details"]
            .as_str()
            .is_some_and(|d| d.contains("no longer chains to a trusted CA")),
        "{line}"
    );

    let mut out = Vec::new();
    let closed = tokio::time::timeout(egress_tests::DEADLINE, live.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the non-SVID tunnel of a removed CA stayed open"
    );
    let line = gw
        .wait_audit("the revoked tunnel's line", |v| {
            v["close"] == "trust_revoked"
        })
        .await;
    assert_eq!(line["identity_source"], "none");
    assert_eq!(line["rule"], "loopback-by-address");
}

/// A forwarded request with a body from an mTLS caller: the body is decrypted and sent up while
/// the answer comes down through the same TLS session.
#[tokio::test]
async fn an_mtls_caller_forwards_a_request_with_a_body() {
    use tokio::io::AsyncWriteExt;
    let (pki, _dns, _echo, gw) = checkout_gateway("pki-body", "").await;
    let slurp = Upstream::start("127.0.0.1:0", Behaviour::HttpSlurp).await;
    let port = slurp.addr.port();
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await.expect("tcp");
    let config = client_config(&[&pki.join("ca.crt")], &pki, "checkout");
    let mut tls = handshake(tcp, config).await.expect("handshake");
    let request = format!("POST http://web.test:{port}/in HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n\r\nhello");
    tls.write_all(request.as_bytes()).await.expect("request");
    let reply = egress_tests::client::read_to_end(&mut tls).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(
        String::from_utf8(slurp.received()).expect("ascii"),
        format!("POST /in HTTP/1.1\r\nHost: web.test:{port}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    );
    let line = gw
        .wait_audit("the body's line", |v| {
            v["close"] == "eof" && v["bytes_down"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(line["identity_source"], "mtls");
}
