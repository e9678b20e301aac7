//! A CONNECT client that binds a chosen loopback source address, so each test caller has its own
//! identity (127.0.0.2, 127.0.0.3, ...).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `proxy` from `source` (an address of 127.0.0.0/8).
pub async fn connect_from(source: &str, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.parse().expect("source address"), 0))
        .expect("bind source address");
    socket.connect(proxy).await.expect("connect to the gateway")
}

/// A parsed response head.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    /// Bytes after the head that arrived with it.
    pub rest: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The `error=` parameter of `Proxy-Status`.
    pub fn proxy_status_error(&self) -> Option<String> {
        let ps = self.header("proxy-status")?;
        ps.split(';')
            .find_map(|p| p.trim().strip_prefix("error=").map(str::to_owned))
    }
}

/// Reads one response head.
pub async fn read_response(stream: &mut TcpStream) -> Response {
    read_response_from(stream).await
}

/// Reads one response head from any reader (a read half, say).
pub async fn read_response_from(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(crate::DEADLINE, stream.read(&mut chunk))
            .await
            .expect("response within the deadline")
            .expect("read response");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Response {
        status,
        head,
        rest: buf[end..].to_vec(),
    }
}

/// Sends `CONNECT target` from `source` and reads the response.
pub async fn connect(source: &str, proxy: SocketAddr, target: &str) -> (TcpStream, Response) {
    let mut s = connect_from(source, proxy).await;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("send CONNECT");
    let r = read_response(&mut s).await;
    (s, r)
}

/// Reads until the stream ends (bounded by the deadline); returns what came and how it ended:
/// `Ok` for a clean EOF, else the error (a reset, say).
pub async fn read_until_the_end<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = tokio::time::timeout(crate::DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the stream ends within the deadline");
    (got, end)
}

/// Checks that a stream read by [`read_until_the_end`] ended in a reset, not a clean EOF.
#[track_caller]
pub fn assert_reset(end: &std::io::Result<()>) {
    assert_eq!(
        end.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
}

/// Reads until EOF (bounded by the deadline), from a socket or a TLS stream.
pub async fn read_to_end<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(crate::DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("EOF within the deadline")
        .expect("read to end");
    out
}
