//! Signals go to Redis in batches: one pipeline of `EVALSHA relay` per round trip, from a single
//! task, so Redis reads and answers many scripts per system call instead of one each. Order: a
//! sender has one signal in flight at a time (its reader awaits the answer), and the queue is
//! first in, first out; so a sender's signals are numbered in the order it sent them.

use std::sync::Arc;

use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::Cluster;
use crate::state::Shared;

/// Signals waiting for a pipeline, in all; past it a signal gets `server_busy`.
pub const QUEUE: usize = 8192;
/// Scripts per pipeline at most.
const BATCH: usize = 256;

/// One signal for the relay script, and where its answer goes.
pub struct RelayJob {
    /// room, from, session, to, frame (open): the script's ARGV.
    pub args: [String; 5],
    pub answer: oneshot::Sender<Result<i64, String>>,
}

pub fn channel() -> (mpsc::Sender<RelayJob>, mpsc::Receiver<RelayJob>) {
    mpsc::channel(QUEUE)
}

/// Sends what is queued, a batch per round trip, until shutdown.
pub async fn run(shared: Arc<Shared>, cluster: Arc<Cluster>, mut jobs: mpsc::Receiver<RelayJob>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            received = jobs.recv_many(&mut batch, BATCH) => received,
        };
        if received == 0 {
            return;
        }
        send(&cluster, std::mem::take(&mut batch)).await;
    }
}

async fn send(cluster: &Cluster, mut batch: Vec<RelayJob>) {
    // Twice at most: after a Redis restart its script cache is empty (NOSCRIPT). Those scripts
    // did not run; they run again after the script is loaded. (Each is from a different sender,
    // so running them after the others of the batch keeps every sender's order.)
    for attempt in 0..2 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in &batch {
            pipe.cmd("EVALSHA").arg(cluster.scripts.relay.get_hash()).arg(0).arg(&job.args[..]);
        }
        let replies: Vec<Value> = match pipe.query_async(&mut cluster.redis.clone()).await {
            Ok(replies) => replies,
            Err(error) => {
                for job in batch {
                    let _ = job.answer.send(Err(error.to_string()));
                }
                return;
            }
        };
        let mut again = Vec::new();
        for (job, reply) in batch.into_iter().zip(replies) {
            let outcome = match reply {
                Value::Int(seq) => Ok(seq),
                Value::ServerError(error) if error.code() == "NOSCRIPT" && attempt == 0 => {
                    again.push(job);
                    continue;
                }
                other => Err(format!("{other:?}")),
            };
            let _ = job.answer.send(outcome);
        }
        if again.is_empty() {
            return;
        }
        let loaded: Result<String, _> =
            cluster.scripts.relay.prepare_invoke().load_async(&mut cluster.redis.clone()).await;
        if let Err(error) = loaded {
            for job in again {
                let _ = job.answer.send(Err(error.to_string()));
            }
            return;
        }
        batch = again;
    }
}
