//! Whether the gateway's own listening ports lie where the kernel also picks the local ports of
//! outgoing connections: `net.ipv4.ip_local_port_range`, less `net.ipv4.ip_local_reserved_ports`
//! (both apply to IPv6 too). An upstream connection of a previous gateway process, still in
//! TIME_WAIT on such a port after a restart, keeps the new listener from binding it for up to a
//! minute. The kernel's default range (32768–60999) holds none of the default ports; a widened
//! one may.

use std::ops::RangeInclusive;

/// The ports of `ports` that the kernel may also give to outgoing connections, ascending.
pub fn exposed(
    ports: &[u16],
    range: &RangeInclusive<u16>,
    reserved: &[RangeInclusive<u16>],
) -> Vec<u16> {
    let mut out: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| *p != 0 && range.contains(p) && !reserved.iter().any(|r| r.contains(p)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `ip_local_port_range`: two numbers, separated by white space.
pub fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Some(lo..=hi),
        _ => None,
    }
}

/// `ip_local_reserved_ports`: a comma-separated list of ports and `low-high` ranges, or nothing.
pub fn parse_reserved(text: &str) -> Option<Vec<RangeInclusive<u16>>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|item| {
            let item = item.trim();
            match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                    (lo <= hi).then_some(lo..=hi)
                }
                None => item.parse().ok().map(|p| p..=p),
            }
        })
        .collect()
}

/// This network namespace's range and reserved ports; `None` if either cannot be read (not
/// Linux, no `/proc`).
pub fn read() -> Option<(RangeInclusive<u16>, Vec<RangeInclusive<u16>>)> {
    let sysctl = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    let range = parse_range(&sysctl("ip_local_port_range")?)?;
    let reserved = parse_reserved(&sysctl("ip_local_reserved_ports")?)?;
    Some((range, reserved))
}

/// Logs a warning for each configured listening port that outgoing connections may take.
pub fn warn_exposed(ports: &[u16]) {
    let Some((range, reserved)) = read() else {
        return;
    };
    for port in exposed(ports, &range, &reserved) {
        tracing::warn!(
            port,
            ip_local_port_range = %format!("{} {}", range.start(), range.end()),
            "a listening port lies in net.ipv4.ip_local_port_range and is not in \
             net.ipv4.ip_local_reserved_ports: after a restart, an old upstream connection in \
             TIME_WAIT on it can keep the listener from binding for up to a minute; reserve it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysctls_are_parsed_as_linux_writes_them() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("1024"), None);
        assert_eq!(parse_range("1024 65536"), None);
        assert_eq!(parse_reserved("\n"), Some(vec![]));
        assert_eq!(
            parse_reserved("3128,9901,20000-20010\n"),
            Some(vec![3128..=3128, 9901..=9901, 20000..=20010])
        );
        assert_eq!(parse_reserved("3128,x"), None);
        assert_eq!(parse_reserved("20-10"), None);
    }

    #[test]
    fn only_ports_in_the_range_and_not_reserved_are_exposed() {
        let defaults = [3128, 9901, 15001, 8443];
        assert!(exposed(&defaults, &(32768..=60999), &[]).is_empty());
        assert_eq!(
            exposed(&defaults, &(1024..=65535), &[]),
            vec![3128, 8443, 9901, 15001]
        );
        assert_eq!(
            exposed(&defaults, &(1024..=65535), &[3128..=3128, 9000..=9999]),
            vec![8443, 15001]
        );
        // Port 0 (the kernel picks one) is never a configured port.
        assert!(exposed(&[0, 0], &(0..=65535), &[]).is_empty());
    }
}
