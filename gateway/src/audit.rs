//! The audit stream: one JSON line per connection on stdout, apart from the operational logs
//! (stderr). Lines go into one shared buffer that is written out when it fills and at least
//! every [`FLUSH_EVERY`]: no thread hand-off per line, and a slow stdout slows connections down
//! rather than dropping audit lines or growing memory without bound.

use std::io::{BufWriter, Stdout, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use egress_policy::{Identity, IdentitySource};
use serde::Serialize;

/// One connection's audit record, filled in as the connection moves along.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    pub ts: String,
    pub listener: String,
    pub decision: &'static str,
    pub reason: &'static str,
    pub rule: Option<String>,
    pub identity: Option<String>,
    pub identity_source: &'static str,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub pod: Option<String>,
    pub source: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub upstream: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub shadow: Vec<ShadowEntry>,
    /// How an allowed connection ended: eof, idle_timeout, drain, error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

#[derive(Debug, Serialize)]
pub struct ShadowEntry {
    pub rule: String,
    pub action: &'static str,
}

impl AuditRecord {
    pub fn new(listener: &str, source: SocketAddr) -> Self {
        AuditRecord {
            ts: String::new(),
            listener: listener.to_owned(),
            decision: "deny",
            reason: "bad_request",
            rule: None,
            identity: None,
            identity_source: IdentitySource::None.as_str(),
            namespace: None,
            service_account: None,
            pod: None,
            source: source.to_string(),
            host: None,
            port: None,
            upstream: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            shadow: Vec::new(),
            close: None,
            details: None,
            started: Some(Instant::now()),
        }
    }

    pub fn set_identity(&mut self, id: &Identity) {
        self.identity.clone_from(&id.spiffe);
        self.identity_source = id.source.as_str();
        self.namespace.clone_from(&id.namespace);
        self.service_account.clone_from(&id.service_account);
        self.pod.clone_from(&id.pod);
    }

    fn finish(&mut self) {
        self.ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        if let Some(s) = self.started {
            self.duration_ms = u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
    }
}

/// How long an audit line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Where audit lines go.
#[derive(Clone)]
pub struct AuditSink {
    out: Arc<Mutex<BufWriter<Stdout>>>,
    dirty: Arc<AtomicBool>,
}

impl AuditSink {
    /// Writes to stdout, flushed by a background task. Call inside the runtime.
    pub fn stdout() -> Self {
        let sink = AuditSink {
            out: Arc::new(Mutex::new(BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            ))),
            dirty: Arc::new(AtomicBool::new(false)),
        };
        let flusher = sink.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tick.tick().await;
                flusher.flush();
            }
        });
        sink
    }

    pub fn write(&self, mut record: AuditRecord) {
        record.finish();
        let mut line = serde_json::to_vec(&record).expect("an audit record always serialises");
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(&line) {
            tracing::error!(error = %e, "audit line lost: stdout failed");
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes out buffered lines now.
    pub fn flush(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = out.flush() {
                tracing::error!(error = %e, "flushing audit lines failed");
            }
        }
    }
}
