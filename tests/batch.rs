//! Tests of issue 15's batch helpers and handle guards with real `procpool-demo` workers:
//! `Pool::map` (completion order), `map_ordered`, their blocking twins, the in-flight
//! bound, cancel on drop (of a batch and of a `CancelOnDropHandle`), and the blocking
//! twins of the pool's async calls.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use procpool::{Pool, Shutdown, Task};
use procpool_demo_tasks as demo;
use serde_json::{Value, json};
use support::{assert_no_children, demo_pool, eventually, is_gone, serial, serial_blocking};

const LONG: Duration = Duration::from_secs(10);

/// Waits until `n` of `pids` are gone (killed and reaped).
async fn wait_gone(pids: &[u32], n: usize) {
    assert!(
        eventually(LONG, || pids.iter().filter(|p| is_gone(**p)).count() == n).await,
        "{n} of {pids:?} gone"
    );
}

/// Waits until `n` workers of `pool` run a task.
async fn wait_busy(pool: &Pool, n: usize) {
    for _ in 0..5000 {
        if pool.status().await.busy == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{n} busy workers: {:?}", pool.status().await);
}

#[tokio::test]
async fn map_yields_in_completion_order_and_drop_cancels_the_rest() {
    let _serial = serial().await;
    let pool = demo_pool(3);
    let pids = pool.worker_pids().await;
    let tasks = vec![
        Task::json("sleep_ms", json!([600_000])),
        Task::json("square", json!([3])),
        Task::json("square", json!([4])),
    ];
    let long = tasks[0].id();
    let mut results = pool.map(tasks).in_flight(3);
    let mut got = Vec::new();
    for _ in 0..2 {
        let (id, r) = results.next().await.expect("a result");
        assert_ne!(id, long, "the sleeping task cannot end first");
        got.push(r.expect("square succeeds").as_i64().expect("a number"));
    }
    got.sort();
    assert_eq!(got, [9, 16]);
    // The sleeping task runs: dropping the stream kills its worker.
    wait_busy(&pool, 1).await;
    drop(results);
    wait_gone(&pids, 1).await;
    wait_busy(&pool, 0).await;
    assert_eq!(
        pool.run(demo::add::task(1, 2)).await,
        Ok(3),
        "the pool goes on"
    );
    drop(pool);
    assert_no_children();
}

#[tokio::test]
async fn map_ordered_yields_in_input_order() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    // The first task ends last, yet comes out first.
    let mut tasks = vec![Task::json("sleep_ms", json!([300]))];
    tasks.extend((0..6).map(|i| Task::json("square", json!([i]))));
    let ids: Vec<_> = tasks.iter().map(Task::id).collect();
    let results: Vec<_> = pool.map_ordered(tasks).in_flight(3).collect().await;
    let got_ids: Vec<_> = results.iter().map(|(id, _)| *id).collect();
    assert_eq!(got_ids, ids);
    let values: Vec<Value> = results.into_iter().map(|(_, r)| r.unwrap()).collect();
    assert_eq!(values[0], json!(300));
    assert_eq!(values[1..], [0, 1, 4, 9, 16, 25].map(|v| json!(v)));
    drop(pool);
    assert_no_children();
}

#[tokio::test]
async fn map_keeps_at_most_in_flight_tasks_submitted() {
    let _serial = serial().await;
    let pool = demo_pool(4);
    let pids = pool.worker_pids().await;
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = taken.clone();
    let tasks = (0..10).map(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        demo::sleep_ms::task(600_000)
    });
    let mut results = pool.map(tasks).in_flight(2);
    assert!(futures::poll!(results.next()).is_pending());
    wait_busy(&pool, 2).await;
    assert_eq!(
        taken.load(Ordering::SeqCst),
        2,
        "two tasks taken from the iterator"
    );
    let status = pool.status().await;
    assert_eq!((status.busy, status.queued), (2, 0), "{status:?}");
    // Dropping the stream kills the two running tasks; the other eight never run.
    drop(results);
    wait_gone(&pids, 2).await;
    wait_busy(&pool, 0).await;
    assert_eq!(taken.load(Ordering::SeqCst), 2);
    drop(pool);
    assert_no_children();
}

#[tokio::test]
async fn map_waits_for_room_in_a_bounded_queue() {
    let _serial = serial().await;
    let pool = Pool::builder()
        .worker(support::demo_worker())
        .workers(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    // More in flight than the queue holds: submissions wait instead of failing.
    let results: Vec<_> = pool
        .map((0..8).map(demo::square::task))
        .in_flight(8)
        .collect()
        .await;
    let mut values: Vec<i64> = results.into_iter().map(|(_, r)| r.unwrap()).collect();
    values.sort();
    assert_eq!(values, [0, 1, 4, 9, 16, 25, 36, 49]);
    drop(pool);
    assert_no_children();
}

#[test]
fn map_blocking_twins_from_a_plain_thread() {
    let _serial = serial_blocking();
    let pool = demo_pool(2);
    let tasks: Vec<_> = (0..20).map(demo::square::task).collect();
    let ids: HashMap<_, i64> = tasks.iter().zip(0..).map(|(t, i)| (t.id(), i)).collect();
    let mut seen = 0;
    for (id, r) in pool.map_blocking(tasks).in_flight(3) {
        let i = ids[&id];
        assert_eq!(r, Ok(i * i));
        seen += 1;
    }
    assert_eq!(seen, 20);
    let ordered: Vec<i64> = pool
        .map_ordered_blocking((0..20).map(demo::square::task))
        .map(|(_, r)| r.unwrap())
        .collect();
    assert_eq!(ordered, (0..20).map(|i| i * i).collect::<Vec<_>>());
    drop(pool);
    assert_no_children();
}

#[tokio::test]
async fn cancel_on_drop_handle_kills_its_task_and_detach_does_not() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    let guard = pool.submit(demo::sleep_ms::task(600_000)).cancel_on_drop();
    let pid = guard.started().await.expect("the task starts");
    drop(guard);
    assert!(
        eventually(LONG, || is_gone(pid)).await,
        "worker {pid} killed"
    );

    // A resolved guard cancels nothing when dropped.
    let mut guard = pool.submit(demo::add::task(2, 3)).cancel_on_drop();
    assert_eq!((&mut guard).await, Ok(5));
    assert!(guard.is_finished());
    drop(guard);

    // Detached, the task runs to its end with nobody holding it.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task =
        demo::progress::task(4, 20).on_progress(move |p| log.lock().unwrap().push(p.fraction));
    let handle = pool.submit(task).cancel_on_drop().detach();
    let pid = handle.started().await.expect("the task starts");
    drop(handle);
    assert!(
        eventually(LONG, || seen.lock().unwrap().last() == Some(&1.0)).await,
        "the detached task reported its last step: {seen:?}"
    );
    assert!(!is_gone(pid), "its worker was not killed");
    drop(pool);
    assert_no_children();
}

#[test]
fn blocking_twins_of_status_pids_started_and_shutdown() {
    let _serial = serial_blocking();
    let pool = demo_pool(2);
    let pids = pool.worker_pids_blocking();
    assert_eq!(pids.len(), 2);
    let status = pool.status_blocking();
    assert_eq!(status.idle + status.starting, 2, "{status:?}");
    let handle = pool.submit(demo::sleep_ms::task(50));
    let pid = handle.started_blocking().expect("the task starts");
    assert!(pids.contains(&pid), "{pid} is one of {pids:?}");
    let guard = pool.submit(demo::add::task(1, 1)).cancel_on_drop();
    assert_eq!(guard.wait(), Ok(2));
    assert_eq!(handle.wait(), Ok(50));
    pool.shutdown_blocking(Shutdown::Drain);
    assert!(pids.iter().all(|p| is_gone(*p)), "every worker reaped");
    drop(pool);
    assert_no_children();
}

#[test]
fn meta_task_runs_blocking_from_a_plain_thread() {
    let _serial = serial_blocking();
    let pool = demo_pool(2);
    let inputs: Vec<_> = (1..=4).map(demo::square::task).collect();
    let total = procpool::MetaTask::new(inputs, |v: Vec<i64>| v.iter().sum::<i64>())
        .run_blocking(&pool)
        .expect("the MetaTask succeeds");
    assert_eq!(total, 1 + 4 + 9 + 16);
    // Any future built on the pool's API, the same way.
    let status = pool.block_on(pool.status());
    assert_eq!(status.busy, 0);
    drop(pool);
    assert_no_children();
}
