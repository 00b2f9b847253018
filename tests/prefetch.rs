//! The prefetch window: tasks sent ahead to busy workers keep exact crash attribution,
//! cancel before start, and ordinary results.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procpool::{Pool, PoolBuilder, Shutdown, TaskError, TaskHandle};
use procpool_demo_tasks as demo;
use support::{assert_no_children, demo_worker, serial};

fn prefetch_builder(workers: usize, prefetch: usize) -> PoolBuilder {
    let mut builder = Pool::builder();
    builder
        .worker(demo_worker())
        .workers(workers)
        .prefetch(prefetch);
    builder
}

fn prefetch_pool(workers: usize, prefetch: usize) -> Pool {
    prefetch_builder(workers, prefetch)
        .build()
        .expect("the demo worker pool starts")
}

/// One prefetching worker (a window of 31) on the caller's runtime (`start`), where a
/// burst of submissions leaves in a few multi-frame writes.
async fn started_prefetch_pool_of_one() -> Pool {
    prefetch_builder(1, 31)
        .start()
        .await
        .expect("the demo worker pool starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tiny_tasks_all_come_back_right() {
    let _serial = serial().await;
    let pool = prefetch_pool(2, 16);
    let handles: Vec<_> = (0..5000i64)
        .map(|i| pool.submit(demo::square::task(i)))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let i = i as i64;
        assert_eq!(h.await.unwrap(), i * i);
    }
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_only_the_running_task_and_prefetched_ones_run_elsewhere() {
    let _serial = serial().await;
    let pool = prefetch_pool(1, 8);
    // On one worker: a slow task, then a crash, then tasks prefetched behind the crash.
    let slow = pool.submit(demo::sleep_ms::task(100));
    let crash = pool.submit(demo::segfault::task());
    let behind: Vec<_> = (0..6i64)
        .map(|i| pool.submit(demo::add::task(i, 1)))
        .collect();
    let first_worker = slow.started().await.unwrap();
    assert_eq!(slow.await.unwrap(), 100);
    let err = crash.await.unwrap_err();
    assert_eq!(err.exit_signal(), Some(11), "{err:?}");
    for (i, h) in behind.into_iter().enumerate() {
        let h_pid = h.started().await.unwrap();
        // They never started on the crashed worker: one start each, on its replacement.
        assert_ne!(h_pid, first_worker);
        assert_eq!(h.attempts(), 1);
        assert_eq!(h.await.unwrap(), i as i64 + 1);
    }
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_prefetched_task_means_it_never_starts() {
    let _serial = serial().await;
    let pool = prefetch_pool(1, 4);
    let running = pool.submit(demo::sleep_ms::task(300));
    let seen = Arc::new(Mutex::new(false));
    let flag = seen.clone();
    let queued =
        pool.submit(demo::progress::task(1, 0).on_progress(move |_| *flag.lock().unwrap() = true));
    running.started().await.unwrap();
    // Wait until it left the pool's queue for the worker's window (its Run frame is then
    // ahead of the Cancel in the worker's channel).
    support::until_dispatched(&pool).await;
    let pid = running.worker_pid().unwrap();
    queued.cancel();
    assert_eq!(queued.started().await, None);
    assert_eq!(queued.await.unwrap_err(), TaskError::Cancelled);
    // The running task was untouched, on the same worker.
    assert_eq!(running.await.unwrap(), 300);
    assert_eq!(pool.worker_pids().await, vec![pid]);
    assert!(!*seen.lock().unwrap());
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_the_running_task_in_a_window_kills_only_that_task() {
    let _serial = serial().await;
    let pool = prefetch_pool(1, 4);
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let behind: Vec<_> = (0..3i64)
        .map(|i| pool.submit(demo::square::task(i)))
        .collect();
    let pid = running.started().await.unwrap();
    let t0 = Instant::now();
    running.cancel();
    assert_eq!(running.await.unwrap_err(), TaskError::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(support::is_gone(pid));
    for (i, h) in behind.into_iter().enumerate() {
        let i = i as i64;
        assert_eq!(h.await.unwrap(), i * i);
    }
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_are_used_before_windows_fill() {
    let _serial = serial().await;
    let pool = prefetch_pool(2, 8);
    let a = pool.submit(demo::sleep_ms::task(200));
    let b = pool.submit(demo::sleep_ms::task(200));
    let pa = a.started().await.unwrap();
    let pb = b.started().await.unwrap();
    assert_ne!(
        pa, pb,
        "the second task must go to the idle worker, not a window"
    );
    let pids: HashSet<u32> = pool.worker_pids().await.into_iter().collect();
    assert_eq!(pids, HashSet::from([pa, pb]));
    a.await.unwrap();
    b.await.unwrap();
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_a_prefetched_chat_when_it_starts() {
    let _serial = serial().await;
    let pool = prefetch_pool(1, 2);
    let first = pool.submit(demo::sleep_ms::task(100));
    let mut chat = pool.submit(demo::chat::task());
    chat.send("abc").unwrap();
    assert_eq!(first.await.unwrap(), 100);
    assert_eq!(chat.recv().await.as_deref(), Some(&b"cba"[..]));
    chat.send("").unwrap();
    assert_eq!(chat.await.unwrap(), 1);
    drop(pool);
    assert_no_children();
}

/// A burst on the caller's runtime goes to the worker as a few multi-frame writes; a crash
/// in the middle of such a batch still fails only the task that ran, and every task before
/// and after it returns its own value, in order, with one attempt.
#[tokio::test(flavor = "current_thread")]
async fn a_crash_inside_a_batch_of_prefetched_runs_is_attributed_exactly() {
    let _serial = serial().await;
    let pool = started_prefetch_pool_of_one().await;
    let before: Vec<_> = (0..20i64)
        .map(|i| pool.submit(demo::add::task(i, 1)))
        .collect();
    let crash = pool.submit(demo::segfault::task());
    let after: Vec<_> = (0..500i64)
        .map(|i| pool.submit(demo::square::task(i)))
        .collect();
    let mut first_worker = None;
    for (i, h) in before.into_iter().enumerate() {
        let pid = h.started().await.unwrap();
        assert_eq!(*first_worker.get_or_insert(pid), pid);
        assert_eq!(h.await.unwrap(), i as i64 + 1);
    }
    assert_crash_then_each_once_elsewhere(crash.await.unwrap_err(), after, first_worker).await;
    // Dropped on its own runtime, the pool would not wait for the reaping.
    pool.shutdown(Shutdown::Kill).await;
    assert_no_children();
}

/// What a prefetching worker sends travels two ways (issue 16): small frames on its
/// result pipe, large ones (results, messages) on its channel, announced on the pipe.
/// Written just before the worker dies, every one still reaches its task, in order: the k
/// tasks before the crash complete with their values (their large results and messages
/// whole), the k+1-th is the crash, and the tasks behind it run once each on the
/// replacement.
#[tokio::test(flavor = "current_thread")]
async fn issue16_results_on_both_ways_before_a_crash_all_reach_their_tasks() {
    let _serial = serial().await;
    let pool = started_prefetch_pool_of_one().await;
    const LARGE: u64 = 100_000;
    let before: Vec<_> = (0..24u64)
        .map(|i| match i % 3 {
            0 => Before::Small(pool.submit(demo::add::task(i as i64, 1))),
            1 => Before::Large(pool.submit(demo::bytes::task(LARGE + i))),
            _ => Before::Messages(pool.submit(demo::messages::task(2, LARGE + i, 0, 0))),
        })
        .collect();
    let crash = pool.submit(demo::segfault::task());
    let after: Vec<_> = (0..50i64)
        .map(|i| pool.submit(demo::square::task(i)))
        .collect();
    let mut first_worker = None;
    for (i, task) in before.into_iter().enumerate() {
        let i = i as u64;
        match task {
            Before::Small(h) => {
                let pid = h.started().await.unwrap();
                assert_eq!(*first_worker.get_or_insert(pid), pid);
                assert_eq!(h.await.unwrap(), i as i64 + 1);
            }
            Before::Large(h) => {
                assert_eq!(h.started().await, first_worker);
                let bytes = h.await.unwrap();
                assert_eq!(bytes.len() as u64, LARGE + i);
                assert!(bytes.iter().enumerate().all(|(j, b)| *b == j as u8));
            }
            Before::Messages(mut h) => {
                assert_eq!(h.started().await, first_worker);
                for _ in 0..2 {
                    let message = h.recv().await.expect("both messages reach the task");
                    assert_eq!(message.len() as u64, LARGE + i);
                }
                assert_eq!(h.await.unwrap(), 2);
            }
        }
    }
    assert_crash_then_each_once_elsewhere(crash.await.unwrap_err(), after, first_worker).await;
    pool.shutdown(Shutdown::Kill).await;
    assert_no_children();
}

/// The tasks ahead of the crash in `issue16_results_on_both_ways_before_a_crash_...`.
enum Before {
    Small(procpool::TaskHandle<i64>),
    Large(procpool::TaskHandle<procpool::Bytes>),
    Messages(procpool::TaskHandle<u32>),
}

/// The crash is the segfault's, and each task behind it (`square` of its index) ran once,
/// on a worker other than the one that crashed.
async fn assert_crash_then_each_once_elsewhere(
    err: TaskError,
    after: Vec<TaskHandle<i64>>,
    crashed_worker: Option<u32>,
) {
    assert_eq!(err.exit_signal(), Some(11), "{err:?}");
    for (i, h) in after.into_iter().enumerate() {
        assert_ne!(h.started().await, crashed_worker);
        assert_eq!(h.attempts(), 1);
        let i = i as i64;
        assert_eq!(h.await.unwrap(), i * i);
    }
}
