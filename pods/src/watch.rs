//! The Pod watch: list, then watch, re-listing after a reconnect or `410 Gone`, and feeding every
//! event to the [`CacheWriter`].

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};

use crate::{CacheWriter, Pod};

/// Which Pods to watch.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// One namespace, or all of them.
    pub namespace: Option<String>,
    /// A label selector (`app=web,tier!=db`), or every Pod.
    pub label_selector: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config: {0} (set identity.kubernetes.kubeconfig when running outside a cluster)")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Reads and parses a kubeconfig file, so a bad one stops the start like a bad config.
pub fn check_kubeconfig(path: &Path) -> Result<(), WatchError> {
    Kubeconfig::read_from(path)
        .map(drop)
        .map_err(|source| WatchError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })
}

/// A client from a kubeconfig file, or from the in-cluster service account when `kubeconfig` is
/// `None`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, WatchError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| WatchError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => Config::incluster()?,
    };
    Ok(Client::try_from(config)?)
}

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A probe's answer makes the map current again only after this long without a watch failure: a
/// failing watch fails again within `RETRY_MAX` and the time its request takes.
const QUIET: Duration = Duration::from_secs(10);

/// Runs the watch until the task is dropped. Errors (the API server away, a refused request) are
/// logged and retried with a capped exponential backoff; the cache keeps serving what it knows.
pub async fn run(client: Client, scope: Scope, mut writer: CacheWriter) {
    let api: Api<Pod> = match &scope.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut config = watcher::Config::default().page_size(500);
    if let Some(selector) = &scope.label_selector {
        config = config.labels(selector);
    }
    let mut events = std::pin::pin!(watcher(api.clone(), config));
    let mut delay = RETRY_MIN;
    let mut listing = false;
    // After a failure, a resumed watch produces nothing until a Pod changes (bookmarks stay inside
    // the watcher), so while the watch is marked down, a cheap list of one Pod tells whether the
    // API server answers again.
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            _ = probe.tick(), if !writer.cache().is_up() || writer.cache().failing_for().is_some() => {
                let one = kube::api::ListParams::default().limit(1);
                if api.list_metadata(&one).await.is_ok() {
                    writer.cache().probe_answered(QUIET);
                }
                continue;
            }
        };
        let Some(item) = item else { break };
        match item {
            Ok(event) => {
                delay = RETRY_MIN;
                // `Init` is made by the watcher before it lists: nothing from the API server yet.
                if !matches!(event, watcher::Event::Init) {
                    writer.cache().touch();
                }
                match event {
                    watcher::Event::Init => {
                        listing = true;
                        writer.begin_relist();
                    }
                    // A page of a list: the map is current only once the whole list is in.
                    watcher::Event::InitApply(pod) => writer.apply(&pod),
                    // The watch delivers (a resumed watch replays what it missed first).
                    watcher::Event::Apply(pod) => {
                        writer.cache().map_current();
                        writer.apply(&pod);
                    }
                    watcher::Event::Delete(pod) => {
                        writer.cache().map_current();
                        writer.delete(&pod);
                    }
                    watcher::Event::InitDone => {
                        writer.cache().map_current();
                        listing = false;
                        writer.end_relist();
                        let stats = writer.cache().stats();
                        tracing::info!(
                            pods = stats.pods,
                            addresses = stats.addresses,
                            "pod cache: full list in"
                        );
                    }
                }
            }
            Err(e) => {
                writer.cache().watch_failed();
                tracing::warn!(error = %e, retry_in = ?delay, listing, "pod watch failed; serving the last known Pods");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
