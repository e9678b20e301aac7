//! An authoritative DNS server on loopback (UDP and TCP), answering A and AAAA from a table the
//! test controls, with TTL 0, and counting the queries it receives.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Default)]
struct State {
    records: Mutex<HashMap<String, Vec<IpAddr>>>,
    /// Names whose A answer changes with every A query: the answers in turn.
    rotations: Mutex<HashMap<String, (Vec<IpAddr>, usize)>>,
    queries: AtomicUsize,
    names: Mutex<Vec<String>>,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl DnsServer {
    pub async fn start() -> Self {
        // UDP and TCP on the same port number.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS/UDP");
            let port = udp.local_addr().expect("local addr").port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        Self::serve(udp, tcp)
    }

    /// Serves on sockets bound elsewhere (e.g. inside a network namespace).
    pub fn start_on(udp: std::net::UdpSocket, tcp: std::net::TcpListener) -> Self {
        udp.set_nonblocking(true).expect("nonblocking");
        tcp.set_nonblocking(true).expect("nonblocking");
        Self::serve(
            UdpSocket::from_std(udp).expect("tokio udp"),
            TcpListener::from_std(tcp).expect("tokio tcp"),
        )
    }

    fn serve(udp: UdpSocket, tcp: TcpListener) -> Self {
        let state = Arc::new(State::default());
        let addr = udp.local_addr().expect("local addr");
        let s = Arc::clone(&state);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = answer(&s, &buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let s = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = tcp.accept().await {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if conn.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if conn.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        let Some(reply) = answer(&s, &q) else { return };
                        let Ok(l) = u16::try_from(reply.len()) else {
                            return;
                        };
                        if conn.write_all(&l.to_be_bytes()).await.is_err()
                            || conn.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        DnsServer { addr, state }
    }

    /// Sets the addresses of `name` (lower case, no trailing dot).
    pub fn set(&self, name: &str, ips: &[&str]) {
        let ips = ips
            .iter()
            .map(|i| i.parse().expect("test address"))
            .collect();
        self.state
            .records
            .lock()
            .expect("lock")
            .insert(name.to_owned(), ips);
    }

    /// Makes `name` answer each A query with the next address of `ips`, in turn, TTL 0: the
    /// shape of a DNS-rebinding attack.
    pub fn set_rotation(&self, name: &str, ips: &[&str]) {
        let ips = ips
            .iter()
            .map(|i| i.parse().expect("test address"))
            .collect();
        self.state
            .rotations
            .lock()
            .expect("lock")
            .insert(name.to_owned(), (ips, 0));
    }

    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::SeqCst)
    }

    /// Names queried so far.
    pub fn names(&self) -> Vec<String> {
        self.state.names.lock().expect("lock").clone()
    }
}

fn answer(state: &State, query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    state.queries.fetch_add(1, Ordering::SeqCst);
    let mut resp = Message::new();
    resp.set_id(req.id());
    resp.set_message_type(MessageType::Response);
    resp.set_op_code(req.op_code());
    resp.set_recursion_desired(req.recursion_desired());
    resp.set_recursion_available(true);
    resp.set_authoritative(true);
    let mut found = false;
    for q in req.queries() {
        resp.add_query(q.clone());
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        state.names.lock().expect("lock").push(name.clone());
        let mut rotations = state.rotations.lock().expect("lock");
        let rotated = rotations.get_mut(&name).map(|(ips, next)| {
            let ip = ips[*next % ips.len()];
            if q.query_type() == RecordType::A {
                *next += 1;
            }
            vec![ip]
        });
        drop(rotations);
        let records = state.records.lock().expect("lock");
        if let Some(ips) = rotated.as_ref().or_else(|| records.get(&name)) {
            found = true;
            for ip in ips {
                let rdata = match (ip, q.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
            }
        }
    }
    if !found {
        resp.set_response_code(ResponseCode::NXDomain);
    }
    resp.to_vec().ok()
}
