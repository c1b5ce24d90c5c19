//! The users service: owns user accounts (registration, renaming, deletion) and the only
//! database that holds them. Other services learn about users through this API or through
//! the events it records in its outbox; none reads its tables.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod startup;
pub mod store;

pub use config::Config;
pub use startup::Application;

/// The service's schema, for the service itself and for the monolith that embeds it.
pub fn migrations() -> platform::db::Migrations {
    platform::db::Migrations {
        name: "users",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}
