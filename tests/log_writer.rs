//! The pool under a process-wide `tracing` subscriber whose writer panics, as
//! `tracing-subscriber` does by default when stderr is a closed pipe or a hung-up terminal.
//! A panic in the subscriber must cost nothing: not the pool, not the task's verdict (issue
//! 14, defect 6). Its own test binary, since the subscriber is global.

mod support;

use std::io::Write;
use std::time::Duration;

use procpool_demo_tasks as demo;
use support::{assert_no_children, demo_pool};

struct PanickingWriter;

impl Write for PanickingWriter {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        panic!("failed printing to stderr: Broken pipe (os error 32)");
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_a_panic_while_logging_a_worker_death_keeps_the_crash_verdict() {
    // The executor logs each worker's end at debug level, between reaping it and answering.
    tracing_subscriber::fmt()
        .with_env_filter("procpool_core::executor=debug")
        .with_writer(|| PanickingWriter)
        .init();
    let pool = demo_pool(1);
    let in_time = Duration::from_secs(10);

    let crashed = tokio::time::timeout(in_time, pool.run(demo::segfault::task()))
        .await
        .expect("the crashed task resolves");
    // The panicking log calls are contained: the task gets its true verdict, never
    // `pool_closed` from a pool that is open.
    let err = crashed.unwrap_err();
    assert_eq!(err.exit_signal(), Some(11), "{err:?}");
    // The slot is freed and refilled: the next task runs on a new worker.
    let next = tokio::time::timeout(in_time, pool.run(demo::add::task(1, 2)))
        .await
        .expect("the pool still serves tasks");
    assert_eq!(next.unwrap(), 3);
    let status = pool.status().await;
    assert_eq!(status.worker_starts, 2, "{status:?}");

    drop(pool);
    assert_no_children();
}
