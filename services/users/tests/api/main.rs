//! Integration tests: the real users service on port 0 over a fresh database, driven
//! through the generated client. Storage tests run on SQLite and PostgreSQL alike.

mod helpers;
mod hostile;
mod process;
mod reflection;
mod users;
