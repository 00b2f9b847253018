//! procpool through its public API only: `procpool::Pool`, the typed demo tasks, the
//! `procpool-demo` worker binary. The `procpool` column runs the pool on the bench's own
//! runtime (`PoolBuilder::start`), as a tokio application would; `procpool_build`, not
//! run by default, measures the same on the pool's own supervisor thread (`build`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use procpool::{Bytes, Pool, PoolBuilder, Shutdown};
use procpool_demo_tasks as demo;
use tokio::runtime::Runtime;

use crate::params::{Group, Params};
use crate::sys;
use crate::{Outcome, median, ms, rtt_chunks, us};

/// Where the pool runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On the caller's runtime: `PoolBuilder::start`.
    Start,
    /// On its own supervisor thread: `PoolBuilder::build`.
    Build,
}

impl Mode {
    async fn open(self, b: &PoolBuilder) -> Result<Pool> {
        Ok(match self {
            Mode::Start => b.start().await?,
            Mode::Build => b.build()?,
        })
    }
}

pub struct Procpool {
    worker: PathBuf,
    /// `PoolBuilder::max_rss` for the pools measured here (`--max-rss`), so the cost of
    /// the memory checks can be read beside the floors.
    max_rss: Option<u64>,
    exe: PathBuf,
    mode: Mode,
    /// The `procpool` command line over the same worker (measured in `procpool` only).
    cli: crate::cli::Cli,
}

/// Stops a measured pool and waits until every worker is reaped, so that nothing of it
/// runs on into the next system's measurement.
async fn close(pool: Pool) {
    pool.shutdown(Shutdown::Kill).await;
}

fn builder(worker: &Path, max_rss: Option<u64>) -> PoolBuilder {
    let mut b = Pool::builder();
    b.worker(worker).workers(2);
    if let Some(bytes) = max_rss {
        b.max_rss(bytes);
    }
    b
}

async fn add(pool: &Pool, a: i64) -> Result<()> {
    let v = pool.submit(demo::add::task(a, 1)).await?;
    ensure!(v == a.wrapping_add(1), "wrong sum");
    Ok(())
}

/// Waits until the pool has `idle` idle workers, none starting, and (if given) at least
/// `starts` worker starts behind it.
async fn settle(pool: &Pool, idle: usize, starts: Option<u64>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = pool.status().await;
        if s.idle == idle && s.starting == 0 && starts.is_none_or(|n| s.worker_starts >= n) {
            return Ok(());
        }
        if let Some(why) = s.unhealthy {
            bail!("pool unhealthy: {why}");
        }
        ensure!(Instant::now() < deadline, "pool did not settle: {s:?}");
        tokio::task::yield_now().await;
    }
}

impl Procpool {
    pub fn new(
        worker: &Path,
        max_rss: Option<u64>,
        exe: &Path,
        cli: &Path,
        mode: Mode,
    ) -> Procpool {
        Procpool {
            worker: worker.to_owned(),
            max_rss,
            exe: exe.to_owned(),
            mode,
            cli: crate::cli::Cli::new(cli, worker),
        }
    }

    pub fn measure(&mut self, rt: &Runtime, g: Group, p: &Params) -> Result<Outcome> {
        match g {
            Group::Queued => return self.queued(p),
            // The command line starts its own pool the same way whatever this column's
            // mode: measured once.
            Group::CliJobs | Group::CliRtt if self.mode == Mode::Build => {
                return Ok(Outcome::unsupported("measured in the procpool column"));
            }
            Group::CliJobs => return Ok(Outcome::one("cli_jobs_per_s", self.cli.jobs_per_s(p)?)),
            Group::CliRtt => return Ok(Outcome::one("cli_rtt_us", self.cli.rtt_us(p)?)),
            _ => {}
        }
        rt.block_on(self.measure_async(g, p))
    }

    async fn measure_async(&mut self, g: Group, p: &Params) -> Result<Outcome> {
        let (w, max_rss) = (&self.worker, self.max_rss);
        let mode = self.mode;
        match g {
            Group::Rtt => {
                let pool = mode.open(&builder(w, max_rss)).await?;
                for i in 0..100 {
                    add(&pool, i).await?;
                }
                let mut chunks = Vec::new();
                for range in rtt_chunks(p.rtt_n) {
                    let (t, len) = (Instant::now(), range.end - range.start);
                    for i in range {
                        add(&pool, i as i64).await?;
                    }
                    chunks.push(us(t.elapsed()) / len as f64);
                }
                close(pool).await;
                Ok(Outcome::one("rtt_us", median(chunks)))
            }
            Group::TputStrict => {
                let pool = mode.open(&builder(w, max_rss)).await?;
                let v = throughput(&pool, p.tput_n).await?;
                close(pool).await;
                Ok(Outcome::one("tput_strict_per_s", v))
            }
            Group::TputWindow => {
                // `prefetch(k)` keeps k tasks queued in a busy worker beside the running one.
                let pool = mode
                    .open(builder(w, max_rss).prefetch(p.window as usize - 1))
                    .await?;
                let v = throughput(&pool, p.window_n).await?;
                close(pool).await;
                Ok(Outcome::one("tput_window_per_s", v))
            }
            Group::SpawnReady => {
                let mut total = Duration::ZERO;
                for _ in 0..p.spawn_k {
                    let t = Instant::now();
                    let pool = mode.open(&builder(w, max_rss)).await?;
                    add(&pool, 1).await?;
                    total += t.elapsed();
                    close(pool).await;
                }
                Ok(Outcome::one("spawn_ready_ms", ms(total) / p.spawn_k as f64))
            }
            Group::FreshProcess => {
                let pool = mode
                    .open(builder(w, max_rss).max_tasks_per_worker(1))
                    .await?;
                let before = pool.status().await.worker_starts;
                let t = Instant::now();
                let handles: Vec<_> = (0..p.fresh_n)
                    .map(|i| pool.submit(demo::add::task(i as i64, 1)))
                    .collect();
                for (i, h) in handles.into_iter().enumerate() {
                    ensure!(h.await? == i as i64 + 1, "wrong sum");
                }
                let v = p.fresh_n as f64 / t.elapsed().as_secs_f64();
                let starts = pool.status().await.worker_starts - before;
                ensure!(
                    starts + 2 >= p.fresh_n,
                    "only {starts} worker starts for {} tasks",
                    p.fresh_n
                );
                close(pool).await;
                Ok(Outcome::one("fresh_process_per_s", v))
            }
            Group::Cancel => {
                let pool = mode.open(&builder(w, max_rss)).await?;
                add(&pool, 1).await?;
                let mut resolve = Duration::ZERO;
                let mut replace = Duration::ZERO;
                for _ in 0..p.cancel_k {
                    settle(&pool, 2, None).await?;
                    let starts = pool.status().await.worker_starts;
                    let mut h = pool.submit(demo::sleep_ms::task(60_000));
                    let pid = h.started().await.context("the sleep never started")?;
                    let t = Instant::now();
                    h.cancel();
                    let out = (&mut h).await;
                    let t1 = t.elapsed();
                    settle(&pool, 2, Some(starts + 1)).await?;
                    let t2 = t.elapsed();
                    ensure!(
                        matches!(out, Err(ref e) if e.is_cancelled()),
                        "cancel gave {out:?}"
                    );
                    ensure!(
                        !pool.worker_pids().await.contains(&pid),
                        "the cancelled worker is still listed"
                    );
                    resolve += t1;
                    replace += t2;
                }
                close(pool).await;
                Ok(Outcome::many(vec![
                    ("cancel_resolve_ms", ms(resolve) / p.cancel_k as f64),
                    ("cancel_replace_ms", ms(replace) / p.cancel_k as f64),
                ]))
            }
            Group::Crash => {
                let pool = mode.open(&builder(w, max_rss)).await?;
                add(&pool, 1).await?;
                let mut total = Duration::ZERO;
                for _ in 0..p.crash_k {
                    settle(&pool, 2, None).await?;
                    let t = Instant::now();
                    let out = pool.submit(demo::segfault::task()).await;
                    total += t.elapsed();
                    match out {
                        Err(e) if e.is_crash() && e.exit_signal() == Some(libc::SIGSEGV) => {}
                        other => bail!("segfault gave {other:?}"),
                    }
                }
                close(pool).await;
                Ok(Outcome::one(
                    "crash_detect_ms",
                    ms(total) / p.crash_k as f64,
                ))
            }
            Group::Blob => {
                let pool = mode.open(&builder(w, max_rss)).await?;
                let n = p.blob_bytes;
                let one = || async {
                    let b: Bytes = pool.submit(demo::bytes::task(n)).await?;
                    ensure!(b.len() as u64 == n, "blob of {} bytes", b.len());
                    anyhow::Ok(())
                };
                one().await?;
                let t = Instant::now();
                for _ in 0..p.blob_k {
                    one().await?;
                }
                let secs = t.elapsed().as_secs_f64();
                close(pool).await;
                Ok(Outcome::one(
                    "blob_mb_per_s",
                    (n * p.blob_k) as f64 / (1 << 20) as f64 / secs,
                ))
            }
            Group::IdleRss => {
                let pool = mode.open(&builder(w, max_rss)).await?;
                let (a, b) = tokio::join!(
                    pool.submit(demo::sleep_ms::task(5)),
                    pool.submit(demo::sleep_ms::task(5))
                );
                a?;
                b?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let pids = pool.worker_pids().await;
                ensure!(pids.len() == 2, "{} workers", pids.len());
                let rss = sys::mean_rss_mib(&pids)?;
                close(pool).await;
                Ok(Outcome::one("idle_worker_rss_mb", rss))
            }
            Group::Queued | Group::CliJobs | Group::CliRtt => {
                unreachable!("measured in child processes")
            }
            Group::BrokerRtt | Group::BrokerTput | Group::RequeueAfterKill => Ok(
                Outcome::unsupported("the local pool has no broker (see procpool_broker)"),
            ),
        }
    }

    /// In a child process (`child queued-procpool`), so the supervisor's memory is the
    /// only thing that changes while the tasks are queued.
    fn queued(&self, p: &Params) -> Result<Outcome> {
        let child = match self.mode {
            Mode::Start => "queued-procpool",
            Mode::Build => "queued-procpool-build",
        };
        let mut cmd = Command::new(&self.exe);
        cmd.args(["child", child, "--n"])
            .arg(p.queued_n.to_string())
            .arg("--worker")
            .arg(&self.worker);
        let (status, out) = sys::run_captured(cmd, Duration::from_secs(300))?;
        ensure!(status.success(), "queued-procpool child: {status}");
        let v: serde_json::Value =
            serde_json::from_str(out.lines().last().unwrap_or_default()).context("child output")?;
        let bytes = v["bytes_per_task"].as_f64().context("no bytes_per_task")?;
        Ok(Outcome::one("queued_task_bytes", bytes))
    }
}

/// `n` no-op tasks submitted at once; the pool hands them out (one in flight per worker
/// unless a prefetch window is set).
async fn throughput(pool: &Pool, n: u64) -> Result<f64> {
    for i in 0..100 {
        add(pool, i).await?;
    }
    let t = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| pool.submit(demo::add::task(i as i64, 1)))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        ensure!(h.await? == i as i64 + 1, "wrong sum");
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// `child queued-procpool`: both workers busy with a long sleep, then `n` tasks queued
/// behind them (handles kept, as a caller would); prints the RSS growth per task.
pub fn queued_child(worker: &Path, n: u64, mode: Mode) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = mode.open(&builder(worker, None)).await?;
        add(&pool, 1).await?;
        let blockers = [
            pool.submit(demo::sleep_ms::task(600_000)),
            pool.submit(demo::sleep_ms::task(600_000)),
        ];
        for b in &blockers {
            b.started().await.context("blocker never started")?;
        }
        // Warm the allocator and the queue's own growth path a little first.
        let warm: Vec<_> = (0..1000).map(|i| pool.submit(demo::add::task(i, 1))).collect();
        wait_queued(&pool, 1000).await?;
        for h in &warm {
            h.cancel();
        }
        drop(warm);
        wait_queued(&pool, 0).await?;
        let before = sys::rss_kib(std::process::id())?;
        let handles: Vec<_> = (0..n)
            .map(|i| pool.submit(demo::add::task(i as i64, 1)))
            .collect();
        wait_queued(&pool, n as usize).await?;
        let after = sys::rss_kib(std::process::id())?;
        let per_task = (after.saturating_sub(before) * 1024) as f64 / n as f64;
        println!(
            "{}",
            serde_json::json!({"bytes_per_task": per_task, "rss_before_kib": before, "rss_after_kib": after, "n": n})
        );
        // Workers lead their own process groups: kill them here rather than wait for the
        // parent-death signal.
        for pid in pool.worker_pids().await {
            sys::kill_group(pid);
        }
        std::mem::forget(handles);
        std::mem::forget(blockers);
        std::mem::forget(pool);
        anyhow::Ok(())
    })?;
    // Exit without tearing down a million handles.
    std::process::exit(0)
}

async fn wait_queued(pool: &Pool, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = pool.status().await;
        if s.queued == n {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "queue at {} of {n}", s.queued);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
