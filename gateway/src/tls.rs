//! The TLS side of `connect` listeners with `tls:`: the gateway's certificate and key, the trust
//! bundles for client certificates and `clientAuth`, held in a [`CertStore`] that reloads them.
//!
//! The files' directories are watched, not the files (a Kubernetes Secret mount swaps a `..data`
//! symlink), plus a periodic check. New material is loaded and validated off the hot path, then
//! swapped atomically; new handshakes use it at once. A broken file is logged and counted, and the
//! last good material stays. Each swap builds a new rustls configuration with its own session
//! cache, so no session made under old trust bundles can be resumed under new ones; and tunnels
//! whose certificate no longer chains to a trusted CA are closed ([`CertStore::until_untrusted`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use egress_certs::pem::{load_bundle, load_chain, load_key};
use egress_certs::server::{client_verifier, server_config, still_trusted, ClientAuth};
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuthMode, TlsConfig};
use crate::metrics::Metrics;

/// One generation of a listener's TLS material.
pub struct TlsMaterial {
    pub acceptor: TlsAcceptor,
    pub verifier: Arc<dyn ClientCertVerifier>,
    fingerprint: Vec<u8>,
}

fn fingerprint(cfg: &TlsConfig) -> anyhow::Result<Vec<u8>> {
    let mut h = Sha256::new();
    for p in [&cfg.cert, &cfg.key].into_iter().chain(&cfg.client_ca) {
        let bytes =
            std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", p.display()))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().to_vec())
}

/// Loads and validates one generation. Errors name the file and what is wrong with it.
pub fn load(cfg: &TlsConfig) -> anyhow::Result<TlsMaterial> {
    let fingerprint = fingerprint(cfg)?;
    let chain = load_chain(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let roots = load_bundle(&cfg.client_ca)?;
    let auth = match cfg.client_auth {
        ClientAuthMode::Required => ClientAuth::Required,
        ClientAuthMode::Optional => ClientAuth::Optional,
    };
    let verifier = client_verifier(roots, auth)?;
    let config = server_config(chain, key, Arc::clone(&verifier))?;
    Ok(TlsMaterial {
        acceptor: TlsAcceptor::from(config),
        verifier,
        fingerprint,
    })
}

/// A caller's client certificate chain, and the generation of the material whose trust bundles
/// verified it in the handshake.
pub struct Presented {
    pub chain: Vec<CertificateDer<'static>>,
    pub generation: u64,
}

/// The live TLS material of one listener.
pub struct CertStore {
    listener: String,
    cfg: TlsConfig,
    current: ArcSwap<TlsMaterial>,
    generation: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl CertStore {
    pub fn open(
        listener: &str,
        cfg: TlsConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let material = load(&cfg)?;
        Ok(Arc::new(CertStore {
            listener: listener.to_owned(),
            cfg,
            current: ArcSwap::from_pointee(material),
            generation: watch::Sender::new(0),
            metrics,
        }))
    }

    /// The material for a new handshake.
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.load_full()
    }

    /// Reloads when the files changed. Blocking: call it off the async workers.
    fn reload(&self) -> anyhow::Result<bool> {
        if fingerprint(&self.cfg)? == self.current.load().fingerprint {
            return Ok(false);
        }
        let material = load(&self.cfg)?;
        self.current.store(Arc::new(material));
        self.generation.send_modify(|g| *g += 1);
        Ok(true)
    }

    /// The generation of the material, one more at every reload. Read it before
    /// [`current`](Self::current) for a handshake: a reload stores the new material first and
    /// counts it after, so the generation read is never newer than the material.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Whether `presented` (verified in a handshake) still passes the current trust bundles: the
    /// same generation, or a later one that still trusts it.
    pub fn still_trusts(&self, presented: &Presented) -> bool {
        self.generation() == presented.generation
            || still_trusted(self.current().verifier.as_ref(), &presented.chain)
    }

    /// Resolves once `presented` (a live tunnel's client certificate) no longer passes the
    /// current trust bundles; never, while it does. A reload between its handshake and this
    /// call counts: the chain is checked at once then.
    pub async fn until_untrusted(&self, presented: &Presented) {
        let mut rx = self.generation.subscribe();
        let mut seen = *rx.borrow_and_update();
        loop {
            if seen != presented.generation
                && !still_trusted(self.current().verifier.as_ref(), &presented.chain)
            {
                return;
            }
            if rx.changed().await.is_err() {
                break;
            }
            seen = *rx.borrow_and_update();
        }
        std::future::pending::<()>().await;
    }

    /// Watches the files' directories and reloads on change and every `poll`. Runs until the
    /// process ends.
    pub async fn watch(self: Arc<Self>, poll: Duration) {
        let mut dirs: Vec<PathBuf> = [&self.cfg.cert, &self.cfg.key]
            .into_iter()
            .chain(&self.cfg.client_ca)
            .map(|p| crate::watch::parent_dir(p))
            .collect();
        dirs.sort();
        dirs.dedup();
        let mut trigger = crate::watch::Trigger::new(&dirs, poll, |_| true, "certificates");
        loop {
            trigger.next().await;
            let store = Arc::clone(&self);
            let result = tokio::task::spawn_blocking(move || store.reload()).await;
            match result {
                Ok(Ok(true)) => {
                    tracing::info!(listener = %self.listener, "TLS material reloaded");
                    self.metrics.tls_reload(&self.listener, "ok");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(listener = %self.listener, error = format!("{e:#}"), "TLS material rejected; keeping the last good material");
                    self.metrics.tls_reload(&self.listener, "error");
                }
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    }
}
