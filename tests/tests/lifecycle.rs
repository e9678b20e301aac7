//! Hot reload and shutdown: a new policy applies to new connections without a restart, an
//! invalid one keeps the last good policy and says why, and SIGTERM drains live tunnels while
//! refusing new ones.

use std::time::Duration;

use egress_tests::client::{connect, read_to_end};
use egress_tests::dns::DnsServer;
use egress_tests::gateway::Gateway;
use egress_tests::upstream::{Behaviour, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn allow(host: &str) -> String {
    format!(
        "version: 1\nrules:\n  - name: allow-{host}\n    action: allow\n    from:\n      - cidr: 127.0.0.0/8\n    to:\n      - host: {host}.test\n        ports: [\"*\"]\n        allowPrivateAddresses: true\n"
    )
}

async fn setup(extra: &str) -> (DnsServer, Upstream, Gateway) {
    let dns = DnsServer::start().await;
    let echo = Upstream::start("127.0.0.1:0", Behaviour::Echo).await;
    for n in ["one.test", "two.test"] {
        dns.set(n, &["127.0.0.1"]);
    }
    let gw = Gateway::start(
        &allow("one"),
        &format!("dns:\n  nameservers: [\"{}\"]\n{extra}", dns.addr),
    )
    .await;
    (dns, echo, gw)
}

async fn code(gw: &Gateway, host: &str, port: u16) -> u16 {
    connect("127.0.0.2", gw.proxy, &format!("{host}:{port}"))
        .await
        .1
        .status
}

async fn policy_status(gw: &Gateway) -> serde_json::Value {
    let (status, body) = gw.admin_get("/policy").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("/policy is JSON")
}

#[tokio::test]
async fn a_configmap_symlink_swap_takes_effect_for_new_connections() {
    let (_dns, echo, mut gw) = setup("").await;
    let p = echo.addr.port();
    assert_eq!(code(&gw, "one.test", p).await, 200);
    assert_eq!(code(&gw, "two.test", p).await, 407);
    let before = policy_status(&gw).await;

    gw.swap_policy(&allow("two"));
    let mut swapped = false;
    for _ in 0..200 {
        if policy_status(&gw).await["sha256"] != before["sha256"] {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(swapped, "the ..data swap was not picked up");
    assert_eq!(code(&gw, "two.test", p).await, 200);
    assert_eq!(code(&gw, "one.test", p).await, 407);
    assert_eq!(
        gw.metric("egress_policy_reloads_total{result=\"ok\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn an_invalid_policy_keeps_the_last_good_one_and_reports_the_error() {
    let (_dns, echo, mut gw) = setup("").await;
    let p = echo.addr.port();
    let good = policy_status(&gw).await;
    gw.swap_policy(
        "version: 1\nrules:\n  - name: broken\n    action: allow\n    from: []\n    to: []\n",
    );
    let mut status = serde_json::Value::Null;
    for _ in 0..200 {
        status = policy_status(&gw).await;
        if !status["last_error"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let err = status["last_error"]
        .as_str()
        .expect("last_error is reported");
    assert!(
        err.contains("policy.yaml:5:") && err.contains("'from' must not be empty"),
        "{err}"
    );
    assert_eq!(
        status["sha256"], good["sha256"],
        "the last good policy stays loaded"
    );
    assert_eq!(code(&gw, "one.test", p).await, 200);
    assert!(
        gw.metric("egress_policy_reloads_total{result=\"error\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // A fixed file, written in place and announced with SIGHUP, clears the error.
    gw.write_policy_in_place(&allow("two"));
    gw.signal("HUP");
    let mut fixed = false;
    for _ in 0..200 {
        let s = policy_status(&gw).await;
        if s["last_error"].is_null() && s["sha256"] != good["sha256"] {
            fixed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(fixed, "SIGHUP reload did not apply the fixed policy");
    assert_eq!(code(&gw, "two.test", p).await, 200);
}

#[tokio::test]
async fn sigterm_drains_live_tunnels_and_refuses_new_ones() {
    let (_dns, echo, mut gw) = setup("shutdown:\n  drainTimeout: 30s\n").await;
    let p = echo.addr.port();
    let (mut live, r) = connect("127.0.0.2", gw.proxy, &format!("one.test:{p}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.0, 200);

    gw.signal("TERM");
    // Readiness fails at once; the listener stops accepting.
    let mut not_ready = false;
    for _ in 0..200 {
        if gw.admin_get("/readyz").await.0 == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(not_ready, "/readyz still ready after SIGTERM");
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(gw.proxy).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections are still accepted while draining");

    // The live tunnel keeps working during the drain.
    live.write_all(b"still").await.expect("write during drain");
    let mut got = [0u8; 5];
    live.read_exact(&mut got).await.expect("echo during drain");
    assert_eq!(&got, b"still");
    assert!(gw.is_running());

    // When it finishes, the gateway exits without waiting out the drain period.
    live.shutdown().await.expect("close");
    assert_eq!(read_to_end(&mut live).await, b"");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    let line = gw
        .wait_audit("the drained tunnel's line", |v| v["host"] == "one.test")
        .await;
    assert_eq!(line["bytes_up"], 5);
}

#[tokio::test]
async fn tunnels_still_open_when_the_drain_period_ends_are_closed() {
    let (_dns, echo, mut gw) = setup("shutdown:\n  drainTimeout: 300ms\n").await;
    let (mut live, r) = connect(
        "127.0.0.2",
        gw.proxy,
        &format!("one.test:{}", echo.addr.port()),
    )
    .await;
    assert_eq!(r.status, 200);
    gw.signal("TERM");
    assert_eq!(
        read_to_end(&mut live).await,
        b"",
        "the gateway closed the tunnel"
    );
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());
    let line = gw
        .wait_audit("the closed tunnel's line", |v| v["host"] == "one.test")
        .await;
    assert_eq!(line["close"], "drain");
}

/// A forwarded request whose body stalls is an open connection like a tunnel: the end of the
/// drain period closes it too, and its audit line is written before the gateway exits.
#[tokio::test]
async fn a_request_body_still_arriving_when_the_drain_period_ends_is_closed() {
    let (_dns, _echo, mut gw) = setup("shutdown:\n  drainTimeout: 300ms\n").await;
    // It records what it receives and never answers.
    let slurp = Upstream::start("127.0.0.1:0", Behaviour::Sink).await;
    let port = slurp.addr.port();
    let mut s = egress_tests::client::connect_from("127.0.0.2", gw.proxy).await;
    let head = format!(
        "POST http://one.test:{port}/up HTTP/1.1\r\nHost: one.test:{port}\r\nContent-Length: 10\r\n\r\nabc"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // The request is forwarded before the signal.
    egress_tests::eventually("the request head reached the upstream", || {
        String::from_utf8_lossy(&slurp.received())
            .contains("POST /up")
            .then_some(())
    })
    .await;
    gw.signal("TERM");
    // Reset, not closed with a FIN: the answer (none here) may have been cut.
    let (got, end) = egress_tests::client::read_until_the_end(&mut s).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    egress_tests::client::assert_reset(&end);
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());
    let line = gw
        .wait_audit("the stalled request's line", |v| v["host"] == "one.test")
        .await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["close"], "drain");
}

/// The lines a child writes on its standard error (piped), as they come.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    rx
}

#[tokio::test]
async fn sighup_without_a_policy_file_does_not_stop_the_gateway() {
    let dir = egress_tests::gateway::temp_dir("nopolicy");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(&cfg, "listeners:\n  - {name: p, kind: connect, address: \"127.0.0.1:0\"}\nadmin: {address: \"127.0.0.1:0\"}\n").expect("write");
    let mut child = std::process::Command::new(egress_tests::gateway::binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let rx = stderr_lines(&mut child);
    let started = rx.iter().take(20).any(|l| l.contains("policy loaded"));
    assert!(started, "the gateway did not start");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "SIGHUP stopped the gateway"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A plain policy file in a directory shared with other files (a log, say): reading the policy
/// is not a change to it (the gateway's own reads must not set off another check), writes to the
/// other files are not either, and an edit of the file itself is picked up.
#[tokio::test]
async fn a_plain_policy_file_is_checked_on_its_own_changes_only() {
    let dir = egress_tests::gateway::temp_dir("plainpolicy");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, "version: 1\nrules: []\n").expect("write policy");
    let path = policy.clone();
    let gw = Gateway::start_full(
        "version: 1\nrules: []\n",
        move |_| {
            format!(
                "listeners:\n  - {{name: proxy, kind: connect, address: \"127.0.0.1:0\"}}\nadmin: {{address: \"127.0.0.1:0\"}}\npolicy: {{path: {}}}\nlog: {{format: json, level: info}}\n",
                path.display()
            )
        },
        None,
    )
    .await;
    let log = dir.join("gateway.log");
    for i in 0..20 {
        std::fs::write(&log, format!("line {i}\n")).expect("write log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unchanged = gw
        .metric("egress_policy_reloads_total{result=\"unchanged\"}")
        .await
        .unwrap_or(0.0);
    // The periodic check runs once at start; nothing else may have set one off.
    assert!(
        unchanged <= 1.0,
        "{unchanged} checks of an untouched policy"
    );
    std::fs::write(
        &policy,
        "version: 1\nrules:\n  - name: r\n    action: deny\n    from: [{cidr: 10.0.0.0/8}]\n    to: [{cidr: 10.0.0.0/8, ports: [\"*\"]}]\n",
    )
    .expect("edit policy");
    assert_eq!(
        gw.wait_metric("egress_policy_reloads_total{result=\"ok\"}", 2.0)
            .await,
        Some(2.0)
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

/// The soft and hard limits on open files of a process, from /proc/PID/limits.
fn open_files_limits(pid: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files")
        .to_owned();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

/// Started with a soft limit on open files below the hard one (as container runtimes and systemd
/// often do, at 1024), the gateway raises the soft limit to the hard one and says so: otherwise
/// it would stop accepting after a few hundred tunnels. util-linux's prlimit sets the limits.
#[tokio::test]
async fn the_open_files_soft_limit_is_raised_to_the_hard_limit() {
    let dir = egress_tests::gateway::temp_dir("nofile");
    let cfg = dir.join("gateway.yaml");
    std::fs::write(&cfg, "listeners:\n  - {name: p, kind: connect, address: \"127.0.0.1:0\"}\nadmin: {address: \"127.0.0.1:0\"}\nlog: {format: json}\n").expect("write");
    let (_, hard) = open_files_limits("self");
    let hard_n: u64 = hard.parse().expect("a finite hard limit on open files");
    let soft = 256.min(hard_n);
    assert!(
        hard_n > soft,
        "the hard limit ({hard}) leaves nothing to raise"
    );
    let mut child = std::process::Command::new("prlimit")
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(egress_tests::gateway::binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start prlimit (util-linux)");
    let rx = stderr_lines(&mut child);
    let raised = rx
        .iter()
        .take(30)
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            (v["message"] == "open files limit raised").then_some(v)
        })
        .expect("no 'open files limit raised' line");
    assert_eq!(raised["from"], soft);
    assert_eq!(raised["to"], hard_n);
    // prlimit execs the gateway: the child is the gateway itself.
    let now = open_files_limits(&child.id().to_string());
    assert_eq!(now, (hard.clone(), hard));
    let _ = child.kill();
    let _ = child.wait();
}
