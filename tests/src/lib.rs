//! Real peers for the end-to-end tests: the gateway binary itself ([`gateway::Gateway`]), a DNS
//! server ([`dns::DnsServer`]), TCP and TLS upstreams ([`upstream`]), and a client that speaks
//! CONNECT from a chosen loopback source address ([`client`]). Everything binds 127.0.0.0/8 on
//! ephemeral ports; waits are on readiness with a deadline, never a bare sleep.

pub mod apiserver;
pub mod client;
pub mod dns;
pub mod gateway;
pub mod netns;
pub mod upstream;

use std::time::Duration;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, or panics after [`DEADLINE`] with `what`.
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
