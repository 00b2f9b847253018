//! Black-box tests of task output capture: a worker's stdout and stderr come back line by
//! line as `tracing` events (target `procpool::task_output`), each attributed to the task
//! that was running and to the worker's pid; a crash report carries that task's stderr.
//!
//! The events are emitted on the pool's own supervisor thread, so the capturing subscriber
//! is the global default, installed once for this binary; each test picks its events out
//! by task id. Output travels on other pipes than results: the tests poll for it.

mod support;

use std::fmt::Debug;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use procpool::{Pool, TaskError};
use procpool_demo_tasks as demo;
use support::{assert_no_children, demo_pool, serial};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use uuid::Uuid;

/// The target of task output events (`procpool-core/src/output.rs`).
const TARGET: &str = "procpool::task_output";

/// One captured output event.
#[derive(Clone, Debug, Default, PartialEq)]
struct Line {
    /// `task_id` as recorded: the Debug text of an `Option<Uuid>`.
    task_id: String,
    worker_pid: Option<u64>,
    /// `"stdout"` or `"stderr"`.
    stream: String,
    message: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "task_id" => self.task_id = format!("{value:?}"),
            "stream" => self.stream = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "stream" => self.stream = value.to_owned(),
            "message" => self.message = value.to_owned(),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "worker_pid" {
            self.worker_pid = Some(value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "worker_pid" {
            self.worker_pid = u64::try_from(value).ok();
        }
    }
}

/// Collects every task output event of this process.
struct Capture;

static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        LINES.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

/// Installs [`Capture`] as the global subscriber, once for the whole binary.
fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .expect("nothing else in this test binary sets a global subscriber");
    });
}

/// How `task_id` reads in an event about task `id`.
fn tag(id: Uuid) -> String {
    format!("{:?}", Some(id))
}

/// The captured lines attributed to task `id`, in arrival order.
fn lines_of(id: Uuid) -> Vec<Line> {
    let tag = tag(id);
    LINES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|l| l.task_id == tag)
        .cloned()
        .collect()
}

/// The messages of task `id` on `stream`.
fn messages(lines: &[Line], stream: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.message.clone())
        .collect()
}

/// Waits until task `id` has at least `n` lines (or 3 s pass), then a little longer so
/// that extra, wrongly attributed lines would show up too; returns its lines.
async fn settled_lines_of(id: Uuid, n: usize) -> Vec<Line> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while lines_of(id).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    lines_of(id)
}

/// What `noisy(n)` writes to (stdout, stderr), as the capture renders it: every third line
/// is binary, made text by lossy UTF-8 decoding.
fn noisy_lines(n: u32) -> (Vec<String>, Vec<String>) {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                (
                    String::from_utf8_lossy(&[8, 0, 0, 0, 2, 1, 0, 0]).into_owned(),
                    String::from_utf8_lossy(&[0xff, 0xff, 0xff, 0xff]).into_owned(),
                )
            } else {
                (
                    format!("noisy stdout line {i}"),
                    format!("noisy stderr line {i}"),
                )
            }
        })
        .unzip()
}

/// The single worker of a one-worker pool.
async fn only_worker(pool: &Pool) -> u32 {
    let pids = pool.worker_pids().await;
    assert_eq!(pids.len(), 1, "{pids:?}");
    pids[0]
}

/// Asserts that task `id` produced exactly `noisy(n)`'s lines, all from worker `pid`.
#[track_caller]
fn assert_noisy_output(lines: &[Line], n: u32, pid: u32) {
    let (want_out, want_err) = noisy_lines(n);
    assert_eq!(messages(lines, "stdout"), want_out, "stdout of noisy({n})");
    assert_eq!(messages(lines, "stderr"), want_err, "stderr of noisy({n})");
    assert_eq!(lines.len(), 2 * n as usize, "{lines:#?}");
    for l in lines {
        assert_eq!(l.worker_pid, Some(u64::from(pid)), "{l:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_output_is_attributed_to_its_task_and_worker() {
    let _serial = serial().await;
    capture();
    let pool = demo_pool(1);
    let pid = only_worker(&pool).await;

    let h = pool.submit(demo::noisy::task(30));
    let id = h.id();
    assert_eq!(h.await.unwrap(), 30);
    let lines = settled_lines_of(id, 60).await;
    assert_noisy_output(&lines, 30, pid);
    // Spot checks of the rendering, beside the generated expectation.
    assert!(lines.contains(&Line {
        task_id: format!("Some({id})"),
        worker_pid: Some(u64::from(pid)),
        stream: "stdout".into(),
        message: "noisy stdout line 1".into(),
    }));
    assert!(lines.contains(&Line {
        task_id: format!("Some({id})"),
        worker_pid: Some(u64::from(pid)),
        stream: "stderr".into(),
        message: "noisy stderr line 29".into(),
    }));
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_tasks_on_one_worker_get_their_own_lines() {
    let _serial = serial().await;
    capture();
    let pool = demo_pool(1);
    let pid = only_worker(&pool).await;

    // Submitted together: the worker gets each next Run as soon as it reports the previous
    // task done, so a late line of one task would land on the next. Different counts make
    // any misattribution visible.
    let counts: Vec<u32> = (0..12).map(|i| 2 + (i % 4) * 3).collect();
    let handles: Vec<_> = counts
        .iter()
        .map(|&n| pool.submit(demo::noisy::task(n)))
        .collect();
    let ids: Vec<Uuid> = handles.iter().map(|h| h.id()).collect();
    for (h, &n) in handles.into_iter().zip(&counts) {
        assert_eq!(h.await.unwrap(), n);
    }
    for (&id, &n) in ids.iter().zip(&counts) {
        let lines = settled_lines_of(id, 2 * n as usize).await;
        assert_noisy_output(&lines, n, pid);
    }
    // Nothing from these tasks went unattributed either.
    let stray: Vec<Line> = LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.worker_pid == Some(u64::from(pid)) && l.task_id == "None")
        .cloned()
        .collect();
    assert!(stray.is_empty(), "lines of no task: {stray:#?}");
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_message_is_stderr_of_the_panicking_task() {
    let _serial = serial().await;
    capture();
    let pool = demo_pool(1);
    let pid = only_worker(&pool).await;

    let h = pool.submit(demo::panic::task("boom".into()));
    let id = h.id();
    let err = h.await.expect_err("the task panics");
    let TaskError::Panicked {
        message, location, ..
    } = &err
    else {
        panic!("expected a panic, got {err:?}");
    };
    assert_eq!(message, "boom");
    let location = location.as_deref().expect("a panic location");
    let lines = settled_lines_of(id, 1).await;
    assert_eq!(
        lines,
        [Line {
            task_id: tag(id),
            worker_pid: Some(u64::from(pid)),
            stream: "stderr".into(),
            message: format!("task panicked at {location}: boom"),
        }]
    );
    // The worker survived the panic and attributes the next task's output afresh.
    let h = pool.submit(demo::noisy::task(2));
    let next = h.id();
    assert_eq!(h.await.unwrap(), 2);
    assert_noisy_output(&settled_lines_of(next, 4).await, 2, pid);
    assert_eq!(lines_of(id).len(), 1, "{:#?}", lines_of(id));
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_report_holds_only_the_crashing_tasks_stderr() {
    let _serial = serial().await;
    capture();
    let pool = demo_pool(1);
    let pid = only_worker(&pool).await;

    // Lots of stderr from a previous task on the same worker, then a silent crash: none
    // of the previous task's lines may end up in the crash report.
    let noisy = pool.submit(demo::noisy::task(50));
    let noisy_id = noisy.id();
    let crash = pool.submit(demo::exit::task(3));
    let crash_id = crash.id();
    assert_eq!(noisy.await.unwrap(), 50);
    let err = crash.await.expect_err("the worker exits");
    assert!(
        matches!(&err, TaskError::Crashed { signal: None, exit_code: Some(3), stderr_tail }
            if stderr_tail.is_empty()),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "worker process exited with code 3 while running the task"
    );
    assert_noisy_output(&settled_lines_of(noisy_id, 100).await, 50, pid);
    assert_eq!(lines_of(crash_id), []);
    drop(pool);
    assert_no_children();
}

/// A one-worker pool whose task output is kept with the results, up to `max_bytes`.
fn capturing_pool(max_bytes: usize) -> Pool {
    Pool::builder()
        .worker(support::demo_worker())
        .workers(1)
        .task_output(procpool::pool::TaskOutput::Capture { max_bytes })
        .build()
        .expect("the demo worker pool starts")
}

/// `lines` as captured text: each line ended by `\n`.
fn text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_output_comes_back_with_each_result_and_never_mixes() {
    let _serial = serial().await;
    let pool = capturing_pool(1 << 20);
    // Back to back on one worker, submitted at once: each task's lines are its own,
    // whole, though the next task starts as soon as the previous one ended.
    let sizes: Vec<u32> = (0..40).map(|i| 1 + (i * 7) % 23).collect();
    let handles: Vec<_> = sizes
        .iter()
        .map(|&n| pool.submit(demo::noisy::task(n)))
        .collect();
    for (mut h, n) in handles.into_iter().zip(sizes) {
        assert_eq!((&mut h).await.unwrap(), n);
        let output = h.output().expect("captured output");
        let (out, err) = noisy_lines(n);
        assert_eq!(output.stdout, text(&out), "stdout of noisy({n})");
        assert_eq!(output.stderr, text(&err), "stderr of noisy({n})");
        assert!(!output.truncated);
    }
    // A failed task keeps its output too: the panic message is its stderr.
    let mut h = pool.submit(demo::panic::task("boom".into()));
    let err = (&mut h).await.expect_err("the task panics");
    let output = h.output().expect("captured output");
    assert!(output.stdout.is_empty(), "{output:?}");
    assert!(
        output.stderr.starts_with("task panicked at ") && output.stderr.ends_with(": boom\n"),
        "{output:?} for {err:?}"
    );
    drop(pool);
    assert_no_children();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_output_is_bounded_and_says_so() {
    let _serial = serial().await;
    let pool = capturing_pool(200);
    let mut h = pool.submit(demo::noisy::task(100));
    assert_eq!((&mut h).await.unwrap(), 100);
    let output = h.output().expect("captured output");
    assert!(output.truncated, "{output:?}");
    assert!(
        output.stdout.len() + output.stderr.len() <= 200,
        "{output:?}"
    );
    // The first lines of each stream are the ones kept (the two streams share the bound
    // and are read side by side, so how it splits between them varies).
    let (out, err) = noisy_lines(100);
    for (kept, all) in [(&output.stdout, text(&out)), (&output.stderr, text(&err))] {
        let whole_lines = &kept[..kept.rfind('\n').map_or(0, |i| i + 1)];
        assert!(all.starts_with(whole_lines), "{output:?}");
    }
    assert!(
        !output.stdout.is_empty() || !output.stderr.is_empty(),
        "{output:?}"
    );
    // Another task starts with a fresh bound.
    let mut h = pool.submit(demo::noisy::task(2));
    assert_eq!((&mut h).await.unwrap(), 2);
    let output = h.output().expect("captured output");
    assert!(!output.truncated, "{output:?}");
    // Without Capture there is nothing to read.
    let plain = demo_pool(1);
    let mut h = plain.submit(demo::noisy::task(1));
    assert_eq!((&mut h).await.unwrap(), 1);
    assert_eq!(h.output(), None);
    drop((pool, plain));
    assert_no_children();
}
