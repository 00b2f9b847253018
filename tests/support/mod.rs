//! Helpers shared by the black-box tests (`tests/pool.rs`, `tests/protocol.rs`,
//! `tests/cli.rs`, ...): building pools on real worker binaries, looking at processes
//! through `/proc`, and waiting for a supervisor under a deadline.
//!
//! Every test takes [`serial`] first: the tests of one binary run one at a time, so "the
//! children of this process" are exactly the workers of the test that is running, and a
//! leftover process is caught by the test that left it.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use procpool::Pool;

/// The lock behind [`serial`]. A tokio mutex: its guard is held across awaits for a whole
/// test, and a failed test does not poison it for the next.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serialises the tests of one binary (see the module docs); for async tests.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// [`serial`] for plain `#[test]` functions (outside any runtime).
pub fn serial_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

/// The demo worker binary.
pub fn demo_worker() -> &'static str {
    env!("CARGO_BIN_EXE_procpool-demo")
}

/// A pool of `n` demo workers.
pub fn demo_pool(n: usize) -> Pool {
    Pool::builder()
        .worker(demo_worker())
        .workers(n)
        .build()
        .expect("the demo worker pool starts")
}

/// The real python3 executable (not a pyenv shim that would fork helpers first).
pub fn python3() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is installed");
        assert!(out.status.success(), "python3 -c failed: {out:?}");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The fake worker script for the protocol tests.
pub fn fake_worker_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_worker.py")
}

/// One line of `/proc/<pid>/stat`, the fields the tests use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist (any more).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain spaces or parentheses: split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let mut rest = text[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
        pgrp,
    })
}

/// Every process on the machine (that we can see).
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// Live (or zombie, i.e. not yet reaped) child processes of this test process.
pub fn children() -> Vec<ProcStat> {
    let me = std::process::id();
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == me)
        .collect()
}

/// Members of process group `pgid` (a worker's group is its pid).
pub fn group_members(pgid: u32) -> Vec<ProcStat> {
    all_processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid)
        .collect()
}

/// Asserts that this process has no child at all, running or zombie.
#[track_caller]
pub fn assert_no_children() {
    let left = children();
    assert!(left.is_empty(), "child processes left behind: {left:?}");
}

/// [`wait_until`] for async tests: yields to the runtime between polls, so that a pool
/// on the test's own (current-thread) runtime keeps running while the test waits.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// Polls `cond` every 2 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `pid` no longer exists at all (reaped).
pub fn is_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Peak resident set size of this process, in KiB (`VmHWM`).
pub fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Processes whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<ProcStat> {
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == ppid)
        .collect()
}

/// SIGKILLs, on drop, the processes a test found and that may outlive it if it fails
/// half-way (a CLI's workers and their grandchildren). Each is killed only if it still
/// runs under the same name, by pid.
pub struct KillOnDrop(pub Vec<(u32, String)>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for (pid, comm) in &self.0 {
            if let Some(s) = proc_stat(*pid)
                && s.state != 'Z'
                && &s.comm == comm
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Live workers of the supervisor `pid`: they carry its pid in `PROCPOOL_PARENT_PID`
/// (procpool-proto's ENV_PARENT_PID, not re-exported by the facade). A zombie has no
/// environment left, so it is not counted: it runs nothing.
pub fn workers_of_supervisor(pid: u32) -> Vec<u32> {
    let needle = format!("PROCPOOL_PARENT_PID={pid}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Unreadable (another user's process) or gone: not ours either way.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            found.push(p);
        }
    }
    found
}

/// Waits for `child` to exit, polling every 5 ms; past `deadline` it is killed (our own
/// child, by its handle: never by name), reaped, and the test fails naming `what`.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    deadline: Instant,
    what: &str,
) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran past its deadline");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that `text` (a help text) names every one of `needles`.
#[track_caller]
pub fn assert_names_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

/// A pool of one worker whose worker `old` is gone, or retiring, still serves `add(a, b)`,
/// on a fresh worker. A worker that retires on its own (a memory peak) is listed until
/// it has exited and been reaped, which under load can come after its replacement has
/// already answered: waited for, up to 10 s. A retiring worker never gets a task, so
/// `old` leaving the list means the task ran on the other.
pub async fn assert_serves_on_a_new_worker(pool: &Pool, old: u32, (a, b): (i64, i64)) {
    let sum = pool
        .run(procpool_demo_tasks::add::task(a, b))
        .await
        .unwrap();
    assert_eq!(sum, a + b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = pool.worker_pids().await;
        if !now.contains(&old) {
            assert_eq!(now.len(), 1, "{now:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old worker {old} is still in the pool: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until no task waits in `pool`'s queue: every submitted task was handed to a
/// worker (running, or in its prefetch window). Fails the test after 20 s.
pub async fn until_dispatched(pool: &Pool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.status().await.queued > 0 {
        assert!(Instant::now() < deadline, "tasks never left the queue");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
