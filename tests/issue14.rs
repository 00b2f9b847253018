//! Regression tests of issue 14 for the supervisor (procpool-core): each test is named
//! after the defect it pins down and failed on the code before its fix. Real worker
//! processes throughout; the heap of this test process is counted (see [`Counting`]) where
//! a test is about the supervisor's memory.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use procpool::{Pool, PoolBuilder, PoolError, RetryPolicy, Shutdown, Task, TaskError};
use procpool_demo_tasks as demo;
use support::{
    assert_no_children, demo_pool, demo_worker, eventually, fake_worker_script, is_gone, python3,
    serial,
};

/// Counts the live heap bytes of this process and their peak, so a test can bound what
/// the supervisor holds (RSS would also count freed memory the allocator kept).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Starts a peak measurement: returns the live bytes now, and the peak restarts there.
fn peak_from_here() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

const MIB: usize = 1 << 20;

/// A generous bound for something that must happen "at once": a loaded 2-CPU machine
/// may be slow, but not this slow.
const SOON: Duration = Duration::from_secs(20);

fn prefetch_pool(workers: usize, prefetch: usize) -> Pool {
    Pool::builder()
        .worker(demo_worker())
        .workers(workers)
        .prefetch(prefetch)
        .build()
        .expect("the demo worker pool starts")
}

fn fake(mode: &str, n: usize) -> PoolBuilder {
    let mut b = Pool::builder();
    b.worker(python3())
        .worker_args([OsString::from(fake_worker_script()), OsString::from(mode)])
        .workers(n);
    b
}

fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill our own worker");
}

/// Defect 1: a task flooding messages nobody reads must not grow the supervisor without
/// bound. The handle is kept and never read: the task fails with `limit_exceeded` once
/// the unread messages pass the inbox bound (64 MiB by default), and the supervisor never
/// held much more than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_unread_messages_are_bounded_and_fail_the_task() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let base = peak_from_here();
    let h = pool.submit(demo::flood::task(300, MIB as u64));
    let outcome = tokio::time::timeout(SOON, h).await.expect("the flood ends");
    let grown = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    match outcome {
        Err(TaskError::LimitExceeded { message }) => {
            assert!(message.contains("unread"), "{message}")
        }
        other => panic!("expected limit_exceeded for unread messages, got {other:?}"),
    }
    assert!(
        grown < 128 * MIB,
        "the supervisor grew by {} MiB",
        grown / MIB
    );
    // The worker was replaced and the pool serves on.
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);
    drop(pool);
    assert_no_children();
}

/// Defect 1, second half: after the handle is dropped nobody can read the messages; they
/// are discarded instead of piling up, and the detached task runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_messages_of_a_dropped_handle_are_discarded() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let base = peak_from_here();
    drop(pool.submit(demo::flood::task(300, MIB as u64)));
    // One worker: this runs after the flood ended.
    let after = tokio::time::timeout(SOON, pool.run(demo::add::task(1, 2)))
        .await
        .expect("the pool serves after the flood");
    assert_eq!(after.unwrap(), 3);
    let grown = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(
        grown < 32 * MIB,
        "the supervisor grew by {} MiB",
        grown / MIB
    );
    assert_eq!(
        pool.status().await.worker_starts,
        1,
        "the flood was not killed"
    );
    drop(pool);
    assert_no_children();
}

/// Defect 3: a prefetched task that was cancelled must not come back to the queue when
/// its worker dies before the worker saw the cancel; it ends `cancelled` and never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_cancelled_prefetched_task_never_runs() {
    let _serial = serial().await;
    let pool = prefetch_pool(1, 4);
    for round in 0..5 {
        let running = pool.submit(demo::sleep_ms::task(60_000));
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let queued = pool.submit(
            demo::progress::task(1, 0).on_progress(move |_| flag.store(true, Ordering::SeqCst)),
        );
        let pid = running.started().await.unwrap();
        // Both are in the worker's executor once nothing waits in the pool's queue.
        support::until_dispatched(&pool).await;
        // Cancel, then the running task "crashes" before the worker can act on the cancel.
        queued.cancel();
        sigkill(pid);
        let err = tokio::time::timeout(SOON, queued)
            .await
            .expect("the cancelled task resolves");
        assert_eq!(err.unwrap_err(), TaskError::Cancelled, "round {round}");
        assert!(
            !ran.load(Ordering::SeqCst),
            "round {round}: the cancelled task ran"
        );
        assert!(running.await.unwrap_err().is_crash());
    }
    drop(pool);
    assert_no_children();
}

/// Defect 3, retry side: a task cancelled while its crash is being turned into a retry
/// is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_cancelled_task_is_not_retried() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    for round in 0..5 {
        let h = pool.submit(demo::sleep_ms::task(60_000).retry(
            RetryPolicy::new(3).backoff(Duration::from_millis(1), Duration::from_millis(1)),
        ));
        let pid = h.started().await.unwrap();
        sigkill(pid);
        h.cancel();
        let err = tokio::time::timeout(SOON, h)
            .await
            .expect("the cancelled task resolves")
            .unwrap_err();
        // Either verdict is honest (which came first is a race), but it ran once.
        assert!(
            err.is_cancelled() || err.is_crash(),
            "round {round}: {err:?}"
        );
        let started_after: Vec<u32> = pool.worker_pids().await;
        assert!(!started_after.contains(&pid));
    }
    assert_eq!(pool.status().await.retrying, 0);
    drop(pool);
    assert_no_children();
}

/// Defect 5: a message above the frame limit is refused at `send` with a clear error; the
/// task and its worker are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_oversized_send_is_refused_not_a_crash() {
    let _serial = serial().await;
    let pool = Pool::builder()
        .worker(demo_worker())
        .workers(1)
        .max_frame_bytes(64 << 10)
        .build()
        .unwrap();
    let mut chat = pool.submit(demo::chat::task());
    let pid = chat.started().await.unwrap();
    let refused = chat.send(vec![1u8; 100 << 10]).unwrap_err();
    assert_eq!(refused.kind(), "message_too_large", "{refused}");
    assert!(refused.to_string().contains("frame limit"), "{refused}");
    chat.send("ab").unwrap();
    let answer = tokio::time::timeout(SOON, chat.recv()).await.unwrap();
    assert_eq!(answer.as_deref(), Some(&b"ba"[..]));
    chat.send("").unwrap();
    assert_eq!(chat.await.unwrap(), 1);
    assert_eq!(pool.worker_pids().await, vec![pid]);
    drop(pool);
    assert_no_children();
}

/// Defect 6: a progress callback that panics is the caller's bug, caught and logged; the
/// task still gets its own verdict and the pool stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_panicking_progress_callback_is_not_pool_closed() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let task = demo::progress::task(3, 0).on_progress(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        panic!("a callback bug");
    });
    tokio::time::timeout(SOON, pool.run(task))
        .await
        .expect("the task resolves")
        .expect("the task itself succeeded");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);
    assert_eq!(pool.status().await.worker_starts, 1);
    drop(pool);
    assert_no_children();
}

/// Defect 6: a deadline too far away to represent means "no deadline", not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_timeout_duration_max_saturates() {
    let _serial = serial().await;
    let pool = Pool::builder()
        .worker(demo_worker())
        .workers(1)
        .grace(Duration::MAX)
        .idle_timeout(Duration::MAX)
        .build()
        .unwrap();
    let out = tokio::time::timeout(
        SOON,
        pool.run(demo::sleep_ms::task(10).timeout(Duration::MAX)),
    )
    .await
    .expect("the task resolves");
    assert_eq!(out.unwrap(), 10);
    assert_eq!(pool.status().await.worker_starts, 1);
    drop(pool);
    assert_no_children();
}

/// Defect 7: `started()` of a task submitted after the pool shut down answers `None` at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_started_after_shutdown_returns_none() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    pool.shutdown(Shutdown::Kill).await;
    let h = pool.submit(demo::add::task(1, 2));
    let started = tokio::time::timeout(SOON, h.started()).await;
    assert_eq!(started, Ok(None));
    assert_eq!(h.await.unwrap_err(), TaskError::PoolClosed);
    drop(pool);
    assert_no_children();
}

/// Defect 7: prefetched tasks dropped by a kill shutdown never started: `started()` says
/// so instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_started_of_prefetched_tasks_after_kill_shutdown() {
    let _serial = serial().await;
    let pool = prefetch_pool(1, 4);
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let behind: Vec<_> = (0..3).map(|i| pool.submit(demo::add::task(i, 1))).collect();
    running.started().await.unwrap();
    support::until_dispatched(&pool).await;
    pool.shutdown(Shutdown::Kill).await;
    for h in behind {
        let started = tokio::time::timeout(SOON, h.started()).await;
        assert_eq!(started, Ok(None));
        assert_eq!(h.await.unwrap_err(), TaskError::PoolClosed);
    }
    assert_eq!(running.await.unwrap_err(), TaskError::PoolClosed);
    drop(pool);
    assert_no_children();
}

/// Defect 8: `Pool::run` must not leak a sender of the pool's command channel per call:
/// pools that ran tasks and were dropped leave nothing on the heap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_pool_run_leaks_nothing() {
    let _serial = serial().await;
    let cycle = || async {
        let pool = demo_pool(1);
        for i in 0..3 {
            assert_eq!(pool.run(demo::add::task(i, 1)).await.unwrap(), i + 1);
        }
        drop(pool);
    };
    // Warm-up: one-time allocations (thread locals, registries, the reaper's set).
    for _ in 0..3 {
        cycle().await;
    }
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..30 {
        cycle().await;
    }
    let after = LIVE.load(Ordering::Relaxed);
    let leaked = after.saturating_sub(before);
    assert!(leaked < 16 << 10, "30 pools left {leaked} bytes behind");
    assert_no_children();
}

/// Defect 9: a worker that ignores Shutdown is killed after the grace period; a drain
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_drain_kills_a_worker_that_ignores_shutdown() {
    let _serial = serial().await;
    let pool = fake("ignore_shutdown", 1)
        .grace(Duration::from_millis(200))
        .build()
        .unwrap();
    let pid = pool.worker_pids().await[0];
    let sum: serde_json::Value = pool
        .run(Task::json("add", serde_json::json!([1, 2])))
        .await
        .unwrap();
    assert_eq!(sum, 3);
    tokio::time::timeout(SOON, pool.shutdown(Shutdown::Drain))
        .await
        .expect("the drain ends");
    assert!(is_gone(pid));
    drop(pool);
    assert_no_children();
}

/// Defect 9, recycling: a worker retired after its task and ignoring Shutdown is killed
/// too, and its slot refilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_retiring_worker_that_ignores_shutdown_is_killed() {
    let _serial = serial().await;
    let pool = fake("ignore_shutdown", 1)
        .grace(Duration::from_millis(200))
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let first = pool.worker_pids().await[0];
    let sum: serde_json::Value = pool
        .run(Task::json("add", serde_json::json!([1, 2])))
        .await
        .unwrap();
    assert_eq!(sum, 3);
    assert!(
        eventually(SOON, || is_gone(first)).await,
        "the retired worker {first} still lives"
    );
    drop(pool);
    assert_no_children();
}

/// Defect 11: once a cancelled task's handle resolved, the pool's own view has the dead
/// worker gone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_status_reflects_a_cancel_once_its_handle_resolved() {
    let _serial = serial().await;
    for build in [true, false] {
        let pool = if build {
            demo_pool(1)
        } else {
            Pool::builder()
                .worker(demo_worker())
                .workers(1)
                .start()
                .await
                .unwrap()
        };
        for round in 0..10 {
            let h = pool.submit(demo::sleep_ms::task(60_000));
            let pid = h.started().await.unwrap();
            h.cancel();
            assert_eq!(h.await.unwrap_err(), TaskError::Cancelled);
            let pids = pool.worker_pids().await;
            assert!(
                !pids.contains(&pid),
                "build={build} round {round}: {pids:?}"
            );
            let status = pool.status().await;
            assert_eq!(status.busy, 0, "build={build} round {round}: {status:?}");
        }
        pool.shutdown(Shutdown::Kill).await;
        drop(pool);
    }
    assert_no_children();
}

/// Item 13: tasks handed to a worker's prefetch window keep their place in a bounded
/// queue until they start, so a crash that sends them back cannot overfill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_requeued_task_keeps_its_queue_permit() {
    let _serial = serial().await;
    let pool = Pool::builder()
        .worker(demo_worker())
        .workers(1)
        .prefetch(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let pid = running.started().await.unwrap();
    let prefetched = pool.submit(demo::add::task(1, 2));
    support::until_dispatched(&pool).await;
    // The prefetched task has not started: the queue is still full.
    let refused = pool.submit(demo::add::task(3, 4));
    assert_eq!(
        refused.await.unwrap_err(),
        TaskError::QueueFull { capacity: 1 }
    );
    sigkill(pid);
    assert!(running.await.unwrap_err().is_crash());
    assert_eq!(prefetched.await.unwrap(), 3);
    drop(pool);
    assert_no_children();
}

/// Item 13: a worker needs more than 10 descriptors for its channel; a lower
/// `rlimit_open_files` is refused when the pool is built, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_rlimit_open_files_below_11_is_refused_at_build() {
    let _serial = serial().await;
    let err = Pool::builder()
        .worker(demo_worker())
        .workers(1)
        .rlimit_open_files(8)
        .build()
        .expect_err("the pool must not start");
    match err {
        PoolError::Config(message) => assert!(message.contains("rlimit_open_files"), "{message}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let pool = Pool::builder()
        .worker(demo_worker())
        .workers(1)
        .rlimit_open_files(64)
        .build()
        .unwrap();
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);
    drop(pool);
    assert_no_children();
}

/// Item 13: the last drop of a pool on a runtime worker thread must not block that
/// thread while the supervisor thread finishes: here the supervisor is held up by a slow
/// progress callback that only a task of the same one-thread runtime can release.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn issue14_last_drop_does_not_block_a_runtime_thread() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let entered = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (e, r) = (entered.clone(), release.clone());
    let slow = demo::progress::task(1, 0).on_progress(move |_| {
        e.store(true, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(10);
        while !r.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let h = pool.submit(slow);
    assert!(eventually(SOON, || entered.load(Ordering::SeqCst)).await);
    let dropping = Arc::new(AtomicBool::new(false));
    let d = dropping.clone();
    // The release runs on the runtime's one worker thread, after the drop began there.
    let releaser = tokio::spawn(async move {
        while !d.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        release.store(true, Ordering::SeqCst);
    });
    let took = tokio::spawn(async move {
        let t0 = Instant::now();
        dropping.store(true, Ordering::SeqCst);
        drop(pool);
        t0.elapsed()
    })
    .await
    .unwrap();
    releaser.await.unwrap();
    assert!(
        took < Duration::from_secs(8),
        "the drop blocked for {took:?}"
    );
    let _ = h.await;
    assert_no_children();
}
