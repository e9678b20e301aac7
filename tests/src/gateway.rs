//! Runs the real `egress-gateway` binary with a config and a policy written to a fresh directory,
//! and gives the test its addresses, its audit lines and its logs.
//!
//! The policy lives in a ConfigMap-shaped directory (`..data` symlink to a timestamped directory,
//! `policy.yaml` a symlink through `..data`), so every update is the symlink swap a kubelet does.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gateway binary. `cargo test --workspace` builds it; when it is missing or older than the
/// sources (a run of this crate's tests alone after an edit), it is built here, once per process.
pub fn binary() -> PathBuf {
    static BUILD: Once = Once::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("egress-gateway");
    BUILD.call_once(|| {
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let newest = ["gateway", "policy", "certs", "pods"]
            .iter()
            .filter_map(|c| newest_mtime(&root.join(c)))
            .max();
        if built.is_some() && built >= newest {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "egress-gateway"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building egress-gateway failed");
    });
    bin
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// The gateway's worker threads, fixed per test file so that both schedulers are exercised and a
/// failure reproduces: the single-threaded one (what a one-CPU deployment runs) for the tunnel,
/// sni, network-namespace and lifecycle tests, two workers for the others.
fn workers() -> &'static str {
    let exe = std::env::current_exe().ok();
    let name = exe
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let single = ["tunnel-", "sni-", "netns-", "lifecycle-"];
    if single.iter().any(|t| name.starts_with(t)) {
        "1"
    } else {
        "2"
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "egress-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub struct Gateway {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    audit: Arc<Mutex<Vec<String>>>,
    logs: Arc<Mutex<Vec<String>>>,
    generation: usize,
}

fn spawn_reader(stream: impl std::io::Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            sink.lock().expect("lock").push(line);
        }
    });
}

impl Gateway {
    /// Starts the gateway with `policy` and extra gateway.yaml sections (`dns:`, `limits:`, ...).
    /// The connect listener and the admin server bind ephemeral loopback ports.
    pub async fn start(policy: &str, extra_config: &str) -> Gateway {
        Self::start_with_listener(policy, "", extra_config).await
    }

    /// Like [`Gateway::start`], with `listener_extra` added to the listener (e.g. a `tls:` block,
    /// indented by four spaces).
    pub async fn start_with_listener(
        policy: &str,
        listener_extra: &str,
        extra_config: &str,
    ) -> Gateway {
        Self::start_full(
            policy,
            |policy_path| {
                format!(
                    "listeners:\n  - name: proxy\n    kind: connect\n    address: 127.0.0.1:0\n{listener_extra}admin:\n  address: 127.0.0.1:0\npolicy:\n  path: {}\nlog:\n  format: json\n  level: info\n{extra_config}",
                    policy_path.display()
                )
            },
            None,
        )
        .await
    }

    /// Starts the gateway with a whole gateway.yaml, which `config` writes given the policy path
    /// (it must log JSON), optionally inside a network namespace (`ip netns exec`). `proxy` is
    /// the first listener logged.
    pub async fn start_full(
        policy: &str,
        config: impl FnOnce(&Path) -> String,
        netns: Option<&str>,
    ) -> Gateway {
        let dir = temp_dir("gw");
        let policy_dir = dir.join("policy");
        std::fs::create_dir_all(&policy_dir).expect("policy dir");
        let gw_dir = dir.join("gateway.yaml");
        std::fs::write(&gw_dir, config(&policy_dir.join("policy.yaml")))
            .expect("write gateway.yaml");
        let mut gw = Gateway {
            child: Command::new("true").spawn().expect("placeholder"),
            proxy: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            dir,
            audit: Arc::default(),
            logs: Arc::default(),
            generation: 0,
        };
        let _ = gw.child.wait();
        gw.swap_policy(policy);
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        gw.child = command
            .args(["run", "--config"])
            .arg(&gw_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .env("TOKIO_WORKER_THREADS", workers())
            .spawn()
            .expect("start egress-gateway");
        spawn_reader(
            gw.child.stdout.take().expect("stdout"),
            Arc::clone(&gw.audit),
        );
        spawn_reader(
            gw.child.stderr.take().expect("stderr"),
            Arc::clone(&gw.logs),
        );
        let logs = Arc::clone(&gw.logs);
        // A field of the first log line with this message.
        let field = |message: &str, key: &str| {
            let logs = logs.lock().expect("lock");
            logs.iter().find_map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == message).then(|| v[key].take())
            })
        };
        let find = |message: &str| {
            field(message, "address")?
                .as_str()?
                .parse::<SocketAddr>()
                .ok()
        };
        let end = tokio::time::Instant::now() + crate::DEADLINE;
        loop {
            if let (Some(p), Some(a)) = (find("listening"), find("admin listening")) {
                gw.proxy = p;
                gw.admin = a;
                break;
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited with {status}: {}", gw.logs().join("\n"));
            }
            assert!(
                tokio::time::Instant::now() < end,
                "gateway did not start: {}",
                gw.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The gateway runs the scheduler this test file asked for.
        let runtime = field("runtime", "workers").and_then(|w| w.as_u64());
        assert_eq!(
            runtime.map(|w| w.to_string()).as_deref(),
            Some(workers()),
            "runtime log line: {}",
            gw.logs().join("\n")
        );
        gw
    }

    /// Replaces the policy the way a kubelet updates a ConfigMap volume: write a new timestamped
    /// directory, then atomically repoint `..data` at it.
    pub fn swap_policy(&mut self, policy: &str) {
        self.generation += 1;
        let policy_dir = self.dir.join("policy");
        let gen_name = format!("..gen_{}", self.generation);
        let gen = policy_dir.join(&gen_name);
        std::fs::create_dir_all(&gen).expect("generation dir");
        std::fs::write(gen.join("policy.yaml"), policy).expect("write policy");
        let tmp = policy_dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&gen_name, &tmp).expect("symlink");
        std::fs::rename(&tmp, policy_dir.join("..data")).expect("swap ..data");
        let link = policy_dir.join("policy.yaml");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("..data/policy.yaml", &link).expect("symlink policy.yaml");
        }
    }

    /// Overwrites the policy file in place (an editor, not a kubelet).
    pub fn write_policy_in_place(&self, policy: &str) {
        let real = self.dir.join("policy").join("..data").join("policy.yaml");
        std::fs::write(real, policy).expect("write policy");
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("lock").clone()
    }

    /// Audit lines so far, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.audit
            .lock()
            .expect("lock")
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits for an audit line that satisfies `pred`.
    pub async fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        crate::eventually(what, || self.audit().into_iter().find(|v| pred(v))).await
    }

    /// GET on the admin server: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("connect admin");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
        let mut out = Vec::new();
        tokio::time::timeout(crate::DEADLINE, s.read_to_end(&mut out))
            .await
            .expect("admin answers")
            .expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one metric sample, e.g. `egress_connections_total{listener="proxy",...}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await;
        sample_value(&body, sample)
    }

    /// Waits (up to the deadline) for a metric sample to exist with a value of at least `min`;
    /// returns its value, or whatever was last seen.
    pub async fn wait_metric(&self, sample: &str, min: f64) -> Option<f64> {
        let end = tokio::time::Instant::now() + crate::DEADLINE;
        loop {
            let seen = self.metric(sample).await;
            if seen.is_some_and(|v| v >= min) || tokio::time::Instant::now() >= end {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "gateway still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of one sample (`name{labels}`, exactly) in a Prometheus text exposition.
pub fn sample_value(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok())?
    })
}
