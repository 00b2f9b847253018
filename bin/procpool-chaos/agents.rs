//! Agents mode: a private `redis-server` and K `procpool agent` processes, and the
//! faults only a cluster has: whole-agent SIGKILLs (a fresh agent replaces the dead one),
//! SIGSTOP of an agent past its lease then SIGCONT, and a broker restart on the same
//! append-only data. Also what is checked at the end: the agents stop on SIGTERM, and the
//! broker keeps nothing of a finished task past its TTL.
//!
//! Every process here is ours and addressed by pid or by its own process group, never by
//! name. Which workers an agent had when it was hit is read from `/proc` (their parent)
//! while the agent is stopped, so the set cannot change under the read.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use rand::Rng;
use rand::seq::IndexedRandom as _;

use crate::procs;

/// How long a stopped agent stays stopped: past its lease (`AgentOptions::default()`:
/// 3 s), with time for another agent's reaper (every 0.5-0.7 s) to requeue its tasks.
pub(crate) const STOP_FOR: Duration = Duration::from_secs(5);

/// How often stopped agents are checked for their SIGCONT and workers are listed.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// How long agents and the broker get to start, and agents to stop on SIGTERM.
const START_WAIT: Duration = Duration::from_secs(30);

/// What a `procpool agent` is started with.
#[derive(Clone, Debug)]
pub(crate) struct AgentCommand {
    pub(crate) procpool: PathBuf,
    pub(crate) worker: PathBuf,
    pub(crate) workers: u32,
    pub(crate) namespace: String,
    /// The run's policy flags (`--timeout`, `--grace`, `--max-rss`, `--retries`).
    pub(crate) policy: Vec<String>,
}

struct Agent {
    child: Child,
    pid: u32,
    /// Its stderr (its logs), kept for the count of late results.
    log: PathBuf,
    /// SIGSTOPped, to be continued at this time.
    stopped_until: Option<Instant>,
}

/// Counts of what was done to the cluster, for the summary.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) agents_started: u64,
    pub(crate) agent_kills: u64,
    pub(crate) agent_stops: u64,
    pub(crate) broker_restarts: u64,
    /// Longest broker outage: SIGKILL to the restarted server answering PING.
    pub(crate) broker_down: Duration,
}

/// The broker and the agents of one run.
pub(crate) struct Cluster {
    pub(crate) url: String,
    port: u16,
    dir: PathBuf,
    redis: Option<Child>,
    command: AgentCommand,
    agents: Vec<Agent>,
    /// Logs of every agent started.
    logs: Vec<PathBuf>,
    /// Every agent and worker process seen: pid -> start time (clock ticks after boot),
    /// so a recycled pid is not taken for one of them.
    pub(crate) seen: HashMap<u32, u64>,
    /// Every worker pid seen: each leads its own process group.
    pub(crate) worker_groups: HashSet<u32>,
    /// The workers of agents that were killed or stopped, as listed while stopped.
    pub(crate) lost_workers: HashSet<u32>,
    pub(crate) stats: Stats,
    last_tick: Instant,
}

/// A free TCP port on the loopback interface (the kernel's pick).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot pick a port")?;
    Ok(listener.local_addr()?.port())
}

impl Cluster {
    /// Starts the broker and `k` agents; returns once every agent is registered.
    pub(crate) async fn start(command: AgentCommand, k: u32) -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "procpool-chaos-{}-{}",
            std::process::id(),
            rand::rng().random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let port = free_port()?;
        let mut cluster = Cluster {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            dir,
            redis: None,
            command,
            agents: Vec::new(),
            logs: Vec::new(),
            seen: HashMap::new(),
            worker_groups: HashSet::new(),
            lost_workers: HashSet::new(),
            stats: Stats::default(),
            last_tick: Instant::now(),
        };
        cluster.start_redis()?;
        cluster.wait_redis().await?;
        for _ in 0..k {
            cluster.spawn_agent()?;
        }
        let pids: Vec<u32> = cluster.agents.iter().map(|a| a.pid).collect();
        cluster.wait_registered(&pids).await?;
        cluster.snapshot();
        Ok(cluster)
    }

    fn logs_hint(&self) -> String {
        format!("the agents' logs in {}", self.dir.display())
    }

    /// The first agent found exited, as its status.
    fn agent_exited(&mut self) -> Option<String> {
        self.agents.iter_mut().find_map(|a| {
            a.child
                .try_wait()
                .ok()
                .flatten()
                .map(|s| format!("pid {}: {s}", a.pid))
        })
    }

    /// `redis-server` on our port and data directory, append-only with an fsync before
    /// every reply, so a SIGKILL loses no write a client was told about.
    fn start_redis(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start redis-server (is it installed and on PATH?)")?;
        self.seen.insert(child.id(), start_time(child.id()));
        self.redis = Some(child);
        Ok(())
    }

    async fn wait_redis(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let ping = async {
                let mut conn = self.conn().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                anyhow::Ok(())
            };
            match ping.await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "redis-server on port {} did not answer (log: {})",
                        self.port,
                        self.dir.join("redis.log").display()
                    )));
                }
                Err(_) => {
                    if let Some(status) = self.redis.as_mut().and_then(|r| r.try_wait().ok()?) {
                        bail!(
                            "redis-server exited at start ({status}); log: {}",
                            self.dir.join("redis.log").display()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// A fresh connection (the server may have been restarted since the last one).
    pub(crate) async fn conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str())?;
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("connecting to the broker timed out")??;
        Ok(conn)
    }

    fn spawn_agent(&mut self) -> anyhow::Result<()> {
        let n = self.logs.len();
        let log = self.dir.join(format!("agent-{n}.log"));
        let c = &self.command;
        let child = Command::new(&c.procpool)
            .arg("agent")
            .arg("--broker")
            .arg(&self.url)
            .arg("--worker")
            .arg(&c.worker)
            .args(["--workers", &c.workers.to_string()])
            .args(["--namespace", &c.namespace])
            .args(&c.policy)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).context("cannot create an agent log")?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", c.procpool.display()))?;
        let pid = child.id();
        self.seen.insert(pid, start_time(pid));
        self.logs.push(log.clone());
        self.agents.push(Agent {
            child,
            pid,
            log,
            stopped_until: None,
        });
        self.stats.agents_started += 1;
        Ok(())
    }

    /// Lists every agent's workers (children) into `seen`; returns them by agent pid.
    pub(crate) fn snapshot(&mut self) -> HashMap<u32, Vec<u32>> {
        let agents: HashSet<u32> = self.agents.iter().map(|a| a.pid).collect();
        let mut by_agent: HashMap<u32, Vec<u32>> = HashMap::new();
        for p in procs::all() {
            if agents.contains(&p.ppid) && p.state != 'Z' {
                self.seen.entry(p.pid).or_insert(p.start);
                self.worker_groups.insert(p.pid);
                by_agent.entry(p.ppid).or_default().push(p.pid);
            }
        }
        by_agent
    }

    /// Indexes of the agents running (not stopped).
    fn running(&self) -> Vec<usize> {
        (0..self.agents.len())
            .filter(|&i| self.agents[i].stopped_until.is_none())
            .collect()
    }

    /// SIGKILLs one random worker of a random running agent; its pid, if one was found.
    pub(crate) fn kill_worker(&mut self, rng: &mut impl Rng) -> Option<u32> {
        let &i = self.running().choose(rng)?;
        let agent = self.agents[i].pid;
        let workers = self.snapshot().remove(&agent)?;
        let &pid = workers.choose(rng)?;
        // Still the agent's child: its pid cannot have been recycled meanwhile.
        if procs::stat(pid).is_some_and(|p| p.ppid == agent && p.state != 'Z') {
            // ESRCH: it died on its own meanwhile; fine.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            Some(pid)
        } else {
            None
        }
    }

    /// Stops agent `i` and records its workers as lost (listed while it cannot change
    /// them).
    fn freeze(&mut self, i: usize) {
        let pid = self.agents[i].pid;
        // Our own unreaped child: the pid is its.
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
        // SIGSTOP is asynchronous: wait until the kernel shows it stopped.
        let until = Instant::now() + Duration::from_secs(2);
        while procs::stat(pid).is_some_and(|p| !matches!(p.state, 'T' | 't'))
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let workers = self.snapshot().remove(&pid).unwrap_or_default();
        self.lost_workers.extend(workers);
    }

    /// SIGKILLs a random running agent (its workers die with it: parent-death signal)
    /// and starts a fresh one, returning once it is registered. False when no agent was
    /// running.
    ///
    /// Waiting for the registration keeps the worker kills out of the new agent's
    /// start-up: a worker killed before its handshake fails the agent's pool start (exit
    /// 2, as for a broken worker binary), which would leave the run an agent short.
    pub(crate) async fn kill_agent(&mut self, rng: &mut impl Rng) -> anyhow::Result<bool> {
        let Some(&i) = self.running().choose(rng) else {
            return Ok(false);
        };
        self.freeze(i);
        let mut agent = self.agents.remove(i);
        // Its own group holds only the agent; its workers lead groups of their own.
        let _ = killpg(Pid::from_raw(agent.pid as i32), Signal::SIGKILL);
        agent.child.wait().context("reaping a killed agent")?;
        self.stats.agent_kills += 1;
        self.spawn_agent()?;
        let pid = self.agents.last().expect("just spawned").pid;
        self.wait_registered(&[pid]).await?;
        Ok(true)
    }

    /// Waits until every agent of `pids` is in the broker's agent set (its pool is up:
    /// an agent registers after its workers' handshakes).
    async fn wait_registered(&mut self, pids: &[u32]) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let ids: Vec<String> = redis::cmd("SMEMBERS")
                .arg(format!("{{{}}}:agents", self.command.namespace))
                .query_async(&mut self.conn().await?)
                .await?;
            // An agent id ends in `-<pid>-<uuid>`.
            let registered = |pid: &u32| {
                ids.iter()
                    .any(|id| id.rsplit('-').nth(1) == Some(pid.to_string().as_str()))
            };
            if pids.iter().all(registered) {
                return Ok(());
            }
            if let Some(exit) = self.agent_exited() {
                bail!(
                    "an agent exited at start ({exit}); see {}",
                    self.logs_hint()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "agents {pids:?} not registered after {START_WAIT:?}; see {}",
                    self.logs_hint()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGSTOPs a random running agent for [`STOP_FOR`], keeping at least one running.
    /// False when there was none to spare.
    pub(crate) fn stop_agent(&mut self, rng: &mut impl Rng) -> bool {
        let running = self.running();
        if running.len() < 2 {
            return false;
        }
        let &i = running.choose(rng).expect("at least two");
        self.freeze(i);
        self.agents[i].stopped_until = Some(Instant::now() + STOP_FOR);
        self.stats.agent_stops += 1;
        true
    }

    /// Continues the stopped agents whose time is up and lists workers, at most every
    /// [`TICK`]; returns how many were continued.
    pub(crate) fn tick(&mut self) -> u64 {
        if self.last_tick.elapsed() < TICK {
            return 0;
        }
        self.last_tick = Instant::now();
        let n = self.resume(false);
        self.snapshot();
        n
    }

    /// SIGCONTs the stopped agents (all of them, or those whose time is up).
    pub(crate) fn resume(&mut self, all: bool) -> u64 {
        let now = Instant::now();
        let mut n = 0;
        for a in &mut self.agents {
            if a.stopped_until.is_some_and(|t| all || t <= now) {
                a.stopped_until = None;
                let _ = kill(Pid::from_raw(a.pid as i32), Signal::SIGCONT);
                n += 1;
            }
        }
        n
    }

    /// SIGKILLs `redis-server` and starts it again on the same port and data; returns
    /// when it answers.
    pub(crate) async fn restart_broker(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        if let Some(mut r) = self.redis.take() {
            let _ = kill(Pid::from_raw(r.id() as i32), Signal::SIGKILL);
            r.wait().context("reaping redis-server")?;
        }
        self.start_redis()?;
        self.wait_redis().await?;
        self.stats.broker_restarts += 1;
        self.stats.broker_down = self.stats.broker_down.max(started.elapsed());
        Ok(())
    }

    /// SIGTERMs every agent and reaps it; what went wrong, as violations.
    pub(crate) fn stop_agents(&mut self) -> Vec<String> {
        self.resume(true);
        let mut problems = Vec::new();
        for a in &self.agents {
            let _ = kill(Pid::from_raw(a.pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + START_WAIT;
        for mut a in std::mem::take(&mut self.agents) {
            let status = loop {
                match a.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break None,
                }
            };
            match status {
                // 143: stopped by SIGTERM, as documented.
                Some(s) if s.code() == Some(143) => {}
                Some(s) => problems.push(format!(
                    "agent {} ended with {s} on SIGTERM, not 143; the end of its log:\n{}",
                    a.pid,
                    log_tail(&a.log)
                )),
                None => {
                    problems.push(format!(
                        "agent {} still running {START_WAIT:?} after SIGTERM (log {})",
                        a.pid,
                        a.log.display()
                    ));
                    let _ = killpg(Pid::from_raw(a.pid as i32), Signal::SIGKILL);
                    let _ = a.child.wait();
                }
            }
        }
        problems
    }

    /// Lines of every agent's log that contain `needle`.
    pub(crate) fn log_lines(&self, needle: &str) -> usize {
        self.logs
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|text| text.lines().filter(|l| l.contains(needle)).count())
            .sum()
    }

    /// Every key left in the broker, with its type; the namespace's queue also with its
    /// length and pending count.
    pub(crate) async fn keys(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut conn = self.conn().await?;
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await?;
            out.push((key, kind));
        }
        Ok(out)
    }

    /// Entries in the namespace's queues (one stream per task name), and entries
    /// pending in their groups.
    pub(crate) async fn queue_depth(&self) -> anyhow::Result<(u64, u64)> {
        let mut conn = self.conn().await?;
        let ns = &self.command.namespace;
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{{{ns}}}:names"))
            .query_async(&mut conn)
            .await?;
        let (mut len, mut pending) = (0, 0);
        for name in names {
            let q = format!("{{{ns}}}:q:{name}");
            len += redis::cmd("XLEN")
                .arg(&q)
                .query_async::<u64>(&mut conn)
                .await?;
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(&q)
                .arg("agents")
                .query_async(&mut conn)
                .await?;
            if let redis::Value::Array(v) = summary
                && let Some(redis::Value::Int(n)) = v.first()
            {
                pending += *n as u64;
            }
        }
        Ok((len, pending))
    }

    /// Stops `redis-server` (SIGTERM, by pid) and removes the data directory.
    pub(crate) fn stop_broker(&mut self) {
        if let Some(mut r) = self.redis.take() {
            let _ = kill(Pid::from_raw(r.id() as i32), Signal::SIGTERM);
            let _ = r.wait();
        }
    }
}

impl Drop for Cluster {
    /// Whatever way the run ends, nothing it started outlives it.
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = killpg(Pid::from_raw(a.pid as i32), Signal::SIGKILL);
            let _ = a.child.wait();
        }
        if let Some(mut r) = self.redis.take() {
            let _ = kill(Pid::from_raw(r.id() as i32), Signal::SIGKILL);
            let _ = r.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last lines of an agent's log, for a violation (the run's directory is removed
/// when it ends).
fn log_tail(log: &std::path::Path) -> String {
    const LINES: usize = 20;
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

/// Start time of `pid` (0 if it is already gone).
fn start_time(pid: u32) -> u64 {
    procs::stat(pid).map_or(0, |p| p.start)
}

/// Which of the broker's remaining keys a finished run may keep, and why; the others are
/// violations. `ns` is the namespace.
///
/// - `{ns}:q:<name>`, the queue of the tasks named `<name>` (a stream with the consumer
///   group `agents`), and `{ns}:names`, the set of those names: the design keeps them
///   for good (a group's read position lives in its stream, and the reaper finds a dead
///   agent's entries through the set), but the queues must be empty: every entry of a
///   finished task is acked and deleted (checked by [`Cluster::queue_depth`]).
///
/// Everything else (`t:`, `e:`, `r:`, `in:`, `w:` of a task, a submitter's inbox `n:`,
/// agents' liveness keys, the agent set once every agent has left) must be gone after the
/// result TTL.
pub(crate) fn key_allowed(ns: &str, key: &str) -> bool {
    key == format!("{{{ns}}}:names") || key.starts_with(&format!("{{{ns}}}:q:"))
}
