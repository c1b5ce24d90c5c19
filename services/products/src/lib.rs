//! The products service: owns the product catalogue (titles, images, prices) and the only
//! database that holds it. Other services learn about products through this API or through
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
        name: "products",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}
