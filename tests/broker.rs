//! Broker mode (issue 12) with real processes: a private `redis-server` per test, agents
//! as `procpool agent` processes on the demo worker, and submitters through the CLI or a
//! broker-backed `Pool`. This process is a child subreaper, so the workers of an agent
//! the test SIGKILLs come back here to be reaped, never to PID 1.
// Linux only: the tests read /proc and make this process a child subreaper.
#![cfg(target_os = "linux")]

#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use procpool::{MetaTask, Pool, Task, TaskError};
use procpool_broker::{
    AgentInfo, Broker as _, ClientOptions, Encoding, Event, Lease, NewTask, RedisBroker,
};
use procpool_demo_tasks as demo;
use redis_server::RedisServer;
use serde_json::Value;
use support::{children_of, demo_worker, proc_stat, serial};
use uuid::Uuid;

const PROCPOOL: &str = env!("CARGO_BIN_EXE_procpool");
/// A second worker binary: it serves `triple`, which the demo worker does not, and
/// nothing else.
const TRIPLE: &str = env!("CARGO_BIN_EXE_procpool-demo-triple");

/// A `procpool agent` process; SIGTERMed (then SIGKILLed) and reaped with its workers
/// when dropped.
struct Agent {
    child: Option<Child>,
    pid: u32,
}

impl Agent {
    fn start(url: &str, workers: usize) -> Agent {
        Agent::start_with(url, workers, &[])
    }

    fn start_with(url: &str, workers: usize, flags: &[&str]) -> Agent {
        Agent::start_logging(url, workers, flags, Stdio::null())
    }

    fn start_logging(url: &str, workers: usize, flags: &[&str], stderr: Stdio) -> Agent {
        Agent::start_on(url, demo_worker(), workers, flags, stderr)
    }

    /// An agent on the worker binary `worker`.
    fn start_on(url: &str, worker: &str, workers: usize, flags: &[&str], stderr: Stdio) -> Agent {
        let child = Command::new(PROCPOOL)
            .args(["agent", "--broker", url, "--worker", worker])
            .args(["--workers", &workers.to_string()])
            .args(flags)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn procpool agent");
        let pid = child.id();
        Agent {
            child: Some(child),
            pid,
        }
    }

    fn workers(&self) -> Vec<u32> {
        children_of(self.pid).into_iter().map(|p| p.pid).collect()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid as i32), sig).expect("signal the agent");
    }

    /// SIGKILLs the agent and reaps it and the workers it leaves (they die with it).
    fn kill(mut self) {
        let workers = self.workers();
        self.signal(Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        for w in workers {
            reap_orphan(w);
        }
    }

    /// SIGTERM and the exit code.
    fn stop(mut self) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        let status = self.child.take()?.wait().ok()?;
        status.code()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let workers = self.workers();
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
            for w in workers {
                reap_orphan(w);
            }
        }
    }
}

/// Waits for `pid` (a worker whose agent died) to die, and reaps it if it came to us.
fn reap_orphan(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_stat(pid).is_some_and(|s| s.state != 'Z') {
        assert!(Instant::now() < deadline, "worker {pid} outlived its agent");
        std::thread::sleep(Duration::from_millis(5));
    }
    if proc_stat(pid).is_some_and(|s| s.ppid == std::process::id()) {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
    }
}

fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// Gone, or a zombie nobody reaped yet (dead either way).
fn dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z')
}

/// Waits until the process `pid` is gone (or a zombie), failing the test after `within`.
async fn wait_dead(pid: u32, within: Duration, what: &str) {
    wait_for(within, what, async || dead(pid)).await;
}

async fn wait_for(timeout: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` agents are alive on the broker.
async fn wait_agents(url: &str, n: usize) {
    let broker = RedisBroker::connect(url, "procpool", 1 << 20)
        .await
        .expect("connect");
    wait_for(Duration::from_secs(30), "the agents", async || {
        broker.agents().await.map(|a| a.len()).unwrap_or(0) == n
    })
    .await;
}

async fn pool(url: &str, options: ClientOptions) -> Pool {
    procpool_broker::connect(url, options)
        .await
        .expect("broker pool")
}

/// The agent (of `agents`) whose worker is `pid`.
fn owner(agents: &[Agent], pid: u32) -> usize {
    let parent = proc_stat(pid).expect("worker alive").ppid;
    agents
        .iter()
        .position(|a| a.pid == parent)
        .expect("the worker belongs to an agent")
}

/// `(status, result, error kind)` per job id, from JSON Lines records.
fn verdicts(out: &[u8]) -> HashMap<String, (String, Value, Value)> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).expect("a JSON record");
            (
                r["id"].as_str().unwrap().to_owned(),
                (
                    r["status"].as_str().unwrap().to_owned(),
                    r["result"].clone(),
                    r["error"]["kind"].clone(),
                ),
            )
        })
        .collect()
}

fn demo_jobs() -> String {
    format!("{}/scripts/demo-jobs.jsonl", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_jobs_give_the_same_verdicts_through_two_agents_as_locally() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agents = [Agent::start(&url, 2), Agent::start(&url, 2)];
    wait_agents(&url, 2).await;
    let local = Command::new(PROCPOOL)
        .args([
            "run",
            "--quiet",
            "--worker",
            demo_worker(),
            "--jobs",
            &demo_jobs(),
        ])
        .output()
        .expect("local run");
    let remote = Command::new(PROCPOOL)
        .args(["run", "--quiet", "--broker", &url, "--jobs", &demo_jobs()])
        .output()
        .expect("remote run");
    assert_eq!(remote.status.code(), local.status.code());
    let (local, remote) = (verdicts(&local.stdout), verdicts(&remote.stdout));
    assert!(local.len() >= 10, "{local:?}");
    assert_eq!(remote, local);
    let [a, b] = agents;
    assert_eq!(a.stop(), Some(143));
    assert_eq!(b.stop(), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_batch_hands_its_tasks_to_the_other_within_5s() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut agents = vec![Agent::start(&url, 2), Agent::start(&url, 2)];
    wait_agents(&url, 2).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let handles: Vec<_> = (0..4)
        .map(|_| pool.submit(demo::sleep_ms::task(3000)))
        .collect();
    let mut pids = Vec::new();
    for h in &handles {
        pids.push(h.started().await.expect("started"));
    }
    let victim = owner(&agents, pids[0]);
    let moved: Vec<usize> = (0..4)
        .filter(|&i| owner(&agents, pids[i]) == victim)
        .collect();
    agents.remove(victim).kill();
    let killed = Instant::now();
    let mut requeue = Duration::ZERO;
    for &i in &moved {
        let h = &handles[i];
        wait_for(Duration::from_secs(20), "the second start", async || {
            h.attempts() >= 2
        })
        .await;
        requeue = requeue.max(killed.elapsed());
    }
    eprintln!(
        "requeue after SIGKILL of the agent: {requeue:?} for {} tasks",
        moved.len()
    );
    assert!(
        requeue <= Duration::from_secs(5),
        "requeued after {requeue:?}"
    );
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await, Ok(3000));
        let _ = i;
    }
    drop(pool);
    assert_eq!(agents.pop().unwrap().stop(), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_cancel_kills_the_worker_on_the_agent() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agent = Agent::start(&url, 1);
    wait_agents(&url, 1).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let pid = running.started().await.expect("started");
    assert_eq!(proc_stat(pid).expect("the worker").ppid, agent.pid);
    // Queued behind it (one worker): cancelled, it never runs.
    let queued = pool.submit(demo::sleep_ms::task(60_000));
    queued.cancel();
    assert_eq!(queued.await, Err(TaskError::Cancelled));
    let asked = Instant::now();
    running.cancel();
    assert_eq!(running.await, Err(TaskError::Cancelled));
    wait_dead(pid, Duration::from_secs(10), "the worker's death").await;
    eprintln!("worker gone {:?} after the cancel", asked.elapsed());
    // Durable: a cancel flag set without any notification (as if the publish was
    // missed) is read by the agent's next lease renewal.
    let silent = pool.submit(demo::sleep_ms::task(60_000));
    let pid = silent.started().await.expect("started");
    let key = format!("{{procpool}}:t:{}", silent.id());
    assert_eq!(redis_cli(&redis, &["HSET", &key, "cancel", "1"]), "0");
    assert_eq!(silent.await, Err(TaskError::Cancelled));
    wait_dead(pid, Duration::from_secs(10), "the worker's death").await;
    drop(pool);
    assert_eq!(agent.stop(), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_agents_keep_dying_ends_lost_after_its_budget() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let mut agents = vec![Agent::start(&url, 1), Agent::start(&url, 1)];
    wait_agents(&url, 2).await;
    let options = ClientOptions {
        lost_budget: 2,
        ..ClientOptions::default()
    };
    let pool = pool(&url, options).await;
    let poison = pool.submit(demo::sleep_ms::task(60_000));
    for round in 1..=2 {
        wait_for(Duration::from_secs(20), "a start", async || {
            poison.attempts() == round
        })
        .await;
        let pid = poison.worker_pid().expect("a worker");
        let victim = owner(&agents, pid);
        agents.remove(victim).kill();
        agents.push(Agent::start(&url, 1));
    }
    let outcome = tokio::time::timeout(Duration::from_secs(20), poison)
        .await
        .expect("the task ends");
    assert!(
        matches!(outcome, Err(TaskError::Lost { .. })),
        "{outcome:?}"
    );
    assert_eq!(outcome.unwrap_err().kind(), "lost");
    drop(pool);
    for a in agents {
        assert_eq!(a.stop(), Some(143));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_submitters_sharing_a_dedupe_key_run_it_once() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agents = [Agent::start(&url, 2), Agent::start(&url, 2)];
    wait_agents(&url, 2).await;
    let (a, b) = (
        pool(&url, ClientOptions::default()).await,
        pool(&url, ClientOptions::default()).await,
    );
    let id = procpool_broker::dedupe_id("report-2026-12");
    let first = a.submit(demo::sleep_ms::task(1500).with_id(id));
    let pid = first.started().await.expect("started");
    let second = b.submit(demo::sleep_ms::task(1500).with_id(id));
    assert_eq!(second.started().await, Some(pid));
    assert_eq!(first.await, Ok(1500));
    assert_eq!(second.attempts(), 1);
    assert_eq!(second.await, Ok(1500));
    drop((a, b));
    for a in agents {
        assert_eq!(a.stop(), Some(143));
    }
}

#[test]
fn an_unreachable_broker_exits_2_naming_the_url_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("redis://user:s3cret@127.0.0.1:{port}/0");
    let started = Instant::now();
    let out = Command::new(PROCPOOL)
        .args(["run", "--broker", &url, "--jobs", &demo_jobs()])
        .output()
        .expect("procpool run");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        stderr.contains(&format!("redis://user:***@127.0.0.1:{port}/0")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_submitters_get_lost_and_agents_carry_on() {
    let _serial = serial().await;
    become_subreaper();
    let mut redis = RedisServer::start();
    let url = redis.url();
    let agent = Agent::start(&url, 1);
    wait_agents(&url, 1).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let pid = running.started().await.expect("started");
    redis.restart();
    let outcome = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the submitter is told");
    assert!(
        matches!(outcome, Err(TaskError::Lost { .. })),
        "{outcome:?}"
    );
    // The agent could not vouch for its lease: it killed the worker itself.
    wait_dead(pid, Duration::from_secs(10), "the orphaned worker's death").await;
    // It reconnects, makes its group again and takes new tasks.
    wait_agents(&url, 1).await;
    let after = procpool_broker::connect(&url, ClientOptions::default())
        .await
        .expect("pool");
    let sum = tokio::time::timeout(Duration::from_secs(20), after.run(demo::add::task(2, 3)))
        .await
        .expect("a task after the restart");
    assert_eq!(sum, Ok(5));
    drop((pool, after));
    assert_eq!(agent.stop(), Some(143));
}

/// How many terminal events task `id`'s stream holds.
fn done_events(redis: &RedisServer, id: Uuid) -> usize {
    let events = redis_cli(
        redis,
        &["XRANGE", &format!("{{procpool}}:e:{id}"), "-", "+"],
    );
    events.lines().filter(|l| l.trim() == "done").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stopped_past_its_lease_kills_its_worker_and_its_late_result_is_refused() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let agents: Vec<Agent> = logs
        .iter()
        .map(|log| {
            let file = std::fs::File::create(log).unwrap();
            Agent::start_logging(&url, 1, &["--log-level", "warn"], Stdio::from(file))
        })
        .collect();
    wait_agents(&url, 2).await;
    let pool = pool(&url, ClientOptions::default()).await;
    // 1. Still running when the agent wakes up: it kills the worker itself.
    let task = pool.submit(demo::sleep_ms::task(8000));
    let first = task.started().await.expect("started");
    let stopped = owner(&agents, first);
    agents[stopped].signal(Signal::SIGSTOP);
    wait_for(Duration::from_secs(20), "the start elsewhere", async || {
        task.attempts() >= 2
    })
    .await;
    assert_ne!(task.worker_pid(), Some(first));
    agents[stopped].signal(Signal::SIGCONT);
    wait_dead(first, Duration::from_secs(10), "the stale worker's death").await;
    let id = task.id();
    assert_eq!(task.await, Ok(8000));
    assert_eq!(done_events(&redis, id), 1);
    // 2. Finished while its agent was stopped: the late result is refused when the
    // agent wakes up (or dropped, if its renewal noticed first), and the task's one
    // outcome is the other agent's.
    let task = pool.submit(demo::sleep_ms::task(1500));
    let first = task.started().await.expect("started");
    let stopped = owner(&agents, first);
    agents[stopped].signal(Signal::SIGSTOP);
    wait_for(Duration::from_secs(20), "the start elsewhere", async || {
        task.attempts() >= 2
    })
    .await;
    agents[stopped].signal(Signal::SIGCONT);
    let id = task.id();
    assert_eq!(task.await, Ok(1500));
    let log = &logs[stopped];
    wait_for(
        Duration::from_secs(10),
        "the stale agent's verdict",
        async || {
            std::fs::read_to_string(log)
                .is_ok_and(|l| l.contains("late result rejected") || l.contains("outcome dropped"))
        },
    )
    .await;
    assert_eq!(done_events(&redis, id), 1);
    drop(pool);
    for a in agents {
        assert_eq!(a.stop(), Some(143));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_task_combines_remote_inputs() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agents = [Agent::start(&url, 2), Agent::start(&url, 1)];
    wait_agents(&url, 2).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let squares = || (1..=4).map(demo::square::task).collect::<Vec<_>>();
    let total = MetaTask::new(squares(), |v: Vec<i64>| v.iter().sum::<i64>())
        .run(&pool)
        .await
        .expect("meta task");
    assert_eq!(total, 30);
    let as_task = MetaTask::process_as_task(squares(), demo::sum::task)
        .run(&pool)
        .await
        .expect("meta task as a task");
    assert_eq!(as_task, 30);
    drop(pool);
    for a in agents {
        assert_eq!(a.stop(), Some(143));
    }
}

/// `redis-cli -p PORT ARGS...`, its output.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A task queued as a submitter queues it: JSON arguments, no timeout or retries of its
/// own, a result kept a minute.
fn json_task<'a>(id: Uuid, name: &'a str, args: &'a [u8]) -> NewTask<'a> {
    NewTask {
        id,
        name,
        args,
        encoding: Encoding::Json,
        timeout: None,
        retries: None,
        lost_budget: 3,
        result_ttl: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_cannot_write_and_the_result_is_taken_once() {
    let _serial = serial().await;
    let redis = RedisServer::start();
    let b = RedisBroker::connect(&redis.url(), "fence", 1 << 20)
        .await
        .expect("connect");
    let names = ["add".to_owned()];
    b.prepare(&names).await.unwrap();
    let id = Uuid::new_v4();
    let task = json_task(id, "add", b"[1,2]");
    assert_eq!(
        b.submit(&task, "submitter").await.unwrap(),
        procpool_broker::Submitted::New
    );
    // Submitting the same id again attaches (the script is idempotent).
    assert_eq!(
        b.submit(&task, "submitter").await.unwrap(),
        procpool_broker::Submitted::Attached
    );
    let agent = |id: &str| AgentInfo {
        id: id.into(),
        ..AgentInfo::default()
    };
    // Agent x takes the task under a lease it will not renew.
    b.renew(&agent("x"), Duration::from_millis(100), &[])
        .await
        .unwrap();
    let fetched = b
        .fetch("x", &names, 1, Duration::from_secs(1))
        .await
        .unwrap();
    let entry = fetched[0].entry.clone();
    let first = b
        .start("x", &fetched[0], id)
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(first.attempt, 1);
    let stale = Lease {
        id,
        entry,
        attempt: 1,
    };
    // Agent y reaps it once x's liveness key expired, and runs attempt 2.
    b.renew(&agent("y"), Duration::from_secs(30), &[])
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "the reap", async || {
        b.reap("y").await.unwrap() == 1
    })
    .await;
    let fetched = b
        .fetch("y", &names, 1, Duration::from_secs(1))
        .await
        .unwrap();
    let second = b
        .start("y", &fetched[0], id)
        .await
        .unwrap()
        .expect("claimed again");
    assert_eq!(second.attempt, 2);
    let current = Lease {
        id,
        entry: fetched[0].entry.clone(),
        attempt: 2,
    };
    // x's renewal reports the lease lost; its writes are refused.
    let renewal = b
        .renew(
            &agent("x"),
            Duration::from_secs(1),
            std::slice::from_ref(&stale),
        )
        .await
        .unwrap();
    assert_eq!(renewal.lost, vec![id]);
    let late = Event::Message(b"late".to_vec());
    assert!(!b.emit("x", &stale, &late).await.unwrap());
    let three = bytes::Bytes::from_static(b"3");
    assert!(!b.complete("x", &stale, &Ok(three.clone())).await.unwrap());
    assert!(b.complete("y", &current, &Ok(three.clone())).await.unwrap());
    // Applied once: the same write again is refused.
    assert!(!b.complete("y", &current, &Ok(three.clone())).await.unwrap());
    assert_eq!(b.take_results(&[id]).await.unwrap(), [Some(Ok(three))]);
    assert_eq!(b.take_results(&[id]).await.unwrap(), [None]);
    // The queue is empty: the entry left with the terminal write.
    assert_eq!(redis_cli(&redis, &["XLEN", "{fence}:q:add"]), "0");
}

/// Agents that die without leaving (SIGKILL) stay in the agent set until a live agent
/// reaps them; when none is left, the set itself must not outlive their leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_set_goes_once_every_agent_died() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agents = [Agent::start(&url, 1), Agent::start(&url, 1)];
    wait_agents(&url, 2).await;
    for a in agents {
        a.kill();
    }
    // Both leases (3 s) run out after the agents' last renewals.
    wait_for(Duration::from_secs(20), "the agent set to go", async || {
        redis_cli(&redis, &["EXISTS", "{procpool}:agents"]) == "0"
    })
    .await;
}

/// The submitter that cancels a queued task is told of its end through its inbox, like
/// any other event: without the notice it would find the end only at its next sweep of
/// every watched task, and a short result TTL could expire the outcome before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submitter_cancelling_a_queued_task_is_notified_of_its_end() {
    let _serial = serial().await;
    let redis = RedisServer::start();
    let b = RedisBroker::connect(&redis.url(), "notice", 1 << 20)
        .await
        .expect("connect");
    let names = ["add".to_owned()];
    b.prepare(&names).await.unwrap();
    let id = Uuid::new_v4();
    let task = json_task(id, "add", b"[1,2]");
    b.submit(&task, "submitter").await.unwrap();
    let mut cursor = "0-0".to_owned();
    assert_eq!(
        b.read_notices("submitter", &mut cursor, None)
            .await
            .unwrap(),
        [id],
        "the queued event"
    );
    assert_eq!(
        b.cancel(id, "submitter").await.unwrap(),
        procpool_broker::Cancelled::Cancelled
    );
    assert_eq!(
        b.read_notices("submitter", &mut cursor, None)
            .await
            .unwrap(),
        [id],
        "the end of the cancelled task is announced to its submitter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queue_entries_do_not_stop_an_agent() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agent = Agent::start(&url, 1);
    wait_agents(&url, 1).await;
    redis_cli(&redis, &["XADD", "{procpool}:q:add", "*", "foo", "bar"]);
    redis_cli(
        &redis,
        &["XADD", "{procpool}:q:add", "*", "id", "not-a-uuid"],
    );
    redis_cli(
        &redis,
        &[
            "XADD",
            "{procpool}:q:add",
            "*",
            "id",
            &Uuid::new_v4().to_string(),
        ],
    );
    // A task hash with an unknown encoding, written before its entry (whose id is
    // chosen): it ends with a protocol error.
    let bad = Uuid::new_v4().to_string();
    let entry = "9999999999999-0";
    let key = format!("{{procpool}}:t:{bad}");
    redis_cli(
        &redis,
        &[
            "HSET", &key, "st", "queued", "entry", entry, "name", "add", "args", "[1,2]", "enc",
            "zz", "att", "0", "proto", "2", "ttl", "60000", "cancel", "0",
        ],
    );
    redis_cli(&redis, &["XADD", "{procpool}:q:add", entry, "id", &bad]);
    wait_for(
        Duration::from_secs(10),
        "the malformed task's end",
        async || redis_cli(&redis, &["HGET", &key, "st"]) == "done",
    )
    .await;
    let result = redis_cli(&redis, &["GET", &format!("{{procpool}}:r:{bad}")]);
    assert!(result.contains("\"kind\":\"protocol\""), "{result}");
    // A task of another protocol version is refused, naming both versions.
    let old = Uuid::new_v4().to_string();
    let entry = "9999999999999-1";
    let key = format!("{{procpool}}:t:{old}");
    redis_cli(
        &redis,
        &[
            "HSET", &key, "st", "queued", "entry", entry, "name", "add", "args", "[1,2]", "enc",
            "j", "att", "0", "proto", "1", "ttl", "60000", "cancel", "0",
        ],
    );
    redis_cli(&redis, &["XADD", "{procpool}:q:add", entry, "id", &old]);
    wait_for(Duration::from_secs(10), "the old task's end", async || {
        redis_cli(&redis, &["HGET", &key, "st"]) == "done"
    })
    .await;
    let result = redis_cli(&redis, &["GET", &format!("{{procpool}}:r:{old}")]);
    assert!(
        result.contains("\"kind\":\"protocol\"") && result.contains("protocol version 1"),
        "{result}"
    );
    let pool = pool(&url, ClientOptions::default()).await;
    let sum = tokio::time::timeout(Duration::from_secs(20), pool.run(demo::add::task(2, 2)))
        .await
        .expect("a task after the garbage");
    assert_eq!(sum, Ok(4));
    assert!(!dead(agent.pid));
    drop(pool);
    assert_eq!(agent.stop(), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_messages_arrive_in_order_across_a_cut_connection() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agent = Agent::start(&url, 1);
    wait_agents(&url, 1).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = demo::progress::task(10, 150).on_progress(move |p| {
        record.lock().unwrap().push(p.fraction);
    });
    let handle = pool.submit(task);
    handle.started().await.expect("started");
    wait_for(Duration::from_secs(10), "some progress", async || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    // Every client connection is cut: the agent's and this submitter's.
    redis_cli(&redis, &["CLIENT", "KILL", "TYPE", "normal"]);
    redis_cli(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(handle.await, Ok(()));
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<f32> = (1..=10).map(|i| i as f32 / 10.0).collect();
    assert_eq!(seen, expected);
    // Messages both ways: the task answers each one reversed.
    let mut chat: procpool::TaskHandle<u64> = pool.submit(demo::chat::task());
    chat.send(b"abc".to_vec()).expect("a small message fits");
    chat.send(b"xyz".to_vec()).expect("a small message fits");
    assert_eq!(chat.recv().await, Some(b"cba".to_vec()));
    assert_eq!(chat.recv().await, Some(b"zyx".to_vec()));
    chat.send(Vec::new()).expect("a small message fits");
    assert_eq!(chat.await, Ok(2));
    drop(pool);
    assert_eq!(agent.stop(), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_hands_its_task_back_or_drains_it() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    // SIGTERM with the default --on-signal cancel: the worker dies, another agent runs
    // the task, and the hand-back does not count as a lost attempt.
    let first = Agent::start(&url, 1);
    wait_agents(&url, 1).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let task = pool.submit(demo::sleep_ms::task(1500));
    let pid = task.started().await.expect("started");
    let second = Agent::start_with(&url, 1, &["--on-signal", "drain"]);
    wait_agents(&url, 2).await;
    assert_eq!(first.stop(), Some(143));
    assert!(dead(pid));
    assert_eq!(task.await, Ok(1500));
    // SIGINT with --on-signal drain: the running task finishes first.
    let drained = pool.submit(demo::sleep_ms::task(1000));
    drained.started().await.expect("started");
    second.signal(Signal::SIGINT);
    assert_eq!(drained.await, Ok(1000));
    assert_eq!(second.stop(), Some(130));
    // A second signal during a drain hands the running task back at once.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let draining = Agent::start_logging(
        &url,
        1,
        &["--on-signal", "drain", "--log-level", "info"],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_agents(&url, 1).await;
    let long = pool.submit(demo::sleep_ms::task(60_000));
    let pid = long.started().await.expect("started");
    let other = Agent::start(&url, 1);
    wait_agents(&url, 2).await;
    draining.signal(Signal::SIGTERM);
    wait_for(Duration::from_secs(10), "the drain", async || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("agent stopping"))
    })
    .await;
    assert_eq!(draining.stop(), Some(143));
    assert!(dead(pid));
    wait_for(Duration::from_secs(10), "the start elsewhere", async || {
        long.attempts() == 2
    })
    .await;
    long.cancel();
    assert_eq!(long.await, Err(TaskError::Cancelled));
    drop(pool);
    assert_eq!(other.stop(), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_wait_for_an_agent_and_unknown_names_are_refused() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let pool = pool(&url, ClientOptions::default()).await;
    // No agent yet: the task waits in the queue.
    let waiting = pool.submit(demo::add::task(20, 22));
    let agent = Agent::start(&url, 1);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), waiting).await,
        Ok(Ok(42))
    );
    let unknown = pool
        .run(Task::<Value>::json("no_such_task", serde_json::json!([])))
        .await;
    assert!(
        matches!(unknown, Err(TaskError::UnknownTask { .. })),
        "{unknown:?}"
    );
    let listed = Command::new(PROCPOOL)
        .args(["tasks", "--json", "--broker", &url])
        .output()
        .expect("procpool tasks");
    assert_eq!(listed.status.code(), Some(0));
    let names: Vec<Value> = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert!(names.iter().any(|t| t["name"] == "sleep_ms"), "{names:?}");
    // The submitter's --timeout reaches the agent.
    let timed = Command::new(PROCPOOL)
        .args([
            "run",
            "--quiet",
            "--broker",
            &url,
            "--timeout",
            "300ms",
            "--jobs",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut run| {
            use std::io::Write as _;
            run.stdin
                .take()
                .unwrap()
                .write_all(b"{\"id\":\"s\",\"task\":\"sleep_ms\",\"args\":[20000]}\n")?;
            run.wait_with_output()
        })
        .expect("procpool run");
    assert_eq!(timed.status.code(), Some(1));
    assert_eq!(verdicts(&timed.stdout)["s"].2, "timed_out");
    drop(pool);
    assert_eq!(agent.stop(), Some(143));
}

/// `procpool serve --broker URL`: its address, and the process.
fn serve_on(url: &str) -> (Child, String) {
    use std::io::BufRead as _;
    let mut child = Command::new(PROCPOOL)
        .args(["serve", "--broker", url, "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("PROCPOOL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn procpool serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("procpool serve prints its address");
    (child, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_the_broker_submits_polls_and_cancels() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agent = Agent::start(&url, 2);
    wait_agents(&url, 1).await;
    let (mut serve, base) = serve_on(&url);
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let call = |method: &str, path: &str, body: Option<&str>| -> (u16, Value) {
        let url = format!("{base}{path}");
        let mut resp = match (method, body) {
            ("POST", Some(b)) => http
                .post(&url)
                .header("content-type", "application/json")
                .send(b)
                .expect("POST"),
            ("DELETE", _) => http.delete(&url).call().expect("DELETE"),
            _ => http.get(&url).call().expect("GET"),
        };
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            resp.status().as_u16(),
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    };
    let poll = |id: &str, status: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, task) = call("GET", &format!("/v1/tasks/{id}"), None);
            if code == 200 && task["status"] == status {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never {status}: {task}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (code, created) = call("POST", "/v1/tasks", Some(r#"{"task":"add","args":[1,2]}"#));
    assert_eq!(code, 202, "{created}");
    let id = created["task_id"].as_str().unwrap().to_owned();
    assert_eq!(poll(&id, "completed")["result"], 3);
    let (code, created) = call(
        "POST",
        "/v1/tasks",
        Some(r#"{"task":"sleep_ms","args":[60000]}"#),
    );
    assert_eq!(code, 202, "{created}");
    let id = created["task_id"].as_str().unwrap().to_owned();
    let running = poll(&id, "running");
    let pid = running["worker_pids"][0].as_u64().expect("a worker pid") as u32;
    assert_eq!(proc_stat(pid).expect("the worker").ppid, agent.pid);
    let (code, _) = call("DELETE", &format!("/v1/tasks/{id}"), None);
    assert_eq!(code, 200);
    assert_eq!(poll(&id, "cancelled")["error"]["kind"], "cancelled");
    wait_dead(pid, Duration::from_secs(10), "the worker's death").await;
    kill(Pid::from_raw(serve.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(serve.wait().unwrap().code(), Some(143));
    assert_eq!(agent.stop(), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_broker_with_a_password_works_and_the_password_never_shows() {
    let _serial = serial().await;
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_tls(dir.path(), "s3cret");
    let url = redis.url();
    let log = dir.path().join("agent.log");
    let agent = Agent::start_logging(
        &url,
        1,
        &["--log-level", "info"],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_agents(&url, 1).await;
    let out = Command::new(PROCPOOL)
        .args(["run", "--quiet", "--broker", &url, "--jobs", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut run| {
            use std::io::Write as _;
            run.stdin
                .take()
                .unwrap()
                .write_all(b"{\"id\":\"a\",\"task\":\"add\",\"args\":[2,3]}\n")?;
            run.wait_with_output()
        })
        .expect("procpool run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(verdicts(&out.stdout)["a"].1, 5);
    // A wrong password: exit 2, the URL shown with its password elided.
    let wrong = url.replace("s3cret", "wrong-pw");
    let refused = Command::new(PROCPOOL)
        .args(["run", "--broker", &wrong, "--jobs", &demo_jobs()])
        .output()
        .expect("procpool run");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rediss://:***@127.0.0.1"), "{stderr}");
    assert!(!stderr.contains("wrong-pw"), "{stderr}");
    assert_eq!(agent.stop(), Some(143));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("rediss://:***@127.0.0.1"), "{logged}");
    assert!(!logged.contains("s3cret"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_the_agents_frame_cap_never_reaches_it() {
    let _serial = serial().await;
    let redis = RedisServer::start();
    let b = RedisBroker::connect(&redis.url(), "cap", 1024)
        .await
        .expect("connect");
    let names = ["add".to_owned()];
    b.prepare(&names).await.unwrap();
    let id = Uuid::new_v4();
    let args = vec![b'1'; 4096];
    let task = json_task(id, "add", &args);
    b.submit(&task, "submitter").await.unwrap();
    let fetched = b
        .fetch("x", &names, 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(b.start("x", &fetched[0], id).await.unwrap().is_none());
    let [outcome] = &b.take_results(&[id]).await.unwrap()[..] else {
        panic!("one result")
    };
    let outcome = outcome.clone().expect("an outcome");
    assert!(
        matches!(&outcome, Err(TaskError::Protocol { message }) if message.contains("frame cap")),
        "{outcome:?}"
    );
}

/// Found by `procpool-chaos --agents`: an agent stalled past its kill limit (lease minus
/// half a renewal period: 2.5 s) but short of its lease (3 s) kills its running task and
/// writes nothing, while its liveness key stays alive. Its renewals no longer name the
/// task, so the lease runs out on the broker and any agent's reaper (here its own: it is
/// the only one) requeues the task within about the lease plus a reaper period, instead
/// of the old 30 s XAUTOCLAIM backstop. Stalled past its lease, its first renewal is
/// refused (a lease is never renewed late) and the task requeued at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_agent_hands_its_task_back_once_its_lease_runs_out_fenced() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let agent = Agent::start_logging(
        &url,
        1,
        &["--log-level", "warn"],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_agents(&url, 1).await;
    let options = ClientOptions {
        lost_budget: 5,
        ..ClientOptions::default()
    };
    let pool = pool(&url, options).await;
    let task = pool.submit(demo::sleep_ms::task(6000));
    let first = task.started().await.expect("started");
    let key = redis_cli(&redis, &["KEYS", "{procpool}:a:*"]);
    let fresh_renewal = async || {
        wait_for(Duration::from_secs(10), "a fresh renewal", async || {
            redis_cli(&redis, &["PTTL", &key])
                .parse::<i64>()
                .is_ok_and(|ms| ms > 2800)
        })
        .await;
    };
    // 1. Right after a renewal, stalled for 2.7 s (the fault itself, not a wait): past
    // the point where it kills its task, short of its lease.
    fresh_renewal().await;
    agent.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(2700)).await;
    agent.signal(Signal::SIGCONT);
    wait_for(Duration::from_secs(30), "attempt 2", async || {
        task.attempts() >= 2
    })
    .await;
    let requeued = stopped.elapsed();
    eprintln!("stalled short of the lease: attempt 2 after {requeued:?}");
    // Lease 3 s + reaper period (0.5-0.7 s) + the restart; generous for a loaded machine,
    // and far below the 30 s backstop this replaces.
    assert!(requeued < Duration::from_secs(10), "took {requeued:?}");
    wait_dead(first, Duration::from_secs(10), "the stale worker's death").await;
    // 2. Stalled past its lease: its late renewal is refused, the task requeued at once
    // and started again; the old attempt's worker is killed and writes nothing.
    let second = task.worker_pid().expect("attempt 2 runs");
    fresh_renewal().await;
    agent.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    agent.signal(Signal::SIGCONT);
    let woke = Instant::now();
    wait_for(Duration::from_secs(30), "attempt 3", async || {
        task.attempts() >= 3
    })
    .await;
    eprintln!(
        "stalled past the lease: attempt 3 {:?} after waking",
        woke.elapsed()
    );
    assert!(woke.elapsed() < Duration::from_secs(10));
    wait_dead(second, Duration::from_secs(10), "the stale worker's death").await;
    let id = task.id();
    assert_eq!(task.await, Ok(6000));
    assert_eq!(done_events(&redis, id), 1);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("lease lost"), "{logged}");
    drop(pool);
    assert_eq!(agent.stop(), Some(143));
}

/// Issue 12, every key in the namespace's hash tag: the whole flow on a one-node Redis
/// Cluster, which refuses a command or a script that touches keys of two slots (a
/// submitter's wake-up stream was once outside the tag, and XREAD named it with the
/// event streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_in_the_namespace_slot_of_a_redis_cluster() {
    let _serial = serial().await;
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_cluster(dir.path());
    let url = redis.url();
    let mut agents = vec![Agent::start(&url, 1), Agent::start(&url, 1)];
    wait_agents(&url, 2).await;
    let (a, b) = (
        pool(&url, ClientOptions::default()).await,
        pool(&url, ClientOptions::default()).await,
    );
    // Submit, events, result.
    assert_eq!(a.run(demo::add::task(2, 3)).await, Ok(5));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let progress =
        demo::progress::task(3, 20).on_progress(move |p| log.lock().unwrap().push(p.fraction));
    assert_eq!(b.run(progress).await, Ok(()));
    assert_eq!(seen.lock().unwrap().len(), 3);
    // Messages to a running task.
    let mut chat = a.submit(demo::chat::task());
    chat.started().await.expect("started");
    chat.send(b"hi".to_vec()).expect("sent");
    assert_eq!(chat.recv().await, Some(b"ih".to_vec()));
    chat.send(Vec::new()).expect("sent");
    assert_eq!(chat.await, Ok(1));
    // Two submitters on one id: one lets go, the other gets the result.
    let id = procpool_broker::dedupe_id("cluster");
    let first = a.submit(demo::sleep_ms::task(1500).with_id(id));
    first.started().await.expect("started");
    let second = b.submit(demo::sleep_ms::task(1500).with_id(id));
    // Attached (it sees the run's start) before the other lets go: a cancel that reaches
    // the broker before the second submit cancels the run for real.
    second.started().await.expect("attached");
    first.cancel();
    assert_eq!(first.await, Err(TaskError::Cancelled));
    assert_eq!(second.await, Ok(1500));
    // Cancel of a running task.
    let long = a.submit(demo::sleep_ms::task(60_000));
    let pid = long.started().await.expect("started");
    long.cancel();
    assert_eq!(long.await, Err(TaskError::Cancelled));
    wait_dead(pid, Duration::from_secs(10), "the worker's death").await;
    // An agent killed mid-task: reaped, the task runs on the other one.
    let task = b.submit(demo::sleep_ms::task(2000));
    let pid = task.started().await.expect("started");
    agents.remove(owner(&agents, pid)).kill();
    assert_eq!(task.await, Ok(2000));
    drop((a, b));
    for a in agents {
        assert_eq!(a.stop(), Some(143));
    }
}

/// `procpool run --broker`, its jobs from stdin; the process.
fn spawn_run(url: &str, flags: &[&str], jobs: &str) -> Child {
    use std::io::Write as _;
    let mut run = Command::new(PROCPOOL)
        .args(["run", "--quiet", "--broker", url, "--jobs", "-"])
        .args(flags)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("procpool run");
    let mut stdin = run.stdin.take().expect("stdin");
    stdin.write_all(jobs.as_bytes()).expect("jobs");
    run
}

/// Issue 12, "while no agent is up at all, tasks wait for one": a batch started before
/// any agent, with nested tasks and keyword arguments (both matched against what the
/// agents serve), completes once an agent comes up; a name that agent does not serve is
/// then `unknown_task`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_started_before_any_agent_runs_once_one_comes_up() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let jobs = [
        r#"{"id":"plain","task":"add","args":[1,2]}"#,
        r#"{"id":"kwargs","task":"greet","kwargs":{"name":"Ada"}}"#,
        r#"{"id":"nested","task":"sum","args":[[{"$task":"square","args":[2]},{"$task":"square","args":[3]}]]}"#,
        r#"{"id":"deep","task":"add","args":[{"$task":"add","args":[{"$task":"square","args":[2]},1]},10]}"#,
        r#"{"id":"unknown","task":"sum","args":[[{"$task":"no_such_task","args":[]}]]}"#,
    ]
    .join("\n");
    let run = spawn_run(&url, &[], &(jobs + "\n"));
    // Well after the run connected (and read every job) with no agent up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent = Agent::start(&url, 2);
    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .expect("procpool run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let got = verdicts(&out.stdout);
    assert_eq!(got.len(), 5, "{got:?} {stderr}");
    assert_eq!(got["plain"].1, 3, "{got:?}");
    assert_eq!(got["kwargs"].1, "Hello, Ada!", "{got:?}");
    assert_eq!(got["nested"].1, 13, "{got:?}");
    assert_eq!(got["deep"].1, 15, "{got:?}");
    assert_eq!(got["unknown"].2, "unknown_task", "{got:?}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(agent.stop(), Some(143));
}

/// Issue 12: the agent's lease and the submitter's lost budget and result TTL are flags;
/// a lease shorter than two renewals is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_budget_and_result_ttl_flags() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let refused = Command::new(PROCPOOL)
        .args(["agent", "--broker", &url, "--worker", demo_worker()])
        .args(["--lease", "1500ms"])
        .output()
        .expect("procpool agent");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--lease") && stderr.contains("two lease renewals"),
        "{stderr}"
    );
    // A 6 s lease: the liveness key lives that long after each renewal.
    let agents = [
        Agent::start_with(&url, 1, &["--lease", "6s"]),
        Agent::start_with(&url, 1, &["--lease", "6s"]),
    ];
    wait_agents(&url, 2).await;
    let keys = redis_cli(&redis, &["KEYS", "{procpool}:a:*"]);
    let ttls: Vec<i64> = keys
        .lines()
        .map(|k| redis_cli(&redis, &["PTTL", k]).parse().unwrap())
        .collect();
    assert!(ttls.iter().all(|ms| *ms > 3000), "{ttls:?}");
    // --lost-budget 1: the first agent lost with the job fails it `lost`; the job's
    // task keys expire after --broker-result-ttl.
    let run = spawn_run(
        &url,
        &["--lost-budget", "1", "--broker-result-ttl", "30s"],
        "{\"id\":\"s\",\"task\":\"sleep_ms\",\"args\":[60000]}\n",
    );
    let task_key = async || redis_cli(&redis, &["KEYS", "{procpool}:t:*"]);
    wait_for(Duration::from_secs(20), "the job's start", async || {
        let key = task_key().await;
        !key.is_empty() && redis_cli(&redis, &["HGET", &key, "st"]) == "running"
    })
    .await;
    let key = task_key().await;
    let holder = redis_cli(&redis, &["HGET", &key, "agent"]);
    let [a, b] = agents;
    let (gone, other) = if holder.contains(&format!("-{}-", a.pid)) {
        (a, b)
    } else {
        (b, a)
    };
    gone.kill();
    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .expect("procpool run");
    let got = verdicts(&out.stdout);
    assert_eq!(got["s"].2, "lost", "{got:?}");
    let ttl: i64 = redis_cli(&redis, &["PTTL", &key]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "{ttl}");
    assert_eq!(other.stop(), Some(143));
}

/// A child process killed and reaped when dropped, so a failed assertion leaves none.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 12, `cache_key` dedupe across submitters on different hosts: two `procpool
/// serve --broker` processes given the same cache key share one run (one worker, one
/// start, both get the result, both see it running); when one of them dies or cancels,
/// the other still gets the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_a_cache_keyed_task_across_processes() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agent = Agent::start(&url, 2);
    wait_agents(&url, 1).await;
    let (serve_a, base_a) = serve_on(&url);
    let (serve_b, base_b) = serve_on(&url);
    let (mut serve_a, mut serve_b) = (KillOnDrop(serve_a), KillOnDrop(serve_b));
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let call = |method: &str, url: String, body: Option<&str>| -> (u16, Value) {
        let mut resp = match (method, body) {
            ("POST", Some(b)) => http
                .post(&url)
                .header("content-type", "application/json")
                .send(b)
                .expect("POST"),
            ("DELETE", _) => http.delete(&url).call().expect("DELETE"),
            _ => http.get(&url).call().expect("GET"),
        };
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            resp.status().as_u16(),
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    };
    let submit = |base: &str, key: &str| {
        let body = format!(r#"{{"task":"sleep_ms","args":[2500],"cache_key":"{key}"}}"#);
        let (code, created) = call("POST", format!("{base}/v1/tasks"), Some(&body));
        assert_eq!(code, 202, "{created}");
        created["task_id"].as_str().unwrap().to_owned()
    };
    let poll = |base: &str, id: &str, status: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, task) = call("GET", format!("{base}/v1/tasks/{id}"), None);
            if code == 200 && task["status"] == status {
                return task;
            }
            assert!(Instant::now() < deadline, "{id} never {status}: {task}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let started_events = |key: &str| {
        let id = procpool_broker::dedupe_id(key);
        let events = redis_cli(
            &redis,
            &["XRANGE", &format!("{{procpool}}:e:{id}"), "-", "+"],
        );
        events.lines().filter(|l| l.trim() == "started").count()
    };
    // 1. Both wait for the one run: the same worker, one start, both results.
    let (a, b) = (submit(&base_a, "shared"), submit(&base_b, "shared"));
    let pid_a = poll(&base_a, &a, "running")["worker_pids"][0].clone();
    let pid_b = poll(&base_b, &b, "running")["worker_pids"][0].clone();
    assert!(pid_a.is_u64(), "{pid_a}");
    assert_eq!(pid_a, pid_b);
    assert_eq!(poll(&base_a, &a, "completed")["result"], 2500);
    assert_eq!(poll(&base_b, &b, "completed")["result"], 2500);
    assert_eq!(started_events("shared"), 1);
    // 2. One server cancels: it lets go, the run goes on for the other.
    let (a, b) = (submit(&base_a, "let-go"), submit(&base_b, "let-go"));
    let pid = poll(&base_b, &b, "running")["worker_pids"][0]
        .as_u64()
        .expect("a pid") as u32;
    poll(&base_a, &a, "running");
    let (code, _) = call("DELETE", format!("{base_a}/v1/tasks/{a}"), None);
    assert_eq!(code, 200);
    assert_eq!(poll(&base_a, &a, "cancelled")["error"]["kind"], "cancelled");
    assert!(!dead(pid), "the shared worker was killed");
    assert_eq!(poll(&base_b, &b, "completed")["result"], 2500);
    // 3. The first submitter dies before the result: the other still gets it.
    let (a, b) = (submit(&base_a, "orphan"), submit(&base_b, "orphan"));
    poll(&base_a, &a, "running");
    poll(&base_b, &b, "running");
    serve_a.0.kill().unwrap();
    serve_a.0.wait().unwrap();
    assert_eq!(poll(&base_b, &b, "completed")["result"], 2500);
    assert_eq!(started_events("orphan"), 1);
    kill(Pid::from_raw(serve_b.0.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(serve_b.0.wait().unwrap().code(), Some(143));
    assert_eq!(agent.stop(), Some(143));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetching_agent_claims_ahead_and_a_prefetched_cancel_never_runs() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let agent = Agent::start_with(&url, 1, &["--prefetch-tasks", "2"]);
    wait_agents(&url, 1).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let running = pool.submit(demo::sleep_ms::task(60_000));
    let pid = running.started().await.expect("started");
    let ahead: Vec<_> = (0..2).map(|i| pool.submit(demo::add::task(i, 1))).collect();
    let behind = pool.submit(demo::add::task(10, 1));
    // One worker, two claimed ahead of it: on the broker those two run on this agent
    // while the worker is busy, and the fourth task waits in the queue.
    let state = |id: Uuid| {
        let key = format!("{{procpool}}:t:{id}");
        redis_cli(&redis, &["HGET", &key, "st"])
    };
    wait_for(Duration::from_secs(10), "the prefetch", async || {
        ahead.iter().all(|h| state(h.id()) == "running")
    })
    .await;
    assert_eq!(state(behind.id()), "queued");
    assert!(
        ahead.iter().all(|h| h.worker_pid().is_none()),
        "not started yet"
    );
    // A prefetched task cancelled before its start never runs.
    let mut ahead = ahead.into_iter();
    let cancelled = ahead.next().unwrap();
    cancelled.cancel();
    assert_eq!(cancelled.await, Err(TaskError::Cancelled));
    running.cancel();
    assert_eq!(running.await, Err(TaskError::Cancelled));
    wait_dead(pid, Duration::from_secs(10), "the worker's death").await;
    // The rest run, each exactly once, in a replacement worker.
    assert_eq!(ahead.next().unwrap().await, Ok(2));
    assert_eq!(behind.await, Ok(11));
    drop(pool);
    assert_eq!(agent.stop(), Some(143));
}

/// A server whose broker is gone still stops on SIGTERM: the running tasks it cannot
/// cancel on the broker end on its side (they used to keep its shutdown waiting forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_on_sigterm_after_its_broker_is_gone() {
    let _serial = serial().await;
    become_subreaper();
    let mut redis = RedisServer::start();
    let url = redis.url();
    let agent = Agent::start(&url, 1);
    wait_agents(&url, 1).await;
    let (serve, base) = serve_on(&url);
    let mut serve = KillOnDrop(serve);
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut created = http
        .post(format!("{base}/v1/tasks"))
        .header("content-type", "application/json")
        .send(r#"{"task":"sleep_ms","args":[60000]}"#)
        .expect("POST");
    let created: Value =
        serde_json::from_str(&created.body_mut().read_to_string().unwrap()).unwrap();
    let id = created["task_id"].as_str().expect("a task id").to_owned();
    wait_for(Duration::from_secs(20), "the start", async || {
        let mut got = http
            .get(format!("{base}/v1/tasks/{id}"))
            .call()
            .expect("GET");
        let task: Value = serde_json::from_str(&got.body_mut().read_to_string().unwrap()).unwrap();
        task["status"] == "running"
    })
    .await;
    redis.kill();
    kill(Pid::from_raw(serve.0.id() as i32), Signal::SIGTERM).unwrap();
    let stopped = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = serve.0.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(stopped, Some(143));
    drop(agent);
}

/// Agents on different worker binaries: a task goes only to an agent that serves it.
/// A batch of `add` (served by the demo worker's agent only) and `triple` (by the other
/// binary's agent only) completes with every right result; then tasks whose only serving
/// agent leaves wait queued (the other agent never takes them) and run once an agent
/// serving them comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_agents_take_only_the_tasks_they_serve() {
    let _serial = serial().await;
    become_subreaper();
    let redis = RedisServer::start();
    let url = redis.url();
    let demo_agent = Agent::start(&url, 2);
    let triple_agent = Agent::start_on(&url, TRIPLE, 2, &[], Stdio::null());
    wait_agents(&url, 2).await;
    let jobs: String = (0..20)
        .map(|i| {
            format!(
                "{{\"id\":\"add{i}\",\"task\":\"add\",\"args\":[{i},1]}}\n\
                 {{\"id\":\"triple{i}\",\"task\":\"triple\",\"args\":[{i},0]}}\n"
            )
        })
        .collect();
    let run = spawn_run(&url, &[], &jobs);
    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .expect("procpool run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let got = verdicts(&out.stdout);
    assert_eq!(got.len(), 40, "{got:?} {stderr}");
    for i in 0..20i64 {
        assert_eq!(got[&format!("add{i}")].0, "completed", "{got:?}");
        assert_eq!(got[&format!("add{i}")].1, i + 1, "{got:?}");
        assert_eq!(got[&format!("triple{i}")].0, "completed", "{got:?}");
        assert_eq!(got[&format!("triple{i}")].1, 3 * i, "{got:?}");
    }
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // Only one worker serves `triple` now: three tasks, one running, two queued.
    assert_eq!(triple_agent.stop(), Some(143));
    let triple_agent = Agent::start_on(&url, TRIPLE, 1, &[], Stdio::null());
    wait_agents(&url, 2).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let tasks: Vec<_> = (1..=3)
        .map(|x| pool.submit(Task::<Value>::json("triple", serde_json::json!([x, 2000]))))
        .collect();
    let pid = tasks[0].started().await.expect("started");
    assert_eq!(proc_stat(pid).expect("the worker").ppid, triple_agent.pid);
    let tasks: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
    // Its agent leaves (the running one handed back): nobody serves them, they wait.
    assert_eq!(triple_agent.stop(), Some(143));
    tokio::time::sleep(Duration::from_secs(3)).await;
    for t in &tasks {
        assert!(!t.is_finished(), "a task no live agent serves ended");
    }
    let _triple_agent = Agent::start_on(&url, TRIPLE, 2, &[], Stdio::null());
    for (x, t) in (1..=3i64).zip(tasks) {
        let outcome = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("the task ends")
            .expect("the task's future");
        assert_eq!(outcome, Ok(Value::from(3 * x)));
    }
    drop(pool);
    assert_eq!(demo_agent.stop(), Some(143));
}

/// A cancel made while the broker is away ends the handle at once and reaches the broker
/// once it answers again: the worker on the agent dies then. The broker persists (it
/// comes back with its data) and the agent's lease outlasts the outage, so nothing but
/// the cancel can stop the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_made_while_the_broker_is_away_is_sent_when_it_is_back() {
    let _serial = serial().await;
    become_subreaper();
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut redis = RedisServer::start_persistent(dir.path());
    let url = redis.url();
    let agent = Agent::start_with(&url, 1, &["--lease", "120s"]);
    wait_agents(&url, 1).await;
    let pool = pool(&url, ClientOptions::default()).await;
    let running = pool.submit(demo::sleep_ms::task(120_000));
    let pid = running.started().await.expect("started");
    assert_eq!(proc_stat(pid).expect("the worker").ppid, agent.pid);
    redis.kill();
    running.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), running).await;
    assert_eq!(ended, Ok(Err(TaskError::Cancelled)));
    assert!(!dead(pid), "the worker died while the broker was away");
    redis.restart();
    wait_dead(pid, Duration::from_secs(30), "the worker's death").await;
    drop(pool);
    assert_eq!(agent.stop(), Some(143));
}

/// A fetch never returns more than the agent's free slots, though one read over several
/// queues returns up to COUNT entries from each: what is beyond goes back to the end of
/// its queue (no attempt counted), pending on nobody, and is read next by any agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_read_beyond_the_free_slots_are_handed_back() {
    let _serial = serial().await;
    let redis = RedisServer::start();
    let b = RedisBroker::connect(&redis.url(), "over", 1 << 20)
        .await
        .expect("connect");
    let names = ["add".to_owned(), "square".to_owned()];
    b.prepare(&names).await.unwrap();
    let mut ids = Vec::new();
    for (name, args) in [
        ("add", &b"[1,2]"[..]),
        ("add", b"[3,4]"),
        ("square", b"[5]"),
    ] {
        let id = Uuid::new_v4();
        let task = json_task(id, name, args);
        b.submit(&task, "submitter").await.unwrap();
        ids.push(id);
    }
    let entry_of = |id: Uuid| redis_cli(&redis, &["HGET", &format!("{{over}}:t:{id}"), "entry"]);
    let queued: Vec<String> = ids.iter().map(|id| entry_of(*id)).collect();
    // One free slot, entries in both queues: one is read, the other queue's goes back.
    let first = b
        .fetch("x", &names, 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let back = if first[0].task == Ok(ids[2]) { 0 } else { 2 };
    let back_queue = if back == 0 {
        "{over}:q:add"
    } else {
        "{over}:q:square"
    };
    assert_ne!(entry_of(ids[back]), queued[back], "a new entry at the end");
    let pending = redis_cli(&redis, &["XPENDING", back_queue, "agents"]);
    assert!(pending.starts_with('0'), "{pending}");
    // The rest, one per fetch (by another agent here), each claimed for its first attempt.
    let mut seen = vec![first[0].task.clone().unwrap()];
    for _ in 0..2 {
        let next = b
            .fetch("y", &names, 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(next.len(), 1, "{next:?}");
        let id = next[0].task.clone().unwrap();
        let claimed = b.start("y", &next[0], id).await.unwrap().expect("claimed");
        assert_eq!(claimed.attempt, 1);
        seen.push(id);
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
}
