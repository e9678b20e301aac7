//! The compiled index must decide exactly as a rule-by-rule evaluation, on generated policies and
//! queries drawn from a small vocabulary so that rules and queries collide often.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use egress_policy::{
    parse_cidr, parse_host, Action, CallerSelector, Destination, DestinationSelector, HostPattern,
    Identity, IdentitySource, Mode, Policy, PortSet, Rule, SpiffePattern, Target,
};
use proptest::prelude::*;

const NAMES: &[&str] = &[
    "a.com",
    "b.a.com",
    "x.b.a.com",
    "c.org",
    "a.com.evil.net",
    "ba.com",
];
const SPIFFE: &[&str] = &[
    "spiffe://td/ns/n1/sa/s1",
    "spiffe://td/ns/n1/sa/s2",
    "spiffe://td/ns/n2/sa/s1",
    "spiffe://td/vm/batch",
    "spiffe://other/ns/n1/sa/s1",
];
const SPIFFE_PATTERNS: &[&str] = &[
    "spiffe://td/ns/*/sa/s1",
    "spiffe://td/ns/n1/sa/*",
    "spiffe://td/*/batch",
];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "0.0.0.0/0",
    "fd00::/8",
    "fd00:1::/32",
    "::/0",
];
const ADDRS: &[&str] = &[
    "10.1.2.3",
    "10.1.9.9",
    "10.200.0.1",
    "192.0.2.1",
    "fd00:1::5",
    "fd99::1",
    "::ffff:10.1.2.3",
];
const NAMESPACES: &[&str] = &["n1", "n2"];
const PORTS: &[u16] = &[80, 443, 8080];

fn pick<T: Clone + std::fmt::Debug + 'static>(v: &'static [T]) -> impl Strategy<Value = T> {
    (0..v.len()).prop_map(move |i| v[i].clone())
}

fn opt_name() -> impl Strategy<Value = Option<Option<String>>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(None)),
        2 => pick(NAMESPACES).prop_map(|n| Some(Some(n.to_owned()))),
    ]
}

fn caller() -> impl Strategy<Value = CallerSelector> {
    (
        prop_oneof![
            3 => Just(None),
            2 => pick(SPIFFE).prop_map(Some),
            1 => pick(SPIFFE_PATTERNS).prop_map(Some),
        ],
        opt_name(),
        prop_oneof![3 => Just(None), 1 => Just(Some(None)), 1 => Just(Some(Some("s1".to_owned())))],
        prop_oneof![4 => Just(None), 1 => Just(Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])))],
        prop_oneof![2 => Just(None), 2 => pick(CIDRS).prop_map(Some)],
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(vec![IdentitySource::Mtls])),
            1 => Just(Some(vec![IdentitySource::Kubernetes, IdentitySource::Static])),
        ],
    )
        .prop_map(|(spiffe, namespace, service_account, pod_labels, cidr, via)| CallerSelector {
            spiffe: spiffe.map(|s| SpiffePattern::parse(s).expect("vocabulary is valid")),
            namespace,
            service_account,
            pod_labels,
            cidr: cidr.map(|c| parse_cidr(c).expect("vocabulary is valid")),
            via,
        })
        .prop_filter("a selector needs a key", |c| {
            c.spiffe.is_some() || c.namespace.is_some() || c.service_account.is_some() || c.pod_labels.is_some() || c.cidr.is_some()
        })
}

fn destination() -> impl Strategy<Value = DestinationSelector> {
    (
        prop_oneof![
            2 => pick(NAMES).prop_map(|n| Target::Host(HostPattern::parse(n).expect("valid"))),
            2 => pick(NAMES).prop_map(|n| Target::Host(HostPattern::parse(&format!("*.{n}")).expect("valid"))),
            2 => pick(CIDRS).prop_map(|c| Target::Cidr(parse_cidr(c).expect("valid"))),
        ],
        prop_oneof![1 => Just(PortSet::Any), 3 => pick(PORTS).prop_map(|p| PortSet::Ranges(vec![(p, p)])), 1 => Just(PortSet::Ranges(vec![(400, 9000)]))],
        any::<bool>(),
    )
        .prop_map(|(target, ports, private)| {
            let private = private && matches!(target, Target::Host(_));
            DestinationSelector { target, ports, allow_private_addresses: private }
        })
}

fn rule(i: usize) -> impl Strategy<Value = Rule> {
    (
        prop_oneof![Just(Action::Allow), Just(Action::Deny)],
        prop_oneof![4 => Just(Mode::Enforce), 1 => Just(Mode::Audit)],
        prop::collection::vec(caller(), 1..3),
        prop::collection::vec(destination(), 1..3),
    )
        .prop_map(move |(action, mode, from, to)| Rule {
            name: Arc::from(format!("r{i}")),
            action,
            mode,
            from,
            to,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::collection::vec(any::<u8>(), 0..24),
        prop_oneof![Just(Mode::Enforce), Just(Mode::Audit)],
        prop_oneof![3 => Just(Action::Deny), 1 => Just(Action::Allow)],
    )
        .prop_flat_map(|(seeds, mode, default)| {
            let rules: Vec<_> = (0..seeds.len()).map(rule).collect();
            (rules, Just(mode), Just(default))
        })
        .prop_map(|(rules, mode, default)| Policy::compile(mode, default, rules))
}

fn identity() -> impl Strategy<Value = Identity> {
    let addr = prop_oneof![1 => Just(None), 4 => pick(ADDRS).prop_map(|a| Some(a.parse::<IpAddr>().expect("valid")))];
    (
        prop_oneof![
            Just(IdentitySource::Mtls),
            Just(IdentitySource::Kubernetes),
            Just(IdentitySource::Static),
            Just(IdentitySource::None)
        ],
        pick(SPIFFE),
        addr,
        any::<bool>(),
    )
        .prop_map(|(source, spiffe, address, labelled)| {
            if source == IdentitySource::None {
                return Identity::anonymous(address);
            }
            let mut id = Identity::from_spiffe(source, spiffe, address);
            if labelled {
                id.labels.insert("app".to_owned(), "web".to_owned());
            }
            id
        })
}

fn query_destination() -> impl Strategy<Value = Destination> {
    (prop_oneof![pick(NAMES), pick(ADDRS)], pick(PORTS)).prop_map(|(h, port)| Destination {
        host: parse_host(h).expect("valid"),
        port,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_index_decides_like_rule_by_rule_evaluation(
        p in policy(),
        queries in prop::collection::vec((identity(), query_destination()), 1..16),
    ) {
        for (id, dest) in &queries {
            prop_assert_eq!(p.decide(id, dest), p.decide_naive(id, dest), "identity {:?} destination {}", id, dest);
        }
    }
}
