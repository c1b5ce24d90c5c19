//! The consumer's own tables: applied versions, positions and dead letters. Every write here
//! happens in the transaction that applies the batch, so they move with the projection.

use std::collections::HashMap;

use platform::db::{Database, Param, StoreError, WriteTx, version_from_db};
use sqlx::Row as _;

/// An aggregate, as (aggregate_type, aggregate_id).
pub(crate) type AggregateKey = (String, String);

/// Ids per `IN (...)` list and rows per multi-row insert: far below every backend's limit on
/// bound parameters, large enough that a batch takes few statements.
const CHUNK: usize = 200;

/// The highest applied version of each of `keys` that this consumer has seen.
pub(crate) async fn load_versions(
    tx: &mut WriteTx,
    consumer: &str,
    keys: &[&AggregateKey],
) -> Result<HashMap<AggregateKey, u64>, StoreError> {
    let mut versions = HashMap::with_capacity(keys.len());
    // Looked up per aggregate type so the whole primary key serves the query: with the type
    // left out, SQLite (key: consumer, type, id) can only use the key's first column and scans
    // every version this consumer ever stored, once per batch. PostgreSQL's key is led by the
    // id instead (see its migration 2).
    let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
    for (aggregate_type, aggregate_id) in keys {
        by_type
            .entry(aggregate_type.as_str())
            .or_default()
            .push(aggregate_id.as_str());
    }
    for (aggregate_type, ids) in by_type {
        for chunk in ids.chunks(CHUNK) {
            let placeholders = numbered(3, chunk.len());
            // Only numbered placeholders are interpolated; the values are bound.
            let sql = format!(
                "SELECT aggregate_type, aggregate_id, version FROM consumer_versions
                 WHERE consumer = $1 AND aggregate_type = $2 AND aggregate_id IN ({placeholders})"
            );
            let mut params: Vec<Param> = Vec::with_capacity(chunk.len() + 2);
            params.push(consumer.into());
            params.push(aggregate_type.into());
            params.extend(chunk.iter().map(|id| Param::from(*id)));
            let rows = tx
                .fetch_all(&sql, &params, |row| {
                    Ok((
                        (row.text("aggregate_type")?, row.text("aggregate_id")?),
                        version_from_db(row.integer("version")?)?,
                    ))
                })
                .await?;
            versions.extend(rows);
        }
    }
    Ok(versions)
}

/// Raises the stored versions to these; never lowers one.
pub(crate) async fn store_versions(
    tx: &mut WriteTx,
    consumer: &str,
    versions: &HashMap<AggregateKey, u64>,
) -> Result<(), StoreError> {
    let rows: Vec<_> = versions.iter().collect();
    for chunk in rows.chunks(CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|row_idx| {
                let first = row_idx * 4 + 1;
                format!("(${first}, ${}, ${}, ${})", first + 1, first + 2, first + 3)
            })
            .collect();
        let sql = format!(
            "INSERT INTO consumer_versions (consumer, aggregate_type, aggregate_id, version)
             VALUES {}
             ON CONFLICT (consumer, aggregate_type, aggregate_id)
             DO UPDATE SET version = excluded.version WHERE excluded.version > consumer_versions.version",
            values.join(", ")
        );
        let mut params: Vec<Param> = Vec::with_capacity(chunk.len() * 4);
        for ((aggregate_type, aggregate_id), version) in chunk {
            params.push(consumer.into());
            params.push(aggregate_type.as_str().into());
            params.push(aggregate_id.as_str().into());
            params.push(platform::db::stored_version(**version)?.into());
        }
        tx.execute(&sql, &params).await?;
    }
    Ok(())
}

fn numbered(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a consumer stands on its stream, and what it has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// Stream sequence of the last event handled (applied, skipped or dead-lettered).
    pub stream_sequence: u64,
    /// When the last event handled happened at its producer (µs since the epoch; 0: none yet).
    pub last_event_at_micros: i64,
    /// When the last batch committed here (µs since the epoch; 0: none yet).
    pub applied_at_micros: i64,
    /// Events the stream held for this consumer beyond the last one handled, as of that
    /// event's delivery: the lag. Not stored; 0 after a restart until the first batch.
    pub pending: u64,
    pub n_applied: u64,
    pub n_skipped: u64,
    pub n_gaps: u64,
    pub n_dead_lettered: u64,
}

/// What one batch did, added to the stored counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BatchCounts {
    pub last_sequence: u64,
    pub last_event_at_micros: i64,
    pub n_applied: u64,
    pub n_skipped: u64,
    pub n_gaps: u64,
    pub n_dead_lettered: u64,
}

pub(crate) async fn advance_position(
    tx: &mut WriteTx,
    consumer: &str,
    stream: &str,
    counts: &BatchCounts,
    applied_at_micros: i64,
) -> Result<(), StoreError> {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO consumer_positions
           (consumer, stream, stream_sequence, last_event_at, applied_at, n_applied, n_skipped, n_gaps, n_dead_lettered)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (consumer, stream) DO UPDATE SET
           stream_sequence = excluded.stream_sequence,
           last_event_at = CASE WHEN excluded.last_event_at > consumer_positions.last_event_at
                                THEN excluded.last_event_at ELSE consumer_positions.last_event_at END,
           applied_at = excluded.applied_at,
           n_applied = consumer_positions.n_applied + excluded.n_applied,
           n_skipped = consumer_positions.n_skipped + excluded.n_skipped,
           n_gaps = consumer_positions.n_gaps + excluded.n_gaps,
           n_dead_lettered = consumer_positions.n_dead_lettered + excluded.n_dead_lettered",
        &[
            consumer.into(),
            stream.into(),
            count(counts.last_sequence).into(),
            counts.last_event_at_micros.into(),
            applied_at_micros.into(),
            count(counts.n_applied).into(),
            count(counts.n_skipped).into(),
            count(counts.n_gaps).into(),
            count(counts.n_dead_lettered).into(),
        ],
    )
    .await?;
    Ok(())
}

/// The stored position of `consumer` on `stream`, if it has handled anything yet.
pub async fn load_position(
    db: &Database,
    consumer: &str,
    stream: &str,
) -> Result<Option<Position>, StoreError> {
    let row = sqlx::query(
        "SELECT stream_sequence, last_event_at, applied_at, n_applied, n_skipped, n_gaps, n_dead_lettered
         FROM consumer_positions WHERE consumer = $1 AND stream = $2",
    )
    .bind(consumer)
    .bind(stream)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let count = |column: &str| -> Result<u64, StoreError> {
        let value: i64 = row.try_get(column)?;
        u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} is negative")))
    };
    Ok(Some(Position {
        stream_sequence: count("stream_sequence")?,
        last_event_at_micros: row.try_get("last_event_at")?,
        applied_at_micros: row.try_get("applied_at")?,
        pending: 0,
        n_applied: count("n_applied")?,
        n_skipped: count("n_skipped")?,
        n_gaps: count("n_gaps")?,
        n_dead_lettered: count("n_dead_lettered")?,
    }))
}

/// An event that could not be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub stream: String,
    pub stream_sequence: u64,
    pub subject: String,
    /// Absent when the envelope could not be decoded.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub reason: String,
    /// The message exactly as it came off the stream, for inspection or replay.
    pub payload: Vec<u8>,
}

pub(crate) async fn insert_dead_letter(
    tx: &mut WriteTx,
    consumer: &str,
    letter: &DeadLetter,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO consumer_dead_letters
           (consumer, stream, stream_sequence, subject, event_id, event_type, reason, payload, failed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            consumer.into(),
            letter.stream.as_str().into(),
            i64::try_from(letter.stream_sequence)
                .unwrap_or(i64::MAX)
                .into(),
            letter.subject.as_str().into(),
            letter.event_id.as_deref().into(),
            letter.event_type.as_deref().into(),
            letter.reason.as_str().into(),
            letter.payload.clone().into(),
            platform::time::now_micros().into(),
        ],
    )
    .await?;
    Ok(())
}

/// The dead letters of `consumer`, oldest first.
pub async fn dead_letters(db: &Database, consumer: &str) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = sqlx::query(
        "SELECT stream, stream_sequence, subject, event_id, event_type, reason, payload
         FROM consumer_dead_letters WHERE consumer = $1 ORDER BY id",
    )
    .bind(consumer)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let sequence: i64 = row.try_get("stream_sequence")?;
            Ok(DeadLetter {
                stream: row.try_get("stream")?,
                stream_sequence: u64::try_from(sequence)
                    .map_err(|_| StoreError::Corrupt("negative stream sequence".into()))?,
                subject: row.try_get("subject")?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                reason: row.try_get("reason")?,
                payload: row.try_get("payload")?,
            })
        })
        .collect()
}

/// Forgets everything `consumer` applied, for a rebuild that replays its streams from the
/// start. Run it in the transaction that also empties the projection.
pub async fn reset(tx: &mut WriteTx, consumer: &str) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM consumer_versions WHERE consumer = $1",
        "DELETE FROM consumer_positions WHERE consumer = $1",
        "DELETE FROM consumer_dead_letters WHERE consumer = $1",
    ] {
        tx.execute(sql, &[consumer.into()]).await?;
    }
    Ok(())
}
