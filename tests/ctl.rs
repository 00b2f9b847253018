//! `procpool ctl` against live supervisors (issue 15, Ops): real `procpool run`, `serve`
//! and `agent` processes on the demo worker, each with its control socket in a private
//! `XDG_RUNTIME_DIR`, asked by real `procpool ctl` processes (and by a raw client for the
//! protocol's error replies).
// Linux only: the tests read /proc to match worker pids.
#![cfg(target_os = "linux")]

#[path = "support/redis.rs"]
#[expect(
    dead_code,
    reason = "the TLS and restart helpers serve the broker tests"
)]
mod redis_server;
mod support;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use support::{proc_stat, serial_blocking, wait_or_kill, workers_of_supervisor};

const PROCPOOL: &str = env!("CARGO_BIN_EXE_procpool");
const DEMO: &str = env!("CARGO_BIN_EXE_procpool-demo");

/// Generous: the machine is shared and busy; every wait below ends on an event.
const DEADLINE: Duration = Duration::from_secs(60);

/// A supervisor under test, in its own runtime directory; SIGKILLed if still running when
/// dropped (a failed test), with its workers.
struct Supervisor {
    child: Child,
    runtime_dir: PathBuf,
}

impl Supervisor {
    fn start(runtime_dir: &Path, args: &[&str]) -> Supervisor {
        Supervisor::spawn(runtime_dir, args, Stdio::null())
    }

    fn spawn(runtime_dir: &Path, args: &[&str], stderr: Stdio) -> Supervisor {
        let child = Command::new(PROCPOOL)
            .args(args)
            .env("XDG_RUNTIME_DIR", runtime_dir)
            .env_remove("RUST_LOG")
            .env_remove("PROCPOOL_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn procpool");
        Supervisor {
            child,
            runtime_dir: runtime_dir.to_owned(),
        }
    }

    /// `procpool serve ARGS` on a free loopback port, and its address (`127.0.0.1:PORT`,
    /// from its stderr, which is read to the end so that it never blocks on it).
    fn serve(runtime_dir: &Path, args: &[&str]) -> (Supervisor, String) {
        let all = [&["serve", "--listen", "127.0.0.1:0"][..], args].concat();
        let mut serve = Supervisor::spawn(runtime_dir, &all, Stdio::piped());
        let pipe = serve.child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(DEADLINE)
            .expect("procpool serve printed its address");
        (serve, addr)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its default socket: `$XDG_RUNTIME_DIR/procpool/SUBCOMMAND-PID.sock`.
    fn socket(&self, subcommand: &str) -> PathBuf {
        self.runtime_dir
            .join("procpool")
            .join(format!("{subcommand}-{}.sock", self.pid()))
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("signal the supervisor");
    }

    /// Waits for the exit and returns its code; checks that no worker outlived it.
    fn wait(&mut self) -> i32 {
        let status = wait_or_kill(&mut self.child, Instant::now() + DEADLINE, "procpool");
        let left = workers_of_supervisor(self.pid());
        assert!(left.is_empty(), "workers outlived procpool: {left:?}");
        status.code().expect("procpool exited, not killed")
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `procpool ctl ARGS` with the given runtime directory.
fn ctl(runtime_dir: &Path, args: &[&str]) -> Output {
    Command::new(PROCPOOL)
        .arg("ctl")
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run procpool ctl")
}

/// `procpool ctl --json ARGS`: its exit code and reply.
fn ctl_json(runtime_dir: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(runtime_dir, &all);
    let code = out.status.code().expect("ctl exited");
    let text = String::from_utf8_lossy(&out.stdout);
    let reply = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "ctl {args:?} printed no JSON reply ({e}); exit {code}; stdout {text:?}; stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, reply)
}

/// Polls `ctl --control SOCKET --json ARGS` until `ready` holds for its result.
fn wait_for(
    runtime_dir: &Path,
    socket: &Path,
    args: &[&str],
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    let control = socket.to_str().expect("utf-8 path");
    let mut all = vec!["--control", control];
    all.extend_from_slice(args);
    loop {
        if socket.exists() {
            let (code, reply) = ctl_json(runtime_dir, &all);
            if code == 0 && ready(&reply["result"]) {
                return reply["result"].clone();
            }
        }
        assert!(Instant::now() < deadline, "ctl {args:?} never got ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("the records")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

#[test]
fn ctl_inspects_cancels_one_job_and_drains_a_live_batch() {
    let _serial = serial_blocking();
    let dir = tempfile::tempdir().unwrap();
    // j0 would sleep for ten minutes: only a cancel ends it. The others take a second.
    let mut jobs = String::from("{\"id\":\"j0\",\"task\":\"sleep_ms\",\"args\":[600000]}\n");
    for i in 1..40 {
        jobs.push_str(&format!(
            "{{\"id\":\"j{i}\",\"task\":\"sleep_ms\",\"args\":[1000]}}\n"
        ));
    }
    let job_file = dir.path().join("jobs.jsonl");
    std::fs::write(&job_file, jobs).unwrap();
    let out = dir.path().join("out.jsonl");
    let mut run = Supervisor::start(
        dir.path(),
        &[
            "run",
            "--worker",
            DEMO,
            "--workers",
            "2",
            "--jobs",
            job_file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ],
    );
    let socket = run.socket("run");
    let status = wait_for(dir.path(), &socket, &["status"], |s| {
        s["jobs"]["running"] == 2
    });
    assert_eq!(status["supervisor"], "run");
    assert_eq!(status["pid"], run.pid());
    assert_eq!(status["workers"]["busy"], 2, "{status}");

    // The socket: a socket file, 0600.
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Workers: the live children of this run, with their memory.
    let workers = wait_for(dir.path(), &socket, &["workers"], |w| {
        w["workers"].as_array().is_some_and(|w| w.len() == 2)
    });
    let mut pids = HashSet::new();
    for w in workers["workers"].as_array().unwrap() {
        let pid = w["pid"].as_u64().unwrap() as u32;
        let stat = proc_stat(pid).expect("a live worker");
        assert_eq!(
            stat.ppid,
            run.pid(),
            "worker {pid} is not a child of the run"
        );
        assert!(w["rss_bytes"].as_u64().unwrap() > 0, "{w}");
        pids.insert(pid);
    }

    // Jobs: j0 runs on one of them; queued jobs wait in the window.
    let (code, jobs) = ctl_json(dir.path(), &["jobs"]);
    assert_eq!(code, 0);
    let jobs = jobs["result"]["jobs"].as_array().unwrap().clone();
    let j0 = jobs.iter().find(|j| j["id"] == "j0").expect("j0 is live");
    assert_eq!(j0["status"], "running", "{jobs:?}");
    assert!(pids.contains(&(j0["worker_pid"].as_u64().unwrap() as u32)));
    assert!(j0["elapsed_ms"].is_u64());
    assert!(jobs.iter().any(|j| j["status"] == "queued"), "{jobs:?}");

    // The text forms, for people.
    let text = String::from_utf8(ctl(dir.path(), &["jobs"]).stdout).unwrap();
    assert!(
        text.starts_with("ID") && text.contains("j0") && text.contains("running"),
        "{text}"
    );
    let text = String::from_utf8(ctl(dir.path(), &["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!("procpool run (pid {})", run.pid())),
        "{text}"
    );

    // Cancel j0: its worker is killed, its record says cancelled.
    let (code, reply) = ctl_json(dir.path(), &["cancel", "j0"]);
    assert_eq!(code, 0, "{reply}");
    assert_eq!(reply["result"]["was"], "running");
    let (code, reply) = ctl_json(dir.path(), &["cancel", "no-such-job"]);
    assert_eq!(code, 1);
    assert_eq!(reply["error"]["kind"], "unknown_job");
    wait_for(dir.path(), &socket, &["status"], |s| {
        s["jobs"]["cancelled"] == 1
    });

    // Drain: the dispatched jobs finish, the rest never run; exit as after a SIGTERM.
    let (code, reply) = ctl_json(dir.path(), &["drain"]);
    assert_eq!(code, 0, "{reply}");
    assert_eq!(run.wait(), 143);
    assert!(!socket.exists(), "the socket outlived the run");

    let records = records(&out);
    let j0 = records
        .iter()
        .find(|r| r["id"] == "j0")
        .expect("j0's record");
    assert_eq!(j0["status"], "cancelled", "{j0}");
    assert_eq!(j0["error"]["message"], "cancelled by procpool ctl cancel");
    for r in records.iter().filter(|r| r["id"] != "j0") {
        assert_eq!(r["status"], "completed", "{r}");
    }
    assert!(
        records.len() < 40 && records.len() > 2,
        "a drain runs the dispatched jobs only: {} records",
        records.len()
    );
}

#[test]
fn sockets_are_found_stale_ones_replaced_live_ones_refused_and_bad_requests_answered() {
    let _serial = serial_blocking();
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("procpool");

    // No supervisor: a clear error, exit 2.
    std::fs::create_dir(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = ctl(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no live procpool"));

    // A stale socket (its listener gone without removing it) is skipped by the search
    // and replaced by a run given its path.
    let stale = sockets.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let out = ctl(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(2), "a dead socket is no supervisor");
    // One job of ten minutes: the run lives until a signal stops it.
    let job_file = dir.path().join("jobs.jsonl");
    std::fs::write(
        &job_file,
        "{\"id\":\"long\",\"task\":\"sleep_ms\",\"args\":[600000]}\n",
    )
    .unwrap();
    let args = [
        "run",
        "--worker",
        DEMO,
        "--workers",
        "1",
        "--jobs",
        job_file.to_str().unwrap(),
        "--quiet",
        "--control",
        stale.to_str().unwrap(),
    ];
    let mut first = Supervisor::start(dir.path(), &args);
    // The only live one: found without --control.
    let deadline = Instant::now() + DEADLINE;
    while ctl(dir.path(), &["status"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the run never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, status) = ctl_json(dir.path(), &["status"]);
    let status = &status["result"];
    assert_eq!(status["pid"], first.pid());

    // A second run on the same path is refused while the first lives.
    let out = Command::new(PROCPOOL)
        .args(args)
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another live process listens"), "{stderr}");

    // Two live ones: ctl lists them and asks for --control.
    let mut second = Supervisor::start(
        dir.path(),
        &[
            "run",
            "--worker",
            DEMO,
            "--workers",
            "1",
            "--jobs",
            "-",
            "--quiet",
        ],
    );
    let second_socket = second.socket("run");
    wait_for(dir.path(), &second_socket, &["status"], |_| true);
    let out = ctl(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 live supervisors")
            && stderr.contains(stale.to_str().unwrap())
            && stderr.contains(second_socket.to_str().unwrap()),
        "{stderr}"
    );

    // Bad requests get error replies; the supervisor answers on.
    let mut conn = UnixStream::connect(&stale).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut ask = |line: &[u8]| {
        conn.write_all(line).unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        serde_json::from_str::<Value>(&reply).unwrap()
    };
    assert_eq!(ask(b"not json\n")["error"]["kind"], "bad_request");
    assert_eq!(
        ask(b"{\"v\":1,\"cmd\":\"reboot\"}\n")["error"]["kind"],
        "bad_request"
    );
    assert_eq!(
        ask(b"{\"v\":1,\"cmd\":\"cancel\"}\n")["error"]["kind"],
        "bad_request"
    );
    assert_eq!(
        ask(b"{\"v\":9,\"cmd\":\"status\",\"since\":5}\n")["error"]["kind"],
        "unsupported_version"
    );
    let ok = ask(b"{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(ok["ok"], true, "{ok}");
    // A request past the bound is refused without being read whole, and the
    // connection closed.
    let reply = ask(&vec![b'x'; 200 << 10]);
    assert_eq!(reply["error"]["kind"], "too_large");
    let (code, _) = ctl_json(
        dir.path(),
        &["--control", stale.to_str().unwrap(), "status"],
    );
    assert_eq!(code, 0, "the supervisor answers after bad requests");

    // SIGTERM: the socket goes with the run; stdin closed: the other ends with none.
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait(), 143);
    assert!(!stale.exists(), "the socket outlived a SIGTERM");
    drop(second.child.stdin.take());
    assert_eq!(second.wait(), 0);
    assert!(!second_socket.exists());
}

#[test]
fn jobs_shows_the_worker_of_the_current_attempt_after_a_retry() {
    let _serial = serial_blocking();
    let dir = tempfile::tempdir().unwrap();
    let job_file = dir.path().join("jobs.jsonl");
    std::fs::write(
        &job_file,
        "{\"id\":\"long\",\"task\":\"sleep_ms\",\"args\":[600000]}\n",
    )
    .unwrap();
    let mut run = Supervisor::start(
        dir.path(),
        &[
            "run",
            "--worker",
            DEMO,
            "--workers",
            "1",
            "--retries",
            "1",
            "--jobs",
            job_file.to_str().unwrap(),
            "--quiet",
        ],
    );
    let socket = run.socket("run");
    let jobs = wait_for(dir.path(), &socket, &["jobs"], |j| {
        j["jobs"][0]["status"] == "running"
    });
    let first = jobs["jobs"][0]["worker_pid"].as_u64().unwrap() as u32;
    // The first attempt crashes (its worker killed from outside); the retry runs on the
    // replacement worker.
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let workers = wait_for(dir.path(), &socket, &["workers"], |w| {
        w["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 1 && w[0]["pid"] != first)
    });
    let second = workers["workers"][0]["pid"].as_u64().unwrap() as u32;
    let jobs = wait_for(dir.path(), &socket, &["jobs"], |j| {
        j["jobs"][0]["worker_pid"] == second
    });
    assert_eq!(jobs["jobs"][0]["attempt"], 2, "{jobs}");
    assert_eq!(jobs["jobs"][0]["status"], "running", "{jobs}");
    run.signal(Signal::SIGTERM);
    assert_eq!(run.wait(), 143);
}

/// A WebSocket on `/v1/events?channel=CHANNEL` of the server at `addr`.
fn events(addr: &str, channel: &str) -> tungstenite::WebSocket<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect(addr).expect("connect to procpool serve");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let url = format!("ws://{addr}/v1/events?channel={channel}");
    let (socket, _) = tungstenite::client(url, stream).expect("the WebSocket handshake");
    socket
}

/// The next events until one of `task` is terminal; returns that one.
fn terminal_event(socket: &mut tungstenite::WebSocket<std::net::TcpStream>, task: &str) -> Value {
    loop {
        let message = socket.read().expect("an event before the deadline");
        let tungstenite::Message::Text(text) = message else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).expect("a JSON event");
        let terminal =
            ["completed", "failed", "cancelled"].contains(&event["type"].as_str().unwrap_or(""));
        if event["task_id"] == task && terminal {
            return event;
        }
    }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(DEADLINE))
        .build()
        .into()
}

/// `POST /v1/tasks BODY`: the task id, or the status code of a refusal (0: no
/// connection).
fn submit(http: &ureq::Agent, addr: &str, body: Value) -> Result<String, u16> {
    let answer = http
        .post(format!("http://{addr}/v1/tasks"))
        .header("content-type", "application/json")
        .send(body.to_string());
    match answer {
        Ok(mut resp) if resp.status() == 202 => {
            let reply: Value =
                serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
            Ok(reply["task_id"].as_str().unwrap().to_owned())
        }
        Ok(resp) => Err(resp.status().as_u16()),
        Err(_) => Err(0),
    }
}

#[test]
fn serve_lists_cancels_one_task_and_drains_on_request() {
    let _serial = serial_blocking();
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, addr) = Supervisor::serve(dir.path(), &["--worker", DEMO, "--workers", "2"]);
    let socket = serve.socket("serve");
    let http = http();
    let mut ws = events(&addr, "c");
    // `long` ends only by a cancel; `short` outlasts the steps up to the drain.
    let long = submit(
        &http,
        &addr,
        json!({"task": "sleep_ms", "args": [600_000], "channel": "c"}),
    )
    .unwrap();
    let short = submit(
        &http,
        &addr,
        json!({"task": "sleep_ms", "args": [10_000], "channel": "c"}),
    )
    .unwrap();

    let jobs = wait_for(dir.path(), &socket, &["jobs"], |j| {
        j["jobs"].as_array().is_some_and(|jobs| {
            jobs.len() == 2
                && jobs
                    .iter()
                    .all(|j| j["status"] == "running" && j["worker_pid"].is_u64())
        })
    });
    let jobs = jobs["jobs"].as_array().unwrap();
    let job = |id: &str| jobs.iter().find(|j| j["id"] == id).expect("listed").clone();
    assert_eq!(job(&long)["task"], "sleep_ms");
    assert!(job(&long)["elapsed_ms"].is_u64());
    let long_pid = job(&long)["worker_pid"].as_u64().unwrap() as u32;
    assert_eq!(
        proc_stat(long_pid).expect("a live worker").ppid,
        serve.pid()
    );
    let (_, workers) = ctl_json(dir.path(), &["workers"]);
    let on_long = workers["result"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == long_pid)
        .expect("its worker is listed")
        .clone();
    assert_eq!(on_long["job"], long.as_str());
    let text = String::from_utf8(ctl(dir.path(), &["jobs"]).stdout).unwrap();
    assert!(text.starts_with("ID") && text.contains(&long), "{text}");

    // Cancel `long`: as a DELETE, its worker killed, its status and its subscribers say so.
    let (code, reply) = ctl_json(dir.path(), &["cancel", &long]);
    assert_eq!(code, 0, "{reply}");
    assert_eq!(reply["result"]["was"], "running");
    assert_eq!(terminal_event(&mut ws, &long)["type"], "cancelled");
    let mut resp = http
        .get(format!("http://{addr}/v1/tasks/{long}"))
        .call()
        .unwrap();
    let task: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(task["status"], "cancelled", "{task}");
    assert!(
        wait_until_gone(long_pid),
        "the cancelled task's worker {long_pid} lives on"
    );
    let (code, reply) = ctl_json(dir.path(), &["cancel", &long]);
    assert_eq!(
        (code, &reply["error"]["kind"]),
        (1, &json!("unknown_job")),
        "{reply}"
    );
    let (code, reply) = ctl_json(dir.path(), &["cancel", "not-a-task-id"]);
    assert_eq!(
        (code, &reply["error"]["kind"]),
        (1, &json!("unknown_job")),
        "{reply}"
    );

    // Drain: submissions are refused from then on, `short` finishes, exit as on SIGTERM.
    let (code, reply) = ctl_json(dir.path(), &["drain"]);
    assert_eq!(code, 0, "{reply}");
    assert_eq!(reply["result"]["unfinished"], 1, "{reply}");
    let deadline = Instant::now() + DEADLINE;
    // Until the server saw the drain, a quick probe may still be accepted.
    while submit(&http, &addr, json!({"task": "add", "args": [1, 2]})).is_ok() {
        assert!(
            Instant::now() < deadline,
            "submissions still accepted after the drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = terminal_event(&mut ws, &short);
    assert_eq!(
        (&done["type"], &done["result"]),
        (&json!("completed"), &json!(10_000)),
        "{done}"
    );
    assert_eq!(serve.wait(), 143);
    assert!(!socket.exists());
}

/// Polls until `pid` is gone (reaped by its parent).
fn wait_until_gone(pid: u32) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while proc_stat(pid).is_some() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn agent_lists_and_cancels_a_broker_task_for_good_then_drains() {
    let _serial = serial_blocking();
    let redis = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    let mut agent = Supervisor::start(
        dir.path(),
        &[
            "agent",
            "--broker",
            &url,
            "--worker",
            DEMO,
            "--workers",
            "1",
        ],
    );
    let agent_socket = agent.socket("agent");
    let status = wait_for(dir.path(), &agent_socket, &["status"], |s| {
        s["workers"]["idle"] == 1
    });
    assert_eq!(status["supervisor"], "agent");
    assert_eq!(status["draining"], false);

    // A batch submits one task of ten minutes through the broker.
    let job_file = dir.path().join("jobs.jsonl");
    std::fs::write(
        &job_file,
        "{\"id\":\"long\",\"task\":\"sleep_ms\",\"args\":[600000]}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let mut run = Supervisor::start(
        dir.path(),
        &[
            "run",
            "--broker",
            &url,
            "--jobs",
            job_file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ],
    );
    let jobs = wait_for(dir.path(), &agent_socket, &["jobs"], |j| {
        j["jobs"][0]["status"] == "running"
    });
    let task = jobs["jobs"][0].clone();
    assert_eq!(
        (&task["task"], &task["attempt"]),
        (&json!("sleep_ms"), &json!(1)),
        "{task}"
    );
    assert!(task["elapsed_ms"].is_u64(), "{task}");
    let pid = task["worker_pid"].as_u64().unwrap() as u32;
    assert_eq!(proc_stat(pid).expect("a live worker").ppid, agent.pid());
    let id = task["id"].as_str().unwrap();

    let control = agent_socket.to_str().unwrap();
    let (code, reply) = ctl_json(dir.path(), &["--control", control, "cancel", id]);
    assert_eq!(code, 0, "{reply}");
    assert_eq!(reply["result"]["was"], "running");
    // The submitter sees `cancelled` (not a hand-back): its batch ends with that record.
    assert_eq!(run.wait(), 1);
    let records = records(&out);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], "cancelled", "{records:?}");
    assert!(
        wait_until_gone(pid),
        "the cancelled task's worker {pid} lives on"
    );
    // For good: the broker's durable cancel flag is set, though the batch still watched
    // the task (a submitter's cancel would only have let go of it then).
    let flag = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "HGET",
            &format!("{{procpool}}:t:{id}"),
            "cancel",
        ])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&flag.stdout).trim(), "1");
    let (code, reply) = ctl_json(dir.path(), &["--control", control, "cancel", id]);
    assert_eq!(
        (code, &reply["error"]["kind"]),
        (1, &json!("unknown_job")),
        "{reply}"
    );
    let idle = wait_for(dir.path(), &agent_socket, &["jobs"], |j| {
        j["jobs"] == json!([])
    });
    assert_eq!(idle["jobs"], json!([]));

    let (code, reply) = ctl_json(dir.path(), &["--control", control, "drain"]);
    assert_eq!(code, 0, "{reply}");
    assert_eq!(agent.wait(), 143);
    assert!(!agent_socket.exists());
}
