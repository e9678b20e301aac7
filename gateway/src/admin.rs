//! The admin server: `/metrics`, `/healthz`, `/readyz`, `/policy`. Plain HTTP/1.1 on its own
//! address; it never proxies anything.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use egress_pods::PodCache;

use crate::metrics::Metrics;
use crate::policy_store::PolicyStore;

/// Readiness: true once the listeners are bound, the policy is loaded and (with Pod identity) the
/// first full list of Pods is in; false from the first moment of shutdown.
pub struct Readiness {
    ready: AtomicBool,
    pods: Option<Arc<PodCache>>,
}

impl Readiness {
    pub fn new(pods: Option<Arc<PodCache>>) -> Self {
        Readiness {
            ready: AtomicBool::new(false),
            pods,
        }
    }

    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The body of a failing `/readyz`.
    pub fn why_not(&self) -> &'static str {
        if !self.ready.load(Ordering::Acquire) {
            "not ready\n"
        } else {
            "not ready: waiting for the first full list of Pods\n"
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.pods.as_ref().is_none_or(|p| p.is_synced())
    }
}

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub policy: Arc<PolicyStore>,
    pub readiness: Arc<Readiness>,
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

impl Admin {
    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        }
        match req.uri().path() {
            "/metrics" => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => {
                if self.readiness.is_ready() {
                    text(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        self.readiness.why_not(),
                    )
                }
            }
            "/policy" => {
                let body = serde_json::to_vec_pretty(&self.policy.status())
                    .expect("policy status always serialises");
                text(StatusCode::OK, "application/json", body)
            }
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}

/// How many admin connections may be open at once. Past that, a new one is closed at once,
/// unanswered: the admin port shares the process's descriptors and memory with the proxy
/// listeners, and must not be a way to exhaust them.
pub const MAX_CONNECTIONS: usize = 64;
/// How long an admin connection may stay open, keep-alive included. It is then closed once its
/// request in flight is answered, or after [`CLOSE_GRACE`]. This also ends a client that sends
/// requests and never reads the answers, whose writes would otherwise wait forever.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a connection past its lifetime may take to finish the answer in flight.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The admin server's bounds on its connections.
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub lifetime: Duration,
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            lifetime: CONNECTION_LIFETIME,
            grace: CLOSE_GRACE,
        }
    }
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    serve_with(listener, admin, Limits::default()).await;
}

async fn serve_with(listener: TcpListener, admin: Arc<Admin>, limits: Limits) {
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&open).try_acquire_owned() else {
            refused += 1;
            // One warning per burst, not per connection.
            if refused.is_power_of_two() {
                tracing::warn!(source = %peer, max = limits.max_connections, refused, "admin connection limit reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.route(&req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(limits.lifetime) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.grace, conn).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(limits: Limits) -> std::net::SocketAddr {
        let metrics = Arc::new(Metrics::new(None));
        let policy = PolicyStore::open(None, Arc::clone(&metrics)).expect("deny-all policy");
        let admin = Arc::new(Admin {
            metrics,
            policy,
            readiness: Arc::new(Readiness::new(None)),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(serve_with(listener, admin, limits));
        addr
    }

    async fn healthz(addr: std::net::SocketAddr) -> Vec<u8> {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        out
    }

    /// Past `max_connections` open at once, a new connection is closed unanswered; once one
    /// closes, a new one is served again.
    #[tokio::test]
    async fn connections_past_the_limit_are_closed_unanswered() {
        let addr = server(Limits {
            max_connections: 2,
            ..Limits::default()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .expect("part of a head");
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(healthz(addr).await, b"", "a third connection was served");
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answer = healthz(addr).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    /// A client that sends requests and never reads the answers is closed at the end of the
    /// connection's lifetime and grace, though its answers cannot all be written.
    #[tokio::test]
    async fn a_client_that_never_reads_is_closed_after_the_lifetime() {
        let addr = server(Limits {
            max_connections: 4,
            lifetime: Duration::from_millis(300),
            grace: Duration::from_millis(300),
        })
        .await;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let mut s = socket.connect(addr).await.expect("connect");
        let many = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(500);
        // The server stops reading once its answers back up: send what it takes.
        let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&many)).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Closed by now: what is left is read at once. Without the lifetime, the answers would
        // be written as they are read, and the connection would wait for hyper's 5 s head
        // timeout before it closed.
        let mut out = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        assert!(
            ended.is_ok(),
            "the connection is still open after its lifetime"
        );
    }
}
