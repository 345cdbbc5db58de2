//! The I/O pool's job queue shutting down while a worker waits: every job queued
//! before the stop runs, and the worker always returns (a lost wakeup hung the join).
#![cfg(larder_loom)]

use larder_engine::jobs::JobQueue;
use loom::sync::{Arc, Mutex};
use loom::thread;

fn model(wake_first: bool) {
    loom::model(move || {
        let q = Arc::new(JobQueue::new());
        let ran = Arc::new(Mutex::new(Vec::new()));
        let worker = {
            let (q, ran) = (Arc::clone(&q), Arc::clone(&ran));
            thread::spawn(move || {
                while let Some(job) = q.next() {
                    ran.lock().unwrap().push(job);
                }
            })
        };
        q.push(1u32);
        q.wake_all();
        if wake_first {
            q.stop_waking_first();
        } else {
            q.stop();
        }
        worker.join().unwrap();
        assert_eq!(*ran.lock().unwrap(), [1], "a job queued before the stop did not run");
    });
}

#[test]
fn a_stopped_queue_runs_what_was_queued_and_its_worker_returns() {
    model(false);
}

/// The bug the model must catch: waking before the stop is set leaves the worker
/// waiting for ever. loom reports the deadlock and then aborts the process while it
/// unwinds (a blocked thread's destructor), which `should_panic` cannot catch: the
/// broken model runs in a child process of this test, which must fail saying so.
#[test]
fn waking_before_the_stop_is_caught() {
    if std::env::var_os("LARDER_LOOM_BROKEN_MODEL").is_some() {
        model(true);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "waking_before_the_stop_is_caught", "--nocapture", "--test-threads=1"])
        .env("LARDER_LOOM_BROKEN_MODEL", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the broken model passed");
    assert!(stderr.contains("deadlock"), "the broken model failed otherwise: {stderr}");
}
