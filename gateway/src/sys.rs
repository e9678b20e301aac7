//! The few system calls no safe crate offers here: `splice(2)` through a pipe, for
//! zero-copy relaying of bulk data, `shutdown(2)` on a shared socket reference, a read that
//! does not wait for tokio's readiness, the coarse monotonic clock, and a socket's queue lengths.
//!
//! Every `unsafe` block is a plain syscall on file descriptors this module owns or borrows for
//! the duration of the call, or a read of a clock into a local value.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Milliseconds on `CLOCK_MONOTONIC_COARSE`, the monotonic clock as of its last tick (a few
/// milliseconds old at most). The vDSO answers it from memory, without reading the clock source.
pub fn coarse_millis() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(rc, 0, "CLOCK_MONOTONIC_COARSE exists since Linux 2.6.32");
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let millis = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(millis)
}

/// Pipe capacity for spliced tunnels (the kernel default is 64 KiB).
const PIPE_SIZE: libc::c_int = 256 * 1024;
/// The smallest pipe Linux makes.
const PAGE: usize = 4096;

/// A non-blocking pipe that carries spliced bytes from one socket to another.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe not yet spliced out.
    pub pending: usize,
    pub capacity: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on a pipe we own; failure only leaves the size it has.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        // Refused (EPERM once the user's pipe budget, fs.pipe-user-pages-soft, is spent): the
        // pipe may be as small as two pages, so ask it rather than assume the default.
        // SAFETY: F_GETPIPE_SZ on a pipe we own.
        let size = if size > 0 {
            size
        } else {
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) }
        };
        let capacity = if size > 0 { size as usize } else { PAGE };
        #[cfg(test)]
        tests::shrink(&write);
        Ok(Pipe {
            read,
            write,
            pending: 0,
            capacity,
        })
    }

    /// Moves up to the pipe's free space from `socket` into the pipe. `Ok(0)` is EOF.
    pub fn fill_from(&mut self, socket: RawFd) -> io::Result<usize> {
        let want = self.capacity - self.pending;
        let n = splice(socket, self.write.as_raw_fd(), want)?;
        self.pending += n;
        Ok(n)
    }

    /// Moves pending bytes from the pipe into `socket`.
    pub fn drain_to(&mut self, socket: RawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), socket, self.pending)?;
        self.pending -= n;
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live
    // sockets and an owned pipe); null offsets are required for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Raises the soft limit on open files to the hard limit, as a server that holds two sockets and
/// up to two pipes per tunnel must: container runtimes and systemd often start processes with a
/// soft limit of 1024, which would stop accepting after a few hundred tunnels. Returns the soft
/// limit before and after.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    // SAFETY: an all-zero rlimit is a valid value of the type.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard one needs no
        // privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// Shuts down the sending side of a socket (half-close) through a shared reference.
pub fn shutdown_write(socket: RawFd) -> io::Result<()> {
    // SAFETY: shutdown on a descriptor borrowed from a live socket.
    let rc = unsafe { libc::shutdown(socket, libc::SHUT_WR) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // Already disconnected: nothing left to half-close.
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// One `int` a socket ioctl reports.
fn ioctl_count(socket: RawFd, request: libc::Ioctl) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `request` is SIOCOUTQ or FIONREAD, which write one int to `n`, on a descriptor
    // borrowed from a live socket.
    if unsafe { libc::ioctl(socket, request, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// One `read(2)` into `buf`'s spare capacity, extending `buf` by what was read. Unlike tokio's
/// own reads, it does not first ask whether tokio has seen the socket readable: the caller has
/// its own reason to read (an error readiness, which only a read can tell from data or a reset).
/// A full `buf` is an error, not a read of 0 bytes, which would look like the end of the stream.
pub fn read_spare(socket: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    if spare.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no room in the buffer to read into",
        ));
    }
    // SAFETY: read(2) writes at most `spare.len()` bytes into `spare`, memory `buf` owns and does
    // not use while the call runs.
    let n = unsafe { libc::read(socket, spare.as_mut_ptr().cast(), spare.len()) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Bytes written to a TCP socket that its peer has not yet acknowledged (`SIOCOUTQ`): 0 once
/// everything sent has been delivered.
pub fn unacknowledged(socket: RawFd) -> io::Result<usize> {
    // SIOCOUTQ is TIOCOUTQ on Linux.
    ioctl_count(socket, libc::TIOCOUTQ)
}

/// Bytes a socket has received that nobody has read yet (`FIONREAD`).
pub fn unread(socket: RawFd) -> io::Result<usize> {
    ioctl_count(socket, libc::FIONREAD)
}

/// `SO_ORIGINAL_DST` (`IP6T_SO_ORIGINAL_DST` for IPv6): where a connection that iptables
/// `REDIRECT`ed (or `DNAT`ed) to us was going, from the netfilter connection table.
pub fn original_dst(socket: RawFd, ipv6: bool) -> io::Result<std::net::SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    if ipv6 {
        // SAFETY: an all-zero sockaddr_in6 is a valid value of the type.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are valid for writes of the sizes passed.
        let rc = unsafe {
            libc::getsockopt(
                socket,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                (&mut addr as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(std::net::SocketAddr::new(
            ip.into(),
            u16::from_be(addr.sin6_port),
        ))
    } else {
        // SAFETY: an all-zero sockaddr_in is a valid value of the type.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are valid for writes of the sizes passed.
        let rc = unsafe {
            libc::getsockopt(
                socket,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(std::net::SocketAddr::new(
            ip.into(),
            u16::from_be(addr.sin_port),
        ))
    }
}

fn set_int_option(
    socket: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `ip` is an address of this host (of this network namespace): whether the kernel lets a
/// socket bind to it. That is the kernel's own answer, routes of type `local` included (an address
/// added to `lo` with a prefix makes the whole prefix local, and so does an "AnyIP" route), which
/// a list of interface addresses would miss. `IP_BIND_ADDRESS_NO_PORT` keeps the probe from taking
/// a port. Under `net.ipv4.ip_nonlocal_bind=1` every address looks local.
pub fn is_local_address(ip: std::net::IpAddr) -> io::Result<bool> {
    let socket = match ip {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    set_bind_address_no_port(socket.as_raw_fd())?;
    match socket.bind(std::net::SocketAddr::new(ip, 0)) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `SO_MARK`: a firewall mark on the gateway's own upstream sockets (needs `CAP_NET_ADMIN`).
pub fn set_mark(socket: RawFd, mark: u32) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// `IP_BIND_ADDRESS_NO_PORT` on a socket about to be bound to a source address with port 0: the
/// kernel then picks the port at `connect()`, for the whole four-tuple, so one local port serves
/// every destination. Without it `bind()` reserves a port of its own, and all upstream
/// connections together share the ~28,000 ports of `ip_local_port_range`. Also applies to IPv6
/// sockets.
pub fn set_bind_address_no_port(socket: RawFd) -> io::Result<()> {
    set_int_option(socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// `TCP_DEFER_ACCEPT` on a listening socket: a connection is handed to `accept()` once data has
/// arrived on it, or once `seconds` have passed (Linux rounds them up to SYN-ACK
/// retransmissions: 1 s is one retransmission, after which the caller's next ACK completes the
/// accept without data).
pub fn set_defer_accept(socket: RawFd, seconds: libc::c_int) -> io::Result<()> {
    set_int_option(socket, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, seconds)
}

/// `IP_TRANSPARENT` (`IPV6_TRANSPARENT`) on a listening socket, for TPROXY: it may then accept
/// connections addressed to any IP (needs `CAP_NET_ADMIN`).
pub fn set_transparent(socket: RawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_int_option(socket, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
    } else {
        set_int_option(socket, libc::SOL_IP, libc::IP_TRANSPARENT, 1)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{coarse_millis, PAGE};
    use std::cell::Cell;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    thread_local! {
        static SHRINK: Cell<bool> = const { Cell::new(false) };
    }

    /// From now on, pipes made on this thread hold one page while they keep the capacity they
    /// were given: a pipe whose slots run out before its bytes do, as on a NIC whose driver
    /// fills each receive fragment with ~1.5 KiB.
    pub(crate) fn shrink_pipes_on_this_thread() {
        SHRINK.with(|s| s.set(true));
    }

    /// Has the kernel time-stamp every segment this socket sends and queue the stamp on its
    /// error queue: the socket then polls as in error (`EPOLLERR`) while its connection is
    /// healthy, with no byte to read.
    pub(crate) fn stamp_transmits(socket: std::os::fd::RawFd) {
        let flags = libc::SOF_TIMESTAMPING_TX_SOFTWARE
            | libc::SOF_TIMESTAMPING_SOFTWARE
            | libc::SOF_TIMESTAMPING_OPT_TSONLY;
        let flags = libc::c_int::try_from(flags).expect("the flags fit in an int");
        super::set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, flags)
            .expect("SO_TIMESTAMPING");
    }

    /// Whether the socket polls as in error (`POLLERR`) right now.
    pub(crate) fn polls_in_error(socket: std::os::fd::RawFd) -> bool {
        let mut p = libc::pollfd {
            fd: socket,
            events: 0,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call; a zero timeout does not block.
        let rc = unsafe { libc::poll(&mut p, 1, 0) };
        assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
        p.revents & libc::POLLERR != 0
    }

    pub(super) fn shrink(write: &OwnedFd) {
        if SHRINK.with(Cell::get) {
            // SAFETY: F_SETPIPE_SZ on a pipe the caller owns.
            let rc =
                unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PAGE as libc::c_int) };
            assert!(
                rc > 0,
                "shrinking a test pipe: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    #[test]
    fn a_spare_read_extends_the_buffer_and_a_full_buffer_is_an_error_not_an_end() {
        use std::io::Write;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        b.write_all(b"hi").expect("write");
        let mut buf = Vec::with_capacity(16);
        buf.extend_from_slice(b">");
        assert_eq!(super::read_spare(a.as_raw_fd(), &mut buf).expect("read"), 2);
        assert_eq!(buf, b">hi");
        let mut full = vec![0u8; 4];
        full.shrink_to_fit();
        assert_eq!(full.len(), full.capacity());
        let e = super::read_spare(a.as_raw_fd(), &mut full).expect_err("no room");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_coarse_clock_follows_the_monotonic_one_within_its_tick() {
        // The tick is one jiffy: 10 ms at the slowest kernel rate (HZ=100).
        const TICK_MS: u64 = 10;
        let ms = |d: Duration| u64::try_from(d.as_millis()).expect("fits in u64");
        // Each coarse read between two precise ones, so that a preemption between the reads
        // widens the bounds instead of failing the test.
        let (a0, c0, b0) = (Instant::now(), coarse_millis(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (a1, c1, b1) = (Instant::now(), coarse_millis(), Instant::now());
        assert!(c1 >= c0, "the coarse clock went back: {c0} then {c1}");
        let moved = c1 - c0;
        let (least, most) = (ms(a1 - b0), ms(b1 - a0));
        assert!(
            moved + TICK_MS >= least && moved <= most + TICK_MS,
            "coarse clock moved {moved} ms while {least}..={most} ms passed"
        );
    }
}
