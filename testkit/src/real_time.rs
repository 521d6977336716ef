//! A guard against a hang measured in real time, whether or not tokio's clock is paused.
//!
//! On a paused clock a runtime with nothing ready jumps at once to its next timer. If a test's
//! own guard (`tokio::time::timeout(WAIT, ..)`) is that timer, the jump can land on it while a
//! loopback packet the server has already sent is still in the kernel: on a busy machine the
//! delivery waits for `ksoftirqd`, and the runtime's zero-wait poll of its sockets sees nothing
//! yet. The test then fails "after 10 s" that never passed. CI saw this once, on the header
//! timeout test. A guard in real time is no timer of the runtime's, so the paused clock only
//! ever jumps to the server's own timers, which is what a paused test means to run.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

/// `future`'s output, or `None` once `limit` of real time has passed without it.
pub async fn within_real_time<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let (expired, on_expiry) = tokio::sync::oneshot::channel::<()>();
    // Dropping `finished` (when this function returns) wakes the thread at once.
    let (finished, on_finish) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if on_finish.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = expired.send(());
        }
    });
    let output = tokio::select! {
        biased;
        output = future => Some(output),
        _ = on_expiry => None,
    };
    drop(finished);
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limit_is_real_time_even_on_a_paused_clock() {
        let started = std::time::Instant::now();
        // A paused clock would jump this 60 s sleep at once; the real-time limit must win.
        let slept = within_real_time(Duration::from_millis(200), async {
            let (_never, pending) = tokio::sync::oneshot::channel::<()>();
            let _ = pending.await;
        })
        .await;
        assert!(slept.is_none());
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    }

    /// The hazard, made deterministic: something outside the runtime (here a thread, in CI the
    /// kernel delivering a loopback FIN late) answers 50 ms later. A paused guard of 10 s has
    /// already run out by then; the real-time guard has not.
    #[tokio::test(start_paused = true)]
    async fn an_answer_that_takes_real_time_beats_the_real_time_guard_only() {
        let late_answer = || {
            let (answer, answered) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let _ = answer.send(());
            });
            answered
        };
        let paused_guard = tokio::time::timeout(Duration::from_secs(10), late_answer()).await;
        assert!(paused_guard.is_err(), "the paused clock jumped past 10 s before the 50 ms answer");
        let real_guard = within_real_time(Duration::from_secs(10), late_answer()).await;
        assert!(real_guard.is_some_and(|answer| answer.is_ok()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_timer_inside_still_jumps() {
        let started = std::time::Instant::now();
        let done =
            within_real_time(Duration::from_secs(5), tokio::time::sleep(Duration::from_secs(60))).await;
        assert!(done.is_some());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
