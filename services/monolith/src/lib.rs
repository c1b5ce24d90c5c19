//! The monolith: the baseline the microservices are measured against. One process and one
//! database hold users, products and orders and serve users.v1, products.v1, orders.v1 and
//! purchases.v1 on one port. It reuses the owning services' domain, storage and gRPC code
//! unchanged (orders checks references against the shared tables instead of a replica), and
//! answers purchases with one SQL query ([`join`]).
//!
//! It publishes no events: nothing consumes them. The stores still write their outbox rows
//! in the same transactions (that code is shared), and a sweeper deletes them.

pub mod config;
pub mod join;
pub mod startup;

pub use config::Config;
pub use startup::Application;
