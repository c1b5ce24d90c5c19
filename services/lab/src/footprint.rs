//! Bytes each store holds on disk: the owners' databases, the projection that duplicates
//! part of them, the monolith's single database, and JetStream's copy of the events. The
//! price of the async design in storage, read off the same run. And each process's memory:
//! its peak resident set over a window of the run, and what that set is made of, from /proc.

use std::collections::BTreeMap;
use std::path::Path;

use crate::topology::{Service, Storage};
use crate::up::RunningLab;

pub async fn measure(lab: &RunningLab) -> BTreeMap<String, u64> {
    let mut bytes = BTreeMap::new();
    for service in Service::ALL {
        let Some(database) = service.database() else {
            continue;
        };
        let size = match &lab.storage {
            Storage::Sqlite(_) => sqlite_size(lab, database).await,
            Storage::Postgres(_) => postgres_size(lab, database).await,
            // Not the lab's to weigh.
            Storage::Elsewhere => None,
        };
        let Some(size) = size else {
            continue;
        };
        bytes.insert(service.name().to_owned(), size);
    }
    let jetstream = directory_size(&lab.data_dir.join("nats"));
    if jetstream > 0 {
        bytes.insert("jetstream".to_owned(), jetstream);
    }
    bytes
}

/// Pages in use, as a reader sees the database now. File sizes would mislead: the WAL file
/// keeps its high-water size after checkpoints, and freed pages stay in the main file.
async fn sqlite_size(lab: &RunningLab, database: &str) -> Option<u64> {
    use sqlx::Connection as _;
    use std::str::FromStr as _;
    let url = lab.storage.database_url(database).ok()?;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
        .ok()?
        .read_only(true);
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .ok()?;
    let mut pragma = async |name: &'static str| -> Option<i64> {
        sqlx::query_scalar(name).fetch_one(&mut conn).await.ok()
    };
    let pages = pragma("PRAGMA page_count").await?;
    let free = pragma("PRAGMA freelist_count").await?;
    let page_size = pragma("PRAGMA page_size").await?;
    let _ = conn.close().await;
    u64::try_from((pages - free) * page_size).ok()
}

async fn postgres_size(lab: &RunningLab, database: &str) -> Option<u64> {
    use sqlx::Connection as _;
    let url = lab.storage.database_url(database).ok()?;
    let mut conn = sqlx::postgres::PgConnection::connect(&url).await.ok()?;
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let _ = conn.close().await;
    u64::try_from(size).ok()
}

fn directory_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_size(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |metadata| metadata.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Starts a new window for [`peak_rss_kib`]: resets each process's peak resident set
/// (`/proc/<pid>/clear_refs`, value 5). A process that cannot be reset keeps its peak since
/// start, which only overstates it.
pub fn reset_peak_rss(pids: &BTreeMap<String, u32>) {
    for pid in pids.values() {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

/// Each process's peak resident set since [`reset_peak_rss`] (VmHWM), in KiB.
pub fn peak_rss_kib(pids: &BTreeMap<String, u32>) -> BTreeMap<String, u64> {
    from_status(pids, |status| status_kib(status, "VmHWM:"))
}

/// What a resident set is made of, in KiB. A peak has no such split, so it is read at a
/// moment (just after the reference rounds): beside the peak, it says how much of it is the
/// process's own allocations and how much the pages of its binary and libraries, which are
/// shared, backed by their files, and grow with the binary's size, not with the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Resident {
    /// Pages backed by files (RssFile): code and read-only data of the binary and its
    /// libraries, nearly all of `.text` (the kernel maps a block around each page touched).
    pub file_kib: u64,
    /// Anonymous pages (RssAnon): heap, stacks, caches; what the service allocated.
    pub anon_kib: u64,
}

/// Each process's resident set now, split into file-backed and anonymous pages.
pub fn resident_kib(pids: &BTreeMap<String, u32>) -> BTreeMap<String, Resident> {
    from_status(pids, |status| {
        Some(Resident {
            file_kib: status_kib(status, "RssFile:")?,
            anon_kib: status_kib(status, "RssAnon:")?,
        })
    })
}

/// `read` of each process's /proc/<pid>/status; a process gone or a field missing is left out.
fn from_status<T>(
    pids: &BTreeMap<String, u32>,
    read: impl Fn(&str) -> Option<T>,
) -> BTreeMap<String, T> {
    pids.iter()
        .filter_map(|(name, pid)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            Some((name.clone(), read(&status)?))
        })
        .collect()
}

/// A `Field:   1234 kB` line of /proc/<pid>/status.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Orders in orders' database: the purchases a caught-up projection holds.
pub async fn orders_held(lab: &RunningLab) -> Option<u64> {
    use sqlx::Connection as _;
    let url = lab.storage.database_url("orders").ok()?;
    let count: i64 = match &lab.storage {
        Storage::Sqlite(_) => {
            let mut conn = sqlx::sqlite::SqliteConnection::connect(&url).await.ok()?;
            sqlx::query_scalar("SELECT COUNT(*) FROM orders")
                .fetch_one(&mut conn)
                .await
                .ok()?
        }
        Storage::Postgres(_) => {
            let mut conn = sqlx::postgres::PgConnection::connect(&url).await.ok()?;
            sqlx::query_scalar("SELECT COUNT(*) FROM orders")
                .fetch_one(&mut conn)
                .await
                .ok()?
        }
        Storage::Elsewhere => return None,
    };
    u64::try_from(count).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_resident_set_is_read_from_proc_status() {
        let status =
            "Name:\tusers\nVmPeak:\t  812340 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(23_456));
        assert_eq!(status_kib("Name:\tx\n", "VmHWM:"), None);
        let own = BTreeMap::from([("lab".to_owned(), std::process::id())]);
        assert!(peak_rss_kib(&own).get("lab").is_some_and(|kib| *kib > 0));
    }

    #[test]
    fn the_resident_set_is_split_into_file_backed_and_anonymous_pages() {
        let own = BTreeMap::from([("lab".to_owned(), std::process::id())]);
        let resident = resident_kib(&own)["lab"];
        // This test binary's code is mapped from its file, and the test harness allocates.
        assert!(
            resident.file_kib > 0 && resident.anon_kib > 0,
            "{resident:?}"
        );
        let status = std::fs::read_to_string("/proc/self/status").expect("own status");
        let rss = status_kib(&status, "VmRSS:").expect("VmRSS");
        // RssShmem is the third part; the two here cannot exceed the whole by more than
        // what the process mapped or freed between the two reads.
        assert!(
            resident.file_kib + resident.anon_kib <= rss + 4_096,
            "{resident:?} of {rss}"
        );
    }
}
