//! Black-box tests of the supervisor against workers that break the wire protocol: a python
//! fake worker (`tests/fixtures/fake_worker.py MODE`) sends garbage, oversized length
//! prefixes, wrong handshakes, stray frames; real binaries that are no workers at all.
//! The supervisor must turn each into a typed error, never a panic, a hang or a huge
//! allocation, and leave no process behind.

mod support;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use procpool::{Pool, PoolBuilder, PoolError, Task, TaskError};
use serde_json::json;
use support::{
    assert_no_children, fake_worker_script, group_members, is_gone, proc_stat, python3, serial,
    serial_blocking, vm_hwm_kib,
};

/// A builder for a pool of `n` fake workers in `mode`.
fn fake(mode: &str, n: usize) -> PoolBuilder {
    let mut b = Pool::builder();
    b.worker(python3())
        .worker_args([OsString::from(fake_worker_script()), OsString::from(mode)])
        .workers(n);
    b
}

/// Builds a pool of fake workers that must fail to start; returns the error message
/// after checking the kind, the time it took and that nothing is left running.
#[track_caller]
fn start_failure(builder: &PoolBuilder) -> String {
    let t0 = Instant::now();
    let err = builder.build().expect_err("the pool must not start");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "build took {took:?}");
    assert_no_children();
    match err {
        PoolError::WorkerStart { message, .. } => message,
        other => panic!("expected WorkerStart, got {other:?}"),
    }
}

/// Runs `add(1, 2)` (JSON) on a pool of fake workers that answer with something broken,
/// and returns the task error, after checking it came promptly and the worker was killed
/// and reaped.
async fn broken_answer(pool: &Pool) -> TaskError {
    assert_eq!(pool.size(), 1);
    assert_pool_recovers(pool).await;
    // Not `started()`: the fake answers at once, so the task may have ended before
    // `started()` looks (it then returns `None`).
    let pid = pool.worker_pids().await[0];
    let t0 = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        pool.run(Task::json("add", json!([1, 2]))),
    )
    .await
    .expect("a broken worker fails its task promptly");
    let err = out.expect_err("a broken worker cannot produce a result");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        is_gone(pid),
        "broken worker {pid} not reaped: {:?}",
        proc_stat(pid)
    );
    assert!(group_members(pid).is_empty());
    err
}

/// The dispatcher is alive: it answers and brings the pool back to full size.
async fn assert_pool_recovers(pool: &Pool) {
    let mut pids = Vec::new();
    for _ in 0..200 {
        pids = pool.worker_pids().await;
        if pids.len() == pool.size() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pids.len(), pool.size(), "no replacement worker: {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_worker_handshake_is_understood() {
    let _serial = serial().await;
    let pool = fake("stray_frames", 1).build().unwrap();
    let tasks = pool.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].name, "add");
    let params: Vec<(&str, &str)> = tasks[0]
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.type_name.as_str()))
        .collect();
    assert_eq!(params, [("a", "i64"), ("b", "i64")]);
    assert_eq!(tasks[0].result, "i64");
    assert!(!tasks[0].fallible && !tasks[0].is_async);
    // Tasks missing from the manifest are refused before they reach the worker.
    let err = pool
        .run(Task::json("sub", json!([1, 2])))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unknown_task");
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_handshake_fails_the_task_with_protocol() {
    let _serial = serial().await;
    let pool = fake("garbage", 1).build().unwrap();
    let err = broken_answer(&pool).await;
    assert_eq!(err.kind(), "protocol", "{err:?}");
    assert!(
        matches!(&err, TaskError::Protocol { message } if message.contains("undecodable")),
        "{err:?}"
    );
    assert!(!err.is_crash());
    assert_pool_recovers(&pool).await;
    // The replacement misbehaves the same way; the supervisor copes again.
    assert_eq!(broken_answer(&pool).await.kind(), "protocol");
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_length_prefix_is_refused_without_allocating() {
    let _serial = serial().await;
    let before = vm_hwm_kib();
    let pool = fake("huge_prefix", 1).build().unwrap();
    let err = broken_answer(&pool).await;
    match &err {
        TaskError::Protocol { message } => {
            assert!(
                message.contains(&u32::MAX.to_string())
                    && message.contains(&(64usize << 20).to_string()),
                "the error names the claimed size and the cap: {message}"
            );
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_pool_recovers(&pool).await;
    assert_eq!(broken_answer(&pool).await.kind(), "protocol");
    let after = vm_hwm_kib();
    eprintln!("supervisor VmHWM: {before} KiB before, {after} KiB after");
    assert!(
        after < 256 << 10,
        "peak RSS {after} KiB: the claimed size was allocated?"
    );
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_configured_cap_is_a_protocol_error() {
    let _serial = serial().await;
    let pool = fake("over_cap", 1)
        .max_frame_bytes(1 << 20)
        .build()
        .unwrap();
    let err = broken_answer(&pool).await;
    assert!(
        matches!(&err, TaskError::Protocol { message }
            if message.contains("2097152") && message.contains("1048576")),
        "{err:?}"
    );
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_for_other_tasks_are_dropped_and_split_frames_reassembled() {
    let _serial = serial().await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let pool = fake("stray_frames", 1).build().unwrap();
    let pid = pool.worker_pids().await[0];
    let task = Task::json("add", json!([1, 2]))
        .on_progress(move |p| sink.lock().unwrap().push((p.fraction, p.message.clone())));
    // The fake answers 999 for another task id first, then 42 for this one, one byte at
    // a time.
    let out = tokio::time::timeout(Duration::from_secs(2), pool.run(task))
        .await
        .expect("the split frame is reassembled");
    assert_eq!(out.unwrap(), json!(42));
    assert_eq!(*seen.lock().unwrap(), [(0.5, "halfway".to_owned())]);
    // The stray frames are no reason to kill the worker.
    assert_eq!(pool.worker_pids().await, [pid]);
    assert!(!is_gone(pid));
    drop(pool);
    assert!(is_gone(pid));
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_exiting_mid_task_is_a_crash_with_its_stderr() {
    let _serial = serial().await;
    let pool = fake("exit_mid_task", 1).build().unwrap();
    let h = pool.submit(Task::json("add", json!([1, 2])));
    // No `started()` here: the fake leaves as soon as it reads the task, so the task may
    // already have ended (and `started()` returned `None`) by the time we would ask.
    let err = tokio::time::timeout(Duration::from_secs(2), h)
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        TaskError::Crashed {
            signal: None,
            exit_code: Some(0),
            stderr_tail,
        } => assert_eq!(stderr_tail, &["fake_worker: leaving mid-task"]),
        other => panic!("expected a crash with exit code 0, got {other:?}"),
    }
    drop(pool);
    assert_no_children();
}

#[test]
fn wrong_protocol_version_fails_build_naming_both_versions() {
    let _serial = serial_blocking();
    let message = start_failure(&fake("wrong_version", 2));
    assert!(
        message.contains("version 99") && message.contains("version 4"),
        "{message}"
    );
}

/// A worker of protocol 3 sent every frame on the channel; a handshake without the
/// result pipe is refused by name instead of waiting for results that never come.
#[test]
fn a_handshake_without_its_result_pipe_fails_build() {
    let _serial = serial_blocking();
    let message = start_failure(&fake("no_pipe", 1));
    assert!(message.contains("no result pipe"), "{message}");
}

#[test]
fn a_program_that_exits_is_no_worker() {
    let _serial = serial_blocking();
    let message = start_failure(&fake("not_a_worker_exit", 1));
    assert!(message.contains("before the handshake"), "{message}");
    // The error carries what the program said on stderr.
    assert!(
        message.contains("fake_worker: not a worker, exiting"),
        "{message}"
    );

    // A real binary that is no procpool worker.
    let truth = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a `true` binary");
    let mut b = Pool::builder();
    b.worker(truth).workers(2);
    let message = start_failure(&b);
    assert!(message.contains("before the handshake"), "{message}");
}

#[test]
fn a_first_frame_without_the_magic_is_no_worker() {
    let _serial = serial_blocking();
    let message = start_failure(&fake("not_a_worker_frame", 1));
    assert!(message.contains("not a procpool worker"), "{message}");
}

#[test]
fn raw_text_on_the_channel_is_no_worker() {
    let _serial = serial_blocking();
    let message = start_failure(&fake("not_a_worker_text", 1));
    // "HTTP" read as a little-endian length: 0x50545448 bytes, over the cap.
    assert!(message.contains(&0x5054_5448u32.to_string()), "{message}");
}

#[test]
fn a_silent_worker_times_out_at_start() {
    let _serial = serial_blocking();
    let mut b = fake("silent", 1);
    b.start_timeout(Duration::from_millis(300));
    let t0 = Instant::now();
    let message = start_failure(&b);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(message.contains("no handshake within"), "{message}");

    // The same with a real binary that never speaks: `sleep 60` must not outlive build().
    let mut b = Pool::builder();
    b.worker("sleep")
        .worker_args(["60"])
        .workers(1)
        .start_timeout(Duration::from_millis(300));
    let message = start_failure(&b);
    assert!(message.contains("no handshake within"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_bomb_inside_a_frame_is_a_protocol_error_not_an_abort() {
    let _serial = serial().await;
    let pool = fake("length_bomb", 1).build().unwrap();
    // An abort here would take this whole test process down.
    let err = broken_answer(&pool).await;
    assert_eq!(err.kind(), "protocol", "{err:?}");
    assert!(vm_hwm_kib() < 256 << 10);
    assert_pool_recovers(&pool).await;
    drop(pool);
    assert_no_children();
}

#[test]
fn a_length_bomb_in_the_handshake_fails_build() {
    let _serial = serial_blocking();
    let message = start_failure(&fake("handshake_bomb", 1));
    assert!(message.contains("malformed handshake"), "{message}");
}

/// One worker dies at start while another never answers: `build()` should report the
/// failure at once instead of waiting out the other worker's start timeout.
#[test]
fn build_fails_fast_when_one_worker_dies_while_another_hangs() {
    let _serial = serial_blocking();
    let dir = tempfile::tempdir().unwrap();
    let mut b = fake("one_exits_one_hangs", 2);
    b.env("FAKE_WORKER_MARKER", dir.path().join("marker"))
        // Far above the bound below: a wait for it cannot pass for "at once".
        .start_timeout(Duration::from_secs(60));
    let t0 = Instant::now();
    let err = b.build().expect_err("the pool must not start");
    let took = t0.elapsed();
    assert_no_children();
    assert!(
        matches!(&err, PoolError::WorkerStart { message, .. } if message.contains("fake_worker: first, exiting")),
        "{err:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "build() took {took:?} to report a worker that died at once"
    );
}

/// Dropping the pool kills every worker at once, including a replacement that is still
/// starting (here: one that never completes its handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_does_not_wait_for_a_starting_worker() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut b = fake("crash_then_hang", 1);
    b.env("FAKE_WORKER_MARKER", dir.path().join("marker"))
        // Far above the bound below: a wait for it cannot pass for "at once".
        .start_timeout(Duration::from_secs(60));
    let pool = b.build().unwrap();
    let err = pool
        .run(Task::json("add", json!([1, 2])))
        .await
        .unwrap_err();
    assert!(err.is_crash(), "{err:?}");
    // The replacement is spawned at once and hangs before its handshake.
    assert!(support::wait_until(Duration::from_secs(2), || {
        support::children().len() == 1
    }));
    assert!(
        pool.worker_pids().await.is_empty(),
        "the replacement is not ready"
    );
    let t0 = Instant::now();
    drop(pool);
    let took = t0.elapsed();
    assert_no_children();
    assert!(
        took < Duration::from_secs(10),
        "dropping the pool took {took:?}: it waited for the starting worker's handshake timeout"
    );
}
