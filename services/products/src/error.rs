//! Everything a products request can fail with, and its one mapping to a gRPC status.

use platform::db::StoreError;
use platform::fields::FieldViolation;
use tonic::Status;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProductsError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldViolation),
    #[error("product {0} not found")]
    NotFound(Uuid),
    #[error(
        "product {id} is at version {actual}, not the expected {expected}; read it again and retry"
    )]
    VersionMismatch {
        id: Uuid,
        expected: u64,
        actual: u64,
    },
    #[error("product {0} was changed by another request at the same time; read it again and retry")]
    ChangedConcurrently(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ProductsError> for Status {
    fn from(error: ProductsError) -> Self {
        let message = error.to_string();
        match error {
            ProductsError::InvalidArgument(violation) => {
                platform::status::invalid_argument(&violation)
            }
            ProductsError::NotFound(_) => Status::not_found(message),
            ProductsError::VersionMismatch { .. } | ProductsError::ChangedConcurrently(_) => {
                Status::aborted(message)
            }
            ProductsError::Store(error) => platform::status::from_store_error(&error),
        }
    }
}
