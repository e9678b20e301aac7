//! A test Kubernetes API server for Pods: the real wire protocol over HTTPS with a bearer token.
//!
//! - `GET /api/v1/pods` and `/api/v1/namespaces/{ns}/pods`: a `PodList` with
//!   `metadata.resourceVersion`, paged with `limit` and `continue` over a snapshot, as the real
//!   server does; items carry no `kind`/`apiVersion`, like the real list;
//! - `?watch=true&resourceVersion=N`: a chunked stream of `ADDED`/`MODIFIED`/`DELETED` events
//!   after `N`, `BOOKMARK`s when asked for, and an `ERROR` event with a `410` `Status` (reason
//!   `Expired`) when `N` is older than the oldest kept event;
//! - `labelSelector` with `k=v`, `k==v`, `k!=v`, `k` and `!k` terms;
//! - `401` without the token.
//!
//! The test changes Pods with [`ApiServer::upsert`] and [`ApiServer::delete`], forgets history
//! with [`ApiServer::compact`] (so an old resourceVersion gets `410 Gone`), and stops and restarts
//! the server on the same address.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

const TOKEN: &str = "egress-test-token-7f3a";

struct Store {
    /// Current objects by `namespace/name`.
    pods: BTreeMap<String, Value>,
    rv: u64,
    /// Events after `oldest`, in order: (resourceVersion, event line).
    log: Vec<(u64, Arc<str>)>,
    /// A watch from a resourceVersion below this gets 410.
    oldest: u64,
    snapshots: HashMap<String, (u64, Arc<Vec<Value>>)>,
    next_snapshot: u64,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<(u64, Arc<str>)>,
    requests: Mutex<Vec<String>>,
    bookmark_every: Duration,
    unauthorized: AtomicUsize,
    /// Lists answer `500` (etcd away) while set; watches are served.
    failing_lists: std::sync::atomic::AtomicBool,
}

/// The server. Dropping it stops it.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    tasks: Option<JoinSet<()>>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let dir = crate::gateway::temp_dir("apiserver");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test kubernetes ca");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(vec!["kubernetes.default.svc".to_owned()])
            .expect("server params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write ca");
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (events, _) = broadcast::channel(4096);
        let mut server = ApiServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            shared: Arc::new(Shared {
                store: Mutex::new(Store {
                    pods: BTreeMap::new(),
                    rv: 1000,
                    log: Vec::new(),
                    oldest: 1000,
                    snapshots: HashMap::new(),
                    next_snapshot: 0,
                }),
                events,
                requests: Mutex::default(),
                bookmark_every: Duration::from_millis(500),
                unauthorized: AtomicUsize::new(0),
                failing_lists: std::sync::atomic::AtomicBool::new(false),
            }),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            tasks: None,
            conns: Arc::default(),
        };
        server.listen().await;
        server
    }

    async fn listen(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind api server");
        self.addr = listener.local_addr().expect("addr");
        let acceptor = self.acceptor.clone();
        let shared = Arc::clone(&self.shared);
        let conns = Arc::clone(&self.conns);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let shared = Arc::clone(&shared);
                conns.lock().expect("lock").spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, shared).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Stops listening and cuts every open connection (watches included).
    pub fn stop(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.abort_all();
        }
        self.conns.lock().expect("lock").abort_all();
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        self.stop();
        // The old listener is closed once its task has been dropped.
        for _ in 0..50 {
            if std::net::TcpListener::bind(self.addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.listen().await;
    }

    /// A kubeconfig file for this server: its CA, a bearer token.
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig_with_token(TOKEN)
    }

    pub fn kubeconfig_with_token(&self, token: &str) -> PathBuf {
        self.write_kubeconfig(token, &self.dir.join("ca.crt"))
    }

    /// A kubeconfig that trusts another CA than the one that signed this server's certificate.
    pub fn kubeconfig_with_other_ca(&self) -> PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let other = params.self_signed(&key).expect("other ca");
        let path = self.dir.join("other-ca.crt");
        std::fs::write(&path, other.pem()).expect("write other ca");
        self.write_kubeconfig(TOKEN, &path)
    }

    fn write_kubeconfig(&self, token: &str, ca: &std::path::Path) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = self
            .dir
            .join(format!("kubeconfig-{}", N.fetch_add(1, Ordering::Relaxed)));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}\n    certificate-authority: {}\nusers:\n- name: egress-gateway\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: egress-gateway\ncurrent-context: test\n",
            self.addr,
            ca.display()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Adds or replaces a Pod (by namespace and name) and tells the watchers.
    pub fn upsert(&self, mut pod: Value) {
        let mut s = self.shared.store.lock().expect("lock");
        s.rv += 1;
        let rv = s.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&pod);
        let kind = if s.pods.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.pods.insert(key, pod.clone());
        self.record(&mut s, rv, kind, pod);
    }

    /// Deletes a Pod and tells the watchers.
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut s = self.shared.store.lock().expect("lock");
        let Some(mut pod) = s.pods.remove(&format!("{namespace}/{name}")) else {
            panic!("no pod {namespace}/{name}");
        };
        s.rv += 1;
        let rv = s.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut s, rv, "DELETED", pod);
    }

    /// Forgets all history: a watch from any resourceVersion seen so far gets `410 Gone`.
    pub fn compact(&self) {
        let mut s = self.shared.store.lock().expect("lock");
        s.rv += 1;
        s.oldest = s.rv;
        s.log.clear();
        s.snapshots.clear();
    }

    /// While `on`, every list (a watch's list, a probe) answers `500`; watches are still served.
    pub fn fail_lists(&self, on: bool) {
        self.shared.failing_lists.store(on, Ordering::Relaxed);
    }

    /// How many requests arrived, by kind (`list`, `watch`).
    pub fn requests(&self, kind: &str) -> usize {
        let r = self.shared.requests.lock().expect("lock");
        r.iter().filter(|k| k.as_str() == kind).count()
    }

    pub fn unauthorized(&self) -> usize {
        self.shared.unauthorized.load(Ordering::Relaxed)
    }

    fn record(&self, s: &mut Store, rv: u64, kind: &str, object: Value) {
        let line: Arc<str> = format!("{}\n", json!({ "type": kind, "object": object })).into();
        s.log.push((rv, Arc::clone(&line)));
        let _ = self.shared.events.send((rv, line));
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key_of(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Builds Pod objects from the real Pod JSON in `tests/fixtures/pod.json`.
pub struct PodBuilder(Value);

static UID: AtomicUsize = AtomicUsize::new(1);

impl PodBuilder {
    /// A running Pod with one IPv4 address, a fresh UID, its own name and namespace, service
    /// account `default` and no labels.
    pub fn new(namespace: &str, name: &str, ip: &str) -> PodBuilder {
        let mut pod: Value =
            serde_json::from_str(include_str!("../fixtures/pod.json")).expect("fixture");
        let uid = format!(
            "6a1f0c2e-0000-4000-8000-{:012x}",
            UID.fetch_add(1, Ordering::Relaxed)
        );
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["namespace"] = json!(namespace);
        pod["metadata"]["uid"] = json!(uid);
        pod["metadata"]["labels"] = json!({});
        pod["spec"]["serviceAccount"] = json!("default");
        pod["spec"]["serviceAccountName"] = json!("default");
        pod["status"]["podIP"] = json!(ip);
        pod["status"]["podIPs"] = json!([{ "ip": ip }]);
        PodBuilder(pod)
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.0["spec"]["serviceAccount"] = json!(sa);
        self.0["spec"]["serviceAccountName"] = json!(sa);
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0["metadata"]["labels"][k] = json!(v);
        self
    }

    pub fn phase(mut self, phase: &str) -> Self {
        self.0["status"]["phase"] = json!(phase);
        self
    }

    /// Uses the node's network: `podIP` is the node's address.
    pub fn host_network(mut self) -> Self {
        self.0["spec"]["hostNetwork"] = json!(true);
        self
    }

    /// Scheduled, not started: no address yet.
    pub fn without_ip(mut self) -> Self {
        let status = self.0["status"].as_object_mut().expect("status");
        status.remove("podIP");
        status.remove("podIPs");
        status.insert("phase".into(), json!("Pending"));
        self
    }

    pub fn build(self) -> Value {
        self.0
    }
}

struct Request {
    path: String,
    query: HashMap<String, String>,
    authorized: bool,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut conn, &mut buf).await else {
            return;
        };
        if !req.authorized {
            shared.unauthorized.fetch_add(1, Ordering::Relaxed);
            let body = status_json(401, "Unauthorized", "Unauthorized");
            if respond(&mut conn, 401, &body).await.is_err() {
                return;
            }
            continue;
        }
        let namespace = match req.path.strip_prefix("/api/v1/namespaces/") {
            Some(rest) => match rest.strip_suffix("/pods") {
                Some(ns) => Some(ns.to_owned()),
                None => {
                    let _ =
                        respond(&mut conn, 404, &status_json(404, "NotFound", "not found")).await;
                    continue;
                }
            },
            None if req.path == "/api/v1/pods" => None,
            None => {
                let _ = respond(&mut conn, 404, &status_json(404, "NotFound", "not found")).await;
                continue;
            }
        };
        let selector = req.query.get("labelSelector").cloned().unwrap_or_default();
        let filter = move |pod: &Value| {
            namespace
                .as_deref()
                .is_none_or(|ns| pod["metadata"]["namespace"] == ns)
                && selector_matches(&selector, &pod["metadata"]["labels"])
        };
        if req.query.get("watch").map(String::as_str) == Some("true")
            || req.query.get("watch").map(String::as_str) == Some("1")
        {
            shared.requests.lock().expect("lock").push("watch".into());
            watch(conn, &shared, &req, filter).await;
            return;
        }
        shared.requests.lock().expect("lock").push("list".into());
        if shared.failing_lists.load(Ordering::Relaxed) {
            let body = status_json(500, "InternalError", "etcdserver: request timed out");
            if respond(&mut conn, 500, &body).await.is_err() {
                return;
            }
            continue;
        }
        let body = list(&shared, &req, filter);
        if respond(&mut conn, 200, &body).await.is_err() {
            return;
        }
    }
}

fn list(shared: &Shared, req: &Request, filter: impl Fn(&Value) -> bool) -> String {
    let limit: usize = req
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let mut s = shared.store.lock().expect("lock");
    let (rv, items, start) = match req.query.get("continue") {
        Some(token) => match token.split_once(':').and_then(|(id, off)| {
            let (rv, items) = s.snapshots.get(id)?.clone();
            Some((rv, items, off.parse::<usize>().ok()?))
        }) {
            Some(found) => found,
            None => {
                return status_json(410, "Expired", "the provided continue parameter is too old");
            }
        },
        None => {
            let items: Vec<Value> = s
                .pods
                .values()
                .filter(|p| filter(p))
                .map(|p| {
                    let mut item = p.clone();
                    if let Some(o) = item.as_object_mut() {
                        o.remove("kind");
                        o.remove("apiVersion");
                    }
                    item
                })
                .collect();
            (s.rv, Arc::new(items), 0)
        }
    };
    let end = start.saturating_add(limit).min(items.len());
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if end < items.len() {
        s.next_snapshot += 1;
        let id = s.next_snapshot.to_string();
        s.snapshots.insert(id.clone(), (rv, Arc::clone(&items)));
        metadata["continue"] = json!(format!("{id}:{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": metadata,
        "items": items.get(start..end).unwrap_or_default(),
    })
    .to_string()
}

async fn watch<S: AsyncWrite + Unpin>(
    mut conn: S,
    shared: &Shared,
    req: &Request,
    filter: impl Fn(&Value) -> bool,
) {
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\n\r\n";
    if conn.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (backlog, mut live, mut rv, expired) = {
        let s = shared.store.lock().expect("lock");
        let expired = from < s.oldest;
        let backlog: Vec<(u64, Arc<str>)> =
            s.log.iter().filter(|(v, _)| *v > from).cloned().collect();
        (backlog, shared.events.subscribe(), s.rv.max(from), expired)
    };
    if expired {
        let status: Value = serde_json::from_str(&status_json(
            410,
            "Expired",
            &format!("too old resource version: {from} ({rv})"),
        ))
        .expect("status");
        let line = format!("{}\n", json!({ "type": "ERROR", "object": status }));
        let _ = chunk(&mut conn, &line).await;
        let _ = conn.write_all(b"0\r\n\r\n").await;
        return;
    }
    let send_if = |line: &str| -> bool {
        serde_json::from_str::<Value>(line)
            .map(|v| filter(&v["object"]))
            .unwrap_or(false)
    };
    for (_, line) in backlog {
        if send_if(&line) && chunk(&mut conn, &line).await.is_err() {
            return;
        }
    }
    let end = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(shared.bookmark_every);
    loop {
        tokio::select! {
            ev = live.recv() => match ev {
                Ok((v, line)) => {
                    if v <= rv { continue; }
                    rv = v;
                    if send_if(&line) && chunk(&mut conn, &line).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            _ = tick.tick(), if bookmarks => {
                let current = shared.store.lock().expect("lock").rv;
                rv = rv.max(current);
                let line = format!("{}\n", json!({
                    "type": "BOOKMARK",
                    "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}
                }));
                if chunk(&mut conn, &line).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(end) => {
                let _ = conn.write_all(b"0\r\n\r\n").await;
                return;
            }
        }
    }
}

async fn chunk<S: AsyncWrite + Unpin>(conn: &mut S, data: &str) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await?;
    conn.flush().await
}

async fn respond<S: AsyncWrite + Unpin>(
    conn: &mut S,
    code: u16,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Gone",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.flush().await
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
    .to_string()
}

async fn read_request<S: AsyncRead + Unpin>(conn: &mut S, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            let target = req.path?.to_owned();
            let authorized = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("authorization")
                    && h.value == format!("Bearer {TOKEN}").as_bytes()
            });
            buf.drain(..len);
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let query = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), percent_decode(v)))
                .collect();
            return Some(Request {
                path: path.to_owned(),
                query,
                authorized,
            });
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let v = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match v {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based label selectors, as the API server reads them.
fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels[k.trim()].is_null()
            } else {
                !labels[term].is_null()
            }
        })
}

/// Where the fixtures live, for tests that read them directly.
pub fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))
}
