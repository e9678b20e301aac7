//! The admin server: `/metrics`, `/healthz`, `/readyz`, `/policy`. Plain HTTP/1.1 on its own
//! address; it never proxies anything.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.route(&req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}
