//! The matching rules of the policy language, one scenario each.

use egress_policy::{
    parse_host, Decision, Destination, Identity, IdentitySource, Policy, PolicyReason, Verdict,
};

fn policy(rules: &str) -> Policy {
    Policy::from_yaml(&format!("version: 1\nrules:\n{rules}"), "p.yaml").expect("valid policy")
}

fn to(host: &str, port: u16) -> Destination {
    Destination {
        host: parse_host(host).expect("valid host"),
        port,
    }
}

fn mtls(id: &str) -> Identity {
    Identity::from_spiffe(
        IdentitySource::Mtls,
        id,
        Some("10.0.0.1".parse().expect("literal")),
    )
}

fn pod(ns: &str, sa: &str, labels: &[(&str, &str)]) -> Identity {
    let mut id = Identity::from_spiffe(
        IdentitySource::Kubernetes,
        &format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"),
        Some("10.1.0.5".parse().expect("literal")),
    );
    id.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    id
}

fn allowed(d: &Decision) -> bool {
    d.verdict == Verdict::Allow
}

const STRIPE: &str = "    to:\n      - host: api.stripe.com\n        ports: [443]\n";

#[test]
fn deny_rules_win_over_allow_rules_whatever_their_order() {
    let p = policy(&format!(
        "  - name: allow-all-ns\n    action: allow\n    from:\n      - namespace: \"*\"\n{STRIPE}  - name: deny-payments\n    action: deny\n    from:\n      - namespace: payments\n{STRIPE}"
    ));
    let d = p.decide(
        &pod("payments", "checkout", &[]),
        &to("api.stripe.com", 443),
    );
    assert_eq!(
        (d.verdict, d.reason, d.rule.as_deref()),
        (
            Verdict::Deny,
            PolicyReason::DeniedByRule,
            Some("deny-payments")
        )
    );
    assert!(allowed(
        &p.decide(&pod("billing", "x", &[]), &to("api.stripe.com", 443))
    ));
}

#[test]
fn spiffe_ids_give_namespace_and_service_account_selectors_to_mtls_callers() {
    let p = policy(&format!("  - name: r\n    action: allow\n    from:\n      - namespace: payments\n        serviceAccount: checkout\n{STRIPE}"));
    assert!(allowed(&p.decide(
        &mtls("spiffe://cluster.local/ns/payments/sa/checkout"),
        &to("api.stripe.com", 443)
    )));
    assert!(!allowed(&p.decide(
        &mtls("spiffe://cluster.local/ns/payments/sa/other"),
        &to("api.stripe.com", 443)
    )));
    assert!(!allowed(&p.decide(
        &mtls("spiffe://cluster.local/vm/payments"),
        &to("api.stripe.com", 443)
    )));
}

#[test]
fn spiffe_star_matches_one_whole_segment() {
    let p = policy(&format!("  - name: r\n    action: allow\n    from:\n      - spiffe: spiffe://cluster.local/ns/*/sa/checkout\n{STRIPE}"));
    assert!(allowed(&p.decide(
        &mtls("spiffe://cluster.local/ns/a/sa/checkout"),
        &to("api.stripe.com", 443)
    )));
    assert!(!allowed(&p.decide(
        &mtls("spiffe://cluster.local/ns/a/b/sa/checkout"),
        &to("api.stripe.com", 443)
    )));
}

#[test]
fn pod_labels_match_only_identities_from_the_pod_cache() {
    let p = policy(&format!("  - name: r\n    action: allow\n    from:\n      - namespace: billing\n        podLabels: {{app: invoicer}}\n{STRIPE}"));
    assert!(allowed(&p.decide(
        &pod("billing", "sa", &[("app", "invoicer"), ("x", "y")]),
        &to("api.stripe.com", 443)
    )));
    assert!(!allowed(&p.decide(
        &pod("billing", "sa", &[("app", "other")]),
        &to("api.stripe.com", 443)
    )));
    let mut forged = mtls("spiffe://cluster.local/ns/billing/sa/sa");
    forged.labels.insert("app".into(), "invoicer".into());
    assert!(
        !allowed(&p.decide(&forged, &to("api.stripe.com", 443))),
        "labels from an mTLS identity never count"
    );
}

#[test]
fn via_restricts_an_entry_to_identity_sources() {
    let p = policy(&format!("  - name: r\n    action: allow\n    from:\n      - namespace: payments\n        via: [mtls]\n{STRIPE}"));
    assert!(allowed(&p.decide(
        &mtls("spiffe://cluster.local/ns/payments/sa/a"),
        &to("api.stripe.com", 443)
    )));
    assert!(!allowed(
        &p.decide(&pod("payments", "a", &[]), &to("api.stripe.com", 443))
    ));
}

#[test]
fn a_caller_without_identity_matches_only_cidr_selectors() {
    let p = policy(&format!(
        "  - name: by-ns\n    action: allow\n    from:\n      - namespace: \"*\"\n{STRIPE}  - name: by-cidr\n    action: allow\n    from:\n      - cidr: 10.9.0.0/16\n    to:\n      - host: example.com\n        ports: [\"*\"]\n"
    ));
    let anon = Identity::anonymous(Some("10.9.1.1".parse().expect("literal")));
    let d = p.decide(&anon, &to("api.stripe.com", 443));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, PolicyReason::UnknownIdentity)
    );
    assert!(allowed(&p.decide(&anon, &to("example.com", 8443))));
    let elsewhere = Identity::anonymous(Some("10.8.1.1".parse().expect("literal")));
    assert!(!allowed(&p.decide(&elsewhere, &to("example.com", 443))));
}

#[test]
fn ports_are_lists_ranges_or_star() {
    let p = policy("  - name: r\n    action: allow\n    from:\n      - cidr: 0.0.0.0/0\n    to:\n      - host: db.example.com\n        ports: [5432, \"8000-8100\"]\n");
    let anon = Identity::anonymous(Some("192.0.2.1".parse().expect("literal")));
    for (port, ok) in [
        (5432, true),
        (8000, true),
        (8100, true),
        (8050, true),
        (7999, false),
        (8101, false),
        (443, false),
    ] {
        assert_eq!(
            allowed(&p.decide(&anon, &to("db.example.com", port))),
            ok,
            "port {port}"
        );
    }
}

#[test]
fn host_entries_never_match_ip_literals_and_cidr_entries_never_match_names() {
    let p = policy("  - name: r\n    action: allow\n    from:\n      - cidr: 0.0.0.0/0\n    to:\n      - host: example.com\n        ports: [\"*\"]\n      - cidr: 192.0.2.0/24\n        ports: [\"*\"]\n");
    let anon = Identity::anonymous(Some("192.0.2.1".parse().expect("literal")));
    assert!(allowed(&p.decide(&anon, &to("192.0.2.7", 80))));
    assert!(
        allowed(&p.decide(&anon, &to("[::ffff:192.0.2.7]", 80))),
        "IPv4-mapped literals are their IPv4"
    );
    assert!(!allowed(&p.decide(&anon, &to("93.184.216.34", 80))));
}

#[test]
fn default_allow_and_policy_wide_audit_mode() {
    let p = Policy::from_yaml("version: 1\ndefault: allow\n", "p.yaml").expect("valid");
    let d = p.decide(&pod("a", "b", &[]), &to("example.com", 443));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Allow, PolicyReason::DefaultAllow)
    );
    let p = Policy::from_yaml(&format!("version: 1\nmode: audit\nrules:\n  - name: no\n    action: deny\n    from:\n      - namespace: a\n{STRIPE}"), "p.yaml").expect("valid");
    let d = p.decide(&pod("a", "b", &[]), &to("api.stripe.com", 443));
    assert_eq!(
        (d.verdict, d.reason, d.rule.as_deref()),
        (Verdict::AuditAllow, PolicyReason::DeniedByRule, Some("no"))
    );
}

#[test]
fn audit_mode_rules_are_reported_in_shadow_and_never_decide() {
    let p = policy(&format!(
        "  - name: shadow-deny\n    action: deny\n    mode: audit\n    from:\n      - namespace: a\n{STRIPE}  - name: real-allow\n    action: allow\n    from:\n      - namespace: a\n{STRIPE}"
    ));
    let d = p.decide(&pod("a", "b", &[]), &to("api.stripe.com", 443));
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Allow, Some("real-allow"))
    );
    assert_eq!(d.shadow.len(), 1);
    assert_eq!(&*d.shadow[0].rule, "shadow-deny");
}

#[test]
fn allow_private_addresses_comes_from_the_matching_host_entry() {
    let p = policy("  - name: r\n    action: allow\n    from:\n      - cidr: 0.0.0.0/0\n    to:\n      - host: db.corp.internal\n        ports: [5432]\n        allowPrivateAddresses: true\n      - host: api.corp.internal\n        ports: [443]\n");
    let anon = Identity::anonymous(Some("10.0.0.1".parse().expect("literal")));
    assert!(
        p.decide(&anon, &to("db.corp.internal", 5432))
            .allow_private_addresses
    );
    assert!(
        !p.decide(&anon, &to("api.corp.internal", 443))
            .allow_private_addresses
    );
}
