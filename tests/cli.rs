//! Black-box tests of the `procpool` CLI: real `procpool` processes running real
//! `procpool-demo` workers. Every run goes through [`procpool`], which enforces a deadline
//! and checks afterwards that no worker of that run is still alive.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PROCPOOL: &str = env!("CARGO_BIN_EXE_procpool");
const DEMO: &str = env!("CARGO_BIN_EXE_procpool-demo");

/// No single run may take longer than this; a hung run is killed and the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// What a finished `procpool` run left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    /// The stdout lines as JSON records.
    fn records(&self) -> Vec<Value> {
        parse_records(&self.stdout)
    }
}

fn parse_records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Records keyed by id (every record of these tests has one, except bad lines).
fn by_id(records: &[Value]) -> HashMap<String, Value> {
    let mut map = HashMap::new();
    for r in records {
        if let Some(id) = r["id"].as_str() {
            assert!(
                map.insert(id.to_owned(), r.clone()).is_none(),
                "two records for id {id}: {records:#?}"
            );
        }
    }
    map
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(PROCPOOL);
    cmd.args(args)
        // A panic record with a backtrace is slow to build and noisy to read.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `procpool ARGS` with `stdin` as its input, under [`DEADLINE`], and checks that
/// none of its workers outlived it.
fn procpool(args: &[&str], stdin: &str) -> Run {
    let started = Instant::now();
    let mut child = command(args).spawn().expect("spawn procpool");
    let pid = child.id();
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_owned();
    // A writer thread, so a full stdin pipe cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        // procpool may exit without reading its stdin (e.g. on a usage error).
        let _ = input.write_all(stdin.as_bytes());
    });
    let stdout = reader_thread(child.stdout.take().expect("piped stdout"));
    let stderr = reader_thread(child.stderr.take().expect("piped stderr"));
    let status = wait_with_deadline(&mut child, args);
    writer.join().expect("stdin writer");
    let run = Run {
        code: status
            .code()
            .expect("procpool exited (not killed by a signal)"),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        elapsed: started.elapsed(),
    };
    assert_no_workers_left(pid);
    run
}

fn reader_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        r.read_to_string(&mut s).expect("utf-8 output");
        s
    })
}

fn wait_with_deadline(child: &mut Child, what: &[&str]) -> std::process::ExitStatus {
    support::wait_or_kill(
        child,
        Instant::now() + DEADLINE,
        &format!("procpool {what:?}"),
    )
}

/// Once the supervisor has exited, no live process may still carry its pid as its parent.
fn assert_no_workers_left(supervisor: u32) {
    let left = support::workers_of_supervisor(supervisor);
    assert!(
        left.is_empty(),
        "workers of procpool pid {supervisor} still alive: {left:?}"
    );
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path.to_str().expect("utf-8 temp path").to_owned()
}

/// Runs `jobs` (JSON Lines) with `procpool run --worker WORKER FLAGS`.
fn run_jobs_on(worker: &str, flags: &[&str], jobs: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "jobs.jsonl", jobs);
    let mut args = vec!["run", "--worker", worker, "--jobs", &path];
    args.extend_from_slice(flags);
    procpool(&args, "")
}

/// [`run_jobs_on`] the demo worker.
fn run_jobs_with(flags: &[&str], jobs: &str) -> Run {
    run_jobs_on(DEMO, flags, jobs)
}

/// A batch of one good job.
const ADD_JOB: &str = "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 2]}\n";

/// Runs `procpool run --worker DEMO --workers WORKERS --jobs -` with `input` on stdin.
fn run_stdin(workers: &str, input: &str) -> Run {
    procpool(
        &["run", "--worker", DEMO, "--workers", workers, "--jobs", "-"],
        input,
    )
}

#[track_caller]
fn assert_message_contains(r: &Value, needle: &str) {
    assert!(
        r["error"]["message"].as_str().unwrap().contains(needle),
        "{needle:?} not in the message of {r}"
    );
}

/// A help text: it exits 0 and names every one of `needles`.
#[track_caller]
fn assert_documents(help: &Run, needles: &[&str]) {
    assert_eq!(help.code, 0, "{help:?}");
    support::assert_names_all(&help.stdout, needles);
}

#[track_caller]
fn assert_stderr_contains(run: &Run, needle: &str) {
    assert!(
        run.stderr.contains(needle),
        "{needle:?} not in:\n{}",
        run.stderr
    );
}

#[track_caller]
fn assert_quick(run: &Run) {
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}",
        run.elapsed
    );
}

// ---------------------------------------------------------------------------------------
// Help and usage

#[test]
fn run_help_documents_flags_jobs_and_exit_codes() {
    assert_documents(
        &procpool(&["run", "--help"], ""),
        &[
            "--worker",
            "--jobs",
            "--workers",
            "--out",
            "--start-timeout",
            "--log-level",
            "bad_job",
            "missing or non-string id",
            "EXIT CODES",
        ],
    );
}

#[test]
fn tasks_help() {
    let run = procpool(&["tasks", "--help"], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("--worker"), "{}", run.stdout);
    assert!(run.stdout.contains("--json"), "{}", run.stdout);
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_file(dir.path(), "jobs.jsonl", "");
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["run", "--worker", DEMO],
        &["run", "--jobs", &jobs],
        &["run", "--worker", DEMO, "--jobs", &jobs, "--workers", "0"],
        &["run", "--worker", DEMO, "--jobs", &jobs, "--no-such-flag"],
        &[
            "run",
            "--worker",
            DEMO,
            "--jobs",
            &jobs,
            "--start-timeout",
            "soon",
        ],
        &["tasks"],
    ];
    for args in cases {
        let run = procpool(args, "");
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{args:?}: {run:?}");
    }
}

#[test]
fn missing_job_file_exits_2() {
    let run = procpool(
        &["run", "--worker", DEMO, "--jobs", "/nonexistent/jobs.jsonl"],
        "",
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_stderr_contains(&run, "cannot open the job file /nonexistent/jobs.jsonl");
}

#[test]
fn out_file_equal_to_job_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = ADD_JOB;
    let jobs = write_file(dir.path(), "jobs.jsonl", text);
    let run = procpool(
        &["run", "--worker", DEMO, "--jobs", &jobs, "--out", &jobs],
        "",
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(std::fs::read_to_string(&jobs).unwrap(), text);
}

// ---------------------------------------------------------------------------------------
// tasks

#[test]
fn tasks_json_lists_every_demo_task_with_types() {
    let run = procpool(&["tasks", "--worker", DEMO, "--json"], "");
    assert_eq!(run.code, 0, "{run:?}");
    let tasks: Vec<Value> = serde_json::from_str(&run.stdout).expect("a JSON array");
    let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    let mut expected = vec![
        "add",
        "square",
        "sum",
        "echo",
        "bytes",
        "sleep_ms",
        "spin_ms",
        "fail",
        "panic",
        "segfault",
        "abort",
        "exit",
        "alloc_mb",
        "progress",
        "noisy",
        "grandchild",
        "messages",
        "chat",
        "greet",
        "flood",
        "environ",
        "stamp",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected, "sorted by name");
    let get = |name: &str| tasks.iter().find(|t| t["name"] == name).unwrap().clone();
    assert_eq!(
        get("add"),
        json!({"name": "add", "params": [{"name": "a", "type_name": "i64"},
            {"name": "b", "type_name": "i64"}], "result": "i64", "fallible": false,
            "is_async": false})
    );
    assert_eq!(get("sum")["params"][0]["type_name"], "Vec<i64>");
    assert_eq!(get("progress")["params"].as_array().unwrap().len(), 2);
    assert_eq!(get("segfault")["params"], json!([]));
    assert_eq!(get("segfault")["result"], "()");
    assert_eq!(get("fail")["fallible"], true);
    assert_eq!(get("fail")["params"][0]["type_name"], "String");
}

#[test]
fn tasks_table_for_people() {
    let run = procpool(&["tasks", "--worker", DEMO], "");
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1 + 22, "{}", run.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TASK", "PARAMETERS", "RESULT", "NOTES"]);
    let add = lines.iter().find(|l| l.starts_with("add ")).unwrap();
    assert_eq!(
        add.split_whitespace().collect::<Vec<_>>(),
        ["add", "a:", "i64,", "b:", "i64", "i64"]
    );
    let fail = lines.iter().find(|l| l.starts_with("fail ")).unwrap();
    assert!(fail.ends_with("fallible"), "{fail}");
}

// ---------------------------------------------------------------------------------------
// run: results

/// One line per case; blank lines are skipped but still counted.
const MIXED: &str = r#"{"id": "add", "task": "add", "args": [1, 2]}
{"id": "square", "task": "square", "args": [7]}

{"id": "sum", "task": "sum", "args": [[1, 2, 3, 4]]}
{"id": "fail", "task": "fail", "args": ["no luck"]}
{"id": "panic", "task": "panic", "args": ["boom"]}
{"id": "segfault", "task": "segfault", "args": []}
{"id": "abort", "task": "abort"}
{"id": "exit3", "task": "exit", "args": [3]}
{"id": "unknown", "task": "no_such_task", "args": []}
{"id": "types", "task": "add", "args": ["one", 2]}
{"id": "count", "task": "add", "args": [1]}
{"id": "broken", "task": "add", "args": [1, 2]
{"id": "add", "task": "square", "args": [2]}
{"task": "add", "args": [1, 2]}
   
{"id": "after", "task": "add", "args": [20, 22]}
"#;

#[test]
fn mixed_batch_reports_every_kind_and_exits_1() {
    let run = run_jobs_with(&["--workers", "2"], MIXED);
    assert_eq!(run.code, 1, "{run:?}");
    let records = run.records();
    let non_blank = MIXED.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(
        records.len(),
        non_blank,
        "one record per job line: {records:#?}"
    );

    // Every record carries its 1-based line; each line has exactly one record.
    let mut lines: Vec<u64> = records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    lines.sort_unstable();
    assert_eq!(lines, [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17]);
    let at = |line: u64| records.iter().find(|r| r["line"] == line).unwrap().clone();

    // The good jobs ran, with the right results.
    for (line, id, task, result) in [
        (1, "add", "add", 3),
        (2, "square", "square", 49),
        (4, "sum", "sum", 10),
        (17, "after", "add", 42),
    ] {
        let r = at(line);
        assert_eq!(r["id"], id, "{r}");
        assert_eq!(r["task"], task, "{r}");
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["result"], result, "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        assert!(r["duration_ms"].as_f64().unwrap() >= 0.0, "{r}");
        assert!(r.get("error").is_none(), "{r}");
    }

    let failed = |line: u64, kind: &str| {
        let r = at(line);
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["error"]["kind"], kind, "{r}");
        assert!(r["error"]["message"].is_string(), "{r}");
        assert!(r.get("result").is_none(), "{r}");
        r
    };
    let r = failed(5, "user_error");
    assert_eq!(r["error"]["message"], "no luck");
    assert!(
        r["error"]["type"].as_str().unwrap().contains("String"),
        "{r}"
    );

    let r = failed(6, "panicked");
    assert_eq!(r["error"]["message"], "boom");
    assert!(
        r["error"]["location"].as_str().unwrap().contains(".rs:"),
        "{r}"
    );

    for (line, signal) in [(7, "SIGSEGV"), (8, "SIGABRT")] {
        let r = failed(line, "crashed");
        assert_eq!(r["error"]["signal"], signal, "{r}");
        assert!(r["error"].get("exit_code").is_none(), "{r}");
        assert!(r["error"]["stderr_tail"].is_array(), "{r}");
    }
    let r = failed(9, "crashed");
    assert_eq!(r["error"]["exit_code"], 3, "{r}");
    assert!(r["error"].get("signal").is_none(), "{r}");

    let r = failed(10, "unknown_task");
    assert_eq!(r["id"], "unknown");
    assert_message_contains(&r, "no_such_task");
    assert_eq!(failed(11, "bad_args")["id"], "types");
    assert_eq!(failed(12, "bad_args")["id"], "count");

    // Lines that never became jobs: malformed, duplicate id, missing id.
    let r = failed(13, "bad_job");
    assert!(r.get("id").is_none(), "{r}");
    assert_message_contains(&r, "invalid JSON");
    let r = failed(14, "bad_job");
    assert_eq!(r["id"], "add");
    assert_message_contains(&r, "duplicate id");
    let r = failed(15, "bad_job");
    assert_message_contains(&r, "missing \"id\"");
    for line in [13, 14, 15] {
        assert!(at(line).get("attempts").is_none());
    }
}

#[test]
fn all_good_batch_exits_0_in_any_order() {
    // More jobs than the in-flight window, so reading resumes as results come in.
    let mut text = String::new();
    for i in 0..300i64 {
        match i % 3 {
            0 => text.push_str(&format!(
                "{{\"id\": \"a{i}\", \"task\": \"add\", \"args\": [{i}, 1]}}\n"
            )),
            1 => text.push_str(&format!(
                "{{\"id\": \"s{i}\", \"task\": \"square\", \"args\": [{i}]}}\n"
            )),
            _ => text.push_str(&format!(
                "{{\"id\": \"m{i}\", \"task\": \"sum\", \"args\": [[{i}, {i}, {i}]]}}\n"
            )),
        }
    }
    let run = run_jobs_with(&["--workers", "2"], &text);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let records = by_id(&run.records());
    assert_eq!(records.len(), 300);
    for i in 0..300i64 {
        let (id, want) = match i % 3 {
            0 => (format!("a{i}"), i + 1),
            1 => (format!("s{i}"), i * i),
            _ => (format!("m{i}"), 3 * i),
        };
        let r = &records[&id];
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["result"], want, "{r}");
        assert_eq!(r["line"], i + 1, "{r}");
    }
}

#[test]
fn missing_args_mean_no_arguments_and_an_empty_batch_succeeds() {
    let run = run_stdin("1", "{\"id\": \"x\", \"task\": \"add\"}\n");
    assert_eq!(run.code, 1, "{run:?}");
    let r = &run.records()[0];
    assert_eq!(r["error"]["kind"], "bad_args", "{r}");
    assert_message_contains(r, "got 0");

    let run = run_stdin("1", "\n\n");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn jobs_from_stdin() {
    let run = run_stdin(
        "2",
        "{\"id\": \"one\", \"task\": \"add\", \"args\": [2, 3]}\n\
         {\"id\": \"two\", \"task\": \"square\", \"args\": [-4]}",
    );
    assert_eq!(run.code, 0, "{run:?}");
    let records = by_id(&run.records());
    assert_eq!(records["one"]["result"], 5);
    assert_eq!(records["two"]["result"], 16);
    assert_eq!(
        records["two"]["line"], 2,
        "an unterminated last line still counts"
    );
}

/// A pipe given as a path (`--jobs <(generate)`, here `/dev/stdin` on a pipe) is read
/// once, as it streams: its duplicate ids are still found and every job runs.
#[test]
fn jobs_from_a_pipe_given_as_a_path() {
    let run = procpool(
        &["run", "--worker", DEMO, "--jobs", "/dev/stdin"],
        "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 1]}\n\
         {\"id\": \"a\", \"task\": \"add\", \"args\": [2, 2]}\n\
         {\"id\": \"b\", \"task\": \"add\", \"args\": [3, 3]}\n",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let records = run.records();
    assert_eq!(records.len(), 3, "{run:?}");
    let at = |line: u64| records.iter().find(|r| r["line"] == line).unwrap();
    assert_eq!(at(1)["result"], 2);
    assert_eq!(at(2)["error"]["kind"], "bad_job");
    assert_message_contains(at(2), "duplicate id");
    assert_eq!(at(3)["result"], 6);
}

#[test]
fn results_stream_before_the_input_ends() {
    let mut child = command(&["run", "--worker", DEMO, "--workers", "1", "--jobs", "-"])
        .spawn()
        .expect("spawn procpool");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let stderr = reader_thread(child.stderr.take().unwrap());

    writeln!(
        stdin,
        "{{\"id\": \"first\", \"task\": \"add\", \"args\": [1, 1]}}"
    )
    .unwrap();
    stdin.flush().unwrap();
    // The input is still open: the first result must arrive anyway.
    let first = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
        let _ = child.kill();
        let _ = child.wait();
        "no result while the input was still open"
    });
    let first: Value = serde_json::from_str(&first.unwrap()).unwrap();
    assert_eq!(first["id"], "first");
    assert_eq!(first["result"], 2);

    writeln!(
        stdin,
        "{{\"id\": \"second\", \"task\": \"add\", \"args\": [2, 2]}}"
    )
    .unwrap();
    drop(stdin);
    let status = wait_with_deadline(&mut child, &["run", "--jobs", "-"]);
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(rest[0].contains("\"second\""), "{rest:?}");
    assert_eq!(status.code(), Some(0), "{}", stderr.join().unwrap());
    assert_no_workers_left(pid);
}

#[test]
fn out_file_is_created_or_truncated_and_stdout_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_file(
        dir.path(),
        "jobs.jsonl",
        "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 2]}\n\
         {\"id\": \"b\", \"task\": \"fail\", \"args\": [\"x\"]}\n",
    );
    let out = write_file(
        dir.path(),
        "out.jsonl",
        "old content that must go\n".repeat(50).as_str(),
    );
    let run = procpool(
        &[
            "run",
            "--worker",
            DEMO,
            "--workers",
            "2",
            "--jobs",
            &jobs,
            "--out",
            &out,
        ],
        "",
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    let records = parse_records(&std::fs::read_to_string(&out).unwrap());
    let records = by_id(&records);
    assert_eq!(records.len(), 2);
    assert_eq!(records["a"]["result"], 3);
    assert_eq!(records["b"]["error"]["kind"], "user_error");

    let fresh = dir.path().join("fresh.jsonl");
    let run = procpool(
        &[
            "run",
            "--worker",
            DEMO,
            "--workers",
            "1",
            "--jobs",
            &jobs,
            "--out",
            fresh.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        parse_records(&std::fs::read_to_string(&fresh).unwrap()).len(),
        2
    );
}

/// A closed pipe on stderr (`2>&1 | head`, a hung-up terminal) loses log lines, never
/// results: `eprintln!` and `tracing`'s default error report would panic there.
#[test]
fn a_closed_stderr_loses_no_results() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_file(
        dir.path(),
        "jobs.jsonl",
        "{\"id\": \"a\", \"task\": \"noisy\", \"args\": [5]}\n\
         {\"id\": \"b\", \"task\": \"noisy\", \"args\": [5]}\n\
         {\"id\": \"c\", \"task\": \"add\", \"args\": [1, 2]}\n",
    );
    let out = dir.path().join("out.jsonl");
    // Every task output line is logged at `info`, and the summary table goes to stderr.
    let mut child = command(&[
        "run",
        "--worker",
        DEMO,
        "--jobs",
        &jobs,
        "--out",
        out.to_str().unwrap(),
        "--log-level",
        "info",
    ])
    .stdin(Stdio::null())
    .spawn()
    .expect("spawn procpool");
    drop(child.stderr.take());
    let status = wait_with_deadline(&mut child, &["run", "with stderr closed"]);
    assert_no_workers_left(child.id());
    assert_eq!(status.code(), Some(0), "{status:?}");
    let records = parse_records(&std::fs::read_to_string(&out).unwrap());
    let records = by_id(&records);
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records["a"]["result"], 5);
    assert_eq!(records["c"]["result"], 3);
}

// ---------------------------------------------------------------------------------------
// run: unusable workers (exit 2, nothing run, no records)

fn assert_worker_refused(run: &Run, worker: &str) {
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.is_empty(), "no records expected: {run:?}");
    assert!(
        run.stderr
            .contains(&format!("procpool: error: error starting worker {worker}")),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_worker_binary_exits_2_and_leaves_out_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let worker = "/nonexistent/procpool-worker";
    let run = run_jobs_on(worker, &["--out", out.to_str().unwrap()], ADD_JOB);
    assert_worker_refused(&run, worker);
    assert_stderr_contains(&run, "No such file or directory");
    assert!(!out.exists(), "the output file must not be created");

    let run = procpool(&["tasks", "--worker", worker], "");
    assert_worker_refused(&run, worker);
}

#[test]
fn non_executable_worker_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let worker = write_file(dir.path(), "not-a-binary", "just text\n");
    let run = run_jobs_on(&worker, &[], ADD_JOB);
    assert_worker_refused(&run, &worker);
    assert_stderr_contains(&run, "Permission denied");
}

#[test]
fn binary_that_exits_at_once_is_not_a_worker() {
    let run = run_jobs_on("/bin/true", &["--workers", "2"], ADD_JOB);
    assert_worker_refused(&run, "/bin/true");
    assert_stderr_contains(&run, "before the handshake");
}

#[test]
fn binary_that_never_says_hello_fails_within_the_start_timeout() {
    // `cat` waits on its input (the worker channel) and never sends a handshake.
    let run = run_jobs_on("/bin/cat", &["--start-timeout", "0.3"], ADD_JOB);
    assert_worker_refused(&run, "/bin/cat");
    assert_stderr_contains(&run, "no handshake within 300ms");
    assert_quick(&run);
}

// ---------------------------------------------------------------------------------------
// run: policies (--timeout, --grace, --retries, --max-rss, ..., per-job overrides)

#[test]
fn run_help_documents_the_policy_flags_and_job_fields() {
    assert_documents(
        &procpool(&["run", "--help"], ""),
        &[
            "--timeout <DURATION>",
            "--grace <DURATION>",
            "--retries <N>",
            "--max-tasks-per-worker <N>",
            "--max-rss <SIZE>",
            "--min-workers <N>",
            "--idle-timeout <DURATION>",
            "--prefetch-jobs <N>",
            "200ms",
            "512MiB",
            "timeout_ms",
            "retries",
            "attempts",
            "limit_exceeded",
        ],
    );
}

#[test]
fn timeout_ends_a_hung_job_within_a_second() {
    let run = run_jobs_with(
        &["--timeout", "200ms", "--grace", "0", "--workers", "1"],
        "{\"id\": \"hang\", \"task\": \"sleep_ms\", \"args\": [60000]}\n\
         {\"id\": \"after\", \"task\": \"add\", \"args\": [1, 2]}\n",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let records = by_id(&run.records());
    let hang = &records["hang"];
    assert_eq!(hang["status"], "failed", "{hang}");
    assert_eq!(hang["error"]["kind"], "timed_out", "{hang}");
    assert_eq!(hang["error"]["timeout_ms"], 200.0, "{hang}");
    assert_eq!(hang["attempts"], 1, "{hang}");
    // 200 ms deadline + 0 grace + 500 ms of slack.
    let took = hang["duration_ms"].as_f64().unwrap();
    assert!((200.0..700.0).contains(&took), "{hang}");
    assert_eq!(records["after"]["status"], "completed", "{run:?}");
    assert_eq!(records["after"]["result"], 3, "{run:?}");
    assert_quick(&run);
}

#[test]
fn per_job_timeout_overrides_the_flag_both_ways() {
    let run = run_jobs_with(
        &["--timeout", "100ms", "--grace", "0", "--workers", "2"],
        "{\"id\": \"shorter\", \"task\": \"sleep_ms\", \"args\": [60000], \"timeout_ms\": 150}\n\
         {\"id\": \"longer\", \"task\": \"sleep_ms\", \"args\": [400], \"timeout_ms\": 10000}\n\
         {\"id\": \"default\", \"task\": \"sleep_ms\", \"args\": [60000]}\n",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let records = by_id(&run.records());
    let shorter = &records["shorter"];
    assert_eq!(shorter["error"]["kind"], "timed_out", "{shorter}");
    assert_eq!(shorter["error"]["timeout_ms"], 150.0, "{shorter}");
    let longer = &records["longer"];
    assert_eq!(longer["status"], "completed", "{longer}");
    assert_eq!(longer["result"], 400, "{longer}");
    let default = &records["default"];
    assert_eq!(default["error"]["kind"], "timed_out", "{default}");
    assert_eq!(default["error"]["timeout_ms"], 100.0, "{default}");
}

#[test]
fn retries_rerun_crashes_but_not_panics_and_report_attempts() {
    let run = run_jobs_with(
        &["--retries", "2", "--workers", "2"],
        "{\"id\": \"exit\", \"task\": \"exit\", \"args\": [3]}\n\
         {\"id\": \"exit-no-retry\", \"task\": \"exit\", \"args\": [4], \"retries\": 0}\n\
         {\"id\": \"exit-more\", \"task\": \"exit\", \"args\": [5], \"retries\": 3}\n\
         {\"id\": \"panic\", \"task\": \"panic\", \"args\": [\"boom\"]}\n\
         {\"id\": \"good\", \"task\": \"square\", \"args\": [9]}\n",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let records = by_id(&run.records());
    for (id, code, attempts) in [("exit", 3, 3), ("exit-no-retry", 4, 1), ("exit-more", 5, 4)] {
        let r = &records[id];
        assert_eq!(r["error"]["kind"], "crashed", "{r}");
        assert_eq!(r["error"]["exit_code"], code, "{r}");
        assert_eq!(r["attempts"], attempts, "{r}");
    }
    assert_eq!(records["panic"]["error"]["kind"], "panicked", "{run:?}");
    assert_eq!(records["panic"]["attempts"], 1, "{run:?}");
    assert_eq!(records["good"]["result"], 81, "{run:?}");
    assert_eq!(records["good"]["attempts"], 1, "{run:?}");
}

#[test]
fn retry_on_leaves_out_the_kinds_it_does_not_name() {
    // Timeouts are not listed: a hanging job fails after one deadline, a crash is
    // retried, and a job's own `retries` follows the same choice.
    let jobs = "{\"id\": \"hang\", \"task\": \"sleep_ms\", \"args\": [60000]}\n\
                {\"id\": \"hang-own\", \"task\": \"sleep_ms\", \"args\": [60000], \"retries\": 3}\n\
                {\"id\": \"exit\", \"task\": \"exit\", \"args\": [3]}\n";
    let flags = [
        "--retries",
        "2",
        "--timeout",
        "300ms",
        "--grace",
        "0",
        "--workers",
        "2",
    ];
    let mut with = flags.to_vec();
    with.extend(["--retry-on", "crashed,limit_exceeded"]);
    let run = run_jobs_with(&with, jobs);
    assert_eq!(run.code, 1, "{run:?}");
    let records = by_id(&run.records());
    for id in ["hang", "hang-own"] {
        assert_eq!(records[id]["error"]["kind"], "timed_out", "{run:?}");
        assert_eq!(records[id]["attempts"], 1, "{run:?}");
    }
    assert_eq!(records["exit"]["error"]["kind"], "crashed", "{run:?}");
    assert_eq!(records["exit"]["attempts"], 3, "{run:?}");

    // Without --retry-on every crash-class kind is retried, timeouts included.
    let run = run_jobs_with(&flags, jobs);
    let records = by_id(&run.records());
    assert_eq!(records["hang"]["attempts"], 3, "{run:?}");
    assert_eq!(records["hang-own"]["attempts"], 4, "{run:?}");

    // A kind it does not know is bad usage.
    let run = run_jobs_with(&["--retry-on", "crashed,panicked"], ADD_JOB);
    assert_eq!(run.code, 2, "{run:?}");
    assert_stderr_contains(&run, "panicked");
}

#[test]
fn max_rss_stops_a_memory_bomb_and_the_next_job_succeeds() {
    let run = run_jobs_with(
        &["--max-rss", "256MiB", "--workers", "1"],
        "{\"id\": \"bomb\", \"task\": \"alloc_mb\", \"args\": [2048]}\n\
         {\"id\": \"small\", \"task\": \"alloc_mb\", \"args\": [16]}\n\
         {\"id\": \"next\", \"task\": \"add\", \"args\": [40, 2]}\n",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let records = by_id(&run.records());
    let bomb = &records["bomb"];
    assert_eq!(bomb["status"], "failed", "{bomb}");
    assert_eq!(bomb["error"]["kind"], "limit_exceeded", "{bomb}");
    assert_message_contains(bomb, "above the 256 MiB limit");
    assert_eq!(records["small"]["result"], 16, "{run:?}");
    assert_eq!(records["next"]["result"], 42, "{run:?}");
}

#[test]
fn recycling_and_elastic_sizing_flags_run_a_batch() {
    let jobs: String = (0..12)
        .map(|i| format!("{{\"id\": \"j{i}\", \"task\": \"square\", \"args\": [{i}]}}\n"))
        .collect();
    let run = run_jobs_with(
        &[
            "--workers",
            "3",
            "--min-workers",
            "1",
            "--idle-timeout",
            "50ms",
            "--max-tasks-per-worker",
            "1",
        ],
        &jobs,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let records = by_id(&run.records());
    for i in 0..12i64 {
        assert_eq!(records[&format!("j{i}")]["result"], i * i, "{run:?}");
    }
}

/// Issue 16: with `--prefetch-jobs`, jobs queued in a worker behind one that crashes or times
/// out are not blamed for it: only the running job fails, the others run again elsewhere
/// (once each) and complete.
#[test]
fn issue16_prefetch_keeps_crash_and_timeout_attribution_exact() {
    let mut jobs = String::from("{\"id\": \"slow\", \"task\": \"sleep_ms\", \"args\": [50]}\n");
    jobs.push_str("{\"id\": \"crash\", \"task\": \"segfault\"}\n");
    for i in 0..10 {
        jobs.push_str(&format!(
            "{{\"id\": \"a{i}\", \"task\": \"add\", \"args\": [{i}, 1]}}\n"
        ));
    }
    jobs.push_str(
        "{\"id\": \"hang\", \"task\": \"sleep_ms\", \"args\": [60000], \"timeout_ms\": 200}\n",
    );
    for i in 10..20 {
        jobs.push_str(&format!(
            "{{\"id\": \"a{i}\", \"task\": \"add\", \"args\": [{i}, 1]}}\n"
        ));
    }
    // One worker: every job after the first is sent ahead to it.
    let run = run_jobs_with(
        &["--workers", "1", "--prefetch-jobs", "16", "--grace", "0"],
        &jobs,
    );
    assert_eq!(run.code, 1, "{run:?}");
    let records = by_id(&run.records());
    assert_eq!(records.len(), 23, "{run:?}");
    assert_eq!(records["slow"]["result"], 50);
    assert_eq!(records["crash"]["error"]["kind"], "crashed", "{run:?}");
    assert_eq!(records["crash"]["error"]["signal"], "SIGSEGV");
    assert_eq!(records["hang"]["error"]["kind"], "timed_out", "{run:?}");
    for i in 0..20i64 {
        let r = &records[&format!("a{i}")];
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["result"], i + 1);
        assert_eq!(r["attempts"], 1, "{r}");
    }
}

#[test]
fn issue16_a_job_is_timed_from_its_first_start_not_from_its_queueing() {
    // One worker: `queued` waits about 1.5 s behind `first` (in the pool's queue, or sent
    // ahead to the busy worker); `retried` meets its 200 ms deadline twice.
    let jobs = "{\"id\": \"first\", \"task\": \"sleep_ms\", \"args\": [1500]}\n\
                {\"id\": \"queued\", \"task\": \"sleep_ms\", \"args\": [100]}\n\
                {\"id\": \"retried\", \"task\": \"sleep_ms\", \"args\": [60000], \
                 \"timeout_ms\": 200, \"retries\": 1}\n";
    for prefetch in ["0", "2"] {
        let run = run_jobs_with(
            &[
                "--workers",
                "1",
                "--grace",
                "0",
                "--prefetch-jobs",
                prefetch,
            ],
            jobs,
        );
        assert_eq!(run.code, 1, "{run:?}");
        let records = by_id(&run.records());
        let took = |id: &str| records[id]["duration_ms"].as_f64().unwrap();
        assert_eq!(records["queued"]["status"], "completed", "{run:?}");
        // Its own 100 ms, not the time it waited behind `first`.
        assert!((100.0..1400.0).contains(&took("queued")), "{run:?}");
        // Both attempts, counted from the first start: two deadlines at least.
        assert_eq!(records["retried"]["attempts"], 2, "{run:?}");
        assert_eq!(records["retried"]["error"]["kind"], "timed_out", "{run:?}");
        assert!(took("retried") >= 400.0, "{run:?}");
    }
}

#[test]
fn bad_duration_size_and_count_flags_exit_2_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--timeout", "soon"],
            "'soon' for '--timeout <DURATION>': not a duration",
        ),
        (&["--timeout", "200"], "not a duration"),
        (&["--timeout", "0"], "must be longer than zero"),
        (&["--grace=-1s"], "not a duration"),
        (&["--idle-timeout", "5 parsecs"], "not a duration"),
        (
            &["--max-rss", "lots"],
            "'lots' for '--max-rss <SIZE>': not a size",
        ),
        (&["--max-rss", "12 furlongs"], "not a size"),
        (&["--max-rss", "0MiB"], "must be larger than zero"),
        (&["--retries=-1"], "--retries <N>"),
        (&["--retries", "many"], "--retries <N>"),
        (
            &["--max-tasks-per-worker", "0"],
            "--max-tasks-per-worker <N>",
        ),
        (
            &["--workers", "2", "--min-workers", "3"],
            "min_workers (3) is above workers (2)",
        ),
    ];
    for (flags, needle) in cases {
        let run = run_jobs_with(flags, ADD_JOB);
        assert_eq!(run.code, 2, "{flags:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{flags:?}: {run:?}");
        assert!(
            run.stderr.contains(needle),
            "{flags:?}: {needle:?} missing from {}",
            run.stderr
        );
    }
}

#[test]
fn bad_per_job_policy_fields_are_bad_jobs() {
    let run = run_jobs_with(
        &["--workers", "1"],
        "{\"id\": \"t-string\", \"task\": \"add\", \"args\": [1, 2], \"timeout_ms\": \"1s\"}\n\
         {\"id\": \"t-zero\", \"task\": \"add\", \"args\": [1, 2], \"timeout_ms\": 0}\n\
         {\"id\": \"t-neg\", \"task\": \"add\", \"args\": [1, 2], \"timeout_ms\": -5}\n\
         {\"id\": \"r-float\", \"task\": \"add\", \"args\": [1, 2], \"retries\": 1.5}\n\
         {\"id\": \"r-null\", \"task\": \"add\", \"args\": [1, 2], \"retries\": null}\n\
         {\"id\": \"r-array\", \"task\": \"add\", \"args\": [1, 2], \"retries\": [1]}\n\
         {\"id\": \"fine\", \"task\": \"add\", \"args\": [1, 2], \"timeout_ms\": 5000, \"retries\": 1}\n",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let records = by_id(&run.records());
    for (id, line, field) in [
        ("t-string", 1, "timeout_ms"),
        ("t-zero", 2, "timeout_ms"),
        ("t-neg", 3, "timeout_ms"),
        ("r-float", 4, "retries"),
        ("r-null", 5, "retries"),
        ("r-array", 6, "retries"),
    ] {
        let r = &records[id];
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["error"]["kind"], "bad_job", "{r}");
        assert_eq!(r["line"], line, "{r}");
        assert!(r.get("attempts").is_none(), "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("\"{field}\" must be a whole number")),
            "{r}"
        );
    }
    assert_eq!(records["fine"]["status"], "completed", "{run:?}");
    assert_eq!(records["fine"]["result"], 3, "{run:?}");
    assert_eq!(records["fine"]["attempts"], 1, "{run:?}");
}

// ---------------------------------------------------------------------------------------
// Nested tasks in a job's arguments (issue 3)

#[test]
fn run_help_documents_nested_tasks() {
    assert_documents(
        &procpool(&["run", "--help"], ""),
        &["NESTED TASKS", "$task", "error.input"],
    );
}

#[test]
fn nested_tasks_run_first_and_their_results_replace_them() {
    let jobs = concat!(
        r#"{"id": "m", "task": "sum", "args": [[{"$task": "square", "args": [2]}, {"$task": "square", "args": [3]}]]}"#,
        "\n",
        // Nested twice: sum([square(2), 1]) = 5, plus square(3) = 9.
        r#"{"id": "deep", "task": "add", "args": [{"$task": "sum", "args": [[{"$task": "square", "args": [2]}, 1]]}, {"$task": "square", "args": [3]}]}"#,
        "\n",
        r#"{"id": "plain", "task": "add", "args": [1, 2]}"#,
        "\n",
    );
    let run = run_stdin("2", jobs);
    assert_eq!(run.code, 0, "{run:?}");
    let records = by_id(&run.records());
    for (id, result) in [("m", 13), ("deep", 14), ("plain", 3)] {
        let r = &records[id];
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["result"], result, "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
    }
}

#[test]
fn a_failing_nested_task_fails_its_job_with_its_kind_and_cancels_the_others() {
    let jobs = concat!(
        r#"{"id": "f", "task": "sum", "args": [[{"$task": "sleep_ms", "args": [10000]}, {"$task": "segfault"}, {"$task": "sleep_ms", "args": [10000]}]]}"#,
        "\n",
        r#"{"id": "after", "task": "add", "args": [20, 22]}"#,
        "\n",
    );
    let run = run_stdin("3", jobs);
    assert_eq!(run.code, 1, "{run:?}");
    // The sleepers were killed: a drain waiting for them would take 10 s.
    assert_quick(&run);
    let records = by_id(&run.records());
    let f = &records["f"];
    assert_eq!(f["status"], "failed", "{f}");
    assert_eq!(f["task"], "sum", "{f}");
    assert_eq!(f["error"]["kind"], "crashed", "{f}");
    assert_eq!(f["error"]["signal"], "SIGSEGV", "{f}");
    assert_eq!(
        f["error"]["input"],
        json!({"task": "segfault", "path": "$[0][1]"}),
        "{f}"
    );
    assert_eq!(f["attempts"], 0, "the job's own task never ran: {f}");
    assert_eq!(records["after"]["result"], 42);
}

#[test]
fn malformed_or_unknown_nested_tasks_fail_their_job_only() {
    let jobs = concat!(
        r#"{"id": "shape", "task": "sum", "args": [[{"$task": 5}]]}"#,
        "\n",
        r#"{"id": "extra", "task": "sum", "args": [[{"$task": "square", "args": [1], "x": 1}]]}"#,
        "\n",
        r#"{"id": "unknown", "task": "sum", "args": [[{"$task": "no_such_task"}, {"$task": "sleep_ms", "args": [10000]}]]}"#,
        "\n",
        r#"{"id": "ok", "task": "sum", "args": [[{"$task": "square", "args": [4]}]]}"#,
        "\n",
    );
    let run = run_stdin("2", jobs);
    assert_eq!(run.code, 1, "{run:?}");
    assert_quick(&run);
    let records = by_id(&run.records());
    let shape = &records["shape"];
    assert_eq!(shape["error"]["kind"], "bad_job", "{shape}");
    assert_eq!(shape["line"], 1, "{shape}");
    let message = shape["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("$[0][0]") && message.contains("$task"),
        "{shape}"
    );
    let extra = &records["extra"];
    assert_eq!(extra["error"]["kind"], "bad_job", "{extra}");
    assert_message_contains(extra, "\"x\"");
    // An unknown name fails the job before any of its nested tasks start.
    let unknown = &records["unknown"];
    assert_eq!(unknown["error"]["kind"], "unknown_task", "{unknown}");
    assert_message_contains(unknown, "no_such_task");
    assert_eq!(records["ok"]["result"], 16);
}

// ---------------------------------------------------------------------------------------
// Keyword arguments (issue 17)

#[test]
fn run_help_documents_keyword_arguments() {
    assert_documents(
        &procpool(&["run", "--help"], ""),
        &["kwargs", "\"greet\", \"kwargs\"", "Option<..>", "bad_args"],
    );
}

#[test]
fn jobs_and_nested_tasks_take_keyword_arguments() {
    let jobs = concat!(
        r#"{"id": "named", "task": "greet", "kwargs": {"greeting": "Hi", "name": "Ada"}}"#,
        "\n",
        r#"{"id": "optional", "task": "greet", "kwargs": {"name": "Ada"}}"#,
        "\n",
        r#"{"id": "mixed", "task": "add", "args": [40], "kwargs": {"b": 2}}"#,
        "\n",
        // add(a = square(x = 3), b = 1) = 10, with the nested task under a keyword.
        r#"{"id": "nested", "task": "add", "kwargs": {"b": 1, "a": {"$task": "square", "kwargs": {"x": 3}}}}"#,
        "\n",
    );
    let run = run_stdin("2", jobs);
    assert_eq!(run.code, 0, "{run:?}");
    let records = by_id(&run.records());
    for (id, result) in [
        ("named", json!("Hi, Ada!")),
        ("optional", json!("Hello, Ada!")),
        ("mixed", json!(42)),
        ("nested", json!(10)),
    ] {
        let r = &records[id];
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["result"], result, "{r}");
    }
}

#[test]
fn bad_keyword_arguments_fail_their_job_as_bad_args_naming_them() {
    let jobs = concat!(
        r#"{"id": "unknown", "task": "add", "args": [1], "kwargs": {"c": 2}}"#,
        "\n",
        r#"{"id": "both", "task": "add", "args": [1], "kwargs": {"a": 2, "b": 3}}"#,
        "\n",
        r#"{"id": "missing", "task": "greet", "kwargs": {"greeting": "Hi"}}"#,
        "\n",
        // The job's own call is wrong: its nested sleeper never starts.
        r#"{"id": "outer", "task": "add", "kwargs": {"a": {"$task": "sleep_ms", "args": [30000]}, "z": 1}}"#,
        "\n",
        // A nested call is wrong: its sleeping sibling never starts either.
        r#"{"id": "inner", "task": "sum", "args": [[{"$task": "sleep_ms", "args": [30000]}, {"$task": "square", "args": [2], "kwargs": {"x": 2}}]]}"#,
        "\n",
        r#"{"id": "shape", "task": "add", "kwargs": [1, 2]}"#,
        "\n",
        r#"{"id": "fine", "task": "add", "kwargs": {"a": 1, "b": 2}}"#,
        "\n",
    );
    let run = run_stdin("2", jobs);
    assert_eq!(run.code, 1, "{run:?}");
    // Nothing waited for a sleeper.
    assert_quick(&run);
    let records = by_id(&run.records());
    for (id, message) in [
        (
            "unknown",
            "bad arguments: add has no parameter named \"c\" (its parameters: a, b)",
        ),
        (
            "both",
            "bad arguments: argument \"a\" of add given both by position and by keyword",
        ),
        (
            "missing",
            "bad arguments: missing argument \"name\" of greet (name: String)",
        ),
        (
            "outer",
            "bad arguments: add has no parameter named \"z\" (its parameters: a, b)",
        ),
        (
            "inner",
            "bad arguments: argument \"x\" of square given both by position and by keyword",
        ),
    ] {
        let r = &records[id];
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["error"]["kind"], "bad_args", "{r}");
        assert_eq!(r["error"]["message"], message, "{r}");
        assert_eq!(r["attempts"], 0, "{r}");
    }
    assert_eq!(
        records["inner"]["error"]["input"],
        json!({"task": "square", "path": "$[0][1]"})
    );
    let shape = &records["shape"];
    assert_eq!(shape["error"]["kind"], "bad_job", "{shape}");
    assert_message_contains(shape, "\"kwargs\" must be an object");
    assert_eq!(records["fine"]["result"], 3);
}
