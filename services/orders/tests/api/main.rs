//! Integration tests: the real orders service on port 0 over a fresh database, driven
//! through the generated client, on SQLite and PostgreSQL alike.

mod helpers;
mod orders;
mod replica;
