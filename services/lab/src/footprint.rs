//! Bytes each store holds on disk: the owners' databases, the projection that duplicates
//! part of them, the monolith's single database, and JetStream's copy of the events. The
//! price of the async design in storage, read off the same run.

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
