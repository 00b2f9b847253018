//! The "application re-executes itself as the worker" mode, end to end.
//!
//! This test binary has its own `main` (`harness = false`) under `#[procpool::main]`: the
//! pool's default worker is `current_exe()`, i.e. this very binary started again with
//! `PROCPOOL_WORKER` set, where `#[procpool::main]` serves the tasks below and the test
//! body never runs. It covers each shape `#[procpool::task]` accepts (several arguments
//! with a private serde struct, `async` on tokio's time driver, `Result<T, String>`,
//! `anyhow::Result<T>`, no arguments, `()`), the task context (`current_task_id`,
//! `is_worker`), the manifest in `Pool::tasks()`, and that `#[procpool::main]` composes
//! with `#[tokio::main]`. It ends by dropping the pool and checking that no child process,
//! running or zombie, is left.
//!
//! Run with `cargo test -p procpool --test self_exec`; prints `self_exec: N passed, 0
//! failed` and panics (exit code 101) on any failure.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use procpool::{Pool, Task, TaskError};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// The tasks. Private on purpose: the generated handle modules live beside them.
// ---------------------------------------------------------------------------------------

/// A user type crossing the process boundary in both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    y: i64,
}

/// Plain function, two arguments; also called locally in the parent.
#[procpool::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Several arguments of several shapes, a user struct in and out.
#[procpool::task]
fn translate(p: Point, by: (i64, i64), times: u32, label: String) -> (String, Point) {
    let t = i64::from(times);
    (
        format!("{label}@{times}"),
        Point {
            x: p.x + by.0 * t,
            y: p.y + by.1 * t,
        },
    )
}

/// Parameter types written as a path, a nested generic and an array.
#[procpool::task]
fn tally(
    counts: std::collections::BTreeMap<String, u32>,
    points: Option<Vec<Point>>,
    bonus: [u8; 2],
) -> u64 {
    counts.values().map(|v| u64::from(*v)).sum::<u64>()
        + points.map_or(0, |p| p.len() as u64)
        + bonus.iter().map(|b| u64::from(*b)).sum::<u64>()
}

/// `async`: sleeps on tokio's time driver and spawns onto the worker's runtime.
/// Returns the milliseconds it actually slept.
#[procpool::task]
async fn nap(ms: u64) -> u64 {
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let helper = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        1u64
    });
    let one = helper.await.expect("the helper task does not panic");
    t0.elapsed().as_millis() as u64 * one
}

/// `Result<T, String>`.
#[procpool::task]
fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        Err(format!("cannot divide {a} by zero"))
    } else {
        Ok(a / b)
    }
}

/// `anyhow::Result<T>` with a context layer over the source error.
#[procpool::task]
fn parse_port(text: String) -> anyhow::Result<u16> {
    text.parse::<u16>()
        .with_context(|| format!("invalid port {text:?}"))
}

/// No arguments.
#[procpool::task]
fn answer() -> u32 {
    42
}

/// Returns `()`: its effect is a file the parent can look at.
#[procpool::task]
fn touch(path: String) {
    std::fs::write(&path, format!("touched by {}", std::process::id()))
        .expect("the file is writable")
}

/// The task context as the worker sees it: its task id, whether it is a worker, its pid.
#[procpool::task]
fn whoami() -> (Option<procpool::Uuid>, bool, u32) {
    (
        procpool::current_task_id(),
        procpool::worker::is_worker(),
        std::process::id(),
    )
}

// ---------------------------------------------------------------------------------------
// The test body: only ever runs in the parent.
// ---------------------------------------------------------------------------------------

type Outcome = Result<(), String>;

/// `Err` with both values when they differ.
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(format!(
                "line {}: {} != {}\n   left: {:?}\n  right: {:?}",
                line!(),
                stringify!($left),
                stringify!($right),
                l,
                r
            ));
        }
    }};
}

/// `Err` with the condition's text when it does not hold.
macro_rules! ensure {
    ($cond:expr $(, $($fmt:tt)+)?) => {{
        if !$cond {
            return Err(format!(
                "line {}: {}{}",
                line!(),
                stringify!($cond),
                ensure!(@msg $($($fmt)+)?)
            ));
        }
    }};
    (@msg) => { String::new() };
    (@msg $($fmt:tt)+) => { format!(": {}", format!($($fmt)+)) };
}

/// A task that must succeed, with its error in the message when it does not.
async fn ok<R: serde::de::DeserializeOwned>(pool: &Pool, task: Task<R>) -> Result<R, String> {
    let name = task.name().to_owned();
    tokio::time::timeout(Duration::from_secs(10), pool.run(task))
        .await
        .map_err(|_| format!("{name}: no result within 10 s"))?
        .map_err(|e| format!("{name} failed: {e} ({e:?})"))
}

/// A task that must fail.
async fn err<R: serde::de::DeserializeOwned + std::fmt::Debug>(
    pool: &Pool,
    task: Task<R>,
) -> Result<TaskError, String> {
    let name = task.name().to_owned();
    match tokio::time::timeout(Duration::from_secs(10), pool.run(task)).await {
        Err(_) => Err(format!("{name}: no result within 10 s")),
        Ok(Ok(v)) => Err(format!("{name} succeeded with {v:?}, expected an error")),
        Ok(Err(e)) => Ok(e),
    }
}

async fn local_calls() -> Outcome {
    ensure!(!procpool::worker::is_worker());
    ensure_eq!(procpool::current_task_id(), None);
    // The functions stay plain functions in the parent.
    ensure_eq!(add(1, 2), 3);
    ensure_eq!(answer(), 42);
    ensure_eq!(checked_div(7, 2), Ok(3));
    ensure_eq!(
        parse_port("x".into()).map_err(|e| format!("{e:#}")),
        Err(r#"invalid port "x": invalid digit found in string"#.to_owned())
    );
    ensure_eq!(whoami(), (None, false, std::process::id()));
    ensure_eq!(add::NAME, "add");
    Ok(())
}

async fn plain_arguments(pool: &Pool) -> Outcome {
    ensure_eq!(ok(pool, add::task(1, 2)).await?, 3);
    ensure_eq!(ok(pool, add::task(i64::MIN + 1, -1)).await?, i64::MIN);
    let (label, p) = ok(
        pool,
        translate::task(Point { x: 1, y: -2 }, (10, 100), 3, "moved".into()),
    )
    .await?;
    ensure_eq!(label, "moved@3");
    ensure_eq!(p, Point { x: 31, y: 298 });
    let counts = BTreeMap::from([("a".to_owned(), 2u32), ("b".to_owned(), 5)]);
    ensure_eq!(
        ok(pool, tally::task(counts.clone(), None, [0, 0])).await?,
        7
    );
    let points = vec![Point { x: 0, y: 0 }, Point { x: 1, y: 1 }];
    ensure_eq!(
        ok(pool, tally::task(counts, Some(points), [10, 20])).await?,
        39
    );
    Ok(())
}

async fn zero_args_and_unit(pool: &Pool) -> Outcome {
    ensure_eq!(ok(pool, answer::task()).await?, 42);
    let path = scratch_file("touch");
    let _ = std::fs::remove_file(&path);
    let unit: () = ok(pool, touch::task(path.display().to_string())).await?;
    ensure_eq!(unit, ());
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    ensure!(
        text.starts_with("touched by ") && text != format!("touched by {}", std::process::id()),
        "written by a worker, not by the parent: {text:?}"
    );
    Ok(())
}

async fn async_task_on_tokio_time(pool: &Pool) -> Outcome {
    let t0 = Instant::now();
    let slept = ok(pool, nap::task(50)).await?;
    ensure!((50..5_000).contains(&slept), "slept {slept} ms");
    ensure!(t0.elapsed() >= Duration::from_millis(50));
    // A second run reuses the worker's runtime (created on first use).
    ensure!(ok(pool, nap::task(1)).await? >= 1);
    Ok(())
}

async fn result_with_string_error(pool: &Pool) -> Outcome {
    ensure_eq!(ok(pool, checked_div::task(7, 2)).await?, 3);
    let e = err(pool, checked_div::task(7, 0)).await?;
    ensure_eq!(e.kind(), "user_error");
    ensure_eq!(
        e,
        TaskError::User {
            type_name: std::any::type_name::<String>().to_owned(),
            message: "cannot divide 7 by zero".to_owned(),
        }
    );
    ensure!(!e.is_crash() && !e.is_cancelled() && !e.is_timeout());
    ensure_eq!(
        e.to_string(),
        "task returned an error (alloc::string::String): cannot divide 7 by zero"
    );
    Ok(())
}

async fn result_with_anyhow_error(pool: &Pool) -> Outcome {
    ensure_eq!(ok(pool, parse_port::task("8080".into())).await?, 8080);
    let e = err(pool, parse_port::task("80x".into())).await?;
    ensure_eq!(e.kind(), "user_error");
    let TaskError::User { type_name, message } = &e else {
        return Err(format!("not a user error: {e:?}"));
    };
    ensure_eq!(type_name, "anyhow::Error");
    // `{:#}`: the context and its source, not just the outer layer.
    ensure_eq!(
        message,
        r#"invalid port "80x": invalid digit found in string"#
    );
    let e = err(pool, parse_port::task("70000".into())).await?;
    ensure!(
        matches!(&e, TaskError::User { message, .. }
            if message == r#"invalid port "70000": number too large to fit in target type"#),
        "{e:?}"
    );
    Ok(())
}

async fn task_context(pool: &Pool) -> Outcome {
    let pids = pool.worker_pids().await;
    ensure_eq!(pids.len(), 2);
    ensure!(!pids.contains(&std::process::id()));
    // Several at once, so both workers answer.
    let handles: Vec<_> = (0..6).map(|_| pool.submit(whoami::task())).collect();
    let mut seen_pids = Vec::new();
    for h in handles {
        let id = h.id();
        let (task_id, in_worker, pid) = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "whoami: no result within 10 s".to_owned())?
            .map_err(|e| format!("whoami failed: {e:?}"))?;
        ensure_eq!(task_id, Some(id));
        ensure!(in_worker, "is_worker() is false inside the worker");
        ensure!(pids.contains(&pid), "pid {pid} is not a worker of {pids:?}");
        seen_pids.push(pid);
    }
    // Six tasks submitted at once to two idle workers: both get some.
    seen_pids.sort_unstable();
    seen_pids.dedup();
    let mut all = pids.clone();
    all.sort_unstable();
    ensure_eq!(seen_pids, all);
    // An id set by the caller is the one the task sees.
    // A fresh UUID from a task that is never run.
    let chosen = answer::task().id();
    let (task_id, _, _) = ok(pool, whoami::task().with_id(chosen)).await?;
    ensure_eq!(task_id, Some(chosen));
    ensure!(
        !procpool::worker::is_worker(),
        "is_worker() is true in the parent"
    );
    Ok(())
}

async fn untyped_and_bad_arguments(pool: &Pool) -> Outcome {
    let v = ok(pool, Task::json("add", serde_json::json!([40, 2]))).await?;
    ensure_eq!(v, serde_json::json!(42));
    let v = ok(
        pool,
        Task::json(
            "translate",
            serde_json::json!([{"x": 1, "y": 2}, [1, 1], 1, "j"]),
        ),
    )
    .await?;
    ensure_eq!(v, serde_json::json!(["j@1", {"x": 2, "y": 3}]));
    let e = err(pool, Task::json("add", serde_json::json!([1]))).await?;
    ensure_eq!(e.kind(), "bad_args");
    let e = err(pool, Task::json("no_such_task", serde_json::json!([]))).await?;
    ensure_eq!(
        e,
        TaskError::UnknownTask {
            name: "no_such_task".into()
        }
    );
    Ok(())
}

async fn manifest(pool: &Pool) -> Outcome {
    // (name, [(param, type)], result, fallible, async), sorted by name as announced.
    type Expected = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        bool,
        bool,
    );
    let want: &[Expected] = &[
        ("add", &[("a", "i64"), ("b", "i64")], "i64", false, false),
        ("answer", &[], "u32", false, false),
        (
            "checked_div",
            &[("a", "i64"), ("b", "i64")],
            "i64",
            true,
            false,
        ),
        ("nap", &[("ms", "u64")], "u64", false, true),
        ("parse_port", &[("text", "String")], "u16", true, false),
        (
            "tally",
            &[
                ("counts", "std::collections::BTreeMap<String, u32>"),
                ("points", "Option<Vec<Point>>"),
                ("bonus", "[u8; 2]"),
            ],
            "u64",
            false,
            false,
        ),
        ("touch", &[("path", "String")], "()", false, false),
        (
            "translate",
            &[
                ("p", "Point"),
                ("by", "(i64, i64)"),
                ("times", "u32"),
                ("label", "String"),
            ],
            "(String, Point)",
            false,
            false,
        ),
        (
            "whoami",
            &[],
            "(Option<procpool::Uuid>, bool, u32)",
            false,
            false,
        ),
    ];
    let got = pool.tasks();
    let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|w| w.0).collect();
    ensure_eq!(names, want_names);
    let mut problems = Vec::new();
    for (info, (name, params, result, fallible, is_async)) in got.iter().zip(want) {
        let got_params: Vec<(&str, &str)> = info
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.type_name.as_str()))
            .collect();
        if got_params != *params {
            problems.push(format!("{name}: params {got_params:?}, want {params:?}"));
        }
        if info.result != *result {
            problems.push(format!("{name}: result {:?}, want {result:?}", info.result));
        }
        if (info.fallible, info.is_async) != (*fallible, *is_async) {
            problems.push(format!(
                "{name}: (fallible, is_async) = {:?}, want {:?}",
                (info.fallible, info.is_async),
                (fallible, is_async)
            ));
        }
    }
    ensure!(problems.is_empty(), "\n    {}", problems.join("\n    "));
    Ok(())
}

/// A file name of this process in the temp directory.
fn scratch_file(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("procpool-self-exec-{}-{what}", std::process::id()))
}

/// `(pid, state)` of every child of this process, zombies included (`/proc/*/stat`).
fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // comm may hold spaces and parentheses: the fields start after the last ')'.
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = rest.next()?.chars().next()?;
            let ppid: u32 = rest.next()?.parse().ok()?;
            (ppid == me).then_some((pid, state))
        })
        .collect()
}

/// Runs the checks in order, printing one line each; the totals at the end.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: Vec<String>,
}

impl Report {
    async fn check(&mut self, name: &str, body: impl Future<Output = Outcome>) {
        match body.await {
            Ok(()) => {
                println!("test {name} ... ok");
                self.passed += 1;
            }
            Err(why) => {
                println!("test {name} ... FAILED\n    {why}");
                self.failed.push(name.to_owned());
            }
        }
    }
}

#[procpool::main]
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut report = Report::default();
    // Before any pool: a worker has no business here.
    report.check("local_calls", local_calls()).await;

    // No `.worker(..)`: the default worker is this very executable.
    let pool = Pool::builder()
        .workers(2)
        .build()
        .expect("a pool of this test binary starts");
    let pids = pool.worker_pids().await;

    report.check("manifest", manifest(&pool)).await;
    report
        .check("plain_arguments", plain_arguments(&pool))
        .await;
    report
        .check("zero_args_and_unit", zero_args_and_unit(&pool))
        .await;
    report
        .check("async_task_on_tokio_time", async_task_on_tokio_time(&pool))
        .await;
    report
        .check("result_with_string_error", result_with_string_error(&pool))
        .await;
    report
        .check("result_with_anyhow_error", result_with_anyhow_error(&pool))
        .await;
    report.check("task_context", task_context(&pool)).await;
    report
        .check(
            "untyped_and_bad_arguments",
            untyped_and_bad_arguments(&pool),
        )
        .await;
    // Nothing above crashes a worker: the pool still runs on the workers it started with.
    report
        .check("workers_survive", async {
            let mut now = pool.worker_pids().await;
            now.sort_unstable();
            let mut before = pids.clone();
            before.sort_unstable();
            ensure_eq!(now, before);
            Ok(())
        })
        .await;

    // Dropping the last clone kills and reaps every worker before it returns.
    drop(pool);
    report
        .check("no_child_left", async {
            let left = children();
            ensure!(
                left.is_empty(),
                "children left behind (pid, state): {left:?}"
            );
            Ok(())
        })
        .await;

    println!(
        "self_exec: {} passed, {} failed",
        report.passed,
        report.failed.len()
    );
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
}
