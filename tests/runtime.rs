//! Pools on the caller's tokio runtime (`PoolBuilder::start`), with real `procpool-demo`
//! workers, each test on a multi-thread and on a current-thread runtime: results, progress
//! and messages, cancel, timeout, crash, recycling and elastic sizing, drop and shutdown,
//! blocking waits, start-up failures, and SIGKILL of a process that started a pool.
//!
//! On a current-thread runtime the pool's executors run only while the test awaits, so
//! every wait for the pool here is async; blocking polls only look at what the kernel does
//! (a SIGKILLed worker dies whether the runtime runs or not).

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procpool::{Pool, PoolBuilder, PoolError, RetryPolicy, Shutdown, Task, TaskError};
use procpool_demo_tasks as demo;
use serde_json::json;
use support::{
    KillOnDrop, children, demo_worker, eventually, group_members, is_gone, proc_stat, serial,
    wait_until,
};

/// A builder for `n` demo workers.
fn demo_builder(n: usize) -> PoolBuilder {
    let mut b = Pool::builder();
    b.worker(demo_worker()).workers(n);
    b
}

/// A pool of `n` demo workers on the current runtime.
async fn started(n: usize) -> Pool {
    demo_builder(n)
        .start()
        .await
        .expect("the demo worker pool starts")
}

/// The message of a caught panic (empty if its payload is not a string).
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Waits (yielding to the runtime, whose executors reap) until this process has no child
/// left, running or zombie.
async fn assert_no_children_soon() {
    let clean = eventually(Duration::from_secs(2), || children().is_empty()).await;
    assert!(clean, "child processes left behind: {:?}", children());
}

/// Dead: gone, or a zombie waiting for its reaper.
fn dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z')
}

/// Each listed test body runs on a multi-thread runtime (2 workers) and on a
/// current-thread runtime: `multi_thread::NAME` and `current_thread::NAME`.
macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod multi_thread {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name().await
                }
            )*
        }
        mod current_thread {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    super::$name().await
                }
            )*
        }
    };
}

on_both_runtimes!(
    results_progress_and_messages,
    cancel_kills_and_reaps_the_worker,
    timeout_kills_the_worker,
    crash_is_typed_and_retried,
    recycling_and_elastic_sizing,
    drop_kills_every_worker_at_once,
    shutdown_drain_and_kill_reap_every_worker,
    blocking_waits_work_off_the_runtime_threads,
    start_failures_leave_nothing_running,
    workers_outlive_the_thread_that_started_the_pool,
    sigkill_of_the_process_leaves_no_worker,
);

async fn results_progress_and_messages() {
    let _serial = serial().await;
    let pool = started(2).await;
    let pids = pool.worker_pids().await;
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        assert_eq!(proc_stat(*pid).unwrap().ppid, std::process::id());
    }
    assert!(pool.tasks().iter().any(|t| t.name == "add"));

    // Typed and JSON, several in flight.
    let handles: Vec<_> = (0..8).map(|i| pool.submit(demo::add::task(i, 1))).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i as i64 + 1);
    }
    let sum = pool.run(Task::json("add", json!([20, 22]))).await.unwrap();
    assert_eq!(sum, 42);

    // Progress, in order and before the result.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    pool.run(demo::progress::task(3, 0).on_progress(move |p| {
        log.lock().unwrap().push(p.message.clone());
    }))
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["step 1/3", "step 2/3", "step 3/3"]);

    // Messages both ways.
    let mut chat = pool.submit(demo::chat::task());
    assert!(pids.contains(&chat.started().await.unwrap()));
    chat.send("abc").unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), chat.recv()).await;
    assert_eq!(answer.unwrap().as_deref(), Some(&b"cba"[..]));
    chat.send("").unwrap();
    assert_eq!(chat.await.unwrap(), 1);

    // Typed errors that cost no worker.
    let err = pool.run(demo::fail::task("no".into())).await.unwrap_err();
    assert_eq!(err.kind(), "user_error");
    let err = pool
        .run(demo::panic::task("boom".into()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "panicked");
    assert_eq!(pool.worker_pids().await, pids);
    pool.shutdown(Shutdown::Kill).await;
    assert!(children().is_empty(), "{:?}", children());
}

async fn cancel_kills_and_reaps_the_worker() {
    let _serial = serial().await;
    let pool = started(1).await;
    let h = pool.submit(demo::sleep_ms::task(60_000));
    let pid = h.started().await.unwrap();
    let queued = pool.submit(demo::add::task(1, 1));
    queued.cancel();
    assert_eq!(queued.await.unwrap_err(), TaskError::Cancelled);

    h.cancel();
    assert_eq!(h.await.unwrap_err(), TaskError::Cancelled);
    // Killed with its group and reaped before the handle resolved.
    assert!(
        is_gone(pid),
        "worker {pid} still there: {:?}",
        proc_stat(pid)
    );
    assert!(group_members(pid).is_empty());
    support::assert_serves_on_a_new_worker(&pool, pid, (2, 3)).await;

    // A dropped `run` future cancels its task the same way.
    let run = pool.run(demo::sleep_ms::task(60_000));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), run)
            .await
            .is_err()
    );
    assert_eq!(pool.run(demo::add::task(2, 2)).await.unwrap(), 4);
    drop(pool);
    assert_no_children_soon().await;
}

async fn timeout_kills_the_worker() {
    let _serial = serial().await;
    let pool = demo_builder(1)
        .grace(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids().await[0];
    let err = pool
        .run(demo::sleep_ms::task(60_000).timeout(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        TaskError::TimedOut {
            after: Duration::from_millis(200)
        }
    );
    assert!(is_gone(pid), "{:?}", proc_stat(pid));
    support::assert_serves_on_a_new_worker(&pool, pid, (4, 5)).await;
    drop(pool);
    assert_no_children_soon().await;
}

async fn crash_is_typed_and_retried() {
    let _serial = serial().await;
    let pool = started(2).await;
    let err = pool.run(demo::segfault::task()).await.unwrap_err();
    assert!(err.is_crash(), "{err:?}");
    assert_eq!(err.exit_signal(), Some(11));
    let err = pool.run(demo::exit::task(3)).await.unwrap_err();
    assert_eq!(err.exit_code(), Some(3));

    // A crash is retried on a fresh worker, up to the policy.
    let mut h = pool
        .submit(demo::abort::task().retry(
            RetryPolicy::new(1).backoff(Duration::from_millis(1), Duration::from_millis(1)),
        ));
    let err = (&mut h).await.unwrap_err();
    assert_eq!(err.exit_signal(), Some(6), "{err:?}");
    assert_eq!(h.attempts(), 2);
    assert_eq!(pool.run(demo::add::task(1, 2)).await.unwrap(), 3);
    drop(pool);
    assert_no_children_soon().await;
}

async fn recycling_and_elastic_sizing() {
    let _serial = serial().await;
    // A fresh process per task: every spawn goes through the spawner thread.
    let pool = demo_builder(2)
        .max_tasks_per_worker(1)
        .start()
        .await
        .unwrap();
    let mut pids = std::collections::HashSet::new();
    for i in 0..4 {
        let mut h = pool.submit(demo::chat::task());
        pids.insert(h.started().await.unwrap());
        h.send("").unwrap();
        assert_eq!((&mut h).await.unwrap(), 0, "task {i}");
    }
    assert_eq!(pids.len(), 4, "{pids:?}");
    drop(pool);
    assert_no_children_soon().await;

    // Elastic: no worker kept warm; grows on demand, shrinks when idle.
    let pool = demo_builder(2)
        .min_workers(0)
        .idle_timeout(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        pool.run(demo::sleep_ms::task(50)),
        pool.run(demo::sleep_ms::task(50))
    );
    assert_eq!((a.unwrap(), b.unwrap()), (50, 50));
    let mut last;
    let shrunk = {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let s = pool.status().await;
            let done = s.idle + s.busy + s.starting == 0;
            last = Some(s);
            if done || Instant::now() > deadline {
                break done;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert!(shrunk, "the pool did not shrink: {last:?}");
    assert!(eventually(Duration::from_secs(2), || children().is_empty()).await);
    assert_eq!(pool.run(demo::add::task(1, 1)).await.unwrap(), 2);
    drop(pool);
    assert_no_children_soon().await;
}

async fn drop_kills_every_worker_at_once() {
    let _serial = serial().await;
    let pool = started(2).await;
    let busy = pool.submit(demo::sleep_ms::task(60_000));
    busy.started().await.unwrap();
    let pids = pool.worker_pids().await;
    assert_eq!(pids.len(), 2);

    drop(pool);
    // The drop itself sent the SIGKILLs: the workers die without the runtime running
    // (this blocking poll keeps a current-thread runtime from doing anything).
    let all_dead = wait_until(Duration::from_secs(1), || pids.iter().all(|p| dead(*p)));
    assert!(
        all_dead,
        "{:?}",
        pids.iter().map(|p| proc_stat(*p)).collect::<Vec<_>>()
    );
    // The running task ends as the pool closing, not as a crash.
    assert_eq!(busy.await.unwrap_err(), TaskError::PoolClosed);
    // And the runtime's executors reap them.
    assert_no_children_soon().await;
    assert!(pids.iter().all(|p| is_gone(*p)));
}

async fn shutdown_drain_and_kill_reap_every_worker() {
    let _serial = serial().await;
    let pool = started(2).await;
    let handles: Vec<_> = (0..6)
        .map(|_| pool.submit(demo::sleep_ms::task(30)))
        .collect();
    pool.shutdown(Shutdown::Drain).await;
    // Every worker reaped before shutdown returned; every task finished.
    assert!(children().is_empty(), "{:?}", children());
    for h in handles {
        assert_eq!(h.await.unwrap(), 30);
    }
    assert_eq!(
        pool.run(demo::add::task(1, 1)).await.unwrap_err(),
        TaskError::PoolClosed
    );
    drop(pool);

    let pool = started(2).await;
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let pid = running.started().await.unwrap();
    let queued: Vec<_> = (0..3)
        .map(|_| pool.submit(demo::sleep_ms::task(60_000)))
        .collect();
    pool.shutdown(Shutdown::Kill).await;
    assert!(children().is_empty(), "{:?}", children());
    assert!(is_gone(pid));
    assert_eq!(running.await.unwrap_err(), TaskError::PoolClosed);
    for h in queued {
        assert_eq!(h.await.unwrap_err(), TaskError::PoolClosed);
    }
}

async fn blocking_waits_work_off_the_runtime_threads() {
    let _serial = serial().await;
    let pool = started(1).await;
    // From a blocking-pool thread: fine on either runtime.
    let p = pool.clone();
    let (answer, chatted, sum) = tokio::task::spawn_blocking(move || {
        let mut h = p.submit(demo::chat::task());
        h.send("xy").unwrap();
        let answer = h.recv_blocking();
        h.send("").unwrap();
        (answer, h.wait(), p.run_blocking(demo::add::task(3, 4)))
    })
    .await
    .unwrap();
    assert_eq!(answer.as_deref(), Some(&b"yx"[..]));
    assert_eq!(chatted.unwrap(), 1);
    assert_eq!(sum.unwrap(), 7);

    // On the runtime's own thread: block_in_place on a multi-thread runtime; a panic, not
    // a deadlock, on a current-thread one.
    let on_runtime = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run_blocking(demo::add::task(5, 6))
    }));
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => {
            let panic = on_runtime.expect_err("a blocking wait on the runtime thread panics");
            let message = panic_text(panic.as_ref());
            assert!(message.contains("would deadlock"), "{message}");
        }
        _ => assert_eq!(on_runtime.unwrap().unwrap(), 11),
    }
    assert_eq!(pool.run(demo::add::task(1, 1)).await.unwrap(), 2);
    drop(pool);
    assert_no_children_soon().await;
}

async fn start_failures_leave_nothing_running() {
    let _serial = serial().await;
    let missing = "/nonexistent/procpool-worker";
    let err = Pool::builder()
        .worker(missing)
        .workers(2)
        .start()
        .await
        .unwrap_err();
    match &err {
        PoolError::WorkerStart { path, message } => {
            assert_eq!(path, std::path::Path::new(missing));
            assert!(message.contains("No such file"), "{message}");
        }
        other => panic!("expected WorkerStart, got {other:?}"),
    }
    assert!(children().is_empty(), "{:?}", children());

    // Starts, but is no worker: it exits before the handshake.
    let err = Pool::builder()
        .worker("/bin/true")
        .workers(2)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PoolError::WorkerStart { message, .. } if message.contains("before the handshake")),
        "{err:?}"
    );
    // Every worker reaped before start returned.
    assert!(children().is_empty(), "{:?}", children());

    // A start-up abandoned half-way (a worker that never answers) stops what it started.
    let mut never = Pool::builder();
    never.worker("/bin/sleep").worker_args(["60"]).workers(2);
    let abandoned = tokio::time::timeout(Duration::from_millis(300), never.start()).await;
    assert!(abandoned.is_err(), "a sleep is no worker");
    assert_no_children_soon().await;
}

/// The thread that awaits `start` may exit at once: the workers were spawned by the
/// spawner thread, so their parent-death signal does not fire.
async fn workers_outlive_the_thread_that_started_the_pool() {
    let _serial = serial().await;
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(runtime.block_on(demo_builder(2).start()));
    });
    let pool = rx.await.unwrap().unwrap();
    thread.join().unwrap();
    let pids = pool.worker_pids().await;
    // A parent-death signal is sent as the thread exits, before its join returns: a worker
    // it killed would be dying now, and the runs below could not both answer on it.
    for pid in &pids {
        let stat = proc_stat(*pid).expect("the worker is still there");
        assert_ne!(stat.state, 'Z', "worker {pid} died with the thread");
    }
    let (a, b) = tokio::join!(
        pool.run(demo::add::task(1, 2)),
        pool.run(demo::add::task(3, 4))
    );
    assert_eq!((a.unwrap(), b.unwrap()), (3, 7));
    assert_eq!(pool.worker_pids().await, pids);
    drop(pool);
    assert_no_children_soon().await;
}

#[test]
fn start_outside_a_runtime_is_a_typed_error() {
    let _serial = support::serial_blocking();
    let err = futures::executor::block_on(demo_builder(1).start()).unwrap_err();
    assert!(matches!(err, PoolError::Runtime(_)), "{err:?}");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
    assert!(children().is_empty(), "{:?}", children());
}

/// The environment variable that makes [`start_mode_holder`] act, with the runtime flavor.
const HOLDER: &str = "PROCPOOL_TEST_START_HOLDER";

/// Not a test on its own: the process that `sigkill_of_the_process_leaves_no_worker`
/// starts (this test binary again) and SIGKILLs. It starts a pool of 2 on a runtime of
/// the flavor in `HOLDER`, runs a task that leaves a grandchild, prints the pids, and
/// waits to be killed.
#[test]
#[ignore = "helper process of sigkill_of_the_process_leaves_no_worker"]
fn start_mode_holder() {
    // Run by itself (`--ignored`, `--include-ignored`) it has nothing to hold: a failure,
    // never a pass that proves nothing.
    let flavor = std::env::var(HOLDER).unwrap_or_else(|_| {
        panic!("start_mode_holder only runs as the helper of sigkill_of_the_process_leaves_no_worker ({HOLDER} unset)")
    });
    let rt = match flavor.as_str() {
        "current_thread" => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .unwrap();
    rt.block_on(async {
        let pool = started(2).await;
        let mut h = pool.submit(demo::grandchild::task(60));
        let sleep = String::from_utf8(h.recv().await.unwrap()).unwrap();
        let workers: Vec<String> = pool
            .worker_pids()
            .await
            .iter()
            .map(|p| p.to_string())
            .collect();
        println!("holder pids: {} {sleep}", workers.join(" "));
        std::future::pending::<()>().await;
    });
}

/// SIGKILL of a process whose pool runs on its runtime: its workers and their
/// grandchildren are dead within 1 s (the workers' parent-death signal, armed against the
/// spawner thread, kills their groups). This process becomes a subreaper first, so they
/// come back here to be reaped instead of to PID 1.
async fn sigkill_of_the_process_leaves_no_worker() {
    let _serial = serial().await;
    // The suite runs on Linux; elsewhere this file is only compiled.
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let flavor = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    };
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "start_mode_holder", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(HOLDER, flavor)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the holder");
    let holder_pid = holder.id();
    let stdout = holder.stdout.take().unwrap();
    // Read on a blocking thread: a current-thread runtime must not block on the pipe.
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest may have printed "test start_mode_holder ... " on the same line.
            .find_map(|l| Some(l.split_once("holder pids: ")?.1.to_owned()))
    });
    let line = match tokio::time::timeout(Duration::from_secs(10), line).await {
        Ok(Ok(Some(line))) => line,
        other => {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("the holder printed no pids: {other:?}");
        }
    };
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{line}");
    let (workers, sleep) = (&pids[..2], pids[2]);
    let _guard = KillOnDrop(
        pids.iter()
            .filter_map(|p| proc_stat(*p).map(|s| (*p, s.comm)))
            .collect(),
    );
    for w in workers {
        let stat = proc_stat(*w).expect("the worker runs");
        assert_eq!(stat.ppid, holder_pid);
        assert_eq!(stat.comm, "procpool-demo");
    }
    assert!(workers.contains(&proc_stat(sleep).expect("the sleep runs").pgrp));

    let t0 = Instant::now();
    holder.kill().unwrap(); // SIGKILL, by handle
    holder.wait().unwrap();
    let all_dead = wait_until(Duration::from_secs(1), || pids.iter().all(|p| dead(*p)));
    let report: Vec<_> = pids.iter().map(|p| proc_stat(*p)).collect();
    eprintln!(
        "SIGKILL of a start() process: all dead after {:?}: {report:?}",
        t0.elapsed()
    );
    assert!(all_dead, "survivors 1 s after the SIGKILL: {report:?}");
    // Re-parented to this subreaper: reap them, so nothing is left at all.
    for pid in &pids {
        if proc_stat(*pid).is_some_and(|s| s.ppid == std::process::id()) {
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(*pid as i32), None)
                .unwrap_or_else(|e| panic!("reaping {pid}: {e}"));
        }
    }
    assert!(children().is_empty(), "{:?}", children());
}

/// A runtime without the IO or time driver cannot host a pool: `start` says so at once,
/// with tokio's own instruction, before any worker exists.
#[test]
fn start_on_a_runtime_without_drivers_fails_before_spawning() {
    let _serial = support::serial_blocking();
    for (driver, rt) in [
        (
            "enable_io",
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap(),
        ),
        (
            "enable_time",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_io()
                .build()
                .unwrap(),
        ),
    ] {
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(demo_builder(1).start())
        }))
        .expect_err("start needs the runtime's drivers");
        let message = panic_text(panic.as_ref());
        assert!(message.contains(driver), "{driver}: {message}");
        drop(rt);
        assert!(children().is_empty(), "{driver}: {:?}", children());
    }
}
