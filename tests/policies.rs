//! Black-box tests of the pool policies (issue 6) with real processes: timeouts with their
//! grace period, `max_rss`, rlimits, retries with backoff, recycling, elastic sizing,
//! crash-loop protection, the bounded queue, shutdown, and a
//! 1 000-cycle hygiene run. Every test takes `support::serial()` and ends by dropping its
//! pool and checking that no child process is left.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::time::{Duration, Instant};

use procpool::{Pool, PoolBuilder, RetryPolicy, Shutdown, Task, TaskError, TaskHandle};
use procpool_demo_tasks as demo;
use serde::de::DeserializeOwned;
use serde_json::json;
use support::{
    KillOnDrop, ProcStat, assert_no_children, children, demo_worker, fake_worker_script,
    group_members, is_gone, proc_stat, python3, serial, wait_until,
};

// ---------------------------------------------------------------------------------------
// Helpers

/// A builder for a pool of `n` demo workers.
fn demo(n: usize) -> PoolBuilder {
    let mut b = Pool::builder();
    b.worker(demo_worker()).workers(n);
    b
}

/// A builder for a pool of `n` fake python workers in `mode` (tests/fixtures/fake_worker.py),
/// sharing the marker file `marker`.
fn fake(mode: &str, n: usize, marker: &std::path::Path) -> PoolBuilder {
    let mut b = Pool::builder();
    b.worker(python3())
        .worker_args([OsString::from(fake_worker_script()), OsString::from(mode)])
        .env("FAKE_WORKER_MARKER", marker)
        .workers(n);
    b
}

/// Waits until `pid` is dead (gone or zombie) and says which, or `None` after `timeout`.
fn wait_dead(pid: u32, timeout: Duration) -> Option<String> {
    let mut how = None;
    wait_until(timeout, || match proc_stat(pid) {
        None => {
            how = Some("gone (reaped)".to_owned());
            true
        }
        Some(s) if s.state == 'Z' => {
            how = Some(format!("zombie, parent {}", s.ppid));
            true
        }
        Some(_) => false,
    });
    how
}

/// Pids of the workers once `n` of them are ready.
async fn ready_pids(pool: &Pool, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = pool.worker_pids().await;
        if pids.len() == n || Instant::now() > deadline {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Awaits a task while watching which workers it runs on: returns its outcome and the pid
/// of every attempt with the instant it was first seen. The pid of an attempt stays
/// visible until the next attempt starts, so a 1 ms poll sees every attempt separated by
/// a backoff of a few milliseconds or more.
async fn await_tracking<R: DeserializeOwned>(
    h: &mut TaskHandle<R>,
) -> (Result<R, TaskError>, Vec<(u32, Instant)>) {
    let mut seen: Vec<(u32, Instant)> = Vec::new();
    let note = |h: &TaskHandle<R>, seen: &mut Vec<(u32, Instant)>| {
        if let Some(pid) = h.worker_pid()
            && seen.last().map(|(p, _)| *p) != Some(pid)
        {
            seen.push((pid, Instant::now()));
        }
    };
    let out = loop {
        note(h, &mut seen);
        tokio::select! {
            out = &mut *h => break out,
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    };
    note(h, &mut seen);
    (out, seen)
}

fn pids_of(seen: &[(u32, Instant)]) -> Vec<u32> {
    seen.iter().map(|(p, _)| *p).collect()
}

/// `(soft, hard)` of one line of `/proc/<pid>/limits`, e.g. "Max cpu time".
fn proc_limit(pid: u32, name: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut rest = line[name.len()..].split_whitespace();
    Some((rest.next()?.to_owned(), rest.next()?.to_owned()))
}

/// This process's open descriptors, with what each points to.
fn open_fds() -> BTreeMap<u32, String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            Some((fd, target))
        })
        // The read_dir handle itself shows up as a directory under /proc.
        .filter(|(_, t)| !t.starts_with("/proc/"))
        .collect()
}

fn zombie_children() -> Vec<ProcStat> {
    children().into_iter().filter(|p| p.state == 'Z').collect()
}

/// Reads the grandchild's pid, the first message of a `grandchild` task.
async fn sleep_pid_of(h: &mut TaskHandle<()>, worker: u32) -> u32 {
    let msg = tokio::time::timeout(Duration::from_secs(2), h.recv())
        .await
        .expect("the grandchild pid arrives")
        .expect("a message");
    let pid: u32 = String::from_utf8(msg).unwrap().parse().unwrap();
    let stat = proc_stat(pid).expect("the grandchild runs");
    assert_eq!(stat.comm, "sleep");
    assert_eq!(stat.ppid, worker);
    assert_eq!(stat.pgrp, worker, "the grandchild is in the worker's group");
    pid
}

// ---------------------------------------------------------------------------------------
// Timeouts

/// Timeout with a 300 ms grace period: the demo worker dies of the SIGTERM at the deadline
/// (it does not handle it), the task is `timed_out`, the worker is reaped with its group
/// and a replacement serves the next task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_with_grace_is_timed_out_and_the_worker_replaced() {
    let _serial = serial().await;
    let grace = Duration::from_millis(300);
    let pool = demo(1).grace(grace).build().unwrap();
    let timeout = Duration::from_millis(200);

    let t0 = Instant::now();
    let h = pool.submit(demo::sleep_ms::task(60_000).timeout(timeout));
    let pid = h.started().await.unwrap();
    let err = h.await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("timeout 200 ms, grace 300 ms: timed_out after {took:?}");
    assert_eq!(err, TaskError::TimedOut { after: timeout });
    assert_eq!(err.kind(), "timed_out");
    assert!(err.is_timeout());
    assert!(took >= timeout, "verdict before the deadline: {took:?}");
    assert!(
        took < timeout + grace + Duration::from_secs(5),
        "timed_out after {took:?}"
    );
    assert!(
        is_gone(pid),
        "worker {pid} not reaped: {:?}",
        proc_stat(pid)
    );
    assert!(group_members(pid).is_empty());

    support::assert_serves_on_a_new_worker(&pool, pid, (1, 2)).await;
    drop(pool);
    assert_no_children();
}

/// Grace 0: SIGKILL at the deadline, no SIGTERM first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_with_zero_grace_kills_at_once() {
    let _serial = serial().await;
    let pool = demo(1).grace(Duration::ZERO).build().unwrap();
    let timeout = Duration::from_millis(200);
    let t0 = Instant::now();
    let h = pool.submit(demo::sleep_ms::task(60_000).timeout(timeout));
    let pid = h.started().await.unwrap();
    let err = h.await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("timeout 200 ms, grace 0: timed_out after {took:?}");
    assert_eq!(err, TaskError::TimedOut { after: timeout });
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(5),
        "{took:?}"
    );
    assert!(is_gone(pid));
    assert_eq!(pool.run(demo::add::task(2, 2)).await.unwrap(), 4);
    drop(pool);
    assert_no_children();
}

/// A worker that ignores SIGTERM shows both steps: it survives the deadline, and is
/// SIGKILLed when the grace period ends (not before); with grace 0 it is killed at the
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_ignoring_worker_is_killed_when_the_grace_ends() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(200);
    for grace in [Duration::from_millis(300), Duration::ZERO] {
        let pool = fake("ignore_term", 1, &dir.path().join("marker"))
            .grace(grace)
            .build()
            .unwrap();
        let t0 = Instant::now();
        let h = pool.submit(Task::json("add", json!([1, 2])).timeout(timeout));
        let pid = h.started().await.unwrap();
        if !grace.is_zero() {
            // Past the deadline, inside the grace period: SIGTERM sent, still alive.
            tokio::time::sleep_until((t0 + timeout + grace / 2).into()).await;
            assert!(
                proc_stat(pid).is_some_and(|s| s.state != 'Z'),
                "the worker died before the grace period ended"
            );
        }
        let err = h.await.unwrap_err();
        let took = t0.elapsed();
        eprintln!("SIGTERM-ignoring worker, grace {grace:?}: timed_out after {took:?}");
        assert_eq!(err, TaskError::TimedOut { after: timeout });
        assert!(
            took >= timeout + grace,
            "killed before the grace ended: {took:?}"
        );
        assert!(
            took < timeout + grace + Duration::from_secs(5),
            "timed_out after {took:?}"
        );
        assert!(is_gone(pid));
        drop(pool);
        assert_no_children();
    }
}

/// The pool's default timeout applies to tasks without one; a task's own timeout wins,
/// longer or shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_default_timeout_applies_and_a_task_timeout_overrides_it() {
    let _serial = serial().await;
    let default = Duration::from_millis(300);
    let pool = demo(1)
        .timeout(default)
        .grace(Duration::ZERO)
        .build()
        .unwrap();

    let t0 = Instant::now();
    let err = pool.run(demo::sleep_ms::task(60_000)).await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err, TaskError::TimedOut { after: default });
    assert!(
        took >= default && took < default + Duration::from_secs(5),
        "{took:?}"
    );

    // Longer: a 600 ms task under a 2 s timeout completes.
    let long = demo::sleep_ms::task(600).timeout(Duration::from_secs(2));
    assert_eq!(pool.run(long).await.unwrap(), 600);

    // Shorter: 100 ms beats the pool's 300 ms.
    let short = Duration::from_millis(100);
    let t0 = Instant::now();
    let err = pool
        .run(demo::sleep_ms::task(60_000).timeout(short))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err, TaskError::TimedOut { after: short });
    assert!(took >= short && took < default, "{took:?}");

    // Quick tasks are untouched by the default.
    assert_eq!(pool.run(demo::add::task(20, 22)).await.unwrap(), 42);
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------------------
// max_rss and rlimits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rss_kills_with_limit_exceeded_and_the_slot_recovers() {
    let _serial = serial().await;
    let pool = demo(1).max_rss(256 << 20).build().unwrap();
    // Under the limit: fine, same worker.
    let pid = pool.worker_pids().await[0];
    assert_eq!(pool.run(demo::alloc_mb::task(64)).await.unwrap(), 64);
    assert_eq!(pool.worker_pids().await, [pid]);

    let t0 = Instant::now();
    let err = pool.run(demo::alloc_mb::task(2048)).await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("alloc_mb(2048) under max_rss 256 MiB: {err} after {took:?}");
    match &err {
        TaskError::LimitExceeded { message } => {
            assert!(
                message.contains("256 MiB"),
                "the figure is missing: {message}"
            )
        }
        other => panic!("expected limit_exceeded, got {other:?}"),
    }
    assert_eq!(err.kind(), "limit_exceeded");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(is_gone(pid), "{:?}", proc_stat(pid));
    assert!(group_members(pid).is_empty());

    // The next task on that slot succeeds, on a fresh worker.
    support::assert_serves_on_a_new_worker(&pool, pid, (1, 2)).await;
    drop(pool);
    assert_no_children();
}

/// The limit of the peak tests: a demo worker idles at a few MiB, and `alloc_mb(PEAK_MB)`
/// is served by its own mapping (above the 32 MiB the worker keeps in its heap), touched
/// and unmapped within a few milliseconds: a peak the 20 ms readings mostly miss.
const PEAK_LIMIT: u64 = 32 << 20;
const PEAK_MB: u64 = 48;

/// Asserts that `err` is the verdict of a task whose memory went above [`PEAK_LIMIT`].
fn assert_over_peak_limit(err: &TaskError) {
    match err {
        TaskError::LimitExceeded { message } => {
            assert!(
                message.contains("32 MiB"),
                "the figure is missing: {message}"
            )
        }
        other => panic!("expected limit_exceeded, got {other:?}"),
    }
}

/// A task that allocates past `max_rss` and returns between two readings still ends
/// `limit_exceeded` (the worker's high-water mark is read at its end), every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_peak_between_two_readings_ends_limit_exceeded() {
    let _serial = serial().await;
    let pool = demo(1).max_rss(PEAK_LIMIT).build().unwrap();
    for _ in 0..20 {
        let pid = pool.worker_pids().await[0];
        let err = pool.run(demo::alloc_mb::task(PEAK_MB)).await.unwrap_err();
        assert_over_peak_limit(&err);
        // The worker that went over does not serve again (its memory may stay high).
        support::assert_serves_on_a_new_worker(&pool, pid, (1, 2)).await;
    }
    drop(pool);
    assert_no_children();
}

/// With a prefetch window each task's peak is its own: tasks over the limit fail, the
/// small ones sent behind them to the same worker complete (the high-water mark is reset
/// at each task's start, in the worker, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_peaks_are_per_task_in_a_prefetch_window() {
    let _serial = serial().await;
    let pool = demo(1).max_rss(PEAK_LIMIT).prefetch(8).build().unwrap();
    let (mut over, mut small, mut adds) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..20i64 {
        over.push(pool.submit(demo::alloc_mb::task(PEAK_MB)));
        small.push(pool.submit(demo::alloc_mb::task(1)));
        adds.push(pool.submit(demo::add::task(i, 1)));
    }
    for h in over {
        assert_over_peak_limit(&h.await.unwrap_err());
    }
    for h in small {
        assert_eq!(h.await, Ok(1), "a small task behind a memory peak");
    }
    for (i, h) in adds.into_iter().enumerate() {
        assert_eq!(h.await, Ok(i as i64 + 1), "a no-op behind a memory peak");
    }
    drop(pool);
    assert_no_children();
}

/// No false positive: tasks whose peaks stay under `max_rss` complete, one after another
/// on the same worker, however high the one before them went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_under_max_rss_complete_on_the_same_worker() {
    let _serial = serial().await;
    let pool = demo(1).max_rss(PEAK_LIMIT + (32 << 20)).build().unwrap();
    let pid = pool.worker_pids().await[0];
    for i in 0..20i64 {
        assert_eq!(
            pool.run(demo::alloc_mb::task(PEAK_MB - 8)).await,
            Ok(PEAK_MB - 8)
        );
        assert_eq!(pool.run(demo::add::task(i, 1)).await, Ok(i + 1));
    }
    assert_eq!(pool.worker_pids().await, [pid], "no worker was replaced");
    drop(pool);
    assert_no_children();
}

/// `rlimit_cpu_seconds(1)`: the worker gets SIGXCPU after one CPU second and the task
/// fails with `limit_exceeded` (as `PoolBuilder::rlimit_cpu_seconds` documents). The hard
/// limit sits one second above the soft one: with equal limits Linux sends SIGKILL first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimit_cpu_ends_a_spinning_task_with_limit_exceeded() {
    let _serial = serial().await;
    let pool = demo(1).rlimit_cpu_seconds(1).build().unwrap();
    let pid = pool.worker_pids().await[0];
    assert_eq!(
        proc_limit(pid, "Max cpu time"),
        Some(("1".into(), "2".into()))
    );
    let t0 = Instant::now();
    let err = pool.run(demo::spin_ms::task(60_000)).await.unwrap_err();
    let took = t0.elapsed();
    eprintln!("spin_ms(60000) under RLIMIT_CPU 1 s: {err} after {took:?}");
    match &err {
        TaskError::LimitExceeded { message } => {
            assert!(message.contains("RLIMIT_CPU"), "{message}")
        }
        other => panic!("expected limit_exceeded (SIGXCPU), got {other:?}"),
    }
    assert!(
        took > Duration::from_millis(500) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert!(is_gone(pid));
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);
    drop(pool);
    assert_no_children();
}

/// `rlimit_address_space` and `rlimit_open_files` are in force in the worker (read back
/// from /proc/<pid>/limits); an allocation past the address-space limit makes the Rust
/// allocator abort: `crashed` with SIGABRT, "memory allocation of N bytes failed" on
/// stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimit_address_space_and_open_files_are_applied() {
    let _serial = serial().await;
    let gib = 1u64 << 30;
    let pool = demo(1)
        .rlimit_address_space(gib)
        .rlimit_open_files(64)
        // With a backtrace (RUST_BACKTRACE inherited from the test run), the allocation
        // message scrolls out of the stderr tail the verdict keeps.
        .env("RUST_BACKTRACE", "0")
        .build()
        .unwrap();
    let pid = pool.worker_pids().await[0];
    assert_eq!(
        proc_limit(pid, "Max address space"),
        Some((gib.to_string(), gib.to_string()))
    );
    assert_eq!(
        proc_limit(pid, "Max open files"),
        Some(("64".into(), "64".into()))
    );
    // The worker works under its limits.
    assert_eq!(pool.run(demo::alloc_mb::task(64)).await.unwrap(), 64);
    assert_eq!(pool.worker_pids().await, [pid]);

    let err = pool.run(demo::alloc_mb::task(2048)).await.unwrap_err();
    eprintln!("alloc_mb(2048) under RLIMIT_AS 1 GiB: {err:?}");
    match &err {
        TaskError::Crashed {
            signal,
            stderr_tail,
            ..
        } => {
            assert_eq!(*signal, Some(6), "expected SIGABRT: {err:?}");
            assert!(
                stderr_tail
                    .iter()
                    .any(|l| l.contains("memory allocation of 2147483648 bytes failed")),
                "{stderr_tail:?}"
            );
        }
        other => panic!("expected crashed (SIGABRT), got {other:?}"),
    }
    assert!(is_gone(pid));
    // The replacement has the same limits.
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);
    let now = pool.worker_pids().await;
    assert_eq!(now.len(), 1);
    assert_eq!(
        proc_limit(now[0], "Max open files"),
        Some(("64".into(), "64".into()))
    );
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------------------
// Grandchildren

/// `grandchild(60)` timed out, then cancelled: its `sleep` dies with the worker's group
/// either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchild_timed_out_or_cancelled_leaves_no_sleep() {
    let _serial = serial().await;
    // Adopted by this process, the killed sleeps are reaped here instead of staying
    // zombies of a PID 1 that may never reap them.
    let reaper = procpool::OrphanReaper::start().expect("subreaper");
    let pool = demo(1).grace(Duration::from_millis(300)).build().unwrap();

    for cancel in [false, true] {
        let timeout = Duration::from_millis(400);
        let mut h = pool.submit(if cancel {
            demo::grandchild::task(60)
        } else {
            demo::grandchild::task(60).timeout(timeout)
        });
        let worker = h.started().await.unwrap();
        let sleep = sleep_pid_of(&mut h, worker).await;
        let _guard = KillOnDrop(vec![(sleep, "sleep".into())]);
        let t0 = Instant::now();
        if cancel {
            h.cancel();
            assert_eq!(h.await.unwrap_err(), TaskError::Cancelled);
        } else {
            assert_eq!(h.await.unwrap_err(), TaskError::TimedOut { after: timeout });
        }
        let verdict = t0.elapsed();
        if !cancel {
            assert!(verdict < timeout + Duration::from_secs(5), "{verdict:?}");
        }
        let how = wait_dead(sleep, Duration::from_secs(2));
        eprintln!(
            "grandchild {}: verdict after {verdict:?}, sleep {sleep} {} {:?} later",
            if cancel { "cancelled" } else { "timed out" },
            how.as_deref().unwrap_or("still alive"),
            t0.elapsed()
        );
        assert!(
            wait_until(Duration::from_secs(1), || is_gone(sleep)),
            "the sleep survived its worker, or was not reaped ({how:?}): {:?}",
            proc_stat(sleep)
        );
        assert!(is_gone(worker));
        assert!(group_members(worker).is_empty());
    }
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);
    drop(pool);
    assert_eq!(reaper.finish(), 0, "nothing left to kill");
    assert_no_children();
}

// ---------------------------------------------------------------------------------------
// Retries

fn short_backoff(retries: u32) -> RetryPolicy {
    RetryPolicy::new(retries).backoff(Duration::from_millis(40), Duration::from_millis(100))
}

/// A crash is retried: `exit(3)` with 2 retries runs 3 times, each on a new worker, and
/// fails `crashed` with code 3; every one of those workers is reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_retried_on_new_workers_until_the_policy_gives_up() {
    let _serial = serial().await;
    let pool = demo(1).build().unwrap();
    let first = pool.worker_pids().await[0];
    let mut h = pool.submit(demo::exit::task(3).retry(short_backoff(2)));
    let (out, seen) = await_tracking(&mut h).await;
    let err = out.unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::Crashed {
                exit_code: Some(3),
                signal: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(h.attempts(), 3);
    let pids = pids_of(&seen);
    assert_eq!(pids.len(), 3, "one worker per attempt: {pids:?}");
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3, "{pids:?}");
    assert_eq!(pids[0], first);
    for pid in &pids {
        assert!(
            is_gone(*pid),
            "worker {pid} not reaped: {:?}",
            proc_stat(*pid)
        );
    }
    let status = pool.status().await;
    assert_eq!(status.retrying, 0);
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);

    // A timeout is crash-class too: retried.
    let mut h = pool.submit(
        demo::sleep_ms::task(60_000)
            .timeout(Duration::from_millis(100))
            .retry(short_backoff(1)),
    );
    let (out, seen) = await_tracking(&mut h).await;
    assert!(out.unwrap_err().is_timeout());
    assert_eq!(h.attempts(), 2);
    assert_eq!(pids_of(&seen).len(), 2);
    drop(pool);
    assert_no_children();
}

/// The pool's default retry policy applies; a task's own policy overrides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_default_retry_applies_and_a_task_policy_overrides_it() {
    let _serial = serial().await;
    let pool = demo(1).retry(short_backoff(1)).build().unwrap();
    let mut h = pool.submit(demo::exit::task(4));
    assert_eq!((&mut h).await.unwrap_err().exit_code(), Some(4));
    assert_eq!(h.attempts(), 2, "pool default: 1 retry");
    let mut h = pool.submit(demo::exit::task(4).retry(RetryPolicy::NEVER));
    assert_eq!((&mut h).await.unwrap_err().exit_code(), Some(4));
    assert_eq!(h.attempts(), 1, "the task's own policy: no retry");
    let mut h = pool.submit(demo::exit::task(4).retry(short_backoff(3)));
    assert_eq!((&mut h).await.unwrap_err().exit_code(), Some(4));
    assert_eq!(h.attempts(), 4, "the task's own policy: 3 retries");
    drop(pool);
    assert_no_children();
}

/// User errors (and panics) are not retried unless the policy asks for it; when retried,
/// they run again on the same, still healthy, worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_are_retried_only_when_asked() {
    let _serial = serial().await;
    let pool = demo(1).build().unwrap();
    let pid = pool.worker_pids().await[0];

    let mut h = pool.submit(demo::fail::task("no".into()).retry(short_backoff(2)));
    assert_eq!((&mut h).await.unwrap_err().kind(), "user_error");
    assert_eq!(h.attempts(), 1);

    let mut h = pool.submit(demo::panic::task("oops".into()).retry(short_backoff(2)));
    assert_eq!((&mut h).await.unwrap_err().kind(), "panicked");
    assert_eq!(h.attempts(), 1);

    let mut h =
        pool.submit(demo::fail::task("no".into()).retry(short_backoff(2).also_task_errors()));
    let (out, seen) = await_tracking(&mut h).await;
    assert_eq!(out.unwrap_err().kind(), "user_error");
    assert_eq!(h.attempts(), 3);
    assert_eq!(
        pids_of(&seen),
        [pid],
        "a user error does not cost the worker"
    );
    assert_eq!(pool.worker_pids().await, [pid]);
    drop(pool);
    assert_no_children();
}

/// A task whose first attempt crashes its worker and whose second succeeds completes,
/// with `attempts() == 2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_then_a_success_completes_on_the_second_attempt() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = fake("crash_first_run", 1, &dir.path().join("marker"))
        .build()
        .unwrap();
    let mut h = pool.submit(Task::json("add", json!([1, 2])).retry(short_backoff(2)));
    let (out, seen) = await_tracking(&mut h).await;
    assert_eq!(out.unwrap(), json!(3));
    assert_eq!(h.attempts(), 2);
    let pids = pids_of(&seen);
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_ne!(pids[0], pids[1]);
    assert!(is_gone(pids[0]));
    // Without retries the same crash is final.
    std::fs::remove_file(dir.path().join("marker")).unwrap();
    let mut h = pool.submit(Task::json("add", json!([1, 2])));
    let err = (&mut h).await.unwrap_err();
    assert_eq!(err.exit_code(), Some(1), "{err:?}");
    assert_eq!(h.attempts(), 1);
    drop(pool);
    assert_no_children();
}

/// The backoff is waited out: with a 200 ms base the delays are at least 100 ms then
/// 200 ms (equal jitter: half fixed), at most 200 ms then 400 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backoff_delays_are_respected() {
    let _serial = serial().await;
    let pool = demo(1).build().unwrap();
    let policy = RetryPolicy::new(2).backoff(Duration::from_millis(200), Duration::from_secs(1));
    let t0 = Instant::now();
    let mut h = pool.submit(demo::exit::task(3).retry(policy));
    let (out, seen) = await_tracking(&mut h).await;
    let took = t0.elapsed();
    assert!(out.unwrap_err().is_crash());
    assert_eq!(h.attempts(), 3);
    assert_eq!(seen.len(), 3);
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!("backoff 200 ms base: attempts {gaps:?} apart, {took:?} in all");
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(200), "{gaps:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(pool);
    assert_no_children();
}

/// A cancel during the backoff resolves `Cancelled` at once, and the task never runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_backoff_ends_the_task_for_good() {
    let _serial = serial().await;
    let pool = demo(1).build().unwrap();
    // A backoff far longer than any bound below: "at once" cannot mean "after it".
    let policy = RetryPolicy::new(3).backoff(Duration::from_secs(60), Duration::from_secs(60));
    let mut h = pool.submit(demo::exit::task(3).retry(policy));
    let first = h.started().await.unwrap();
    // Wait for the crash: the task then waits out its backoff (30..=60 s).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = pool.status().await;
        if status.retrying == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never retrying: {status:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(is_gone(first));
    assert_eq!(h.attempts(), 1);
    let t0 = Instant::now();
    h.cancel();
    assert_eq!((&mut h).await.unwrap_err(), TaskError::Cancelled);
    let took = t0.elapsed();
    eprintln!("cancel during the backoff resolved in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Taken out of the retry list before it resolved: one attempt, nothing queued,
    // retrying or running, and so nothing left to run it again.
    assert_eq!(h.attempts(), 1, "the cancelled task ran again");
    let status = pool.status().await;
    assert_eq!(
        (status.retrying, status.queued, status.busy),
        (0, 0, 0),
        "{status:?}"
    );
    assert_eq!(
        status.worker_starts, 2,
        "initial worker and its replacement only"
    );
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------------------
// Recycling

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_per_worker_recycles_workers() {
    let _serial = serial().await;
    for (per_worker, tasks) in [(1u64, 5usize), (3, 9)] {
        let pool = demo(1).max_tasks_per_worker(per_worker).build().unwrap();
        let mut pids = Vec::new();
        for i in 0..tasks {
            let mut h = pool.submit(demo::add::task(i as i64, 1));
            assert_eq!((&mut h).await.unwrap(), i as i64 + 1);
            pids.push(h.worker_pid().expect("the task ran"));
        }
        eprintln!("max_tasks_per_worker({per_worker}): pids {pids:?}");
        let distinct: HashSet<u32> = pids.iter().copied().collect();
        assert_eq!(distinct.len(), tasks / per_worker as usize, "{pids:?}");
        for chunk in pids.chunks(per_worker as usize) {
            assert!(chunk.iter().all(|p| *p == chunk[0]), "{pids:?}");
        }
        for w in pids.windows(2) {
            if w[0] != w[1] {
                assert!(
                    wait_until(Duration::from_secs(1), || is_gone(w[0])),
                    "recycled worker {} not reaped: {:?}",
                    w[0],
                    proc_stat(w[0])
                );
            }
        }
        drop(pool);
        assert_no_children();
    }
}

// ---------------------------------------------------------------------------------------
// Elastic sizing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_pool_grows_under_a_burst_and_reaps_idle_workers() {
    let _serial = serial().await;
    let idle_timeout = Duration::from_millis(200);
    let pool = demo(3)
        .min_workers(1)
        .idle_timeout(idle_timeout)
        .build()
        .unwrap();
    let status = pool.status().await;
    assert_eq!(
        (status.starting, status.idle, status.busy),
        (0, 1, 0),
        "{status:?}"
    );
    let first = pool.worker_pids().await;
    assert_eq!(first.len(), 1);
    assert_eq!(children().len(), 1);

    let burst: Vec<_> = (0..3)
        .map(|_| pool.submit(demo::sleep_ms::task(300)))
        .collect();
    let t0 = Instant::now();
    let mut max_busy = 0;
    loop {
        let status = pool.status().await;
        max_busy = max_busy.max(status.busy);
        if status.busy == 3 || t0.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("elastic: 3 busy after {:?}", t0.elapsed());
    assert_eq!(max_busy, 3, "the pool did not grow to 3 busy workers");
    let mut burst_pids = Vec::new();
    for h in &burst {
        burst_pids.push(h.started().await.unwrap());
    }
    for h in burst {
        assert_eq!(h.await.unwrap(), 300);
    }
    let ended = Instant::now();
    let all: HashSet<u32> = burst_pids.iter().copied().collect();
    assert_eq!(all.len(), 3, "{burst_pids:?}");
    assert_eq!(pool.worker_pids().await.len(), 3);

    // Back to one serving worker once the idle timeout passed.
    let shrunk = loop {
        let status = pool.status().await;
        if status.idle + status.busy + status.starting == 1 {
            break ended.elapsed();
        }
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "never shrank: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(
        wait_until(Duration::from_secs(1), || children().len() == 1),
        "{:?}",
        children()
    );
    let reaped_after = ended.elapsed();
    eprintln!("elastic: back to 1 worker {shrunk:?} after the burst, reaped by {reaped_after:?}");
    assert!(
        shrunk >= idle_timeout - Duration::from_millis(50) && shrunk <= Duration::from_secs(5),
        "shrank {shrunk:?} after the burst"
    );
    // A retired worker is reaped before its executor reports the exit (it first drains
    // the worker's stderr), so the pool may list it a moment longer than the kernel does.
    let left = loop {
        let pids = pool.worker_pids().await;
        if pids.len() == 1 {
            break pids;
        }
        assert!(ended.elapsed() < Duration::from_secs(10), "{pids:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    for pid in all.iter().filter(|p| !left.contains(p)) {
        assert!(
            is_gone(*pid),
            "idle-reaped worker {pid}: {:?}",
            proc_stat(*pid)
        );
    }
    assert!(zombie_children().is_empty());
    let status = pool.status().await;
    assert_eq!((status.idle, status.busy), (1, 0), "{status:?}");
    // And it still serves.
    assert_eq!(pool.run(demo::add::task(1, 1)).await.unwrap(), 2);
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------------------
// Crash-loop protection

/// The first worker starts and dies under its task; every replacement dies before its
/// handshake. After a bounded number of such start failures, the queued tasks fail with
/// `pool_unhealthy` carrying the worker's stderr, new ones are refused the same way, and
/// the pool does not spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_makes_the_pool_unhealthy_instead_of_hanging() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = fake("start_once", 1, &dir.path().join("marker"))
        .build()
        .unwrap();
    assert_eq!(pool.status().await.unhealthy, None);
    let first = pool.submit(Task::json("add", json!([1, 2])));
    let queued: Vec<_> = (0..3)
        .map(|i| pool.submit(Task::json("add", json!([i, 1]))))
        .collect();
    let err = first.await.unwrap_err();
    let crashed_at = Instant::now();
    assert_eq!(err.exit_code(), Some(1), "{err:?}");

    for h in queued {
        let err = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("a queued task hangs in a crash loop")
            .unwrap_err();
        match &err {
            TaskError::PoolUnhealthy { message } => assert!(
                message.contains("fake_worker: refusing to start again"),
                "the worker's stderr is missing: {message}"
            ),
            other => panic!("expected pool_unhealthy, got {other:?}"),
        }
        assert_eq!(err.kind(), "pool_unhealthy");
    }
    let took = crashed_at.elapsed();
    let status = pool.status().await;
    eprintln!("crash loop: queued tasks failed {took:?} after the crash; {status:?}");
    let unhealthy = status.unhealthy.expect("status().unhealthy is set");
    assert!(unhealthy.contains("refusing to start again"), "{unhealthy}");

    // New tasks are refused at once with the same cause.
    let t0 = Instant::now();
    let err = pool
        .run(Task::json("add", json!([1, 1])))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "pool_unhealthy");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // No busy loop: restarts keep backing off.
    let starts = status.worker_starts;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = pool.status().await.worker_starts;
    eprintln!("crash loop: {starts} worker starts, {later} one second later");
    assert!(starts <= 8, "{starts} starts before giving up");
    assert!(
        later - starts <= 3,
        "{} restarts in one second",
        later - starts
    );
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------------------
// Backpressure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_queue_refuses_or_waits() {
    let _serial = serial().await;
    let pool = demo(1).queue_capacity(2).build().unwrap();
    let busy = pool.submit(demo::sleep_ms::task(500));
    let busy_started = Instant::now();
    busy.started().await.unwrap();
    let q1 = pool.submit(demo::add::task(1, 1));
    let q2 = pool.submit(demo::add::task(2, 2));
    let status = pool.status().await;
    assert_eq!((status.busy, status.queued), (1, 2), "{status:?}");

    let t0 = Instant::now();
    let err = pool.submit(demo::add::task(3, 3)).await.unwrap_err();
    assert_eq!(err, TaskError::QueueFull { capacity: 2 });
    assert_eq!(err.kind(), "queue_full");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // enqueue waits for room: the busy task must end and q1 leave the queue.
    let t0 = Instant::now();
    let q3 = pool.enqueue(demo::add::task(4, 4)).await;
    let waited = t0.elapsed();
    eprintln!(
        "enqueue waited {waited:?} (busy task started {:?} before)",
        t0 - busy_started
    );
    assert!(
        waited >= Duration::from_millis(300),
        "enqueue did not wait for room: {waited:?}"
    );
    assert!(busy_started.elapsed() >= Duration::from_millis(500));
    assert_eq!(busy.await.unwrap(), 500);
    assert_eq!(q1.await.unwrap(), 2);
    assert_eq!(q2.await.unwrap(), 4);
    assert_eq!(q3.await.unwrap(), 8);
    // `run` waits too, and the queue is usable again.
    assert_eq!(pool.run(demo::add::task(5, 5)).await.unwrap(), 10);
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------------------
// Shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drain_finishes_everything_and_reaps_every_worker() {
    let _serial = serial().await;
    let pool = demo(2).build().unwrap();
    let pids = pool.worker_pids().await;
    let running: Vec<_> = (0..2)
        .map(|_| pool.submit(demo::sleep_ms::task(300)))
        .collect();
    for h in &running {
        h.started().await.unwrap();
    }
    let queued: Vec<_> = (0..4)
        .map(|i| pool.submit(demo::add::task(i, 10)))
        .collect();
    let t0 = Instant::now();
    pool.shutdown(Shutdown::Drain).await;
    let took = t0.elapsed();
    eprintln!("drain of 2 running + 4 queued tasks took {took:?}");
    // Every worker reaped by the time shutdown returns.
    assert_no_children();
    for pid in &pids {
        assert!(is_gone(*pid));
    }
    assert!(took >= Duration::from_millis(200), "{took:?}");
    for h in running {
        assert_eq!(h.await.unwrap(), 300);
    }
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i as i64 + 10);
    }
    assert_eq!(
        pool.run(demo::add::task(1, 1)).await.unwrap_err(),
        TaskError::PoolClosed
    );
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kill_during_a_drain_kills_at_once() {
    let _serial = serial().await;
    let pool = demo(1).build().unwrap();
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let pid = running.started().await.unwrap();
    let queued = pool.submit(demo::add::task(1, 2));

    let draining = pool.clone();
    let mut drain = Box::pin(async move { draining.shutdown(Shutdown::Drain).await });
    // The first poll sends the drain order; the status query, queued behind it, comes
    // back once the dispatcher took it in, and the drain must still wait for the sleep.
    assert!(futures::poll!(drain.as_mut()).is_pending());
    pool.status().await;
    assert!(
        futures::poll!(drain.as_mut()).is_pending(),
        "the drain must wait for the sleep"
    );
    assert!(!is_gone(pid));

    let t0 = Instant::now();
    pool.shutdown(Shutdown::Kill).await;
    let took = t0.elapsed();
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("the drain returns once the kill is done");
    eprintln!("Kill during a drain returned after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(is_gone(pid));
    assert_no_children();
    assert_eq!(running.await.unwrap_err(), TaskError::PoolClosed);
    // Queued behind the sleep on the only worker: the drain was still waiting to run it.
    assert_eq!(queued.await.unwrap_err(), TaskError::PoolClosed);
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------------------
// Hygiene

/// One fault of kind `i % 3`: a segfault, a cancel of a running sleep, an exit(1).
async fn one_fault(pool: &Pool, i: usize) {
    match i % 3 {
        0 => {
            let err = pool.run(demo::segfault::task()).await.unwrap_err();
            assert_eq!(err.exit_signal(), Some(11), "{err:?}");
        }
        1 => {
            let h = pool.submit(demo::sleep_ms::task(60_000));
            h.started().await.expect("the sleep starts");
            h.cancel();
            assert_eq!(h.await.unwrap_err(), TaskError::Cancelled);
        }
        _ => {
            let err = pool.run(demo::exit::task(1)).await.unwrap_err();
            assert_eq!(err.exit_code(), Some(1), "{err:?}");
        }
    }
}

/// 1 000 crash / kill / replace cycles on a 2-worker pool (two streams of faults side by
/// side) leave this process's descriptors and zombie children where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_crash_kill_replace_cycles_leak_nothing() {
    let _serial = serial().await;
    let pool = demo(2).build().unwrap();
    // Warm up (lazily created runtime resources, first replacements), then settle.
    for i in 0..6 {
        one_fault(&pool, i).await;
    }
    ready_pids(&pool, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fds_before = open_fds();
    let zombies_before = zombie_children().len();

    let t0 = Instant::now();
    let streams: Vec<_> = (0..2)
        .map(|s| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    one_fault(&pool, i + s).await;
                }
            })
        })
        .collect();
    for s in streams {
        s.await.unwrap();
    }
    let took = t0.elapsed();
    let starts = pool.status().await.worker_starts;

    assert_eq!(ready_pids(&pool, 2).await.len(), 2);
    let mut fds_after = open_fds();
    let settled = wait_until(Duration::from_secs(1), || {
        fds_after = open_fds();
        fds_after.len() == fds_before.len()
    });
    let zombies_after = zombie_children();
    eprintln!(
        "1000 cycles in {took:?} ({starts} worker starts); fds {} -> {}, zombies {zombies_before} -> {}",
        fds_before.len(),
        fds_after.len(),
        zombies_after.len()
    );
    assert!(
        settled,
        "open descriptors {} before, {} after: new {:?}, closed {:?}",
        fds_before.len(),
        fds_after.len(),
        fds_after
            .iter()
            .filter(|(fd, t)| fds_before.get(fd) != Some(t))
            .collect::<Vec<_>>(),
        fds_before
            .iter()
            .filter(|(fd, t)| fds_after.get(fd) != Some(t))
            .collect::<Vec<_>>()
    );
    assert_eq!(zombies_after.len(), zombies_before, "{zombies_after:?}");
    assert_eq!(children().len(), 2, "{:?}", children());
    assert!(starts >= 1000, "{starts} worker starts for 1000 faults");
    drop(pool);
    assert_no_children();
}
