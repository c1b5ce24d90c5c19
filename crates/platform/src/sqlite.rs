//! Synchronous SQLite connections for the hot paths: read-only connections for short, indexed
//! reads, and the one connection a process writes through.
//!
//! Why: sqlx's SQLite driver runs every query on a worker thread of its own and hands the
//! result back, which costs about 80 us a query on this project's reference machine, where
//! the query itself costs 3-4 us through a synchronous connection. A write transaction of a
//! few statements (an order and its outbox row) costs about 300 us through sqlx and about
//! 20 us this way; the hand-off, not SQLite, was the price. So statements run inline, on the
//! calling task's thread: each is shorter than the hand-off it avoids.
//!
//! Only for short statements (a point lookup, one page of a range, a batch of a few hundred
//! rows): a long scan here would stall every task scheduled on that thread. Migrations, the
//! checkpointer and PostgreSQL stay on sqlx.
//!
//! The stores' SQL is shared with PostgreSQL; [`prepare`] adapts it. Besides numbering the
//! placeholders, it hides a bound `LIMIT` or `OFFSET` from SQLite's planner: SQLite plans with
//! the value bound there and so re-prepares the statement every time that parameter is bound,
//! which made a cached statement cost as much as a new one (a page of orders 23 us instead
//! of 7, the relay's read of its pending rows 30 us instead of 2, a tenth of orders' CPU at
//! 1,000 orders/s). Our queries walk an index in `ORDER BY` order, so the value changes no
//! plan.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::{Param, StoreError};
// A poisoned lock means a panic while a connection was taken or put back: what the mutex
// holds is whole.
use crate::sync::lock;

/// How many statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 64;

/// A small set of read-only connections to one SQLite file, opened on first use.
#[derive(Debug)]
pub(crate) struct SqliteReads {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

/// Connections kept open between reads. More may be open at once under load (one per
/// concurrent read, which the server's concurrency limit bounds); the excess is closed.
const KEEP_IDLE: usize = 8;

impl SqliteReads {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `sql` with `params` and decodes every row (see [`crate::db::Database::read_rows`],
    /// the way in). It sees the last committed state (WAL).
    pub(crate) fn read_rows<T>(
        &self,
        sql: &str,
        params: &[Param],
        decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let conn = match lock(&self.idle).pop() {
            Some(conn) => conn,
            None => self.open()?,
        };
        let outcome = fetch_all(&conn, sql, params, decode);
        let mut idle = lock(&self.idle);
        if idle.len() < KEEP_IDLE {
            idle.push(conn);
        }
        outcome
    }

    fn open(&self) -> Result<rusqlite::Connection, StoreError> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Readers in WAL mode wait only while a checkpoint resets the log; that is short.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

/// The connection this process writes through, lent to one transaction at a time (the
/// database's write turn decides whose).
#[derive(Debug)]
pub(crate) struct SqliteWriter {
    path: PathBuf,
    idle: Mutex<Option<rusqlite::Connection>>,
}

/// Longest wait between two attempts to take SQLite's write lock while another connection
/// (another process, or the pool during a migration) holds it.
const MAX_LOCK_RETRY: Duration = Duration::from_millis(20);

impl SqliteWriter {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(None),
        }
    }

    /// Starts a transaction holding the write lock (`BEGIN IMMEDIATE`). The caller must hold
    /// the write turn. While another connection holds the lock this waits asynchronously,
    /// never in SQLite's busy handler (which would sleep on the calling thread), for at
    /// most `timeout`.
    pub(crate) async fn begin(self: &Arc<Self>, timeout: Duration) -> Result<SqliteTx, StoreError> {
        let conn = match lock(&self.idle).take() {
            Some(conn) => conn,
            None => self.open()?,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wait = Duration::from_millis(1);
        loop {
            match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => {
                    return Ok(SqliteTx {
                        conn: Some(conn),
                        writer: Arc::clone(self),
                    });
                }
                Err(error) if is_busy(&error) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_LOCK_RETRY);
                }
                Err(error) => {
                    *lock(&self.idle) = Some(conn);
                    return Err(error.into());
                }
            }
        }
    }

    fn open(&self) -> Result<rusqlite::Connection, StoreError> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The same settings as the pool's connections (see `Database::connect`); the lock is
        // waited for in `begin`, so SQLite's own busy handler never sleeps here. Temporary
        // storage in memory: a multi-row statement inside a transaction keeps a statement
        // journal (the pages it changed, to undo it alone should it fail), by default in a
        // temporary file, and writing that file was a tenth of a projection's catch-up
        // (issue 25's profile); it holds one statement's pages, a few hundred KiB at most.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0; PRAGMA temp_store = MEMORY;",
        )?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

/// An open write transaction on the writer's connection. Dropping it without committing rolls
/// back; either way the connection goes back to the writer.
#[derive(Debug)]
pub(crate) struct SqliteTx {
    conn: Option<rusqlite::Connection>,
    writer: Arc<SqliteWriter>,
}

impl SqliteTx {
    fn conn(&self) -> &rusqlite::Connection {
        self.conn
            .as_ref()
            .expect("the connection is only taken when the transaction ends")
    }

    pub(crate) fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, StoreError> {
        let mut statement = prepare(self.conn(), sql)?;
        let changed = statement.execute(rusqlite::params_from_iter(params))?;
        Ok(changed as u64)
    }

    pub(crate) fn fetch_all<T>(
        &mut self,
        sql: &str,
        params: &[Param],
        decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        fetch_all(self.conn(), sql, params, decode)
    }

    pub(crate) fn commit(self) -> Result<(), StoreError> {
        // On failure the transaction is still open; dropping `self` rolls it back.
        self.conn().execute_batch("COMMIT")?;
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            // A connection that cannot roll back is not lent again; the next transaction
            // opens a fresh one.
            return;
        }
        *lock(&self.writer.idle) = Some(conn);
    }
}

fn fetch_all<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Param],
    decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = prepare(conn, sql)?;
    let mut rows = statement.query(rusqlite::params_from_iter(params))?;
    let mut decoded = Vec::new();
    while let Some(row) = rows.next()? {
        decoded.push(decode(row)?);
    }
    Ok(decoded)
}

/// Prepares (or takes from the connection's cache) a statement written with the `$n`
/// placeholders every store uses. SQLite reads `$1` as a *named* parameter, numbered by
/// first appearance, so `... $2 ... $1` would bind in the wrong order; `?1` is numbered by
/// its digits, which is what `$1` means to sqlx and PostgreSQL.
fn prepare<'c>(
    conn: &'c rusqlite::Connection,
    sql: &str,
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    conn.prepare_cached(&numbered_placeholders(sql))
}

/// `$n` to `?n`, outside string literals; right after `LIMIT` or `OFFSET`, `(?n + 0)`, an
/// expression the planner does not look into (see the module's doc).
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut in_literal = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_literal = !in_literal;
                out.push(c);
            }
            '$' if !in_literal && chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut number = String::new();
                while let Some(digit) = chars.next_if(char::is_ascii_digit) {
                    number.push(digit);
                }
                if follows_row_count_keyword(&out) {
                    out.push_str("(?");
                    out.push_str(&number);
                    out.push_str(" + 0)");
                } else {
                    out.push('?');
                    out.push_str(&number);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether `sql` ends with the keyword `LIMIT` or `OFFSET` (and maybe blanks).
fn follows_row_count_keyword(sql: &str) -> bool {
    let sql = sql.trim_end();
    ["LIMIT", "OFFSET"].iter().any(|keyword| {
        sql.len() >= keyword.len()
            && sql.is_char_boundary(sql.len() - keyword.len())
            && sql[sql.len() - keyword.len()..].eq_ignore_ascii_case(keyword)
            && !sql[..sql.len() - keyword.len()]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            Self::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Self::Integer(integer) => ToSqlOutput::Owned(Value::Integer(*integer)),
            Self::Blob(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
            Self::Bool(flag) => ToSqlOutput::Owned(Value::Integer(i64::from(*flag))),
            Self::NullText | Self::NullInteger => ToSqlOutput::Owned(Value::Null),
        })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        if is_busy(&error)
            || matches!(
                error.sqlite_error_code(),
                Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::SystemIoFailure)
            )
        {
            StoreError::SqliteUnavailable(error)
        } else {
            StoreError::SqliteFailed(error)
        }
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Whether a synchronous statement failed on a UNIQUE or PRIMARY KEY constraint.
pub(crate) fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// Reading a row's columns by name, the same way from sqlx's rows and rusqlite's, so a
/// store decodes a row with one function whichever path read it.
pub trait Columns {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn optional_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn integer(&self, column: &str) -> Result<i64, StoreError>;
    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn blob(&self, column: &str) -> Result<Vec<u8>, StoreError>;
}

impl Columns for sqlx::any::AnyRow {
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }

    fn optional_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }

    fn integer(&self, column: &str) -> Result<i64, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }

    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }

    fn blob(&self, column: &str) -> Result<Vec<u8>, StoreError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.get(column)?)
    }

    fn optional_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(column)?)
    }

    fn integer(&self, column: &str) -> Result<i64, StoreError> {
        Ok(self.get(column)?)
    }

    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.get(column)?)
    }

    fn blob(&self, column: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(column)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_by_their_digits() {
        assert_eq!(
            numbered_placeholders("SELECT '$1' WHERE a < $2 OR (a = $2 AND b = $10) AND c = $1"),
            "SELECT '$1' WHERE a < ?2 OR (a = ?2 AND b = ?10) AND c = ?1"
        );
        assert_eq!(
            numbered_placeholders(
                "SELECT 'LIMIT $1' FROM t WHERE a > $1 ORDER BY a limit\n  $12 OFFSET $3"
            ),
            "SELECT 'LIMIT $1' FROM t WHERE a > ?1 ORDER BY a limit\n  (?12 + 0) OFFSET (?3 + 0)"
        );
        assert_eq!(
            numbered_placeholders("SELECT my_limit $1, xoffset $2"),
            "SELECT my_limit ?1, xoffset ?2",
            "only the keywords themselves"
        );
    }

    #[test]
    fn a_cached_page_read_is_not_prepared_again_for_each_limit() {
        use rusqlite::StatementStatus::RePrepare;
        let (_dir, path) = database_with_rows();
        let conn = rusqlite::Connection::open(&path).expect("open");
        let sql = "SELECT id FROM t WHERE id > $1 ORDER BY id LIMIT $2";
        let read = |statement: &mut rusqlite::CachedStatement<'_>, after: i64| {
            statement
                .query_map([after, 2], |row| row.get::<_, i64>(0))
                .expect("a read")
                .collect::<Result<Vec<_>, _>>()
                .expect("rows")
        };
        for after in 0..10 {
            let mut statement = prepare(&conn, sql).expect("prepare");
            let expected: Vec<i64> = (after + 1..=3).take(2).collect();
            assert_eq!(read(&mut statement, after), expected);
            assert_eq!(statement.get_status(RePrepare), 0, "read {after}");
        }
        // Why the rewrite exists: bound as written, SQLite plans anew at every read. Should
        // this start failing, SQLite stopped doing that and the rewrite can go.
        let mut plain = conn
            .prepare_cached(&sql.replace('$', "?"))
            .expect("prepare");
        read(&mut plain, 0);
        read(&mut plain, 1);
        assert!(plain.get_status(RePrepare) > 0);
    }

    fn database_with_rows() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("t.db");
        let writer = rusqlite::Connection::open(&path).expect("open");
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);
                 INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, NULL);",
            )
            .expect("a table");
        (dir, path)
    }

    #[test]
    fn reads_see_committed_rows_and_bind_out_of_order_placeholders() {
        let (_dir, path) = database_with_rows();
        let reads = SqliteReads::new(path);
        let names = reads
            .read_rows(
                "SELECT name FROM t WHERE id > $2 AND id < $1 ORDER BY id",
                &[Param::Integer(3), Param::Integer(0)],
                |row| row.optional_text("name"),
            )
            .expect("a read");
        assert_eq!(names, vec![Some("one".to_owned()), Some("two".to_owned())]);
        let refused = reads.read_rows("DELETE FROM t RETURNING id", &[], |row| row.integer("id"));
        assert!(
            matches!(refused, Err(StoreError::SqliteFailed(_))),
            "read-only: {refused:?}"
        );
    }

    #[tokio::test]
    async fn a_transaction_commits_or_rolls_back_and_lends_its_connection_again() {
        let (_dir, path) = database_with_rows();
        let writer = Arc::new(SqliteWriter::new(path.clone()));
        let reads = SqliteReads::new(path);
        let names = || {
            reads
                .read_rows("SELECT name FROM t ORDER BY id", &[], |row| {
                    row.optional_text("name")
                })
                .expect("a read")
                .len()
        };

        let mut tx = writer.begin(Duration::from_secs(1)).await.expect("begin");
        let inserted = tx
            .execute(
                "INSERT INTO t (id, name) VALUES ($1, $2)",
                &[Param::Integer(4), Param::NullText],
            )
            .expect("insert");
        assert_eq!(inserted, 1);
        drop(tx);
        assert_eq!(names(), 3, "dropped without a commit: rolled back");

        let mut tx = writer
            .begin(Duration::from_secs(1))
            .await
            .expect("begin again");
        tx.execute(
            "INSERT INTO t (id, name) VALUES ($1, $2)",
            &[Param::Integer(4), Param::Text("four".into())],
        )
        .expect("insert");
        let duplicate = tx
            .execute(
                "INSERT INTO t (id, name) VALUES ($1, $2)",
                &[Param::Integer(4), Param::Text("again".into())],
            )
            .expect_err("the key is taken");
        assert!(
            matches!(&duplicate, StoreError::SqliteFailed(error) if is_unique_violation(error)),
            "{duplicate:?}"
        );
        tx.commit().expect("commit");
        assert_eq!(names(), 4, "committed");
    }

    #[tokio::test]
    async fn a_lock_held_elsewhere_is_waited_for_and_then_reported_unavailable() {
        let (_dir, path) = database_with_rows();
        let other = rusqlite::Connection::open(&path).expect("another connection");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("hold the lock");
        let writer = Arc::new(SqliteWriter::new(path));
        let refused = writer.begin(Duration::from_millis(30)).await;
        assert!(
            matches!(refused, Err(StoreError::SqliteUnavailable(_))),
            "{refused:?}"
        );
        other.execute_batch("COMMIT").expect("release the lock");
        writer
            .begin(Duration::from_millis(30))
            .await
            .expect("the lock is free again")
            .commit()
            .expect("commit");
    }
}
