//! Prometheus metrics. Names follow `egress_<noun>_<unit>`; label values come from bounded sets
//! only (listener names, decisions, reason codes, rule names of the loaded policy).

use std::sync::OnceLock;

use egress_policy::Verdict;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reason::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: String,
    decision: &'static str,
    reason: &'static str,
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
    active: Family<ListenerLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    pub upstream_connect_seconds: Histogram,
    pub dns_resolve_seconds: Histogram,
    reloads: Family<ResultLabels, Counter>,
    pub rule_hits: Family<RuleLabels, Counter>,
    pub policy_rules: Gauge,
    tls_handshake_failures: Family<HandshakeLabels, Counter>,
    tls_reloads: Family<TlsReloadLabels, Counter>,
}

const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::AuditAllow];

fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::AuditAllow => 2,
    }
}

/// The metric handles of one listener, resolved once so the hot path touches only atomics.
pub struct ListenerMetrics {
    name: String,
    outcomes: Vec<OnceLock<Counter>>,
    pub active: Gauge,
    pub bytes_up: Counter,
    pub bytes_down: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "egress_connections",
            "Connections by listener, decision and reason code",
            connections.clone(),
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
        Metrics {
            registry,
            connections,
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
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing metrics into a String cannot fail");
        out
    }

    pub fn count_connection(&self, listener: &ListenerMetrics, verdict: Verdict, reason: Reason) {
        let slot = verdict_index(verdict) * Reason::ALL.len() + reason.index();
        listener.outcomes[slot]
            .get_or_init(|| {
                self.connections
                    .get_or_create(&ConnectionLabels {
                        listener: listener.name.clone(),
                        decision: verdict.as_str(),
                        reason: reason.as_str(),
                    })
                    .clone()
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
