//! Integration tests of purchases-sync: on its own, driven as a hostile client would, and
//! with its real dependencies failing under it.

mod dependencies;
mod fanout;
mod hostile;
