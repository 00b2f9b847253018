//! Black-box tests of MetaTask and TaskManager (issue 3) with real `procpool-demo` worker
//! processes: fan-out and fan-in, fail fast with the siblings' workers killed, inputs
//! anywhere in a shape, shared tasks with subscriber counting, events, the result store.
//! Every test takes `support::serial()` and ends by shutting its pool down and checking
//! that no child process is left.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procpool::manager::{Cached, ManagerError, MemoryStore, PendingTask, Ready};
use procpool::{MetaError, MetaTask, Pool, Progress, Shutdown, TaskEvent, TaskManager};
use procpool_demo_tasks as demo;
use serde_json::json;
use support::{assert_no_children, demo_pool, is_gone, serial};
use tokio::sync::broadcast;
use tokio::time::timeout;
use uuid::Uuid;

const SIGSEGV: i32 = 11;

// ---------------------------------------------------------------------------------------
// Helpers

/// Longest a wait on an event of a test may take: generous, for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// Pids of the workers once all of them are ready.
async fn ready_pids(pool: &Pool) -> Vec<u32> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let pids = pool.worker_pids().await;
        if pids.len() == pool.size() || Instant::now() > deadline {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `busy` workers run a task and none is queued; fails the test after
/// [`DEADLINE`].
async fn wait_busy(pool: &Pool, busy: usize) {
    wait_status(pool, busy, 0).await
}

/// Waits until `busy` workers run a task and `queued` wait; fails the test after
/// [`DEADLINE`].
async fn wait_status(pool: &Pool, busy: usize, queued: usize) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = pool.status().await;
        if status.busy == busy && status.queued == queued {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {busy} busy and {queued} queued: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Stops the pool (every worker killed and reaped, whoever still holds a clone) and checks
/// that no child process is left.
async fn finish(pool: Pool) {
    pool.shutdown(Shutdown::Kill).await;
    drop(pool);
    assert_no_children();
}

/// Events of `rx` up to and including the first terminal one of `task`; fails after 5 s.
async fn until_terminal(rx: &mut broadcast::Receiver<TaskEvent>, task: Uuid) -> Vec<TaskEvent> {
    let mut seen = Vec::new();
    loop {
        let ev = timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the terminal event in time")
            .expect("no lag on a quiet channel");
        let done = ev.is_terminal() && ev.task_id() == task;
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

/// Events already published on `rx`, without waiting.
fn published(rx: &mut broadcast::Receiver<TaskEvent>) -> Vec<TaskEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// The outcome of a consumer, failing the test after `secs`.
async fn outcome(p: &PendingTask, secs: u64) -> Result<serde_json::Value, MetaError> {
    timeout(Duration::from_secs(secs), p.value())
        .await
        .expect("the pending task resolves in time")
}

// ---------------------------------------------------------------------------------------
// MetaTask

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_of_100_squares_combined_in_the_parent_and_as_a_task() {
    let _serial = serial().await;
    let pool = demo_pool(4);
    let squares = || (0..100).map(demo::square::task).collect::<Vec<_>>();
    let want: i64 = (0..100).map(|i| i * i).sum();

    let in_parent = MetaTask::new(squares(), |v: Vec<i64>| v.iter().sum::<i64>());
    assert_eq!(in_parent.run(&pool).await.unwrap(), want);

    let as_task = MetaTask::process_as_task(squares(), demo::sum::task);
    assert_eq!(as_task.run(&pool).await.unwrap(), want);

    // An async combine step, and a fallible one whose error names the MetaTask.
    let async_combine = MetaTask::new_async(squares(), |v: Vec<i64>| async move {
        tokio::task::yield_now().await;
        Ok::<_, String>(v.len())
    });
    assert_eq!(async_combine.run(&pool).await.unwrap(), 100);
    let refused = MetaTask::try_new(squares(), |_| Err::<i64, _>("not today"))
        .with_name("picky")
        .run(&pool)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), "combine_failed");
    assert!(refused.to_string().contains("picky"), "{refused}");
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_anywhere_in_a_shape_and_nested_meta_tasks() {
    let _serial = serial().await;
    let pool = demo_pool(3);
    let map = HashMap::from([("a", demo::square::task(2)), ("b", demo::square::task(3))]);
    let tree = BTreeMap::from([(1, demo::add::task(1, 1)), (2, demo::add::task(2, 2))]);
    let inner = MetaTask::process_as_task(
        vec![demo::square::task(4), demo::square::task(5)],
        demo::sum::task,
    );
    let nested = vec![inner, MetaTask::new(Ready(7), |x| x * 2)];
    let shape = (
        map,
        tree,
        Some(demo::square::task(6)),
        Ready("label"),
        nested,
    );
    let meta = MetaTask::new(shape, |(map, tree, opt, label, nested)| {
        assert_eq!(label, "label");
        let map: HashMap<_, _> = map;
        map["a"] + map["b"] + tree.values().sum::<i64>() + opt.unwrap() + nested.iter().sum::<i64>()
    });
    // 4 + 9 + 2 + 4 + 36 + (16 + 25) + 14
    assert_eq!(meta.run(&pool).await.unwrap(), 110);

    // A failure deep in the shape names its place.
    let bad = demo::fail::task("boom".into());
    let bad_id = bad.id();
    let inner = MetaTask::new(BTreeMap::from([("bad", bad)]), |m| m.len());
    let err = MetaTask::new((Ready(1), vec![inner]), |(a, v)| a + v[0])
        .run(&pool)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "user_error");
    assert_eq!(err.failed_id(), Some(bad_id));
    assert_eq!(err.failed_name(), Some("fail"));
    assert_eq!(err.path(), Some("$.1[0][\"bad\"]"));
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_segfault_among_nine_sleepers_fails_fast_and_kills_the_sleepers() {
    let _serial = serial().await;
    let pool = demo_pool(10);
    let workers = ready_pids(&pool).await;
    assert_eq!(workers.len(), 10);

    // The sleepers are queued first, so all nine run before the crash comes back.
    let sleepers: Vec<_> = (0..9).map(|_| demo::sleep_ms::task(10_000)).collect();
    let crash = demo::segfault::task();
    let crash_id = crash.id();
    let began = Instant::now();
    let err = MetaTask::new((sleepers, crash), |_| ())
        .run(&pool)
        .await
        .expect_err("the crash fails the MetaTask");
    let took = began.elapsed();

    // The sleepers take 10 s: well before that means they were killed, not awaited.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(err.kind(), "crashed");
    assert_eq!(err.failed_id(), Some(crash_id));
    assert_eq!(err.failed_name(), Some("segfault"));
    assert_eq!(err.path(), Some("$.1"));
    assert_eq!(err.task_error().unwrap().exit_signal(), Some(SIGSEGV));
    // The run resolved only after every task ended: the nine sleepers' workers were
    // killed and reaped already, and the crashed one too.
    let left: Vec<u32> = workers.iter().copied().filter(|p| !is_gone(*p)).collect();
    assert!(left.is_empty(), "workers still alive: {left:?}");
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_every_live_input() {
    let _serial = serial().await;
    let pool = demo_pool(3);
    let workers = ready_pids(&pool).await;
    let sleepers: Vec<_> = (0..3).map(|_| demo::sleep_ms::task(10_000)).collect();
    let handle = MetaTask::new(sleepers, |v| v.len()).submit(&pool);
    wait_busy(&pool, 3).await;
    handle.cancel();
    let err = timeout(Duration::from_secs(5), handle)
        .await
        .expect("resolves promptly after cancel")
        .unwrap_err();
    assert_eq!(err, MetaError::Cancelled);
    assert!(workers.iter().all(|p| is_gone(*p)), "{workers:?}");

    // Dropping a handle cancels its run too.
    let handle = MetaTask::new(vec![demo::sleep_ms::task(10_000)], |v| v.len()).submit(&pool);
    wait_busy(&pool, 1).await;
    drop(handle);
    wait_busy(&pool, 0).await;
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_progress_reaches_the_meta_task_tagged_with_the_input_id() {
    let _serial = serial().await;
    let pool = demo_pool(3);
    let seen: Arc<Mutex<Vec<(Uuid, f32)>>> = Arc::default();
    let own: Arc<Mutex<Vec<f32>>> = Arc::default();
    let own_cb = own.clone();
    // The input's own callback is kept beside the MetaTask's.
    let first =
        demo::progress::task(2, 5).on_progress(move |p| own_cb.lock().unwrap().push(p.fraction));
    let second = demo::progress::task(4, 5);
    let ids = [first.id(), second.id()];
    let nested = MetaTask::new(vec![first], |v| v.len());
    let record = seen.clone();
    let meta = MetaTask::new((nested, second), |(n, ())| n)
        .on_progress(move |p: &Progress| record.lock().unwrap().push((p.task_id, p.fraction)));
    assert_eq!(meta.run(&pool).await.unwrap(), 1);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:?}");
    for (id, steps) in [(ids[0], 2), (ids[1], 4)] {
        let fractions: Vec<f32> = seen
            .iter()
            .filter(|(t, _)| *t == id)
            .map(|(_, f)| *f)
            .collect();
        let want: Vec<f32> = (1..=steps).map(|i| i as f32 / steps as f32).collect();
        assert_eq!(fractions, want, "progress of input {id}");
    }
    assert_eq!(*own.lock().unwrap(), [0.5, 1.0]);
    finish(pool).await;
}

// ---------------------------------------------------------------------------------------
// TaskManager: shared tasks and subscriber counting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_task_runs_once_and_dies_only_with_its_last_consumer() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let worker = ready_pids(&pool).await[0];
    let manager = TaskManager::new(pool.clone());
    let mut events = manager.subscribe("c");
    // Reports progress every 100 ms for 20 s: a report after the first consumer's cancel
    // shows that the run went on.
    let shared = || Cached::new("ticker", demo::progress::task(200, 100));

    let a = manager.run_task(shared(), Some("c"));
    let b = manager.run_task(shared(), Some("c"));
    assert_eq!(a.id(), b.id(), "the second request attached to the first");
    // One worker: a second run would be queued behind the first.
    wait_busy(&pool, 1).await;

    a.cancel();
    assert_eq!(outcome(&a, 5).await, Err(MetaError::Cancelled));
    let before = published(&mut events);
    let after = timeout(DEADLINE, events.recv())
        .await
        .expect("the shared task reports on after one consumer's cancel")
        .expect("no lag on a quiet channel");
    assert!(
        matches!(after, TaskEvent::Progress { .. }),
        "{before:?} then {after:?}"
    );
    assert!(
        !is_gone(worker),
        "cancelling one consumer killed the shared task"
    );
    assert!(b.try_value().is_none(), "{:?}", b.try_value());
    assert_eq!(manager.running(), [b.id()]);

    b.cancel();
    assert_eq!(outcome(&b, 5).await, Err(MetaError::Cancelled));
    assert!(
        is_gone(worker),
        "the last consumer's cancel leaves its worker running"
    );

    // Both consumers share channel `c`: one start each, one end for the task.
    let got: Vec<TaskEvent> = before
        .into_iter()
        .chain([after])
        .chain(published(&mut events))
        .collect();
    let kinds: Vec<&str> = got
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Started { .. } => Some("started"),
            TaskEvent::Cancelled { .. } => Some("cancelled"),
            TaskEvent::Progress { .. } => None,
            _ => Some("other"),
        })
        .collect();
    assert_eq!(kinds, ["started", "started", "cancelled"], "{got:?}");
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_one_consumer_leaves_the_others_result_intact() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    let manager = TaskManager::new(pool.clone());
    let (mut on_a, mut on_b) = (manager.subscribe("a"), manager.subscribe("b"));
    let shared = || Cached::new("short-nap", demo::sleep_ms::task(300));
    let a = manager.run_task(shared(), Some("a"));
    let b = manager.run_task(shared(), Some("b"));
    wait_busy(&pool, 1).await;
    a.cancel();
    assert_eq!(outcome(&a, 5).await, Err(MetaError::Cancelled));
    assert_eq!(outcome(&b, 10).await, Ok(json!(300)));
    assert_eq!(manager.get_result_as::<u64>(b.id()).await.unwrap(), 300);

    let id = b.id();
    let a_events = until_terminal(&mut on_a, id).await;
    assert!(
        matches!(
            a_events[..],
            [TaskEvent::Started { .. }, TaskEvent::Cancelled { .. }]
        ),
        "{a_events:?}"
    );
    let b_events = until_terminal(&mut on_b, id).await;
    assert!(
        matches!(
            b_events[..],
            [TaskEvent::Started { .. }, TaskEvent::Completed { .. }]
        ),
        "{b_events:?}"
    );
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_input_of_two_meta_tasks_runs_once_and_outlives_one_of_them() {
    let _serial = serial().await;
    let pool = demo_pool(3);
    let manager = TaskManager::new(pool.clone());
    // Each call builds a task with a fresh id: progress tagged with one id for both
    // MetaTasks means one run of the shared input.
    // Four reports, 750 ms apart: `a`'s cancel comes back long before the last one.
    let shared = || Cached::new("base", demo::progress::task(4, 750));
    let seen: Arc<Mutex<Vec<(&str, Uuid)>>> = Arc::default();
    let meta = |label: &'static str, x| {
        let seen = seen.clone();
        MetaTask::new((shared(), demo::square::task(x)), |((), q)| q)
            .on_progress(move |p| seen.lock().unwrap().push((label, p.task_id)))
    };
    let a = manager.run_task(meta("a", 2), None);
    let b = manager.run_task(meta("b", 3), None);
    assert_ne!(a.id(), b.id());
    let seen_by = |label| {
        let seen = seen.lock().unwrap();
        seen.iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, id)| *id)
            .collect::<Vec<_>>()
    };
    assert!(
        support::eventually(DEADLINE, || !seen_by("a").is_empty()).await,
        "no progress reached `a`"
    );

    a.cancel();
    assert_eq!(outcome(&a, 5).await, Err(MetaError::Cancelled));
    // Progress comes before the result: had `a` waited for the shared input, all four
    // reports would be in by now.
    assert!(
        seen_by("b").len() < 4,
        "`a` waited for the shared input: {:?}",
        seen_by("b")
    );
    // The shared input went on for `b`: all four steps, from the one run `a` saw too.
    assert_eq!(outcome(&b, 10).await, Ok(json!(9)));
    let (from_a, from_b) = (seen_by("a"), seen_by("b"));
    assert_eq!(from_b.len(), 4, "{from_b:?}");
    let ids: HashSet<Uuid> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(
        ids.len(),
        1,
        "more than one run of the shared input: {ids:?}"
    );
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_results_are_reused_and_failures_recompute() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let manager = TaskManager::new(pool.clone());
    let first = manager.run_task(Cached::new("nap", demo::sleep_ms::task(200)), None);
    assert_eq!(outcome(&first, 5).await, Ok(json!(200)));

    // Same key, another task: answered with the first one's result, the 30 s task never
    // runs.
    let again = manager.run_task(Cached::new("nap", demo::sleep_ms::task(30_000)), None);
    assert_eq!(
        outcome(&again, 5).await,
        Ok(json!(200)),
        "not from the cache"
    );
    assert_ne!(
        again.id(),
        first.id(),
        "a new task, answered from the cache"
    );

    let failed = manager.run_task(Cached::new("flaky", demo::fail::task("no".into())), None);
    assert_eq!(outcome(&failed, 5).await.unwrap_err().kind(), "user_error");
    // The failure left no cache entry: the next request with the key runs its task.
    let retried = manager.run_task(Cached::new("flaky", demo::square::task(3)), None);
    assert_eq!(outcome(&retried, 5).await, Ok(json!(9)));
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_task_by_id_and_cancel_all_tasks() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    let workers = ready_pids(&pool).await;
    let manager = TaskManager::new(pool.clone());
    let (mut on_x, mut on_y) = (manager.subscribe("x"), manager.subscribe("y"));

    let unknown = Uuid::new_v4();
    match manager.cancel_task(unknown, true).await {
        Err(ManagerError::UnknownTask { id }) => assert_eq!(id, unknown),
        other => panic!("expected UnknownTask, got {other:?}"),
    }

    let x = manager.run_task(demo::sleep_ms::task(10_000), Some("x"));
    wait_busy(&pool, 1).await;
    manager.cancel_task(x.id(), true).await.unwrap();
    // Returned once the task ended: its consumer is answered, its worker reaped.
    assert_eq!(x.try_value(), Some(Err(MetaError::Cancelled)));
    assert_eq!(
        workers.iter().filter(|p| is_gone(**p)).count(),
        1,
        "{workers:?}"
    );
    let got = until_terminal(&mut on_x, x.id()).await;
    assert!(
        matches!(
            got[..],
            [TaskEvent::Started { .. }, TaskEvent::Cancelled { .. }]
        ),
        "{got:?}"
    );

    // Without notify, no terminal event.
    let y = manager.run_task(demo::sleep_ms::task(10_000), Some("y"));
    wait_busy(&pool, 1).await;
    manager.cancel_task(y.id(), false).await.unwrap();
    assert_eq!(y.try_value(), Some(Err(MetaError::Cancelled)));
    let got = published(&mut on_y);
    assert!(matches!(got[..], [TaskEvent::Started { .. }]), "{got:?}");

    let all: Vec<PendingTask> = (0..3)
        .map(|_| manager.run_task(demo::sleep_ms::task(10_000), None))
        .collect();
    wait_status(&pool, 2, 1).await;
    assert_eq!(manager.running().len(), 3);
    timeout(DEADLINE, manager.cancel_all_tasks())
        .await
        .expect("every task cancelled in time");
    assert!(
        all.iter()
            .all(|p| p.try_value() == Some(Err(MetaError::Cancelled)))
    );
    assert!(manager.running().is_empty());
    // The workers are reaped already; the pool's own bookkeeping follows a moment later.
    wait_busy(&pool, 0).await;
    drop(manager);
    finish(pool).await;
}

/// `worker_pids` names the workers running a task's own call, its inputs and the shared
/// tasks it consumes, nothing while they are queued, and `None` once the task ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pids_of_a_running_task_and_its_inputs() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    let workers = ready_pids(&pool).await;
    let manager = TaskManager::new(pool.clone());
    assert_eq!(manager.worker_pids(Uuid::new_v4()), None);

    // A nested input and a shared one (cache key): one worker each.
    let graph =
        procpool::manager::JsonGraph::parse(json!([{"$task": "sleep_ms", "args": [10_000]}]))
            .unwrap();
    let shared = Cached::new("sleeper", demo::sleep_ms::task(10_000));
    let run = manager.run_task(MetaTask::new((graph, shared), |(a, b)| (a, b)), None);
    wait_busy(&pool, 2).await;
    assert_eq!(manager.worker_pids(run.id()).unwrap(), workers);
    let queued = manager.run_task(demo::sleep_ms::task(10), None);
    wait_status(&pool, 2, 1).await;
    assert_eq!(manager.worker_pids(queued.id()), Some(vec![]));

    manager.cancel_all_tasks().await;
    assert_eq!(manager.worker_pids(run.id()), None, "ended");
    drop(manager);
    finish(pool).await;
}

// ---------------------------------------------------------------------------------------
// TaskManager: events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_then_completed_for_subscribers_before_and_during_the_run() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let manager = TaskManager::new(pool.clone());
    let mut before = manager.subscribe("ev");
    let mut probe = manager.subscribe("ev");
    let task = demo::progress::task(5, 40);
    let task_id = task.id();
    let pending = manager.run_task(task, Some("ev"));
    assert_eq!(pending.id(), task_id);

    // Join once the run is under way.
    let mut early = vec![before.recv().await.unwrap(), before.recv().await.unwrap()];
    assert!(matches!(early[1], TaskEvent::Progress { .. }), "{early:?}");
    let mut during = manager.subscribe("ev");
    early.extend(until_terminal(&mut before, task_id).await);
    let late = until_terminal(&mut during, task_id).await;

    assert_eq!(
        early[0],
        TaskEvent::Started {
            task_id,
            name: "progress".into()
        }
    );
    let fractions: Vec<f32> = early[1..early.len() - 1]
        .iter()
        .map(|e| match e {
            TaskEvent::Progress {
                task_id: t,
                input_id,
                fraction,
                ..
            } => {
                assert_eq!((*t, *input_id), (task_id, task_id));
                *fraction
            }
            other => panic!("expected progress, got {other:?}"),
        })
        .collect();
    assert_eq!(fractions, [0.2, 0.4, 0.6, 0.8, 1.0]);
    assert_eq!(early.last(), Some(&TaskEvent::Completed { task_id }));
    assert_eq!(
        late.last(),
        early.last(),
        "both subscribers see the same end"
    );
    assert!(
        late.len() < early.len(),
        "the late subscriber missed the start: {late:?}"
    );

    // The pending task resolved after its end was published: the end is there already.
    assert_eq!(outcome(&pending, 5).await, Ok(json!(null)));
    let probe_events = published(&mut probe);
    assert_eq!(probe_events.last(), Some(&TaskEvent::Completed { task_id }));
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_task_is_announced_as_done_once_and_only_when_it_is() {
    let _serial = serial().await;
    let pool = demo_pool(3);
    let manager = TaskManager::new(pool.clone());
    let mut rx = manager.subscribe("m");
    let inputs: Vec<_> = (0..3).map(|_| demo::progress::task(2, 10)).collect();
    let input_ids: HashSet<Uuid> = inputs.iter().map(|t| t.id()).collect();
    let meta = MetaTask::new(inputs, |v| v.len()).with_name("three");
    let meta_id = meta.id();
    let pending = manager.run_task(meta, Some("m"));
    assert_eq!(outcome(&pending, 10).await, Ok(json!(3)));

    let got = published(&mut rx);
    assert_eq!(
        got.first(),
        Some(&TaskEvent::Started {
            task_id: meta_id,
            name: "three".into()
        })
    );
    assert_eq!(got.last(), Some(&TaskEvent::Completed { task_id: meta_id }));
    assert_eq!(got.iter().filter(|e| e.is_terminal()).count(), 1, "{got:?}");
    let progress: Vec<Uuid> = got
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Progress {
                task_id, input_id, ..
            } => {
                assert_eq!(*task_id, meta_id);
                Some(*input_id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(progress.len(), 6, "{got:?}");
    assert!(progress.iter().all(|id| input_ids.contains(id)));

    // A failing MetaTask ends with one `failed` naming the input.
    let bad = demo::fail::task("nope".into());
    let bad_id = bad.id();
    let meta = MetaTask::new((demo::square::task(2), bad), |(q, ())| q);
    let meta_id = meta.id();
    let pending = manager.run_task(meta, Some("m"));
    let err = outcome(&pending, 10).await.unwrap_err();
    assert_eq!(err.failed_id(), Some(bad_id));
    let got = published(&mut rx);
    assert_eq!(got.len(), 2, "{got:?}");
    match &got[1] {
        TaskEvent::Failed { task_id, error } => {
            assert_eq!(*task_id, meta_id);
            assert_eq!(error.kind(), "user_error");
            assert_eq!(error.path(), Some("$.1"));
        }
        other => panic!("expected failed, got {other:?}"),
    }
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_a_task_are_published_before_its_end() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let manager = TaskManager::new(pool.clone());
    let mut rx = manager.subscribe("msg");
    let pending = manager.run_task(demo::grandchild::task(0), Some("msg"));
    assert_eq!(outcome(&pending, 10).await, Ok(json!(null)));
    let got = published(&mut rx);
    match &got[..] {
        [
            TaskEvent::Started { .. },
            TaskEvent::Message {
                input_id, bytes, ..
            },
            TaskEvent::Completed { .. },
        ] => {
            assert_eq!(*input_id, pending.id());
            let pid: u32 = std::str::from_utf8(bytes).unwrap().parse().unwrap();
            assert!(pid > 0);
        }
        other => panic!("unexpected events: {other:?}"),
    }
    drop(manager);
    finish(pool).await;
}

/// Issue 14, defect 2: a message of a task that then runs on is published while the task
/// runs, not when it ends (the forwarder lost the inbox's wake-up between polls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_managed_message_published_before_task_ends() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let manager = TaskManager::new(pool.clone());
    let mut rx = manager.subscribe("live");
    // Sends a message once the run is under way, then runs on for 30 s.
    let task = demo::messages::task(1, 8, 300, 30_000);
    let pending = manager.run_task(task, Some("live"));
    let message = timeout(Duration::from_secs(20), async {
        loop {
            match rx.recv().await.expect("no lag on a quiet channel") {
                ev @ TaskEvent::Message { .. } => return ev,
                ev => assert!(!ev.is_terminal(), "ended before its message: {ev:?}"),
            }
        }
    })
    .await
    .expect("the message is published while the task runs");
    assert!(
        matches!(&message, TaskEvent::Message { input_id, bytes, .. }
            if *input_id == pending.id() && bytes == b"mmmmmmmm"),
        "{message:?}"
    );
    assert!(pending.try_value().is_none(), "{:?}", pending.try_value());
    assert_eq!(manager.running(), [pending.id()]);
    manager.cancel_all_tasks().await;
    drop(manager);
    finish(pool).await;
}

// ---------------------------------------------------------------------------------------
// TaskManager: results

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_taken_once_expire_and_are_bounded_in_bytes() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let store = Arc::new(MemoryStore::new(64));
    let manager = TaskManager::builder(pool.clone())
        .store(store.clone())
        .result_ttl(Some(Duration::from_millis(300)))
        .build();

    let pending = manager.run_task(demo::square::task(7), None);
    assert_eq!(pending.clone().await, Ok(json!(49)));
    assert_eq!(manager.get_result(pending.id()).await.unwrap(), json!(49));
    match manager.get_result(pending.id()).await {
        Err(ManagerError::NoResult { id }) => assert_eq!(id, pending.id()),
        other => panic!("expected NoResult, got {other:?}"),
    }

    // TTL: gone once it passed.
    let (kept, expired) = (Uuid::new_v4(), Uuid::new_v4());
    manager.set_result(expired, "soon gone").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        manager.get_result(expired).await,
        Err(ManagerError::NoResult { .. })
    ));

    // Capacity: 64 bytes hold two 32-byte results; a third evicts the oldest write.
    let text = "x".repeat(30); // 32 bytes as JSON
    let (first, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    manager.set_result(first, &text).await.unwrap();
    manager.set_result(second, &text).await.unwrap();
    assert_eq!(store.used_bytes(), 64);
    manager.set_result(third, &text).await.unwrap();
    assert!(matches!(
        manager.get_result(first).await,
        Err(ManagerError::NoResult { .. })
    ));
    assert_eq!(manager.get_result(second).await.unwrap(), json!(text));
    assert_eq!(manager.get_result(third).await.unwrap(), json!(text));
    // A value larger than the whole store is refused, not stored.
    match manager.set_result(kept, &"y".repeat(100)).await {
        Err(ManagerError::Store(e)) => assert!(e.to_string().contains("102 bytes"), "{e}"),
        other => panic!("expected a store error, got {other:?}"),
    }
    assert!(store.is_empty());
    drop(manager);
    finish(pool).await;
}
