//! Connecting to a service's own database, SQLite or PostgreSQL chosen by URL, and running
//! its embedded migrations. Every query is written once, with `$n` placeholders, which both
//! backends accept: on PostgreSQL it goes through sqlx's `Any` driver, on an SQLite file the
//! hot reads and every write transaction go through a synchronous connection instead (see
//! [`crate::sqlite`]), behind the same [`Database::read_rows`] and [`WriteTx`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyArguments;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor as _, Transaction};

pub use crate::sqlite::Columns;

/// The database products the services support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }
}

/// One schema owner's migrations, one set per backend, embedded with `sqlx::migrate!`.
///
/// Each owner records what it applied in a table of its own (`_migrations_<name>`), so
/// independent owners (a service's tables, the outbox's, later the event consumer's) can
/// share one database, as they do in the monolith, without their version numbers colliding.
#[derive(Debug)]
pub struct Migrations {
    pub name: &'static str,
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

/// Failures while opening a database; they stop the process at start, so they carry context.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database URL must start with sqlite:, postgres:// or postgresql://")]
    UnsupportedUrl,
    #[error("cannot create the directory {path} for the SQLite database")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply the database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Failures of a query at run time, classified by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: the pool timed out, the server went away, SQLite stayed locked.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A bug or a broken schema: retrying will not help.
    #[error("the database operation failed")]
    Failed(#[source] sqlx::Error),
    /// A stored value that the code cannot read back, e.g. an unknown status.
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// A synchronous SQLite statement (see [`crate::sqlite`]) found the database locked or
    /// could not open it: worth retrying.
    #[error("the database is unavailable")]
    SqliteUnavailable(#[source] rusqlite::Error),
    /// A synchronous SQLite statement failed otherwise.
    #[error("the database operation failed")]
    SqliteFailed(#[source] rusqlite::Error),
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::SqliteUnavailable(_))
    }

    /// Whether a write broke a UNIQUE (or primary key) constraint, which a store turns into
    /// a domain answer such as "email already registered".
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Self::Failed(sqlx::Error::Database(db_error)) => db_error.is_unique_violation(),
            Self::SqliteFailed(error) => crate::sqlite::is_unique_violation(error),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            Self::Unavailable(error)
        } else {
            Self::Failed(error)
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db_error) => matches!(
            db_error.code().as_deref(),
            // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
            Some("5" | "6" | "261" | "262" | "517")
            // PostgreSQL: admin/crash shutdown, cannot connect now, too many connections,
            // serialization failure and deadlock (both safe to retry).
            | Some("57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01")
        ),
        _ => false,
    }
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// Longest a query waits for a free connection before failing as unavailable.
    pub acquire_timeout: Duration,
}

impl DatabaseConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A connection pool plus which backend it talks to.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time, and a writer that finds the lock taken sleeps in
    /// SQLite's busy handler for up to tens of milliseconds before trying again. Writers in
    /// this process take turns here instead, woken the moment the previous one finishes.
    write_turn: Option<Arc<tokio::sync::Mutex<()>>>,
    acquire_timeout: Duration,
    /// Stops the SQLite checkpointer when the last clone goes.
    _checkpointer: Option<Arc<tokio_util::sync::DropGuard>>,
    /// Synchronous connections for an SQLite file (not `:memory:`, which a second connection
    /// would not share): reads, and the one connection every write transaction uses.
    sqlite: Option<SqliteFile>,
}

#[derive(Debug, Clone)]
struct SqliteFile {
    reads: Arc<crate::sqlite::SqliteReads>,
    writer: Arc<crate::sqlite::SqliteWriter>,
}

/// A value bound to a query's `$n` placeholder, in order. NULLs carry their type, which
/// PostgreSQL needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Integer(i64),
    Blob(Vec<u8>),
    Bool(bool),
    NullText,
    NullInteger,
}

impl From<String> for Param {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for Param {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<i64> for Param {
    fn from(integer: i64) -> Self {
        Self::Integer(integer)
    }
}

impl From<i32> for Param {
    fn from(integer: i32) -> Self {
        Self::Integer(i64::from(integer))
    }
}

impl From<bool> for Param {
    fn from(flag: bool) -> Self {
        Self::Bool(flag)
    }
}

impl From<Vec<u8>> for Param {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Blob(bytes)
    }
}

impl From<Option<i64>> for Param {
    fn from(integer: Option<i64>) -> Self {
        integer.map_or(Self::NullInteger, Self::Integer)
    }
}

impl From<Option<&str>> for Param {
    fn from(text: Option<&str>) -> Self {
        text.map_or(Self::NullText, Self::from)
    }
}

/// `sql` with `params` bound, for the sqlx path.
fn bound<'q>(sql: &str, params: &[Param]) -> sqlx::query::Query<'q, Any, AnyArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    for param in params {
        query = match param {
            Param::Text(text) => query.bind(text.clone()),
            Param::Integer(integer) => query.bind(*integer),
            Param::Blob(bytes) => query.bind(bytes.clone()),
            Param::Bool(flag) => query.bind(*flag),
            Param::NullText => query.bind(None::<String>),
            Param::NullInteger => query.bind(None::<i64>),
        };
    }
    query
}

/// A write transaction (see [`Database::begin_write`]). Statements run with
/// [`WriteTx::execute`] and [`WriteTx::fetch_all`]; dropping it without committing rolls back.
pub struct WriteTx {
    tx: Tx,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The transaction's span, from asking for the writer to the commit (or the rollback when
    /// dropped): in a request's trace, the time its write held the database.
    _span: tracing::Span,
}

enum Tx {
    Sqlx(Transaction<'static, Any>),
    Sqlite(crate::sqlite::SqliteTx),
}

impl WriteTx {
    /// Runs a statement; returns how many rows it changed.
    pub async fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, StoreError> {
        match &mut self.tx {
            Tx::Sqlite(tx) => tx.execute(sql, params),
            Tx::Sqlx(tx) => Ok(bound(sql, params).execute(&mut **tx).await?.rows_affected()),
        }
    }

    /// Runs a query inside the transaction (it sees the transaction's own writes) and
    /// decodes every row.
    pub async fn fetch_all<T>(
        &mut self,
        sql: &str,
        params: &[Param],
        decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        match &mut self.tx {
            Tx::Sqlite(tx) => tx.fetch_all(sql, params, decode),
            Tx::Sqlx(tx) => {
                let rows = bound(sql, params).fetch_all(&mut **tx).await?;
                rows.iter().map(|row| decode(row)).collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub async fn fetch_optional<T>(
        &mut self,
        sql: &str,
        params: &[Param],
        decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self
            .fetch_all(sql, params, decode)
            .await?
            .into_iter()
            .next())
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self.tx {
            Tx::Sqlite(tx) => tx.commit(),
            Tx::Sqlx(tx) => Ok(tx.commit().await?),
        }
    }
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

impl Database {
    /// Opens the pool. An SQLite file and its directory are created when absent.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbError> {
        install_default_drivers();
        let backend = Backend::of_url(&config.url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(&config.url)?,
            Backend::Postgres => config.url.clone(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the single writer. synchronous=NORMAL in WAL
                        // mode survives a process crash (what the fault demos do); only an OS
                        // crash or power loss can lose the last commits.
                        // Automatic checkpoints run inside whichever commit crosses the
                        // threshold and fsync the database file there, a stall of many
                        // milliseconds for that one request; a background task checkpoints
                        // instead (see `checkpoint_in_background`).
                        // Pages of 1 KiB, set before anything else touches a new file (an
                        // existing database keeps its size): every commit writes each page it
                        // changes to the WAL whole, and a write here changes a handful of
                        // pages (table, indexes, outbox) for a row of a few hundred bytes.
                        // With 4 KiB pages orders wrote about 40 KB to disk per order, enough
                        // writeback at 1,000 orders/s to push JetStream's fsyncs on the same
                        // disk from about 1 ms at p99 to several (measured in issue 6).
                        conn.execute("PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(DbError::Connect)?;
        let write_turn: Option<Arc<tokio::sync::Mutex<()>>> =
            (backend == Backend::Sqlite).then(Arc::default);
        let checkpointer = write_turn
            .clone()
            .map(|turn| Arc::new(checkpoint_in_background(pool.clone(), turn)));
        let sqlite = (backend == Backend::Sqlite)
            .then(|| sqlite_file(&url))
            .flatten()
            .map(|path| SqliteFile {
                reads: Arc::new(crate::sqlite::SqliteReads::new(path.clone())),
                writer: Arc::new(crate::sqlite::SqliteWriter::new(path)),
            });
        Ok(Self {
            pool,
            backend,
            _checkpointer: checkpointer,
            sqlite,
            write_turn,
            acquire_timeout: config.acquire_timeout,
        })
    }

    /// Applies each owner's pending migrations, in the order given.
    pub async fn migrate(
        &self,
        owners: impl IntoIterator<Item = Migrations>,
    ) -> Result<(), DbError> {
        for owner in owners {
            let mut migrator = match self.backend {
                Backend::Sqlite => owner.sqlite,
                Backend::Postgres => owner.postgres,
            };
            migrator.dangerous_set_table_name(format!("_migrations_{}", owner.name));
            migrator.run(&self.pool).await.map_err(DbError::Migrate)?;
        }
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs a short, indexed read (a point lookup, one page of a range) and decodes every
    /// row. On an SQLite file it runs inline through a synchronous connection (see
    /// [`crate::sqlite`]); otherwise through the pool. `sql` uses `$n` placeholders,
    /// bound from `params` in order.
    pub async fn read_rows<T>(
        &self,
        sql: &str,
        params: &[Param],
        decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        if let Some(sqlite) = &self.sqlite {
            return sqlite.reads.read_rows(sql, params, decode);
        }
        let rows = bound(sql, params).fetch_all(&self.pool).await?;
        rows.iter().map(|row| decode(row)).collect()
    }

    /// The first row of a [`Database::read_rows`] query, if any (a lookup by key).
    pub async fn read_optional<T>(
        &self,
        sql: &str,
        params: &[Param],
        decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self
            .read_rows(sql, params, decode)
            .await?
            .into_iter()
            .next())
    }

    /// Starts a transaction that will write. On SQLite it first waits for this process's
    /// write turn (bounded by the acquire timeout), then takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes can fail with
    /// SQLITE_BUSY at once instead of waiting its turn. On an SQLite file the transaction
    /// runs on the synchronous write connection.
    pub async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let system = match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        };
        // Only within something traced: a transaction alone (the relay marking rows) starts
        // no trace.
        let span = crate::telemetry::child_span(|| {
            tracing::info_span!(
                "transaction",
                otel.name = %format!("{system} transaction"),
                otel.kind = "client",
                db.system.name = system,
                db.operation.name = "transaction",
            )
        });
        let turn = match &self.write_turn {
            Some(turn) => Some(
                tokio::time::timeout(self.acquire_timeout, turn.clone().lock_owned())
                    .await
                    .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))?,
            ),
            None => None,
        };
        let tx = match (&self.sqlite, self.backend) {
            (Some(sqlite), _) => Tx::Sqlite(sqlite.writer.begin(self.acquire_timeout).await?),
            (None, Backend::Sqlite) => Tx::Sqlx(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            (None, Backend::Postgres) => Tx::Sqlx(self.pool.begin().await?),
        };
        Ok(WriteTx {
            tx,
            _turn: turn,
            _span: span,
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How often the SQLite write-ahead log is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints the WAL off the request path, until the pool closes or the guard returned
/// is dropped, so no commit pays for the checkpoint's fsyncs.
///
/// A PASSIVE checkpoint never blocks anyone, but under steady writes it never catches up
/// with the end of the log either, so SQLite never starts the log over and it grows without
/// bound (orders' reached 630 MB in one `lab bench` run; every block it allocates adds to
/// the writeback that stalls JetStream's fsyncs on the same disk). So once the log passes
/// [`RESTART_AFTER_FRAMES`], one RESTART checkpoint runs holding the write turn: the PASSIVE
/// one just before left it only the last moments to copy, so writers wait a few
/// milliseconds, once every few seconds at 1,000 writes/s, and the next commit writes from
/// the start of the log again. Holding writers off for every checkpoint instead cost every
/// fourth of a second's writes that wait: measured, it tripled the freshness lag's p99.
fn checkpoint_in_background(
    pool: AnyPool,
    write_turn: Arc<tokio::sync::Mutex<()>>,
) -> tokio_util::sync::DropGuard {
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(CHECKPOINT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stopped.cancelled() => break,
            }
            if pool.is_closed() {
                break;
            }
            let checkpointed = async {
                let log_frames = checkpoint(&pool, "PASSIVE").await?;
                if log_frames >= RESTART_AFTER_FRAMES {
                    let _turn = write_turn.lock().await;
                    checkpoint(&pool, "RESTART").await?;
                }
                Ok::<_, sqlx::Error>(())
            };
            if let Err(error) = checkpointed.await {
                if pool.is_closed() {
                    break;
                }
                tracing::debug!(%error, "WAL checkpoint failed; retrying on the next round");
            }
        }
    });
    stop.drop_guard()
}

/// Frames in the WAL (a page each, 1 KiB here) past which the log is started over.
const RESTART_AFTER_FRAMES: i64 = 32_768;

/// One checkpoint in `mode`; returns how many frames the log holds. It waits for readers
/// still on the older part of the log for at most 100 ms (a reader takes microseconds; a
/// whole-table read at start-up is not worth holding writers off for), then does what it
/// can; a later round finishes the job.
async fn checkpoint(pool: &AnyPool, mode: &str) -> Result<i64, sqlx::Error> {
    use sqlx::Row as _;
    let mut conn = pool.acquire().await?;
    conn.execute("PRAGMA busy_timeout = 100").await?;
    // Only the two mode names above are interpolated.
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    let checkpointed = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await;
    conn.execute("PRAGMA busy_timeout = 5000").await?;
    checkpointed?.try_get::<i64, _>(1)
}

/// The path and the query string of an SQLite URL.
fn sqlite_path_and_query(url: &str) -> (&str, &str) {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split_once('?').unwrap_or((rest, ""))
}

/// The file behind an SQLite URL, or None for an in-memory database.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let (path, query) = sqlite_path_and_query(url);
    let in_memory = path.is_empty() || path == ":memory:" || query.contains("mode=memory");
    (!in_memory).then(|| PathBuf::from(path))
}

/// Makes sure the SQLite file can be created: its directory exists and the URL asks for
/// read-write-create mode unless the caller chose a mode.
fn prepare_sqlite_url(url: &str) -> Result<String, DbError> {
    let (path, query) = sqlite_path_and_query(url);
    if path.is_empty() || path == ":memory:" {
        return Ok(url.to_owned());
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    if query.split('&').any(|pair| pair.starts_with("mode=")) {
        Ok(url.to_owned())
    } else if query.is_empty() {
        Ok(format!("sqlite://{path}?mode=rwc"))
    } else {
        Ok(format!("sqlite://{path}?{query}&mode=rwc"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_recognised_by_scheme() {
        assert_eq!(
            Backend::of_url("sqlite://data/x.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::of_url("postgres://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::of_url("postgresql://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert!(Backend::of_url("mysql://u@h/db").is_err());
    }

    #[test]
    fn sqlite_urls_gain_create_mode_unless_one_is_given() {
        let dir = std::env::temp_dir().join(format!("platform-db-test-{}", uuid::Uuid::now_v7()));
        let path = dir.join("nested/x.db");
        let url = format!("sqlite://{}", path.display());
        assert_eq!(
            prepare_sqlite_url(&url).ok(),
            Some(format!("{url}?mode=rwc"))
        );
        assert!(path.parent().is_some_and(Path::exists));
        let with_mode = format!("{url}?mode=ro");
        assert_eq!(prepare_sqlite_url(&with_mode).ok(), Some(with_mode));
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Reads a stored entity version (BIGINT) back as the `u64` the API speaks.
pub fn version_from_db(stored: i64) -> Result<u64, StoreError> {
    u64::try_from(stored).map_err(|_| StoreError::Corrupt(format!("negative version {stored}")))
}

/// Outcome of comparing a caller's `expected_version` with the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionConflict {
    pub expected: u64,
    pub actual: u64,
}

/// Optimistic concurrency: a write that names the version it was based on applies only to
/// that version; a write that names none applies to whatever is stored.
pub fn check_version(expected: Option<u64>, actual: u64) -> Result<(), VersionConflict> {
    match expected {
        Some(expected) if expected != actual => Err(VersionConflict { expected, actual }),
        _ => Ok(()),
    }
}

/// Writes an API version into a BIGINT column.
pub fn stored_version(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt(format!("version {version} overflows")))
}
