//! Everything a users request can fail with, and its one mapping to a gRPC status.

use platform::db::StoreError;
use platform::fields::FieldViolation;
use tonic::Status;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldViolation),
    #[error("user {0} not found")]
    NotFound(Uuid),
    /// Read of a deleted user: to a reader it no longer exists.
    #[error("user {0} not found: it was deleted")]
    Gone(Uuid),
    /// Write to a deleted user: the id is known, but nothing can change it any more.
    #[error("user {0} was deleted and can no longer be changed")]
    Deleted(Uuid),
    #[error("the email {0} is already registered")]
    EmailTaken(String),
    #[error(
        "user {id} is at version {actual}, not the expected {expected}; read it again and retry"
    )]
    VersionMismatch {
        id: Uuid,
        expected: u64,
        actual: u64,
    },
    #[error("user {0} was changed by another request at the same time; read it again and retry")]
    ChangedConcurrently(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<UsersError> for Status {
    fn from(error: UsersError) -> Self {
        let message = error.to_string();
        match error {
            UsersError::InvalidArgument(violation) => {
                platform::status::invalid_argument(&violation)
            }
            UsersError::NotFound(_) | UsersError::Gone(_) => Status::not_found(message),
            UsersError::Deleted(_) => Status::failed_precondition(message),
            UsersError::EmailTaken(_) => Status::already_exists(message),
            UsersError::VersionMismatch { .. } | UsersError::ChangedConcurrently(_) => {
                Status::aborted(message)
            }
            UsersError::Store(error) => platform::status::from_store_error(&error),
        }
    }
}
