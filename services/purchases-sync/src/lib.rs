//! purchases-sync: Service D answered by synchronous fan-out. For every request it calls
//! users.GetUser, orders.ListOrdersByUser and products.BatchGetProducts over long-lived
//! channels, and it has no database. That is the point being demonstrated: it is as slow as
//! its slowest dependency and fails when any of them fails, and it says which.

pub mod config;
pub mod owners;
pub mod startup;

pub use config::Config;
pub use startup::Application;
