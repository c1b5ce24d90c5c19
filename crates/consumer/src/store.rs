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

/// A count as the tables keep it (BIGINT), saturating.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

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
    /// event's delivery, or as the server said when the pull last opened: the lag. Not
    /// stored; 0 after a restart until the pull opens.
    pub pending: u64,
    pub n_applied: u64,
    pub n_skipped: u64,
    pub n_gaps: u64,
    pub n_dead_lettered: u64,
    /// Events the stream no longer held when this consumer got to them (aged out, purged,
    /// lost with a deleted stream): never applied here.
    pub n_missed: u64,
    /// The incarnation of the stream `stream_sequence` counts in: when JetStream created it,
    /// in nanoseconds since the epoch (0: not recorded yet).
    pub stream_created: i64,
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
    pub n_missed: u64,
    pub stream_created: i64,
}

pub(crate) async fn advance_position(
    tx: &mut WriteTx,
    consumer: &str,
    stream: &str,
    counts: &BatchCounts,
    applied_at_micros: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO consumer_positions
           (consumer, stream, stream_sequence, last_event_at, applied_at, n_applied, n_skipped, n_gaps,
            n_dead_lettered, n_missed, stream_created)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (consumer, stream) DO UPDATE SET
           stream_sequence = excluded.stream_sequence,
           last_event_at = CASE WHEN excluded.last_event_at > consumer_positions.last_event_at
                                THEN excluded.last_event_at ELSE consumer_positions.last_event_at END,
           applied_at = excluded.applied_at,
           n_applied = consumer_positions.n_applied + excluded.n_applied,
           n_skipped = consumer_positions.n_skipped + excluded.n_skipped,
           n_gaps = consumer_positions.n_gaps + excluded.n_gaps,
           n_dead_lettered = consumer_positions.n_dead_lettered + excluded.n_dead_lettered,
           n_missed = consumer_positions.n_missed + excluded.n_missed,
           stream_created = excluded.stream_created",
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
            count(counts.n_missed).into(),
            counts.stream_created.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Moves the position to `stream_sequence` in the stream created at `stream_created`, adding
/// `missed` to the events it never saw, without touching the other counts.
pub(crate) async fn set_position(
    tx: &mut WriteTx,
    consumer: &str,
    stream: &str,
    stream_sequence: u64,
    stream_created: i64,
    missed: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO consumer_positions
           (consumer, stream, stream_sequence, last_event_at, applied_at, n_applied, n_skipped, n_gaps,
            n_dead_lettered, n_missed, stream_created)
         VALUES ($1, $2, $3, 0, 0, 0, 0, 0, 0, $4, $5)
         ON CONFLICT (consumer, stream) DO UPDATE SET
           stream_sequence = excluded.stream_sequence,
           n_missed = consumer_positions.n_missed + excluded.n_missed,
           stream_created = excluded.stream_created",
        &[
            consumer.into(),
            stream.into(),
            count(stream_sequence).into(),
            count(missed).into(),
            stream_created.into(),
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
        "SELECT stream_sequence, last_event_at, applied_at, n_applied, n_skipped, n_gaps, n_dead_lettered,
                n_missed, stream_created
         FROM consumer_positions WHERE consumer = $1 AND stream = $2",
    )
    .bind(consumer)
    .bind(stream)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored = |column: &str| -> Result<u64, StoreError> {
        let value: i64 = row.try_get(column)?;
        u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} is negative")))
    };
    Ok(Some(Position {
        stream_sequence: stored("stream_sequence")?,
        last_event_at_micros: row.try_get("last_event_at")?,
        applied_at_micros: row.try_get("applied_at")?,
        pending: 0,
        n_applied: stored("n_applied")?,
        n_skipped: stored("n_skipped")?,
        n_gaps: stored("n_gaps")?,
        n_dead_lettered: stored("n_dead_lettered")?,
        n_missed: stored("n_missed")?,
        stream_created: row.try_get("stream_created")?,
    }))
}

/// An event that could not be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its row's id (0 until stored).
    pub id: i64,
    /// The durable consumer that set it aside.
    pub consumer: String,
    /// When it was set aside, or last failed a replay (µs since the epoch; 0 until stored).
    pub failed_at_micros: i64,
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

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this consumer's; everyone's when `None`.
    pub consumer: Option<String>,
    /// Only this stream's; every stream's when `None`.
    pub stream: Option<String>,
    /// Only those with a larger id.
    pub after_id: i64,
    /// At most this many.
    pub limit: u32,
}

const DEAD_LETTER_COLUMNS: &str = "id, consumer, stream, stream_sequence, subject, event_id, event_type, reason, payload, failed_at";

fn decode_dead_letter(row: &dyn platform::db::Columns) -> Result<DeadLetter, StoreError> {
    let sequence = row.integer("stream_sequence")?;
    Ok(DeadLetter {
        id: row.integer("id")?,
        consumer: row.text("consumer")?,
        failed_at_micros: row.integer("failed_at")?,
        stream: row.text("stream")?,
        stream_sequence: u64::try_from(sequence)
            .map_err(|_| StoreError::Corrupt("negative stream sequence".into()))?,
        subject: row.text("subject")?,
        event_id: row.optional_text("event_id")?,
        event_type: row.optional_text("event_type")?,
        reason: row.text("reason")?,
        payload: row.blob("payload")?,
    })
}

/// Dead letters matching `filter`, oldest first.
pub async fn list_dead_letters(
    db: &Database,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, StoreError> {
    // Empty strings stand for "any", so one statement serves every filter.
    let sql = format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM consumer_dead_letters
         WHERE id > $1 AND ($2 = '' OR consumer = $2) AND ($3 = '' OR stream = $3)
         ORDER BY id LIMIT $4"
    );
    db.read_rows(
        &sql,
        &[
            filter.after_id.into(),
            filter.consumer.as_deref().unwrap_or_default().into(),
            filter.stream.as_deref().unwrap_or_default().into(),
            i64::from(filter.limit).into(),
        ],
        decode_dead_letter,
    )
    .await
}

/// The dead letters of `consumer`, oldest first.
pub async fn dead_letters(db: &Database, consumer: &str) -> Result<Vec<DeadLetter>, StoreError> {
    list_dead_letters(
        db,
        &DeadLetterFilter {
            consumer: Some(consumer.to_owned()),
            limit: u32::MAX,
            ..DeadLetterFilter::default()
        },
    )
    .await
}

/// One dead letter, read in the transaction that replays it.
pub(crate) async fn load_dead_letter(
    tx: &mut WriteTx,
    id: i64,
) -> Result<Option<DeadLetter>, StoreError> {
    let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM consumer_dead_letters WHERE id = $1");
    tx.fetch_optional(&sql, &[id.into()], decode_dead_letter)
        .await
}

/// Deletes dead letters; returns how many there were.
pub async fn discard_dead_letters(db: &Database, ids: &[i64]) -> Result<u64, StoreError> {
    let mut discarded = 0;
    let mut tx = db.begin_write().await?;
    for chunk in ids.chunks(CHUNK) {
        let placeholders = numbered(1, chunk.len());
        // Only numbered placeholders are interpolated; the values are bound.
        let sql = format!("DELETE FROM consumer_dead_letters WHERE id IN ({placeholders})");
        let params: Vec<Param> = chunk.iter().map(|id| Param::Integer(*id)).collect();
        discarded += tx.execute(&sql, &params).await?;
    }
    tx.commit().await?;
    Ok(discarded)
}

pub(crate) async fn delete_dead_letter(tx: &mut WriteTx, id: i64) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM consumer_dead_letters WHERE id = $1",
        &[id.into()],
    )
    .await?;
    Ok(())
}

/// Keeps a letter whose replay failed again, with the new reason.
pub(crate) async fn refail_dead_letter(
    tx: &mut WriteTx,
    id: i64,
    reason: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE consumer_dead_letters SET reason = $1, failed_at = $2 WHERE id = $3",
        &[
            reason.into(),
            platform::time::now_micros().into(),
            id.into(),
        ],
    )
    .await?;
    Ok(())
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
