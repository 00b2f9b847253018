//! Issue 17, through the Rust API with real `procpool-demo` workers: keyword arguments
//! matched to the parameter names the workers announce (`Task::json_kwargs`, nested
//! `$task` objects), and a task's own `notify_channels` under a task manager (`Task`,
//! `MetaTask`, `Cached`). Every test takes `support::serial()` and ends by shutting its pool
//! down and checking that no child process is left.

mod support;

use std::time::Duration;

use procpool::{
    Cached, JsonGraph, MetaError, MetaTask, Pool, Shutdown, Task, TaskError, TaskEvent, TaskManager,
};
use procpool_demo_tasks as demo;
use serde_json::{Map, Value, json};
use support::{assert_no_children, demo_pool, serial};
use tokio::sync::broadcast;
use tokio::time::timeout;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Helpers

async fn finish(pool: Pool) {
    pool.shutdown(Shutdown::Kill).await;
    drop(pool);
    assert_no_children();
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("a JSON object")
}

/// Events of `rx` up to and including the first terminal one of `task`; fails after 10 s.
async fn until_terminal(rx: &mut broadcast::Receiver<TaskEvent>, task: Uuid) -> Vec<TaskEvent> {
    let mut seen = Vec::new();
    loop {
        let ev = timeout(Duration::from_secs(10), rx.recv())
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

/// The kinds of `events`, in order.
fn kinds(events: &[TaskEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            TaskEvent::Started { .. } => "started",
            TaskEvent::Progress { .. } => "progress",
            TaskEvent::Message { .. } => "message",
            TaskEvent::Completed { .. } => "completed",
            TaskEvent::Failed { .. } => "failed",
            TaskEvent::Cancelled { .. } => "cancelled",
            _ => "other",
        })
        .collect()
}

fn bad_args_message(e: TaskError) -> String {
    match e {
        TaskError::BadArgs { message } => message,
        other => panic!("expected bad_args, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Keyword arguments

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_arguments_fill_parameters_by_name_and_an_option_may_be_left_out() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    let greet = |args: Vec<Value>, kw: Value| Task::json_kwargs("greet", args, kwargs(kw));
    // Order by name, not by position in the object.
    let hi = pool.run(greet(vec![], json!({"greeting": "Hi", "name": "Ada"})));
    assert_eq!(hi.await.unwrap(), json!("Hi, Ada!"));
    // `greeting: Option<String>` left out: `None`.
    let hello = pool.run(greet(vec![], json!({"name": "Ada"})));
    assert_eq!(hello.await.unwrap(), json!("Hello, Ada!"));
    let mixed = pool.run(greet(vec![json!("Bo")], json!({"greeting": "Hey"})));
    assert_eq!(mixed.await.unwrap(), json!("Hey, Bo!"));
    // Positional arguments only, through the same constructor: the option still optional.
    let positional = pool.run(greet(vec![json!("Cy")], json!({})));
    assert_eq!(positional.await.unwrap(), json!("Hello, Cy!"));
    let add = Task::json_kwargs("add", vec![json!(40)], kwargs(json!({"b": 2})));
    assert_eq!(pool.run(add).await.unwrap(), json!(42));
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_keyword_argument_fails_before_the_task_is_queued_naming_it() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let cases = [
        (
            vec![json!(1)],
            json!({"c": 2}),
            "add has no parameter named \"c\" (its parameters: a, b)",
        ),
        (
            vec![json!(1)],
            json!({"a": 2, "b": 3}),
            "argument \"a\" of add given both by position and by keyword",
        ),
        (
            vec![],
            json!({"a": 1}),
            "missing argument \"b\" of add (b: i64)",
        ),
        (
            vec![json!(1), json!(2), json!(3)],
            json!({}),
            "add takes 2 arguments, 3 given by position",
        ),
    ];
    for (args, kw, expected) in cases {
        let handle = pool.submit(Task::json_kwargs("add", args, kwargs(kw)));
        // Refused at submission: it never reached a worker.
        assert_eq!(handle.started().await, None);
        assert_eq!(handle.attempts(), 0);
        assert_eq!(bad_args_message(handle.await.unwrap_err()), expected);
    }
    let err = pool.bind_json("no_such_task", vec![], kwargs(json!({"a": 1})));
    assert!(
        matches!(err, Err(TaskError::UnknownTask { ref name }) if name == "no_such_task"),
        "{err:?}"
    );
    // A parameter that is not an Option must be given.
    let err = pool
        .bind_json("greet", vec![], kwargs(json!({"greeting": "Hi"})))
        .unwrap_err();
    assert_eq!(
        bad_args_message(err),
        "missing argument \"name\" of greet (name: String)"
    );
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_tasks_take_keyword_arguments_and_a_bad_one_queues_nothing() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    let graph = JsonGraph::parse(json!([
        {"$task": "add", "kwargs": {"b": 1, "a": {"$task": "square", "kwargs": {"x": 3}}}},
        {"$task": "greet", "args": ["Ada"], "kwargs": {"greeting": "Hi"}}
    ]))
    .unwrap();
    let got = MetaTask::new(graph, |v: Value| v).run(&pool).await.unwrap();
    assert_eq!(got, json!([10, "Hi, Ada!"]));

    // A long sleeper beside a bad call: the run fails at once with bad_args naming the
    // call's place, and the sleeper never reached a worker (none was started or killed).
    let starts = pool.status().await.worker_starts;
    let pids = pool.worker_pids().await;
    let graph = JsonGraph::parse(json!([
        {"$task": "sleep_ms", "args": [30000]},
        {"x": {"$task": "add", "args": [1], "kwargs": {"a": 2}}}
    ]))
    .unwrap();
    let run = MetaTask::new(graph, |v: Value| v).run(&pool);
    let err = timeout(Duration::from_secs(10), run)
        .await
        .expect("no wait for the sleeper")
        .unwrap_err();
    assert_eq!(err.kind(), "bad_args", "{err:?}");
    assert_eq!(err.path(), Some("$[1][\"x\"]"), "{err:?}");
    assert_eq!(err.failed_name(), Some("add"));
    assert_eq!(
        err.task_error().unwrap().to_string(),
        "bad arguments: argument \"a\" of add given both by position and by keyword"
    );
    let status = pool.status().await;
    assert_eq!((status.busy, status.queued), (0, 0), "{status:?}");
    assert_eq!(status.worker_starts, starts, "no worker was killed");
    assert_eq!(pool.worker_pids().await, pids);
    finish(pool).await;
}

// ---------------------------------------------------------------------------------------
// notify_channels

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_notifies_its_own_channels_once_each_beside_the_run_task_channel() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let manager = TaskManager::new(pool.clone());
    let (mut ui, mut a, mut b, mut other) = (
        manager.subscribe("ui"),
        manager.subscribe("a"),
        manager.subscribe("b"),
        manager.subscribe("other"),
    );
    // `a` twice, and `ui` also the run_task channel: each is still notified once.
    let task = demo::progress::task(4, 5).notify_channels(["a", "b", "a", "ui"]);
    assert_eq!(task.notified_channels(), ["a", "b", "ui"]);
    let id = task.id();
    let pending = manager.run_task(task, Some("ui"));
    let on_ui = until_terminal(&mut ui, id).await;
    assert_eq!(
        kinds(&on_ui),
        [
            "started",
            "progress",
            "progress",
            "progress",
            "progress",
            "completed"
        ]
    );
    assert_eq!(until_terminal(&mut a, id).await, on_ui);
    assert_eq!(until_terminal(&mut b, id).await, on_ui);
    assert_eq!(pending.value().await, Ok(Value::Null));
    // Nothing after the terminal event, and nothing on a channel not named.
    assert!(published(&mut ui).is_empty());
    assert!(published(&mut a).is_empty(), "no duplicate on `a`");
    assert!(published(&mut other).is_empty());

    // A failure ends each channel with one `failed`.
    let task = demo::panic::task("boom".into()).notify_channels(["a"]);
    let id = task.id();
    let pending = manager.run_task(task, None);
    let on_a = until_terminal(&mut a, id).await;
    assert_eq!(kinds(&on_a), ["started", "failed"]);
    assert_eq!(pending.value().await.unwrap_err().kind(), "panicked");
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_task_notifies_its_channels_with_every_input_s_progress() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    let manager = TaskManager::new(pool.clone());
    let mut m = manager.subscribe("m");
    let inputs = vec![demo::progress::task(2, 5), demo::progress::task(2, 5)];
    let input_ids: Vec<Uuid> = inputs.iter().map(|t| t.id()).collect();
    let meta = MetaTask::new(inputs, |v: Vec<()>| v.len())
        .with_name("two")
        .notify_channels(["m", "m"]);
    let id = meta.id();
    let pending = manager.run_task(meta, None);
    let got = until_terminal(&mut m, id).await;
    assert_eq!(
        got.first(),
        Some(&TaskEvent::Started {
            task_id: id,
            name: "two".into()
        })
    );
    assert_eq!(got.last(), Some(&TaskEvent::Completed { task_id: id }));
    let from: Vec<Uuid> = got
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Progress { input_id, .. } => Some(*input_id),
            _ => None,
        })
        .collect();
    assert_eq!(from.len(), 4, "{got:?}");
    assert!(from.iter().all(|i| input_ids.contains(i)), "{got:?}");
    assert_eq!(pending.value().await, Ok(json!(2)));
    assert!(published(&mut m).is_empty());
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_attaching_by_cache_key_add_their_channels_and_leave_with_them() {
    let _serial = serial().await;
    let pool = demo_pool(1);
    let manager = TaskManager::new(pool.clone());
    let mut rx: Vec<_> = ["ui", "x", "y", "z"]
        .iter()
        .map(|c| manager.subscribe(c))
        .collect();
    // 1 s of work, then a result: time enough for three consumers to attach and one to
    // leave, even on a loaded machine.
    let shared = || Cached::new("nap", demo::sleep_ms::task(1000));
    let a = manager.run_task(shared().notify_channels(["x"]), Some("ui"));
    let b = manager.run_task(shared().notify_channels(["y", "z"]), None);
    let c = manager.run_task(shared().notify_channels(["z"]), None);
    let id = a.id();
    assert_eq!((b.id(), c.id()), (id, id), "one task, three consumers");
    // `b` leaves: `y` was only its own and is told so; `z` is still `c`'s.
    b.cancel();
    assert_eq!(b.value().await, Err(MetaError::Cancelled));
    assert_eq!(a.value().await, Ok(json!(1000)));
    assert_eq!(c.value().await, Ok(json!(1000)));

    let got: Vec<Vec<&str>> = rx
        .iter_mut()
        .map(|r| {
            let events = published(r);
            assert!(events.iter().all(|e| e.task_id() == id), "{events:?}");
            kinds(&events)
        })
        .collect();
    assert_eq!(got[0], ["started", "completed"], "ui");
    assert_eq!(got[1], ["started", "completed"], "x");
    assert_eq!(got[2], ["started", "cancelled"], "y");
    // One start per consumer on `z` (b's and c's), and one end for the task.
    assert_eq!(got[3], ["started", "started", "completed"], "z");
    drop(manager);
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_input_notifies_its_channels_under_its_own_id() {
    let _serial = serial().await;
    let pool = demo_pool(2);
    let manager = TaskManager::new(pool.clone());
    let (mut outer, mut inner) = (manager.subscribe("outer"), manager.subscribe("inner"));
    let shared = Cached::new("sq-3", demo::square::task(3).notify_channels(["inner"]));
    let meta = MetaTask::new((shared, demo::square::task(4)), |(a, b)| a + b);
    let id = meta.id();
    let pending = manager.run_task(meta, Some("outer"));
    assert_eq!(pending.value().await, Ok(json!(25)));
    let on_outer = until_terminal(&mut outer, id).await;
    assert_eq!(kinds(&on_outer), ["started", "completed"]);
    let on_inner = published(&mut inner);
    assert_eq!(kinds(&on_inner), ["started", "completed"], "{on_inner:?}");
    let inner_id = on_inner[0].task_id();
    assert_ne!(inner_id, id);
    assert_eq!(on_inner[1], TaskEvent::Completed { task_id: inner_id });
    drop(manager);
    finish(pool).await;
}
