//! purchases-bus: Service D answered by request/reply on the event bus. For every request it
//! asks users, orders and products on NATS (`bus::ask`), as the design notes draw their
//! "event-based" third way: the bus routes each question to an instance of the owner and the
//! answer back. It has no database, and it keeps every coupling of the direct calls (it fails
//! when an owner is down or slow) and adds one more: it fails when the bus is down.

pub mod config;
pub mod owners;
pub mod startup;

pub use config::Config;
pub use startup::Application;
