//! The TLS side of `connect` listeners with `tls:`: the gateway's certificate and key, the trust
//! bundles for client certificates, and `clientAuth`, loaded into a rustls acceptor.

use egress_certs::pem::{load_bundle, load_chain, load_key};
use egress_certs::server::{client_verifier, server_config, ClientAuth};
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuthMode, TlsConfig};

/// Loads the material of one listener. Errors name the file and what is wrong with it.
pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let chain = load_chain(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let roots = load_bundle(&cfg.client_ca)?;
    let auth = match cfg.client_auth {
        ClientAuthMode::Required => ClientAuth::Required,
        ClientAuthMode::Optional => ClientAuth::Optional,
    };
    let config = server_config(chain, key, client_verifier(roots, auth)?)?;
    Ok(TlsAcceptor::from(config))
}
