//! Locks that outlive a panic.

use std::sync::{Mutex, MutexGuard};

/// Takes `mutex` even when a panic poisoned it. For data that no call leaves half-changed
/// (each change is one call), which is what every caller here keeps behind a std mutex: a
/// poisoned lock then still guards whole data, and refusing it would only spread the panic.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
