//! Prometheus metrics. Names follow `egress_<noun>_<unit>`; label values come from bounded sets
//! only (listener names, decisions, reason codes, rule names of the loaded policy).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use egress_pods::PodCache;

use egress_policy::Verdict;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reason::Reason;
use crate::transparent::Nameless;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: String,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamelessLabels {
    listener: String,
    cause: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    listener: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsReloadLabels {
    listener: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
    pub decision: &'static str,
}

/// All metrics of the process.
pub struct Metrics {
    registry: Registry,
    connections: Family<ConnectionLabels, Counter>,
    nameless: Family<NamelessLabels, Counter>,
    active: Family<ListenerLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    pub upstream_connect_seconds: Histogram,
    pub dns_resolve_seconds: Histogram,
    reloads: Family<ResultLabels, Counter>,
    pub rule_hits: Family<RuleLabels, Counter>,
    pub policy_rules: Gauge,
    tls_handshake_failures: Family<HandshakeLabels, Counter>,
    tls_reloads: Family<TlsReloadLabels, Counter>,
    pod_cache: Option<PodCacheMetrics>,
}

/// The Pod cache's figures, read from the cache at each scrape.
struct PodCacheMetrics {
    cache: Arc<PodCache>,
    pods: Gauge,
    addresses: Gauge,
    synced: Gauge,
    up: Gauge,
    last_event_age: Gauge<f64, AtomicU64>,
    stale: Gauge<f64, AtomicU64>,
    relists: Counter,
    errors: Counter,
    /// One scrape at a time brings the counters up to date.
    refresh: Mutex<()>,
}

impl PodCacheMetrics {
    fn register(registry: &mut Registry, cache: Arc<PodCache>) -> Self {
        let m = PodCacheMetrics {
            cache,
            pods: Gauge::default(),
            addresses: Gauge::default(),
            synced: Gauge::default(),
            up: Gauge::default(),
            last_event_age: Gauge::default(),
            stale: Gauge::default(),
            relists: Counter::default(),
            errors: Counter::default(),
            refresh: Mutex::new(()),
        };
        registry.register(
            "egress_pod_cache_pods",
            "Pods in the cache that own at least one address",
            m.pods.clone(),
        );
        registry.register(
            "egress_pod_cache_addresses",
            "Addresses in the cache, owned or claimed by more than one live Pod",
            m.addresses.clone(),
        );
        registry.register(
            "egress_pod_cache_synced",
            "1 once the first full list of Pods is in",
            m.synced.clone(),
        );
        registry.register(
            "egress_pod_cache_up",
            "1 while the watch on the Kubernetes API is healthy, 0 after an error until it recovers",
            m.up.clone(),
        );
        registry.register(
            "egress_pod_cache_last_event_age_seconds",
            "Seconds since the Kubernetes API last sent anything (-1 before the first)",
            m.last_event_age.clone(),
        );
        registry.register(
            "egress_pod_cache_stale_seconds",
            "Seconds since the watch first failed, while the map is not known to be current again (0 while it is); compare with identity.kubernetes.maxStaleness",
            m.stale.clone(),
        );
        registry.register(
            "egress_pod_cache_relists",
            "Full lists of Pods received (the first, then after reconnects and 410 Gone)",
            m.relists.clone(),
        );
        registry.register(
            "egress_pod_cache_watch_errors",
            "Failures of the Pod watch (each is retried with backoff)",
            m.errors.clone(),
        );
        m
    }

    fn refresh(&self) {
        let _one = self
            .refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = self.cache.stats();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.pods.set(gauge(s.pods));
        self.addresses.set(gauge(s.addresses));
        self.synced.set(i64::from(s.synced));
        self.up.set(i64::from(s.up));
        self.last_event_age.set(s.last_event_age.unwrap_or(-1.0));
        self.stale
            .set(self.cache.failing_for().map_or(0.0, |d| d.as_secs_f64()));
        self.relists
            .inc_by(s.relists.saturating_sub(self.relists.get()));
        self.errors
            .inc_by(s.errors.saturating_sub(self.errors.get()));
    }
}

const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::AuditAllow];

fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::AuditAllow => 2,
    }
}

/// Increments a listener's cached handle on one series of `family`, creating the series (with
/// the labels `labels` builds) the first time, so later hits touch only an atomic.
fn inc_slot<L>(slot: &OnceLock<Counter>, family: &Family<L, Counter>, labels: impl FnOnce() -> L)
where
    L: Clone + std::hash::Hash + Eq,
{
    slot.get_or_init(|| family.get_or_create(&labels()).clone())
        .inc();
}

/// The metric handles of one listener, resolved once so the hot path touches only atomics.
pub struct ListenerMetrics {
    name: String,
    outcomes: Vec<OnceLock<Counter>>,
    /// By verdict and [`Nameless`] cause, created at first use.
    nameless: Vec<OnceLock<Counter>>,
    pub active: Gauge,
    pub bytes_up: Counter,
    pub bytes_down: Counter,
}

impl Metrics {
    pub fn new(pod_cache: Option<Arc<PodCache>>) -> Self {
        let mut registry = Registry::default();
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "egress_connections",
            "Connections by listener, decision and reason code",
            connections.clone(),
        );
        let nameless = Family::<NamelessLabels, Counter>::default();
        registry.register(
            "egress_nameless_connections",
            "Connections on transparent and sni listeners decided without a host name, by cause and decision",
            nameless.clone(),
        );
        let active = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "egress_active_connections",
            "Connections open now",
            active.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "egress_bytes",
            "Bytes relayed (up: caller to upstream, down: upstream to caller)",
            bytes.clone(),
        );
        let upstream_connect_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "egress_upstream_connect_seconds",
            "Time to establish the upstream TCP connection",
            upstream_connect_seconds.clone(),
        );
        let dns_resolve_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "egress_dns_resolve_seconds",
            "Time to resolve a destination name",
            dns_resolve_seconds.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "egress_policy_reloads",
            "Policy reloads by result",
            reloads.clone(),
        );
        let rule_hits = Family::<RuleLabels, Counter>::default();
        registry.register(
            "egress_policy_rule_hits",
            "Decisions made by each rule (shadow_* for audit-mode rules)",
            rule_hits.clone(),
        );
        let tls_handshake_failures = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "egress_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            tls_handshake_failures.clone(),
        );
        let tls_reloads = Family::<TlsReloadLabels, Counter>::default();
        registry.register(
            "egress_tls_reloads",
            "Reloads of a listener's TLS material by result",
            tls_reloads.clone(),
        );
        let policy_rules = Gauge::default();
        registry.register(
            "egress_policy_rules",
            "Rules in the loaded policy",
            policy_rules.clone(),
        );
        let pod_cache = pod_cache.map(|c| PodCacheMetrics::register(&mut registry, c));
        Metrics {
            registry,
            pod_cache,
            connections,
            nameless,
            active,
            bytes,
            upstream_connect_seconds,
            dns_resolve_seconds,
            reloads,
            rule_hits,
            policy_rules,
            tls_handshake_failures,
            tls_reloads,
        }
    }

    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let bytes = |direction| {
            self.bytes
                .get_or_create(&BytesLabels {
                    listener: name.to_owned(),
                    direction,
                })
                .clone()
        };
        ListenerMetrics {
            name: name.to_owned(),
            outcomes: (0..VERDICTS.len() * Reason::ALL.len())
                .map(|_| OnceLock::new())
                .collect(),
            nameless: (0..VERDICTS.len() * Nameless::ALL.len())
                .map(|_| OnceLock::new())
                .collect(),
            active: self
                .active
                .get_or_create(&ListenerLabels {
                    listener: name.to_owned(),
                })
                .clone(),
            bytes_up: bytes("up"),
            bytes_down: bytes("down"),
        }
    }

    pub fn tls_handshake_failure(&self, listener: &str, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&HandshakeLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn tls_reload(&self, listener: &str, result: &'static str) {
        self.tls_reloads
            .get_or_create(&TlsReloadLabels {
                listener: listener.to_owned(),
                result,
            })
            .inc();
    }

    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        if let Some(p) = &self.pod_cache {
            p.refresh();
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing metrics into a String cannot fail");
        out
    }

    pub fn count_connection(&self, listener: &ListenerMetrics, verdict: Verdict, reason: Reason) {
        let slot = verdict_index(verdict) * Reason::ALL.len() + reason.index();
        inc_slot(&listener.outcomes[slot], &self.connections, || {
            ConnectionLabels {
                listener: listener.name.clone(),
                decision: verdict.as_str(),
                reason: reason.as_str(),
            }
        });
    }

    /// Counts a connection whose peek found no usable host name, with the decision it got (a
    /// rejection for any reason counts as `deny`, as in `egress_connections_total`).
    pub fn count_nameless(&self, listener: &ListenerMetrics, cause: Nameless, verdict: Verdict) {
        let slot = verdict_index(verdict) * Nameless::ALL.len() + cause.index();
        inc_slot(&listener.nameless[slot], &self.nameless, || {
            NamelessLabels {
                listener: listener.name.clone(),
                cause: cause.as_str(),
                decision: verdict.as_str(),
            }
        });
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(None)
    }
}
