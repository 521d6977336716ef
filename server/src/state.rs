//! What every connection task shares: the rooms (in shards, each behind its own lock), the
//! settings, the admission counts, and the shutdown signal with the tracker of every spawned task.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::hosts::AllowedHosts;
use crate::shards::Shards;
use crate::turned_away::TurnedAway;

#[derive(Debug)]
pub struct Shared {
    /// Every room rule, sharded by room; lock through [`Shards`], never across an `.await`.
    pub rooms: Shards,
    pub config: Config,
    pub admission: Arc<Admission>,
    pub hosts: AllowedHosts,
    /// Requests refused before the upgrade, by reason.
    pub turned_away: TurnedAway,
    /// Cancelled when the server stops: every connection closes with 1001.
    pub shutdown: CancellationToken,
    /// Every connection task and the grace sweeper, so that shutdown can wait for them.
    pub tasks: TaskTracker,
    /// With `--redis`: the link to the other instances. `None`: this process is the service.
    pub cluster: Option<Arc<Cluster>>,
}

impl Shared {
    pub fn new(config: Config, listening_on_loopback: bool, cluster: Option<Arc<Cluster>>) -> Arc<Self> {
        Arc::new(Self {
            rooms: Shards::for_this_machine(config.rooms.clone()),
            admission: Arc::new(Admission::new(config.max_connections, config.max_connections_per_ip)),
            hosts: AllowedHosts::new(listening_on_loopback, &config.allowed_hosts),
            turned_away: TurnedAway::default(),
            config,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            cluster,
        })
    }
}
