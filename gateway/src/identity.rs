//! Who is calling, for listeners without client certificates: the `identity.static` table maps
//! source ranges (VMs, other networks) to SPIFFE IDs; anything else is anonymous and can be
//! matched only by `cidr` selectors.

use std::net::IpAddr;

use egress_policy::{canonical_ip, Identity, IdentitySource};

use crate::config::StaticIdentity;

pub struct StaticIdentities {
    /// Most specific range first, so the longest prefix wins.
    entries: Vec<StaticIdentity>,
}

impl StaticIdentities {
    pub fn new(mut entries: Vec<StaticIdentity>) -> Self {
        entries.sort_by_key(|e| std::cmp::Reverse(e.cidr.prefix_len()));
        StaticIdentities { entries }
    }

    pub fn identify(&self, source: IpAddr) -> Identity {
        let ip = canonical_ip(source);
        match self.entries.iter().find(|e| e.cidr.contains(&ip)) {
            Some(e) => Identity::from_spiffe(IdentitySource::Static, &e.spiffe, Some(ip)),
            None => Identity::anonymous(Some(ip)),
        }
    }
}
