//! `Policy::decide` on policies of 10, 1,000 and 10,000 rules: the cost must not grow with the
//! number of rules (the index narrows to the rules naming this host or this caller).
//!
//! Run: `cargo bench -p egress-bench --bench decide`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use egress_policy::{parse_host, Destination, Identity, IdentitySource, Policy};

/// A realistic mix: exact hosts, wildcard hosts and CIDR destinations; SPIFFE, namespace and
/// source-CIDR callers.
fn policy_yaml(rules: usize) -> String {
    let mut y = String::from("version: 1\nrules:\n");
    for i in 0..rules {
        let action = if i % 17 == 0 { "deny" } else { "allow" };
        let from = match i % 3 {
            0 => format!(
                "      - spiffe: spiffe://cluster.local/ns/ns{}/sa/sa{i}\n",
                i % 100
            ),
            1 => format!("      - namespace: team{i}\n        serviceAccount: \"*\"\n"),
            _ => format!("      - cidr: 10.{}.{}.0/24\n", (i / 256) % 256, i % 256),
        };
        let to = match i % 4 {
            0 | 1 => format!("      - host: svc{i}.example.com\n        ports: [443]\n"),
            2 => format!(
                "      - host: \"*.tenant{i}.example.net\"\n        ports: [443, \"8000-8100\"]\n"
            ),
            _ => format!(
                "      - cidr: 192.0.{}.{}/32\n        ports: [5432]\n",
                (i / 256) % 256,
                i % 256
            ),
        };
        y.push_str(&format!(
            "  - name: rule-{i}\n    action: {action}\n    from:\n{from}    to:\n{to}"
        ));
    }
    y
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for rules in [10usize, 1_000, 10_000] {
        let policy = Policy::from_yaml(&policy_yaml(rules), "bench.yaml")
            .expect("generated policy is valid");
        // A hit: the caller and host of a rule in the middle of the policy.
        // Rule i names caller spiffe (i % 3 == 0) and an exact host (i % 4 < 2): a real hit.
        let i = (rules / 2) / 12 * 12;
        let hit_id = Identity::from_spiffe(
            IdentitySource::Mtls,
            &format!("spiffe://cluster.local/ns/ns{}/sa/sa{i}", i % 100),
            Some("10.9.9.9".parse().expect("literal")),
        );
        let hit_host = if i % 4 < 2 {
            format!("svc{i}.example.com")
        } else {
            format!("a.b.tenant{i}.example.net")
        };
        let hit = Destination {
            host: parse_host(&hit_host).expect("valid host"),
            port: 443,
        };
        // A miss: a known caller, a host no rule names.
        let miss = Destination {
            host: parse_host("unknown.deep.sub.example.org").expect("valid host"),
            port: 443,
        };
        group.bench_with_input(BenchmarkId::new("hit", rules), &rules, |b, _| {
            b.iter(|| black_box(policy.decide(black_box(&hit_id), black_box(&hit))))
        });
        group.bench_with_input(BenchmarkId::new("miss", rules), &rules, |b, _| {
            b.iter(|| black_box(policy.decide(black_box(&hit_id), black_box(&miss))))
        });
        let anon = Identity::anonymous(Some(
            format!("10.{}.{}.7", (rules / 2 / 256) % 256, (rules / 2) % 256)
                .parse()
                .expect("literal"),
        ));
        let ip = Destination {
            host: parse_host("192.0.0.3").expect("literal"),
            port: 5432,
        };
        group.bench_with_input(BenchmarkId::new("cidr", rules), &rules, |b, _| {
            b.iter(|| black_box(policy.decide(black_box(&anon), black_box(&ip))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
