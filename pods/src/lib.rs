//! Who is behind a source address: a live map from Pod IP to Pod identity, fed by a watch on the
//! Kubernetes API.
//!
//! A wrong answer here gives one Pod another's rights, so the map is built to fail closed:
//!
//! - only Pods that can be sending traffic own their addresses: not `hostNetwork` Pods (their
//!   address is the node's), not Pods in phase `Succeeded` or `Failed` (a completed Pod keeps its
//!   `podIP` after the address has been handed to someone else);
//! - when two live Pods claim one address (an address reused while a deletion is still in
//!   flight), the address resolves to [`Lookup::Conflict`] until only one claim is left;
//! - a deleted Pod's addresses stop resolving to it the moment its deletion is seen;
//! - after a re-list (a reconnect, `410 Gone`), Pods that were not listed are removed.
//!
//! Readers ([`PodCache::lookup`]) never take a lock: the map is a lock-free hash table whose
//! entries hold the one resolved answer per address. The single writer ([`CacheWriter`]) keeps
//! the bookkeeping (which Pods claim which address) to itself and updates an address's entry
//! whenever its set of claims changes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod model;
mod watch;

pub use model::{Pod, PodIp, PodSpec, PodStatus};

pub use watch::{check_kubeconfig, client, run, Scope, WatchError};

/// The identity of one Pod, as the policy sees it. Strings that repeat across Pods (namespace,
/// service account, node, label keys and values) are shared.
#[derive(Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: Arc<str>,
    pub name: Box<str>,
    pub uid: Arc<str>,
    pub service_account: Arc<str>,
    /// Sorted by key; keys are unique.
    pub labels: Box<[(Arc<str>, Arc<str>)]>,
    pub node: Option<Arc<str>>,
}

impl PodIdentity {
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// What the cache knows about one address.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Exactly one live Pod owns the address.
    Pod(Arc<PodIdentity>),
    /// Two or more live Pods claim the address: nobody can be told apart, so nobody is trusted.
    Conflict,
    /// No live Pod owns the address (a node, a host-network Pod, something outside the cluster,
    /// or the cache has not synced yet).
    Unknown,
}

#[derive(Clone, Debug)]
enum Slot {
    Owner(Arc<PodIdentity>),
    Conflict,
}

/// The shared, read-mostly side of the cache.
pub struct PodCache {
    map: papaya::HashMap<IpAddr, Slot>,
    pods: AtomicU64,
    synced: AtomicBool,
    up: AtomicBool,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last item from the API server; 0 = never.
    last_event_ms: AtomicU64,
    /// Milliseconds after `epoch` of the first watch failure since the map was last known to be
    /// current; 0 = it is current.
    failing_since_ms: AtomicU64,
    /// Milliseconds after `epoch` of the last watch failure; 0 = none yet.
    last_failure_ms: AtomicU64,
    relists: AtomicU64,
    errors: AtomicU64,
}

impl Default for PodCache {
    fn default() -> Self {
        PodCache {
            map: papaya::HashMap::new(),
            pods: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            up: AtomicBool::new(false),
            epoch: Instant::now(),
            last_event_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            relists: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

/// Figures for metrics and `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheStats {
    /// Pods that own at least one address.
    pub pods: u64,
    /// Addresses with an entry (owned or in conflict).
    pub addresses: u64,
    /// The first full list is in.
    pub synced: bool,
    /// The watch is connected: the last thing it produced was not an error.
    pub up: bool,
    /// Seconds since the API server last sent anything; `None` before the first.
    pub last_event_age: Option<f64>,
    pub relists: u64,
    pub errors: u64,
}

impl PodCache {
    pub fn new() -> Arc<Self> {
        Arc::new(PodCache::default())
    }

    /// The answer for one source address. Lock-free; one hash lookup and one reference-count
    /// increment.
    pub fn lookup(&self, ip: IpAddr) -> Lookup {
        let ip = ip.to_canonical();
        match self.map.pin().get(&ip) {
            Some(Slot::Owner(p)) => Lookup::Pod(Arc::clone(p)),
            Some(Slot::Conflict) => Lookup::Conflict,
            None => Lookup::Unknown,
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> CacheStats {
        let last = self.last_event_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        CacheStats {
            pods: self.pods.load(Ordering::Relaxed),
            addresses: self.map.len() as u64,
            synced: self.is_synced(),
            up: self.up.load(Ordering::Relaxed),
            last_event_age: (last != 0).then(|| now.saturating_sub(last) as f64 / 1000.0),
            relists: self.relists.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Milliseconds after `epoch`, never 0 (which the fields above use for "never").
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The API server sent something (an object, the end of a list). The map is not necessarily
    /// current yet: a list may still be coming in (see [`PodCache::map_current`]).
    pub fn touch(&self) {
        self.last_event_ms.store(self.now_ms(), Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
    }

    /// The map is known to be current again: a full list is in, or the watch delivers events.
    pub fn map_current(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// The watch is healthy: the last thing it produced was not an error.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The API server answered a probe after a failure, though no event came yet. A resumed watch
    /// says nothing until a Pod changes, so the map counts as current again only if the watch,
    /// which retries within a few seconds, has not failed for `quiet`.
    pub fn probe_answered(&self, quiet: Duration) {
        self.up.store(true, Ordering::Relaxed);
        let quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_failure_ms.load(Ordering::Relaxed);
        if self.now_ms().saturating_sub(last) >= quiet_ms {
            self.map_current();
        }
    }

    /// The watch failed; it will be retried with backoff.
    pub fn watch_failed(&self) {
        self.up.store(false, Ordering::Relaxed);
        let now = self.now_ms();
        self.last_failure_ms.store(now, Ordering::Relaxed);
        // The first failure since the map was current starts the clock; later ones leave it.
        let _ =
            self.failing_since_ms
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// How long the map has gone without being known current since the watch first failed:
    /// `None` while it is current (or before the first failure).
    pub fn failing_for(&self) -> Option<Duration> {
        match self.failing_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(self.now_ms().saturating_sub(since))),
        }
    }
}

/// The one writer: applies what the API server says to the cache.
pub struct CacheWriter {
    cache: Arc<PodCache>,
    /// Live Pods that claim addresses, by UID.
    pods: HashMap<Arc<str>, Claimant>,
    /// The UIDs claiming each address; more than one is a conflict.
    claims: HashMap<IpAddr, Vec<Arc<str>>>,
    /// Shared copies of repeating strings.
    strings: HashSet<Arc<str>>,
    /// UIDs seen since the last `begin_relist`, while a re-list is in progress.
    relist: Option<HashSet<Arc<str>>>,
    removed_since_prune: usize,
}

struct Claimant {
    identity: Arc<PodIdentity>,
    ips: Box<[IpAddr]>,
}

impl CacheWriter {
    pub fn new(cache: Arc<PodCache>) -> Self {
        CacheWriter {
            cache,
            pods: HashMap::new(),
            claims: HashMap::new(),
            strings: HashSet::new(),
            relist: None,
            removed_since_prune: 0,
        }
    }

    pub fn cache(&self) -> &Arc<PodCache> {
        &self.cache
    }

    /// A Pod was added or changed (or listed).
    pub fn apply(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
            return;
        };
        let uid = match self.pods.get_key_value(uid) {
            Some((known, _)) => Arc::clone(known),
            None => Arc::from(uid),
        };
        if let Some(seen) = &mut self.relist {
            seen.insert(Arc::clone(&uid));
        }
        match self.claim_of(pod, &uid) {
            Some((identity, ips)) => {
                let unchanged = self
                    .pods
                    .get(&uid)
                    .is_some_and(|c| c.ips == ips && *c.identity == identity);
                if unchanged {
                    return;
                }
                // The tables change first and the readers' entries after, each address once:
                // a reader sees the Pod's old claim or its new one, never the moment between
                // (when a contested address would have one claimant left, or an owned one none).
                let old = self.unclaim(&uid);
                for ip in ips.iter() {
                    self.claims.entry(*ip).or_default().push(Arc::clone(&uid));
                }
                let identity = Arc::new(identity);
                self.pods.insert(
                    Arc::clone(&uid),
                    Claimant {
                        identity,
                        ips: ips.clone(),
                    },
                );
                for ip in ips.iter() {
                    self.publish(*ip);
                }
                if let Some(old) = old {
                    for ip in old.ips.iter().filter(|ip| !ips.contains(ip)) {
                        self.publish(*ip);
                    }
                    self.count_removal();
                }
                self.cache
                    .pods
                    .store(self.pods.len() as u64, Ordering::Relaxed);
            }
            // No longer owns an address: completed, host network, or has none yet.
            None => self.remove(&uid),
        }
    }

    /// A Pod was deleted.
    pub fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.remove(uid);
        }
    }

    /// A full list begins (the first, or after a reconnect or `410 Gone`).
    pub fn begin_relist(&mut self) {
        self.relist = Some(HashSet::new());
    }

    /// The full list is in: Pods it did not name were deleted meanwhile.
    pub fn end_relist(&mut self) {
        if let Some(seen) = self.relist.take() {
            let gone: Vec<Arc<str>> = self
                .pods
                .keys()
                .filter(|uid| !seen.contains(*uid))
                .cloned()
                .collect();
            for uid in gone {
                self.remove(&uid);
            }
        }
        self.prune_strings();
        self.cache.relists.fetch_add(1, Ordering::Relaxed);
        self.cache.synced.store(true, Ordering::Release);
    }

    fn remove(&mut self, uid: &str) {
        let Some(old) = self.unclaim(uid) else {
            return;
        };
        for ip in old.ips.iter() {
            self.publish(*ip);
        }
        self.cache
            .pods
            .store(self.pods.len() as u64, Ordering::Relaxed);
        self.count_removal();
    }

    /// Takes `uid` and its claims out of the writer's tables without touching the readers'
    /// entries: the caller publishes the addresses once the tables are final.
    fn unclaim(&mut self, uid: &str) -> Option<Claimant> {
        let old = self.pods.remove(uid)?;
        for ip in old.ips.iter() {
            if let Some(list) = self.claims.get_mut(ip) {
                list.retain(|u| &**u != uid);
                if list.is_empty() {
                    self.claims.remove(ip);
                }
            }
        }
        Some(old)
    }

    fn count_removal(&mut self) {
        self.removed_since_prune += 1;
        if self.removed_since_prune > 10_000 {
            self.prune_strings();
        }
    }

    /// Makes the readers' entry for `ip` match its claims.
    fn publish(&self, ip: IpAddr) {
        let map = self.cache.map.pin();
        match self.claims.get(&ip).map(Vec::as_slice) {
            Some([uid]) => match self.pods.get(uid) {
                Some(c) => {
                    map.insert(ip, Slot::Owner(Arc::clone(&c.identity)));
                }
                None => {
                    // Not reachable: every claim belongs to a known Pod. Fail closed anyway.
                    map.insert(ip, Slot::Conflict);
                }
            },
            Some([]) | None => {
                map.remove(&ip);
            }
            Some(_) => {
                map.insert(ip, Slot::Conflict);
            }
        }
    }

    /// The identity and addresses a Pod owns, or `None` when it owns none.
    fn claim_of(&mut self, pod: &Pod, uid: &Arc<str>) -> Option<(PodIdentity, Box<[IpAddr]>)> {
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.host_network).unwrap_or(false) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
        for text in listed.chain(status.pod_ip.as_deref()) {
            if let Ok(ip) = text.parse::<IpAddr>() {
                let ip = ip.to_canonical();
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        if ips.is_empty() {
            return None;
        }
        ips.sort();
        let meta = &pod.metadata;
        let namespace = self.intern(meta.namespace.as_deref().unwrap_or("default"));
        let service_account = self.intern(
            spec.and_then(|s| s.service_account_name.as_deref())
                .filter(|s| !s.is_empty())
                .unwrap_or("default"),
        );
        let node = spec
            .and_then(|s| s.node_name.as_deref())
            .map(|n| self.intern(n));
        let mut labels: Vec<(Arc<str>, Arc<str>)> = meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (self.intern(k), self.intern(v)))
            .collect();
        labels.sort();
        Some((
            PodIdentity {
                namespace,
                name: meta.name.as_deref().unwrap_or_default().into(),
                uid: Arc::clone(uid),
                service_account,
                labels: labels.into_boxed_slice(),
                node,
            },
            ips.into_boxed_slice(),
        ))
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets shared strings that no Pod uses any more.
    fn prune_strings(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.strings.shrink_to_fit();
        self.removed_since_prune = 0;
    }
}

#[cfg(test)]
mod tests;
