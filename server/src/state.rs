//! What every connection task shares: the rooms (behind one lock), the settings, the admission
//! counts, and the shutdown signal with the tracker of every spawned task.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::Config;
use crate::hosts::AllowedHosts;
use crate::rooms::Rooms;
use crate::turned_away::TurnedAway;

#[derive(Debug)]
pub struct Shared {
    rooms: Mutex<Rooms>,
    pub config: Config,
    pub admission: Arc<Admission>,
    pub hosts: AllowedHosts,
    /// Requests refused before the upgrade, by reason.
    pub turned_away: TurnedAway,
    /// Cancelled when the server stops: every connection closes with 1001.
    pub shutdown: CancellationToken,
    /// Every connection task and the grace sweeper, so that shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl Shared {
    pub fn new(config: Config, listening_on_loopback: bool) -> Arc<Self> {
        Arc::new(Self {
            rooms: Mutex::new(Rooms::new(config.rooms.clone())),
            admission: Arc::new(Admission::new(config.max_connections, config.max_connections_per_ip)),
            hosts: AllowedHosts::new(listening_on_loopback, &config.allowed_hosts),
            turned_away: TurnedAway::default(),
            config,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// The rooms, locked. Never hold the guard across an `.await`.
    pub fn rooms(&self) -> MutexGuard<'_, Rooms> {
        // The rules never leave Rooms half-updated on panic paths we know of; keep serving.
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
