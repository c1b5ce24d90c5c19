//! The pieces of `tonic::Status` mapping that all services share. Each service still owns its
//! single `From<ServiceError> for Status`; these helpers keep the common arms identical.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::db::StoreError;
use crate::fields::FieldViolation;

/// INVALID_ARGUMENT naming the field, with a google.rpc.BadRequest detail for clients that read it.
pub fn invalid_argument(violation: &FieldViolation) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        violation.to_string(),
        ErrorDetails::with_bad_request_violation(&violation.field, &violation.reason),
    )
}

/// Maps a storage failure without leaking SQL: the cause chain goes to the log once, here,
/// and the caller learns only whether retrying may help.
pub fn from_store_error(error: &StoreError) -> Status {
    match error {
        StoreError::Unavailable(_) | StoreError::SqliteUnavailable(_) => {
            tracing::warn!(error = %error_chain(error), "database unavailable");
            Status::unavailable("the database is unavailable; retry with backoff")
        }
        StoreError::Failed(_) | StoreError::SqliteFailed(_) | StoreError::Corrupt(_) => {
            tracing::error!(error = %error_chain(error), "database operation failed");
            Status::internal("internal error")
        }
    }
}

/// Renders an error and its sources on one line: "outer: middle: root".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut rendered = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        rendered.push_str(": ");
        rendered.push_str(&cause.to_string());
        source = cause.source();
    }
    rendered
}
