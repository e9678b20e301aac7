//! `gateway.yaml`: raw serde structs (unknown keys are errors), environment overrides, and the
//! typed [`GatewayConfig`] the rest of the gateway uses. Nothing downstream re-checks a string.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use egress_policy::{parse_cidr, parse_name, yaml_error, PolicyErrors, SpiffePattern};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::guard::AddressGuard;

/// Environment variables with this prefix override config keys: `EGRESS_GATEWAY__LIMITS__MAXCONNECTIONS`.
pub const ENV_PREFIX: &str = "EGRESS_GATEWAY__";

/// A duration written as `500ms`, `5s`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}): use e.g. 500ms, 5s, 1h"
            ))
        })?;
        // A bound that keeps every deadline (now + duration) far from overflow.
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration {s:?} is longer than 365 days"
            )));
        }
        Ok(Dur(d))
    }
}

/// The longest duration any key takes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default = "default_listeners")]
    listeners: Vec<RawListener>,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    policy: RawPolicySource,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    address_guard: RawGuard,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    shutdown: RawShutdown,
}

fn default_listeners() -> Vec<RawListener> {
    vec![RawListener {
        name: "proxy".into(),
        kind: ListenerKind::Connect,
        address: SocketAddr::from(([127, 0, 0, 1], 3128)),
        tls: None,
        upstream_port: None,
        tproxy: None,
        defer_accept: None,
        silent_client_timeout: None,
    }]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Connect,
    Transparent,
    Sni,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Connect => "connect",
            ListenerKind::Transparent => "transparent",
            ListenerKind::Sni => "sni",
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawListener {
    name: String,
    kind: ListenerKind,
    address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<RawTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tproxy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    defer_accept: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    silent_client_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: OneOrMany,
    #[serde(default = "default_client_auth")]
    client_auth: ClientAuthMode,
}

/// One path, or a list of paths.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// `tls.clientAuth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    Required,
    Optional,
}

fn default_client_auth() -> ClientAuthMode {
    ClientAuthMode::Required
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIdentity {
    #[serde(default = "default_trust_domain")]
    trust_domain: String,
    #[serde(default)]
    kubernetes: RawKubernetes,
    #[serde(default, rename = "static")]
    statics: Vec<RawStatic>,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            trust_domain: default_trust_domain(),
            kubernetes: RawKubernetes::default(),
            statics: Vec::new(),
        }
    }
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKubernetes {
    #[serde(default)]
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kubeconfig: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_staleness: Option<Dur>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStatic {
    cidr: String,
    spiffe: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicySource {
    #[serde(default)]
    path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<SocketAddr>,
    #[serde(default)]
    hosts: BTreeMap<String, Vec<IpAddr>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGuard {
    #[serde(default = "default_blocked")]
    blocked: Vec<String>,
    #[serde(default)]
    allowed: Vec<String>,
}

impl Default for RawGuard {
    fn default() -> Self {
        RawGuard {
            blocked: default_blocked(),
            allowed: Vec::new(),
        }
    }
}

fn default_blocked() -> Vec<String> {
    vec!["default".into()]
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawUpstream {
    #[serde(default = "default_connect_timeout")]
    connect_timeout: Dur,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: Dur,
    #[serde(default)]
    bind_address: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mark: Option<u32>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            bind_address: None,
            mark: None,
        }
    }
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(3600))
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLimits {
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_header_read_timeout")]
    header_read_timeout: Dur,
    #[serde(default = "default_max_header_bytes")]
    max_header_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

fn default_max_connections() -> usize {
    100_000
}

fn default_header_read_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_max_header_bytes() -> usize {
    16384
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAdmin {
    #[serde(default = "default_admin")]
    address: SocketAddr,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: default_admin(),
        }
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLog {
    #[serde(default = "default_log_format")]
    format: LogFormat,
    #[serde(default = "default_log_level")]
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

fn default_log_format() -> LogFormat {
    LogFormat::Json
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawShutdown {
    #[serde(default = "default_drain")]
    drain_timeout: Dur,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            drain_timeout: default_drain(),
        }
    }
}

fn default_drain() -> Dur {
    Dur(Duration::from_secs(30))
}

/// The TLS side of a `connect` listener: the gateway's certificate and the trust bundles that
/// client certificates must chain to.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Vec<PathBuf>,
    pub client_auth: ClientAuthMode,
}

/// One listener of the gateway.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub kind: ListenerKind,
    pub address: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// `sni` listeners: the port dialed upstream (default 443).
    pub upstream_port: u16,
    /// `transparent` listeners: TPROXY (`IP_TRANSPARENT`; the local address is the destination)
    /// instead of `REDIRECT` (`SO_ORIGINAL_DST`).
    pub tproxy: bool,
    /// `TCP_DEFER_ACCEPT` on the listening socket: the kernel hands over a connection once its
    /// first bytes arrive (or about a second after the handshake), not at the handshake.
    pub defer_accept: bool,
    /// `transparent` listeners: how long a client that has sent nothing is waited for before
    /// the connection is decided on its original destination (a protocol whose server speaks
    /// first). `None`: the whole `limits.headerReadTimeout`, which also caps it.
    pub silent_client_timeout: Option<Duration>,
}

/// A workload outside Kubernetes, known by its source range.
#[derive(Clone, Debug)]
pub struct StaticIdentity {
    pub cidr: IpNet,
    pub spiffe: String,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub bind_address: Option<IpAddr>,
    /// `SO_MARK` on every upstream socket, so redirect rules can exempt the gateway's own dials.
    pub mark: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// `identity.kubernetes`: where the Pod watch connects and what it watches.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// A kubeconfig file; `None` = the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    /// How long the last known Pods may still be trusted while the watch is failing; `None`:
    /// for as long as it fails.
    pub max_staleness: Option<Duration>,
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The validated gateway configuration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listeners: Vec<ListenerConfig>,
    pub trust_domain: String,
    pub statics: Vec<StaticIdentity>,
    /// The Pod identity source, when `identity.kubernetes.enabled`.
    pub kubernetes: Option<KubernetesConfig>,
    pub policy_path: Option<PathBuf>,
    pub nameservers: Vec<SocketAddr>,
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    pub guard: AddressGuard,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    pub admin: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub drain_timeout: Duration,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(#[from] PolicyErrors),
    #[error("environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl GatewayConfig {
    /// The configuration `run` uses without `--config`: a connect listener on 127.0.0.1:3128, the
    /// admin server on 127.0.0.1:9901, and `./policy.yaml` when it exists (else deny-all).
    pub fn embedded_default() -> Result<Self, ConfigError> {
        let policy = Path::new("policy.yaml");
        let text = if policy.exists() {
            "policy:\n  path: policy.yaml\n"
        } else {
            "{}\n"
        };
        Self::from_yaml(text, "<embedded default>", std::env::vars())
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses `text`, applies `EGRESS_GATEWAY__…` overrides from `env`, and validates.
    pub fn from_yaml(
        text: &str,
        file: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let overrides: Vec<(String, String)> =
            env.filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        let raw = if overrides.is_empty() {
            raw
        } else {
            apply_overrides(&raw, &overrides)?
        };
        validate(raw, file)
    }
}

/// Applies overrides on the whole configuration, defaults included, so that every key can be
/// named even when the file leaves it out. Key segments match case-insensitively; list items are
/// named by index (`EGRESS_GATEWAY__LISTENERS__0__ADDRESS`).
fn apply_overrides(
    raw: &RawConfig,
    overrides: &[(String, String)],
) -> Result<RawConfig, ConfigError> {
    let mut tree = serde_json::to_value(raw).map_err(|e| ConfigError::Env {
        var: String::new(),
        message: e.to_string(),
    })?;
    for (var, value) in overrides {
        let err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let path: Vec<&str> = var[ENV_PREFIX.len()..].split("__").collect();
        let mut node = &mut tree;
        for seg in &path {
            node = match node {
                serde_json::Value::Object(map) => {
                    let key = map
                        .keys()
                        .find(|k| k.eq_ignore_ascii_case(seg))
                        .cloned()
                        .ok_or_else(|| err(format!("unknown key {seg:?}")))?;
                    map.get_mut(&key).expect("key was just found in this map")
                }
                serde_json::Value::Array(items) => {
                    let i: usize = seg
                        .parse()
                        .map_err(|_| err(format!("{seg:?} is not a list index")))?;
                    items
                        .get_mut(i)
                        .ok_or_else(|| err(format!("no list item {i}")))?
                }
                _ => return Err(err(format!("{seg:?} names a key inside a scalar"))),
            };
        }
        let parsed: serde_json::Value = serde_saphyr::from_str(value)
            .map_err(|e| err(format!("invalid value {value:?}: {e}")))?;
        *node = parsed;
    }
    serde_json::from_value(tree).map_err(|e| ConfigError::Env {
        var: overrides
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        message: e.to_string(),
    })
}

fn validate(raw: RawConfig, file: &str) -> Result<GatewayConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        file: file.to_owned(),
        message,
    };
    if raw.listeners.is_empty() {
        return Err(invalid("at least one listener is required".into()));
    }
    let mut names = std::collections::HashSet::new();
    let mut listeners = Vec::new();
    for l in raw.listeners {
        if !names.insert(l.name.clone()) {
            return Err(invalid(format!("duplicate listener name {:?}", l.name)));
        }
        if l.tls.is_some() && l.kind != ListenerKind::Connect {
            return Err(invalid(format!(
                "listener {:?}: tls applies only to 'connect' listeners (a '{}' listener never terminates TLS)",
                l.name,
                l.kind.as_str()
            )));
        }
        if l.tproxy.is_some() && l.kind != ListenerKind::Transparent {
            return Err(invalid(format!(
                "listener {:?}: tproxy applies only to 'transparent' listeners",
                l.name
            )));
        }
        if l.silent_client_timeout.is_some() && l.kind != ListenerKind::Transparent {
            return Err(invalid(format!(
                "listener {:?}: silentClientTimeout applies only to 'transparent' listeners",
                l.name
            )));
        }
        if l.silent_client_timeout.is_some_and(|d| d.0.is_zero()) {
            return Err(invalid(format!(
                "listener {:?}: silentClientTimeout must be greater than zero",
                l.name
            )));
        }
        let tls = match l.tls {
            None => None,
            Some(t) => {
                let client_ca = match t.client_ca {
                    OneOrMany::One(p) => vec![p],
                    OneOrMany::Many(v) => v,
                };
                if client_ca.is_empty() {
                    return Err(invalid(format!(
                        "listener {:?}: tls.clientCa needs at least one trust bundle",
                        l.name
                    )));
                }
                Some(TlsConfig {
                    cert: t.cert,
                    key: t.key,
                    client_ca,
                    client_auth: t.client_auth,
                })
            }
        };
        if l.upstream_port.is_some() && l.kind != ListenerKind::Sni {
            return Err(invalid(format!(
                "listener {:?}: upstreamPort applies only to 'sni' listeners",
                l.name
            )));
        }
        if l.upstream_port == Some(0) {
            return Err(invalid(format!(
                "listener {:?}: upstreamPort must be 1-65535",
                l.name
            )));
        }
        listeners.push(ListenerConfig {
            name: l.name,
            kind: l.kind,
            address: l.address,
            tls,
            upstream_port: l.upstream_port.unwrap_or(443),
            tproxy: l.tproxy.unwrap_or(false),
            // Off unless asked for: a caller that connects and resets without a byte would
            // never reach `accept()`, and so never be audited.
            defer_accept: l.defer_accept.unwrap_or(false),
            silent_client_timeout: l.silent_client_timeout.map(|d| d.0),
        });
    }
    let k = raw.identity.kubernetes;
    let kubernetes = if k.enabled {
        if let Some(ns) = &k.namespace {
            if !is_dns_label(ns) {
                return Err(invalid(format!(
                    "identity.kubernetes.namespace {ns:?} is not a namespace name"
                )));
            }
        }
        if let Some(sel) = &k.label_selector {
            if sel.trim().is_empty() || sel.chars().any(|c| c.is_control()) {
                return Err(invalid(format!(
                    "identity.kubernetes.labelSelector {sel:?} is not a label selector"
                )));
            }
        }
        Some(KubernetesConfig {
            kubeconfig: k.kubeconfig,
            namespace: k.namespace,
            label_selector: k.label_selector,
            max_staleness: k.max_staleness.map(|d| d.0),
        })
    } else {
        None
    };
    // A trust domain alone: a path or a `*` would become part of every Pod's SPIFFE ID.
    let td = &raw.identity.trust_domain;
    let td_ok = !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !td_ok {
        return Err(invalid(format!(
            "identity.trustDomain: {td:?} is not a SPIFFE trust domain: use lower-case letters, digits, '.', '_' and '-' (no scheme, no path)"
        )));
    }
    let mut statics = Vec::new();
    for s in raw.identity.statics {
        let cidr = parse_cidr(&s.cidr).map_err(|e| invalid(format!("identity.static: {e}")))?;
        let pattern = SpiffePattern::parse(&s.spiffe)
            .map_err(|e| invalid(format!("identity.static: {e}")))?;
        if pattern.exact().is_none() {
            return Err(invalid(format!(
                "identity.static: {:?} must be a SPIFFE ID, not a pattern",
                s.spiffe
            )));
        }
        statics.push(StaticIdentity {
            cidr,
            spiffe: s.spiffe,
        });
    }
    let mut hosts = BTreeMap::new();
    for (name, ips) in raw.dns.hosts {
        let canonical = parse_name(&name).map_err(|e| invalid(format!("dns.hosts: {e}")))?;
        if ips.is_empty() {
            return Err(invalid(format!("dns.hosts: {name:?} has no addresses")));
        }
        hosts.insert(canonical.as_str().to_owned(), ips);
    }
    let guard = AddressGuard::new(&raw.address_guard.blocked, &raw.address_guard.allowed)
        .map_err(|e| invalid(format!("addressGuard: {e}")))?;
    if raw.upstream.mark == Some(0) {
        return Err(invalid(
            "upstream.mark must be 1-4294967295 (omit it for no mark)".into(),
        ));
    }
    if raw.limits.max_connections == 0 {
        return Err(invalid("limits.maxConnections must be at least 1".into()));
    }
    if raw.limits.max_header_bytes < 256 {
        return Err(invalid("limits.maxHeaderBytes must be at least 256".into()));
    }
    for (key, d) in [
        ("upstream.connectTimeout", raw.upstream.connect_timeout),
        ("upstream.idleTimeout", raw.upstream.idle_timeout),
        ("limits.headerReadTimeout", raw.limits.header_read_timeout),
    ] {
        if d.0.is_zero() {
            return Err(invalid(format!("{key} must be greater than zero")));
        }
    }
    tracing_subscriber::EnvFilter::try_new(&raw.log.level)
        .map_err(|e| invalid(format!("log.level {:?}: {e}", raw.log.level)))?;
    Ok(GatewayConfig {
        listeners,
        trust_domain: raw.identity.trust_domain,
        statics,
        kubernetes,
        policy_path: raw.policy.path,
        nameservers: raw.dns.nameservers,
        hosts,
        guard,
        upstream: UpstreamConfig {
            connect_timeout: raw.upstream.connect_timeout.0,
            idle_timeout: raw.upstream.idle_timeout.0,
            bind_address: raw.upstream.bind_address,
            mark: raw.upstream.mark,
        },
        limits: Limits {
            max_connections: raw.limits.max_connections,
            header_read_timeout: raw.limits.header_read_timeout.0,
            max_header_bytes: raw.limits.max_header_bytes,
        },
        admin: raw.admin.address,
        log_format: raw.log.format,
        log_level: raw.log.level,
        drain_timeout: raw.shutdown.drain_timeout.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_yaml(
            text,
            "gateway.yaml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_config_gets_the_documented_defaults() {
        let c = parse("{}", &[]).expect("defaults are valid");
        assert_eq!(
            c.listeners[0].address,
            SocketAddr::from(([127, 0, 0, 1], 3128))
        );
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_header_bytes, 16384);
        assert!(c.policy_path.is_none());
    }

    #[test]
    fn unknown_keys_are_errors_with_position() {
        let e = parse("limits:\n  maxConnection: 5\n", &[]).expect_err("unknown key");
        assert!(e.to_string().starts_with("gateway.yaml:2:"), "{e}");
    }

    #[test]
    fn durations_accept_ms_s_h_and_refuse_nonsense() {
        let c = parse(
            "upstream:\n  connectTimeout: 500ms\n  idleTimeout: 1h\n",
            &[],
        )
        .expect("valid");
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.upstream.idle_timeout, Duration::from_secs(3600));
        let e = parse("upstream:\n  connectTimeout: soon\n", &[]).expect_err("invalid");
        assert!(e.to_string().contains("gateway.yaml:2:"), "{e}");
        assert!(parse("upstream:\n  idleTimeout: 365days\n", &[]).is_ok());
        let e = parse("upstream:\n  idleTimeout: 366days\n", &[]).expect_err("too long");
        assert!(e.to_string().contains("longer than 365 days"), "{e}");
    }

    #[test]
    fn environment_overrides_match_keys_case_insensitively() {
        let c = parse(
            "limits:\n  maxConnections: 5\n",
            &[
                ("EGRESS_GATEWAY__LIMITS__MAXCONNECTIONS", "7"),
                ("EGRESS_GATEWAY__UPSTREAM__CONNECTTIMEOUT", "2s"),
                ("EGRESS_GATEWAY__LISTENERS__0__ADDRESS", "127.0.0.1:4000"),
            ],
        )
        .expect("valid overrides");
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.listeners[0].address.port(), 4000);
        let e = parse("{}", &[("EGRESS_GATEWAY__LIMITS__NOPE", "1")]).expect_err("unknown key");
        assert!(
            e.to_string().contains("EGRESS_GATEWAY__LIMITS__NOPE"),
            "{e}"
        );
    }

    #[test]
    fn listener_kinds_take_only_their_own_keys() {
        let c = parse(
            "listeners:\n  - {name: t, kind: transparent, address: 127.0.0.1:1, tproxy: true}\n  - {name: s, kind: sni, address: 127.0.0.1:2}\nupstream:\n  mark: 0x2000\n",
            &[],
        )
        .expect("valid");
        assert!(c.listeners[0].tproxy);
        assert_eq!(c.listeners[1].upstream_port, 443);
        assert_eq!(c.upstream.mark, Some(0x2000));
        // Off by default, on every kind.
        assert!(!c.listeners[0].defer_accept);
        assert!(!c.listeners[1].defer_accept);
        assert_eq!(c.listeners[0].silent_client_timeout, None);
        let c = parse(
            "listeners:\n  - {name: t, kind: transparent, address: 127.0.0.1:1, deferAccept: true}\n  - {name: c, kind: connect, address: 127.0.0.1:2, deferAccept: false}\n  - {name: d, kind: connect, address: 127.0.0.1:3}\n",
            &[],
        )
        .expect("valid");
        let defer: Vec<bool> = c.listeners.iter().map(|l| l.defer_accept).collect();
        assert_eq!(defer, [true, false, false]);
        let c = parse(
            "listeners:\n  - {name: t, kind: transparent, address: 127.0.0.1:1, silentClientTimeout: 250ms}\n",
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.listeners[0].silent_client_timeout,
            Some(Duration::from_millis(250))
        );
        for bad in [
            "listeners:\n  - {name: c, kind: connect, address: 127.0.0.1:1, upstreamPort: 443}\n",
            "listeners:\n  - {name: c, kind: connect, address: 127.0.0.1:1, tproxy: true}\n",
            "listeners:\n  - {name: s, kind: sni, address: 127.0.0.1:1, tproxy: true}\n",
            "listeners:\n  - {name: s, kind: sni, address: 127.0.0.1:1, upstreamPort: 0}\n",
            "listeners:\n  - {name: s, kind: sni, address: 127.0.0.1:1, silentClientTimeout: 1s}\n",
            "listeners:\n  - {name: c, kind: connect, address: 127.0.0.1:1, silentClientTimeout: 1s}\n",
            "listeners:\n  - {name: t, kind: transparent, address: 127.0.0.1:1, silentClientTimeout: 0s}\n",
            "upstream:\n  mark: 0\n",
            "listeners:\n  - {name: s, kind: sni, address: 127.0.0.1:1, tls: {cert: a, key: b, clientCa: c}}\n",
        ] {
            assert!(parse(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_identity_keys_are_checked() {
        let c = parse("identity:\n  kubernetes:\n    enabled: true\n", &[]).expect("valid");
        assert!(c.kubernetes.is_some_and(|k| k.kubeconfig.is_none()));
        assert!(parse("identity:\n  kubernetes:\n    enabled: false\n", &[])
            .expect("valid")
            .kubernetes
            .is_none());
        let bad = "identity:\n  kubernetes:\n    enabled: true\n    namespace: Bad_NS\n";
        assert!(parse(bad, &[]).is_err());
        let stale = "identity:\n  kubernetes:\n    enabled: true\n    maxStaleness: 2m\n";
        let k = parse(stale, &[]).expect("valid").kubernetes.expect("on");
        assert_eq!(k.max_staleness, Some(Duration::from_secs(120)));
        let c = parse("identity:\n  kubernetes:\n    enabled: true\n", &[]).expect("valid");
        assert_eq!(c.kubernetes.expect("on").max_staleness, None);
        let bad = "identity:\n  kubernetes:\n    enabled: true\n    maxStaleness: soon\n";
        assert!(parse(bad, &[]).is_err());
    }

    /// The trust domain is a name alone: a path or a `*` would be spliced into every Pod's ID.
    #[test]
    fn the_trust_domain_is_a_trust_domain_alone() {
        let c = parse("identity:\n  trustDomain: prod.example-1\n", &[]).expect("valid");
        assert_eq!(c.trust_domain, "prod.example-1");
        for bad in [
            "cluster.local/ns/kube-system/sa/admin",
            "cluster.local/*",
            "*",
            "Cluster.local",
            "spiffe://cluster.local",
            "",
        ] {
            let err = parse(&format!("identity:\n  trustDomain: '{bad}'\n"), &[])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("identity.trustDomain"), "{bad}: {err}");
        }
    }
}
