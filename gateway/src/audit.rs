//! The audit stream: one JSON line per connection on stdout, apart from the operational logs
//! (stderr). Lines are handed to one writer thread through a bounded channel, so a slow stdout
//! slows connections down rather than dropping audit lines or growing memory without bound.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

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

/// Where audit lines go.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::SyncSender<Vec<u8>>,
}

impl AuditSink {
    /// Starts the writer thread on stdout.
    pub fn stdout() -> Self {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(16 * 1024);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(&line);
                    // Flush whenever the queue is empty: lines appear promptly when traffic is
                    // light and are batched when it is heavy.
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(&more);
                    }
                    if out.flush().is_err() {
                        // stdout is gone; keep draining so senders never block forever.
                        continue;
                    }
                }
            })
            .expect("spawning the audit writer thread at start-up must succeed");
        AuditSink { tx }
    }

    pub fn write(&self, mut record: AuditRecord) {
        record.finish();
        let mut line = serde_json::to_vec(&record).expect("an audit record always serialises");
        line.push(b'\n');
        if self.tx.send(line).is_err() {
            tracing::error!("audit writer is gone; audit line lost");
        }
    }
}
