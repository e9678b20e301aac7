//! Process-level helpers: the open-file limit and a process's resident memory.

use std::io;

use anyhow::{bail, Context, Result};

/// Upper bound when the hard limit is "infinity" (the kernel refuses more than fs.nr_open).
const NOFILE_FALLBACK_CAP: u64 = 1 << 20;

/// Raise the soft RLIMIT_NOFILE as far as the hard limit allows. Returns (old soft, new soft).
#[allow(unsafe_code)]
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes a `struct rlimit` through the pointer, which points to a live,
    // properly aligned `libc::rlimit` owned by this frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    let mut want = lim.rlim_max;
    if want == libc::RLIM_INFINITY {
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(NOFILE_FALLBACK_CAP);
    }
    if old != libc::RLIM_INFINITY && old >= want {
        return Ok((old, old));
    }
    lim.rlim_cur = want;
    // SAFETY: setrlimit only reads the `struct rlimit` behind the pointer, a live local value;
    // the soft limit is not above the hard limit we just read.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((old, want))
}

/// Set IP_BIND_ADDRESS_NO_PORT on a socket about to be bound to a source address with port 0, so
/// that the kernel picks the port at connect() time for the whole 4-tuple instead of reserving a
/// port per source address at bind() time.
pub fn set_bind_address_no_port(fd: std::os::fd::RawFd) -> io::Result<()> {
    set_int_option(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// Set `SO_MARK` on a socket (needs CAP_NET_ADMIN).
pub fn set_mark(fd: std::os::fd::RawFd, mark: u32) -> io::Result<()> {
    // The kernel reads the mark as a 32-bit value: same bits as the c_int passed.
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// `setsockopt` of one `int`-sized option.
#[allow(unsafe_code)]
fn set_int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call; the option
    // value points to a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
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

/// Resident set size of a process in bytes, from the `VmRSS:` line of /proc/PID/status.
pub fn vm_rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("{path}: no usable VmRSS line"))
}

fn parse_vm_rss(status: &str) -> Result<u64> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let mut it = rest.split_whitespace();
            let value: u64 = it
                .next()
                .context("VmRSS has no value")?
                .parse()
                .context("VmRSS value is not a number")?;
            return match it.next() {
                Some("kB") => value.checked_mul(1024).context("VmRSS overflows"),
                other => bail!("VmRSS unit {other:?}, expected kB"),
            };
        }
    }
    bail!("no VmRSS line (a kernel thread or a zombie?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(s).expect("valid"), 2048 * 1024);
        assert!(parse_vm_rss("Name:\tx\n").is_err());
        assert!(parse_vm_rss("VmRSS:\t12 MB\n").is_err());
    }

    #[test]
    fn reads_own_rss() {
        assert!(vm_rss_bytes(std::process::id()).expect("own status") > 0);
    }
}
