//! The audit stream: one JSON line per connection on stdout, apart from the operational logs
//! (stderr). Lines go into one shared buffer that is written out when it fills and at least
//! every [`FLUSH_EVERY`]: no thread hand-off per line, and a slow stdout slows connections down
//! rather than dropping audit lines or growing memory without bound.

use std::io::{BufWriter, Stdout, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

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
            source: addr_string(source),
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

/// `ip:port` as `SocketAddr`'s `Display` writes it; IPv4 without the formatting machinery, since
/// every connection formats its source and its upstream.
pub fn addr_string(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut out = String::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(&mut out, u32::from(octet));
    }
    out.push(':');
    push_decimal(&mut out, u32::from(v4.port()));
    out
}

fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// How long an audit line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Where audit lines go.
#[derive(Clone)]
pub struct AuditSink {
    out: Arc<Mutex<BufWriter<Stdout>>>,
    dirty: Arc<AtomicBool>,
    /// Wakes the flusher when a line lands in an empty buffer.
    wrote: Arc<Notify>,
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
            wrote: Arc::new(Notify::new()),
        };
        let flusher = sink.clone();
        // The flusher sleeps until a line is waiting, then flushes FLUSH_EVERY later: no timer
        // runs while no connection ends, and a line waits at most FLUSH_EVERY.
        tokio::spawn(async move {
            loop {
                flusher.wrote.notified().await;
                tokio::time::sleep(FLUSH_EVERY).await;
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
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.wrote.notify_one();
        }
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

#[cfg(test)]
mod tests {
    use super::addr_string;
    use std::net::SocketAddr;

    #[test]
    fn addr_string_writes_what_display_writes() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:9443",
            "10.20.30.40:65535",
            "255.255.255.255:1",
            "192.0.2.9:80",
            "[::1]:443",
            "[2001:db8::1]:8080",
            "[::ffff:127.0.0.1]:3128",
        ] {
            let addr: SocketAddr = a.parse().expect("a socket address");
            assert_eq!(addr_string(addr), addr.to_string(), "{a}");
        }
    }
}
