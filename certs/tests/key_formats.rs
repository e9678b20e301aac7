//! Every private-key format the gateway accepts (PKCS#8, SEC1/EC, PKCS#1/RSA) loads and forms a
//! usable TLS server configuration with its certificate. Fixtures made with openssl.

use std::path::PathBuf;

use egress_certs::pem::{load_chain, load_key};
use egress_certs::server::{client_verifier, server_config, ClientAuth};
use rustls::pki_types::PrivateKeyDer;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn sec1_pkcs1_and_pkcs8_keys_load_as_their_format() {
    assert!(matches!(
        load_key(&fixture("ec-sec1.key")),
        Ok(PrivateKeyDer::Sec1(_))
    ));
    assert!(matches!(
        load_key(&fixture("rsa-pkcs1.key")),
        Ok(PrivateKeyDer::Pkcs1(_))
    ));
    assert!(matches!(
        load_key(&fixture("ec-pkcs8.key")),
        Ok(PrivateKeyDer::Pkcs8(_))
    ));
}

#[test]
fn each_key_format_makes_a_server_configuration_with_its_certificate() {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            load_chain(&fixture("ec-sec1.crt"))
                .expect("chain")
                .remove(0),
        )
        .expect("root");
    for (cert, key) in [
        ("ec-sec1.crt", "ec-sec1.key"),
        ("rsa-pkcs1.crt", "rsa-pkcs1.key"),
        ("ec-sec1.crt", "ec-pkcs8.key"),
    ] {
        let verifier = client_verifier(roots.clone(), ClientAuth::Required).expect("verifier");
        server_config(
            load_chain(&fixture(cert)).expect("chain"),
            load_key(&fixture(key)).expect("key"),
            verifier,
        )
        .unwrap_or_else(|e| panic!("{cert} + {key}: {e}"));
    }
    // A key that does not belong to the certificate is refused.
    let verifier = client_verifier(roots, ClientAuth::Required).expect("verifier");
    assert!(server_config(
        load_chain(&fixture("ec-sec1.crt")).expect("chain"),
        load_key(&fixture("rsa-pkcs1.key")).expect("key"),
        verifier
    )
    .is_err());
}
