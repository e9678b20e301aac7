//! egress-certs: the TLS material of egress-gateway.
//!
//! - [`pem`]: certificate chains, PKCS#8/SEC1/RSA keys and trust bundles from PEM files, with
//!   errors that name the file.
//! - [`spiffe`]: SPIFFE IDs, and their extraction from X.509-SVIDs by the SVID rules.
//! - [`server`]: the rustls server configuration with client-certificate verification
//!   (`clientAuth: required | optional`) and the reasons a handshake fails.
//! - [`dev`]: the development CA, gateway certificate and workload SVIDs of
//!   `egress-gateway certs dev`.
//!
//! The reloadable certificate store comes with the mTLS listener. The crate depends on neither
//! the policy crate nor the gateway.
//!
//! The workspace's one TLS crypto provider is rustls' `ring` provider; [`crypto_provider`] is the
//! single place that names it, so that no second provider (aws-lc-rs) enters the dependency graph.

pub mod dev;
pub mod pem;
pub mod server;
pub mod spiffe;

use std::sync::Arc;

/// The crypto provider every TLS configuration of the gateway is built with.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_provider_offers_tls13_suites() {
        let p = super::crypto_provider();
        assert!(p
            .cipher_suites
            .iter()
            .any(|s| s.version() == &rustls::version::TLS13));
    }
}
