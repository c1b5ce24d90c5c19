//! purchases-async: Service D answered from a projection in its own database, fed by the
//! USERS, PRODUCTS and ORDERS streams through the consumer library ([`projection`]). It
//! never calls another service: it answers while they are down, and catches up from its
//! durable consumers after its own downtime. `--rebuild` empties the projection and replays
//! the streams from their start.

pub mod changes;
pub mod config;
pub mod index;
pub mod projection;
pub mod startup;
pub mod store;
pub mod view;

pub use config::{Config, ReadFrom};
pub use startup::Application;

/// The projection's schema.
pub fn migrations() -> platform::db::Migrations {
    platform::db::Migrations {
        name: "purchases_async",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}
