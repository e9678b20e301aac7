//! Policy files that must be refused, each with the position of the mistake.

use egress_policy::{Policy, PolicyErrors};

fn errors(yaml: &str) -> PolicyErrors {
    match Policy::from_yaml(yaml, "policy.yaml") {
        Ok(_) => panic!("policy must be refused:\n{yaml}"),
        Err(e) => e,
    }
}

fn assert_refused_at(yaml: &str, line: u64, needle: &str) {
    let e = errors(yaml);
    let text = e.to_string();
    assert!(
        e.errors
            .iter()
            .any(|x| x.line == line && x.message.contains(needle)),
        "expected an error on line {line} containing {needle:?}, got:\n{text}"
    );
    assert!(
        text.starts_with("policy.yaml:"),
        "errors name the file: {text}"
    );
}

const HEAD: &str = "version: 1\nrules:\n  - name: r\n    action: allow\n";

#[test]
fn a_valid_policy_compiles() {
    let yaml = format!(
        "{HEAD}    from:\n      - cidr: 10.0.0.0/8\n    to:\n      - host: \"*.example.com\"\n        ports: [443, \"8000-8100\"]\n"
    );
    let p = Policy::from_yaml(&yaml, "policy.yaml").expect("valid policy");
    assert_eq!(p.rules().len(), 1);
}

#[test]
fn unknown_keys_are_errors_with_line_and_column() {
    let e = errors("version: 1\ndefualt: deny\n");
    assert_eq!(e.errors[0].line, 2, "{e}");
    assert!(e.to_string().starts_with("policy.yaml:2:"), "{e}");
    assert_refused_at(
        &format!("{HEAD}    from:\n      - cidr: 10.0.0.0/8\n        namespce: x\n    to:\n      - host: a.com\n        ports: [1]\n"),
        7,
        "namespce",
    );
}

#[test]
fn bad_cidrs_are_refused() {
    for (cidr, needle) in [
        ("10.0.0.1/8", "host bits"),
        ("10.0.0.0/33", "invalid CIDR"),
        ("banana", "invalid CIDR"),
        ("::ffff:0:0/96", "IPv4-mapped"),
    ] {
        assert_refused_at(
            &format!("{HEAD}    from:\n      - cidr: \"{cidr}\"\n    to:\n      - host: a.com\n        ports: [1]\n"),
            6,
            needle,
        );
    }
}

#[test]
fn bad_ports_are_refused() {
    for ports in [
        "[0]",
        "[65536]",
        "[\"9-3\"]",
        "[\"x\"]",
        "[]",
        "443",
        "[-1]",
    ] {
        let yaml = format!("{HEAD}    from:\n      - cidr: 10.0.0.0/8\n    to:\n      - host: a.com\n        ports: {ports}\n");
        let e = errors(&yaml);
        assert!(e.errors.iter().any(|x| x.line == 9), "ports {ports}: {e}");
    }
    assert_refused_at(
        &format!("{HEAD}    from:\n      - cidr: 10.0.0.0/8\n    to:\n      - host: a.com\n"),
        8,
        "needs 'ports'",
    );
}

#[test]
fn empty_from_and_to_are_refused() {
    assert_refused_at(
        &format!("{HEAD}    from: []\n    to:\n      - host: a.com\n        ports: [1]\n"),
        5,
        "'from' must not be empty",
    );
    assert_refused_at(
        &format!("{HEAD}    from:\n      - cidr: 10.0.0.0/8\n    to: []\n"),
        7,
        "'to' must not be empty",
    );
}

#[test]
fn an_empty_selector_is_refused_rather_than_matching_everyone() {
    assert_refused_at(
        &format!("{HEAD}    from:\n      - via: [mtls]\n    to:\n      - host: a.com\n        ports: [1]\n"),
        6,
        "at least one of",
    );
}

#[test]
fn duplicate_rule_names_are_refused() {
    let rule =
        "    from:\n      - cidr: 10.0.0.0/8\n    to:\n      - host: a.com\n        ports: [1]\n";
    let yaml = format!("{HEAD}{rule}  - name: r\n    action: deny\n{rule}");
    assert_refused_at(&yaml, 10, "duplicate rule name");
}

#[test]
fn misplaced_wildcards_are_refused() {
    for host in ["\"*\"", "\"*foo.com\"", "foo.*.com", "\"*.*.com\""] {
        assert_refused_at(
            &format!("{HEAD}    from:\n      - cidr: 10.0.0.0/8\n    to:\n      - host: {host}\n        ports: [1]\n"),
            8,
            "wildcard",
        );
    }
}

#[test]
fn ip_literals_in_host_entries_are_refused() {
    for host in ["127.0.0.1", "\"2130706433\"", "0x7f.1", "\"[::1]\""] {
        assert_refused_at(
            &format!("{HEAD}    from:\n      - cidr: 10.0.0.0/8\n    to:\n      - host: {host}\n        ports: [1]\n"),
            8,
            "cidr",
        );
    }
}

#[test]
fn bad_spiffe_ids_and_sources_are_refused() {
    assert_refused_at(
        &format!("{HEAD}    from:\n      - spiffe: spiffe://td/a//b\n    to:\n      - host: a.com\n        ports: [1]\n"),
        6,
        "segment",
    );
    assert_refused_at(
        &format!("{HEAD}    from:\n      - namespace: a\n        via: [carrier-pigeon]\n    to:\n      - host: a.com\n        ports: [1]\n"),
        7,
        "identity source",
    );
}

#[test]
fn wrong_version_and_values_are_refused() {
    assert_refused_at("version: 2\n", 1, "version");
    assert_refused_at("version: 1\nmode: loud\n", 2, "");
    assert_refused_at("version: 1\ndefault: maybe\n", 2, "");
}

#[test]
fn several_errors_are_all_reported() {
    let yaml = format!("{HEAD}    from: []\n    to: []\n");
    assert_eq!(errors(&yaml).errors.len(), 2);
}

#[test]
fn messages_are_one_line_each() {
    let e = errors("version: 1\ndefualt: deny\nrules:\n  - name: r\n    action: allow\n    from:\n      - cidr: 10.0.0.1/8\n    to: []\n");
    for line in e.to_string().lines() {
        assert!(line.starts_with("policy.yaml:"), "{line}");
    }
    eprintln!("{e}");
}

#[test]
fn an_alias_bomb_is_refused_quickly() {
    let mut yaml = String::from("version: 1\nx0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..10 {
        let prev = i - 1;
        yaml.push_str(&format!("x{i}: &a{i} [*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev}]\n"));
    }
    let started = std::time::Instant::now();
    assert!(Policy::from_yaml(&yaml, "bomb.yaml").is_err());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = Policy::from_yaml(&text, "fuzz.yaml");
    }

    #[test]
    fn policy_shaped_text_never_panics(
        host in "[a-z*.\\[\\]:0-9-]{0,20}",
        cidr in "[0-9a-f:./]{0,20}",
        port in "[0-9*\"-]{0,8}",
        spiffe in "[a-zA-Z:/*.%-]{0,30}",
    ) {
        let yaml = format!("version: 1\nrules:\n  - name: r\n    action: allow\n    from:\n      - spiffe: \"{spiffe}\"\n      - cidr: \"{cidr}\"\n    to:\n      - host: \"{host}\"\n        ports: [{port}]\n");
        let _ = Policy::from_yaml(&yaml, "fuzz.yaml");
    }
}
