//! The re-exec contract at its edges (issue 14), with this binary as both the parent and
//! the worker: what a worker leaves in its environment for the programs its tasks start,
//! a `main` that forgot `procpool::init()`, `init()` inside `#[tokio::main]`, a bad
//! `PROCPOOL_MAX_FRAME`, and progress or messages above the frame cap.
//!
//! Its own `main` (`harness = false`) picks a role from `INIT_CONTRACT_MODE`, which the
//! parent sets for the processes it starts; unset, it is the parent and runs the checks.
//! Run with `cargo test -p procpool --test init_contract`; prints `init_contract: N
//! passed, 0 failed` and panics (exit code 101) on any failure, including when no check
//! ran.

use std::process::Command;
use std::time::Duration;

use procpool::{Pool, TaskError};

/// Chooses the role of a process of this binary.
const MODE: &str = "INIT_CONTRACT_MODE";

// ---------------------------------------------------------------------------------------
// Tasks

/// Starts this binary again, as a plain program that calls `procpool::init()` and then
/// prints a line; returns its exit code and output.
#[procpool::task]
fn run_own_exe() -> (Option<i32>, String) {
    let exe = std::env::current_exe().expect("the worker knows its executable");
    let out = Command::new(exe)
        .env(MODE, "hello")
        .output()
        .expect("the worker can start a program");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Every variable a supervisor sets for its workers (`procpool-proto`).
const WORKER_VARS: [&str; 5] = [
    "PROCPOOL_WORKER",
    "PROCPOOL_PARENT_PID",
    "PROCPOOL_MAX_FRAME",
    "PROCPOOL_RLIMITS",
    "PROCPOOL_PREFETCH",
];

/// The supervisor's variables a task sees in its environment.
#[procpool::task]
fn procpool_vars() -> Vec<String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| WORKER_VARS.contains(&k.as_str()))
        .collect()
}

/// `async`: needs the worker's own tokio runtime.
#[procpool::task]
async fn nap(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// Plain function.
#[procpool::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Sends one message of `n` bytes; returns `n`.
#[procpool::task]
fn big_message(n: usize) -> usize {
    procpool::send_message(vec![7u8; n]);
    n
}

/// Reports progress with a description of `n` bytes; returns `n`.
#[procpool::task]
fn big_progress(n: usize) -> usize {
    procpool::report_progress(0.5, "p".repeat(n));
    n
}

// ---------------------------------------------------------------------------------------
// Roles of the processes the parent starts

/// A `main` that forgot `procpool::init()`: it goes on to build a pool of its own, as
/// the application's `main` would. Its workers (`exit` role) end at once, so even the
/// unfixed behaviour cannot recurse.
fn forgot_init() -> ! {
    match Pool::builder().workers(1).env(MODE, "exit").build() {
        Ok(_) => {
            println!("forgot_init: built a pool inside a worker");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("forgot_init: {e}");
            std::process::exit(1)
        }
    }
}

/// `init()` as the first line of a `#[tokio::main]` function.
#[tokio::main]
async fn tokio_main() {
    procpool::init();
    unreachable!("started only as a worker, where init never returns");
}

// ---------------------------------------------------------------------------------------
// Checks (parent only)

type Outcome = Result<(), String>;

/// A named check.
type Check = (&'static str, fn() -> Outcome);

fn pool_of(mode: Option<&str>) -> Result<Pool, String> {
    let mut b = Pool::builder();
    b.workers(1).start_timeout(Duration::from_secs(30));
    if let Some(mode) = mode {
        b.env(MODE, mode);
    }
    b.build()
        .map_err(|e| format!("pool ({mode:?}) did not start: {e}"))
}

/// Issue 14, defect 4: a task that starts a procpool binary (here its own executable)
/// sees it run its `main`, not enter worker mode.
fn issue14_task_starts_procpool_binary_normally() -> Outcome {
    // Prefetch and an rlimit: the supervisor sets every one of its variables.
    let pool = Pool::builder()
        .workers(1)
        .prefetch(2)
        .rlimit_open_files(1024)
        .build()
        .map_err(|e| e.to_string())?;
    let (code, text) = pool
        .run_blocking(run_own_exe::task())
        .map_err(|e| e.to_string())?;
    if code != Some(0) || !text.contains("hello from main") {
        return Err(format!("the program exited {code:?}: {text:?}"));
    }
    let vars = pool
        .run_blocking(procpool_vars::task())
        .map_err(|e| e.to_string())?;
    if !vars.is_empty() {
        return Err(format!("the task sees the worker's variables: {vars:?}"));
    }
    Ok(())
}

/// Issue 14, defect 12: a worker whose `main` forgot `init()` is reported as such.
fn issue14_forgotten_init_is_named_in_the_error() -> Outcome {
    let err = match pool_of(Some("forgot_init")) {
        Ok(_) => return Err("a pool of workers without init started".into()),
        Err(e) => e,
    };
    let want = "call `procpool::init()` first in `main`, or use `#[procpool::main]`";
    if !err.contains(want) {
        return Err(format!("the error does not say {want:?}: {err}"));
    }
    if err.contains("built a pool inside a worker") {
        return Err(format!("the worker built a pool of its own: {err}"));
    }
    Ok(())
}

/// Issue 14, defect 12: `init()` inside `#[tokio::main]` serves `async` tasks too.
fn issue14_init_inside_tokio_main_runs_async_tasks() -> Outcome {
    let pool = pool_of(Some("tokio_main"))?;
    let slept = pool
        .run_blocking(nap::task(5))
        .map_err(|e| format!("async task: {e}"))?;
    let sum = pool
        .run_blocking(add::task(2, 3))
        .map_err(|e| format!("sync task: {e}"))?;
    if (slept, sum) != (5, 5) {
        return Err(format!("got {slept} and {sum}"));
    }
    Ok(())
}

/// Issue 14, item 13: a frame cap beyond what the u32 length prefix holds is refused.
fn issue14_worker_refuses_max_frame_above_u32() -> Outcome {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .env("PROCPOOL_WORKER", "1")
        .env("PROCPOOL_PARENT_PID", std::process::id().to_string())
        .env("PROCPOOL_MAX_FRAME", (u64::from(u32::MAX) + 1).to_string())
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(70) || !stderr.contains("PROCPOOL_MAX_FRAME=4294967296 exceeds") {
        return Err(format!("exited {:?}: {stderr:?}", out.status.code()));
    }
    Ok(())
}

/// Issue 14, item 13: a message or progress report above the frame cap fails its task
/// with an error naming the size, instead of vanishing; the worker serves on.
fn issue14_oversized_message_and_progress_fail_the_task() -> Outcome {
    let pool = Pool::builder()
        .workers(1)
        .max_frame_bytes(64 << 10)
        .build()
        .map_err(|e| e.to_string())?;
    let pid = pids(&pool);
    for (what, result) in [
        ("message", pool.run_blocking(big_message::task(1 << 20))),
        ("progress", pool.run_blocking(big_progress::task(1 << 20))),
    ] {
        match result {
            Err(TaskError::Codec { message })
                if message.contains(&format!("{what} frame of"))
                    && message.contains("exceeds the 65536 byte frame cap") => {}
            other => return Err(format!("{what}: expected a codec error, got {other:?}")),
        }
    }
    // Small ones still go through, on the same worker.
    let n = pool
        .run_blocking(big_message::task(1 << 10))
        .map_err(|e| e.to_string())?;
    if n != 1 << 10 || pids(&pool) != pid {
        return Err(format!("{n}; workers {pid:?} then {:?}", pids(&pool)));
    }
    Ok(())
}

/// The pool's worker pids.
fn pids(pool: &Pool) -> Vec<u32> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime without drivers builds")
        .block_on(pool.worker_pids())
}

/// Child processes of this process, running or zombie.
fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                after.split_whitespace().nth(1) == Some(me.as_str())
            })
        })
        .collect()
}

fn main() {
    match std::env::var(MODE).as_deref() {
        Ok("forgot_init") => forgot_init(),
        Ok("exit") => std::process::exit(3),
        Ok("tokio_main") => tokio_main(),
        _ => {}
    }
    procpool::init();
    if std::env::var(MODE).as_deref() == Ok("hello") {
        println!("hello from main");
        return;
    }

    let checks: [Check; 5] = [
        (
            "issue14_task_starts_procpool_binary_normally",
            issue14_task_starts_procpool_binary_normally,
        ),
        (
            "issue14_forgotten_init_is_named_in_the_error",
            issue14_forgotten_init_is_named_in_the_error,
        ),
        (
            "issue14_init_inside_tokio_main_runs_async_tasks",
            issue14_init_inside_tokio_main_runs_async_tasks,
        ),
        (
            "issue14_worker_refuses_max_frame_above_u32",
            issue14_worker_refuses_max_frame_above_u32,
        ),
        (
            "issue14_oversized_message_and_progress_fail_the_task",
            issue14_oversized_message_and_progress_fail_the_task,
        ),
    ];
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut failed = Vec::new();
    let mut passed = 0;
    for (name, check) in checks {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        match check() {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(why) => {
                println!("test {name} ... FAILED\n    {why}");
                failed.push(name);
            }
        }
        let left = children();
        if !left.is_empty() {
            println!("test {name} left children behind: {left:?}");
            failed.push(name);
        }
    }
    println!("init_contract: {passed} passed, {} failed", failed.len());
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(passed > 0, "no check ran");
}
