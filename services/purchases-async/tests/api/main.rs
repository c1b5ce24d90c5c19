//! Service D end to end: the real owning services, purchases-sync and purchases-async in one
//! runtime over a real nats-server, on SQLite and PostgreSQL.

mod grpcurl;
mod index;
mod modes;
mod read_your_writes;
mod schema;
mod trust;
mod view;
