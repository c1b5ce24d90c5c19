//! Integration tests of purchases-sync on its own, driven as a hostile client would.

mod hostile;
