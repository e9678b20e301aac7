//! The compiled lookup table behind [`crate::Policy::decide`].
//!
//! Rules are indexed twice: by destination (exact host, wildcard suffix, CIDR by prefix length)
//! and by caller (exact SPIFFE ID, namespace, source CIDR, and a short list of selectors that no
//! key can narrow, such as SPIFFE patterns with `*`). A lookup gathers the posting lists of both
//! sides and keeps the smaller one: those are the only rules that can match, and each is then
//! checked in full. So the cost grows with the number of rules naming this host or this caller,
//! not with the size of the policy. The index only narrows; it never decides.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::host::{canonical_ip, Host};
use crate::{CallerSelector, Destination, Identity, IdentitySource, Rule, Target};

type Postings = Vec<u32>;

#[derive(Debug, Default)]
struct CidrIndex {
    v4: Vec<(u8, HashMap<u32, Postings>)>,
    v6: Vec<(u8, HashMap<u128, Postings>)>,
}

fn mask4(ip: u32, len: u8) -> u32 {
    ip & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask6(ip: u128, len: u8) -> u128 {
    ip & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl CidrIndex {
    fn insert(&mut self, net: IpNet, rule: u32) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let slot = match self.v4.iter().position(|(l, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        self.v4.push((len, HashMap::new()));
                        self.v4.len() - 1
                    }
                };
                self.v4[slot]
                    .1
                    .entry(mask4(u32::from(n.network()), len))
                    .or_default()
                    .push(rule);
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let slot = match self.v6.iter().position(|(l, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        self.v6.push((len, HashMap::new()));
                        self.v6.len() - 1
                    }
                };
                self.v6[slot]
                    .1
                    .entry(mask6(u128::from(n.network()), len))
                    .or_default()
                    .push(rule);
            }
        }
    }

    fn lookup<'a>(&'a self, ip: IpAddr, out: &mut Vec<&'a [u32]>) {
        match canonical_ip(ip) {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, map) in &self.v4 {
                    if let Some(p) = map.get(&mask4(a, *len)) {
                        out.push(p);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, map) in &self.v6 {
                    if let Some(p) = map.get(&mask6(a, *len)) {
                        out.push(p);
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        for (_, m) in &mut self.v4 {
            m.values_mut().for_each(finish_postings);
        }
        for (_, m) in &mut self.v6 {
            m.values_mut().for_each(finish_postings);
        }
    }
}

fn finish_postings(p: &mut Postings) {
    p.sort_unstable();
    p.dedup();
    p.shrink_to_fit();
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    host_exact: HashMap<Box<str>, Postings>,
    host_suffix: HashMap<Box<str>, Postings>,
    dest_cidr: CidrIndex,
    caller_spiffe: HashMap<Box<str>, Postings>,
    caller_namespace: HashMap<Box<str>, Postings>,
    caller_cidr: CidrIndex,
    /// Rules with a `from` entry that no key narrows: checked for every caller.
    caller_any: Postings,
}

impl Index {
    pub(crate) fn build(rules: &[Rule]) -> Self {
        let mut ix = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).expect("a policy holds fewer than 2^32 rules");
            for to in &rule.to {
                match &to.target {
                    Target::Host(crate::HostPattern::Exact(n)) => {
                        ix.host_exact.entry(n.as_str().into()).or_default().push(i)
                    }
                    Target::Host(crate::HostPattern::Subdomains(n)) => {
                        ix.host_suffix.entry(n.as_str().into()).or_default().push(i)
                    }
                    Target::Cidr(net) => ix.dest_cidr.insert(*net, i),
                }
            }
            for from in &rule.from {
                ix.add_caller(from, i);
            }
        }
        for m in [
            &mut ix.host_exact,
            &mut ix.host_suffix,
            &mut ix.caller_spiffe,
            &mut ix.caller_namespace,
        ] {
            m.values_mut().for_each(finish_postings);
        }
        ix.dest_cidr.finish();
        ix.caller_cidr.finish();
        finish_postings(&mut ix.caller_any);
        ix
    }

    fn add_caller(&mut self, from: &CallerSelector, rule: u32) {
        if let Some(exact) = from.spiffe.as_ref().and_then(|p| p.exact()) {
            self.caller_spiffe
                .entry(exact.into())
                .or_default()
                .push(rule);
        } else if let Some(Some(ns)) = &from.namespace {
            self.caller_namespace
                .entry(ns.as_str().into())
                .or_default()
                .push(rule);
        } else if let Some(net) = from.cidr {
            self.caller_cidr.insert(net, rule);
        } else {
            self.caller_any.push(rule);
        }
    }

    /// The rules that can match `id` and `dest`, ascending. A superset of the matching rules.
    pub(crate) fn candidates(&self, id: &Identity, dest: &Destination) -> Vec<usize> {
        let mut by_dest: Vec<&[u32]> = Vec::new();
        match &dest.host {
            Host::Name(n) => {
                if let Some(p) = self.host_exact.get(n.as_str()) {
                    by_dest.push(p);
                }
                if !self.host_suffix.is_empty() {
                    for s in n.parent_suffixes() {
                        if let Some(p) = self.host_suffix.get(s) {
                            by_dest.push(p);
                        }
                    }
                }
            }
            Host::Ip(ip) => self.dest_cidr.lookup(*ip, &mut by_dest),
        }
        let dest_count: usize = by_dest.iter().map(|p| p.len()).sum();
        if dest_count == 0 {
            return Vec::new();
        }

        let mut by_caller: Vec<&[u32]> = Vec::new();
        if id.source != IdentitySource::None {
            if let Some(p) = id.spiffe.as_deref().and_then(|s| self.caller_spiffe.get(s)) {
                by_caller.push(p);
            }
            if let Some(p) = id
                .namespace
                .as_deref()
                .and_then(|s| self.caller_namespace.get(s))
            {
                by_caller.push(p);
            }
            by_caller.push(&self.caller_any);
        }
        if let Some(a) = id.address {
            self.caller_cidr.lookup(a, &mut by_caller);
        }
        let caller_count: usize = by_caller.iter().map(|p| p.len()).sum();

        let smaller = if caller_count < dest_count {
            by_caller
        } else {
            by_dest
        };
        let mut out: Vec<usize> = smaller
            .iter()
            .flat_map(|p| p.iter().map(|&i| i as usize))
            .collect();
        if smaller.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}
