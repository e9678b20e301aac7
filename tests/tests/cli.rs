//! The command line: `policy validate`, `policy check`, `config validate`, `version`, and `run`
//! refusing a bad configuration before binding anything.

use std::process::{Command, Output};

use egress_tests::gateway::{binary, temp_dir};

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run egress-gateway")
}

const POLICY: &str = r#"version: 1
rules:
  - name: checkout-to-stripe
    action: allow
    from:
      - spiffe: spiffe://cluster.local/ns/payments/sa/checkout
      - namespace: billing
        podLabels: {app: invoicer}
    to:
      - host: api.stripe.com
        ports: [443]
  - name: no-pastebin
    action: deny
    from:
      - namespace: "*"
    to:
      - host: "*.pastebin.com"
        ports: ["*"]
  - name: try-s3
    action: allow
    mode: audit
    from:
      - namespace: payments
    to:
      - host: "*.s3.amazonaws.com"
        ports: [443]
"#;

/// A gateway.yaml in `dir` with one connect listener and the admin server on ephemeral loopback
/// ports, and the policy at `policy`.
fn connect_config(dir: &std::path::Path, policy: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!("listeners:\n  - {{name: p, kind: connect, address: \"127.0.0.1:0\"}}\nadmin: {{address: \"127.0.0.1:0\"}}\npolicy: {{path: {}}}\n", policy.display()),
    )
    .expect("write");
    cfg
}

fn policy_file(text: &str) -> String {
    let dir = temp_dir("cli");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).expect("write policy");
    path.display().to_string()
}

#[test]
fn validate_accepts_a_good_policy_and_names_line_and_column_of_a_bad_one() {
    let good = policy_file(POLICY);
    let out = run(&["policy", "validate", &good]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = policy_file("version: 1\nrules:\n  - name: r\n    action: allow\n    from:\n      - cidr: 10.0.0.0/33\n    to:\n      - host: a.com\n        ports: [1]\n");
    let out = run(&["policy", "validate", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("{bad}:6:")), "{err}");
}

#[test]
fn check_prints_the_decision_and_exits_by_it() {
    let p = policy_file(POLICY);
    let out = run(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--spiffe",
        "spiffe://cluster.local/ns/payments/sa/checkout",
        "--to",
        "API.stripe.com.:443",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("checkout-to-stripe"));

    let out = run(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--source",
        "10.1.2.3",
        "--namespace",
        "billing",
        "--label",
        "app=invoicer",
        "--to",
        "api.stripe.com:443",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"], "checkout-to-stripe");
    assert_eq!(v["identity_source"], "kubernetes");

    let out = run(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--spiffe",
        "spiffe://cluster.local/ns/payments/sa/checkout",
        "--to",
        "x.pastebin.com:443",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["reason"], "denied_by_rule");
    assert_eq!(v["rule"], "no-pastebin");

    let out = run(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--spiffe",
        "spiffe://cluster.local/ns/payments/sa/checkout",
        "--to",
        "b.s3.amazonaws.com:443",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a shadow rule never changes the outcome"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["reason"], "no_matching_rule");
    assert_eq!(v["shadow"][0]["rule"], "try-s3");

    let out = run(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--source",
        "10.1.2.3",
        "--to",
        "api.stripe.com:443",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown_identity"));
}

#[test]
fn check_exits_2_on_usage_errors_and_invalid_policies() {
    let p = policy_file(POLICY);
    assert_eq!(
        run(&[
            "policy",
            "check",
            "--policy",
            &p,
            "--spiffe",
            "spiffe://td/x",
            "--to",
            "no-port"
        ])
        .status
        .code(),
        Some(2)
    );
    assert_eq!(
        run(&["policy", "check", "--policy", &p, "--to", "a.com:443"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&[
            "policy",
            "check",
            "--policy",
            &p,
            "--spiffe",
            "SPIFFE://td/x",
            "--to",
            "a.com:443"
        ])
        .status
        .code(),
        Some(2)
    );
    // A rule's pattern is not a caller's ID: it is refused, not checked as if some caller had it.
    let wildcard = run(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--spiffe",
        "spiffe://cluster.local/ns/*/sa/checkout",
        "--to",
        "a.com:443",
    ]);
    assert_eq!(wildcard.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&wildcard.stderr).contains("is not a SPIFFE ID"),
        "{}",
        String::from_utf8_lossy(&wildcard.stderr)
    );
    let bad = policy_file("version: 1\nbogus: 1\n");
    assert_eq!(
        run(&[
            "policy",
            "check",
            "--policy",
            &bad,
            "--spiffe",
            "spiffe://td/x",
            "--to",
            "a.com:443"
        ])
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn run_refuses_a_bad_config_with_its_position() {
    let dir = temp_dir("cfg");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n  - name: p\n    kind: connect\n    address: 127.0.0.1:0\n    colour: red\n",
    )
    .expect("write");
    let out = run(&["run", "--config", cfg.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.yaml:5:") && err.contains("colour"),
        "{err}"
    );
    let out = run(&["config", "validate", cfg.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_prints_the_version() {
    let out = run(&["version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("egress-gateway 0."));
}

#[test]
fn the_examples_in_the_readme_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for example in ["examples/gateway.yaml", "examples/gateway-cluster.yaml"] {
        let out = Command::new(binary())
            .args(["config", "validate", example])
            .current_dir(&root)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(binary())
        .args([
            "policy",
            "check",
            "--policy",
            "examples/policy.yaml",
            "--source",
            "127.0.0.5",
            "--to",
            "example.com:443",
        ])
        .current_dir(&root)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn run_refuses_an_invalid_policy_at_start() {
    let dir = temp_dir("badpolicy");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, "version: 1\nrules: 5\n").expect("write");
    let cfg = connect_config(&dir, &policy);
    let out = run(&["run", "--config", cfg.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy.yaml:2:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `run` without `--config` in `dir`, with the ports moved to ephemeral ones through the
/// environment overrides, and returns the "policy loaded" log line.
fn run_embedded_default(dir: &std::path::Path) -> serde_json::Value {
    use std::io::BufRead;
    let mut child = Command::new(binary())
        .arg("run")
        .current_dir(dir)
        .env("EGRESS_GATEWAY__LISTENERS__0__ADDRESS", "127.0.0.1:0")
        .env("EGRESS_GATEWAY__ADMIN__ADDRESS", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let mut found = None;
    let mut listening = false;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .take(20)
    {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "listening"
            && v["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:"))
        {
            listening = true;
        }
        if v["message"] == "policy loaded" {
            found = Some(v);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the embedded default listens on 127.0.0.1");
    found.expect("the gateway says which policy it loaded")
}

#[test]
fn run_without_config_uses_the_embedded_default_and_local_policy_yaml() {
    let empty = temp_dir("embedded-empty");
    let line = run_embedded_default(&empty);
    assert_eq!(line["path"], "<none: deny-all>");
    assert_eq!(line["rules"], 0);

    let with_policy = temp_dir("embedded-policy");
    std::fs::write(with_policy.join("policy.yaml"), POLICY).expect("write policy");
    let line = run_embedded_default(&with_policy);
    assert_eq!(line["path"], "policy.yaml");
    assert_eq!(line["rules"], 3);
}

#[test]
fn certs_dev_writes_a_ca_a_gateway_certificate_and_workload_svids() {
    let out = temp_dir("certs-dev");
    let dir = out.join("pki");
    let o = run(&[
        "certs",
        "dev",
        "--out",
        dir.to_str().expect("utf-8 path"),
        "--workload",
        "spiffe://cluster.local/ns/payments/sa/checkout",
        "--workload",
        "spiffe://cluster.local/ns/billing/sa/invoicer",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "ca.crt",
        "ca.key",
        "gateway.crt",
        "gateway.key",
        "checkout.crt",
        "checkout.key",
        "invoicer.crt",
        "invoicer.key",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // A certificate tool nobody here wrote agrees that the chain holds and what the SAN is.
    if let Ok(v) = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("ca.crt"))
        .arg(dir.join("checkout.crt"))
        .output()
    {
        assert!(
            v.status.success(),
            "openssl verify: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        let text = Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-ext",
                "subjectAltName,extendedKeyUsage",
                "-in",
            ])
            .arg(dir.join("checkout.crt"))
            .output()
            .expect("openssl x509");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("URI:spiffe://cluster.local/ns/payments/sa/checkout"),
            "{text}"
        );
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
    } else {
        eprintln!("openssl is not installed: checked the files only");
    }
    let bad = run(&[
        "certs",
        "dev",
        "--out",
        dir.to_str().expect("utf-8 path"),
        "--workload",
        "SPIFFE://x/y",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_mtls_example_is_valid_once_its_certificates_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = temp_dir("mtls-example");
    std::fs::create_dir_all(work.join("examples")).expect("dir");
    for f in ["gateway-mtls.yaml", "policy-mtls.yaml"] {
        std::fs::copy(root.join("examples").join(f), work.join("examples").join(f)).expect("copy");
    }
    let dev = Command::new(binary())
        .args([
            "certs",
            "dev",
            "--out",
            "dev-pki",
            "--workload",
            "spiffe://cluster.local/ns/payments/sa/checkout",
        ])
        .current_dir(&work)
        .output()
        .expect("certs dev");
    assert!(dev.status.success());
    let out = Command::new(binary())
        .args(["config", "validate", "examples/gateway-mtls.yaml"])
        .current_dir(&work)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new(binary())
        .args([
            "policy",
            "check",
            "--policy",
            "examples/policy-mtls.yaml",
            "--spiffe",
            "spiffe://cluster.local/ns/payments/sa/checkout",
            "--to",
            "example.com:443",
        ])
        .current_dir(&work)
        .output()
        .expect("run");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn config_validate_loads_the_tls_material_it_names() {
    let dir = temp_dir("tls-missing");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n  - name: m\n    kind: connect\n    address: 127.0.0.1:0\n    tls:\n      cert: /nonexistent/gw.crt\n      key: /nonexistent/gw.key\n      clientCa: /nonexistent/ca.crt\n",
    )
    .expect("write");
    let out = run(&["config", "validate", cfg.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gw.crt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["run", "--config", cfg.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2), "run refuses it too");
}

#[test]
fn run_refuses_a_worker_count_that_is_not_a_positive_number() {
    let dir = temp_dir("workers");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write");
    let cfg = connect_config(&dir, &policy);
    for bad in ["0", "many", "-1"] {
        let out = Command::new(binary())
            .args(["run", "--config", cfg.to_str().expect("utf-8 path")])
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .expect("run egress-gateway");
        assert_eq!(out.status.code(), Some(2), "TOKIO_WORKER_THREADS={bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("TOKIO_WORKER_THREADS") && err.contains("not a positive number"),
            "{err}"
        );
    }
}
