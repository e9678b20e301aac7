//! Who is calling, for callers without a client certificate: the Pod that owns the source address
//! (from the Pod cache, when `identity.kubernetes` is on), else the `identity.static` table (VMs,
//! other networks), else nobody — and then only `cidr` selectors can match.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use egress_pods::{Lookup, PodCache, PodIdentity};
use egress_policy::{canonical_ip, Identity, IdentitySource};

use crate::config::StaticIdentity;

pub struct Identities {
    /// Most specific range first, so the longest prefix wins.
    statics: Vec<StaticIdentity>,
    pods: Option<Arc<PodCache>>,
    /// `identity.kubernetes.maxStaleness`.
    max_staleness: Option<Duration>,
    trust_domain: String,
}

/// An identity, and why it is less than the caller might expect.
pub struct Identified {
    pub identity: Identity,
    /// Set when the source address is claimed by several live Pods: the caller is unknown.
    pub note: Option<&'static str>,
}

impl Identities {
    pub fn new(
        mut statics: Vec<StaticIdentity>,
        pods: Option<Arc<PodCache>>,
        max_staleness: Option<Duration>,
        trust_domain: String,
    ) -> Self {
        statics.sort_by_key(|e| std::cmp::Reverse(e.cidr.prefix_len()));
        Identities {
            statics,
            pods,
            max_staleness,
            trust_domain,
        }
    }

    pub fn identify(&self, source: IpAddr) -> Identified {
        let ip = canonical_ip(source);
        if let Some(pods) = &self.pods {
            match pods.lookup(ip) {
                // Fail closed once the map is too old to trust: the address may have gone to
                // another Pod meanwhile.
                Lookup::Pod(_) if self.too_stale(pods) => {
                    return Identified {
                        identity: Identity::anonymous(Some(ip)),
                        note: Some(
                            "Pod identity withheld: the Pod watch has been failing for longer \
                             than identity.kubernetes.maxStaleness",
                        ),
                    }
                }
                Lookup::Pod(pod) => {
                    return Identified {
                        identity: self.pod_identity(&pod, ip),
                        note: None,
                    }
                }
                // Fail closed: an address two live Pods claim is nobody's, and it does not fall
                // through to the static table either.
                Lookup::Conflict => {
                    return Identified {
                        identity: Identity::anonymous(Some(ip)),
                        note: Some("the source address is claimed by more than one live Pod"),
                    }
                }
                Lookup::Unknown => {}
            }
        }
        let identity = match self.statics.iter().find(|e| e.cidr.contains(&ip)) {
            Some(e) => Identity::from_spiffe(IdentitySource::Static, &e.spiffe, Some(ip)),
            None => Identity::anonymous(Some(ip)),
        };
        Identified {
            identity,
            note: None,
        }
    }

    fn too_stale(&self, pods: &PodCache) -> bool {
        match (self.max_staleness, pods.failing_for()) {
            (Some(max), Some(failing)) => failing > max,
            _ => false,
        }
    }

    fn pod_identity(&self, pod: &PodIdentity, ip: IpAddr) -> Identity {
        Identity {
            source: IdentitySource::Kubernetes,
            address: Some(ip),
            spiffe: Some(pod.spiffe(&self.trust_domain)),
            namespace: Some(pod.namespace.to_string()),
            service_account: Some(pod.service_account.to_string()),
            labels: pod
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            pod: Some(pod.name.to_string()),
        }
    }
}
