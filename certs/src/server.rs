//! The rustls server configuration of a TLS listener that verifies client certificates, and the
//! classification of handshake failures into the bounded `reason` values of
//! `egress_tls_handshake_failures_total`.
//!
//! Each configuration gets its own session cache and never issues tickets, so a session
//! established under one set of trust bundles can never be resumed under another: replacing the
//! configuration is enough to make a removed CA's clients handshake (and fail) again.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};

/// Whether a TLS listener demands a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate, no handshake.
    Required,
    /// A caller without a certificate has no mTLS identity; one with a bad certificate still fails.
    Optional,
}

/// Why a server configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerConfigError {
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("the certificate and key do not form a usable pair: {0}")]
    CertKey(String),
}

/// The verifier of client certificates: they must chain to `roots` and carry the clientAuth
/// extended key usage. It is also what re-checks a live tunnel's certificate after the trust
/// bundles change.
pub fn client_verifier(
    roots: RootCertStore,
    auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, ServerConfigError> {
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::crypto_provider());
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|e| ServerConfigError::Verifier(e.to_string()))
}

/// Builds the server side of an mTLS listener: `chain`/`key` are the gateway's own certificate,
/// `verifier` judges client certificates (see [`client_verifier`]).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, ServerConfigError> {
    let mut config = ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerConfigError::Verifier(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServerConfigError::CertKey(e.to_string()))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    Ok(Arc::new(config))
}

/// Whether a certificate chain presented earlier still passes `verifier` now (after the trust
/// bundles changed, say).
pub fn still_trusted(verifier: &dyn ClientCertVerifier, chain: &[CertificateDer<'static>]) -> bool {
    match chain.split_first() {
        Some((leaf, intermediates)) => verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .is_ok(),
        None => false,
    }
}

/// The `reason` label of a failed handshake: a bounded set of values.
pub fn handshake_failure_reason(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "untrusted_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_eku"
            }
            CertificateError::BadSignature => "bad_signature",
            CertificateError::Revoked => "revoked",
            CertificateError::BadEncoding => "bad_encoding",
            CertificateError::Other(other)
                if format!("{other:?}").contains("CaUsedAsEndEntity") =>
            {
                "ca_leaf"
            }
            _ => "invalid_certificate",
        },
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::PeerIncompatible(_) | rustls::Error::PeerMisbehaved(_) => "protocol",
        rustls::Error::InvalidMessage(_) => "invalid_message",
        _ => "other",
    }
}
