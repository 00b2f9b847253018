//! The demo tasks of the `procpool-demo` worker binary: arithmetic, bytes, sleeps, every
//! kind of failure, progress, noisy output, grandchildren and a chat. Tests, benchmarks and
//! the README use them; their names and positional arguments are part of the CLI contract.
//!
//! Depends only on the `procpool` facade. A binary serving these tasks must link this
//! crate (`extern crate procpool_demo_tasks as _;` when nothing else references it).
//!
//! ```no_run
//! let pool = procpool::Pool::builder().worker("target/debug/procpool-demo").build()?;
//! assert_eq!(pool.run_blocking(procpool_demo_tasks::add::task(1, 2))?, 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

use std::io::Write;
use std::time::{Duration, Instant};

use procpool::{Bytes, task};

/// `a + b` (wrapping).
#[task]
pub fn add(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}

/// `x * x` (wrapping).
#[task]
pub fn square(x: i64) -> i64 {
    x.wrapping_mul(x)
}

/// Sum of `values` (wrapping).
#[task]
pub fn sum(values: Vec<i64>) -> i64 {
    values.iter().fold(0i64, |a, v| a.wrapping_add(*v))
}

/// Returns `data` unchanged.
#[task]
pub fn echo(data: Bytes) -> Bytes {
    data
}

/// Returns `n` bytes (a repeating 0..=255 pattern).
#[task]
pub fn bytes(n: u64) -> Bytes {
    Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>())
}

/// Sleeps `ms` milliseconds; returns `ms`.
#[task]
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Keeps a CPU busy for `ms` milliseconds; returns `ms`.
#[task]
pub fn spin_ms(ms: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < end {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
    ms
}

/// Fails with a user error carrying `message`.
#[task]
pub fn fail(message: String) -> Result<(), String> {
    Err(message)
}

/// Panics with `message`.
#[task]
pub fn panic(message: String) {
    std::panic::panic_any(message)
}

/// Dies of SIGSEGV.
#[task]
pub fn segfault() {
    // SAFETY: deliberately unsound; this task exists to crash its worker. The volatile
    // write keeps the compiler from reasoning the null store away.
    unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u64>(), 1) }
}

/// Dies of SIGABRT.
#[task]
pub fn abort() {
    std::process::abort()
}

/// Exits the worker with `code`.
#[task]
pub fn exit(code: i32) {
    std::process::exit(code)
}

/// Allocates `mb` MiB and touches every page; returns `mb`.
#[task]
pub fn alloc_mb(mb: u64) -> u64 {
    let mut v = vec![0u8; (mb as usize) << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
    mb
}

/// Reports `i/steps` progress `steps` times, `delay_ms` apart.
#[task]
pub fn progress(steps: u32, delay_ms: u64) {
    for i in 1..=steps {
        if delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        procpool::report_progress(i as f32 / steps.max(1) as f32, format!("step {i}/{steps}"));
    }
}

/// Writes `lines` lines to stdout and to stderr, some of them shaped like protocol frames;
/// returns `lines`.
#[task]
pub fn noisy(lines: u32) -> u32 {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for i in 0..lines {
        if i % 3 == 0 {
            // A plausible length prefix followed by a Done-like payload.
            let _ = out.write_all(&[8, 0, 0, 0, 2, 1, 0, 0, b'\n']);
            let _ = err.write_all(&[0xff, 0xff, 0xff, 0xff, b'\n']);
        } else {
            let _ = writeln!(out, "noisy stdout line {i}");
            let _ = writeln!(err, "noisy stderr line {i}");
        }
    }
    let _ = out.flush();
    lines
}

/// Starts `sleep secs` as a child process and waits for it. Sends the child's pid to the
/// parent as a message (decimal text) first, so callers can check it is gone after a cancel.
#[task]
pub fn grandchild(secs: u64) -> Result<(), String> {
    let mut child = std::process::Command::new("sleep")
        .arg(secs.to_string())
        .spawn()
        .map_err(|e| format!("cannot start sleep: {e}"))?;
    procpool::send_message(child.id().to_string());
    let status = child
        .wait()
        .map_err(|e| format!("waiting for sleep: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("sleep ended with {status}"))
    }
}

/// `"{greeting}, {name}!"`, `Hello` when no greeting is given: parameters in an order
/// that matters, and one that may be left out (for keyword arguments).
#[task]
pub fn greet(name: String, greeting: Option<String>) -> String {
    format!("{}, {name}!", greeting.as_deref().unwrap_or("Hello"))
}

/// Sends `count` messages of `size` bytes (the letter `m`) to the parent, the first
/// after `before_ms`, then sleeps `after_ms`; returns `count`. Shows whether messages
/// reach the parent while their task still runs, and how a slow reader copes.
#[task]
pub fn messages(count: u32, size: u64, before_ms: u64, after_ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(before_ms));
    let text = vec![b'm'; size as usize];
    for _ in 0..count {
        procpool::send_message(text.clone());
    }
    std::thread::sleep(Duration::from_millis(after_ms));
    count
}

/// Answers every message from the parent with its bytes reversed; ends on an empty
/// message. Returns the number of messages answered.
#[task]
pub fn chat() -> u64 {
    let mut answered = 0;
    while let Some(mut msg) = procpool::recv_message() {
        if msg.is_empty() {
            break;
        }
        msg.reverse();
        procpool::send_message(msg);
        answered += 1;
    }
    answered
}

/// Sends `count` messages of `size` bytes each to the parent, as fast as it can; returns
/// `count`. For the bound on messages the parent has not read.
#[task]
pub fn flood(count: u32, size: u64) -> u32 {
    let message = vec![7u8; size as usize];
    for _ in 0..count {
        procpool::send_message(message.clone());
    }
    count
}

/// The values of the environment variables `names` in the worker, and its working
/// directory: what `PoolBuilder::env_clear`, `env_remove` and `current_dir` decide.
#[task]
pub fn environ(names: Vec<String>) -> (Vec<Option<String>>, String) {
    let values = names.iter().map(|n| std::env::var(n).ok()).collect();
    let cwd =
        std::env::current_dir().map_or_else(|e| format!("error: {e}"), |d| d.display().to_string());
    (values, cwd)
}

/// Sleeps `ms` milliseconds, then appends `"{tag} {unix time in µs}\n"` to the file
/// `path` in one write (created if missing) and returns that time: a trace of when each
/// job ran that outlives a killed supervisor.
#[task]
pub fn stamp(path: String, tag: String, ms: u64) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(ms));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_micros() as u64;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{tag} {now}\n").as_bytes()))
        .map_err(|e| format!("cannot append to {path}: {e}"))?;
    Ok(now)
}
