//! Upstream servers that count every connection they accept, so a test can prove that a denied
//! request never reached them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What an upstream does with a connection.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Echo everything; after the client's EOF, finish echoing and close.
    Echo,
    /// Send `hello`, half-close, then record what the client still sends.
    GreetThenHalfClose,
    /// Wait for the client's first bytes, send `hello`, then reset the connection right behind it
    /// (`SO_LINGER` 0 and close). The gateway may then see the reset's error before the close,
    /// after it has read the bytes: that once froze a one-thread gateway, now and then.
    GreetThenReset,
    /// Record one HTTP request head and answer `200` with body `ok`, then close.
    Http,
    /// Record everything that arrives until 300 ms of silence, then answer `200` `ok` and close.
    HttpSlurp,
    /// Record everything that arrives, answer nothing, until the client closes.
    Sink,
}

pub struct Upstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Upstream {
    pub async fn start(bind: &str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (a, r, p) = (
            Arc::clone(&accepted),
            Arc::clone(&received),
            Arc::clone(&peers),
        );
        tokio::spawn(async move {
            while let Ok((conn, peer)) = listener.accept().await {
                p.lock().expect("lock").push(peer);
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(conn, behaviour, Arc::clone(&r)));
            }
        });
        Upstream {
            addr,
            accepted,
            received,
            peers,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections were accepted (the gateway's connect completes before this
    /// server's accept loop counts it), then checks there were no more.
    pub async fn expect_accepted(&self, n: usize) {
        crate::eventually(&format!("{n} accepted connections"), || {
            (self.accepted() >= n).then_some(())
        })
        .await;
        assert_eq!(
            self.accepted(),
            n,
            "more connections than expected reached the upstream"
        );
    }

    /// Checks that no connection arrived, after giving a stray one time to be counted.
    pub async fn expect_no_connection(&self) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            self.accepted(),
            0,
            "a connection reached an upstream it must never reach"
        );
    }

    /// Source addresses of the connections accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("lock").clone()
    }

    /// Bytes received (GreetThenHalfClose and Http only).
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().expect("lock").clone()
    }
}

async fn serve(mut conn: TcpStream, behaviour: Behaviour, received: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 64 * 1024];
    match behaviour {
        Behaviour::Echo => loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = conn.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        },
        Behaviour::GreetThenReset => {
            if matches!(conn.read(&mut buf).await, Ok(n) if n > 0)
                && conn.write_all(b"hello").await.is_ok()
            {
                let _ = conn.set_zero_linger();
            }
        }
        Behaviour::GreetThenHalfClose => {
            if conn.write_all(b"hello").await.is_err() || conn.shutdown().await.is_err() {
                return;
            }
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                received.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        }
        Behaviour::Sink => {
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                received.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        }
        Behaviour::HttpSlurp => {
            let quiet = std::time::Duration::from_millis(300);
            while let Ok(Ok(n)) = tokio::time::timeout(quiet, conn.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                received.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
            let _ = conn.shutdown().await;
        }
        Behaviour::Http => {
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            received.lock().expect("lock").extend_from_slice(&head);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
            let _ = conn.shutdown().await;
        }
    }
}

/// A TLS echo server for `name`, with a self-signed certificate the test trusts.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub cert_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl TlsUpstream {
    pub async fn start(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed cert");
        let cert_der = cert.der().clone();
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(conn).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        TlsUpstream {
            addr,
            cert_pem: cert.pem(),
            cert_der,
        }
    }
}
