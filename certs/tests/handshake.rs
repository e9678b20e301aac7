//! Real TLS handshakes (in memory, rustls on both ends) against the server configuration: which
//! client certificates get through, and the reason each failure is counted under.

use std::sync::Arc;

use egress_certs::server::{
    client_verifier, handshake_failure_reason, server_config, still_trusted, ClientAuth,
};
use egress_certs::spiffe::spiffe_id_of;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
}

fn ca() -> Ca {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA {n}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let der = params.self_signed(&key).expect("ca").der().clone();
    Ca { params, key, der }
}

fn leaf(
    ca: &Ca,
    tweak: impl FnOnce(&mut CertificateParams),
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["gateway.test".to_owned()]).expect("params");
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    tweak(&mut p);
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = p.signed_by(&key, &issuer).expect("leaf");
    (
        cert.der().clone(),
        PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    )
}

fn svid(
    ca: &Ca,
    id: &str,
    tweak: impl FnOnce(&mut CertificateParams),
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    leaf(ca, |p| {
        p.subject_alt_names = vec![SanType::URI(
            rcgen::string::Ia5String::try_from(id).expect("ascii"),
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        tweak(p);
    })
}

/// Runs a handshake; returns the client certificate the server accepted (if any).
fn handshake(
    server_ca: &Ca,
    trusted: &[&Ca],
    auth: ClientAuth,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Result<Option<CertificateDer<'static>>, rustls::Error> {
    let (gw_cert, gw_key) = leaf(server_ca, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
    });
    let mut roots = RootCertStore::empty();
    for ca in trusted {
        roots.add(ca.der.clone()).expect("root");
    }
    let verifier = client_verifier(roots, auth).expect("verifier");
    let server = server_config(vec![gw_cert], gw_key, verifier).expect("server config");
    let mut client_roots = RootCertStore::empty();
    client_roots.add(server_ca.der.clone()).expect("root");
    let builder = ClientConfig::builder_with_provider(egress_certs::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(client_roots);
    let client_config = match client {
        Some((c, k)) => builder
            .with_client_auth_cert(vec![c], k)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let mut c = ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from("gateway.test").expect("name"),
    )
    .expect("client");
    let mut s = ServerConnection::new(server).expect("server");
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
        }
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
        }
        let _ = c.process_new_packets();
        if !s.is_handshaking() && !c.is_handshaking() {
            return Ok(s.peer_certificates().and_then(|p| p.first().cloned()));
        }
    }
    panic!("handshake did not finish");
}

fn reason(r: Result<Option<CertificateDer<'static>>, rustls::Error>) -> &'static str {
    match r {
        Ok(_) => panic!("the handshake must fail"),
        Err(e) => handshake_failure_reason(&e),
    }
}

#[test]
fn a_valid_svid_is_accepted_and_yields_its_spiffe_id() {
    let ca = ca();
    let client = svid(
        &ca,
        "spiffe://cluster.local/ns/payments/sa/checkout",
        |_| {},
    );
    let peer = handshake(&ca, &[&ca], ClientAuth::Required, Some(client)).expect("handshake");
    let id = spiffe_id_of(&peer.expect("peer certificate")).expect("identity");
    assert_eq!(
        id.as_str(),
        "spiffe://cluster.local/ns/payments/sa/checkout"
    );
}

#[test]
fn several_trust_bundles_are_honoured() {
    let (a, b) = (ca(), ca());
    let client = svid(&b, "spiffe://other.example/vm/batch", |_| {});
    assert!(handshake(&a, &[&a, &b], ClientAuth::Required, Some(client)).is_ok());
}

#[test]
fn handshake_failures_are_classified_by_reason() {
    let ca = ca();
    let stranger = self::ca();
    let id = "spiffe://cluster.local/ns/a/sa/b";
    assert_eq!(
        reason(handshake(
            &ca,
            &[&ca],
            ClientAuth::Required,
            Some(svid(&stranger, id, |_| {}))
        )),
        "untrusted_ca"
    );
    assert_eq!(
        reason(handshake(
            &ca,
            &[&ca],
            ClientAuth::Required,
            Some(svid(&ca, id, |p| {
                p.not_before = rcgen::date_time_ymd(2000, 1, 1);
                p.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }))
        )),
        "expired"
    );
    assert_eq!(
        reason(handshake(
            &ca,
            &[&ca],
            ClientAuth::Required,
            Some(svid(&ca, id, |p| {
                p.not_before = rcgen::date_time_ymd(2999, 1, 1);
                p.not_after = rcgen::date_time_ymd(3000, 1, 1);
            }))
        )),
        "not_yet_valid"
    );
    assert_eq!(
        reason(handshake(
            &ca,
            &[&ca],
            ClientAuth::Required,
            Some(svid(&ca, id, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }))
        )),
        "wrong_eku"
    );
    assert_eq!(
        reason(handshake(
            &ca,
            &[&ca],
            ClientAuth::Required,
            Some(svid(&ca, id, |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }))
        )),
        "ca_leaf"
    );
    assert_eq!(
        reason(handshake(&ca, &[&ca], ClientAuth::Required, None)),
        "no_client_certificate"
    );
}

#[test]
fn optional_client_auth_admits_callers_without_a_certificate_but_not_bad_ones() {
    let ca = ca();
    let stranger = self::ca();
    assert_eq!(
        handshake(&ca, &[&ca], ClientAuth::Optional, None).expect("handshake"),
        None
    );
    let bad = svid(&stranger, "spiffe://cluster.local/ns/a/sa/b", |_| {});
    assert_eq!(
        reason(handshake(&ca, &[&ca], ClientAuth::Optional, Some(bad))),
        "untrusted_ca"
    );
}

#[test]
fn a_chain_stops_being_trusted_when_its_ca_leaves_the_bundle() {
    let (a, b) = (ca(), ca());
    let (cert, _) = svid(&a, "spiffe://cluster.local/ns/a/sa/b", |_| {});
    let roots = |cas: &[&Ca]| {
        let mut r = RootCertStore::empty();
        for c in cas {
            r.add(c.der.clone()).expect("root");
        }
        r
    };
    let both = client_verifier(roots(&[&a, &b]), ClientAuth::Required).expect("verifier");
    let only_b = client_verifier(roots(&[&b]), ClientAuth::Required).expect("verifier");
    assert!(still_trusted(both.as_ref(), std::slice::from_ref(&cert)));
    assert!(!still_trusted(only_b.as_ref(), std::slice::from_ref(&cert)));
    assert!(!still_trusted(both.as_ref(), &[]));
}
