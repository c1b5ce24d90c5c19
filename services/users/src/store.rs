//! The users table and its outbox rows. Every write and the event describing it commit in
//! one transaction.

use contracts::events::v1 as events;
use outbox::{Producer, Wakeup};
use platform::db::{
    Columns, Database, StoreError, WriteTx, check_version, stored_version, version_from_db,
};
use uuid::Uuid;

use crate::domain::{Deletion, NewUser, Rename, User};
use crate::error::UsersError;

const EVENTS: Producer = Producer::new("users", "user");

#[derive(Debug, Clone)]
pub struct UserStore {
    db: Database,
    /// Woken after every commit, so the relay publishes the new event at once.
    wakeup: Wakeup,
    /// Where its events go, and in which schema version (see `outbox::EventSchemaArgs`).
    events: Producer,
}

/// A row as stored, tombstones included.
struct StoredUser {
    user: User,
    deleted: bool,
}

impl UserStore {
    pub fn new(db: Database, wakeup: Wakeup) -> Self {
        Self {
            db,
            wakeup,
            events: EVENTS,
        }
    }

    /// Publishes events of schema version `event_schema` from now on.
    #[must_use]
    pub fn with_event_schema(mut self, event_schema: u32) -> Self {
        self.events = EVENTS.with_schema_version(event_schema);
        self
    }

    /// The given and family name of schema 2; version 1 leaves them out.
    fn name_parts(&self, name: &str) -> (String, String) {
        if self.events.schema_version >= 2 {
            let (given, family) = crate::domain::split_name(name);
            (given.to_owned(), family.to_owned())
        } else {
            (String::new(), String::new())
        }
    }

    pub async fn create(&self, new: &NewUser) -> Result<User, UsersError> {
        let now = platform::time::now_micros();
        let user = User {
            id: Uuid::now_v7(),
            email: new.email.as_str().to_owned(),
            name: new.name.as_str().to_owned(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.db.begin_write().await?;
        let inserted = tx
            .execute(
                "INSERT INTO users (id, email, name, version, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $4)",
                &[
                    user.id.to_string().into(),
                    user.email.as_str().into(),
                    user.name.as_str().into(),
                    now.into(),
                ],
            )
            .await;
        match inserted {
            Err(error) if error.is_unique_violation() => {
                return Err(UsersError::EmailTaken(user.email));
            }
            other => other?,
        };
        let payload = self.registered(&user);
        self.events
            .record(&mut tx, &user.id, user.version, now, &payload)
            .await?;
        self.wakeup.commit(tx).await?;
        Ok(user)
    }

    /// The event that carries a live user's whole state.
    fn registered(&self, user: &User) -> events::UserRegistered {
        let (given_name, family_name) = self.name_parts(&user.name);
        events::UserRegistered {
            user_id: user.id.to_string(),
            email: user.email.clone(),
            name: user.name.clone(),
            given_name,
            family_name,
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<User, UsersError> {
        let stored = self
            .db
            .read_optional(SELECT_USER, &[id.to_string().into()], decode)
            .await?;
        match stored {
            None => Err(UsersError::NotFound(id)),
            Some(StoredUser { deleted: true, .. }) => Err(UsersError::Gone(id)),
            Some(StoredUser { user, .. }) => Ok(user),
        }
    }

    pub async fn rename(&self, rename: &Rename) -> Result<User, UsersError> {
        let mut tx = self.db.begin_write().await?;
        let current = load_for_write(&mut tx, rename.id, rename.expected_version).await?;
        let current_version = current.version;
        let target_id = current.id;
        if current.name == rename.name.as_str() {
            // Renaming to the current name changes nothing, so it records no event: a retried
            // request stays harmless.
            return Ok(current);
        }
        let now = platform::time::now_micros();
        let user = User {
            name: rename.name.as_str().to_owned(),
            version: current.version + 1,
            updated_at: now,
            ..current
        };
        let updated = tx
            .execute(
                "UPDATE users SET name = $1, version = version + 1, updated_at = $2 WHERE id = $3 AND version = $4",
                &[
                    user.name.as_str().into(),
                    now.into(),
                    user.id.to_string().into(),
                    stored_version(current_version)?.into(),
                ],
            )
            .await?;
        if updated != 1 {
            // Another transaction changed the row between our read and this write (possible
            // on PostgreSQL, whose transactions do not take the write lock up front).
            return Err(UsersError::ChangedConcurrently(target_id));
        }
        let (given_name, family_name) = self.name_parts(&user.name);
        let payload = events::UserRenamed {
            user_id: user.id.to_string(),
            name: user.name.clone(),
            given_name,
            family_name,
        };
        self.events
            .record(&mut tx, &user.id, user.version, now, &payload)
            .await?;
        self.wakeup.commit(tx).await?;
        Ok(user)
    }

    /// Deletes a user: the row stays as a tombstone so the id is never reused, while the
    /// email (released for new registrations) and name are erased.
    pub async fn delete(&self, deletion: &Deletion) -> Result<u64, UsersError> {
        let mut tx = self.db.begin_write().await?;
        let current = load_for_write(&mut tx, deletion.id, deletion.expected_version).await?;
        let target_id = current.id;
        let now = platform::time::now_micros();
        let deleted = User {
            version: current.version + 1,
            updated_at: now,
            ..current.clone()
        };
        let updated = tx
            .execute(
                "UPDATE users SET email = NULL, name = NULL, deleted_at = $1, version = version + 1, updated_at = $1 WHERE id = $2 AND version = $3",
                &[
                    now.into(),
                    deleted.id.to_string().into(),
                    stored_version(current.version)?.into(),
                ],
            )
            .await?;
        if updated != 1 {
            // Another transaction changed the row between our read and this write (possible
            // on PostgreSQL, whose transactions do not take the write lock up front).
            return Err(UsersError::ChangedConcurrently(target_id));
        }
        let payload = events::UserDeleted {
            user_id: deleted.id.to_string(),
        };
        self.events
            .record(&mut tx, &deleted.id, deleted.version, now, &payload)
            .await?;
        self.wakeup.commit(tx).await?;
        Ok(deleted.version)
    }
}

impl outbox::admin::StateSource for UserStore {
    /// A live user as UserRegistered, the event that carries a user's whole state (at its
    /// current version, whatever its history); a deleted one as UserDeleted.
    async fn re_emit_chunk(
        &self,
        tx: &mut WriteTx,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<outbox::admin::ReEmitted, StoreError> {
        let rows = outbox::admin::next_chunk(
            tx,
            "SELECT id, email, name, version, created_at, updated_at, deleted_at FROM users",
            after,
            limit,
            decode,
        )
        .await?;
        for StoredUser { user, deleted } in &rows {
            if *deleted {
                let payload = events::UserDeleted {
                    user_id: user.id.to_string(),
                };
                self.events
                    .record(tx, &user.id, user.version, user.updated_at, &payload)
                    .await?;
            } else {
                let payload = self.registered(user);
                self.events
                    .record(tx, &user.id, user.version, user.updated_at, &payload)
                    .await?;
            }
        }
        let n = rows.len() as u64;
        Ok(outbox::admin::ReEmitted {
            last: rows.last().map(|row| row.user.id),
            entities: n,
            events: n,
        })
    }
}

const SELECT_USER: &str =
    "SELECT id, email, name, version, created_at, updated_at, deleted_at FROM users WHERE id = $1";

async fn load(tx: &mut WriteTx, id: Uuid) -> Result<Option<StoredUser>, StoreError> {
    tx.fetch_optional(SELECT_USER, &[id.to_string().into()], decode)
        .await
}

/// Loads a user about to be changed, refusing unknown, deleted and stale-version targets.
async fn load_for_write(
    tx: &mut WriteTx,
    id: Uuid,
    expected_version: Option<u64>,
) -> Result<User, UsersError> {
    let user = match load(tx, id).await? {
        None => return Err(UsersError::NotFound(id)),
        Some(StoredUser { deleted: true, .. }) => return Err(UsersError::Deleted(id)),
        Some(StoredUser { user, .. }) => user,
    };
    check_version(expected_version, user.version).map_err(|conflict| {
        UsersError::VersionMismatch {
            id,
            expected: conflict.expected,
            actual: conflict.actual,
        }
    })?;
    Ok(user)
}

fn decode(row: &dyn Columns) -> Result<StoredUser, StoreError> {
    let id = row.text("id")?;
    Ok(StoredUser {
        user: User {
            id: Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt(format!("user id {id:?}")))?,
            email: row.optional_text("email")?.unwrap_or_default(),
            name: row.optional_text("name")?.unwrap_or_default(),
            version: version_from_db(row.integer("version")?)?,
            created_at: row.integer("created_at")?,
            updated_at: row.integer("updated_at")?,
        },
        deleted: row.optional_integer("deleted_at")?.is_some(),
    })
}
