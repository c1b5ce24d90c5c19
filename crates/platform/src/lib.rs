//! What every service process needs and no service owns: binding and serving gRPC with the
//! standard layers, health and reflection; connecting to SQLite or PostgreSQL and running a
//! service's migrations; answering questions on the bus through the same stack; telemetry; shutdown signals; and the small validation vocabulary
//! (field violations, ids, page tokens, timestamps) that all gRPC edges share.
//!
//! It deliberately holds no business rules and no schema: those belong to the service that
//! owns the data.

mod admission;
pub mod answers;
pub mod config;
pub mod connections;
pub mod db;
pub mod fields;
pub mod host;
pub mod nats;
pub mod one_write;
pub mod paging;
pub mod process;
pub mod procfs;
pub mod request;
pub mod server;
pub mod sqlite;
pub mod status;
pub mod sync;
pub mod telemetry;
pub mod time;
