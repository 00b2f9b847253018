//! `procpool run`: the batch loop. It streams jobs in, keeps a bounded number of them in
//! flight on the pool, and writes each result line as its job ends (see [`Output`] for
//! when the lines leave). Reading,
//! submitting, writing, signals and progress all happen in one `select!` loop, so
//! backpressure is simple: no new line is read while the window is full, and a finished
//! job is written even while the job stream is waiting for its next line (e.g. a slow
//! producer on stdin).

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use anyhow::Context as _;
use futures::FutureExt as _;
use futures::future::Either;
use futures::stream::{FuturesUnordered, StreamExt as _};
use procpool::manager::JsonGraph;
use procpool::{MetaTask, Pool, RetryPolicy, Shutdown, Task, TaskError, TaskHandle};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncReadExt as _};
use tokio::sync::mpsc;

use crate::board::{Board, Ticket};
use crate::cli::{BrokerArgs, OnSignal, PolicyArgs, RetryKind, RunArgs, SubmitArgs, WorkerArgs};
use crate::control::{Control, ControlServer, Jobs};
use crate::exit::{Exit, Failure};
use crate::jobs::{self, Job, JobPolicy, JobReader, Parsed, Seen};
use crate::ledger::Ledger;
use crate::plan::PlanBuilder;
use crate::progress::Progress;
use crate::records::{Record, Status};
use crate::resume;
use crate::signals::{Signals, Stop};

/// Jobs in flight (submitted, no result yet) per worker: enough that a worker finds its
/// next task queued in the pool when it finishes one, few enough that memory stays flat
/// however long the job stream is.
const IN_FLIGHT_PER_WORKER: usize = 4;

pub(crate) async fn run(args: RunArgs) -> Result<Exit, Failure> {
    // Everything that can go wrong before a job runs is checked first, and reported as a
    // setup failure: exit 2, no record written.
    if args.resume && args.out.is_none() {
        return Err(Failure::Setup(anyhow::anyhow!(
            "--resume needs --out FILE: the records of the earlier run are read from that \
             file and the new ones appended to it"
        )));
    }
    let input = jobs::open(&args.jobs).await.map_err(Failure::Setup)?;
    if let Some(out) = &args.out {
        refuse_same_file(&args.jobs, out).map_err(Failure::Setup)?;
    }
    // Read on this thread: nothing else runs yet. A job file is checked for duplicate
    // ids and finished jobs before the batch, in bounded memory (plan.rs); standard input
    // or a pipe (`--jobs <(generate)`) can be read only once, so it is checked as it
    // streams in.
    let regular_file =
        args.jobs.as_os_str() != "-" && std::fs::metadata(&args.jobs).is_ok_and(|m| m.is_file());
    let mut plan = regular_file.then(PlanBuilder::new);
    let mut ledger = Ledger::default();
    let previous = match &args.out {
        Some(out) if args.resume => Some(
            resume::read(out, |closed| match &mut plan {
                Some(plan) => plan.done(closed),
                None => {
                    ledger.mark(closed);
                    Ok(())
                }
            })
            .map_err(Failure::Setup)?,
        ),
        _ => None,
    };
    let (seen, input): (Seen, Box<dyn AsyncBufRead + Unpin + Send>) = match plan {
        Some(plan) => {
            let started = Instant::now();
            let plan = plan.scan(&args.jobs).map_err(Failure::Setup)?;
            tracing::info!(
                jobs = plan.jobs(),
                "job ids checked in {:.2}s",
                started.elapsed().as_secs_f64()
            );
            let input = Box::new(input.take(plan.len()));
            (Seen::Planned(plan), input)
        }
        None => (Seen::Streaming(ledger), input),
    };
    // Before the first worker starts: from here on a SIGINT or SIGTERM is ours to handle,
    // and one that arrives during start-up is seen first thing by the loop.
    let mut signals = Signals::install()
        .context("cannot install the signal handlers")
        .map_err(Failure::Runtime)?;
    let pool = open_pool(
        &args.broker,
        Some(&args.submit),
        &args.worker,
        args.workers.map(|n| n as usize),
        Some(&args.policy),
        Host::ThisRuntime {
            prefetch: args.prefetch_jobs as usize,
        },
    )
    .await?;
    // Opened only once the pool is up, so a bad worker leaves an existing file untouched.
    let keep = previous.as_ref().map(|p| p.keep_len);
    let mut out = open_output(args.out.as_deref(), keep).map_err(Failure::Setup)?;
    tracing::info!(workers = pool.size(), "pool started");
    let board = Arc::new(Board::default());
    let (drain_tx, drain_rx) = mpsc::unbounded_channel();
    let control = Arc::new(Control::new(
        "run",
        pool.clone(),
        Jobs::Batch(board.clone()),
        drain_tx,
    ));
    let _control_server = ControlServer::open(args.control.control.as_deref(), control.clone())
        .map_err(Failure::Setup)?;
    let earlier_not_completed = previous.as_ref().map_or(0, |p| p.not_completed);
    if let Some(p) = previous {
        tracing::info!(
            records = p.records,
            "resuming: jobs with a record are skipped"
        );
        if p.torn > 0 {
            tracing::warn!(
                "cut a torn record ({} bytes, written when the earlier run was killed) \
                 from the end of {}",
                p.torn,
                out.name
            );
        }
    }

    let mut progress = Progress::new(&args.feedback);
    if let Seen::Planned(plan) = &seen {
        progress.set_total(plan.jobs());
    }
    let batch = Batch {
        pool: &pool,
        reader: JobReader::new(input, seen),
        out: &mut out,
        progress: &mut progress,
        signals: &mut signals,
        on_signal: args.on_signal,
        retry: retry_policy(&args.policy, 0),
        retries: args.policy.retries.unwrap_or(0),
        board: &board,
        control: &control,
        drain: drain_rx,
        prefetch: args.prefetch_jobs as usize,
    };
    let outcome = batch.run().await.map_err(Failure::Runtime)?;
    pool.shutdown(if outcome.stop.is_some() {
        Shutdown::Kill
    } else {
        Shutdown::Drain
    })
    .await;

    let mut notes = Vec::new();
    if let Some(stop) = outcome.stop {
        let again = if args.out.is_some() {
            "run the same command with --resume to finish them"
        } else {
            "with --out FILE, --resume would finish them"
        };
        notes.push(format!(
            "stopped by {}: {} jobs had been dispatched, each has its record; jobs not \
             dispatched have none ({again})",
            stop.name(),
            outcome.dispatched
        ));
    }
    progress.finish(&notes);
    Ok(match outcome.stop {
        Some(stop) => stop.exit(),
        // With --resume, the records kept from the earlier runs count too.
        None if outcome.all_completed && earlier_not_completed == 0 => Exit::Success,
        None => Exit::JobsFailed,
    })
}

/// The worker binary: `--worker`, else this executable when it registers tasks itself
/// (an application whose `main` is `procpool_cli::main()`). Shared by every subcommand
/// that starts workers.
pub(crate) fn worker_path(args: &WorkerArgs) -> Result<PathBuf, Failure> {
    if let Some(path) = &args.worker {
        return Ok(path.clone());
    }
    if procpool::worker::registered_tasks().is_empty() {
        return Err(Failure::Setup(anyhow::anyhow!(
            "no worker: pass --worker PATH (or set PROCPOOL_WORKER_PATH), a binary built with \
             procpool that calls procpool::init(); this executable registers no task itself"
        )));
    }
    std::env::current_exe()
        .context("cannot find this executable to use it as the worker")
        .map_err(Failure::Setup)
}

/// The pool of `run`, `serve` and `tasks`: the broker's agents with `--broker`, else local
/// workers of `--worker`.
pub(crate) async fn open_pool(
    broker: &BrokerArgs,
    submit: Option<&SubmitArgs>,
    worker: &WorkerArgs,
    workers: Option<usize>,
    policy: Option<&PolicyArgs>,
    host: Host,
) -> Result<Pool, Failure> {
    match &broker.broker {
        Some(url) => crate::agent::connect(url, &broker.namespace, submit, policy).await,
        None => start_pool(worker, workers, policy, host).await,
    }
}

/// Where a local pool's supervisor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// Its own thread (`PoolBuilder::build`): `serve`, `agent` and `tasks`.
    OwnThread,
    /// This command's runtime (`PoolBuilder::start`): `run`, whose loop only moves lines
    /// between the jobs, the pool and the output; without a thread between the loop and
    /// the workers it runs about a quarter more jobs a second. With `run --prefetch-jobs`.
    ThisRuntime {
        /// Tasks sent ahead to each busy worker (`run --prefetch-jobs`).
        prefetch: usize,
    },
}

/// Starts a local pool. A setting the pool refuses (e.g. --min-workers above --workers)
/// is a setup failure.
pub(crate) async fn start_pool(
    args: &WorkerArgs,
    workers: Option<usize>,
    policy: Option<&PolicyArgs>,
    host: Host,
) -> Result<Pool, Failure> {
    let mut builder = Pool::builder();
    builder
        .worker(worker_path(args)?)
        .start_timeout(args.start_timeout);
    if let Some(n) = workers {
        builder.workers(n);
    }
    if let Some(p) = policy {
        apply_policy(&mut builder, p);
    }
    let pool = match host {
        Host::ThisRuntime { prefetch } => builder.prefetch(prefetch).start().await,
        // Off the async thread: `build` blocks until every worker said hello.
        Host::OwnThread => tokio::task::spawn_blocking(move || builder.build())
            .await
            .context("the pool start-up thread panicked")
            .map_err(Failure::Runtime)?,
    };
    pool.map_err(|e| Failure::Setup(e.into()))
}

/// The pool-wide policy flags onto the builder; unset flags keep the library's defaults.
pub(crate) fn apply_policy(builder: &mut procpool::PoolBuilder, p: &PolicyArgs) {
    if let Some(d) = p.timeout {
        builder.timeout(d);
    }
    if let Some(d) = p.grace {
        builder.grace(d);
    }
    if p.retries.is_some() || p.retry_on.is_some() {
        builder.retry(retry_policy(p, p.retries.unwrap_or(0)));
    }
    if let Some(n) = p.max_tasks_per_worker {
        builder.max_tasks_per_worker(n);
    }
    if let Some(bytes) = p.max_rss {
        builder.max_rss(bytes);
    }
    if let Some(n) = p.min_workers {
        builder.min_workers(n as usize);
    }
    if let Some(d) = p.idle_timeout {
        builder.idle_timeout(d);
    }
}

/// Up to `max` retries of the kinds `--retry-on` names (every crash-class kind without
/// it).
pub(crate) fn retry_policy(p: &PolicyArgs, max: u32) -> RetryPolicy {
    let policy = RetryPolicy::new(max);
    match &p.retry_on {
        None => policy,
        Some(kinds) => policy
            .retry_crashed(kinds.contains(&RetryKind::Crashed))
            .retry_timed_out(kinds.contains(&RetryKind::TimedOut))
            .retry_limit_exceeded(kinds.contains(&RetryKind::LimitExceeded)),
    }
}

/// A job's own `timeout_ms` and `retries` onto its task (they win over the pool's); its
/// retries are of the kinds of `retry`.
fn with_policy<R>(mut task: Task<R>, policy: &JobPolicy, retry: RetryPolicy) -> Task<R> {
    if let Some(d) = policy.timeout {
        task = task.timeout(d);
    }
    if let Some(n) = policy.retries {
        task = task.retry(retry.with_max_retries(n));
    }
    task
}

/// How a batch ended.
struct Outcome {
    /// Every job with a record completed.
    all_completed: bool,
    /// The first SIGINT or SIGTERM, if one stopped the batch.
    stop: Option<Stop>,
    /// Jobs submitted to the pool.
    dispatched: u64,
}

/// Everything the batch loop works with.
struct Batch<'a> {
    pool: &'a Pool,
    reader: JobReader<Box<dyn AsyncBufRead + Unpin + Send>>,
    out: &'a mut Output,
    progress: &'a mut Progress,
    signals: &'a mut Signals,
    on_signal: OnSignal,
    /// The kinds `--retry-on` retries, for a job's own `retries`.
    retry: RetryPolicy,
    /// `--retries`: whether a job without its own `retries` may run more than once.
    retries: u32,
    /// The live jobs and record counts, for `procpool ctl`.
    board: &'a Arc<Board>,
    control: &'a Control,
    /// `procpool ctl drain`.
    drain: mpsc::UnboundedReceiver<()>,
    /// Tasks the pool sends ahead to each busy worker (`--prefetch-jobs`).
    prefetch: usize,
}

impl Batch<'_> {
    /// Streams the jobs through the pool into the output until the input ends or a
    /// signal stops it; returns once every dispatched job has its record.
    async fn run(mut self) -> anyhow::Result<Outcome> {
        let pool = self.pool;
        // The jobs in flight, polled by this loop itself: a tokio task per job cost more
        // than its job's way through the pool (its allocation, its entry in the
        // runtime's and the set's lists, a wake-up of the loop through the set). They
        // move only while the loop polls them, which it does unless it waits for the
        // writer thread to take a batch (a stalled reader of stdout): a `ctl cancel`
        // then reaches its job once the output moves again.
        let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
        let mut outcome = Outcome {
            all_completed: true,
            stop: None,
            dispatched: 0,
        };
        let mut input_done = false;
        // The pool's `Shutdown::Kill`, once a signal asked for it: it resolves every
        // dispatched job (as `cancelled`) and reaps every worker.
        let mut killing: Option<tokio::task::JoinHandle<()>> = None;
        // Set with `killing`: ends the jobs still waiting for an agent to come up.
        let (killed_tx, killed) = tokio::sync::watch::channel(false);
        let mut ticker = self.progress.tick_every().map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            // Records leave when the loop has nothing else to do (the last branch below),
            // and while it stays busy, once they are `HOLD_AT_MOST` old.
            if self.out.due() {
                self.out.flush().await?;
            }
            // Beside the tasks sent ahead to each worker, a few more wait in the pool's
            // queue; a remote pool's size follows its live agents.
            let window = pool
                .size()
                .saturating_mul(IN_FLIGHT_PER_WORKER + self.prefetch)
                .max(1);
            let can_read = outcome.stop.is_none() && !input_done && in_flight.len() < window;
            if !can_read && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                stop = self.signals.recv() => {
                    let kill = match outcome.stop {
                        None => {
                            outcome.stop = Some(stop);
                            self.control.set_draining();
                            tracing::warn!(
                                dispatched = outcome.dispatched,
                                in_flight = in_flight.len(),
                                "{}: no new job starts; {} the {} dispatched jobs not finished \
                                 yet (a second signal kills them at once)",
                                stop.name(),
                                match self.on_signal {
                                    OnSignal::Drain => "waiting for",
                                    OnSignal::Cancel => "cancelling",
                                },
                                in_flight.len(),
                            );
                            self.on_signal == OnSignal::Cancel
                        }
                        Some(_) => {
                            tracing::warn!(
                                "{} again: killing every worker now",
                                stop.name()
                            );
                            true
                        }
                    };
                    if kill && killing.is_none() {
                        killed_tx.send_replace(true);
                        let pool = pool.clone();
                        killing = Some(tokio::spawn(async move {
                            pool.shutdown(Shutdown::Kill).await;
                        }));
                    }
                }
                // `procpool ctl drain`: as a signal with `--on-signal drain`.
                Some(()) = self.drain.recv(), if outcome.stop.is_none() => {
                    outcome.stop = Some(Stop::Drain);
                    tracing::warn!(
                        dispatched = outcome.dispatched,
                        in_flight = in_flight.len(),
                        "procpool ctl drain: no new job starts; waiting for the {} dispatched \
                         jobs not finished yet (a signal kills them at once)",
                        in_flight.len(),
                    );
                }
                // Results first: they are what the user is waiting for.
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    let mut done: Option<(Record, Ticket)> = Some(done);
                    while let Some((mut record, ticket)) = done {
                        if let (Some(stop), Some(error)) = (outcome.stop, &mut record.error)
                            && record.status == Status::Cancelled
                        {
                            error.message = format!("cancelled: procpool received {}", stop.name());
                        }
                        outcome.all_completed &= record.status == Status::Completed;
                        Ticket::end(ticket, record.status);
                        self.out.write(&record);
                        self.progress.record(&record);
                        done = in_flight.next().now_or_never().flatten();
                    }
                }
                _ = tick(&mut ticker) => {
                    let running = pool.status().await.busy;
                    self.progress.tick(running);
                }
                // `JobReader::next` is cancel safe: losing this race (or a `now_or_never`)
                // loses no input.
                parsed = self.reader.next(), if can_read => {
                    // Then the lines already read, in this same turn (as many as the
                    // window holds, skipped ones included): a turn of the loop costs about
                    // as much as the way of a job line through it.
                    let mut parsed = Some(parsed);
                    let mut lines_left = window;
                    while let Some(next) = parsed.take() {
                        match next.context("error reading the jobs")? {
                            None => input_done = true,
                            // On a remote pool keyword arguments, like nested tasks, are
                            // matched against what the agents serve: they may wait for one.
                            Some(Parsed::Job(job))
                                if has_nested(&job) || (pool.is_remote() && !job.kwargs.is_empty()) =>
                            {
                                outcome.dispatched += 1;
                                let ticket = self.board.enter(&job.id, &job.task, None);
                                let may_retry = self.may_retry(&job);
                                in_flight.push(Either::Right(Box::pin(finish_nested(
                                    pool.clone(),
                                    job,
                                    killed.clone(),
                                    ticket,
                                    self.retry,
                                    may_retry,
                                ))));
                            }
                            Some(Parsed::Job(mut job)) => {
                                outcome.dispatched += 1;
                                // Keyword arguments are matched at submission: a mistake
                                // fails the job as `bad_args` before it is queued. The
                                // arguments go to the task; the record needs none of them.
                                let args = std::mem::take(&mut job.args);
                                let task = if job.kwargs.is_empty() {
                                    Task::json(job.task.clone(), args)
                                } else {
                                    let args = match args {
                                        Value::Array(args) => args,
                                        _ => Vec::new(),
                                    };
                                    Task::json_kwargs(job.task.clone(), args, std::mem::take(&mut job.kwargs))
                                };
                                let handle = pool.submit(with_policy(task, &job.policy, self.retry));
                                let ticket = self.board.enter(&job.id, &job.task, Some(handle.watch()));
                                let may_retry = self.may_retry(&job);
                                in_flight.push(Running::new(job, handle, ticket).in_flight(may_retry));
                            }
                            Some(Parsed::Bad(bad)) => {
                                tracing::debug!(line = bad.line, "bad job: {}", bad.message);
                                outcome.all_completed = false;
                                let record = Record::bad_job(bad);
                                self.board.bad_job();
                                self.out.write(&record);
                                self.progress.record(&record);
                            }
                            Some(Parsed::Skipped) => self.progress.skipped(),
                        }
                        lines_left -= 1;
                        if lines_left > 0 && !input_done && in_flight.len() < window {
                            parsed = self.reader.next().now_or_never();
                        }
                    }
                }
                // Nothing else was ready, even once the runtime ran what it had (the pool's
                // tasks, which hand results over): the records written so far leave now,
                // in one write, before the loop waits. Results that end together (the
                // rule in a big batch) leave together; a lone job's record (a producer
                // on stdin that waits for it) leaves at once.
                () = tokio::task::yield_now(), if self.out.holds_records() => {
                    self.out.flush().await?;
                }
            }
        }
        self.out.finish()?;
        let unmatched = if input_done {
            self.reader.unmatched_records()?
        } else {
            0
        };
        if unmatched > 0 {
            tracing::warn!(
                "{unmatched} records in {} match no line of the job file (did the job file \
                 change since the earlier run?)",
                self.out.name
            );
        }
        if let Some(killing) = killing {
            killing.await.context("the pool shutdown task panicked")?;
        }
        Ok(outcome)
    }

    /// Whether a job may be started more than once: its own `retries`, else `--retries`;
    /// a broker's agents retry by their own policy.
    fn may_retry(&self, job: &Job) -> bool {
        job.policy.retries.unwrap_or(self.retries) > 0 || self.pool.is_remote()
    }
}

/// The next tick of `ticker`, if there is one; never resolves otherwise.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Whether a job's arguments (positional or by name) hold nested tasks.
fn has_nested(job: &Job) -> bool {
    JsonGraph::contains_tasks(&job.args) || job.kwargs.values().any(JsonGraph::contains_tasks)
}

/// Runs a job whose arguments hold nested tasks (`{"$task": ..., "args": [...]}`): they
/// run first, all at once, as the inputs of a MetaTask; their results replace them, and
/// then the job's own task runs like any other job. A failed nested task fails the job
/// with its own kind, and the MetaTask cancels the other nested tasks (their workers are
/// killed) before the record is written.
///
/// Names and keyword arguments are matched against what the workers serve: on a remote
/// pool with no agent up yet, the job waits for one (until `killed`: then `cancelled`).
async fn finish_nested(
    pool: Pool,
    job: Job,
    mut killed: tokio::sync::watch::Receiver<bool>,
    mut ticket: Ticket,
    retry: RetryPolicy,
    may_retry: bool,
) -> (Record, Ticket) {
    let began = Instant::now();
    let tasks = tokio::select! {
        tasks = pool.wait_for_tasks() => tasks,
        _ = killed.wait_for(|k| *k) => {
            return (Record::finished(job, Err(TaskError::Cancelled), 0, began.elapsed()), ticket);
        }
    };
    // The job's own keyword arguments first (nested tasks there are plain values yet),
    // so that a mistake in them fails the job before any nested task starts.
    let args = if job.kwargs.is_empty() {
        job.args.clone()
    } else {
        let positional = job.args.as_array().cloned().unwrap_or_default();
        match pool.bind_json(&job.task, positional, job.kwargs.clone()) {
            Ok(args) => Value::Array(args),
            Err(err) => return (Record::finished(job, Err(err), 0, began.elapsed()), ticket),
        }
    };
    let graph = match JsonGraph::parse(args) {
        Ok(graph) => graph,
        // `jobs::validate` let the job through only if this parses; kept as a record
        // rather than a panic all the same.
        Err(e) => {
            let err = TaskError::BadArgs {
                message: e.to_string(),
            };
            return (Record::finished(job, Err(err), 0, began.elapsed()), ticket);
        }
    };
    // A name the worker does not serve fails the job before any nested task starts.
    let unknown = std::iter::once(job.task.as_str())
        .chain(graph.task_names())
        .find(|name| !tasks.iter().any(|t| t.name == *name))
        .map(str::to_owned);
    if let Some(name) = unknown {
        let err = TaskError::UnknownTask { name };
        return (Record::finished(job, Err(err), 0, began.elapsed()), ticket);
    }
    // A `ctl cancel` meanwhile drops the MetaTask, which cancels its nested tasks.
    let nested = tokio::select! {
        nested = MetaTask::new(graph, |args| args).run(&pool) => nested,
        () = ticket.cancelled() => {
            let record = Record::finished(job, Err(TaskError::Cancelled), 0, began.elapsed());
            return (cancelled_by_ctl(record), ticket);
        }
    };
    match nested {
        Ok(args) => {
            let task = Task::json(job.task.clone(), args);
            let handle = pool.submit(with_policy(task, &job.policy, retry));
            ticket.watch(handle.watch());
            Running::new(job, handle, ticket).in_flight(may_retry).await
        }
        Err(err) => (Record::nested_failed(job, err, began.elapsed()), ticket),
    }
}

/// A job in flight: the loop's set of them holds plain jobs as they are and the others
/// (nested tasks first, or a first start to wait for) boxed.
type InFlight = Either<Running, Pin<Box<dyn Future<Output = (Record, Ticket)> + Send>>>;

/// A job whose task was submitted, until the task ends; then its record, and its ticket
/// for the loop to end with the record. A future written out rather than an `async fn`:
/// it is allocated once per job, and the compiler's state machine for the same steps
/// was 1 032 bytes against these 392 (it kept the arguments twice), past the allocator's
/// fast path.
///
/// The duration counts from the moment a worker first takes the task, so time spent
/// queued behind other jobs is not billed to it: the start its handle reports at the
/// end, or for a task that may start more than once the first one
/// ([`Running::timed_from_first_start`]).
///
/// A `procpool ctl cancel` of the job (through its ticket) cancels the task: a queued one
/// never runs, a running one has its worker killed, and the record says `cancelled`.
struct Running {
    job: Job,
    handle: TaskHandle<Value>,
    /// Taken when the record is made.
    ticket: Option<Ticket>,
    /// The duration of a task that never started counts from here.
    submitted: Instant,
    /// The first start, when it was waited for.
    began: Option<Instant>,
    /// `ctl cancel` cancelled the task.
    by_ctl: bool,
}

impl Running {
    fn new(job: Job, handle: TaskHandle<Value>, ticket: Ticket) -> Running {
        Running {
            job,
            handle,
            ticket: Some(ticket),
            submitted: Instant::now(),
            began: None,
            by_ctl: false,
        }
    }

    /// Into the loop's set: as it is when its task runs once at most, else behind a wait
    /// for its first start.
    fn in_flight(self, may_retry: bool) -> InFlight {
        if may_retry {
            Either::Right(Box::pin(self.timed_from_first_start()))
        } else {
            Either::Left(self)
        }
    }

    /// Waits for the first start of a task that may start more than once (the start its
    /// handle reports at the end is that of the last attempt), then for its end.
    async fn timed_from_first_start(mut self) -> (Record, Ticket) {
        // The pool answers a task it refused at submission (unknown task, oversized
        // arguments) at once: nothing to wait for then.
        let early = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut self.handle).poll(cx)));
        if let Poll::Ready(outcome) = early.await {
            return self.record(outcome);
        }
        let ticket = self.ticket.as_mut().expect("taken only with the record");
        let began = tokio::select! {
            started = self.handle.started() => match started {
                Some(_) => Instant::now(),
                None => self.submitted,
            },
            () = ticket.cancelled() => {
                self.handle.cancel();
                self.by_ctl = true;
                self.submitted
            }
        };
        self.began = Some(began);
        self.await
    }

    fn record(&mut self, outcome: Result<Value, TaskError>) -> (Record, Ticket) {
        let began = self
            .began
            .or_else(|| self.handle.watch().attempt_started())
            .unwrap_or(self.submitted);
        let job = std::mem::take(&mut self.job);
        let mut record = Record::finished(job, outcome, self.handle.attempts(), began.elapsed());
        if self.by_ctl {
            record = cancelled_by_ctl(record);
        }
        tracing::debug!(id = ?record.id, status = ?record.status, "job finished");
        let ticket = self.ticket.take().expect("a job's record is made once");
        (record, ticket)
    }
}

impl Future for Running {
    type Output = (Record, Ticket);

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.by_ctl
            && let Some(ticket) = &mut this.ticket
            && ticket.poll_cancelled(cx).is_ready()
        {
            this.handle.cancel();
            this.by_ctl = true;
        }
        let outcome = std::task::ready!(Pin::new(&mut this.handle).poll(cx));
        Poll::Ready(this.record(outcome))
    }
}

/// Says in a cancelled record that `procpool ctl cancel` cancelled it.
fn cancelled_by_ctl(mut record: Record) -> Record {
    if record.status == Status::Cancelled
        && let Some(error) = &mut record.error
    {
        error.message = "cancelled by procpool ctl cancel".into();
    }
    record
}

/// Where the records go: stdout or a file. The loop appends records to a batch and hands
/// the batch to a writer thread (`flush`) when it has nothing else to do, so a record
/// leaves as soon as the loop is idle, a burst of records that end together leaves in
/// one write, and a record is never held back while the loop waits: a SIGKILL loses only
/// the batch being handed over or written. While the loop stays busy, a batch leaves once
/// it is `HOLD_AT_MOST` old or `BATCH_BYTES` long, which bounds what a SIGKILL can lose
/// then: at most the records of the last few milliseconds.
///
/// The writes happen on their own thread because the pool's supervisor runs on the
/// loop's thread: a stalled reader of stdout must not stall timeouts, memory limits and
/// signals with it. The hand-off channel is short, so a stalled reader still stops the
/// loop from reading more jobs (the backpressure we want).
struct Output {
    batch: Vec<u8>,
    /// When the first record of `batch` was written.
    since: Option<Instant>,
    /// `None` once finished.
    batches: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Hands the sink back when the channel closes, or stops at the first error.
    writer: Option<std::thread::JoinHandle<std::io::Result<Sink>>>,
    name: String,
}

type Sink = Box<dyn std::io::Write + Send>;

/// Batches handed to the writer thread and not yet written, at most.
const BATCHES_QUEUED: usize = 4;

/// How long a busy loop holds records before it hands them over anyway. Each hand-off
/// wakes the writer thread (a futex wake and a context switch on a busy machine); at
/// one per turn of the loop that was about a sixth of the loop thread's time in a batch
/// of tiny jobs.
const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(10);

/// A batch this long leaves even when younger than `HOLD_AT_MOST`.
const BATCH_BYTES: usize = 256 << 10;

impl Output {
    fn new(mut sink: Sink, name: String) -> anyhow::Result<Output> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(BATCHES_QUEUED);
        let writer = std::thread::Builder::new()
            .name("procpool-records".into())
            .spawn(move || {
                while let Some(batch) = rx.blocking_recv() {
                    sink.write_all(&batch)?;
                    sink.flush()?;
                }
                Ok(sink)
            })
            .context("cannot start the thread that writes the records")?;
        Ok(Output {
            batch: Vec::new(),
            since: None,
            batches: Some(tx),
            writer: Some(writer),
            name,
        })
    }

    fn write(&mut self, record: &Record) {
        if self.batch.is_empty() {
            self.since = Some(Instant::now());
        }
        record.append_line(&mut self.batch);
    }

    /// Whether records wait to be handed over.
    fn holds_records(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Whether the batch must leave even though the loop is busy.
    fn due(&self) -> bool {
        self.batch.len() >= BATCH_BYTES || self.since.is_some_and(|t| t.elapsed() >= HOLD_AT_MOST)
    }

    /// Hands what was written since the last call to the writer thread.
    async fn flush(&mut self) -> anyhow::Result<()> {
        let Some(tx) = &self.batches else {
            return Ok(());
        };
        if self.batch.is_empty() {
            return Ok(());
        }
        self.since = None;
        if let Err(refused) = tx.send(std::mem::take(&mut self.batch)).await {
            // The writer thread stopped at an error: that error is the one to report.
            self.batch = refused.0;
            return self.finish();
        }
        Ok(())
    }

    /// Waits for the writer thread to write what it was handed, then writes what is left
    /// here. Blocks the thread: for the end of the batch (and `Drop`, on an error path).
    fn finish(&mut self) -> anyhow::Result<()> {
        self.batches = None;
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let written = match writer.join() {
            Ok(Ok(mut sink)) => sink
                .write_all(&std::mem::take(&mut self.batch))
                .and_then(|()| sink.flush()),
            Ok(Err(e)) => Err(e),
            Err(_) => anyhow::bail!("the thread writing the records to {} panicked", self.name),
        };
        written.with_context(|| format!("error writing a result to {}", self.name))
    }
}

impl Drop for Output {
    /// A batch that ends in an error still writes the records of the jobs that ended.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// `--out FILE` is created or truncated; with `--resume` (`keep` = the length to keep,
/// which cuts a torn last record) it is appended to.
fn open_output(path: Option<&Path>, keep: Option<u64>) -> anyhow::Result<Output> {
    let (writer, name): (Sink, String) = match (path, keep) {
        (None, _) => (Box::new(std::io::stdout()), "stdout".into()),
        (Some(path), None) => (
            Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create the output file {}", path.display()))?,
            ),
            path.display().to_string(),
        ),
        (Some(path), Some(keep)) => {
            let file = std::fs::File::options()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("cannot open the output file {}", path.display()))?;
            let len = file
                .metadata()
                .with_context(|| format!("cannot read the output file {}", path.display()))?
                .len();
            if len > keep {
                file.set_len(keep).with_context(|| {
                    format!("cannot cut the torn last record of {}", path.display())
                })?;
            }
            (Box::new(file), path.display().to_string())
        }
    };
    Output::new(writer, name)
}

/// Truncating the job file to write results into it would destroy the jobs.
fn refuse_same_file(jobs: &Path, out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if jobs.as_os_str() == "-" {
        return Ok(());
    }
    if let (Ok(a), Ok(b)) = (std::fs::metadata(jobs), std::fs::metadata(out))
        && (a.dev(), a.ino()) == (b.dev(), b.ino())
    {
        anyhow::bail!(
            "--out {} is the job file itself; refusing to overwrite it",
            out.display()
        );
    }
    Ok(())
}
