//! Black-box tests of the pool with real `procpool-demo` worker processes: every fault kind,
//! big payloads, cancel and drop, progress and messages, typed errors, task ids. Each test
//! ends by dropping its pool and checking that no child process is left.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procpool::{Pool, PoolError, Shutdown, Task, TaskError};
use procpool_demo_tasks as demo;
use serde_json::json;
use support::{
    assert_no_children, children, demo_pool, group_members, is_gone, proc_stat, serial,
    serial_blocking, wait_until,
};
use uuid::Uuid;

/// Next message from a running task, failing the test after 2 s.
async fn recv<R>(h: &mut procpool::TaskHandle<R>) -> Option<Vec<u8>>
where
    R: serde::de::DeserializeOwned,
{
    tokio::time::timeout(Duration::from_secs(2), h.recv())
        .await
        .expect("an answer in time")
}

/// Pids of the workers once all of them are ready (a replacement may still be starting).
async fn ready_pids(pool: &Pool) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pool.worker_pids().await;
        if pids.len() == pool.size() || Instant::now() > deadline {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs `task`, which must fail, on the one worker of `pool` that is not in `busy`;
/// returns that worker's pid and the error.
///
/// The pid comes from `worker_pids()` before the run, not from `TaskHandle::started()`:
/// a task this fast may have ended before `started()` looks, and then it returns `None`.
async fn run_to_error<R: serde::de::DeserializeOwned + std::fmt::Debug>(
    pool: &Pool,
    busy: &[u32],
    task: Task<R>,
) -> (u32, TaskError) {
    let idle: Vec<u32> = ready_pids(pool)
        .await
        .into_iter()
        .filter(|p| !busy.contains(p))
        .collect();
    assert_eq!(idle.len(), 1, "exactly one idle worker: {idle:?}");
    let err = pool.run(task).await.expect_err("the task fails");
    (idle[0], err)
}

/// Proves that worker `pid` is alive and serves tasks: a `chat` task (which waits for
/// messages, so `started()` cannot miss it) starts on it and is then ended.
async fn assert_serves(pool: &Pool, pid: u32) {
    let mut h = pool.submit(demo::chat::task());
    assert_eq!(
        h.started().await,
        Some(pid),
        "the task went to another worker"
    );
    h.send("ok").unwrap();
    assert_eq!(recv(&mut h).await.as_deref(), Some(&b"ko"[..]));
    h.send("").unwrap();
    assert_eq!(h.await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_has_its_kind_and_spares_the_neighbours() {
    let _serial = serial().await;
    let pool = demo_pool(3);
    let initial: HashSet<u32> = pool.worker_pids().await.into_iter().collect();
    assert_eq!(initial.len(), 3);

    // Two well-behaved tasks on two workers; the faults all go to the third. They wait
    // for a message to end, not for a clock: however slow the machine, they are still
    // running while the faults happen.
    let sleeper = pool.submit(demo::chat::task());
    let spinner = pool.submit(demo::chat::task());
    let sleeper_pid = sleeper.started().await.unwrap();
    let spinner_pid = spinner.started().await.unwrap();
    assert_ne!(sleeper_pid, spinner_pid);
    let neighbours = [sleeper_pid, spinner_pid];
    let t0 = Instant::now();

    let mut crashed = Vec::new();
    for (task, want_signal, want_code) in [
        (demo::segfault::task(), Some(11), None),
        (demo::abort::task(), Some(6), None),
        (demo::exit::task(3), None, Some(3)),
    ] {
        let (pid, err) = run_to_error(&pool, &neighbours, task).await;
        assert!(
            matches!(err, TaskError::Crashed { signal, exit_code, .. }
                if signal == want_signal && exit_code == want_code),
            "{err:?}"
        );
        assert_eq!(err.kind(), "crashed");
        assert!(err.is_crash());
        assert_eq!(err.exit_signal(), want_signal);
        assert_eq!(err.exit_code(), want_code);
        // The verdict is delivered after the worker is reaped, with its whole group.
        assert!(
            is_gone(pid),
            "crashed worker {pid} not reaped: {:?}",
            proc_stat(pid)
        );
        assert!(group_members(pid).is_empty());
        crashed.push(pid);
    }

    let (panic_pid, err) = run_to_error(&pool, &neighbours, demo::panic::task("boom".into())).await;
    match &err {
        TaskError::Panicked {
            message, location, ..
        } => {
            assert_eq!(message, "boom");
            let location = location.as_deref().expect("a panic location");
            assert!(
                location.contains("procpool-demo-tasks/src/lib.rs:"),
                "{location}"
            );
            // file:line:column
            let mut parts = location.rsplitn(3, ':');
            assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{location}");
            assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{location}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(err.kind(), "panicked");
    assert!(!err.is_crash());

    let (fail_pid, err) =
        run_to_error(&pool, &neighbours, demo::fail::task("bad input".into())).await;
    assert_eq!(
        err,
        TaskError::User {
            type_name: std::any::type_name::<String>().to_owned(),
            message: "bad input".into(),
        }
    );
    assert_eq!(err.kind(), "user_error");
    // A panic or a user error does not cost the worker.
    assert_eq!(fail_pid, panic_pid);
    assert_serves(&pool, fail_pid).await;

    // All of that happened while the neighbours were still running.
    let faults_took = t0.elapsed();
    eprintln!("five faults beside two busy workers took {faults_took:?}");
    assert_eq!(
        sleeper.worker_pid(),
        Some(sleeper_pid),
        "faults took {faults_took:?}"
    );
    assert_eq!(
        spinner.worker_pid(),
        Some(spinner_pid),
        "faults took {faults_took:?}"
    );
    sleeper.send("").unwrap();
    spinner.send("").unwrap();
    assert_eq!(sleeper.await.unwrap(), 0);
    assert_eq!(spinner.await.unwrap(), 0);

    // The pool keeps working at full size, crashed workers replaced.
    let handles: Vec<_> = (0..9)
        .map(|i| pool.submit(demo::add::task(i, 100)))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i as i64 + 100);
    }
    let now: HashSet<u32> = pool.worker_pids().await.into_iter().collect();
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.contains(&sleeper_pid) && now.contains(&spinner_pid));
    assert!(crashed.iter().all(|p| !now.contains(p)));
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_output_never_corrupts_the_protocol() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let pid = pool.worker_pids().await[0];
    let t0 = Instant::now();
    assert_eq!(pool.run(demo::noisy::task(10_000)).await.unwrap(), 10_000);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(20), "noisy(10000) took {took:?}");
    // Same worker, still in sync with the supervisor.
    assert_eq!(pool.run(demo::add::task(20, 22)).await.unwrap(), 42);
    assert_eq!(pool.worker_pids().await, [pid]);
    assert_serves(&pool, pid).await;
    drop(pool);
    assert_no_children();
}

/// 10 MiB of random bytes.
fn random_10_mib() -> Vec<u8> {
    let mut data = vec![0u8; 10 << 20];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_of_10_mib_round_trips_typed() {
    let _serial = serial().await;
    let data = random_10_mib();
    let pool = demo_pool(1);
    let t0 = Instant::now();
    let out = pool
        .run(demo::echo::task(procpool::Bytes::from(data.clone())))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(out.len(), data.len());
    assert!(
        out.as_slice() == data.as_slice(),
        "typed echo changed the bytes"
    );
    eprintln!("echo of 10 MiB, bincode: {took:?}");
    // Twice in a row on the same worker: nothing left over in the stream.
    let out = pool
        .run(demo::echo::task(procpool::Bytes::from(data.clone())))
        .await
        .unwrap();
    assert!(out.as_slice() == data.as_slice());
    drop(pool);
    assert_no_children();
}

/// The JSON path handles 10 MiB as an array of ~10 M numbers (about 36 MB of text each
/// way); in a debug build serde_json makes this the slowest test by far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_of_10_mib_round_trips_as_json() {
    let _serial = serial().await;
    let data = random_10_mib();
    let pool = demo_pool(1);
    let t0 = Instant::now();
    let out = pool.run(Task::json("echo", json!([data]))).await.unwrap();
    let took = t0.elapsed();
    let out: Vec<u8> = serde_json::from_value(out).unwrap();
    assert_eq!(out.len(), data.len());
    assert!(out == data, "json echo changed the bytes");
    eprintln!("echo of 10 MiB, json: {took:?}");
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_frame_cap_are_refused_cleanly() {
    let _serial = serial().await;
    let pool = Pool::builder()
        .worker(support::demo_worker())
        .workers(1)
        .max_frame_bytes(1 << 20)
        .build()
        .unwrap();
    let pid = pool.worker_pids().await[0];
    // Arguments too big: refused as bad arguments before anything is sent.
    let err = pool
        .run(demo::echo::task(procpool::Bytes::from(vec![7u8; 2 << 20])))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TaskError::BadArgs { message } if message.contains("1048576")),
        "{err:?}"
    );
    // A result too big: the worker reports it instead of sending the frame.
    let err = pool.run(demo::bytes::task(2 << 20)).await.unwrap_err();
    assert!(
        matches!(&err, TaskError::Codec { message } if message.contains("exceeds")),
        "{err:?}"
    );
    // Under the cap all is well, on the same worker.
    let out = pool.run(demo::bytes::task(512 << 10)).await.unwrap();
    assert_eq!(out.len(), 512 << 10);
    assert!(out.iter().enumerate().all(|(i, b)| *b == i as u8));
    assert_eq!(pool.worker_pids().await, [pid]);
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_running_task_kills_and_reaps_its_worker() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let h = pool.submit(demo::sleep_ms::task(60_000));
    let pid = h.started().await.unwrap();
    assert_eq!(proc_stat(pid).unwrap().ppid, std::process::id());
    let t0 = Instant::now();
    h.cancel();
    let err = h.await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err, TaskError::Cancelled);
    assert_eq!(err.kind(), "cancelled");
    assert!(err.is_cancelled());
    assert!(took < Duration::from_secs(5), "cancel took {took:?}");
    eprintln!("cancel of a running task resolved in {took:?}");
    // Reaped (not a zombie) before the handle resolved, with its whole group.
    assert!(
        is_gone(pid),
        "worker {pid} still there: {:?}",
        proc_stat(pid)
    );
    assert!(group_members(pid).is_empty());
    // A replacement serves the next task.
    support::assert_serves_on_a_new_worker(&pool, pid, (1, 2)).await;
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_queued_task_means_it_never_starts() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let busy = pool.submit(demo::sleep_ms::task(60_000));
    let busy_pid = busy.started().await.unwrap();

    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let queued = pool.submit(
        demo::progress::task(1, 0).on_progress(move |_| flag.store(true, Ordering::SeqCst)),
    );
    assert_eq!(queued.worker_pid(), None);
    queued.cancel();
    let t0 = Instant::now();
    assert_eq!(queued.started().await, None);
    assert_eq!(queued.worker_pid(), None);
    assert_eq!(queued.await.unwrap_err(), TaskError::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Cancelling a queued task leaves the running one alone.
    assert_eq!(busy.worker_pid(), Some(busy_pid));
    assert!(!is_gone(busy_pid));

    // A queued `Pool::run` future that is dropped is cancelled the same way.
    let flag = ran.clone();
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        pool.run(
            demo::progress::task(1, 0).on_progress(move |_| flag.store(true, Ordering::SeqCst)),
        ),
    )
    .await;
    assert!(dropped.is_err(), "the run future should have timed out");

    busy.cancel();
    assert!(busy.await.unwrap_err().is_cancelled());
    // The replacement worker runs only what is submitted next, never the cancelled tasks.
    assert_eq!(pool.run(demo::add::task(2, 2)).await.unwrap(), 4);
    assert_eq!(pool.run(demo::progress::task(2, 0)).await, Ok(()));
    assert!(!ran.load(Ordering::SeqCst), "a cancelled queued task ran");
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_tasks_grandchildren() {
    let _serial = serial().await;
    // The killed sleep comes back to this process (a subreaper now) to be reaped, instead
    // of staying a zombie of a PID 1 that may never reap it.
    let reaper = procpool::OrphanReaper::start().expect("subreaper");
    let pool = demo_pool(1);
    let mut h = pool.submit(demo::grandchild::task(60));
    let worker = h.started().await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(2), h.recv())
        .await
        .expect("the grandchild pid arrives")
        .expect("a message");
    let sleep_pid: u32 = String::from_utf8(msg).unwrap().parse().unwrap();
    let stat = proc_stat(sleep_pid).expect("the grandchild runs");
    assert_eq!(stat.comm, "sleep");
    assert_eq!(stat.ppid, worker);
    assert_eq!(stat.pgrp, worker, "the grandchild is in the worker's group");

    h.cancel();
    assert_eq!(h.await.unwrap_err(), TaskError::Cancelled);
    let t0 = Instant::now();
    let mut zombie = false;
    let dead = wait_until(Duration::from_secs(1), || match proc_stat(sleep_pid) {
        None => true,
        Some(s) if s.state == 'Z' => {
            zombie = true;
            true
        }
        Some(_) => false,
    });
    assert!(
        dead,
        "the grandchild survived the cancel: {:?}",
        proc_stat(sleep_pid)
    );
    eprintln!(
        "grandchild {sleep_pid} {:?} after the cancel resolved: {}",
        t0.elapsed(),
        if zombie {
            format!("zombie, {:?}", proc_stat(sleep_pid))
        } else {
            "gone (reaped)".to_owned()
        }
    );
    assert!(
        wait_until(Duration::from_secs(1), || is_gone(sleep_pid)),
        "the dead grandchild was not reaped: {:?}",
        proc_stat(sleep_pid)
    );
    assert!(group_members(worker).is_empty());
    drop(pool);
    assert_eq!(reaper.finish(), 0, "nothing left to kill");
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_kills_and_reaps_every_worker() {
    let _serial = serial().await;
    let pool = demo_pool(3);
    let pids = pool.worker_pids().await;
    assert_eq!(pids.len(), 3);
    let mut kids: Vec<u32> = children().iter().map(|p| p.pid).collect();
    kids.sort_unstable();
    assert_eq!(kids, pids, "the workers are our children");

    let running = pool.submit(demo::sleep_ms::task(60_000));
    running.started().await.unwrap();
    let t0 = Instant::now();
    drop(pool);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "drop took {took:?}");
    for pid in &pids {
        assert!(is_gone(*pid), "worker {pid} left: {:?}", proc_stat(*pid));
    }
    assert_no_children();
    assert_eq!(running.await.unwrap_err(), TaskError::PoolClosed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_run_future_cancels_its_task() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let pid = pool.worker_pids().await[0];
    let out = tokio::time::timeout(
        Duration::from_millis(200),
        pool.run(demo::sleep_ms::task(60_000)),
    )
    .await;
    assert!(out.is_err(), "the run future should have timed out");
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || is_gone(pid)),
        "worker {pid} still there: {:?}",
        proc_stat(pid)
    );
    eprintln!(
        "dropped run future: worker reaped {:?} after the drop",
        t0.elapsed()
    );
    support::assert_serves_on_a_new_worker(&pool, pid, (3, 4)).await;
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drain_finishes_work_and_kill_fails_it() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let running = pool.submit(demo::sleep_ms::task(200));
    let queued = pool.submit(demo::add::task(1, 2));
    running.started().await.unwrap();
    pool.shutdown(Shutdown::Drain).await;
    assert_no_children();
    assert_eq!(running.await.unwrap(), 200);
    assert_eq!(queued.await.unwrap(), 3);
    assert_eq!(
        pool.run(demo::add::task(1, 1)).await.unwrap_err(),
        TaskError::PoolClosed
    );
    drop(pool);

    let pool = demo_pool(1);
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let queued = pool.submit(demo::add::task(1, 2));
    running.started().await.unwrap();
    let t0 = Instant::now();
    pool.shutdown(Shutdown::Kill).await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_no_children();
    assert_eq!(running.await.unwrap_err(), TaskError::PoolClosed);
    assert_eq!(queued.await.unwrap_err().kind(), "pool_closed");
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_arrives_in_order_before_the_result() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let id = Uuid::new_v4();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let task = demo::progress::task(5, 10)
        .with_id(id)
        .on_progress(move |p| sink.lock().unwrap().push(p.clone()));
    pool.run(task).await.unwrap();
    // Read right after the await: every report was delivered before the result.
    let seen = seen.lock().unwrap().clone();
    let fractions: Vec<f32> = seen.iter().map(|p| p.fraction).collect();
    assert_eq!(fractions, [0.2, 0.4, 0.6, 0.8, 1.0]);
    let messages: Vec<&str> = seen.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(
        messages,
        ["step 1/5", "step 2/5", "step 3/5", "step 4/5", "step 5/5"]
    );
    assert!(seen.iter().all(|p| p.task_id == id));
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_round_trips_messages() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let mut h = pool.submit(demo::chat::task());
    // Sent before the task may have started: delivered when it starts.
    h.send("abc").unwrap();
    assert_eq!(recv(&mut h).await.as_deref(), Some(&b"cba"[..]));
    h.send("hello").unwrap();
    assert_eq!(recv(&mut h).await.as_deref(), Some(&b"olleh"[..]));
    h.send(vec![0u8, 1, 2, 255]).unwrap();
    assert_eq!(recv(&mut h).await.as_deref(), Some(&[255u8, 2, 1, 0][..]));
    h.send(Vec::new()).unwrap();
    assert_eq!(recv(&mut h).await, None, "no message after the task ended");
    assert_eq!(h.await.unwrap(), 3);
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_typed_errors_and_the_worker_stays() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let pid = pool.worker_pids().await[0];

    let err = pool.run(Task::json("nope", json!([]))).await.unwrap_err();
    assert_eq!(
        err,
        TaskError::UnknownTask {
            name: "nope".into()
        }
    );
    assert_eq!(err.kind(), "unknown_task");

    for (name, args, needle) in [
        ("add", json!([1]), "expected 2 arguments, got 1"),
        ("add", json!([1, 2, 3]), "expected 2 arguments, got 3"),
        ("add", json!(["x", 2]), "invalid type"),
        ("add", json!({"a": 1, "b": 2}), "JSON array"),
        ("sleep_ms", json!([-1]), "invalid value"),
        ("segfault", json!([1]), "expected 0 arguments, got 1"),
    ] {
        let err = pool.run(Task::json(name, args.clone())).await.unwrap_err();
        match &err {
            TaskError::BadArgs { message } => {
                assert!(message.contains(needle), "{name} {args}: {message}")
            }
            other => panic!("{name} {args}: expected bad_args, got {other:?}"),
        }
        assert_eq!(err.kind(), "bad_args");
        // Checked in the worker, which stays.
        assert_eq!(pool.worker_pids().await, [pid], "{name} {args}");
    }

    // A user error and a panic leave the worker usable: the same pid runs the next task.
    for task in [
        demo::fail::task("no".into()),
        demo::panic::task("oops".into()),
    ] {
        let (ran_on, err) = run_to_error(&pool, &[], task).await;
        assert!(matches!(err.kind(), "user_error" | "panicked"), "{err:?}");
        assert_eq!(ran_on, pid);
        assert_serves(&pool, pid).await;
    }
    assert_eq!(
        pool.run(Task::json("add", json!([40, 2]))).await.unwrap(),
        json!(42)
    );
    assert_eq!(pool.worker_pids().await, [pid]);
    drop(pool);
    assert_no_children();
}

#[test]
fn missing_worker_binary_fails_build_and_leaves_nothing() {
    let _serial = serial_blocking();
    let missing = "/nonexistent/procpool-worker";
    let t0 = Instant::now();
    let err = Pool::builder()
        .worker(missing)
        .workers(2)
        .build()
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5));
    match &err {
        PoolError::WorkerStart { path, message } => {
            assert_eq!(path, std::path::Path::new(missing));
            assert!(message.contains("No such file"), "{message}");
        }
        other => panic!("expected WorkerStart, got {other:?}"),
    }
    assert!(err.to_string().contains(missing), "{err}");
    assert_no_children();

    // A file that exists but cannot be executed.
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Pool::builder()
        .worker(file.path())
        .workers(1)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, PoolError::WorkerStart { message, .. } if message.contains("Permission denied")),
        "{err:?}"
    );
    assert_no_children();
}

#[test]
fn run_blocking_works_without_a_runtime() {
    let _serial = serial_blocking();
    let pool = demo_pool(2);
    assert_eq!(pool.run_blocking(demo::add::task(2, 3)).unwrap(), 5);
    assert_eq!(
        pool.run_blocking(demo::fail::task("x".into()))
            .unwrap_err()
            .kind(),
        "user_error"
    );
    let mut h = pool.submit(demo::chat::task());
    h.send("ab").unwrap();
    assert_eq!(h.recv_blocking().as_deref(), Some(&b"ba"[..]));
    h.send("").unwrap();
    assert_eq!(h.wait().unwrap(), 1);
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ids_are_fresh_v4_unless_given() {
    let _serial = serial().await;
    let ids: HashSet<Uuid> = (0..1000).map(|i| demo::square::task(i).id()).collect();
    assert_eq!(ids.len(), 1000);
    for id in &ids {
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
    }

    let pool = demo_pool(1);
    let given = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let task = demo::square::task(7).with_id(given);
    assert_eq!(task.id(), given);
    assert_eq!(task.name(), "square");
    let h = pool.submit(task);
    assert_eq!(h.id(), given);
    assert_eq!(h.await.unwrap(), 49);
    let h = pool.submit(demo::square::task(8));
    assert!(!ids.contains(&h.id()) && h.id() != given);
    assert_eq!(h.id().get_version_num(), 4);
    assert_eq!(h.await.unwrap(), 64);
    drop(pool);
    assert_no_children();
}

/// The pool keeps no set of live ids until a caller chooses one (issue 16): the first
/// chosen id is still checked against the tasks submitted with generated ids before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_id_is_checked_against_tasks_with_generated_ids() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let running = pool.submit(demo::sleep_ms::task(60_000));
    running.started().await.unwrap();
    let queued = pool.submit(demo::square::task(3));
    for dup in [running.id(), queued.id()] {
        let err = pool
            .run(demo::square::task(2).with_id(dup))
            .await
            .unwrap_err();
        assert_eq!(err, TaskError::DuplicateId { id: dup });
    }
    // Generated ids submitted once the set exists are in it too.
    let later = pool.submit(demo::square::task(5));
    let err = pool
        .run(demo::square::task(2).with_id(later.id()))
        .await
        .unwrap_err();
    assert_eq!(err, TaskError::DuplicateId { id: later.id() });
    running.cancel();
    assert_eq!(running.await.unwrap_err(), TaskError::Cancelled);
    assert_eq!(queued.await.unwrap(), 9);
    assert_eq!(later.await.unwrap(), 25);
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_task_id_cannot_be_reused() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let id = Uuid::new_v4();
    let running = pool.submit(demo::sleep_ms::task(60_000).with_id(id));
    running.started().await.unwrap();
    let queued_id = Uuid::new_v4();
    let queued = pool.submit(demo::square::task(3).with_id(queued_id));
    for dup in [id, queued_id] {
        let err = pool
            .run(demo::square::task(2).with_id(dup))
            .await
            .unwrap_err();
        assert_eq!(err, TaskError::DuplicateId { id: dup });
        assert_eq!(err.kind(), "duplicate_id");
    }
    // The cancel still reaches the original task, and the id is free once it ended.
    running.cancel();
    assert_eq!(running.await.unwrap_err(), TaskError::Cancelled);
    assert_eq!(queued.await.unwrap(), 9);
    assert_eq!(
        pool.run(demo::square::task(4).with_id(id)).await.unwrap(),
        16
    );
    drop(pool);
    assert_no_children();
}
