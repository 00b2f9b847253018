//! Orphans: the `procpool` CLI adopts its workers' grandchildren (it is a child subreaper),
//! so a killed grandchild never stays a zombie; and when the CLI itself is SIGKILLed, its
//! workers and their grandchildren die within a second. This binary's process is itself a
//! subreaper (set by each test), so whatever the killed CLI leaves comes back here to be
//! reaped, never to PID 1.
// Linux only: the child subreaper it rests on does not exist on macOS.
#![cfg(target_os = "linux")]

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    KillOnDrop, assert_no_children, children_of, demo_worker, proc_stat, serial, wait_until,
};

fn dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z')
}

/// Reaps `pid`, a process re-parented to this (subreaper) process once its parent died.
fn reap(pid: u32, what: &str) {
    if proc_stat(pid).is_some_and(|s| s.ppid == std::process::id()) {
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None)
            .unwrap_or_else(|e| panic!("reaping {what} {pid}: {e}"));
    }
}

fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// Starts `procpool run --jobs -` on the demo worker with `flags`, writes `job` to its
/// stdin and leaves stdin open (the batch goes on); stdout is piped.
fn cli_running(flags: &[&str], job: &str) -> (std::process::Child, std::process::ChildStdin) {
    let mut cli = Command::new(env!("CARGO_BIN_EXE_procpool"))
        .args(["run", "--worker", demo_worker(), "--jobs", "-"])
        .args(flags)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn procpool");
    let mut stdin = cli.stdin.take().unwrap();
    writeln!(stdin, "{job}").unwrap();
    stdin.flush().unwrap();
    (cli, stdin)
}

/// A job's grandchild, killed with its worker's group on a timeout, is reaped by the CLI
/// while the batch goes on: not even a zombie of it is left, whatever PID 1 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaps_the_grandchild_of_a_timed_out_job() {
    let _serial = serial().await;
    become_subreaper();
    let (mut cli, stdin) = cli_running(
        &["--workers", "1", "--grace", "0"],
        r#"{"id":"g","task":"grandchild","args":[60],"timeout_ms":300}"#,
    );
    let cli_pid = cli.id();

    let mut sleep = None;
    let found = wait_until(Duration::from_secs(5), || {
        sleep = children_of(cli_pid)
            .iter()
            .flat_map(|w| children_of(w.pid))
            .find(|p| p.comm == "sleep");
        sleep.is_some()
    });
    let sleep = sleep.map(|s| s.pid);
    let _guard = KillOnDrop(sleep.iter().map(|p| (*p, "sleep".to_owned())).collect());
    if !found {
        let _ = cli.kill();
        let _ = cli.wait();
        panic!("no sleep under the workers of procpool {cli_pid}");
    }
    let sleep = sleep.unwrap();

    let mut out = BufReader::new(cli.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let record: Value = serde_json::from_str(&line).expect("a record");
    assert_eq!(record["error"]["kind"], "timed_out", "{record}");

    // The batch is still open (stdin): the CLI itself took the zombie.
    let gone = wait_until(Duration::from_secs(1), || proc_stat(sleep).is_none());
    assert!(
        gone,
        "the grandchild is still there: {:?}",
        proc_stat(sleep)
    );
    assert!(
        cli.try_wait().unwrap().is_none(),
        "the CLI is still running"
    );

    drop(stdin);
    assert_eq!(cli.wait().unwrap().code(), Some(1));
    assert_no_children();
}

/// SIGKILL of the `procpool` CLI in the middle of a batch: every worker and the task's
/// grandchild are dead within 1 s. This test process is a subreaper, so they come back to
/// it as zombies instead of to PID 1, and it reaps them: nothing is left at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_cli_leaves_no_worker_and_no_grandchild() {
    let _serial = serial().await;
    become_subreaper();
    let (mut cli, stdin) = cli_running(
        &["--workers", "2"],
        r#"{"id":"g","task":"grandchild","args":[60]}"#,
    );
    let cli_pid = cli.id();
    // stdin stays open: the batch is not over.

    let mut workers = Vec::new();
    let mut sleep = None;
    let found = wait_until(Duration::from_secs(5), || {
        workers = children_of(cli_pid);
        sleep = workers
            .iter()
            .flat_map(|w| children_of(w.pid))
            .find(|p| p.comm == "sleep");
        workers.len() == 2 && sleep.is_some()
    });
    let mut guard = KillOnDrop(workers.iter().map(|w| (w.pid, w.comm.clone())).collect());
    if let Some(s) = &sleep {
        guard.0.push((s.pid, s.comm.clone()));
    }
    if !found {
        let _ = cli.kill();
        let _ = cli.wait();
        panic!("no 2 workers and a sleep under procpool {cli_pid}: {workers:?} {sleep:?}");
    }
    let sleep = sleep.unwrap();
    assert!(
        workers.iter().all(|w| w.comm == "procpool-demo"),
        "{workers:?}"
    );
    assert!(
        workers
            .iter()
            .any(|w| w.pid == sleep.ppid && w.pid == sleep.pgrp)
    );

    let t0 = Instant::now();
    cli.kill().unwrap(); // SIGKILL, by handle
    cli.wait().unwrap();
    let mut pending: Vec<(u32, &str)> = workers.iter().map(|w| (w.pid, "worker")).collect();
    pending.push((sleep.pid, "sleep"));
    let all_dead = wait_until(Duration::from_secs(1), || {
        pending.iter().all(|(p, _)| dead(*p))
    });
    let took = t0.elapsed();
    let report: Vec<String> = pending
        .iter()
        .map(|(p, what)| format!("{what} {p}: {:?}", proc_stat(*p)))
        .collect();
    eprintln!("SIGKILL of the CLI: all dead after {took:?}: {report:?}");
    assert!(all_dead, "survivors 1 s after the SIGKILL: {report:?}");
    drop(stdin);
    drop(guard);
    for (pid, what) in &pending {
        reap(*pid, what);
    }
    assert_no_children();
}
