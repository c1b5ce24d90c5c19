//! The orders service: owns orders (placing, cancelling, listing a user's) and the only
//! database that holds them. It never calls the users or products services: it checks the
//! users and products an order names against a replica of their ids fed by their event
//! streams ([`replica`]). Other services learn about orders through this API or through the
//! events it records in its outbox.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod replica;
pub mod startup;
pub mod store;

pub use config::Config;
pub use startup::Application;

/// The service's schema, for the service itself and for the monolith that embeds it.
pub fn migrations() -> platform::db::Migrations {
    platform::db::Migrations {
        name: "orders",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}
