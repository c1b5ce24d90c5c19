//! Free loopback ports for servers that must be told their port before they start (a
//! cluster's routes, a lab's services).
//!
//! Why not port 0 and release: a port the kernel picked from its ephemeral range is, once
//! released, just as likely to be picked again for some process's outgoing connection before
//! the server binds it. Ports below that range are never handed out that way, so they are
//! chosen there, at random (so that labs and tests running side by side rarely try the
//! same one), each checked free, and all held until every one is chosen.

use std::net::TcpListener;

/// Where the kernel's ephemeral range starts when /proc does not say.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;
/// The lowest port chosen: clear of the well-known and most registered services.
const LOWEST: u16 = 10_000;

/// `count` distinct ports on 127.0.0.1 that were free a moment ago.
pub fn free_loopback_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let highest = ephemeral_start().saturating_sub(1).max(LOWEST + 1_000);
    let span = u64::from(highest - LOWEST);
    let mut state = seed();
    let mut held: Vec<TcpListener> = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    let mut attempts = 0;
    while ports.len() < count {
        attempts += 1;
        if attempts > 10_000 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("no free loopback port between {LOWEST} and {highest}"),
            ));
        }
        // xorshift64: uniform enough to spread concurrent callers apart.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = LOWEST + u16::try_from(state % span).unwrap_or(0);
        if ports.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
            ports.push(port);
        }
    }
    Ok(ports)
}

fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports = free_loopback_ports(20).expect("free ports");
        assert_eq!(ports.len(), 20);
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 20);
        for port in ports {
            assert!((LOWEST..ephemeral_start()).contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).expect("released and free");
        }
    }
}
