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
    ts: Timestamp,
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

/// When a connection's line was written: RFC 3339, UTC, milliseconds.
#[derive(Clone, Copy, Debug)]
struct Timestamp(SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

#[derive(Debug, Serialize)]
pub struct ShadowEntry {
    pub rule: String,
    pub action: &'static str,
}

impl AuditRecord {
    pub fn new(listener: &str, source: SocketAddr) -> Self {
        AuditRecord {
            ts: Timestamp(SystemTime::UNIX_EPOCH),
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
        self.ts = Timestamp(SystemTime::now());
        if let Some(s) = self.started {
            self.duration_ms = u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
    }

    /// Appends the record as one JSON object, the same bytes `serde_json` writes for it (a unit
    /// test holds the two together), without its per-field machinery and buffer regrowth: every
    /// connection writes one.
    fn encode(&self, out: &mut Vec<u8>) {
        // RFC 3339 needs no escaping.
        out.extend_from_slice(b"{\"ts\":\"");
        let _ = write!(out, "{}", humantime::format_rfc3339_millis(self.ts.0));
        out.push(b'"');
        json_key(out, "listener");
        json_str(out, &self.listener);
        json_key(out, "decision");
        json_str(out, self.decision);
        json_key(out, "reason");
        json_str(out, self.reason);
        json_key(out, "rule");
        json_opt_str(out, self.rule.as_deref());
        json_key(out, "identity");
        json_opt_str(out, self.identity.as_deref());
        json_key(out, "identity_source");
        json_str(out, self.identity_source);
        json_key(out, "namespace");
        json_opt_str(out, self.namespace.as_deref());
        json_key(out, "service_account");
        json_opt_str(out, self.service_account.as_deref());
        json_key(out, "pod");
        json_opt_str(out, self.pod.as_deref());
        json_key(out, "source");
        json_str(out, &self.source);
        json_key(out, "host");
        json_opt_str(out, self.host.as_deref());
        json_key(out, "port");
        match self.port {
            Some(p) => push_decimal(out, u64::from(p)),
            None => out.extend_from_slice(b"null"),
        }
        json_key(out, "upstream");
        json_opt_str(out, self.upstream.as_deref());
        json_key(out, "bytes_up");
        push_decimal(out, self.bytes_up);
        json_key(out, "bytes_down");
        push_decimal(out, self.bytes_down);
        json_key(out, "duration_ms");
        push_decimal(out, self.duration_ms);
        json_key(out, "shadow");
        out.push(b'[');
        for (i, s) in self.shadow.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"rule\":");
            json_str(out, &s.rule);
            json_key(out, "action");
            json_str(out, s.action);
            out.push(b'}');
        }
        out.push(b']');
        if let Some(close) = self.close {
            json_key(out, "close");
            json_str(out, close);
        }
        if let Some(details) = &self.details {
            json_key(out, "details");
            json_str(out, details);
        }
        out.push(b'}');
    }
}

/// `,"key":` before every field but the first; keys need no escaping.
fn json_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string as `serde_json` writes it: `"` and `\\` escaped, control characters as `\n`,
/// `\t`, ... or `\u00XX`, everything else (all of UTF-8) as it is.
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `ip:port` as `SocketAddr`'s `Display` writes it; IPv4 without the formatting machinery, since
/// every connection formats its source and its upstream.
pub fn addr_string(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut out = Vec::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        push_decimal(&mut out, u64::from(octet));
    }
    out.push(b':');
    push_decimal(&mut out, u64::from(v4.port()));
    String::from_utf8(out).unwrap_or_default()
}

/// `n` in decimal, as `Display` writes it.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

thread_local! {
    /// The line being written, reused: no allocation per line once it has grown.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
        LINE.with_borrow_mut(|line| {
            line.clear();
            record.encode(line);
            line.push(b'\n');
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = out.write_all(line) {
                tracing::error!(error = %e, "audit line lost: stdout failed");
            }
        });
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
    use super::*;

    /// The hand-written encoder and `serde_json` write the same line, for every shape a
    /// record takes: empty and filled options, shadow entries, and strings that need escaping.
    #[test]
    fn encode_writes_what_serde_json_writes() {
        let source: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        let mut bare = AuditRecord::new("proxy", source);
        bare.finish();
        let mut full = AuditRecord::new("li\"st\\ener\n", "[::1]:1".parse().expect("address"));
        full.decision = "allow";
        full.reason = "allowed_by_rule";
        full.rule = Some("r\u{1}\u{1f}\u{7f}é\u{8}\u{c}\t\r/".to_owned());
        full.identity = Some("spiffe://corp.example/ns/a/sa/b".to_owned());
        full.identity_source = "kubernetes";
        full.namespace = Some("a".to_owned());
        full.service_account = Some("b".to_owned());
        full.pod = Some("p-0 ✓".to_owned());
        full.host = Some("example.com".to_owned());
        full.port = Some(65535);
        full.upstream = Some("192.0.2.1:443".to_owned());
        full.bytes_up = u64::MAX;
        full.bytes_down = 1;
        full.shadow = vec![
            ShadowEntry {
                rule: "s1".to_owned(),
                action: "deny",
            },
            ShadowEntry {
                rule: "s\"2".to_owned(),
                action: "allow",
            },
        ];
        full.close = Some("eof");
        full.details = Some("no rule allows \"x\" (\u{0})".to_owned());
        full.finish();
        for record in [&bare, &full] {
            let mut ours = Vec::new();
            record.encode(&mut ours);
            let theirs = serde_json::to_vec(record).expect("serialises");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }

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
