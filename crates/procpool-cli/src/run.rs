//! `procpool run`: the batch loop. It streams jobs in, keeps a bounded number of them in
//! flight on the pool, and writes each result line the moment its job ends. Reading,
//! submitting and writing all happen in one `select!` loop, so backpressure is simple: no
//! new line is read while the window is full, and a finished job is written even while the
//! job stream is waiting for its next line (e.g. a slow producer on stdin).

use std::io::Write as _;
use std::path::Path;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use anyhow::Context as _;
use procpool::{JsonGraph, MetaTask, Pool, RetryPolicy, Shutdown, Task, TaskError, TaskHandle};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::cli::{PolicyArgs, RunArgs, WorkerArgs};
use crate::jobs::{self, Job, JobPolicy, JobReader, Parsed};
use crate::records::{Record, Status};
use crate::{Exit, Failure};

/// Jobs in flight (submitted, no result yet) per worker: enough that a worker finds its
/// next task queued in the pool when it finishes one, few enough that memory stays flat
/// however long the job stream is.
const IN_FLIGHT_PER_WORKER: usize = 4;

pub(crate) async fn run(args: RunArgs) -> Result<Exit, Failure> {
    // Everything that can go wrong before a job runs is checked first, and reported as a
    // setup failure: exit 2, no record written.
    let input = jobs::open(&args.jobs).await.map_err(Failure::Setup)?;
    if let Some(out) = &args.out {
        refuse_same_file(&args.jobs, out).map_err(Failure::Setup)?;
    }
    let pool = start_pool(
        &args.worker,
        args.workers.map(|n| n as usize),
        Some(&args.policy),
    )
    .await?;
    // Created only once the pool is up, so a bad worker leaves an existing file untouched.
    let out = open_output(args.out.as_deref()).map_err(Failure::Setup)?;
    tracing::info!(workers = pool.size(), "pool started");

    let all_completed = run_jobs(&pool, input, out)
        .await
        .map_err(Failure::Runtime)?;
    pool.shutdown(Shutdown::Drain).await;
    Ok(if all_completed {
        Exit::Success
    } else {
        Exit::JobsFailed
    })
}

/// Builds a pool off the async threads (`build` blocks until every worker said hello).
/// A setting the pool refuses (e.g. --min-workers above --workers) is a setup failure.
pub(crate) async fn start_pool(
    args: &WorkerArgs,
    workers: Option<usize>,
    policy: Option<&PolicyArgs>,
) -> Result<Pool, Failure> {
    let mut builder = Pool::builder();
    builder
        .worker(&args.worker)
        .start_timeout(args.start_timeout);
    if let Some(n) = workers {
        builder.workers(n);
    }
    if let Some(p) = policy {
        apply_policy(&mut builder, p);
    }
    tokio::task::spawn_blocking(move || builder.build())
        .await
        .context("the pool start-up thread panicked")
        .map_err(Failure::Runtime)?
        .map_err(|e| Failure::Setup(e.into()))
}

/// The pool-wide policy flags onto the builder; unset flags keep the library's defaults.
fn apply_policy(builder: &mut procpool::PoolBuilder, p: &PolicyArgs) {
    if let Some(d) = p.timeout {
        builder.timeout(d);
    }
    if let Some(d) = p.grace {
        builder.grace(d);
    }
    if let Some(n) = p.retries {
        builder.retry(RetryPolicy::new(n));
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

/// A job's own `timeout_ms` and `retries` onto its task (they win over the pool's).
fn with_policy<R>(mut task: Task<R>, policy: &JobPolicy) -> Task<R> {
    if let Some(d) = policy.timeout {
        task = task.timeout(d);
    }
    if let Some(n) = policy.retries {
        task = task.retry(RetryPolicy::new(n));
    }
    task
}

/// Streams `input` through the pool into `out`; true when every job completed.
async fn run_jobs(
    pool: &Pool,
    input: Box<dyn tokio::io::AsyncBufRead + Unpin + Send>,
    mut out: Output,
) -> anyhow::Result<bool> {
    let window = pool.size().saturating_mul(IN_FLIGHT_PER_WORKER).max(1);
    let mut reader = JobReader::new(input);
    let mut in_flight: JoinSet<Record> = JoinSet::new();
    let mut all_completed = true;
    let mut input_done = false;
    loop {
        // Every record written so far leaves before the loop waits again; a burst of
        // results that finished together leaves in one write.
        out.flush()?;
        let can_read = !input_done && in_flight.len() < window;
        if !can_read && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            // Results first: they are what the user is waiting for.
            biased;
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                let mut joined = Some(joined);
                while let Some(done) = joined {
                    let record = done.context("a job's task panicked")?;
                    all_completed &= record.status == Status::Completed;
                    out.write(&record)?;
                    joined = in_flight.try_join_next();
                }
            }
            // `JobReader::next` is cancel safe: losing this race loses no input.
            parsed = reader.next(), if can_read => {
                match parsed.context("error reading the jobs")? {
                    None => input_done = true,
                    Some(Parsed::Job(job)) if JsonGraph::contains_tasks(&job.args) => {
                        in_flight.spawn(finish_nested(pool.clone(), job));
                    }
                    Some(Parsed::Job(job)) => {
                        let task = Task::json(job.task.clone(), job.args.clone());
                        let handle = pool.submit(with_policy(task, &job.policy));
                        in_flight.spawn(finish(job, handle));
                    }
                    Some(Parsed::Bad(bad)) => {
                        tracing::debug!(line = bad.line, "bad job: {}", bad.message);
                        all_completed = false;
                        out.write(&Record::bad_job(bad))?;
                    }
                }
            }
        }
    }
    Ok(all_completed)
}

/// Runs a job whose arguments hold nested tasks (`{"$task": ..., "args": [...]}`): they
/// run first, all at once, as the inputs of a MetaTask; their results replace them, and
/// then the job's own task runs like any other job. A failed nested task fails the job
/// with its own kind, and the MetaTask cancels the other nested tasks (their workers are
/// killed) before the record is written.
async fn finish_nested(pool: Pool, job: Job) -> Record {
    let began = Instant::now();
    let graph = match JsonGraph::parse(job.args.clone()) {
        Ok(graph) => graph,
        // `jobs::validate` let the job through only if this parses; kept as a record
        // rather than a panic all the same.
        Err(e) => {
            let err = TaskError::BadArgs {
                message: e.to_string(),
            };
            return Record::finished(job, Err(err), 0, began.elapsed());
        }
    };
    // A name the worker does not serve fails the job before any nested task starts.
    let unknown = std::iter::once(job.task.as_str())
        .chain(graph.task_names())
        .find(|name| !pool.tasks().iter().any(|t| t.name == *name))
        .map(str::to_owned);
    if let Some(name) = unknown {
        let err = TaskError::UnknownTask { name };
        return Record::finished(job, Err(err), 0, began.elapsed());
    }
    match MetaTask::new(graph, |args| args).run(&pool).await {
        Ok(args) => {
            let task = Task::json(job.task.clone(), args);
            let handle = pool.submit(with_policy(task, &job.policy));
            finish(job, handle).await
        }
        Err(err) => Record::nested_failed(job, err, began.elapsed()),
    }
}

/// Waits for one job and makes its record. The duration counts from the moment a worker
/// takes the task, so time spent queued behind other jobs is not billed to it.
async fn finish(job: Job, mut handle: TaskHandle<Value>) -> Record {
    let submitted = Instant::now();
    // `started()` never resolves for a task the pool refused at submission (unknown task,
    // oversized arguments): such a handle is ready at once, so poll it first.
    let early = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut handle).poll(cx))).await;
    if let Poll::Ready(outcome) = early {
        return Record::finished(job, outcome, handle.attempts(), submitted.elapsed());
    }
    let began = handle.started().await.map_or(submitted, |_| Instant::now());
    let outcome = (&mut handle).await;
    let record = Record::finished(job, outcome, handle.attempts(), began.elapsed());
    tracing::debug!(id = ?record.id, status = ?record.status, "job finished");
    record
}

/// Where the records go: stdout or a file. Records are buffered and flushed by the batch
/// loop before it waits, so each leaves as soon as its job ends.
///
/// The writes are plain blocking ones on the loop's thread, on purpose: a record is a few
/// hundred bytes (one `write` call), and when the reader of stdout stalls, stalling the loop
/// is the backpressure we want (no more jobs are read). Going through tokio's async stdout
/// costs a thread hand-off per write and made the loop three times slower.
struct Output {
    writer: std::io::BufWriter<Box<dyn std::io::Write + Send>>,
    name: String,
}

impl Output {
    fn write(&mut self, record: &Record) -> anyhow::Result<()> {
        self.writer
            .write_all(&record.to_line())
            .with_context(|| format!("error writing a result to {}", self.name))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.writer
            .flush()
            .with_context(|| format!("error writing a result to {}", self.name))
    }
}

/// `--out FILE` is created or truncated (resuming a run is not supported yet).
fn open_output(path: Option<&Path>) -> anyhow::Result<Output> {
    let (writer, name): (Box<dyn std::io::Write + Send>, String) = match path {
        None => (Box::new(std::io::stdout()), "stdout".into()),
        Some(path) => (
            Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create the output file {}", path.display()))?,
            ),
            path.display().to_string(),
        ),
    };
    Ok(Output {
        writer: std::io::BufWriter::with_capacity(64 << 10, writer),
        name,
    })
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
