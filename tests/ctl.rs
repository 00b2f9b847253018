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
use serde_json::Value;
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
        let child = Command::new(PROCPOOL)
            .args(args)
            .env("XDG_RUNTIME_DIR", runtime_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn procpool");
        Supervisor {
            child,
            runtime_dir: runtime_dir.to_owned(),
        }
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
fn serve_answers_status_and_workers_on_its_control_socket() {
    let _serial = serial_blocking();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Supervisor::start(
        dir.path(),
        &[
            "serve",
            "--worker",
            DEMO,
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let socket = serve.socket("serve");
    let status = wait_for(dir.path(), &socket, &["status"], |s| {
        s["workers"]["idle"] == 2
    });
    assert_eq!(status["supervisor"], "serve");
    assert!(status.get("jobs").is_none(), "{status}");
    let workers = wait_for(dir.path(), &socket, &["workers"], |_| true);
    for w in workers["workers"].as_array().unwrap() {
        let pid = w["pid"].as_u64().unwrap() as u32;
        assert_eq!(proc_stat(pid).expect("a live worker").ppid, serve.pid());
    }
    let (code, reply) = ctl_json(dir.path(), &["jobs"]);
    assert_eq!(code, 1);
    assert_eq!(reply["error"]["kind"], "not_supported");
    serve.signal(Signal::SIGTERM);
    assert_eq!(serve.wait(), 143);
    assert!(!socket.exists());
}

#[test]
fn agent_answers_status_and_drains_on_request() {
    let _serial = serial_blocking();
    let redis = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Supervisor::start(
        dir.path(),
        &[
            "agent",
            "--broker",
            &redis.url(),
            "--worker",
            DEMO,
            "--workers",
            "1",
        ],
    );
    let socket = agent.socket("agent");
    let status = wait_for(dir.path(), &socket, &["status"], |s| {
        s["workers"]["idle"] == 1
    });
    assert_eq!(status["supervisor"], "agent");
    assert_eq!(status["draining"], false);
    let (code, reply) = ctl_json(dir.path(), &["drain"]);
    assert_eq!(code, 0, "{reply}");
    assert_eq!(agent.wait(), 143);
    assert!(!socket.exists());
}
