//! `procpool-chaos`: the pool's promise under fire. It runs N tasks through the library
//! (`procpool::Pool` on the `procpool-demo` worker) with a chosen share of faults: tasks
//! that segfault, abort, panic, exit, hang past their timeout or blow past `max_rss`, and
//! events from outside: SIGKILLs of random workers and storms of cancels. Then it checks
//! that every task got exactly one verdict, the right one (the exact value for a good
//! task, unless a cancel or a kill legitimately got there first), that the pool is idle
//! and healthy, and that no process is left. It prints a summary table and exits non-zero
//! on any violation.
//!
//! With `--agents K` the same tasks go through a private `redis-server` to K `procpool
//! agent` processes (the broker mode), submitted with the Rust broker client, and the
//! cluster's own faults join in: whole-agent SIGKILLs, an agent SIGSTOPped past its lease,
//! a broker restart. The cluster lives in [`agents`].
//!
//! `scripts/chaos` builds it in release and runs it; `tests/chaos.rs` runs a short
//! configuration in CI. The verdict rules live in [`plan`], the process checks in
//! [`procs`], the table in [`report`].

mod agents;
mod plan;
mod procs;
mod report;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use procpool::{Pool, RetryPolicy, Shutdown};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::agents::{AgentCommand, Cluster};
use crate::plan::{AnyHandle, Event, Finished, Limits, Planned};
use crate::report::Tally;

/// Deadline of every task that is not meant to hang: a good task stuck this long is a
/// violation (reported as `timed_out`), not a hung run.
const SAFETY_TIMEOUT: Duration = Duration::from_secs(30);

/// With tasks in flight and none finishing for this long, the run is declared stuck.
const STALL: Duration = Duration::from_secs(60);

/// How often a long run reports its progress on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How long a killed process may take to disappear before it counts as left behind.
const SETTLE: Duration = Duration::from_secs(1);

/// Runs tasks with injected faults through a procpool pool and checks every verdict.
#[derive(Debug, Parser)]
#[command(
    name = "procpool-chaos",
    version,
    after_help = "The pool's logs go to stderr as RUST_LOG asks, e.g. \
                  RUST_LOG=procpool_core=debug shows every retry with its cause."
)]
struct Args {
    /// Tasks to run.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    tasks: usize,

    /// Share of the tasks that are faults, in percent. A fault is, evenly, one of:
    /// segfault, abort, panic, exit, hang past its timeout, memory bomb past --max-rss,
    /// SIGKILL of a random worker, cancel of 1-5 random in-flight tasks.
    #[arg(long, value_name = "P", default_value_t = 30,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    fault_percent: u8,

    /// Worker processes.
    #[arg(long, value_name = "W", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: u32,

    /// Seed of the fault plan (which task is what). Default: from the clock, and printed,
    /// so a failing run's plan can be replayed (the timing of course differs).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,

    /// Deadline of the hanging tasks, e.g. `200ms`.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_timeout)]
    timeout: Duration,

    /// Time between the SIGTERM and the SIGKILL of a timed-out task; `0` kills at once.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    grace: Duration,

    /// Resident memory limit of each worker, e.g. `128MiB`; memory bombs allocate four
    /// times as much (at least 256 MiB more).
    #[arg(long, value_name = "SIZE", default_value = "128MiB", value_parser = parse_size)]
    max_rss: u64,

    /// Crash-class retries of every task (default backoff: 50 ms doubling, jitter). A
    /// crashing fault then must run exactly 1 + N times; a good task hit by a worker kill
    /// is retried and must give its value.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,

    /// Worker binary. Default: `procpool-demo` next to this executable.
    #[arg(long, value_name = "PATH")]
    worker: Option<PathBuf>,

    /// Tasks submitted and not yet finished, at most. Default: 4 per worker.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    in_flight: Option<u64>,

    /// Run the tasks over K `procpool agent` processes (each with --workers workers) on
    /// a private `redis-server`, submitted through the broker client, with agent kills,
    /// agent stops and a broker restart besides the faults above.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(2..=64))]
    agents: Option<u32>,

    /// Agents mode: whole-agent SIGKILLs, spread over the run (each dead agent is
    /// replaced by a fresh one).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "agents")]
    agent_kills: usize,

    /// Agents mode: SIGSTOPs of an agent for 5 s (past its 3 s lease), then SIGCONT.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "agents")]
    agent_stops: usize,

    /// Agents mode: SIGKILLs of the broker, restarted on the same append-only data.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "agents")]
    broker_restarts: usize,

    /// Agents mode: how long the broker keeps a finished task's result and events; the
    /// run waits this long past its last verdict, then checks that they are gone.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_timeout,
          requires = "agents")]
    result_ttl: Duration,

    /// Agents mode: attempts lost with their agent before a task ends `lost`.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "agents",
          value_parser = clap::value_parser!(u32).range(1..))]
    lost_budget: u32,

    /// Agents mode: the `procpool` binary. Default: next to this executable.
    #[arg(long, value_name = "PATH", requires = "agents")]
    procpool: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration ({e}); write it like 200ms, 5s or 2m"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("not a size ({e}); write it like 128MiB, 1GB or 300M"))?;
    match size.as_u64() {
        0 => Err("must be larger than zero".into()),
        n => Ok(n),
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // Its default report of a write error is an `eprintln!`, which panics when
        // stderr is closed.
        .log_internal_errors(false)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let violations = runtime.block_on(chaos(args))?;
    Ok(if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the whole configuration; returns the number of violations.
async fn chaos(args: Args) -> anyhow::Result<usize> {
    let worker = match &args.worker {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name("procpool-demo"),
    };
    if !worker.is_file() {
        bail!(
            "no worker binary at {} (build it with `cargo build --bin procpool-demo`, or pass --worker)",
            worker.display()
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()).rotate_left(32)
    });
    let limits = Limits {
        fault_percent: args.fault_percent,
        timeout: args.timeout,
        max_rss: args.max_rss,
        retries: args.retries,
        remote: args.agents.is_some(),
        lost_budget: args.lost_budget,
    };
    let workers = args.workers as usize * args.agents.map_or(1, |k| k as usize);
    let window = args.in_flight.map_or(workers * 4, |n| n as usize);
    let agents_note = match args.agents {
        Some(k) => format!(
            " over {k} agents of {} ({} agent kills, {} agent stops, {} broker restarts, \
             result TTL {})",
            args.workers,
            args.agent_kills,
            args.agent_stops,
            args.broker_restarts,
            humantime::format_duration(args.result_ttl)
        ),
        None => String::new(),
    };
    println!(
        "procpool-chaos: {} tasks, {}% faults, {} workers{agents_note}, seed {seed}, timeout {}, \
         grace {}, max-rss {} MiB, retries {}, {} in flight, worker {}",
        args.tasks,
        args.fault_percent,
        workers,
        humantime::format_duration(args.timeout),
        humantime::format_duration(args.grace),
        args.max_rss >> 20,
        args.retries,
        window,
        worker.display(),
    );

    let fds_before = procs::open_fds();
    let namespace = format!("chaos-{seed:x}");
    let (pool, cluster) = match args.agents {
        None => (local_pool(&args, &worker, workers).await?, None),
        Some(k) => {
            let procpool = match &args.procpool {
                Some(path) => path.clone(),
                None => std::env::current_exe()
                    .context("cannot find this executable")?
                    .with_file_name("procpool"),
            };
            if !procpool.is_file() {
                bail!(
                    "no procpool binary at {} (build it with `cargo build --bin procpool`, or pass --procpool)",
                    procpool.display()
                );
            }
            let command = AgentCommand {
                procpool,
                worker: worker.clone(),
                workers: args.workers,
                namespace: namespace.clone(),
                policy: vec![
                    format!("--timeout={}", humantime::format_duration(SAFETY_TIMEOUT)),
                    format!("--grace={}", humantime::format_duration(args.grace)),
                    format!("--max-rss={}", args.max_rss),
                    format!("--retries={}", args.retries),
                ],
            };
            let cluster = Cluster::start(command, k).await?;
            let options = procpool_broker::ClientOptions {
                namespace: namespace.clone(),
                lost_budget: args.lost_budget,
                result_ttl: args.result_ttl,
                ..procpool_broker::ClientOptions::default()
            };
            let pool = procpool_broker::connect(&cluster.url, options)
                .await
                .context("cannot connect to the broker")?;
            (pool, Some(cluster))
        }
    };
    let schedule = agent_schedule(&args);

    let mut run = Run {
        pool,
        limits,
        tally: Tally::default(),
        in_flight: JoinSet::new(),
        cancels: BTreeMap::new(),
        kills: Arc::new(AtomicU64::new(0)),
        agent_events: Arc::new(AtomicU64::new(0)),
        cluster,
        last_verdict: Instant::now(),
        killed: HashSet::new(),
        dying: Vec::new(),
        groups: HashSet::new(),
        seen: vec![false; args.tasks],
        judged: 0,
        events: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
        started: Instant::now(),
        last_progress: Instant::now(),
    };
    let started = run.started;
    let mut plan_rng = StdRng::seed_from_u64(seed);
    let mut stuck = false;
    for index in 0..args.tasks {
        while run.in_flight.len() >= window && !stuck {
            stuck = !run.collect_one().await;
        }
        if stuck {
            break;
        }
        let mut planned = plan::draw(&mut plan_rng, index, &limits);
        if let Some(&event) = schedule.get(&index) {
            planned.event = Some(event);
        }
        run.submit(planned).await;
    }
    while !run.in_flight.is_empty() && !stuck {
        stuck = !run.collect_one().await;
    }
    let elapsed = started.elapsed();
    run.finish(stuck).await;

    let Run {
        pool,
        mut tally,
        mut groups,
        cluster,
        last_verdict,
        ..
    } = run;
    let worker_starts = pool.status().await.worker_starts;
    pool.shutdown(if stuck {
        Shutdown::Kill
    } else {
        Shutdown::Drain
    })
    .await;
    drop(pool);
    let left = match cluster {
        None => procs::leftovers_after(&groups, SETTLE),
        Some(mut cluster) => {
            cluster_end(
                &mut cluster,
                &mut tally,
                &namespace,
                &args,
                last_verdict,
                stuck,
            )
            .await;
            groups.extend(&cluster.worker_groups);
            let left = procs::leftovers_seen_after(&cluster.seen, &groups, SETTLE * 3);
            drop(cluster);
            left
        }
    };
    for p in &left {
        tally.violation(format!(
            "process left behind: pid {} ({}) state {} ppid {} group {}",
            p.pid, p.comm, p.state, p.ppid, p.pgrp
        ));
    }
    // The broker client's connections close from tasks of this runtime: let them run.
    let settle_until = Instant::now() + SETTLE;
    let mut fds_after = procs::open_fds();
    while fds_after > fds_before && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        fds_after = procs::open_fds();
    }
    if fds_after > fds_before {
        tally.violation(format!(
            "descriptors leaked: {fds_before} open before the pool, {fds_after} after it: {}",
            procs::fd_targets().join(" ")
        ));
    }

    print!("{}", tally.render(elapsed, worker_starts));
    println!(
        "processes left: {} (of {} worker groups seen); descriptors: {fds_before} before the \
         pool, {fds_after} after",
        left.len(),
        groups.len()
    );
    let n = tally.violations.len();
    if n == 0 {
        println!("PASS: every task had exactly one verdict, the right one; nothing left behind");
    } else {
        println!("FAIL: {n} violations (seed {seed})");
    }
    Ok(n)
}

/// The local pool of the single-host mode.
async fn local_pool(args: &Args, worker: &std::path::Path, workers: usize) -> anyhow::Result<Pool> {
    let mut builder = Pool::builder();
    builder
        .worker(worker)
        .workers(workers)
        .timeout(SAFETY_TIMEOUT)
        .grace(args.grace)
        .max_rss(args.max_rss)
        .retry(RetryPolicy::new(args.retries));
    tokio::task::spawn_blocking(move || builder.build())
        .await
        .context("the pool start-up thread panicked")?
        .context("cannot start the pool")
}

/// Agents mode: which task's submission each agent-level event follows, spread evenly
/// over the run (the broker restart in the middle), none in the last tenth so the run
/// ends with every agent up.
fn agent_schedule(args: &Args) -> BTreeMap<usize, Event> {
    let mut schedule = BTreeMap::new();
    if args.agents.is_none() || args.tasks < 10 {
        return schedule;
    }
    let span = args.tasks * 9 / 10;
    let mut place = |fraction: f64, event: Event| {
        let mut at = ((span as f64 * fraction) as usize).min(span);
        while schedule.contains_key(&at) {
            at += 1;
        }
        schedule.insert(at, event);
    };
    let spread = |n: usize, shift: f64| (0..n).map(move |i| (i as f64 + shift) / n as f64);
    for f in spread(args.agent_kills, 0.25) {
        place(f, Event::KillAgent);
    }
    for f in spread(args.agent_stops, 0.6) {
        place(f, Event::StopAgent);
    }
    for f in spread(args.broker_restarts, 0.5) {
        place(f, Event::RestartBroker);
    }
    schedule
}

/// Agents mode, after the last verdict: the agents stop on SIGTERM, the broker forgets
/// every finished task after its TTL, and what the agents logged about stale attempts.
async fn cluster_end(
    cluster: &mut Cluster,
    tally: &mut Tally,
    namespace: &str,
    args: &Args,
    last_verdict: Instant,
    stuck: bool,
) {
    for why in cluster.stop_agents() {
        tally.violation(why);
    }
    let s = &cluster.stats;
    tally.notes.push(format!(
        "agents: {} started, {} SIGKILLed (and replaced), {} SIGSTOPped for {:?}; broker: \
         {} restarts, down at most {:.0} ms",
        s.agents_started,
        s.agent_kills,
        s.agent_stops,
        agents::STOP_FOR,
        s.broker_restarts,
        s.broker_down.as_secs_f64() * 1000.0
    ));
    tally.notes.push(format!(
        "stale attempts (agents' logs): {} late results rejected, {} leases lost (worker \
         killed, outcome dropped), {} times an agent killed its tasks for want of a renewal",
        cluster.log_lines("late result rejected"),
        cluster.log_lines("lease lost: worker killed"),
        cluster.log_lines("could not renew the lease in time"),
    ));
    if stuck {
        return;
    }
    // Past the TTL of the last task's keys, and past the leases of the agents killed
    // near the end (the agent set lives as long as their last lease); a second more for
    // the server's expiry cycle.
    let leases_passed = Instant::now() + procpool_broker::AgentOptions::default().lease;
    let ttl_passed = (last_verdict + args.result_ttl).max(leases_passed) + Duration::from_secs(1);
    tokio::time::sleep_until(ttl_passed.into()).await;
    match cluster.queue_depth().await {
        Ok((0, 0)) => {}
        Ok((len, pending)) => tally.violation(format!(
            "the task queues still hold {len} entries ({pending} pending) after the run"
        )),
        Err(e) => tally.violation(format!("cannot read the task queues: {e:#}")),
    }
    match cluster.keys().await {
        Ok(keys) => {
            let (kept, extra): (Vec<_>, Vec<_>) = keys
                .into_iter()
                .partition(|(k, _)| agents::key_allowed(namespace, k));
            tally.notes.push(format!(
                "broker keys {} after the result TTL: {} kept by design ({}), {} others",
                humantime::format_duration(args.result_ttl),
                kept.len(),
                kept.iter()
                    .map(|(k, t)| format!("{k} {t}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                extra.len()
            ));
            for (key, kind) in extra.iter().take(10) {
                tally.violation(format!(
                    "broker key left after the result TTL: {key} ({kind})"
                ));
            }
            if extra.len() > 10 {
                tally.violation(format!(
                    "... and {} more broker keys left",
                    extra.len() - 10
                ));
            }
        }
        Err(e) => tally.violation(format!("cannot list the broker's keys: {e:#}")),
    }
    cluster.stop_broker();
}

/// The state of one chaos run.
struct Run {
    pool: Pool,
    /// Agents mode: the broker and the agents.
    cluster: Option<Cluster>,
    /// Agents mode: agent kills, stops (and continues) and broker restarts so far.
    agent_events: Arc<AtomicU64>,
    last_verdict: Instant,
    limits: Limits,
    tally: Tally,
    in_flight: JoinSet<Finished>,
    /// Senders that cancel an in-flight task, by task index.
    cancels: BTreeMap<usize, oneshot::Sender<()>>,
    /// Worker SIGKILLs sent so far (read by the task futures when they end).
    kills: Arc<AtomicU64>,
    /// Pids SIGKILLed from outside.
    killed: HashSet<u32>,
    /// Those of them not yet reaped by the pool, as last checked.
    dying: Vec<u32>,
    /// Every worker pid seen: each leads its own process group.
    groups: HashSet<u32>,
    /// Tasks that got their verdict, by index, and how many.
    seen: Vec<bool>,
    judged: usize,
    events: StdRng,
    started: Instant,
    last_progress: Instant,
}

impl Run {
    /// Submits a planned task, then fires the event that rides on it.
    async fn submit(&mut self, planned: Planned) {
        let handle = plan::submit(&self.pool, &planned.kind, self.limits.timeout);
        let (tx, rx) = oneshot::channel();
        self.cancels.insert(planned.index, tx);
        let event = planned.event;
        // Counted here, not when `drive` first runs: the kill that rides on this task may
        // be sent before the spawned future is polled. Kills of workers not yet reaped
        // count too: the pool may hand this task to such a worker before it sees the death.
        self.dying.retain(|&pid| procs::is_own_child(pid));
        let kills_at_submit = self.kills.load(Ordering::SeqCst) - self.dying.len() as u64;
        let counters = Counters {
            kills: self.kills.clone(),
            kills_at_submit,
            agent_events: self.agent_events.clone(),
            agent_events_at_submit: self.agent_events.load(Ordering::SeqCst),
        };
        self.in_flight.spawn(drive(planned, handle, rx, counters));
        match event {
            None => {}
            Some(Event::KillWorker) => self.kill_random_worker().await,
            Some(Event::CancelStorm(n)) => self.cancel_storm(n),
            Some(event) => self.cluster_event(event).await,
        }
    }

    /// An agent-level event (agents mode). Counted before it happens: a task that ends
    /// in between is only judged more leniently.
    async fn cluster_event(&mut self, event: Event) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        self.agent_events.fetch_add(1, Ordering::SeqCst);
        let done = match event {
            Event::KillAgent => cluster.kill_agent(&mut self.events).await,
            Event::StopAgent => Ok(cluster.stop_agent(&mut self.events)),
            Event::RestartBroker => cluster.restart_broker().await.map(|()| true),
            Event::KillWorker | Event::CancelStorm(_) => Ok(true),
        };
        // The restarted broker or agent is there now; tasks submitted from here on may
        // still meet the aftermath.
        self.agent_events.fetch_add(1, Ordering::SeqCst);
        match done {
            Ok(true) => {}
            Ok(false) => self
                .tally
                .notes
                .push(format!("{event:?}: no agent to spare, skipped")),
            Err(e) => self.tally.violation(format!("{event:?} failed: {e:#}")),
        }
    }

    /// SIGKILLs one random live worker, from outside the pool.
    async fn kill_random_worker(&mut self) {
        if let Some(cluster) = &mut self.cluster {
            match cluster.kill_worker(&mut self.events) {
                Some(pid) => {
                    self.killed.insert(pid);
                    self.kills.fetch_add(1, Ordering::SeqCst);
                    self.tally.kills_sent += 1;
                }
                None => self.tally.kills_skipped += 1,
            }
            return;
        }
        let pids = self.pool.worker_pids().await;
        self.groups.extend(&pids);
        match pids.choose(&mut self.events) {
            // Only a live, unreaped child of ours: its pid cannot belong to anyone else.
            Some(&pid) if procs::is_own_child(pid) => {
                self.killed.insert(pid);
                self.dying.push(pid);
                self.kills.fetch_add(1, Ordering::SeqCst);
                self.tally.kills_sent += 1;
                // ESRCH: it died on its own meanwhile; fine.
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            _ => self.tally.kills_skipped += 1,
        }
    }

    /// Cancels up to `n` random in-flight tasks at once.
    fn cancel_storm(&mut self, n: usize) {
        self.tally.storms += 1;
        let keys: Vec<usize> = self.cancels.keys().copied().collect();
        let chosen: Vec<usize> = keys.choose_multiple(&mut self.events, n).copied().collect();
        for index in chosen {
            if let Some(tx) = self.cancels.remove(&index)
                && tx.send(()).is_ok()
            {
                self.tally.cancels_sent += 1;
            }
        }
    }

    /// Waits for one verdict and judges it; false if the run is stuck.
    async fn collect_one(&mut self) -> bool {
        let stall_at = Instant::now() + STALL;
        // Agents mode: wake every tick to continue stopped agents on time.
        let wait = if self.cluster.is_some() {
            agents::TICK
        } else {
            STALL
        };
        let joined = loop {
            if let Some(cluster) = &mut self.cluster {
                let resumed = cluster.tick();
                self.agent_events.fetch_add(resumed, Ordering::SeqCst);
            }
            match tokio::time::timeout(wait, self.in_flight.join_next()).await {
                Ok(Some(joined)) => break joined,
                Ok(None) => return true,
                Err(_) if Instant::now() < stall_at => {}
                Err(_) => {
                    let status = self.pool.status().await;
                    self.tally.violation(format!(
                        "stuck: no verdict for {STALL:?} with {} tasks in flight; pool {status:?}",
                        self.in_flight.len()
                    ));
                    return false;
                }
            }
        };
        self.last_verdict = Instant::now();
        let f = match joined {
            Ok(f) => f,
            Err(e) => {
                self.tally.violation(format!("a task's driver failed: {e}"));
                return true;
            }
        };
        let index = f.planned.index;
        self.cancels.remove(&index);
        self.groups.extend(f.worker_pid);
        let no_lost_workers = HashSet::new();
        let lost_workers = self
            .cluster
            .as_ref()
            .map_or(&no_lost_workers, |c| &c.lost_workers);
        if std::mem::replace(&mut self.seen[index], true) {
            self.tally
                .violation(format!("task {index}: a second verdict"));
        }
        let verdict = plan::judge(&f, &self.limits, &self.killed, lost_workers).map_err(|why| {
            format!(
                "task {index} ({:?}, attempts {}, worker {:?}, cancel sent: {}, kills meanwhile: {}, \
                 agent events meanwhile: {}): {why}",
                f.planned.kind,
                f.attempts,
                f.worker_pid,
                f.cancel_requested,
                f.kills_during,
                f.agent_events_during
            )
        });
        self.tally.task(
            f.planned.kind.name(),
            plan::outcome_name(&f.outcome),
            verdict,
            f.attempts,
        );
        self.judged += 1;
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            eprintln!(
                "procpool-chaos: {:.0} s: {} of {} verdicts, {} violations",
                self.started.elapsed().as_secs_f64(),
                self.judged,
                self.seen.len(),
                self.tally.violations.len()
            );
        }
        true
    }

    /// End-of-run checks: every task judged, the pool idle and healthy.
    async fn finish(&mut self, stuck: bool) {
        self.groups.extend(self.pool.worker_pids().await);
        if stuck {
            self.in_flight.abort_all();
            return;
        }
        let missing = self.seen.iter().filter(|s| !**s).count();
        if missing > 0 {
            self.tally
                .violation(format!("{missing} tasks got no verdict"));
        }
        // A verdict can reach its handle a moment before the dispatcher hears that the
        // worker is free (or gone): give the pool a second to settle.
        let idle = |s: &procpool::pool::PoolStatus| s.busy == 0 && s.queued == 0 && s.retrying == 0;
        let settle_until = Instant::now() + SETTLE;
        let mut status = self.pool.status().await;
        while !idle(&status) && Instant::now() < settle_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
            status = self.pool.status().await;
        }
        if !idle(&status) {
            self.tally.violation(format!(
                "the pool is not idle after every verdict: {status:?}"
            ));
        }
        if let Some(why) = &status.unhealthy {
            self.tally
                .violation(format!("the pool is unhealthy at the end: {why}"));
        }
    }
}

/// The run's event counters, and their values when a task was submitted.
struct Counters {
    kills: Arc<AtomicU64>,
    kills_at_submit: u64,
    agent_events: Arc<AtomicU64>,
    agent_events_at_submit: u64,
}

/// Waits for one task's verdict, cancelling it if a storm picks it meanwhile.
async fn drive(
    planned: Planned,
    mut handle: AnyHandle,
    mut cancel: oneshot::Receiver<()>,
    counters: Counters,
) -> Finished {
    let mut cancel_requested = false;
    let mut listening = true;
    let outcome = loop {
        tokio::select! {
            outcome = &mut handle => break outcome,
            picked = &mut cancel, if listening => {
                listening = false;
                // Err: the run loop dropped the sender without picking this task.
                if picked.is_ok() {
                    cancel_requested = true;
                    handle.cancel();
                }
            }
        }
    };
    Finished {
        planned,
        outcome,
        attempts: handle.attempts(),
        worker_pid: handle.worker_pid(),
        cancel_requested,
        kills_during: counters.kills.load(Ordering::SeqCst) - counters.kills_at_submit,
        agent_events_during: counters.agent_events.load(Ordering::SeqCst)
            - counters.agent_events_at_submit,
    }
}
