//! Black-box tests of `procpool serve`: the real `procpool` binary serving real
//! `procpool-demo` workers on a free loopback port, driven with a real HTTP client (ureq),
//! a real WebSocket client (tungstenite) and a Prometheus text parser. Every server is
//! started through [`Server::start`], which enforces deadlines, and is stopped by its own
//! pid: with a signal when the test is about shutdown, else by the guard's kill.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest as _;
use tungstenite::{Message, WebSocket};

const PROCPOOL: &str = env!("CARGO_BIN_EXE_procpool");
const DEMO: &str = env!("CARGO_BIN_EXE_procpool-demo");

/// Longest a server may take to start, a request to be answered, or a wait to end.
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Helpers

/// A running `procpool serve`, killed (by pid) when dropped unless it was stopped.
struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    base: String,
    /// `127.0.0.1:PORT`
    addr: String,
    token: Option<String>,
    stderr: Arc<Mutex<String>>,
    http: ureq::Agent,
}

/// What an HTTP call answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// `error.kind` of an error answer.
    fn kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.kind in {:?}", self.text))
            .to_owned()
    }
}

impl Server {
    /// `procpool serve --worker procpool-demo --workers 2 --listen 127.0.0.1:0 ARGS`,
    /// with `env` set; returns once it printed the address it listens on.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_worker(DEMO, args, env)
    }

    fn start_worker(worker: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(PROCPOOL);
        cmd.args(["serve", "--worker", worker, "--workers", "2"])
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("PROCPOOL_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn procpool serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        // Reads stderr to the end, so a chatty server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "procpool serve printed no address in time; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let token = env
            .iter()
            .find(|(k, _)| *k == "PROCPOOL_TOKEN")
            .map(|(_, v)| v.to_string());
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(DEADLINE))
            .build()
            .into();
        Server {
            child: Some(child),
            base: format!("http://{addr}"),
            addr,
            token,
            stderr,
            http,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn answer(mut resp: ureq::http::Response<ureq::Body>) -> Answer {
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Answer {
            status: resp.status().as_u16(),
            content_type,
            text: resp.body_mut().read_to_string().expect("a readable body"),
        }
    }

    /// A request with the server's token, if it has one.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.call_as(self.token.as_deref(), method, path, body)
    }

    fn call_as(&self, token: Option<&str>, method: &str, path: &str, body: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let resp = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.http.get(&url)
                } else {
                    self.http.delete(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            "POST" => {
                let mut req = self
                    .http
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(body.unwrap_or(""))
            }
            other => panic!("no helper for {other}"),
        };
        Self::answer(resp.unwrap_or_else(|e| panic!("{method} {path}: {e}")))
    }

    /// `DELETE /v1/tasks/{id}`.
    fn cancel(&self, id: &str) -> Answer {
        self.call("DELETE", &format!("/v1/tasks/{id}"), None)
    }

    /// Asserts that the `/metrics` text holds `line`.
    #[track_caller]
    fn assert_metric(&self, line: &str) {
        let metrics = self.get("/metrics").text;
        assert!(metrics.contains(line), "{line:?} not in:\n{metrics}");
    }

    fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }

    /// Submits `body` and returns the task id; the answer must be 202.
    fn submit(&self, body: Value) -> String {
        let a = self.call("POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!(a.status, 202, "{body} -> {a:?}");
        a.json()["task_id"].as_str().expect("a task_id").to_owned()
    }

    fn task(&self, id: &str) -> Value {
        let a = self.get(&format!("/v1/tasks/{id}"));
        assert_eq!(a.status, 200, "{a:?}");
        a.json()
    }

    /// Polls task `id` until `done` holds for it; fails the test after [`DEADLINE`].
    fn wait_task(&self, id: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let t = self.task(id);
            if done(&t) {
                return t;
            }
            assert!(Instant::now() < end, "task never got there: {t}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls task `id` until it ended.
    fn finished(&self, id: &str) -> Value {
        self.wait_task(id, |t| {
            ["completed", "failed", "cancelled"].contains(&t["status"].as_str().unwrap())
        })
    }

    /// Polls task `id` until a worker runs it, and returns that worker's pid.
    fn running_pid(&self, id: &str) -> u32 {
        let t = self.wait_task(id, |t| {
            t["status"] == "running" && !t["worker_pids"].as_array().unwrap().is_empty()
        });
        t["worker_pids"][0].as_u64().unwrap() as u32
    }

    /// A WebSocket on `/v1/events` (for `channel`, or every channel), with the token.
    fn events(&self, channel: Option<&str>) -> Events {
        self.events_as(self.token.as_deref(), channel)
            .expect("the WebSocket handshake succeeds")
    }

    fn events_as(
        &self,
        token: Option<&str>,
        channel: Option<&str>,
    ) -> Result<Events, tungstenite::Error> {
        let url = match channel {
            Some(c) => format!("ws://{}/v1/events?channel={c}", self.addr),
            None => format!("ws://{}/v1/events", self.addr),
        };
        let mut req = url.into_client_request()?;
        if let Some(t) = token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        let stream = TcpStream::connect(&self.addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let (socket, _) = tungstenite::client(req, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake"),
        })?;
        Ok(Events { socket })
    }

    /// Sends `signal` to the server and waits for it to exit; returns its status.
    fn signal(&mut self, signal: Signal) -> ExitStatus {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal the server");
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                self.child = None;
                return status;
            }
            if Instant::now() > end {
                panic!("procpool serve did not exit in time");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by its handle: never by name. Its workers die with it
            // (their parent-death signal).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A WebSocket on `/v1/events`.
struct Events {
    socket: WebSocket<TcpStream>,
}

impl Events {
    /// The next event; fails the test after [`DEADLINE`].
    fn next(&mut self) -> Value {
        loop {
            match self.socket.read().expect("an event in time") {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON event"),
                Message::Close(frame) => panic!("the stream closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Events up to and including the first terminal one of `task`.
    fn until_terminal(&mut self, task: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let ev = self.next();
            let done = ev["task_id"] == task
                && ["completed", "failed", "cancelled"].contains(&ev["type"].as_str().unwrap());
            seen.push(ev);
            if done {
                return seen;
            }
        }
    }

    /// Reads until the server closes the stream; returns the events read before.
    fn until_closed(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => seen.push(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return seen,
                Ok(_) => {}
            }
        }
    }
}

/// Whether `pid` no longer exists at all (killed and reaped).
fn is_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until every pid in `pids` is gone; fails the test after [`DEADLINE`].
#[track_caller]
fn assert_gone(pids: &[u32]) {
    let end = Instant::now() + DEADLINE;
    while !pids.iter().all(|p| is_gone(*p)) {
        assert!(Instant::now() < end, "worker processes left: {pids:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Pids of the server's live children (its workers).
fn children_of(pid: u32) -> Vec<u32> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut pids: Vec<u32> = text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    // Workers are spawned from the pool's supervisor thread: its children count too.
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in dir.flatten() {
            let path = task.path().join("children");
            if let Ok(text) = std::fs::read_to_string(path) {
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The server's worker pids once all `n` are up.
fn workers_of(server: &Server, n: usize) -> Vec<u32> {
    let end = Instant::now() + DEADLINE;
    loop {
        let pids = children_of(server.pid());
        if pids.len() == n {
            return pids;
        }
        assert!(Instant::now() < end, "never {n} workers: {pids:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// Submit and poll

/// A task is accepted with 202 and a task id, read as pending or running, then completed
/// with its result, again and again; nested `$task` arguments run first; failures carry
/// the error kinds of `procpool run` records.
#[test]
fn submit_then_poll_until_completed_nested_tasks_and_failures() {
    let server = Server::start(&[], &[]);
    let id = server.submit(json!({"task": "add", "args": [1, 2]}));
    let t = server.finished(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], 3);
    assert_eq!(t["error"], Value::Null);
    assert_eq!(t["task"], "add");
    // Readable again: a client that retries never loses a result.
    assert_eq!(server.task(&id), t);

    let id = server.submit(json!({"task": "sum", "args": [[
        {"$task": "square", "args": [2]},
        {"$task": "square", "args": [{"$task": "add", "args": [1, 2]}]},
    ]]}));
    let t = server.finished(&id);
    assert_eq!(
        (t["status"].clone(), t["result"].clone()),
        (json!("completed"), json!(13)),
        "{t}"
    );

    let id = server.submit(json!({"task": "fail", "args": ["the input was wrong"]}));
    let t = server.finished(&id);
    assert_eq!(t["status"], "failed");
    assert_eq!(t["error"]["kind"], "user_error");
    assert_eq!(t["error"]["message"], "the input was wrong");

    let id = server.submit(
        json!({"task": "sum", "args": [[{"$task": "square", "args": [1]},
        {"$task": "segfault"}]]}),
    );
    let t = server.finished(&id);
    assert_eq!(t["status"], "failed");
    assert_eq!(t["error"]["kind"], "crashed");
    assert_eq!(t["error"]["signal"], "SIGSEGV");
    assert_eq!(
        t["error"]["input"],
        json!({"task": "segfault", "path": "$[0][1]"})
    );

    let id = server.submit(json!({"task": "sleep_ms", "args": [5000], "timeout_ms": 100}));
    let t = server.finished(&id);
    assert_eq!(t["error"]["kind"], "timed_out", "{t}");
    assert_eq!(t["error"]["timeout_ms"], 100.0);

    // A task with arguments of the wrong type fails like in `procpool run`.
    let id = server.submit(json!({"task": "add", "args": ["one", 2]}));
    assert_eq!(server.finished(&id)["error"]["kind"], "bad_args");
}

/// Unknown ids are 404; a result is 410 once its TTL passed.
#[test]
fn unknown_ids_are_404_and_expired_results_410() {
    let server = Server::start(&["--result-ttl", "300ms"], &[]);
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/tasks/{unknown}"),
        "/v1/tasks/not-a-uuid".into(),
    ] {
        let a = server.get(&path);
        assert_eq!((a.status, a.kind()), (404, "not_found".into()), "{a:?}");
        let a = server.call("DELETE", &path, None);
        assert_eq!(a.status, 404, "{a:?}");
    }
    assert_eq!(server.get("/v2/nothing").status, 404);

    // The task ends after its submission, so its result cannot expire before this + TTL.
    let submitted = Instant::now();
    let id = server.submit(json!({"task": "add", "args": [2, 2]}));
    let t = server.finished(&id);
    assert_eq!(t["result"], 4);
    let end = Instant::now() + DEADLINE;
    let gone = loop {
        let a = server.get(&format!("/v1/tasks/{id}"));
        if a.status != 200 {
            break a;
        }
        assert!(Instant::now() < end, "never expired");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        submitted.elapsed() >= Duration::from_millis(300),
        "expired early"
    );
    assert_eq!(
        (gone.status, gone.kind()),
        (410, "expired".into()),
        "{gone:?}"
    );
    assert_eq!(server.cancel(&id).status, 410);
}

// ---------------------------------------------------------------------------------------
// Cancel

/// DELETE kills the worker running the task (its pid is gone when the answer comes),
/// reports it cancelled, and a second DELETE is 409; a finished task is 409 too.
#[test]
fn cancel_kills_the_worker_and_a_finished_task_is_409() {
    let server = Server::start(&[], &[]);
    let id = server.submit(json!({"task": "sleep_ms", "args": [30_000]}));
    let pid = server.running_pid(&id);
    let a = server.cancel(&id);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["status"], "cancelled");
    assert_eq!(a.json()["error"]["kind"], "cancelled");
    assert!(is_gone(pid), "worker {pid} outlived the cancel");
    assert_eq!(server.task(&id)["status"], "cancelled");

    let again = server.cancel(&id);
    assert_eq!(
        (again.status, again.kind()),
        (409, "already_finished".into())
    );
    assert_eq!(again.json()["task"]["status"], "cancelled");

    let done = server.submit(json!({"task": "add", "args": [1, 1]}));
    server.finished(&done);
    let a = server.cancel(&done);
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.json()["task"]["status"], "completed");

    // A task still queued is cancelled without ever running.
    let busy: Vec<String> = (0..2)
        .map(|_| server.submit(json!({"task": "sleep_ms", "args": [30_000]})))
        .collect();
    let queued = server.submit(json!({"task": "add", "args": [1, 1]}));
    assert_eq!(server.task(&queued)["status"], "pending");
    let a = server.cancel(&queued);
    assert_eq!(
        (a.status, a.json()["status"].clone()),
        (200, json!("cancelled"))
    );
    for id in busy {
        assert_eq!(server.cancel(&id).status, 200);
    }
}

// ---------------------------------------------------------------------------------------
// Cache keys

/// A second submission with the cache key of a running task gets its id and runs
/// nothing: one worker busy, one idle.
#[test]
fn same_cache_key_while_running_is_the_same_task_run_once() {
    let server = Server::start(&[], &[]);
    // Long enough to be running when `/healthz` is read, however loaded the machine.
    let body = json!({"task": "sleep_ms", "args": [30_000], "cache_key": "k", "channel": "a"});
    let first = server
        .call("POST", "/v1/tasks", Some(&body.to_string()))
        .json();
    let mut other = body.clone();
    other["channel"] = json!("b");
    let second = server
        .call("POST", "/v1/tasks", Some(&other.to_string()))
        .json();
    assert_eq!(first["task_id"], second["task_id"]);
    assert_eq!(
        (
            first["deduplicated"].clone(),
            second["deduplicated"].clone()
        ),
        (json!(false), json!(true))
    );
    let id = first["task_id"].as_str().unwrap();
    server.running_pid(id);
    let health = server.get("/healthz").json();
    assert_eq!(health["workers"]["busy"], 1, "ran once: {health}");
    assert_eq!(health["queued"], 0, "{health}");
    assert_eq!(server.cancel(id).json()["status"], "cancelled");

    // Another key runs on its own.
    let a = server.submit(json!({"task": "add", "args": [1, 2], "cache_key": "x"}));
    let b = server.submit(json!({"task": "add", "args": [1, 2], "cache_key": "y"}));
    assert_ne!(a, b);
    server.assert_metric("procpool_tasks_deduplicated_total 1\n");
}

// ---------------------------------------------------------------------------------------
// Events

/// A WebSocket client of a channel sees `started`, the progress reports in order, then
/// the terminal event with the result; the channel's failures and cancels reach it too.
/// A client of every channel sees the same; a client of another channel sees none of it.
#[test]
fn events_progress_then_the_terminal_event_per_channel() {
    let server = Server::start(&[], &[]);
    let mut on_c = server.events(Some("c"));
    let mut all = server.events(None);
    let mut on_other = server.events(Some("other"));

    let id = server.submit(json!({"task": "progress", "args": [4, 5], "channel": "c"}));
    let got = on_c.until_terminal(&id);
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "started",
            "progress",
            "progress",
            "progress",
            "progress",
            "completed"
        ],
        "{got:#?}"
    );
    assert_eq!(got[0]["task"], "progress");
    let fractions: Vec<f64> = got[1..5]
        .iter()
        .map(|e| e["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(fractions, [0.25, 0.5, 0.75, 1.0], "{got:#?}");
    assert!(got[1]["message"].is_string(), "{got:#?}");
    assert!(got.iter().all(|e| e["task_id"] == id));
    assert_eq!(got[5]["result"], Value::Null);
    // The completed event went out after the table had the outcome.
    let t = server.task(&id);
    assert_eq!(t["status"], "completed");
    assert_eq!(t["progress"], 1.0);
    assert_eq!(all.until_terminal(&id), got);

    let failing = server.submit(json!({"task": "panic", "args": ["boom"], "channel": "c"}));
    let got = on_c.until_terminal(&failing);
    let last = got.last().unwrap();
    assert_eq!(last["type"], "failed");
    assert_eq!(last["error"]["kind"], "panicked");
    assert_eq!(last["error"]["message"], "boom");

    let sleeper = server.submit(json!({"task": "sleep_ms", "args": [30_000], "channel": "c"}));
    server.running_pid(&sleeper);
    assert_eq!(server.cancel(&sleeper).status, 200);
    let got = on_c.until_terminal(&sleeper);
    assert_eq!(got.first().unwrap()["type"], "started");
    assert_eq!(got.last().unwrap()["type"], "cancelled");

    // The other channel got nothing: the first thing it sees is its own task.
    let mine = server.submit(json!({"task": "add", "args": [1, 2], "channel": "other"}));
    let got = on_other.until_terminal(&mine);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[1]["result"], 3);
}

/// Issue 14, item 13: the events waiting for a slow WebSocket client are bounded in
/// bytes (`--client-buffer`), not by a count of 4096: a client that reads nothing while
/// 16 MiB of messages are published loses the oldest and is told how many.
#[test]
fn issue14_serve_slow_client_events_are_bounded_in_bytes() {
    let server = Server::start(&["--client-buffer", "1MiB"], &[]);
    let mut slow = server.events(Some("c"));
    // 64 messages of 256 KiB; the client reads none of them until the task ended.
    let id =
        server.submit(json!({"task": "messages", "args": [64, 262_144, 0, 0], "channel": "c"}));
    assert_eq!(server.finished(&id)["result"], 64);
    let got = slow.until_terminal(&id);
    let messages = got.iter().filter(|e| e["type"] == "message").count();
    let missed: u64 = got
        .iter()
        .filter(|e| e["type"] == "lagged")
        .map(|e| e["missed"].as_u64().unwrap())
        .sum();
    assert!(missed > 0, "no event was dropped: {messages} messages read");
    assert_eq!(
        messages as u64 + missed,
        64,
        "{messages} read, {missed} missed"
    );
    assert_eq!(got.last().unwrap()["type"], "completed");
}

/// Issue 14, item 13: the results kept for readers are bounded in bytes
/// (`--max-results-bytes`), not by a count of 100 000: past the budget the oldest result
/// expires early (410) and the newest stays readable.
#[test]
fn issue14_serve_results_are_bounded_in_bytes() {
    let server = Server::start(&["--max-results-bytes", "1MiB"], &[]);
    // 200 000 bytes as a JSON array of numbers: about 690 KB each.
    let first = server.submit(json!({"task": "bytes", "args": [200_000]}));
    assert_eq!(server.finished(&first)["status"], "completed");
    let second = server.submit(json!({"task": "bytes", "args": [200_000]}));
    assert_eq!(server.finished(&second)["status"], "completed");
    let a = server.get(&format!("/v1/tasks/{first}"));
    assert_eq!(
        (a.status, a.kind()),
        (410, "expired".into()),
        "{}",
        a.status
    );
    let kept = server.task(&second);
    assert_eq!(kept["result"].as_array().map(Vec::len), Some(200_000));
}

// ---------------------------------------------------------------------------------------
// Token and validation

/// With a token every `/v1` call, the WebSocket included, needs it (401 otherwise);
/// `/healthz` and `/metrics` do not.
#[test]
fn a_token_is_required_on_every_v1_route() {
    let server = Server::start(&[], &[("PROCPOOL_TOKEN", "s3cret-token")]);
    let body = json!({"task": "add", "args": [1, 2]}).to_string();
    for token in [
        None,
        Some("wrong"),
        Some("s3cret-tokeN"),
        Some("s3cret-token-and-more"),
    ] {
        let a = server.call_as(token, "POST", "/v1/tasks", Some(&body));
        assert_eq!(
            (a.status, a.kind()),
            (401, "unauthorized".into()),
            "{token:?}: {a:?}"
        );
        let a = server.call_as(
            token,
            "GET",
            &format!("/v1/tasks/{}", uuid::Uuid::new_v4()),
            None,
        );
        assert_eq!(a.status, 401);
        match server.events_as(token, Some("c")) {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            Err(other) => panic!("expected a 401 handshake, got {other:?}"),
            Ok(_) => panic!("the WebSocket opened without the token"),
        }
    }
    // Nothing ran.
    assert!(
        server
            .get("/metrics")
            .text
            .contains("procpool_tasks_submitted_total 0\n")
    );
    let id = server.submit(json!({"task": "add", "args": [1, 2]}));
    assert_eq!(server.finished(&id)["result"], 3);
    server.events(Some("c"));
    assert_eq!(server.call_as(None, "GET", "/healthz", None).status, 200);
    assert_eq!(server.call_as(None, "GET", "/metrics", None).status, 200);
}

/// Runs `procpool serve --listen ADDR` (no token) expecting exit 2; returns its stderr.
fn serve_refused(addr: &str) -> String {
    let out = Command::new(PROCPOOL)
        .args(["serve", "--worker", DEMO, "--listen", addr])
        .env_remove("PROCPOOL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run procpool serve");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// `serve` refuses a non-loopback address without a token (exit 2, a clear message, no
/// worker started), and an address it cannot bind (exit 2).
#[test]
fn a_public_address_without_a_token_is_refused() {
    let stderr = serve_refused("0.0.0.0:0");
    assert!(
        stderr.contains("without a token") && stderr.contains("--token"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");

    // An address already taken: exit 2 as well, and the workers started for it are gone.
    let first = Server::start(&[], &[]);
    let stderr = serve_refused(&first.addr);
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.addr)),
        "{stderr}"
    );
}

/// Malformed bodies are 400 with a message saying what is wrong; unknown tasks 422; a
/// body over --max-body 413. Nothing of it runs.
#[test]
fn malformed_bodies_are_400_unknown_tasks_422_large_ones_413() {
    let server = Server::start(&["--max-body", "1KiB"], &[]);
    let cases: [(&str, &str); 11] = [
        ("", "not JSON"),
        ("{not json", "key must be a string"),
        ("[1, 2]", "a task request is a JSON object"),
        (r#"{"args": [1]}"#, "missing field `task`"),
        (r#"{"task": "add", "arg": [1, 2]}"#, "unknown field `arg`"),
        (
            r#"{"task": 5}"#,
            "invalid type: integer `5`, expected a string",
        ),
        (r#"{"task": "add", "args": 5}"#, "expected a sequence"),
        (r#"{"task": "add", "timeout_ms": "1s"}"#, "expected u64"),
        (r#"{"task": "add", "timeout_ms": 0}"#, "above 0"),
        (r#"{"task": "add", "channel": ""}"#, "\"channel\" is empty"),
        (
            r#"{"task": "sum", "args": [[{"$task": 5}]]}"#,
            "nested task at $[0][0]",
        ),
    ];
    for (body, says) in cases {
        let a = server.call("POST", "/v1/tasks", Some(body));
        assert_eq!(
            (a.status, a.kind()),
            (400, "bad_request".into()),
            "{body}: {a:?}"
        );
        let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{body}: {message}");
    }
    for (body, name) in [
        (json!({"task": "nope"}), "nope"),
        (
            json!({"task": "sum", "args": [[{"$task": "missing"}]]}),
            "missing",
        ),
    ] {
        let a = server.call("POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!((a.status, a.kind()), (422, "unknown_task".into()), "{a:?}");
        assert!(a.text.contains(name), "{a:?}");
    }
    let big = json!({"task": "echo", "args": ["x".repeat(2000)]}).to_string();
    let a = server.call("POST", "/v1/tasks", Some(&big));
    assert_eq!((a.status, a.kind()), (413, "too_large".into()), "{a:?}");
    server.assert_metric("procpool_tasks_submitted_total 0\n");
}

// ---------------------------------------------------------------------------------------
// Metrics and health

/// `/metrics` parses as Prometheus text, line by line, and counts what happened: tasks
/// by status and kind, workers by state, the queue, durations, worker restarts.
#[test]
fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let server = Server::start(&[], &[]);
    for body in [
        json!({"task": "add", "args": [1, 2]}),
        json!({"task": "add", "args": [3, 4]}),
        json!({"task": "fail", "args": ["no"]}),
        json!({"task": "segfault"}),
    ] {
        let id = server.submit(body);
        server.finished(&id);
    }
    let sleeper = server.submit(json!({"task": "sleep_ms", "args": [30_000]}));
    server.running_pid(&sleeper);
    // The segfault's replacement worker may still be starting: wait until it is idle.
    let end = Instant::now() + DEADLINE;
    loop {
        let health = server.get("/healthz").json();
        if health["workers"]["busy"] == 1 && health["workers"]["idle"] == 1 {
            break;
        }
        assert!(
            Instant::now() < end,
            "never one busy and one idle: {health}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let a = server.get("/metrics");
    assert_eq!(a.status, 200);
    assert!(
        a.content_type.starts_with("application/openmetrics-text"),
        "{a:?}"
    );
    check_exposition_format(&a.text);
    let lines = a.text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses as Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{}", a.text));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(value("procpool_tasks_submitted_total", &[]), 5.0);
    let ended = |status, kind| {
        value(
            "procpool_tasks_ended_total",
            &[("status", status), ("kind", kind)],
        )
    };
    assert_eq!(ended("completed", "none"), 2.0);
    assert_eq!(ended("failed", "user_error"), 1.0);
    assert_eq!(ended("failed", "crashed"), 1.0);
    assert_eq!(
        value("procpool_tasks_active", &[("status", "running")]),
        1.0
    );
    assert_eq!(
        value("procpool_tasks_active", &[("status", "pending")]),
        0.0
    );
    assert_eq!(value("procpool_workers", &[("state", "busy")]), 1.0);
    assert_eq!(value("procpool_workers", &[("state", "idle")]), 1.0);
    assert_eq!(value("procpool_queue_depth", &[]), 0.0);
    assert_eq!(value("procpool_pool_healthy", &[]), 1.0);
    // The segfault cost a worker: one replacement.
    assert_eq!(value("procpool_worker_restarts_total", &[]), 1.0);
    assert_eq!(value("procpool_worker_starts_total", &[]), 3.0);
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "procpool_task_duration_seconds")
        .expect("the duration histogram");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets
                .iter()
                .find(|b| b.less_than == f64::INFINITY)
                .unwrap();
            assert_eq!(inf.count, 4.0, "{buckets:?}");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert!(
        a.text.contains("procpool_task_duration_seconds_count 4\n"),
        "{}",
        a.text
    );
}

/// A strict check of the text format: every line is a `# HELP`, `# TYPE`, `# UNIT` or the
/// final `# EOF`, or a sample `name{label="value",...} number` of a declared family.
fn check_exposition_format(text: &str) {
    let mut families: Vec<String> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&keyword),
                "bad comment: {line}"
            );
            assert!(name_ok(name), "bad family name: {line}");
            if keyword == "TYPE" {
                let kind = parts.next().unwrap_or("");
                assert!(
                    [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "unknown",
                        "info"
                    ]
                    .contains(&kind),
                    "bad type: {line}"
                );
                families.push(name.to_owned());
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value: {line}"
        );
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                for pair in labels.split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(name_ok(k), "bad label name: {line}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "bad label value: {line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(name_ok(name), "bad sample name: {line}");
        assert!(
            families.iter().any(|f| name.starts_with(f.as_str())),
            "sample of an undeclared family: {line}"
        );
    }
}

/// `/healthz` is 200 while workers can start, and 503 once they cannot (the worker
/// binary is gone and the only worker crashed).
#[test]
fn healthz_is_503_when_no_worker_can_start() {
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("worker");
    std::fs::copy(DEMO, &worker).unwrap();
    let server = Server::start_worker(worker.to_str().unwrap(), &[], &[]);
    let a = server.get("/healthz");
    assert_eq!(
        (a.status, a.json()["status"].clone()),
        (200, json!("ok")),
        "{a:?}"
    );
    std::fs::remove_file(&worker).unwrap();
    for _ in 0..2 {
        let id = server.submit(json!({"task": "segfault"}));
        server.finished(&id);
    }
    let end = Instant::now() + DEADLINE;
    let a = loop {
        let a = server.get("/healthz");
        if a.status != 200 {
            break a;
        }
        assert!(Instant::now() < end, "never unhealthy: {a:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (a.status, a.json()["status"].clone()),
        (503, json!("unhealthy")),
        "{a:?}"
    );
    assert!(
        a.json()["message"].as_str().unwrap().contains("worker"),
        "{a:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Signals

/// SIGTERM: running tasks are cancelled (their workers killed), the WebSocket clients get
/// the cancels and then a close, the server exits 143 and leaves no worker behind.
#[test]
fn sigterm_cancels_running_tasks_reaps_every_worker_and_exits_143() {
    let mut server = Server::start(&[], &[]);
    let workers = workers_of(&server, 2);
    let mut events = server.events(Some("c"));
    let ids: Vec<String> = (0..3)
        .map(|_| server.submit(json!({"task": "sleep_ms", "args": [30_000], "channel": "c"})))
        .collect();
    let pids: Vec<u32> = ids[..2].iter().map(|id| server.running_pid(id)).collect();
    let mut sorted = pids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, workers);

    // The tasks sleep 30 s: ending well before says they were cancelled, not awaited.
    let t0 = Instant::now();
    let status = server.signal(Signal::SIGTERM);
    assert_eq!(status.code(), Some(143), "{}", server.stderr());
    assert!(t0.elapsed() < DEADLINE, "took {:?}", t0.elapsed());
    assert_gone(&workers);
    assert!(
        server.stderr().contains("stopped by SIGTERM"),
        "{}",
        server.stderr()
    );

    let got = events.until_closed();
    for id in &ids {
        let last = got.iter().rfind(|e| e["task_id"] == *id);
        assert_eq!(
            last.map(|e| e["type"].clone()),
            Some(json!("cancelled")),
            "{id}: {got:#?}"
        );
    }
}

/// SIGINT with `--on-signal drain`: the running task finishes (its `completed` reaches
/// the WebSocket client), new submissions are refused, then exit 130 with every worker
/// reaped.
#[test]
fn sigint_with_drain_lets_running_tasks_finish_and_exits_130() {
    let mut server = Server::start(&["--on-signal", "drain"], &[]);
    let workers = workers_of(&server, 2);
    let mut events = server.events(None);
    let id = server.submit(json!({"task": "sleep_ms", "args": [500]}));
    server.running_pid(&id);
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGINT).unwrap();
    let got = events.until_closed();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(130), "{}", server.stderr());
    assert_gone(&workers);
    let last = got
        .iter()
        .rfind(|e| e["task_id"] == id)
        .expect("events of the task");
    assert_eq!(last["type"], "completed", "{got:#?}");
    assert_eq!(last["result"], 500);
}

/// A second signal during a drain kills at once: no waiting for the 30 s task.
#[test]
fn a_second_signal_kills_at_once() {
    let mut server = Server::start(&["--on-signal", "drain"], &[]);
    let workers = workers_of(&server, 2);
    let id = server.submit(json!({"task": "sleep_ms", "args": [30_000]}));
    let running = server.running_pid(&id);
    let pid = Pid::from_raw(server.pid() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    // Draining: the server no longer takes connections. (That a drain waits for its
    // tasks is `sigint_with_drain_lets_running_tasks_finish_and_exits_130`'s business.)
    let end = Instant::now() + DEADLINE;
    while TcpStream::connect(&server.addr).is_ok() {
        assert!(Instant::now() < end, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The task sleeps 30 s: ending well before says the second signal killed it.
    let t0 = Instant::now();
    let status = server.signal(Signal::SIGTERM);
    assert!(t0.elapsed() < DEADLINE, "took {:?}", t0.elapsed());
    assert!(is_gone(running), "worker {running} outlived the server");
    assert_eq!(status.code(), Some(143), "{}", server.stderr());
    assert_gone(&workers);
}

/// `--help` documents the routes, the token rule and the exit codes.
#[test]
fn serve_help_documents_routes_token_and_signals() {
    let out = Command::new(PROCPOOL)
        .args(["serve", "--help"])
        .output()
        .expect("run procpool serve --help");
    assert!(out.status.success());
    let mut help = String::new();
    out.stdout.as_slice().read_to_string(&mut help).unwrap();
    for needle in [
        "POST   /v1/tasks",
        "GET    /v1/events?channel=C",
        "/metrics",
        "/healthz",
        "--token",
        "PROCPOOL_TOKEN",
        "--listen",
        "--on-signal",
        "--result-ttl",
        "130/143",
        "--max-rss",
        "kwargs",
        "notify_channels",
        "bad_args",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

// ---------------------------------------------------------------------------------------
// Keyword arguments and notify_channels (issue 17)

#[test]
fn kwargs_in_submissions_and_each_bad_one_is_422_bad_args_naming_it() {
    let server = Server::start(&[], &[]);
    for (body, result) in [
        (
            json!({"task": "greet", "kwargs": {"greeting": "Hi", "name": "Ada"}}),
            json!("Hi, Ada!"),
        ),
        (
            json!({"task": "greet", "kwargs": {"name": "Ada"}}),
            json!("Hello, Ada!"),
        ),
        (
            json!({"task": "add", "args": [40], "kwargs": {"b": 2}}),
            json!(42),
        ),
        (
            json!({"task": "add", "kwargs": {"a": {"$task": "square", "kwargs": {"x": 3}}, "b": 1}}),
            json!(10),
        ),
    ] {
        let id = server.submit(body.clone());
        let t = server.finished(&id);
        assert_eq!(t["status"], "completed", "{body}: {t}");
        assert_eq!(t["result"], result, "{body}: {t}");
    }
    for (body, message) in [
        (
            json!({"task": "add", "args": [1], "kwargs": {"c": 2}}),
            "bad arguments: add has no parameter named \"c\" (its parameters: a, b)",
        ),
        (
            json!({"task": "add", "args": [1], "kwargs": {"a": 2, "b": 3}}),
            "bad arguments: argument \"a\" of add given both by position and by keyword",
        ),
        (
            json!({"task": "greet", "kwargs": {"greeting": "Hi"}}),
            "bad arguments: missing argument \"name\" of greet (name: String)",
        ),
        (
            json!({"task": "sum", "args": [[{"$task": "sleep_ms", "args": [30000]},
                {"$task": "square", "kwargs": {"y": 1}}]]}),
            "nested task \"square\" at $[0][1]: bad arguments: square has no parameter \
             named \"y\" (its parameters: x)",
        ),
    ] {
        let a = server.call("POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!(
            (a.status, a.kind()),
            (422, "bad_args".into()),
            "{body}: {a:?}"
        );
        assert_eq!(a.json()["error"]["message"], message, "{body}");
    }
    let a = server.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"task": "nope", "kwargs": {"a": 1}}).to_string()),
    );
    assert_eq!((a.status, a.kind()), (422, "unknown_task".into()), "{a:?}");
    let a = server.call(
        "POST",
        "/v1/tasks",
        Some(r#"{"task": "add", "kwargs": [1, 2]}"#),
    );
    assert_eq!((a.status, a.kind()), (400, "bad_request".into()), "{a:?}");
    // The refused ones ran nothing (the sleeper among them included).
    server.assert_metric("procpool_tasks_submitted_total 4\n");
}

#[test]
fn notify_channels_get_every_event_once_and_joiners_add_theirs() {
    let server = Server::start(&[], &[]);
    let mut on_c = server.events(Some("c"));
    let mut on_audit = server.events(Some("audit"));
    let mut on_late = server.events(Some("late"));

    // 2 s of work: the second request surely finds it running.
    let id = server.submit(json!({"task": "progress", "args": [4, 500], "channel": "c",
        "notify_channels": ["audit", "c", "audit"], "cache_key": "p"}));
    // A second request for the running task adds its own channel.
    let a = server.call(
        "POST",
        "/v1/tasks",
        Some(
            &json!({"task": "progress", "args": [4, 500], "cache_key": "p",
            "notify_channels": ["late"]})
            .to_string(),
        ),
    );
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.json()["task_id"], id.as_str());
    assert_eq!(a.json()["deduplicated"], true);

    let types = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let got_c = on_c.until_terminal(&id);
    assert_eq!(
        types(&got_c),
        [
            "started",
            "progress",
            "progress",
            "progress",
            "progress",
            "completed"
        ],
        "{got_c:#?}"
    );
    assert_eq!(
        on_audit.until_terminal(&id),
        got_c,
        "the same events, once each"
    );
    // The joiner's channel: its own start, then everything after it, one end.
    let got_late = on_late.until_terminal(&id);
    assert_eq!(
        types(&got_late).first().map(String::as_str),
        Some("started")
    );
    assert_eq!(
        types(&got_late).last().map(String::as_str),
        Some("completed")
    );
    assert_eq!(
        got_late.iter().filter(|e| e["type"] == "completed").count(),
        1,
        "{got_late:#?}"
    );

    // Nothing more on any of them: the next event each sees is that of a new task.
    let next = server.submit(json!({"task": "add", "args": [1, 2], "channel": "c",
        "notify_channels": ["audit", "late"]}));
    for events in [&mut on_c, &mut on_audit, &mut on_late] {
        let got = events.until_terminal(&next);
        assert!(
            got.iter().all(|e| e["task_id"] == next.as_str()),
            "{got:#?}"
        );
        assert_eq!(types(&got), ["started", "completed"]);
    }

    let a = server.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"task": "add", "notify_channels": [""]}).to_string()),
    );
    assert_eq!((a.status, a.kind()), (400, "bad_request".into()), "{a:?}");
}
