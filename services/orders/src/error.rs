//! Everything an orders request can fail with, and its one mapping to a gRPC status.

use platform::db::StoreError;
use platform::fields::FieldViolation;
use tonic::Status;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldViolation),
    #[error("order {0} not found")]
    NotFound(Uuid),
    #[error(
        "user {0} is unknown to orders: it was never registered, or its registration has not reached orders yet; check it with users.v1.UserService/GetUser and retry"
    )]
    UnknownUser(Uuid),
    #[error("user {0} has been deleted and cannot place orders")]
    DeletedUser(Uuid),
    #[error(
        "product {0} is unknown to orders: it was never created, or its creation has not reached orders yet; check it with products.v1.ProductService/GetProduct and retry"
    )]
    UnknownProduct(Uuid),
    #[error("order {0} is already cancelled")]
    AlreadyCancelled(Uuid),
    #[error(
        "order {id} is at version {actual}, not the expected {expected}; read it again and retry"
    )]
    VersionMismatch {
        id: Uuid,
        expected: u64,
        actual: u64,
    },
    #[error("order {0} was changed by another request at the same time; read it again and retry")]
    ChangedConcurrently(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<OrdersError> for Status {
    fn from(error: OrdersError) -> Self {
        let message = error.to_string();
        match error {
            OrdersError::InvalidArgument(violation) => {
                platform::status::invalid_argument(&violation)
            }
            OrdersError::NotFound(_) => Status::not_found(message),
            OrdersError::AlreadyCancelled(_)
            | OrdersError::UnknownUser(_)
            | OrdersError::DeletedUser(_)
            | OrdersError::UnknownProduct(_) => Status::failed_precondition(message),
            OrdersError::VersionMismatch { .. } | OrdersError::ChangedConcurrently(_) => {
                Status::aborted(message)
            }
            OrdersError::Store(error) => platform::status::from_store_error(&error),
        }
    }
}
