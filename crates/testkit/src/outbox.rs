use contracts::events::v1::EventEnvelope;
use platform::db::{Database, DatabaseConfig};
use sqlx::Row as _;

/// Every event in a service's outbox, in commit order, decoded. Tests read the table
/// directly because they own the database; services never read another's.
pub async fn outbox_events(database_url: &str) -> Vec<EventEnvelope> {
    let db = Database::connect(&DatabaseConfig::new(database_url))
        .await
        .expect("open the service database");
    let rows = sqlx::query("SELECT envelope FROM outbox ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .expect("read the outbox");
    db.close().await;
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.get("envelope");
            prost::Message::decode(bytes.as_slice()).expect("an outbox row holds an EventEnvelope")
        })
        .collect()
}

/// Decodes an envelope's payload as `M`, checking that the envelope says it is one.
pub fn payload<M: prost::Message + prost::Name + Default>(envelope: &EventEnvelope) -> M {
    assert_eq!(envelope.event_type, M::full_name(), "unexpected event type");
    M::decode(envelope.payload.as_slice()).expect("the payload decodes as its declared type")
}
