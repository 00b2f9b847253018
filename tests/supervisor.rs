//! Black-box tests of `procpool run` as operators drive it (issue 4): resuming a batch
//! after a SIGKILL, SIGINT/SIGTERM/SIGHUP, progress on stderr (plain and on a
//! pseudo-terminal), configuration by flag, variable and file, and the application binary
//! (`procpool-demo`) that is the whole CLI without `--worker`. Real supervisors, real
//! workers, real signals; every supervisor is killed by its pid if a test fails, and every
//! test checks that no worker outlived its supervisor.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use support::workers_of_supervisor as workers_of;
use support::{group_members, is_gone, proc_stat, wait_or_kill, wait_until};

const PROCPOOL: &str = env!("CARGO_BIN_EXE_procpool");
const DEMO: &str = env!("CARGO_BIN_EXE_procpool-demo");

/// No supervisor may run longer than this.
const DEADLINE: Duration = Duration::from_secs(30);

/// A running supervisor. Dropping it while it runs kills it (by its pid) and reaps it.
struct Supervisor {
    child: Option<Child>,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    started: Instant,
}

/// What a supervisor left when it ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    pid: u32,
}

fn base_command(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .env_remove("PROCPOOL_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Supervisor {
    fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Supervisor {
        Supervisor::spawn(base_command(bin, args, env))
    }

    fn spawn(mut cmd: Command) -> Supervisor {
        let mut child = cmd.spawn().expect("spawn");
        let stdout = reader_thread(child.stdout.take().unwrap());
        let stderr = reader_thread(child.stderr.take().unwrap());
        Supervisor {
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
            started: Instant::now(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn signal(&self, sig: Signal) {
        // Our own child, still unreaped (we hold its handle): the pid is its.
        kill(Pid::from_raw(self.pid() as i32), sig).expect("signal the supervisor");
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Waits for the end (killing it past [`DEADLINE`]) and checks that none of its
    /// workers is still alive.
    fn wait(mut self) -> Ended {
        let pid = self.pid();
        let mut child = self.child.take().unwrap();
        let status = wait_or_kill(
            &mut child,
            self.started + DEADLINE,
            &format!("supervisor {pid}"),
        );
        let ended = Ended {
            code: status.code(),
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
            elapsed: self.started.elapsed(),
            pid,
        };
        let left = workers_of(pid);
        assert!(
            left.is_empty(),
            "workers of {pid} still alive: {left:?}\n{ended:?}"
        );
        ended
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn reader_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs to the end.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Ended {
    Supervisor::start(bin, args, env).wait()
}

/// Whether `pid` is gone or a zombie (dead, waiting for a parent to reap it).
fn is_dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z')
}

fn write_jobs(dir: &Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_owned()
}

fn job(id: &str, task: &str, args: &str) -> String {
    format!("{{\"id\": \"{id}\", \"task\": \"{task}\", \"args\": {args}}}")
}

fn sleeps(prefix: &str, n: usize, ms: u64) -> Vec<String> {
    (0..n)
        .map(|i| job(&format!("{prefix}{i}"), "sleep_ms", &format!("[{ms}]")))
        .collect()
}

fn records_in(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a record ({e}): {l}")))
        .collect()
}

/// Waits until `path` holds at least `n` complete lines.
fn wait_for_records(path: &Path, n: usize) {
    let ok = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(path).is_ok_and(|t| t.matches('\n').count() >= n)
    });
    assert!(ok, "fewer than {n} records in {} in time", path.display());
}

/// The number N in the final note "N jobs had been dispatched".
fn dispatched(stderr: &str) -> usize {
    let note = stderr
        .lines()
        .find(|l| l.contains("jobs had been dispatched"))
        .unwrap_or_else(|| panic!("no dispatch note in:\n{stderr}"));
    let before = note.split(" jobs had been dispatched").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Line numbers of the records, which must be exactly 1..=n: jobs are dispatched in
/// order, so "every dispatched job has its record" means the records cover a prefix.
fn assert_prefix(records: &[Value], n: usize) {
    let lines: BTreeSet<u64> = records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        records.len(),
        "two records for one line: {records:#?}"
    );
    let expected: BTreeSet<u64> = (1..=n as u64).collect();
    assert_eq!(lines, expected, "{records:#?}");
}

/// `procpool run --worker DEMO --jobs JOBS EXTRA...`.
fn run_args<'a>(jobs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [&["run", "--worker", DEMO, "--jobs", jobs][..], extra].concat()
}

/// [`run_args`] with two workers and the records written to `out`.
fn batch_args<'a>(jobs: &'a str, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let out = out.to_str().unwrap();
    run_args(
        jobs,
        &[&["--workers", "2", "--out", out][..], extra].concat(),
    )
}

/// Starts [`batch_args`] on the batch of [`add_then_sleeps`] and waits for the add's
/// record: the sleeps are being dispatched.
fn start_after_the_first_record(
    dir: &Path,
    sleeps: usize,
    ms: u64,
    extra: &[&str],
) -> (Supervisor, PathBuf) {
    let (jobs, out) = add_then_sleeps(dir, sleeps, ms);
    let sup = Supervisor::start(PROCPOOL, &batch_args(&jobs, &out, extra), &[]);
    wait_for_records(&out, 1);
    (sup, out)
}

/// The records in `out` of a run stopped by a signal, checked to be exactly one per
/// dispatched job, and how many were dispatched.
fn stopped_records(out: &Path, ended: &Ended) -> (Vec<Value>, usize) {
    let records = records_in(out);
    let n = dispatched(&ended.stderr);
    assert_prefix(&records, n);
    (records, n)
}

#[track_caller]
fn assert_exit(ended: &Ended, code: i32) {
    assert_eq!(ended.code, Some(code), "{ended:?}");
}

/// A help text: it exits 0 and names every one of `needles`.
#[track_caller]
fn assert_documents(help: &Ended, needles: &[&str]) {
    assert_eq!(help.code, Some(0), "{help:?}");
    support::assert_names_all(&help.stdout, needles);
}

#[track_caller]
fn assert_stderr_contains(ended: &Ended, needle: &str) {
    assert!(
        ended.stderr.contains(needle),
        "{needle:?} not in:\n{}",
        ended.stderr
    );
}

// ---------------------------------------------------------------------------------------
// Help and exit codes

#[test]
fn help_of_every_subcommand_documents_the_ops_features() {
    let root = run(PROCPOOL, &["--help"], &[]);
    assert_documents(
        &root,
        &[
            "CONFIGURATION",
            "--config",
            "PROCPOOL_CONFIG",
            "PROCPOOL_WORKER_PATH",
            "[run]",
            "--log-format",
            "130/143",
        ],
    );
    let run_help = run(PROCPOOL, &["run", "--help"], &[]);
    assert_documents(
        &run_help,
        &[
            "--resume",
            "--on-signal",
            "drain",
            "--quiet",
            "--progress-interval",
            "--log-format",
            "--config",
            "RESUME",
            "torn",
            "SIGNALS",
            "SIGHUP",
            "PROGRESS",
            "EXIT CODES",
            "130",
            "143",
            "PROCPOOL_WORKERS",
            "PROCPOOL_ON_SIGNAL",
        ],
    );
    let tasks_help = run(PROCPOOL, &["tasks", "--help"], &[]);
    assert_documents(
        &tasks_help,
        &[
            "--worker",
            "PROCPOOL_WORKER_PATH",
            "--json",
            "PROCPOOL_JSON",
            "--config",
        ],
    );
}

#[test]
fn resume_without_out_and_a_corrupt_results_file_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &[job("a", "add", "[1, 2]")]);
    let ended = run(PROCPOOL, &run_args(&jobs, &["--resume"]), &[]);
    assert_exit(&ended, 2);
    assert_stderr_contains(&ended, "--resume needs --out");
    assert!(ended.stdout.is_empty());

    let out = dir.path().join("out.jsonl");
    let text = "{\"id\":\"a\",\"status\":\"completed\",\"line\":1}\nthis is not a record\n";
    std::fs::write(&out, text).unwrap();
    let out_arg = out.to_str().unwrap();
    let ended = run(
        PROCPOOL,
        &run_args(&jobs, &["--resume", "--out", out_arg]),
        &[],
    );
    assert_exit(&ended, 2);
    assert_stderr_contains(&ended, "line 2 of the results file");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        text,
        "the file must be left alone"
    );
}

// ---------------------------------------------------------------------------------------
// Resume

#[test]
fn sigkill_mid_batch_then_resume_ends_with_one_record_per_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = sleeps("s", 50, 30);
    lines.insert(5, job("sum", "add", "[20, 22]"));
    lines.insert(9, job("oops", "fail", "[\"on purpose\"]"));
    // A duplicate of a job early in the file, and a line without an id, near the end:
    // bad lines are matched by line number on resume, so neither is reported twice and
    // the duplicate never hides the job that owns the id.
    lines.insert(45, job("s1", "add", "[0, 0]"));
    lines.insert(47, "not json".to_owned());
    let total = lines.len();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &lines);
    let out = dir.path().join("out.jsonl");
    let args = batch_args(&jobs, &out, &[]);

    let mut first = Supervisor::start(PROCPOOL, &args, &[]);
    wait_for_records(&out, 8);
    let supervisor = first.pid();
    let workers = workers_of(supervisor);
    assert!(!workers.is_empty(), "no worker found for {supervisor}");
    // SIGKILL: no handler runs, nothing is flushed or cleaned up by the supervisor.
    first.signal(Signal::SIGKILL);
    let status = first.child.as_mut().unwrap().wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    drop(first);
    // The workers notice through their parent-death signal.
    assert!(
        wait_until(Duration::from_secs(5), || workers
            .iter()
            .all(|&w| is_dead(w))),
        "workers {workers:?} outlived their SIGKILLed supervisor"
    );
    assert!(workers_of(supervisor).is_empty());

    let kept = std::fs::read_to_string(&out).unwrap();
    let kept = &kept[..kept.rfind('\n').map_or(0, |i| i + 1)];
    let before = kept.lines().count();
    assert!(
        before >= 8 && before < total,
        "{before} of {total} records before the kill"
    );
    // What a SIGKILL in the middle of a write leaves: a record cut short.
    let mut torn = kept.to_owned();
    torn.push_str("{\"id\":\"s49\",\"task\":\"sleep_ms\",\"sta");
    std::fs::write(&out, &torn).unwrap();

    let resumed_args = batch_args(&jobs, &out, &["--resume"]);
    let ended = run(PROCPOOL, &resumed_args, &[]);
    // A user error and two bad lines in the batch: exit 1.
    assert_exit(&ended, 1);
    assert_stderr_contains(&ended, "torn record");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with(kept),
        "the records of the first run must stay as they were"
    );
    assert!(text.ends_with('\n'));

    let records = records_in(&out);
    assert_eq!(records.len(), total, "one record per job line");
    let mut ids: HashMap<&str, u64> = HashMap::new();
    let mut bad_lines = BTreeSet::new();
    for r in &records {
        if r["error"]["kind"] == "bad_job" {
            assert!(bad_lines.insert(r["line"].as_u64().unwrap()), "{r}");
        } else {
            let id = r["id"].as_str().unwrap();
            assert!(
                ids.insert(id, r["line"].as_u64().unwrap()).is_none(),
                "twice: {id}"
            );
        }
    }
    assert_eq!(bad_lines, BTreeSet::from([46, 48]));
    assert_eq!(ids.len(), total - 2);
    assert_eq!(ids["s1"], 2, "s1 is the job on line 2, not its duplicate");
    let by_id = |id: &str| records.iter().find(|r| r["id"] == id).unwrap();
    assert_eq!(by_id("sum")["result"], 42);
    assert_eq!(by_id("oops")["error"]["kind"], "user_error");
    assert_prefix(&records, total);

    // Resuming a finished batch runs nothing and keeps the exit code of its records.
    let ended = run(PROCPOOL, &resumed_args, &[]);
    assert_exit(&ended, 1);
    assert_eq!(records_in(&out).len(), total);
    assert_stderr_contains(&ended, &format!("{total} skipped"));
}

/// The `stamp` lines in `path` (`tag time_us`), in order.
fn stamps(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (tag, t) = l.split_once(' ').unwrap();
            (tag.to_owned(), t.parse().unwrap())
        })
        .collect()
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Issue 16: records leave in batches on a fast batch with a prefetch window, yet a
/// SIGKILL loses only the records of the jobs that ended just before it (100 ms allowed;
/// a second here, for a loaded machine), and `--resume` reruns exactly the jobs without a
/// record. Each job stamps a file in the worker when it ends, so what ran is known
/// independently of the supervisor.
#[test]
fn issue16_sigkill_loses_only_the_last_records_and_resume_reruns_exactly_those() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let trace_arg = serde_json::to_string(trace.to_str().unwrap()).unwrap();
    let total = 4000;
    let lines: Vec<String> = (0..total)
        .map(|i| {
            job(
                &format!("j{i}"),
                "stamp",
                &format!("[{trace_arg}, \"j{i}\", 1]"),
            )
        })
        .collect();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &lines);
    let out = dir.path().join("out.jsonl");
    let args = batch_args(&jobs, &out, &["--prefetch-jobs", "8"]);

    let mut first = Supervisor::start(PROCPOOL, &args, &[]);
    wait_for_records(&out, 200);
    let supervisor = first.pid();
    let workers = workers_of(supervisor);
    first.signal(Signal::SIGKILL);
    let killed_at = unix_micros();
    let status = first.child.as_mut().unwrap().wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    drop(first);
    assert!(
        wait_until(Duration::from_secs(5), || workers
            .iter()
            .all(|&w| is_dead(w))),
        "workers {workers:?} outlived their SIGKILLed supervisor"
    );
    let ran_first = stamps(&trace);
    let kept = std::fs::read_to_string(&out).unwrap();
    let kept = &kept[..kept.rfind('\n').map_or(0, |i| i + 1)];
    let recorded: BTreeSet<String> = kept
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            assert_eq!(r["status"], "completed", "{r}");
            r["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(recorded.len() < total, "the batch ended before the kill");
    // Every job that ended well before the kill has its record in the file.
    let lost: Vec<&(String, u64)> = ran_first
        .iter()
        .filter(|(tag, _)| !recorded.contains(tag))
        .collect();
    for (tag, at) in &lost {
        assert!(
            *at + 1_100_000 > killed_at,
            "{tag} ended {} ms before the SIGKILL and has no record ({} jobs ran, {} records)",
            (killed_at - at) / 1000,
            ran_first.len(),
            recorded.len()
        );
    }

    let ended = run(
        PROCPOOL,
        &batch_args(&jobs, &out, &["--prefetch-jobs", "8", "--resume"]),
        &[],
    );
    assert_exit(&ended, 0);
    // The resumed run ran exactly the jobs without a record, each once.
    let ran_again: Vec<String> = stamps(&trace)[ran_first.len()..]
        .iter()
        .map(|(tag, _)| tag.clone())
        .collect();
    let rerun: BTreeSet<String> = ran_again.iter().cloned().collect();
    assert_eq!(
        rerun.len(),
        ran_again.len(),
        "a job ran twice in the resumed run"
    );
    let missing: BTreeSet<String> = (0..total)
        .map(|i| format!("j{i}"))
        .filter(|id| !recorded.contains(id))
        .collect();
    assert_eq!(rerun, missing);
    let records = records_in(&out);
    assert_eq!(records.len(), total, "one record per job");
    assert_prefix(&records, total);
}

/// A job file is checked for duplicate ids and finished jobs before the batch, in bounded
/// memory (past 128k ids the check spills sorted runs to temporary files); standard input
/// is checked as it streams in. Both give the same records, fresh and resumed.
#[test]
fn a_job_file_and_stdin_give_the_same_verdicts_past_the_in_memory_sort() {
    let dir = tempfile::tempdir().unwrap();
    // Every 2000th line a job, the others duplicates of it: bad_job records, nothing runs.
    let n = 140_000;
    let lines: Vec<String> = (0..n)
        .map(|i| job(&format!("j{}", i - i % 2000), "add", &format!("[{i}, 1]")))
        .collect();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &lines);
    let run_both = |out_file: &Path, out_stdin: &Path, extra: &[&str]| {
        let file = run(PROCPOOL, &batch_args(&jobs, out_file, extra), &[]);
        let mut cmd = base_command(PROCPOOL, &batch_args("-", out_stdin, extra), &[]);
        cmd.stdin(std::fs::File::open(&jobs).unwrap());
        let stdin = Supervisor::spawn(cmd).wait();
        for ended in [&file, &stdin] {
            assert_exit(ended, 1);
        }
        let (a, b) = (verdicts(out_file), verdicts(out_stdin));
        assert_eq!(a, b, "file and stdin disagree");
        a
    };
    let fresh = run_both(
        &dir.path().join("file.jsonl"),
        &dir.path().join("stdin.jsonl"),
        &[],
    );
    assert_eq!(fresh.len(), n, "one record per line");
    for (i, v) in fresh.iter().enumerate() {
        let expected = match i % 2000 {
            0 => (i as u64 + 1, format!("j{i}"), format!("{}", i + 1)),
            _ => (i as u64 + 1, format!("j{}", i - i % 2000), "bad_job".into()),
        };
        assert_eq!(*v, expected);
    }

    // Resumed from the first half of a run's records, as if killed there.
    let text = std::fs::read_to_string(dir.path().join("file.jsonl")).unwrap();
    let half: String = text.lines().take(n / 2).map(|l| format!("{l}\n")).collect();
    let (resumed_file, resumed_stdin) = (dir.path().join("rf.jsonl"), dir.path().join("rs.jsonl"));
    std::fs::write(&resumed_file, &half).unwrap();
    std::fs::write(&resumed_stdin, &half).unwrap();
    let resumed = run_both(&resumed_file, &resumed_stdin, &["--resume"]);
    assert_eq!(
        resumed, fresh,
        "resumed: still one record per line, the same ones"
    );
}

/// `(line, id, result or error kind)` of every record in `path`, by line.
fn verdicts(path: &Path) -> Vec<(u64, String, String)> {
    let mut v: Vec<_> = records_in(path)
        .iter()
        .map(|r| {
            let outcome = match r["status"].as_str() {
                Some("completed") => r["result"].to_string(),
                _ => r["error"]["kind"].as_str().unwrap().to_owned(),
            };
            (
                r["line"].as_u64().unwrap(),
                r["id"].as_str().unwrap().to_owned(),
                outcome,
            )
        })
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Signals

#[test]
fn sigterm_mid_batch_exits_143_reaps_every_worker_and_records_every_dispatched_job() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &sleeps("t", 40, 200));
    let out = dir.path().join("out.jsonl");
    let sup = Supervisor::start(PROCPOOL, &batch_args(&jobs, &out, &[]), &[]);
    wait_for_records(&out, 2);
    let workers = workers_of(sup.pid());
    assert_eq!(workers.len(), 2, "{workers:?}");
    // Each worker leads its own process group.
    let groups: Vec<u32> = workers
        .iter()
        .map(|&w| proc_stat(w).unwrap().pgrp)
        .collect();
    assert_eq!(groups, workers);
    sup.signal(Signal::SIGTERM);
    let ended = sup.wait();
    assert_exit(&ended, 143);
    assert!(ended.elapsed < Duration::from_secs(10), "{ended:?}");
    for (&w, &g) in workers.iter().zip(&groups) {
        assert!(is_gone(w), "worker {w} not reaped");
        assert!(
            group_members(g).is_empty(),
            "group {g}: {:?}",
            group_members(g)
        );
    }
    let (records, n) = stopped_records(&out, &ended);
    assert!(n < 40, "SIGTERM must stop dispatching: {n}");
    let cancelled: Vec<&Value> = records
        .iter()
        .filter(|r| r["status"] == "cancelled")
        .collect();
    assert!(!cancelled.is_empty(), "{records:#?}");
    for r in &cancelled {
        assert_eq!(r["error"]["kind"], "cancelled");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("SIGTERM"),
            "{r}"
        );
    }
    assert!(
        records.iter().all(|r| r["status"] != "failed"),
        "{records:#?}"
    );
    assert_stderr_contains(&ended, "STATUS");
}

/// A batch of one quick `add` then `n` sleeps: once the add's record is out, the
/// sleeps are dispatched.
fn add_then_sleeps(dir: &Path, n: usize, ms: u64) -> (String, PathBuf) {
    let mut lines = vec![job("first", "add", "[1, 1]")];
    lines.extend(sleeps("z", n, ms));
    let jobs = write_jobs(dir, "jobs.jsonl", &lines);
    (jobs, dir.join("out.jsonl"))
}

/// `clock_nanosleep`, the system call a worker running `sleep_ms` sits in.
#[cfg(target_arch = "x86_64")]
const NANOSLEEP: &str = "230";
#[cfg(target_arch = "aarch64")]
const NANOSLEEP: &str = "115";

/// How many workers of `sup` are inside a `sleep_ms` task right now: a thread of theirs
/// is in `clock_nanosleep` (`/proc/PID/task/TID/syscall`, readable for a descendant).
fn sleeping_workers(sup: u32) -> usize {
    workers_of(sup)
        .into_iter()
        .filter(|w| {
            std::fs::read_dir(format!("/proc/{w}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|t| {
                    std::fs::read_to_string(t.path().join("syscall"))
                        .is_ok_and(|s| s.split(' ').next() == Some(NANOSLEEP))
                })
        })
        .count()
}

/// Waits until both workers of `sup` run one of the batch's sleeps: from then on the
/// signal the test sends finds jobs dispatched and running.
fn settle(sup: &Supervisor) {
    assert!(
        wait_until(Duration::from_secs(20), || sleeping_workers(sup.pid()) == 2),
        "the sleeps never ran on both workers"
    );
}

#[test]
fn sigint_cancels_running_jobs_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, out) = start_after_the_first_record(dir.path(), 3, 20_000, &[]);
    settle(&sup);
    sup.signal(Signal::SIGINT);
    let ended = sup.wait();
    assert_exit(&ended, 130);
    assert!(ended.elapsed < Duration::from_secs(10), "{ended:?}");
    let (records, n) = stopped_records(&out, &ended);
    assert!((2..=4).contains(&n), "{}", ended.stderr);
    for r in &records[1..] {
        assert_eq!(r["status"], "cancelled", "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("SIGINT"),
            "{r}"
        );
    }
}

#[test]
fn drain_lets_every_dispatched_job_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, out) = start_after_the_first_record(dir.path(), 30, 300, &["--on-signal", "drain"]);
    settle(&sup);
    let signalled = Instant::now();
    sup.signal(Signal::SIGINT);
    let ended = sup.wait();
    assert_exit(&ended, 130);
    // At least the sleeps that were running had to end.
    assert!(
        signalled.elapsed() >= Duration::from_millis(250),
        "{ended:?}"
    );
    let (records, n) = stopped_records(&out, &ended);
    assert!(n > 1 && n < 31, "{n}");
    assert!(
        records.iter().all(|r| r["status"] == "completed"),
        "drained jobs complete: {records:#?}"
    );
}

#[test]
fn a_second_signal_kills_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sup, out) =
        start_after_the_first_record(dir.path(), 3, 20_000, &["--on-signal", "drain"]);
    settle(&sup);
    sup.signal(Signal::SIGTERM);
    // Draining: the 20 s sleeps keep it running. An absence check needs a window to look
    // in (no event says "still not exited"); the sleeps make it long in any case.
    std::thread::sleep(Duration::from_millis(300));
    assert!(sup.is_running(), "drain must wait for the running jobs");
    let workers = workers_of(sup.pid());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let second = Instant::now();
    sup.signal(Signal::SIGTERM);
    let ended = sup.wait();
    assert_exit(&ended, 143);
    assert!(second.elapsed() < Duration::from_secs(5), "{ended:?}");
    assert!(workers.iter().all(|&w| is_gone(w)), "{workers:?}");
    let (records, n) = stopped_records(&out, &ended);
    assert!((2..=4).contains(&n), "{}", ended.stderr);
    assert!(
        records[1..].iter().all(|r| r["status"] == "cancelled"),
        "{records:#?}"
    );
}

/// Jobs on a pipe whose writer keeps it open: a signal still stops the run (nothing may
/// wait for the next line or an end of input that never comes).
#[test]
fn a_signal_stops_a_run_whose_stdin_stays_open() {
    for (signal, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let out_arg = out.to_str().unwrap();
        let mut cmd = base_command(
            PROCPOOL,
            &run_args("-", &["--workers", "1", "--out", out_arg]),
            &[],
        );
        cmd.stdin(Stdio::piped());
        let mut sup = Supervisor::spawn(cmd);
        let stdin = sup.child.as_mut().unwrap().stdin.as_mut().unwrap();
        let jobs = [
            job("quick", "add", "[1, 2]"),
            job("long", "sleep_ms", "[600000]"),
        ];
        stdin
            .write_all((jobs.join("\n") + "\n").as_bytes())
            .unwrap();
        stdin.flush().unwrap();
        wait_for_records(&out, 1);
        assert!(
            wait_until(Duration::from_secs(20), || sleeping_workers(sup.pid()) == 1),
            "the long job never ran"
        );
        sup.signal(signal);
        // The pipe is still open here: `wait` holds the child with its stdin.
        let ended = sup.wait();
        assert_exit(&ended, code);
        let records = records_in(&out);
        assert_eq!(records.len(), 2, "{records:#?}");
        assert_eq!(records[0]["status"], "completed", "{records:#?}");
        assert_eq!(records[1]["status"], "cancelled", "{records:#?}");
    }
}

#[test]
fn sighup_is_logged_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, out) = start_after_the_first_record(dir.path(), 6, 150, &[]);
    sup.signal(Signal::SIGHUP);
    let ended = sup.wait();
    assert_exit(&ended, 0);
    assert_stderr_contains(&ended, "SIGHUP received and ignored");
    let records = records_in(&out);
    assert_eq!(records.len(), 7);
    assert!(records.iter().all(|r| r["status"] == "completed"));
}

// ---------------------------------------------------------------------------------------
// Operator feedback

#[test]
fn plain_summaries_then_a_table_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = sleeps("p", 8, 120);
    lines.push(job("bad", "fail", "[\"no\"]"));
    lines.push(job("gone", "segfault", "[]"));
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &lines);
    let args = run_args(&jobs, &["--workers", "2", "--progress-interval", "100ms"]);
    let ended = run(PROCPOOL, &args, &[]);
    assert_exit(&ended, 1);
    let summaries: Vec<&str> = ended
        .stderr
        .lines()
        .filter(|l| l.starts_with("procpool: ") && l.contains(" of 10 jobs done, "))
        .collect();
    assert!(summaries.len() >= 2, "{}", ended.stderr);
    assert!(
        summaries
            .iter()
            .all(|l| l.contains("running") && l.contains("jobs/s"))
    );
    let table = |status: &str, kind: &str, n: usize| {
        ended.stderr.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells == [status, kind, &n.to_string()]
        })
    };
    assert_stderr_contains(&ended, "procpool: 10 jobs done in ");
    assert!(table("completed", "-", 8), "{}", ended.stderr);
    assert!(table("failed", "user_error", 1), "{}", ended.stderr);
    assert!(table("failed", "crashed", 1), "{}", ended.stderr);
    // The records went to stdout, and only there.
    assert_eq!(ended.stdout.lines().count(), 10);

    let quiet = run(PROCPOOL, &[&args[..], &["--quiet"]].concat(), &[]);
    assert_eq!(quiet.code, Some(1), "{quiet:?}");
    assert!(quiet.stderr.is_empty(), "--quiet: {}", quiet.stderr);
}

#[test]
fn json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &[job("a", "add", "[1, 2]")]);
    let ended = run(
        PROCPOOL,
        &run_args(
            &jobs,
            &["--quiet", "--log-format", "json", "--log-level", "info"],
        ),
        &[],
    );
    assert_exit(&ended, 0);
    let logs: Vec<Value> = ended
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l["level"] == "INFO" && l["message"] == "pool started"),
        "{logs:#?}"
    );
}

#[test]
fn progress_bar_on_a_terminal() {
    use nix::pty::{Winsize, openpty};
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &sleeps("b", 6, 200));
    let size = Winsize {
        ws_row: 24,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).expect("openpty");
    let mut cmd = base_command(PROCPOOL, &run_args(&jobs, &["--workers", "2"]), &[]);
    cmd.stderr(Stdio::from(pty.slave));
    let mut child = cmd.spawn().expect("spawn");
    // Dropped by `Stdio::from`'s owner, the command: only the child holds the terminal now,
    // so reading the other side ends (EIO) once the child exits.
    drop(cmd);
    let stdout = reader_thread(child.stdout.take().unwrap());
    let screen = std::thread::spawn(move || {
        let mut master = std::fs::File::from(pty.master);
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let status = wait_or_kill(
        &mut child,
        Instant::now() + DEADLINE,
        "procpool under a terminal",
    );
    let screen = screen.join().unwrap();
    assert_eq!(status.code(), Some(0), "{screen}");
    assert_eq!(stdout.join().unwrap().lines().count(), 6);
    // The bar: done of the total (counted from the file), then the counters.
    assert!(screen.contains("/6 done, "), "{screen:?}");
    assert!(screen.contains("running"), "{screen:?}");
    // A plain summary line is for logs, not terminals.
    assert!(!screen.contains(" of 6 jobs done"), "{screen:?}");
    assert!(screen.contains("STATUS"), "the final table: {screen:?}");
}

// ---------------------------------------------------------------------------------------
// Configuration

#[test]
fn flags_beat_variables_beat_the_config_file_beats_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        &[job("slow", "sleep_ms", "[20000]")],
    );
    let config = dir.path().join("procpool.toml");
    // `grace` at the top applies to every subcommand that has it; the [run] table holds
    // the worker, the jobs and a timeout.
    std::fs::write(
        &config,
        format!(
            "grace = \"0\"\n[run]\nworker = \"{DEMO}\"\njobs = \"{jobs}\"\ntimeout = \"300ms\"\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let timeout_ms = |ended: &Ended| {
        let records: Vec<Value> = ended
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 1, "{ended:?}");
        assert_eq!(records[0]["error"]["kind"], "timed_out", "{ended:?}");
        records[0]["error"]["timeout_ms"].as_f64().unwrap()
    };

    // The file alone: every flag from it, none on the command line.
    let ended = run(PROCPOOL, &["run", "--config", config], &[]);
    assert_exit(&ended, 1);
    assert_eq!(timeout_ms(&ended), 300.0);
    // The same file named by PROCPOOL_CONFIG.
    let ended = run(PROCPOOL, &["run"], &[("PROCPOOL_CONFIG", config)]);
    assert_eq!(timeout_ms(&ended), 300.0);
    // A variable beats the file.
    let ended = run(
        PROCPOOL,
        &["run", "--config", config],
        &[("PROCPOOL_TIMEOUT", "400ms")],
    );
    assert_eq!(timeout_ms(&ended), 400.0);
    // A flag beats both.
    let ended = run(
        PROCPOOL,
        &["run", "--config", config, "--timeout", "500ms"],
        &[("PROCPOOL_TIMEOUT", "400ms")],
    );
    assert_eq!(timeout_ms(&ended), 500.0);
    // The built-in default, without file or variable: no timeout at all.
    let quick = write_jobs(dir.path(), "quick.jsonl", &[job("q", "sleep_ms", "[400]")]);
    let ended = run(PROCPOOL, &run_args(&quick, &[]), &[]);
    assert_exit(&ended, 0);
    // Switches and global flags from variables: quiet, and the worker's own variable.
    let ended = run(
        PROCPOOL,
        &["run", "--jobs", &quick],
        &[("PROCPOOL_WORKER_PATH", DEMO), ("PROCPOOL_QUIET", "true")],
    );
    assert_exit(&ended, 0);
    assert!(ended.stderr.is_empty(), "{ended:?}");
    // `procpool run --help` shows the file's values as defaults.
    let help = run(PROCPOOL, &["run", "--help", "--config", config], &[]);
    assert!(help.stdout.contains("[default: 300ms]"), "{}", help.stdout);
}

#[test]
fn a_bad_config_file_or_variable_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", &[job("a", "add", "[1, 2]")]);
    let cases = [
        ("wrokers = 2\n", "unknown key `wrokers`"),
        ("[run]\njson = true\n", "unknown key `run.json`"),
        ("[run]\ntimeout = \"soon\"\n", "`run.timeout`"),
        ("[nope]\n", "unknown table [nope]"),
        ("workers = \n", "procpool.toml"),
    ];
    for (text, needle) in cases {
        let config = dir.path().join("procpool.toml");
        std::fs::write(&config, text).unwrap();
        let ended = run(
            PROCPOOL,
            &run_args(&jobs, &["--config", config.to_str().unwrap()]),
            &[],
        );
        assert_eq!(ended.code, Some(2), "{text}: {ended:?}");
        assert!(ended.stderr.contains(needle), "{text}: {}", ended.stderr);
        assert!(ended.stdout.is_empty());
    }
    let ended = run(
        PROCPOOL,
        &run_args(&jobs, &["--config", "/nonexistent/p.toml"]),
        &[],
    );
    assert_exit(&ended, 2);
    assert_stderr_contains(&ended, "cannot read the config file");
    let ended = run(
        PROCPOOL,
        &run_args(&jobs, &[]),
        &[("PROCPOOL_WORKERS", "zero")],
    );
    assert_exit(&ended, 2);
    assert_stderr_contains(&ended, "--workers");
}

// ---------------------------------------------------------------------------------------
// The CLI inside an application binary

#[test]
fn the_demo_binary_is_supervisor_and_worker_without_worker_flag() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        &[job("a", "add", "[40, 2]"), job("b", "square", "[7]")],
    );
    let ended = run(DEMO, &["run", "--jobs", &jobs, "--workers", "2"], &[]);
    assert_exit(&ended, 0);
    let results: HashMap<String, Value> = ended
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r["result"].clone()))
        .collect();
    assert_eq!(results["a"], 42);
    assert_eq!(results["b"], 49);
    let tasks = run(DEMO, &["tasks", "--json"], &[]);
    assert_eq!(tasks.code, Some(0), "{tasks:?}");
    assert!(tasks.stdout.contains("\"sleep_ms\""), "{}", tasks.stdout);

    // The plain `procpool` binary registers no task: it needs --worker.
    let ended = run(PROCPOOL, &["run", "--jobs", &jobs], &[]);
    assert_exit(&ended, 2);
    assert_stderr_contains(&ended, "pass --worker PATH");
    assert!(ended.pid > 0);
}
