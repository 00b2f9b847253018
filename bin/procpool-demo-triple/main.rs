//! `procpool-demo-triple`: a second worker binary, with a task set of its own (`triple`
//! only, which `procpool-demo` does not serve). Agents on the two binaries serve different
//! tasks: the tests and the README's "Scale out" walkthrough use it to show that a task
//! goes only to an agent that serves it.

use std::time::Duration;

/// `3 * x` (wrapping), after sleeping `ms` milliseconds.
#[procpool::task]
fn triple(x: i64, ms: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    x.wrapping_mul(3)
}

fn main() -> std::process::ExitCode {
    // Started by a supervisor it serves `triple` and never returns.
    procpool::init();
    eprintln!("procpool-demo-triple is a worker: run it with procpool agent --worker");
    std::process::ExitCode::from(2)
}
