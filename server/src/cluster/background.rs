//! What an instance does besides serving requests: it beats and sweeps (liveness, grace
//! expiry, recovery after an outage), listens on its channel (messages for its members,
//! hand-overs), and reads streams back where a publish was missed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::collections::HashMap;

use futures_util::StreamExt;
use protocol::{RoomName, close_code};

use super::Cluster;
use super::scripts::{instance_channel, list, number, room_prefix, text};
use crate::ids::PeerId;
use crate::outbox::Frame;
use crate::rooms::{CloseRequest, Mirrored, Remote};
use crate::state::Shared;

/// How long to wait before subscribing again after the channel's connection failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);
/// Stream entries read per call when catching up.
const CATCH_UP_BATCH: usize = 512;
/// Reads per catch-up of one member before it gives up until its next gap (bounds the loop).
const CATCH_UP_ROUNDS: usize = 64;

/// Spawns the instance's background tasks on the server's tracker; they end on shutdown.
pub fn start(shared: &Arc<Shared>, cluster: &Arc<Cluster>) {
    shared.tasks.spawn(keep(Arc::clone(shared), Arc::clone(cluster)));
    shared.tasks.spawn(listen(Arc::clone(shared), Arc::clone(cluster)));
    shared.tasks.spawn(catch_up(Arc::clone(shared), Arc::clone(cluster)));
    let relay_queue = cluster.relay_queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(relay_queue) = relay_queue {
        shared.tasks.spawn(super::pipeline::run(Arc::clone(shared), Arc::clone(cluster), relay_queue));
    }
}

/// Heartbeat and sweep, every [`super::BEAT_INTERVAL`]. After an outage (Redis unreachable, or
/// this instance taken for dead), the instance states which members it still serves before it
/// reports itself up again.
async fn keep(shared: Arc<Shared>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(super::BEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut redis = cluster.redis.clone();
        let ttl = u64::try_from(super::HEARTBEAT_TTL.as_millis()).unwrap_or(u64::MAX);
        let beat: Result<i64, _> =
            cluster.scripts.beat.arg(&cluster.instance).arg(ttl).invoke_async(&mut redis).await;
        let was_known = match beat {
            Ok(known) => known == 1,
            Err(error) => {
                if cluster.up.swap(false, Ordering::Relaxed) {
                    tracing::error!(%error, "Redis unreachable: answering server_busy to what needs it until it is back");
                }
                continue;
            }
        };
        // Every beat: a signal relayed here just before the instance noticed Redis was back
        // has a log too.
        if let Err(error) = write_back(&shared, &cluster).await {
            tracing::warn!(%error, "could not write back the signals relayed while Redis was unreachable");
            continue;
        }
        if !was_known || !cluster.redis_up() {
            if let Err(error) = reconcile(&shared, &cluster).await {
                tracing::warn!(%error, "could not re-register this instance's members");
                continue;
            }
            cluster.request_catch_up_all();
            if !cluster.up.swap(true, Ordering::Relaxed) {
                tracing::info!(instance = %cluster.instance, "Redis reachable: serving as part of the service");
            }
        }
        cluster.expire_graced();
        let swept: Result<i64, _> =
            cluster.scripts.sweep.arg(cluster.grace_ms()).invoke_async(&mut redis).await;
        match swept {
            Ok(0) => {}
            Ok(ended) => tracing::info!(ended, "members ended after their grace period"),
            Err(error) => tracing::warn!(%error, "sweep failed"),
        }
    }
}

/// Hands Redis the signals relayed here while it was unreachable (`Rooms::relay_locally`,
/// `lua/writeback.lua`), member by member; each member's stream is then read from the number
/// its mirror expects. A log that could not be written stays sealed (no more is added to it)
/// and is sent again, the same, at the next beat.
async fn write_back(shared: &Shared, cluster: &Cluster) -> anyhow::Result<()> {
    let mut logs = Vec::new();
    shared.rooms.for_each(|rooms| logs.extend(rooms.seal_local_logs()));
    for log in logs {
        let mut invocation = cluster.scripts.writeback.prepare_invoke();
        invocation.arg(log.room.as_str()).arg(log.id.as_str()).arg(cluster.session(log.conn)).arg(log.first);
        for frame in &log.frames {
            invocation.arg(frame.as_str());
        }
        let outcome: String = invocation.invoke_async(&mut cluster.redis.clone()).await?;
        tracing::info!(peer = %log.id, signals = log.frames.len(), %outcome, "signals relayed while Redis was unreachable, written back");
        shared.rooms.lock_room(&log.room).written_back(&log.id);
        cluster.request_catch_up(&log.id, &log.room);
    }
    Ok(())
}

/// Tells Redis which members this instance serves; closes those Redis no longer has (1012: the
/// client resumes or joins again) or that moved to another connection (4000).
async fn reconcile(shared: &Shared, cluster: &Cluster) -> anyhow::Result<()> {
    let served = mirrored(shared);
    let mut invocation = cluster.scripts.reconcile.prepare_invoke();
    invocation.arg(&cluster.instance).arg(cluster.grace_ms());
    for member in &served {
        invocation.arg(member.room.as_str()).arg(member.id.as_str()).arg(cluster.session(member.conn));
    }
    let reply: redis::Value = invocation.invoke_async(&mut cluster.redis.clone()).await?;
    let parts = list(&reply)?;
    let ids = |n: usize| -> anyhow::Result<Vec<String>> {
        parts.get(n).map(list).transpose()?.unwrap_or_default().iter().map(|v| Ok(text(v)?)).collect()
    };
    let (gone, moved) = (ids(0)?, ids(1)?);
    if !gone.is_empty() || !moved.is_empty() {
        tracing::warn!(
            gone = gone.len(),
            moved = moved.len(),
            "members Redis no longer places here: closing them"
        );
    }
    let room_of: HashMap<&str, &RoomName> = served.iter().map(|m| (m.id.as_str(), &m.room)).collect();
    let closes =
        gone.iter().map(|id| (id, CloseRequest::new(close_code::SERVICE_RESTART, "state lost; join again")));
    let closes =
        closes.chain(moved.iter().map(|id| (id, CloseRequest::new(close_code::REPLACED, "replaced"))));
    for (id, close) in closes {
        if let Some(room) = room_of.get(id.as_str()) {
            shared.rooms.lock_room(room).drop_mirrored(id, close);
        }
    }
    Ok(())
}

/// Every member served here, from every shard.
fn mirrored(shared: &Shared) -> Vec<Mirrored> {
    let mut all = Vec::new();
    shared.rooms.for_each(|rooms| all.extend(rooms.mirrored()));
    all
}

/// The instance's channel: `d` a numbered message for a member served here, `k` a member that
/// moved to another connection. Resubscribes after a failure and then reads every stream back.
async fn listen(shared: Arc<Shared>, cluster: Arc<Cluster>) {
    let channel = instance_channel(&cluster.instance);
    let mut failing = false;
    loop {
        let subscribed = async {
            let mut pubsub = cluster.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            pubsub = subscribed => pubsub,
        };
        match pubsub {
            Ok(mut pubsub) => {
                failing = false;
                // Publishes made while not subscribed were lost: read the streams back.
                cluster.request_catch_up_all();
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        () = shared.shutdown.cancelled() => return,
                        message = messages.next() => message,
                    };
                    let Some(message) = message else { break };
                    on_message(&shared, &cluster, message.get_payload_bytes());
                }
                tracing::warn!("lost the subscription to this instance's Redis channel; subscribing again");
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot subscribe to this instance's Redis channel; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
        }
    }
}

fn on_message(shared: &Shared, cluster: &Arc<Cluster>, payload: &[u8]) {
    let Ok(payload) = std::str::from_utf8(payload) else { return };
    let mut parts = payload.splitn(5, '\n');
    let (kind, room) = (parts.next(), parts.next().map(RoomName::parse));
    match (kind, room, parts.next(), parts.next(), parts.next()) {
        (Some("d"), Some(Ok(room)), Some(id), Some(seq), Some(frame)) => {
            let Ok(seq) = seq.parse() else { return };
            let outcome = shared.rooms.lock_room(&room).push_remote(id, seq, Frame::from(frame.to_owned()));
            after_push(shared, cluster, &room, id, outcome);
        }
        (Some("k"), Some(Ok(room)), Some(id), Some(session), None) => {
            cluster.release_graced(id);
            shared.rooms.lock_room(&room).kick(id, |conn| cluster.session(conn) == session);
        }
        _ => tracing::warn!("unknown message on this instance's Redis channel"),
    }
}

fn after_push(shared: &Shared, cluster: &Arc<Cluster>, room: &RoomName, id: &str, outcome: Remote) {
    match outcome {
        Remote::Gap { .. } => cluster.request_catch_up(&PeerId::made_elsewhere(id), room),
        Remote::Overflow(detached) => {
            let cluster = Arc::clone(cluster);
            shared.tasks.spawn(async move { cluster.suspend(detached).await });
        }
        Remote::Taken | Remote::Stale | Remote::Absent | Remote::Held => {}
    }
}

/// Reads members' streams from the number each expects, for members whose messages arrived
/// out of order or not at all (after a resubscription, a reconnection, or an attach).
async fn catch_up(shared: Arc<Shared>, cluster: Arc<Cluster>) {
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = cluster.catch_up_wake.notified() => {}
        }
        let (members, all) = {
            let mut wanted = cluster.catch_up.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (std::mem::take(&mut wanted.members), std::mem::take(&mut wanted.all))
        };
        let members: Vec<(PeerId, RoomName)> = if all {
            mirrored(&shared).into_iter().map(|m| (m.id, m.room)).collect()
        } else {
            members.into_iter().collect()
        };
        let mut failed = false;
        for (id, room) in members {
            if let Err(error) = catch_up_member(&shared, &cluster, &room, &id).await {
                tracing::warn!(%error, peer = %id, "could not read the member's messages back from Redis; trying again");
                cluster.request_catch_up(&id, &room);
                failed = true;
            }
        }
        if failed {
            // Redis is slow or away: try again a little later (the wake-up is already stored).
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
            }
        }
    }
}

async fn catch_up_member(
    shared: &Shared,
    cluster: &Arc<Cluster>,
    room: &RoomName,
    id: &PeerId,
) -> anyhow::Result<()> {
    for _ in 0..CATCH_UP_ROUNDS {
        let Some(next) = shared.rooms.lock_room(room).mirror_of(id.as_str()) else { return Ok(()) };
        let key = format!("{}q:{id}", room_prefix(room.as_str()));
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg(format!("{next}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(CATCH_UP_BATCH)
            .query_async(&mut cluster.redis.clone())
            .await?;
        let entries = list(&reply)?;
        for entry in entries {
            let fields = list(entry)?;
            let (Some(entry_id), Some(body)) = (fields.first(), fields.get(1)) else { continue };
            let entry_id = text(entry_id)?;
            let seq = number(&redis::Value::BulkString(
                entry_id.split('-').next().unwrap_or_default().as_bytes().to_vec(),
            ))?;
            let Some(frame) = list(body)?.get(1) else { continue };
            let outcome =
                shared.rooms.lock_room(room).push_remote(id.as_str(), seq, Frame::from(text(frame)?));
            match outcome {
                Remote::Taken | Remote::Stale => {}
                // The stream no longer starts at the number expected: more than it keeps came
                // while the member was behind (its resume will be refused, as for any trim).
                Remote::Gap { next } => {
                    tracing::warn!(peer = %id, next, "messages trimmed from the stream before delivery");
                    return Ok(());
                }
                Remote::Absent | Remote::Held | Remote::Overflow(_) => {
                    after_push(shared, cluster, room, id.as_str(), outcome);
                    return Ok(());
                }
            }
        }
        if entries.len() < CATCH_UP_BATCH {
            return Ok(());
        }
    }
    Ok(())
}
