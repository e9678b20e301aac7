//! A whole cluster's egress path, built from network namespaces and veth pairs:
//!
//! ```text
//!  pod1 10.244.1.2 ─┐                      ┌─ gw-in 10.250.0.2   [gateway]   gw-out 45.34.0.2 ─┐
//!                   ├─ node (routes, DNS, ─┤                                                    ├─ ext: 45.33.0.10 (TLS :443,
//!  pod2 10.244.2.2 ─┘   steering, DNAT)    └─ n-ext 45.35.0.2 ───────────────────────────────────┘   HTTP :80, greeter :7000/:7001),
//!                                                                                                    45.33.0.20 (TLS :443), DNS .53;
//!                                                                                                    firewall: only 45.34.0.2 gets in
//! ```
//!
//! The node steers the Pods' outbound TCP to ports 80, 443 and 7000 to the gateway by policy
//! routing; in the gateway's namespace iptables `REDIRECT`s 443 to the `transparent` listener
//! and 7000 (a server-first protocol) to one with a short `silentClientTimeout`, and `TPROXY`s 80
//! to a third. Cluster DNS on the node answers `steered.*` with a
//! Service IP that the node DNATs to the `sni` listener, as kube-proxy would. The gateway's own
//! dials carry `upstream.mark`, and an `OUTPUT` rule in its namespace would redirect every
//! unmarked dial back into it. The Pods are identified with `identity.static`.
//!
//! Needs root, `ip` and `iptables` (CI runs as root and installs them); elsewhere it says why it
//! cannot run and passes without checking anything.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_tests::dns::DnsServer;
use egress_tests::gateway::Gateway;
use egress_tests::netns::{unavailable, Lab};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"version: 1
rules:
  - name: shop-web-egress
    action: allow
    from:
      - spiffe: spiffe://cluster.local/ns/shop/sa/web
    to:
      - host: secure.example.test
        ports: [443]
      - host: steered.example.test
        ports: [443]
      - host: plain.example.test
        ports: [80]
      - cidr: 45.33.0.10/32
        ports: [7000]
"#;

/// A server in the external namespace that tells each client who it is and whom it sees.
#[derive(Clone)]
struct Site {
    label: &'static str,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Site {
    fn new(label: &'static str) -> Site {
        Site {
            label,
            peers: Arc::default(),
        }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("lock").clone()
    }

    /// HTTP/1.1 (over TLS when `tls` is given): answers any request with its label and the
    /// client address it sees.
    fn serve_http(&self, listener: std::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let site = self.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                site.peers.lock().expect("lock").push(peer);
                let label = site.label;
                let tls = tls.clone();
                tokio::spawn(async move {
                    let body = format!("server={label} peer={}", peer.ip());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(mut s) = acceptor.accept(tcp).await {
                                answer(&mut s, &body).await;
                            }
                        }
                        None => {
                            let mut s = tcp;
                            answer(&mut s, &body).await;
                        }
                    }
                });
            }
        });
    }

    /// Speaks first (like SSH or SMTP): a greeting, then close.
    fn serve_greeting(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let site = self.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, peer)) = listener.accept().await {
                site.peers.lock().expect("lock").push(peer);
                let line = format!("hello from {} peer={}\n", site.label, peer.ip());
                let _ = tcp.write_all(line.as_bytes()).await;
                let _ = tcp.shutdown().await;
            }
        });
    }
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, body: &str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A CA, and a TLS acceptor for the external names signed by it; the CA's PEM for curl.
fn tls_material(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "external test ca");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![
        "secure.example.test".to_owned(),
        "steered.example.test".to_owned(),
    ])
    .expect("params");
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .expect("cert");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write ca");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone(), ca.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    )
    .expect("server config");
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_path)
}

/// Runs a command inside a namespace: (success, stdout, stderr).
async fn exec(ns: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run in namespace");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One sample of the gateway's metrics, read from inside its namespace (the admin listener is
/// on the namespace's loopback).
async fn metric_in_gw(lab: &Lab, gw: &Gateway, sample: &str) -> Option<f64> {
    let url = format!("http://{}/metrics", gw.admin);
    let (ok, out, err) = exec(&lab.ns("gw"), &["curl", "-sS", "--max-time", "5", &url]).await;
    assert!(ok, "metrics: {err}");
    egress_tests::gateway::sample_value(&out, sample)
}

/// Opens a TCP connection from inside a namespace, sends nothing, and prints what arrives.
async fn silent_client(ns: &str, ip: &str, port: u16) -> (bool, String, String) {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && timeout 5 cat <&3");
    exec(ns, &["bash", "-c", &script]).await
}

fn build(lab: &mut Lab) {
    for ns in ["pod1", "pod2", "node", "gw", "ext"] {
        lab.add(ns);
    }
    lab.sh(
        "node",
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
    );
    lab.link(
        "pod1",
        "eth0",
        "10.244.1.2/24",
        "node",
        "n-p1",
        "10.244.1.1/24",
    );
    lab.link(
        "pod2",
        "eth0",
        "10.244.2.2/24",
        "node",
        "n-p2",
        "10.244.2.1/24",
    );
    lab.link(
        "gw",
        "gw-in",
        "10.250.0.2/24",
        "node",
        "n-gw",
        "10.250.0.1/24",
    );
    lab.link(
        "gw",
        "gw-out",
        "45.34.0.2/24",
        "ext",
        "e-gw",
        "45.34.0.1/24",
    );
    lab.link(
        "node",
        "n-ext",
        "45.35.0.2/24",
        "ext",
        "e-node",
        "45.35.0.1/24",
    );
    lab.sh("pod1", "ip route add default via 10.244.1.1");
    lab.sh("pod2", "ip route add default via 10.244.2.1");
    // The node: cluster routes, the way out (masqueraded as the node), steering of the Pods'
    // outbound TCP to the gateway, and a kube-proxy-style DNAT of a Service IP to the sni
    // listener.
    lab.sh(
        "node",
        "for i in n-p1 n-p2 n-gw n-ext; do sysctl -qw net.ipv4.conf.$i.rp_filter=0; done
         ip route add default via 45.35.0.1
         iptables -t nat -A POSTROUTING -o n-ext -j MASQUERADE
         iptables -t mangle -A PREROUTING -s 10.244.0.0/16 ! -d 10.0.0.0/8 -p tcp -m multiport --dports 80,443,7000 -j MARK --set-mark 0x1
         ip rule add fwmark 0x1 lookup 100
         ip route add default via 10.250.0.2 dev n-gw table 100
         iptables -t nat -A PREROUTING -d 10.96.0.10 -p tcp --dport 443 -j DNAT --to-destination 10.250.0.2:8443",
    );
    // The gateway: routes back to the Pods, out through its outside address; REDIRECT and
    // TPROXY into its listeners; and a rule that would loop every unmarked dial of its own
    // back into it.
    lab.sh(
        "gw",
        "ip route add 10.244.0.0/16 via 10.250.0.1
         ip route add default via 45.34.0.1
         iptables -t nat -A PREROUTING -i gw-in ! -d 10.250.0.2 -p tcp --dport 443 -j REDIRECT --to-ports 15001
         iptables -t nat -A PREROUTING -i gw-in ! -d 10.250.0.2 -p tcp --dport 7000 -j REDIRECT --to-ports 15003
         iptables -t mangle -A PREROUTING -i gw-in ! -d 10.250.0.2 -p tcp --dport 80 -j TPROXY --on-port 15002 --tproxy-mark 0x1/0x1
         ip rule add fwmark 0x1/0x1 lookup 100
         ip route add local 0.0.0.0/0 dev lo table 100
         iptables -t nat -A OUTPUT -p tcp -m mark --mark 0x2000 -j RETURN
         iptables -t nat -A OUTPUT -p tcp -m multiport --dports 80,443,7000 -j REDIRECT --to-ports 15001",
    );
    // The outside world: its servers, and a firewall that lets in only the gateway.
    lab.sh(
        "ext",
        "ip addr add 45.33.0.10/32 dev lo
         ip addr add 45.33.0.20/32 dev lo
         ip addr add 45.33.0.53/32 dev lo
         iptables -A INPUT -i lo -j ACCEPT
         iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
         iptables -A INPUT -s 45.34.0.2 -j ACCEPT
         iptables -A INPUT -p tcp -j REJECT --reject-with tcp-reset
         iptables -A INPUT -j DROP",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_reaches_out_only_through_the_gateway_and_only_where_allowed() {
    if let Some(why) = unavailable() {
        println!("SKIPPED the network-namespace test: {why}");
        return;
    }
    let mut lab = Lab::new("c");
    build(&mut lab);
    let dir = egress_tests::gateway::temp_dir("netns");
    let (acceptor, ca) = tls_material(&dir);
    let ca = ca.display().to_string();

    // Servers in the outside world.
    let site_a = Site::new("A");
    let site_b = Site::new("B");
    let site_http = Site::new("A-http");
    let greeter = Site::new("greeter");
    let unreachable = Site::new("direct");
    let l = lab.inside("ext", || std::net::TcpListener::bind("45.33.0.10:443"));
    site_a.serve_http(l, Some(acceptor.clone()));
    let l = lab.inside("ext", || std::net::TcpListener::bind("45.33.0.20:443"));
    site_b.serve_http(l, Some(acceptor));
    let l = lab.inside("ext", || std::net::TcpListener::bind("45.33.0.10:80"));
    site_http.serve_http(l, None);
    let l = lab.inside("ext", || std::net::TcpListener::bind("45.33.0.10:7000"));
    greeter.serve_greeting(l);
    let l = lab.inside("ext", || std::net::TcpListener::bind("45.33.0.10:7001"));
    unreachable.serve_greeting(l);
    // The world's DNS, which the gateway uses.
    let (udp, tcp) = lab.inside("ext", || {
        Ok((
            std::net::UdpSocket::bind("45.33.0.53:53")?,
            std::net::TcpListener::bind("45.33.0.53:53")?,
        ))
    });
    let world_dns = DnsServer::start_on(udp, tcp);
    world_dns.set("secure.example.test", &["45.33.0.10"]);
    world_dns.set("steered.example.test", &["45.33.0.10"]);
    world_dns.set("plain.example.test", &["45.33.0.10"]);
    // Cluster DNS on the node, which the Pods use: steered names answer with the Service IP.
    let (udp, tcp) = lab.inside("node", || {
        Ok((
            std::net::UdpSocket::bind("0.0.0.0:53")?,
            std::net::TcpListener::bind("0.0.0.0:53")?,
        ))
    });
    let cluster_dns = DnsServer::start_on(udp, tcp);
    cluster_dns.set("secure.example.test", &["45.33.0.10"]);
    cluster_dns.set("plain.example.test", &["45.33.0.10"]);
    cluster_dns.set("steered.example.test", &["10.96.0.10"]);
    lab.resolv_conf("pod1", "10.244.1.1");
    lab.resolv_conf("pod2", "10.244.2.1");

    let gw = Gateway::start_full(
        POLICY,
        |policy| {
            format!(
                r#"listeners:
  - {{name: proxy, kind: connect, address: "10.250.0.2:3128"}}
  - {{name: transparent, kind: transparent, address: "0.0.0.0:15001"}}
  - {{name: server-first, kind: transparent, address: "0.0.0.0:15003", silentClientTimeout: 300ms}}
  - {{name: tproxy, kind: transparent, address: "0.0.0.0:15002", tproxy: true}}
  - {{name: sni, kind: sni, address: "10.250.0.2:8443", upstreamPort: 443}}
admin: {{address: "127.0.0.1:0"}}
policy: {{path: {}}}
identity:
  static:
    - {{cidr: 10.244.1.0/24, spiffe: "spiffe://cluster.local/ns/shop/sa/web"}}
    - {{cidr: 10.244.2.0/24, spiffe: "spiffe://cluster.local/ns/batch/sa/job"}}
dns: {{nameservers: ["45.33.0.53:53"]}}
upstream: {{mark: 0x2000, connectTimeout: 2s}}
limits: {{headerReadTimeout: 8s}}
log: {{format: json, level: info}}
"#,
                policy.display()
            )
        },
        Some(&lab.ns("gw")),
    )
    .await;
    let (pod1, pod2) = (lab.ns("pod1"), lab.ns("pod2"));
    let curl = |extra: &'static [&'static str]| {
        let mut args = vec!["curl", "-sS", "--max-time", "5", "--cacert", ca.as_str()];
        args.extend_from_slice(extra);
        args
    };

    // 1. Transparent path, by name: the allowed Pod reaches the server, which sees the gateway.
    let (ok, out, err) = exec(&pod1, &curl(&["https://secure.example.test/"])).await;
    assert!(ok, "pod1 through the transparent listener: {err}");
    assert_eq!(out, "server=A peer=45.34.0.2");
    let line = gw
        .wait_audit("transparent allow", |a| {
            a["listener"] == "transparent" && a["decision"] == "allow"
        })
        .await;
    assert_eq!(line["host"], "secure.example.test");
    assert_eq!(line["upstream"], "45.33.0.10:443");
    assert_eq!(line["identity"], "spiffe://cluster.local/ns/shop/sa/web");
    assert!(line["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("10.244.1.2:")));

    // 2. The denied Pod gets a TLS access_denied alert and an audit line with the reason.
    let seen_by_a = site_a.peers().len();
    let (ok, _, err) = exec(&pod2, &curl(&["https://secure.example.test/"])).await;
    assert!(!ok, "pod2 must be refused");
    assert!(err.to_lowercase().contains("access denied"), "{err}");
    let line = gw
        .wait_audit("transparent deny", |a| {
            a["listener"] == "transparent"
                && a["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("10.244.2.2:"))
        })
        .await;
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["reason"], "no_matching_rule");
    assert_eq!(line["host"], "secure.example.test");
    assert_eq!(site_a.peers().len(), seen_by_a);

    // 3. Going straight out, around the gateway (a port the node does not steer): the outside
    // firewall refuses anything that is not the gateway.
    let (ok, out, _) = silent_client(&pod1, "45.33.0.10", 7001).await;
    assert!(
        !ok && out.is_empty(),
        "a direct connection must fail: {out}"
    );
    assert!(unreachable.peers().is_empty());

    // 4. SNI spoofing: an allowed name aimed at another IP reaches the allowed name's server.
    let (ok, out, err) = exec(
        &pod1,
        &curl(&[
            "--resolve",
            "secure.example.test:443:45.33.0.20",
            "https://secure.example.test/",
        ]),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "server=A peer=45.34.0.2");
    assert!(site_b.peers().is_empty(), "the spoofed IP was dialed");

    // 5. DNS steering through the sni listener.
    let (ok, out, err) = exec(&pod1, &curl(&["https://steered.example.test/"])).await;
    assert!(ok, "pod1 through the sni listener: {err}");
    assert_eq!(out, "server=A peer=45.34.0.2");
    let line = gw
        .wait_audit("sni allow", |a| {
            a["listener"] == "sni" && a["decision"] == "allow"
        })
        .await;
    assert_eq!(line["host"], "steered.example.test");
    assert_eq!(line["port"], 443);
    let (ok, _, err) = exec(&pod2, &curl(&["https://steered.example.test/"])).await;
    assert!(!ok);
    assert!(err.to_lowercase().contains("access denied"), "{err}");
    gw.wait_audit("sni deny", |a| {
        a["listener"] == "sni" && a["reason"] == "no_matching_rule"
    })
    .await;

    // 6. Explicit CONNECT from inside a Pod with curl.
    let (ok, out, err) = exec(
        &pod1,
        &curl(&[
            "-x",
            "http://10.250.0.2:3128",
            "https://secure.example.test/",
        ]),
    )
    .await;
    assert!(ok, "pod1 through the connect listener: {err}");
    assert_eq!(out, "server=A peer=45.34.0.2");
    let (ok, _, _) = exec(
        &pod2,
        &curl(&[
            "-x",
            "http://10.250.0.2:3128",
            "https://secure.example.test/",
        ]),
    )
    .await;
    assert!(!ok);
    gw.wait_audit("connect deny", |a| {
        a["listener"] == "proxy" && a["reason"] == "no_matching_rule"
    })
    .await;

    // 7. TPROXY and plain HTTP: the Host header names the destination.
    let (ok, out, err) = exec(&pod1, &curl(&["http://plain.example.test/"])).await;
    assert!(ok, "pod1 through the tproxy listener: {err}");
    assert_eq!(out, "server=A-http peer=45.34.0.2");
    let line = gw
        .wait_audit("tproxy allow", |a| {
            a["listener"] == "tproxy" && a["decision"] == "allow"
        })
        .await;
    assert_eq!(line["host"], "plain.example.test");

    // 8. A client that waits for the server to speak (port 7000, redirected to a listener of
    // its own): no name, so only the cidr rule on the original destination decides, once the
    // client has been silent for that listener's silentClientTimeout (300 ms), not the whole
    // headerReadTimeout (8 s, longer than the client's 5 s wait).
    let (_, out, _) = silent_client(&pod1, "45.33.0.10", 7000).await;
    assert_eq!(out, "hello from greeter peer=45.34.0.2\n");
    let line = gw
        .wait_audit("nameless allow", |a| {
            a["host"] == "45.33.0.10" && a["decision"] == "allow"
        })
        .await;
    assert_eq!(line["listener"], "server-first");
    assert!(line["details"].as_str().is_some_and(
        |d| d.contains("no host name (the client sent nothing within silentClientTimeout)")
    ));
    let (_, out, _) = silent_client(&pod2, "45.33.0.10", 7000).await;
    assert!(out.is_empty(), "pod2 has no cidr rule: {out}");
    let line = gw
        .wait_audit("nameless deny", |a| {
            a["host"] == "45.33.0.10" && a["decision"] == "deny"
        })
        .await;
    assert!(line["details"]
        .as_str()
        .is_some_and(|d| d.contains("only a cidr rule")));
    // Both are counted as decided without a name, by cause and decision.
    for decision in ["allow", "deny"] {
        let sample = format!(
            "egress_nameless_connections_total{{listener=\"server-first\",cause=\"silent\",decision=\"{decision}\"}}"
        );
        assert_eq!(
            metric_in_gw(&lab, &gw, &sample).await,
            Some(1.0),
            "{sample}"
        );
    }
    // A client that has spoken is waited for until headerReadTimeout, however slowly it goes
    // on: a request head whose Host comes 600 ms after its first line (past silentClientTimeout)
    // is decided on that name, not on the original address.
    let script =
        "exec 3<>/dev/tcp/45.33.0.10/7000 && printf 'GET / HTTP/1.1\\r\\n' >&3 && sleep 0.6 \
                  && printf 'Host: plain.example.test\\r\\n\\r\\n' >&3 && timeout 5 cat <&3";
    let (_, out, _) = exec(&pod1, &["bash", "-c", script]).await;
    assert!(
        out.is_empty(),
        "plain.example.test:7000 is not allowed: {out}"
    );
    let line = gw
        .wait_audit("slow head decided on its name", |a| {
            a["host"] == "plain.example.test" && a["port"] == 7000
        })
        .await;
    assert_eq!(line["reason"], "no_matching_rule");

    // 9. No loops: every connection the gateway saw came from a Pod, none from itself, and
    // every site saw only the gateway's outside address.
    let audit = gw.audit();
    for a in &audit {
        let source = a["source"].as_str().unwrap_or_default();
        assert!(
            source.starts_with("10.244."),
            "a connection from the gateway itself: {a}"
        );
    }
    for site in [&site_a, &site_http, &greeter] {
        for peer in site.peers() {
            assert_eq!(peer.ip().to_string(), "45.34.0.2");
        }
    }
    drop(gw);
    drop(lab);
    let _ = std::fs::remove_dir_all(dir);
}

/// A lab of one namespace, `host`, set up by `script`; `None` (saying why) where namespace tests
/// cannot run.
fn host_lab(tag: &str, what: &str, script: &str) -> Option<Lab> {
    if let Some(why) = unavailable() {
        println!("SKIPPED the {what} network-namespace test: {why}");
        return None;
    }
    let mut lab = Lab::new(tag);
    lab.add("host");
    lab.sh("host", script);
    Some(lab)
}

/// The gateway inside the lab's `host` namespace: `config` is its gateway.yaml without the
/// policy path and the log settings (JSON, which the test reads), which are added.
async fn gateway_in_host(lab: &Lab, policy: &str, config: &str) -> Gateway {
    let config = config.to_owned();
    Gateway::start_full(
        policy,
        move |path| {
            format!(
                "{config}policy: {{path: {}}}\nlog: {{format: json, level: info}}\n",
                path.display()
            )
        },
        Some(&lab.ns("host")),
    )
    .await
}

/// A `host` namespace whose `OUTPUT` rules (set up by `script`) redirect `server`'s ports 443 and
/// 7000 to a `[::]:15001` transparent listener and exempt the gateway's marked dials, with a TLS
/// site on 443 and a greeter (a server-first protocol) on 7000 at `server`.
struct Redirected {
    lab: Lab,
    gw: Gateway,
    dir: std::path::PathBuf,
    /// The CA's PEM, for curl.
    ca: String,
    site: Site,
    greeter: Site,
}

impl Redirected {
    async fn new(tag: &str, what: &str, script: &str, server: IpAddr) -> Option<Redirected> {
        let lab = host_lab(tag, what, script)?;
        let dir = egress_tests::gateway::temp_dir(&format!("netns{tag}"));
        let (acceptor, ca) = tls_material(&dir);
        let ca = ca.display().to_string();
        let site = Site::new("redirected");
        let greeter = Site::new("greeter");
        let l = lab.inside("host", move || std::net::TcpListener::bind((server, 443)));
        site.serve_http(l, Some(acceptor));
        let l = lab.inside("host", move || std::net::TcpListener::bind((server, 7000)));
        greeter.serve_greeting(l);
        let any = if server.is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        let policy = format!(
            r#"version: 1
rules:
  - name: redirected
    action: allow
    from:
      - cidr: "{any}"
    to:
      - host: secure.example.test
        ports: [443]
        allowPrivateAddresses: true
      - cidr: "{server}/{}"
        ports: [7000]
"#,
            if server.is_ipv4() { 32 } else { 128 }
        );
        let gw = gateway_in_host(
            &lab,
            &policy,
            &format!(
                r#"listeners:
  - {{name: transparent, kind: transparent, address: "[::]:15001"}}
admin: {{address: "127.0.0.1:0"}}
dns: {{hosts: {{secure.example.test: ["{server}"]}}}}
upstream: {{mark: 0x2000, connectTimeout: 2s}}
limits: {{headerReadTimeout: 1s}}
"#
            ),
        )
        .await;
        Some(Redirected {
            lab,
            gw,
            dir,
            ca,
            site,
            greeter,
        })
    }

    /// A TLS client is decided on its SNI, and a silent one on its original destination; the
    /// caller, `server` itself, is logged in its own family. Returns the two audit lines.
    async fn check(&self, server: IpAddr) -> (serde_json::Value, serde_json::Value) {
        let host = self.lab.ns("host");
        let at = SocketAddr::new(server, 443).to_string();
        let bracketed = at.trim_end_matches(":443");
        let (ok, out, err) = exec(
            &host,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--cacert",
                &self.ca,
                "--resolve",
                &format!("secure.example.test:443:{bracketed}"),
                "https://secure.example.test/",
            ],
        )
        .await;
        assert!(ok, "{err}");
        assert!(
            out.starts_with(&format!("server=redirected peer={server}")),
            "{out}"
        );
        let tls = self
            .gw
            .wait_audit("tls", |a| a["host"] == "secure.example.test")
            .await;
        assert_eq!(tls["decision"], "allow", "{tls}");
        assert_eq!(tls["upstream"], at);
        assert!(
            tls["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{bracketed}:"))),
            "{tls}"
        );

        let (_, out, _) = silent_client(&host, &server.to_string(), 7000).await;
        assert_eq!(out, format!("hello from greeter peer={server}\n"));
        let nameless = self.gw.wait_audit("nameless", |a| a["port"] == 7000).await;
        assert_eq!(nameless["host"], bracketed, "{nameless}");
        assert_eq!(nameless["decision"], "allow", "{nameless}");
        assert_eq!(nameless["upstream"], format!("{bracketed}:7000"));
        assert_eq!(self.site.peers().len(), 1);
        assert_eq!(self.greeter.peers().len(), 1);
        (tls, nameless)
    }

    fn end(self) {
        let Redirected { lab, gw, dir, .. } = self;
        drop(gw);
        drop(lab);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// IPv6: `SO_ORIGINAL_DST` through `ip6tables` `REDIRECT`, for a TLS client (the SNI decides) and a
/// silent one (the original IPv6 destination decides, audited as `[fd00:33::10]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_redirected_connections_keep_their_original_destination() {
    let server: IpAddr = "fd00:33::10".parse().expect("ip");
    let Some(case) = Redirected::new(
        "6",
        "IPv6",
        "ip -6 addr add fd00:33::10/128 dev lo nodad
         ip6tables -t nat -A OUTPUT -p tcp -m mark --mark 0x2000 -j RETURN
         ip6tables -t nat -A OUTPUT -p tcp -d fd00:33::10 -m multiport --dports 443,7000 -j REDIRECT --to-ports 15001",
        server,
    )
    .await
    else {
        return;
    };
    case.check(server).await;
    case.end();
}

/// A dual-stack `[::]` transparent listener behind an IPv4 `iptables` `REDIRECT`: the accepted
/// sockets have IPv4-mapped local addresses, and the original destination is still read (from
/// netfilter's IPv4 table) and is IPv4 to the policy, as the caller is to the policy and the log.
/// A client that connects to the listener directly, over IPv4 or IPv6, is refused as not
/// redirected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_listener_takes_ipv4_redirects_and_refuses_direct_connections() {
    let server: IpAddr = "10.33.0.10".parse().expect("ip");
    let Some(case) = Redirected::new(
        "46",
        "dual-stack",
        "ip addr add 10.33.0.10/32 dev lo
         iptables -t nat -A OUTPUT -p tcp -m mark --mark 0x2000 -j RETURN
         iptables -t nat -A OUTPUT -p tcp -d 10.33.0.10 -m multiport --dports 443,7000 -j REDIRECT --to-ports 15001",
        server,
    )
    .await
    else {
        return;
    };
    case.check(server).await;

    // Straight to the listener, over IPv4 and over IPv6: nothing was redirected.
    let host = case.lab.ns("host");
    for (ip, source) in [("127.0.0.1", "127.0.0.1:"), ("::1", "[::1]:")] {
        let (_, out, _) = silent_client(&host, ip, 15001).await;
        assert_eq!(out, "", "{ip}");
        let line = case
            .gw
            .wait_audit("direct", |a| {
                a["reason"] == "bad_request"
                    && a["source"].as_str().is_some_and(|c| c.starts_with(source))
            })
            .await;
        // Over IPv6 there is no conntrack entry at all (no ip6tables nat rules here).
        let details = line["details"].as_str().unwrap_or_default();
        if ip == "127.0.0.1" {
            assert_eq!(
                details,
                "not a redirected connection (the original destination is the listener itself)",
                "{line}"
            );
        } else {
            assert!(
                details.starts_with("not a redirected connection ("),
                "{line}"
            );
        }
    }
    assert_eq!(case.site.peers().len(), 1);
    assert_eq!(case.greeter.peers().len(), 1);
    case.end();
}

/// Sockets bound to `0.0.0.0` are the gateway's own on every local address too: a `CONNECT` to
/// the namespace's own (non-loopback) addresses and the admin or proxy port is refused as the
/// gateway itself, though an allow rule's `cidr` entry covers it, while the same address on another
/// port is dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_sockets_are_not_dialed_through_the_local_addresses() {
    let Some(lab) = host_lab("own", "own-socket", "ip addr add 10.34.0.10/24 dev lo") else {
        return;
    };
    let greeter = Site::new("own-greeter");
    let l = lab.inside("host", || std::net::TcpListener::bind("10.34.0.10:7000"));
    greeter.serve_greeting(l);
    let policy = r#"version: 1
rules:
  - name: pod-network
    action: allow
    from:
      - cidr: "0.0.0.0/0"
    to:
      - cidr: "10.34.0.0/24"
        ports: "*"
"#;
    let gw = gateway_in_host(
        &lab,
        policy,
        r#"listeners:
  - {name: proxy, kind: connect, address: "0.0.0.0:3128"}
admin: {address: "0.0.0.0:9901"}
"#,
    )
    .await;
    let host = lab.ns("host");
    let connect = |target: &'static str| {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/3128 && printf 'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n' >&3 && timeout 5 head -c 200 <&3"
        );
        let host = host.clone();
        async move { exec(&host, &["bash", "-c", &script]).await }
    };

    // 10.34.0.11 is on no interface, yet local: the /24 on `lo` makes the whole prefix local.
    for (target, ip, port) in [
        ("10.34.0.10:9901", "10.34.0.10", 9901),
        ("10.34.0.10:3128", "10.34.0.10", 3128),
        ("10.34.0.11:9901", "10.34.0.11", 9901),
    ] {
        let (_, out, err) = connect(target).await;
        assert!(out.starts_with("HTTP/1.1 403"), "{target}: {out} {err}");
        let line = gw
            .wait_audit(target, |a| a["host"] == ip && a["port"] == port)
            .await;
        assert_eq!(line["reason"], "blocked_address", "{line}");
        assert_eq!(
            line["details"],
            format!("{target} is the gateway itself"),
            "{line}"
        );
    }
    let (_, out, err) = connect("10.34.0.10:7000").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out} {err}");
    assert!(out.contains("hello from own-greeter"), "{out}");
    assert_eq!(greeter.peers().len(), 1);
    drop(gw);
    drop(lab);
}

/// Accepts connections and keeps them open until the test ends.
fn hold_connections(listener: std::net::TcpListener) {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
}

/// A `CONNECT` tunnel from inside namespace `name`, from `source` (an explicit port, so that
/// the caller's side takes no port of `ip_local_port_range`); the stream and the status code.
async fn tunnel_from(
    lab: &Lab,
    name: &str,
    source: SocketAddr,
    proxy: SocketAddr,
    target: &str,
) -> (tokio::net::TcpStream, u16) {
    let socket = lab.inside(name, move || {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(source)?;
        Ok(s)
    });
    let mut s = socket.connect(proxy).await.expect("connect to the gateway");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    let status = egress_tests::client::read_response(&mut s).await.status;
    (s, status)
}

/// With `bindAddress`, the local port of an upstream connection is chosen at `connect()` for its
/// whole four-tuple: when every port of a (four-port) `ip_local_port_range` is held toward one
/// upstream, another upstream is still reachable; one more dial to the first is refused with
/// details that name the shortage and what raises the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_address_shares_local_ports_across_destinations_and_names_a_shortage() {
    let Some(lab) = host_lab(
        "p",
        "local-port",
        "sysctl -qw net.ipv4.ip_local_port_range='40000 40003'",
    ) else {
        return;
    };
    let l = lab.inside("host", || std::net::TcpListener::bind("127.0.0.1:7001"));
    hold_connections(l);
    let l = lab.inside("host", || std::net::TcpListener::bind("127.0.0.1:7002"));
    hold_connections(l);
    let policy = r#"version: 1
rules:
  - name: ports
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: a.test
        ports: [7001]
        allowPrivateAddresses: true
      - host: b.test
        ports: [7002]
        allowPrivateAddresses: true
"#;
    let gw = gateway_in_host(
        &lab,
        policy,
        r#"listeners:
  - {name: proxy, kind: connect, address: "127.0.0.1:3128"}
admin: {address: "127.0.0.1:9901"}
dns: {hosts: {a.test: ["127.0.0.1"], b.test: ["127.0.0.1"]}}
upstream: {bindAddress: 127.0.0.1, connectTimeout: 2s}
"#,
    )
    .await;
    let source = |port: u16| SocketAddr::from(([127, 0, 0, 2], port));

    let mut held = Vec::new();
    for i in 0..4 {
        let (s, status) =
            tunnel_from(&lab, "host", source(50_000 + i), gw.proxy, "a.test:7001").await;
        assert_eq!(status, 200, "tunnel {i} to a.test");
        held.push(s);
    }
    // Every local port is now taken toward a.test:7001, none toward b.test:7002.
    let (_b, status) = tunnel_from(&lab, "host", source(50_010), gw.proxy, "b.test:7002").await;
    assert_eq!(status, 200, "another destination shares the local ports");

    let (_s, status) = tunnel_from(&lab, "host", source(50_020), gw.proxy, "a.test:7001").await;
    assert_eq!(status, 502);
    let line = gw
        .wait_audit("the refused dial", |a| a["decision"] == "deny")
        .await;
    assert_eq!(line["reason"], "upstream_refused");
    let details = line["details"].as_str().expect("details");
    assert!(
        details.contains("no free local port toward this destination")
            && details.contains("ip_local_port_range"),
        "{details}"
    );
    drop(held);
    drop(gw);
    drop(lab);
}

/// A listening port inside the namespace's ephemeral port range, and not reserved, is named in a
/// start-up warning; a reserved one and one outside the range are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_ports_in_the_ephemeral_range_are_warned_about_unless_reserved() {
    let Some(lab) = host_lab(
        "r",
        "port-range",
        "sysctl -qw net.ipv4.ip_local_port_range='3000 3999'
         sysctl -qw net.ipv4.ip_local_reserved_ports=3129",
    ) else {
        return;
    };
    let gw = gateway_in_host(
        &lab,
        "version: 1\nrules: []\n",
        r#"listeners:
  - {name: proxy, kind: connect, address: "127.0.0.1:3128"}
  - {name: reserved, kind: connect, address: "127.0.0.1:3129"}
admin: {address: "127.0.0.1:9901"}
"#,
    )
    .await;
    let warned: Vec<u64> = gw
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ip_local_reserved_ports"))
        })
        .filter_map(|v| v["port"].as_u64())
        .collect();
    assert_eq!(warned, vec![3128], "{}", gw.logs().join("\n"));
    drop(gw);
    drop(lab);
}
