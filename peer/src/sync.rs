//! Small helpers for the peer's shared state.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also after a panic in another holder: every critical section in the peer is a
/// short read or replace that leaves the data consistent, so a poisoned lock holds good data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
