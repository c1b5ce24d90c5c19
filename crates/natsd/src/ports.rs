//! Free loopback ports for servers that must be told their port before they start (a
//! cluster's routes, a lab's services).
//!
//! Why not port 0 and release: a port the kernel picked from its ephemeral range is, once
//! released, just as likely to be picked again for some process's outgoing connection before
//! the server binds it. Ports below that range are never handed out that way, so they are
//! chosen there, at random (so that labs and tests running side by side rarely try the
//! same one), each checked free, and all held until every one is chosen.
//!
//! A port checked free is still free for anyone else until its server binds it, which takes a
//! service a second or more to start; two labs starting side by side (the lab's tests run
//! several at once) could both check one port and hand it to two services, and one of them
//! then failed with "address in use". So every port handed out is also written, with the time,
//! to a reservation file under the temporary directory, shared by every process on the
//! machine and updated under an exclusive lock, and no port reserved in the last
//! [`RESERVED_FOR`] is handed out again. Where the file cannot be used the choice stays random
//! and checked, as before.

use std::io::{Read as _, Seek as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a port handed out stays reserved: far longer than a server takes to bind it.
pub const RESERVED_FOR: Duration = Duration::from_secs(120);

/// Where the kernel's ephemeral range starts when /proc does not say.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;
/// The lowest port chosen: clear of the well-known and most registered services.
const LOWEST: u16 = 10_000;

/// `count` distinct ports on 127.0.0.1 that were free a moment ago.
pub fn free_loopback_ports(count: usize) -> std::io::Result<Vec<u16>> {
    free_ports_reserved_in(&reservation_file(), count)
}

fn reservation_file() -> PathBuf {
    std::env::temp_dir().join("natsd-reserved-ports")
}

/// [`free_loopback_ports`], with the reservations kept in `file`.
fn free_ports_reserved_in(file: &Path, count: usize) -> std::io::Result<Vec<u16>> {
    let Ok(mut reservations) = Reservations::lock(file) else {
        return choose(count, &[]);
    };
    let ports = choose(count, &reservations.ports())?;
    reservations.add(&ports);
    Ok(ports)
}

/// The reservation file, locked for as long as this lives, and its entries still live, each
/// `port unix-seconds`.
struct Reservations {
    file: std::fs::File,
    entries: Vec<(u16, u64)>,
}

impl Reservations {
    fn lock(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.lock()?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let now = unix_seconds();
        // A line that does not parse (a file cut short by a crash) is dropped.
        let entries: Vec<(u16, u64)> = text
            .lines()
            .filter_map(|line| {
                let (port, at) = line.split_once(' ')?;
                Some((port.parse().ok()?, at.parse().ok()?))
            })
            .filter(|(_, at)| now.saturating_sub(*at) < RESERVED_FOR.as_secs())
            .collect();
        Ok(Self { file, entries })
    }

    /// The ports still reserved.
    fn ports(&self) -> Vec<u16> {
        self.entries.iter().map(|(port, _)| *port).collect()
    }

    /// Writes back the live reservations and `ports`; best effort, as the choice was checked
    /// free anyway.
    fn add(&mut self, ports: &[u16]) {
        let now = unix_seconds();
        let mut text = String::new();
        for (port, at) in self
            .entries
            .iter()
            .copied()
            .chain(ports.iter().map(|port| (*port, now)))
        {
            text.push_str(&format!("{port} {at}\n"));
        }
        let _ = self
            .file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| self.file.write_all(text.as_bytes()));
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// `count` distinct free ports, none of them in `reserved`.
fn choose(count: usize, reserved: &[u16]) -> std::io::Result<Vec<u16>> {
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
        if ports.contains(&port) || reserved.contains(&port) {
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
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
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

    #[test]
    fn ports_reserved_by_another_process_are_not_handed_out_though_they_are_free() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("reserved");
        // Every port of the range reserved just now but one in twenty.
        let now = unix_seconds();
        let reserved: String = (LOWEST..ephemeral_start())
            .filter(|port| port % 20 != 0)
            .map(|port| format!("{port} {now}\n"))
            .collect();
        let before = reserved.lines().count();
        std::fs::write(&file, reserved).expect("written");
        let ports = free_ports_reserved_in(&file, 20).expect("free ports");
        assert!(
            ports.iter().all(|port| port % 20 == 0),
            "handed out a reserved port: {ports:?}"
        );
        let text = std::fs::read_to_string(&file).expect("the reservations");
        assert_eq!(
            text.lines().count(),
            before + 20,
            "the new ones reserved too"
        );
        let again = free_ports_reserved_in(&file, 20).expect("free ports");
        assert!(
            again.iter().all(|port| !ports.contains(port)),
            "{again:?} after {ports:?}"
        );
    }

    #[test]
    fn reservations_run_out_and_unreadable_lines_are_dropped() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("reserved");
        let now = unix_seconds();
        let expired = now - RESERVED_FOR.as_secs() - 1;
        std::fs::write(&file, format!("20001 {expired}\n20002 {now}\ncut sho")).expect("written");
        let reservations = Reservations::lock(&file).expect("locked");
        assert_eq!(reservations.ports(), vec![20002]);
    }
}
