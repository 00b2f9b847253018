//! Black-box tests of the `procpool` CLI: real `procpool` processes running real
//! `procpool-demo` workers. Every run goes through [`procpool`], which enforces a deadline
//! and checks afterwards that no worker of that run is still alive.

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
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait for procpool") {
            return status;
        }
        if Instant::now() > end {
            // Our own child, by its handle: never by name.
            let _ = child.kill();
            let _ = child.wait();
            panic!("procpool {what:?} ran past {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Workers carry their supervisor's pid in `PROCPOOL_PARENT_PID`: once the supervisor has
/// exited, no live process may still carry it.
fn assert_no_workers_left(supervisor: u32) {
    // The variable is procpool-proto's ENV_PARENT_PID (not re-exported by the facade).
    let needle = format!("PROCPOOL_PARENT_PID={supervisor}");
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
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
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            left.push(pid);
        }
    }
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

// ---------------------------------------------------------------------------------------
// Help and usage

#[test]
fn run_help_documents_flags_jobs_and_exit_codes() {
    let run = procpool(&["run", "--help"], "");
    assert_eq!(run.code, 0, "{run:?}");
    for needle in [
        "--worker",
        "--jobs",
        "--workers",
        "--out",
        "--start-timeout",
        "--log-level",
        "bad_job",
        "missing or non-string id",
        "EXIT CODES",
    ] {
        assert!(
            run.stdout.contains(needle),
            "{needle:?} missing from:\n{}",
            run.stdout
        );
    }
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
    assert!(
        run.stderr
            .contains("cannot open the job file /nonexistent/jobs.jsonl"),
        "{}",
        run.stderr
    );
}

#[test]
fn out_file_equal_to_job_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 2]}\n";
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
        "chat",
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
    assert_eq!(lines.len(), 1 + 17, "{}", run.stdout);
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
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_file(dir.path(), "mixed.jsonl", MIXED);
    let run = procpool(
        &["run", "--worker", DEMO, "--workers", "2", "--jobs", &jobs],
        "",
    );
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
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_task"),
        "{r}"
    );
    assert_eq!(failed(11, "bad_args")["id"], "types");
    assert_eq!(failed(12, "bad_args")["id"], "count");

    // Lines that never became jobs: malformed, duplicate id, missing id.
    let r = failed(13, "bad_job");
    assert!(r.get("id").is_none(), "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"),
        "{r}"
    );
    let r = failed(14, "bad_job");
    assert_eq!(r["id"], "add");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate id"),
        "{r}"
    );
    let r = failed(15, "bad_job");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing \"id\""),
        "{r}"
    );
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
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_file(dir.path(), "good.jsonl", &text);
    let run = procpool(
        &["run", "--worker", DEMO, "--workers", "2", "--jobs", &jobs],
        "",
    );
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
    let run = procpool(
        &["run", "--worker", DEMO, "--workers", "1", "--jobs", "-"],
        "{\"id\": \"x\", \"task\": \"add\"}\n",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let r = &run.records()[0];
    assert_eq!(r["error"]["kind"], "bad_args", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("got 0"),
        "{r}"
    );

    let run = procpool(
        &["run", "--worker", DEMO, "--workers", "1", "--jobs", "-"],
        "\n\n",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn jobs_from_stdin() {
    let run = procpool(
        &["run", "--worker", DEMO, "--workers", "2", "--jobs", "-"],
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
    let jobs = write_file(
        dir.path(),
        "jobs.jsonl",
        "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 2]}\n",
    );
    let out = dir.path().join("out.jsonl");
    let worker = "/nonexistent/procpool-worker";
    let run = procpool(
        &[
            "run",
            "--worker",
            worker,
            "--jobs",
            &jobs,
            "--out",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert_worker_refused(&run, worker);
    assert!(
        run.stderr.contains("No such file or directory"),
        "{}",
        run.stderr
    );
    assert!(!out.exists(), "the output file must not be created");

    let run = procpool(&["tasks", "--worker", worker], "");
    assert_worker_refused(&run, worker);
}

#[test]
fn non_executable_worker_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_file(
        dir.path(),
        "jobs.jsonl",
        "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 2]}\n",
    );
    let worker = write_file(dir.path(), "not-a-binary", "just text\n");
    let run = procpool(&["run", "--worker", &worker, "--jobs", &jobs], "");
    assert_worker_refused(&run, &worker);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
}

#[test]
fn binary_that_exits_at_once_is_not_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_file(
        dir.path(),
        "jobs.jsonl",
        "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 2]}\n",
    );
    let run = procpool(
        &[
            "run",
            "--worker",
            "/bin/true",
            "--workers",
            "2",
            "--jobs",
            &jobs,
        ],
        "",
    );
    assert_worker_refused(&run, "/bin/true");
    assert!(
        run.stderr.contains("before the handshake"),
        "{}",
        run.stderr
    );
}

#[test]
fn binary_that_never_says_hello_fails_within_the_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = write_file(
        dir.path(),
        "jobs.jsonl",
        "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 2]}\n",
    );
    // `cat` waits on its input (the worker channel) and never sends a handshake.
    let run = procpool(
        &[
            "run",
            "--worker",
            "/bin/cat",
            "--start-timeout",
            "0.3",
            "--jobs",
            &jobs,
        ],
        "",
    );
    assert_worker_refused(&run, "/bin/cat");
    assert!(
        run.stderr.contains("no handshake within 300ms"),
        "{}",
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
}

// ---------------------------------------------------------------------------------------
// run: policies (--timeout, --grace, --retries, --max-rss, ..., per-job overrides)

/// Runs `jobs` (JSON Lines) with `procpool run --worker DEMO FLAGS`.
fn run_jobs_with(flags: &[&str], jobs: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "jobs.jsonl", jobs);
    let mut args = vec!["run", "--worker", DEMO, "--jobs", &path];
    args.extend_from_slice(flags);
    procpool(&args, "")
}

#[test]
fn run_help_documents_the_policy_flags_and_job_fields() {
    let run = procpool(&["run", "--help"], "");
    assert_eq!(run.code, 0, "{run:?}");
    for needle in [
        "--timeout <DURATION>",
        "--grace <DURATION>",
        "--retries <N>",
        "--max-tasks-per-worker <N>",
        "--max-rss <SIZE>",
        "--min-workers <N>",
        "--idle-timeout <DURATION>",
        "200ms",
        "512MiB",
        "timeout_ms",
        "retries",
        "attempts",
        "limit_exceeded",
    ] {
        assert!(
            run.stdout.contains(needle),
            "{needle:?} missing from:\n{}",
            run.stdout
        );
    }
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
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
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
    assert!(
        bomb["error"]["message"]
            .as_str()
            .unwrap()
            .contains("above the 256 MiB limit"),
        "{bomb}"
    );
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
        let run = run_jobs_with(
            flags,
            "{\"id\": \"a\", \"task\": \"add\", \"args\": [1, 2]}\n",
        );
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
    let run = procpool(&["run", "--help"], "");
    assert_eq!(run.code, 0, "{run:?}");
    for needle in ["NESTED TASKS", "$task", "error.input"] {
        assert!(
            run.stdout.contains(needle),
            "{needle:?} missing from:\n{}",
            run.stdout
        );
    }
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
    let run = procpool(
        &["run", "--worker", DEMO, "--workers", "2", "--jobs", "-"],
        jobs,
    );
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
    let run = procpool(
        &["run", "--worker", DEMO, "--workers", "3", "--jobs", "-"],
        jobs,
    );
    assert_eq!(run.code, 1, "{run:?}");
    // The sleepers were killed: a drain waiting for them would take 10 s.
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}",
        run.elapsed
    );
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
    let run = procpool(
        &["run", "--worker", DEMO, "--workers", "2", "--jobs", "-"],
        jobs,
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}",
        run.elapsed
    );
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
    assert!(
        extra["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"x\""),
        "{extra}"
    );
    // An unknown name fails the job before any of its nested tasks start.
    let unknown = &records["unknown"];
    assert_eq!(unknown["error"]["kind"], "unknown_task", "{unknown}");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_task"),
        "{unknown}"
    );
    assert_eq!(records["ok"]["result"], 16);
}
