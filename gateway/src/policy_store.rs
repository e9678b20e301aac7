//! The live policy: loaded and compiled off the hot path, swapped atomically, read with one
//! `ArcSwap` load per connection. An invalid file is logged, counted and reported in `/policy`,
//! and the last good policy stays.
//!
//! The file's directory is watched, not the file: a ConfigMap update replaces a `..data` symlink,
//! which never touches the file's own inode. SIGHUP and a slow periodic check (in case the
//! watcher misses an event) also reload; an unchanged file (same sha256) is not recompiled.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use egress_policy::{Policy, PolicyErrors};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::metrics::{Metrics, RuleLabels};

/// A compiled policy and what `/policy` says about it.
pub struct LoadedPolicy {
    pub policy: Policy,
    pub sha256: String,
    pub loaded_at: SystemTime,
    /// This policy's handles on `egress_policy_rule_hits`.
    pub hits: RuleHits,
}

/// The labels `egress_policy_rule_hits` counts a rule's decisions under.
pub const HIT_KINDS: [&str; 5] = [
    "allow",
    "deny",
    "audit_allow",
    "shadow_allow",
    "shadow_deny",
];

/// Each rule's hit counters, found in the metric family on the rule's first hit of each kind
/// and kept with the policy: later hits are an atomic add, with no label built, hashed or looked
/// up. A series appears only once it is hit, as before.
pub struct RuleHits {
    slots: Vec<[OnceLock<Counter>; HIT_KINDS.len()]>,
}

impl RuleHits {
    fn new(policy: &Policy) -> Self {
        RuleHits {
            slots: policy
                .rules()
                .iter()
                .map(|_| std::array::from_fn(|_| OnceLock::new()))
                .collect(),
        }
    }

    /// Counts one hit of kind `kind` (one of [`HIT_KINDS`]) of the rule `rule`, the policy's
    /// rule number `index`.
    pub fn inc(&self, metrics: &Metrics, index: Option<usize>, rule: &str, kind: &'static str) {
        let slot = HIT_KINDS.iter().position(|k| *k == kind);
        let cached = match (index.and_then(|i| self.slots.get(i)), slot) {
            (Some(slots), Some(k)) => Some(&slots[k]),
            _ => None,
        };
        let labels = || RuleLabels {
            rule: rule.to_owned(),
            decision: kind,
        };
        match cached {
            Some(cell) => cell
                .get_or_init(|| metrics.rule_hits.get_or_create(&labels()).clone())
                .inc(),
            None => metrics.rule_hits.get_or_create(&labels()).inc(),
        };
    }
}

/// What `/policy` shows.
#[derive(Serialize)]
pub struct PolicyStatus {
    pub path: Option<String>,
    pub sha256: String,
    pub loaded_at: String,
    pub rules: usize,
    pub mode: &'static str,
    pub default: &'static str,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

pub struct PolicyStore {
    path: Option<PathBuf>,
    current: ArcSwap<LoadedPolicy>,
    /// The last reload error; a std mutex, never held across an await.
    last_error: Mutex<Option<(String, SystemTime)>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] PolicyErrors),
}

fn sha256_hex(text: &[u8]) -> String {
    Sha256::digest(text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_and_compile(path: &Path) -> Result<LoadedPolicy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let policy = Policy::from_yaml(&text, &path.display().to_string())?;
    Ok(LoadedPolicy {
        hits: RuleHits::new(&policy),
        policy,
        sha256: sha256_hex(text.as_bytes()),
        loaded_at: SystemTime::now(),
    })
}

/// Outcome of a reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Swapped,
    Unchanged,
}

/// Whether a change in the policy's directory can concern the policy: the file itself, or the
/// `..data` symlink and timestamped `..` directories a kubelet swaps. Other files that share the
/// directory (logs, say) do not trigger a reload.
fn concerns_policy(event: &notify::Event, file_name: Option<&std::ffi::OsStr>) -> bool {
    event.need_rescan()
        || event.paths.is_empty()
        || event.paths.iter().any(|p| match p.file_name() {
            Some(name) => Some(name) == file_name || name.as_encoded_bytes().starts_with(b".."),
            None => true,
        })
}

impl PolicyStore {
    /// Loads the initial policy: the file at `path` (which must be valid), or deny-all.
    pub fn open(path: Option<PathBuf>, metrics: Arc<Metrics>) -> Result<Arc<Self>, LoadError> {
        let loaded = match &path {
            Some(p) => read_and_compile(p)?,
            None => {
                let policy = Policy::deny_all();
                LoadedPolicy {
                    hits: RuleHits::new(&policy),
                    policy,
                    sha256: sha256_hex(b""),
                    loaded_at: SystemTime::now(),
                }
            }
        };
        metrics.policy_rules.set(loaded.policy.rules().len() as i64);
        metrics.reload("ok");
        Ok(Arc::new(PolicyStore {
            path,
            current: ArcSwap::from_pointee(loaded),
            last_error: Mutex::new(None),
            metrics,
        }))
    }

    /// The policy for a new connection.
    pub fn load(&self) -> Arc<LoadedPolicy> {
        self.current.load_full()
    }

    /// Reads, validates and compiles the file, then swaps it in. Blocking: call it off the
    /// async workers (see [`PolicyStore::reload_async`]).
    pub fn reload(&self) -> Result<Reloaded, LoadError> {
        let Some(path) = &self.path else {
            return Ok(Reloaded::Unchanged);
        };
        let result = std::fs::read(path)
            .map_err(|source| LoadError::Read {
                path: path.display().to_string(),
                source,
            })
            .and_then(|bytes| {
                if sha256_hex(&bytes) == self.current.load().sha256 {
                    Ok(None)
                } else {
                    read_and_compile(path).map(Some)
                }
            });
        let mut last_error = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(None) => {
                *last_error = None;
                self.metrics.reload("unchanged");
                Ok(Reloaded::Unchanged)
            }
            Ok(Some(loaded)) => {
                let old = self.current.load_full();
                self.metrics
                    .policy_rules
                    .set(loaded.policy.rules().len() as i64);
                // Drop the hit counters of rules that no longer exist: label values stay bounded.
                for r in old.policy.rules() {
                    if !loaded.policy.rules().iter().any(|n| n.name == r.name) {
                        for decision in HIT_KINDS {
                            self.metrics.rule_hits.remove(&RuleLabels {
                                rule: r.name.to_string(),
                                decision,
                            });
                        }
                    }
                }
                tracing::info!(
                    path = %path.display(),
                    sha256 = %loaded.sha256,
                    rules = loaded.policy.rules().len(),
                    "policy reloaded"
                );
                self.current.store(Arc::new(loaded));
                *last_error = None;
                self.metrics.reload("ok");
                Ok(Reloaded::Swapped)
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload rejected; keeping the last good policy");
                *last_error = Some((e.to_string(), SystemTime::now()));
                self.metrics.reload("error");
                Err(e)
            }
        }
    }

    pub async fn reload_async(self: &Arc<Self>) {
        let store = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || store.reload()).await;
    }

    pub fn status(&self) -> PolicyStatus {
        let cur = self.current.load();
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        PolicyStatus {
            path: self.path.as_ref().map(|p| p.display().to_string()),
            sha256: cur.sha256.clone(),
            loaded_at: humantime::format_rfc3339_millis(cur.loaded_at).to_string(),
            rules: cur.policy.rules().len(),
            mode: match cur.policy.mode {
                egress_policy::Mode::Enforce => "enforce",
                egress_policy::Mode::Audit => "audit",
            },
            default: cur.policy.default.as_str(),
            last_error_at: last_error
                .as_ref()
                .map(|(_, t)| humantime::format_rfc3339_millis(*t).to_string()),
            last_error: last_error.map(|(e, _)| e),
        }
    }

    /// Watches the policy's directory and reloads on change, on SIGHUP, and every `poll`.
    /// Runs until the process ends.
    /// `hup` is registered by the caller before it reports ready, so an early SIGHUP can never
    /// fall back to the default action (exit).
    pub async fn watch(self: Arc<Self>, poll: Duration, mut hup: tokio::signal::unix::Signal) {
        let Some(path) = self.path.clone() else {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: no policy file is configured; nothing to reload");
            }
            return;
        };
        let file_name = path.file_name().map(|n| n.to_os_string());
        let mut trigger = crate::watch::Trigger::new(
            &[crate::watch::parent_dir(&path)],
            poll,
            move |event| concerns_policy(event, file_name.as_deref()),
            "policy",
        );
        loop {
            tokio::select! {
                () = trigger.next() => {}
                Some(()) = hup.recv() => {
                    tracing::info!("SIGHUP: reloading policy");
                }
            }
            self.reload_async().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cached hit counters are the family's own series: hits through one policy, through a
    /// reloaded one and through the uncached path all land in the same sample, and a kind never
    /// hit has no series.
    #[test]
    fn rule_hits_count_into_the_metric_family_across_policies() {
        let yaml = "version: 1\nrules:\n  - name: a\n    action: allow\n    from: [{cidr: 10.0.0.0/8}]\n    to: [{host: a.test, ports: [443]}]\n  - name: b\n    action: deny\n    from: [{cidr: 10.0.0.0/8}]\n    to: [{host: b.test, ports: [443]}]\n";
        let metrics = Metrics::new(None);
        let first = RuleHits::new(&Policy::from_yaml(yaml, "p.yaml").expect("policy"));
        let reloaded = RuleHits::new(&Policy::from_yaml(yaml, "p.yaml").expect("policy"));
        first.inc(&metrics, Some(0), "a", "allow");
        first.inc(&metrics, Some(0), "a", "allow");
        reloaded.inc(&metrics, Some(0), "a", "allow");
        first.inc(&metrics, None, "a", "allow");
        first.inc(&metrics, Some(1), "b", "shadow_deny");
        // An index past the rules (never made by a decision) still counts, uncached.
        first.inc(&metrics, Some(7), "b", "shadow_deny");
        let text = metrics.encode();
        let sample = |labels: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("egress_policy_rule_hits_total{{{labels}}} "))
                })
                .map(str::to_owned)
        };
        assert_eq!(
            sample("rule=\"a\",decision=\"allow\"").as_deref(),
            Some("4"),
            "{text}"
        );
        assert_eq!(
            sample("rule=\"b\",decision=\"shadow_deny\"").as_deref(),
            Some("2"),
            "{text}"
        );
        assert_eq!(sample("rule=\"a\",decision=\"deny\""), None, "{text}");
        assert_eq!(sample("rule=\"b\",decision=\"allow\""), None, "{text}");
    }

    fn event(path: &str) -> notify::Event {
        notify::Event::new(notify::EventKind::Any).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_changes_that_can_concern_the_policy_trigger_a_reload() {
        let name = std::ffi::OsStr::new("policy.yaml");
        assert!(concerns_policy(
            &event("/etc/egress/policy/policy.yaml"),
            Some(name)
        ));
        assert!(concerns_policy(
            &event("/etc/egress/policy/..data"),
            Some(name)
        ));
        assert!(concerns_policy(
            &event("/etc/egress/policy/..2026_11_29_01_02_03.123"),
            Some(name)
        ));
        assert!(concerns_policy(
            &event("/etc/egress/policy/..data_tmp"),
            Some(name)
        ));
        assert!(!concerns_policy(
            &event("/etc/egress/policy/gateway.log"),
            Some(name)
        ));
        assert!(!concerns_policy(
            &event("/etc/egress/policy/other.yaml"),
            Some(name)
        ));
    }
}
