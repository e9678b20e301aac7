//! egress-certs: the TLS material of egress-gateway.
//!
//! This crate will own PEM loading (certificate chains, PKCS#8/SEC1/RSA keys, trust bundles), the
//! rustls server configuration with client-certificate verification, SPIFFE ID extraction from
//! X.509-SVIDs, the reloadable certificate store, and the development CA behind
//! `egress-gateway certs dev`. It depends on neither the policy crate nor the gateway.
//!
//! The workspace's one TLS crypto provider is rustls' `ring` provider; [`crypto_provider`] is the
//! single place that names it, so that no second provider (aws-lc-rs) enters the dependency graph.

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
