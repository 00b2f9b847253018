//! procpool's broker mode: two `procpool agent`s with one worker each on the private
//! redis-server of `scripts/bench --broker`, and the submitter a broker-backed
//! [`procpool::Pool`] in this process (`procpool_broker::connect`). Every sample uses a
//! namespace of its own, so nothing of one sample (queued entries, results) meets the next.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use procpool::{Pool, Shutdown};
use procpool_broker::ClientOptions;
use procpool_demo_tasks as demo;
use tokio::runtime::Runtime;

use crate::params::{Group, Params};
use crate::{Outcome, median, ms, rtt_chunks, us};

/// Agents of a measurement: 2 in all, one worker each (2 worker processes, as every
/// other system has).
const AGENTS: usize = 2;

/// Tasks each agent takes ahead of its worker: 1, as the Celery peer's prefetch
/// multiplier 1 reserves one task ahead per process.
const PREFETCH: &str = "1";

pub struct BrokerSystem {
    worker: PathBuf,
    /// The `procpool` CLI, whose `agent` subcommand runs an agent.
    cli: PathBuf,
    url: String,
    samples: u64,
}

/// One `procpool agent` process (its own process group; its workers die with it through
/// their parent-death signal). Killed and reaped on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(cli: &Path, worker: &Path, url: &str, namespace: &str) -> Result<Agent> {
        use std::os::unix::process::CommandExt as _;
        let child = Command::new(cli)
            .args([
                "agent",
                "--broker",
                url,
                "--namespace",
                namespace,
                "--workers",
                "1",
                "--prefetch-tasks",
                PREFETCH,
            ])
            .arg("--worker")
            .arg(worker)
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} agent", cli.display()))?;
        Ok(Agent { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM with the default --on-signal cancel: running tasks are killed, and the
        // agent leaves the broker clean; SIGKILL if it takes too long.
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            self.kill();
        }
    }
}

/// The parent of a process (the agent that spawned a worker), from `/proc`.
fn parent_of(pid: u32) -> Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no parent pid in /proc/{pid}/stat"))
}

async fn add(pool: &Pool, a: i64) -> Result<()> {
    let v = pool.submit(demo::add::task(a, 1)).await?;
    ensure!(v == a.wrapping_add(1), "wrong sum");
    Ok(())
}

impl BrokerSystem {
    pub fn new(worker: &Path, exe: &Path, url: &str) -> BrokerSystem {
        BrokerSystem {
            worker: worker.to_owned(),
            cli: exe.with_file_name("procpool"),
            url: url.to_owned(),
            samples: 0,
        }
    }

    fn agents(&mut self) -> Result<(String, Vec<Agent>)> {
        ensure!(
            self.cli.is_file(),
            "{} not found (cargo build --release --bin procpool)",
            self.cli.display()
        );
        self.samples += 1;
        let namespace = format!("bench-{}-{}", std::process::id(), self.samples);
        let agents = (0..AGENTS)
            .map(|_| Agent::start(&self.cli, &self.worker, &self.url, &namespace))
            .collect::<Result<Vec<_>>>()?;
        Ok((namespace, agents))
    }

    /// A broker-backed pool once every agent has registered its worker.
    async fn connect(&self, namespace: &str, agents: &mut [Agent]) -> Result<Pool> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let options = ClientOptions {
                namespace: namespace.to_owned(),
                ..ClientOptions::default()
            };
            let pool = procpool_broker::connect(&self.url, options)
                .await
                .with_context(|| format!("connecting to {}", self.url))?;
            if pool.size() >= AGENTS {
                return Ok(pool);
            }
            for a in agents.iter_mut() {
                if let Ok(Some(status)) = a.child.try_wait() {
                    bail!("agent {} exited at start: {status}", a.pid());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the agents did not register in 30 s"
            );
            pool.shutdown(Shutdown::Kill).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn measure(&mut self, rt: &Runtime, g: Group, p: &Params) -> Result<Outcome> {
        if !g.is_broker() {
            return Ok(Outcome::unsupported(
                "measured by the local procpool column (the ratios use it)",
            ));
        }
        let (namespace, mut agents) = self.agents()?;
        let outcome = rt.block_on(async {
            let pool = self.connect(&namespace, &mut agents).await?;
            let out = self.measure_on(&pool, &mut agents, &namespace, g, p).await;
            pool.shutdown(Shutdown::Kill).await;
            out
        });
        drop(agents);
        outcome
    }

    async fn measure_on(
        &self,
        pool: &Pool,
        agents: &mut [Agent],
        namespace: &str,
        g: Group,
        p: &Params,
    ) -> Result<Outcome> {
        for i in 0..50 {
            add(pool, i).await?;
        }
        match g {
            Group::BrokerRtt => {
                let mut chunks = Vec::new();
                for range in rtt_chunks(p.broker_rtt_n) {
                    let (t, len) = (Instant::now(), range.end - range.start);
                    for i in range {
                        add(pool, i as i64).await?;
                    }
                    chunks.push(us(t.elapsed()) / len as f64);
                }
                Ok(Outcome::one("broker_rtt_us", median(chunks)))
            }
            Group::BrokerTput => {
                let t = Instant::now();
                let handles: Vec<_> = (0..p.broker_tput_n as i64)
                    .map(|i| (i, pool.submit(demo::add::task(i, 1))))
                    .collect();
                for (i, h) in handles {
                    ensure!(h.await? == i + 1, "wrong sum");
                }
                Ok(Outcome::one(
                    "broker_tput_per_s",
                    p.broker_tput_n as f64 / t.elapsed().as_secs_f64(),
                ))
            }
            Group::RequeueAfterKill => {
                let mut times = Vec::new();
                for _ in 0..p.requeue_k {
                    let handle = pool.submit(demo::sleep_ms::task(600_000));
                    let first = handle
                        .started()
                        .await
                        .context("the long task never started")?;
                    let agent_pid = parent_of(first)?;
                    let i = agents
                        .iter()
                        .position(|a| a.pid() == agent_pid)
                        .with_context(|| format!("worker {first} is not a child of an agent"))?;
                    agents[i].kill();
                    let t = Instant::now();
                    let deadline = t + Duration::from_secs(60);
                    // The handle's worker pid changes when another agent starts the task.
                    while handle.worker_pid().is_none_or(|pid| pid == first) {
                        ensure!(
                            Instant::now() < deadline,
                            "the task did not start elsewhere within 60 s"
                        );
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    times.push(ms(t.elapsed()));
                    handle.cancel();
                    let _ = handle.await;
                    // The killed agent's place is taken by a fresh one for the next kill.
                    agents[i] = Agent::start(&self.cli, &self.worker, &self.url, namespace)?;
                    self.connect(namespace, agents)
                        .await?
                        .shutdown(Shutdown::Kill)
                        .await;
                }
                Ok(Outcome::one(
                    "requeue_after_kill_ms",
                    times.iter().sum::<f64>() / times.len() as f64,
                ))
            }
            _ => unreachable!("local groups are answered in measure"),
        }
    }
}
