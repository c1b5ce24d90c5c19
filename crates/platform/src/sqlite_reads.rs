//! Synchronous, read-only SQLite connections for the hot read paths. sqlx's SQLite driver
//! runs every query on a worker thread of its own and hands the result back, which costs
//! about 80 us a query on this project's reference machine; an indexed read through a
//! synchronous connection costs 3-4 us. Such a read is shorter than the hand-off it avoids,
//! so it runs inline, on the calling task's thread.
//!
//! Only for short, indexed reads (a point lookup, one page of a range): a long scan here
//! would stall every task scheduled on that thread. Writes, migrations and PostgreSQL stay
//! on sqlx.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::db::{Param, StoreError};

/// A small set of read-only connections to one SQLite file, opened on first use.
#[derive(Debug)]
pub struct SqliteReads {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

/// Connections kept open between reads. More may be open at once under load (one per
/// concurrent read, which the server's concurrency limit bounds); the excess is closed.
const KEEP_IDLE: usize = 8;

/// How many statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 32;

impl SqliteReads {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `sql` with `params` and decodes every row (see [`crate::db::Database::read_rows`],
    /// the way in).
    pub(crate) fn read_rows<T>(
        &self,
        sql: &str,
        params: &[Param],
        decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.read(|conn| {
            let mut statement = prepare(conn, sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(params))?;
            let mut decoded = Vec::new();
            while let Some(row) = rows.next()? {
                decoded.push(decode(row)?);
            }
            Ok(decoded)
        })
    }

    /// Runs `read` on a read-only connection. It sees the last committed state (WAL).
    fn read<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.lock().pop() {
            Some(conn) => conn,
            None => self.open()?,
        };
        let outcome = read(&conn);
        let mut idle = self.lock();
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
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    // A poisoned lock means a panic while a Vec of connections was pushed or popped: the
    // Vec itself is whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<rusqlite::Connection>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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

/// `$n` to `?n`, outside string literals.
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_literal = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_literal = !in_literal;
                out.push(c);
            }
            '$' if !in_literal && chars.peek().is_some_and(char::is_ascii_digit) => out.push('?'),
            _ => out.push(c),
        }
    }
    out
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Text(text) => text.to_sql(),
            Self::Integer(integer) => integer.to_sql(),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        classify(error)
    }
}

/// Reading a row's columns by name, the same way from sqlx's rows and rusqlite's, so a
/// store decodes a row with one function whichever path read it.
pub trait Columns {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn optional_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn integer(&self, column: &str) -> Result<i64, StoreError>;
    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StoreError>;
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
}

fn classify(error: rusqlite::Error) -> StoreError {
    let transient = matches!(
        error.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::SystemIoFailure
        )
    );
    if transient {
        StoreError::ReadUnavailable(error)
    } else {
        StoreError::ReadFailed(error)
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
    }

    #[test]
    fn reads_see_committed_rows_and_bind_out_of_order_placeholders() {
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
            matches!(refused, Err(StoreError::ReadFailed(_))),
            "read-only: {refused:?}"
        );
    }
}
