//! X.509-SVID rules on real certificates: what is an identity and what never is.

use std::path::PathBuf;

use egress_certs::dev;
use egress_certs::pem::{load_bundle, load_chain, load_key, CertError};
use egress_certs::spiffe::{spiffe_id_of, NotAnIdentity, SpiffeId, SpiffeIdError};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("egress-certs-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn cert_with(sans: Vec<SanType>, tweak: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    tweak(&mut p);
    p.self_signed(&key).expect("cert").der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(rcgen::string::Ia5String::try_from(s).expect("ascii"))
}

#[test]
fn dev_certificates_load_back_and_carry_their_ids() {
    let out = temp_dir("dev");
    let ids: Vec<SpiffeId> = [
        "spiffe://cluster.local/ns/payments/sa/checkout",
        "spiffe://corp.example/vm/batch",
    ]
    .iter()
    .map(|s| s.parse().expect("valid"))
    .collect();
    let files = dev::issue(&out, "cluster.local", &ids).expect("issue");
    assert_eq!(files.len(), 8);
    let bundle = load_bundle(&[out.join("ca.crt")]).expect("bundle");
    assert_eq!(bundle.len(), 1);
    load_key(&out.join("gateway.key")).expect("gateway key");
    let gw = load_chain(&out.join("gateway.crt")).expect("gateway chain");
    assert_eq!(spiffe_id_of(&gw[0]), Err(NotAnIdentity::NoUriSan));
    let ca = load_chain(&out.join("ca.crt")).expect("ca");
    assert!(spiffe_id_of(&ca[0]).is_err(), "a CA is never an identity");
    for (id, stem) in ids.iter().zip(["checkout", "batch"]) {
        let chain = load_chain(&out.join(format!("{stem}.crt"))).expect("workload chain");
        assert_eq!(spiffe_id_of(&chain[0]).as_ref(), Ok(id));
        load_key(&out.join(format!("{stem}.key"))).expect("workload key");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("checkout.key"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "keys are private to their owner");
}

#[test]
fn a_valid_svid_is_an_identity() {
    let der = cert_with(
        vec![
            uri("spiffe://td/ns/a/sa/b"),
            SanType::DnsName("a.example".try_into().expect("ascii")),
        ],
        |_| {},
    );
    assert_eq!(
        spiffe_id_of(&der).map(|i| i.to_string()),
        Ok("spiffe://td/ns/a/sa/b".to_owned())
    );
}

#[test]
fn what_is_never_an_identity() {
    let two = cert_with(vec![uri("spiffe://td/a"), uri("spiffe://td/b")], |_| {});
    assert_eq!(spiffe_id_of(&two), Err(NotAnIdentity::SeveralUriSans(2)));
    let dns = cert_with(
        vec![SanType::DnsName(
            "spiffe://td/ns/a/sa/b".try_into().expect("ascii"),
        )],
        |_| {},
    );
    assert_eq!(
        spiffe_id_of(&dns),
        Err(NotAnIdentity::NoUriSan),
        "a DNS SAN is never read as a SPIFFE ID"
    );
    let email = cert_with(
        vec![SanType::Rfc822Name(
            "spiffe://td/x".try_into().expect("ascii"),
        )],
        |_| {},
    );
    assert_eq!(spiffe_id_of(&email), Err(NotAnIdentity::NoUriSan));
    for (id, err) in [
        ("SPIFFE://td/x", SpiffeIdError::Scheme),
        ("spiffe://td/a/../b", SpiffeIdError::DotSegment),
        ("spiffe://td/a%2fb", SpiffeIdError::Forbidden),
        ("spiffe://td/a//b", SpiffeIdError::EmptySegment),
        ("spiffe://td/a/", SpiffeIdError::EmptySegment),
        ("https://td/x", SpiffeIdError::Scheme),
    ] {
        let der = cert_with(vec![uri(id)], |_| {});
        assert_eq!(spiffe_id_of(&der), Err(NotAnIdentity::BadId(err)), "{id}");
    }
    let ca = cert_with(vec![uri("spiffe://td/x")], |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    assert_eq!(spiffe_id_of(&ca), Err(NotAnIdentity::CaLeaf));
    let signer = cert_with(vec![uri("spiffe://td/x")], |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign]
    });
    assert_eq!(spiffe_id_of(&signer), Err(NotAnIdentity::CertSigner));
    assert!(matches!(
        spiffe_id_of(b"not a certificate"),
        Err(NotAnIdentity::Unparsable(_))
    ));
}

#[test]
fn loading_errors_name_the_file_and_the_problem() {
    let dir = temp_dir("errors");
    let missing = dir.join("missing.crt");
    let e = load_chain(&missing).expect_err("missing file");
    assert!(
        matches!(e, CertError::Read { .. }) && e.to_string().contains("missing.crt"),
        "{e}"
    );
    let garbage = dir.join("garbage.crt");
    std::fs::write(&garbage, "hello\n").expect("write");
    let e = load_chain(&garbage).expect_err("no PEM");
    assert!(e.to_string().contains("garbage.crt"), "{e}");
    let e = load_key(&garbage).expect_err("no key");
    assert!(matches!(e, CertError::NoKey { .. }), "{e}");
    let key = KeyPair::generate().expect("key");
    let key_file = dir.join("only-key.pem");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let e = load_chain(&key_file).expect_err("a key is not a certificate");
    assert!(matches!(e, CertError::NoCertificate { .. }), "{e}");
    assert!(
        !format!("{e:?}").contains("PRIVATE KEY"),
        "errors never carry key material"
    );
}

#[test]
fn workload_files_are_named_by_the_last_segment_and_never_collide() {
    let a: SpiffeId = "spiffe://td/ns/x/sa/web".parse().expect("valid");
    let b: SpiffeId = "spiffe://td/ns/y/sa/web".parse().expect("valid");
    assert_eq!(dev::workload_file_stem(&a), "web");
    assert!(matches!(
        dev::issue(&temp_dir("dup"), "td", &[a, b]),
        Err(dev::DevError::DuplicateName(_))
    ));
}
