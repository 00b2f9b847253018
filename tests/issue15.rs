//! Tests of issue 15's pool policies with real `procpool-demo` workers: retries chosen
//! by failure kind, the workers' environment and working directory, and where a task's
//! output goes.

mod support;

use std::time::Duration;

use procpool::{Pool, PoolBuilder, RetryPolicy, TaskError};
use procpool_demo_tasks as demo;
use support::{assert_no_children, demo_worker, serial};

fn demo(n: usize) -> PoolBuilder {
    let mut b = Pool::builder();
    b.worker(demo_worker()).workers(n);
    b
}

fn quick(retries: u32) -> RetryPolicy {
    RetryPolicy::new(retries).backoff(Duration::from_millis(10), Duration::from_millis(20))
}

#[tokio::test]
async fn retry_by_kind_leaves_timeouts_out_and_keeps_crashes() {
    let _serial = serial().await;
    let pool = demo(1).timeout(Duration::from_millis(300)).build().unwrap();

    // A hanging input: one timeout, not three.
    let mut h = pool.submit(demo::sleep_ms::task(600_000).retry(quick(2).retry_timed_out(false)));
    let err = (&mut h).await.unwrap_err();
    assert!(matches!(err, TaskError::TimedOut { .. }), "{err:?}");
    assert_eq!(h.attempts(), 1);

    // The default retries a timeout.
    let mut h = pool.submit(demo::sleep_ms::task(600_000).retry(quick(2)));
    assert!(matches!((&mut h).await, Err(TaskError::TimedOut { .. })));
    assert_eq!(h.attempts(), 3);

    // Crashes are still retried with timeouts left out, and not when crashes are.
    let mut h = pool.submit(demo::abort::task().retry(quick(1).retry_timed_out(false)));
    assert!(matches!((&mut h).await, Err(TaskError::Crashed { .. })));
    assert_eq!(h.attempts(), 2);
    let mut h = pool.submit(demo::abort::task().retry(quick(1).retry_crashed(false)));
    assert!(matches!((&mut h).await, Err(TaskError::Crashed { .. })));
    assert_eq!(h.attempts(), 1);
    drop(pool);
    assert_no_children();
}

#[tokio::test]
async fn retry_by_kind_leaves_limit_exceeded_out() {
    let _serial = serial().await;
    let pool = demo(1).max_rss(128 << 20).build().unwrap();
    let policy = quick(2).retry_limit_exceeded(false);
    let mut h = pool.submit(demo::alloc_mb::task(2048).retry(policy));
    let err = (&mut h).await.unwrap_err();
    assert!(matches!(err, TaskError::LimitExceeded { .. }), "{err:?}");
    assert_eq!(h.attempts(), 1);
    drop(pool);
    assert_no_children();
}

#[tokio::test]
async fn worker_environment_cleared_removed_and_directory_set() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let names = || {
        vec![
            "HOME".to_owned(),
            "PATH".to_owned(),
            "ISSUE15_SET".to_owned(),
        ]
    };

    // Inherited by default, with `env` on top.
    let pool = demo(1).env("ISSUE15_SET", "yes").build().unwrap();
    let (values, cwd) = pool.run(demo::environ::task(names())).await.unwrap();
    assert_eq!(values[1], std::env::var("PATH").ok());
    assert_eq!(values[2].as_deref(), Some("yes"));
    assert_eq!(cwd, std::env::current_dir().unwrap().display().to_string());
    drop(pool);

    // Removed and cleared; `env` still reaches the worker; its own directory.
    let pool = demo(1)
        .env_remove("PATH")
        .env("ISSUE15_SET", "yes")
        .current_dir(dir.path())
        .build()
        .unwrap();
    let (values, cwd) = pool.run(demo::environ::task(names())).await.unwrap();
    assert_eq!(values[1], None, "PATH removed");
    assert_eq!(
        values[0],
        std::env::var("HOME").ok(),
        "HOME still inherited"
    );
    assert_eq!(values[2].as_deref(), Some("yes"));
    assert_eq!(
        cwd,
        dir.path().canonicalize().unwrap().display().to_string()
    );
    drop(pool);

    let pool = demo(1)
        .env_clear()
        .env("ISSUE15_SET", "yes")
        .build()
        .unwrap();
    let (values, _) = pool.run(demo::environ::task(names())).await.unwrap();
    assert_eq!(values, [None, None, Some("yes".to_owned())]);
    drop(pool);
    assert_no_children();
}

/// The supervisor side of [`task_output_inherit_prefixes_each_line_with_its_task`], run by
/// it in a child process whose stdout and stderr it reads: runs `noisy` with
/// `TaskOutput::Inherit`, prints the task id, then keeps the pool until stdin closes.
#[test]
#[ignore = "run by task_output_inherit_prefixes_each_line_with_its_task"]
fn inherit_child() {
    assert!(
        std::env::var_os("ISSUE15_INHERIT_CHILD").is_some(),
        "only meaningful as the child of task_output_inherit_prefixes_each_line_with_its_task"
    );
    let pool = demo(1)
        .task_output(procpool::pool::TaskOutput::Inherit)
        .build()
        .unwrap();
    let task = demo::noisy::task(3);
    println!("task id: {}", task.id().simple());
    assert_eq!(pool.run_blocking(task), Ok(3));
    // Wait for the parent to have seen the lines: the output readers run until then.
    let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
    drop(pool);
}

#[test]
fn task_output_inherit_prefixes_each_line_with_its_task() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    let _serial = support::serial_blocking();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "inherit_child", "--ignored", "--nocapture"])
        .env("ISSUE15_INHERIT_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|r| {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let mut seen = seen.lock().unwrap();
                seen.push_str(&line);
                seen.push('\n');
            }
        })
    })
    .collect();
    let wanted = |text: &str| -> Option<Vec<String>> {
        let id = text.lines().find_map(|l| l.strip_prefix("task id: "))?;
        let prefix = format!("[task {}] ", &id[..8]);
        Some(vec![
            format!("{prefix}noisy stdout line 1"),
            format!("{prefix}noisy stdout line 2"),
            format!("{prefix}noisy stderr line 2"),
        ])
    };
    let found = support::wait_until(Duration::from_secs(20), || {
        let text = seen.lock().unwrap();
        wanted(&text).is_some_and(|w| w.iter().all(|l| text.lines().any(|t| t == l)))
    });
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    let text = seen.lock().unwrap().clone();
    assert!(
        found,
        "prefixed task lines in the supervisor's output:\n{text}"
    );
    assert!(status.success(), "{status}\n{text}");
}
