//! Pool configuration: the builder users fill in and the resolved [`Settings`] the
//! supervisor runs with. Nothing here touches processes.

use std::ffi::OsString;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::time::Duration;

use procpool_os::Rlimit;
use procpool_proto::DEFAULT_MAX_FRAME;

use crate::errors::{PoolError, TaskError};

/// When and how often a failed task is run again.
///
/// By default only crash-class failures are retried (`crashed`, `timed_out`,
/// `limit_exceeded`, `protocol`): a user error or a panic would most likely fail the same
/// way again. [`RetryPolicy::also_task_errors`] retries those too;
/// [`retry_crashed`](RetryPolicy::retry_crashed),
/// [`retry_timed_out`](RetryPolicy::retry_timed_out) and
/// [`retry_limit_exceeded`](RetryPolicy::retry_limit_exceeded) leave a kind out:
///
/// ```
/// use procpool_core::RetryPolicy;
/// // A crash is retried twice; a hanging input fails after its first timeout.
/// let policy = RetryPolicy::new(2).retry_timed_out(false);
/// # let _ = policy;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
    task_errors: bool,
    /// Which crash-class kinds are retried (all by default).
    crashed: bool,
    timed_out: bool,
    limit_exceeded: bool,
}

impl RetryPolicy {
    /// No retries.
    pub const NEVER: RetryPolicy = RetryPolicy::new(0);

    /// Up to `max_retries` more runs after the first, with exponential backoff from 50 ms
    /// to 5 s and jitter.
    pub const fn new(max_retries: u32) -> Self {
        RetryPolicy {
            max_retries,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            task_errors: false,
            crashed: true,
            timed_out: true,
            limit_exceeded: true,
        }
    }

    /// Whether a `crashed` task (signal or exit code) is retried (yes by default).
    pub const fn retry_crashed(mut self, retry: bool) -> Self {
        self.crashed = retry;
        self
    }

    /// Whether a `timed_out` task is retried (yes by default). An input that always hangs
    /// costs (retries + 1) x the timeout when it is; `retry_timed_out(false)` fails it
    /// after one timeout.
    pub const fn retry_timed_out(mut self, retry: bool) -> Self {
        self.timed_out = retry;
        self
    }

    /// Whether a `limit_exceeded` task (memory or rlimit) is retried (yes by default).
    pub const fn retry_limit_exceeded(mut self, retry: bool) -> Self {
        self.limit_exceeded = retry;
        self
    }

    /// The same policy with `max_retries` in place of its own: what a per-task count
    /// (a job's `retries`) does to a pool's choice of kinds.
    pub const fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Backoff before the first retry, doubling after each (capped at `max`).
    pub const fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_delay = base;
        self.max_delay = max;
        self
    }

    /// Also retry user errors and panics.
    pub const fn also_task_errors(mut self) -> Self {
        self.task_errors = true;
        self
    }

    /// The most retries.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Whether a task that failed with `err` on attempt `attempt` (1-based) runs again.
    pub(crate) fn retries(&self, err: &TaskError, attempt: u32) -> bool {
        if attempt > self.max_retries {
            return false;
        }
        match err {
            TaskError::Crashed { .. } => self.crashed,
            TaskError::TimedOut { .. } => self.timed_out,
            TaskError::LimitExceeded { .. } => self.limit_exceeded,
            TaskError::Protocol { .. } => true,
            TaskError::User { .. } | TaskError::Panicked { .. } => self.task_errors,
            _ => false,
        }
    }

    /// Delay before running again after failed attempt `attempt` (1-based): exponential,
    /// capped, with "equal jitter" (half fixed, half random) so retries of a batch that
    /// failed together do not hit the pool in lockstep.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
        let jitter_nanos = half.as_nanos() as u64;
        let jitter = if jitter_nanos == 0 {
            0
        } else {
            random % jitter_nanos
        };
        half + Duration::from_nanos(jitter)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::NEVER
    }
}

/// Resource limits a worker applies to itself at start (no `pre_exec` closure needed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rlimits {
    pub(crate) address_space: Option<u64>,
    pub(crate) cpu_seconds: Option<u64>,
    pub(crate) open_files: Option<u64>,
}

impl Rlimits {
    /// The `PROCPOOL_RLIMITS` value the worker parses, or `None` when no limit is set.
    pub(crate) fn to_env(self) -> Option<String> {
        let parts: Vec<String> = [
            ("as", self.address_space),
            ("cpu", self.cpu_seconds),
            ("nofile", self.open_files),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }

    /// Refuses a limit this platform accepts but does not enforce (`RLIMIT_AS` on macOS):
    /// a pool that asked for it must not run unbounded in silence.
    fn check(self) -> Result<(), PoolError> {
        let asked = [
            (self.address_space, Rlimit::AddressSpace),
            (self.cpu_seconds, Rlimit::CpuSeconds),
            (self.open_files, Rlimit::OpenFiles),
        ];
        for (_, limit) in asked.into_iter().filter(|(value, _)| value.is_some()) {
            procpool_os::check_rlimit(limit).map_err(|e| PoolError::Config(e.to_string()))?;
        }
        Ok(())
    }
}

/// Resolved settings the supervisor runs with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) worker: PathBuf,
    pub(crate) worker_args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) worker_env: crate::worker_env::WorkerEnv,
    pub(crate) task_output: crate::output::TaskOutput,
    pub(crate) max_workers: usize,
    pub(crate) min_workers: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_frame: usize,
    pub(crate) start_timeout: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) grace: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) max_rss: Option<u64>,
    pub(crate) rlimits: Rlimits,
    pub(crate) queue_capacity: Option<usize>,
    pub(crate) prefetch: usize,
    pub(crate) max_unread_bytes: usize,
}

/// Default bound of a task's unread messages ([`PoolBuilder::max_unread_message_bytes`]).
pub(crate) const DEFAULT_MAX_UNREAD_BYTES: usize = 64 << 20;

/// Fewest open files a worker can run with: at start it moves its channel to descriptor
/// 10 (`F_DUPFD_CLOEXEC`), which needs `RLIMIT_NOFILE` above 10.
const MIN_OPEN_FILES: u64 = 11;

/// Configures and starts a [`Pool`](crate::Pool). Setters take `&mut self`; [`build`](Self::build)
/// checks the whole configuration.
#[derive(Clone, Debug, Default)]
pub struct PoolBuilder {
    worker: Option<PathBuf>,
    worker_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Clearing, removals and working directory (`worker_env.rs`).
    pub(crate) worker_env: crate::worker_env::WorkerEnv,
    /// Where task output goes (`worker_env.rs` sets it).
    pub(crate) task_output: crate::output::TaskOutput,
    workers: Option<usize>,
    min_workers: Option<usize>,
    idle_timeout: Option<Duration>,
    max_frame: Option<usize>,
    start_timeout: Option<Duration>,
    timeout: Option<Duration>,
    grace: Option<Duration>,
    retry: Option<RetryPolicy>,
    max_tasks_per_worker: Option<u64>,
    max_rss: Option<u64>,
    rlimits: Rlimits,
    queue_capacity: Option<usize>,
    prefetch: usize,
    max_unread_bytes: Option<usize>,
}

impl PoolBuilder {
    /// The worker executable. Default: this program (`std::env::current_exe()`), which
    /// must then call `procpool::init()` first thing in `main`.
    pub fn worker(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.worker = Some(path.into());
        self
    }

    /// Extra command-line arguments for every worker.
    pub fn worker_args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.worker_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// An environment variable for every worker (on top of the supervisor's own).
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Most worker processes at once. Default: the available CPUs.
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = Some(n);
        self
    }

    /// Workers kept warm even when idle; more are started on demand up to
    /// [`workers`](Self::workers). Default: all of them (a fixed-size pool).
    pub fn min_workers(&mut self, n: usize) -> &mut Self {
        self.min_workers = Some(n);
        self
    }

    /// Stop workers idle for this long, down to [`min_workers`](Self::min_workers).
    pub fn idle_timeout(&mut self, d: Duration) -> &mut Self {
        self.idle_timeout = Some(d);
        self
    }

    /// Largest frame accepted from or sent to a worker (arguments and results included).
    /// Default 64 MiB; at most 4 GiB - 1.
    pub fn max_frame_bytes(&mut self, n: usize) -> &mut Self {
        self.max_frame = Some(n);
        self
    }

    /// How long a new worker may take to complete its handshake. Default 10 s.
    pub fn start_timeout(&mut self, d: Duration) -> &mut Self {
        self.start_timeout = Some(d);
        self
    }

    /// Default deadline of a task (a task's own [`Task::timeout`](crate::Task::timeout)
    /// wins). At the deadline the worker's group gets SIGTERM, then SIGKILL after the
    /// [`grace`](Self::grace) period; the task fails with `timed_out`. Default: none.
    pub fn timeout(&mut self, d: Duration) -> &mut Self {
        self.timeout = Some(d);
        self
    }

    /// Time between the SIGTERM and the SIGKILL of a timed-out task. Zero kills at once.
    /// Also how long a worker told to exit (drained, recycled, idle) may take before it
    /// is killed. Default 1 s.
    pub fn grace(&mut self, d: Duration) -> &mut Self {
        self.grace = Some(d);
        self
    }

    /// Default retry policy (a task's own [`Task::retry`](crate::Task::retry) wins).
    /// Default: [`RetryPolicy::NEVER`].
    pub fn retry(&mut self, policy: RetryPolicy) -> &mut Self {
        self.retry = Some(policy);
        self
    }

    /// Replace a worker after it ran this many tasks (1 = a fresh process per task).
    pub fn max_tasks_per_worker(&mut self, n: u64) -> &mut Self {
        self.max_tasks_per_worker = Some(n);
        self
    }

    /// Kill a worker whose resident memory goes above `bytes` while it runs a task, failing
    /// the task with `limit_exceeded`. Checked two ways:
    ///
    /// - every 20 ms while a task runs, the memory of the worker's process group, killed
    ///   at the first reading above the limit (the task's children count too: on Linux,
    ///   those still in the worker's process tree; see `procpool_os::group_rss_bytes`);
    /// - on Linux, when a task ends, the worker's own peak over that task (its `VmHWM`,
    ///   reset at the task's start through `/proc/self/clear_refs`, by the worker itself,
    ///   so tasks sent ahead with [`prefetch`](Self::prefetch) each get their own). A task
    ///   that went above the limit between two readings and returned still ends
    ///   `limit_exceeded`, its message giving the peak, and its worker is replaced.
    ///
    /// The peak is the worker process's alone: a brief peak in a child the task started is
    /// seen by the readings only. Where no peak can be measured (macOS; a `/proc` missing
    /// or refusing the reset) the readings alone enforce the limit, and a task that
    /// allocates and frees a large block between two of them can finish under it.
    pub fn max_rss(&mut self, bytes: u64) -> &mut Self {
        self.max_rss = Some(bytes);
        self
    }

    /// `RLIMIT_AS` for every worker (address space, reserved memory included). An
    /// allocation past it aborts the worker (`crashed`, SIGABRT). Linux only: macOS does
    /// not enforce it, so there the pool's build fails with [`PoolError::Config`]; use
    /// [`max_rss`](Self::max_rss) instead.
    pub fn rlimit_address_space(&mut self, bytes: u64) -> &mut Self {
        self.rlimits.address_space = Some(bytes);
        self
    }

    /// `RLIMIT_CPU` for every worker, in CPU seconds over the worker's life; a worker past
    /// it gets SIGXCPU and its task fails with `limit_exceeded`.
    pub fn rlimit_cpu_seconds(&mut self, secs: u64) -> &mut Self {
        self.rlimits.cpu_seconds = Some(secs);
        self
    }

    /// `RLIMIT_NOFILE` for every worker; at least 11 (the worker keeps its channel on
    /// descriptor 10), a lower value fails the build.
    pub fn rlimit_open_files(&mut self, n: u64) -> &mut Self {
        self.rlimits.open_files = Some(n);
        self
    }

    /// Bound the queue of waiting tasks: [`Pool::submit`](crate::Pool::submit) then fails
    /// with `queue_full` when it is full, while [`Pool::enqueue`](crate::Pool::enqueue),
    /// [`Pool::run`](crate::Pool::run) and [`Pool::run_blocking`](crate::Pool::run_blocking)
    /// wait for room. Default: unbounded.
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = Some(n);
        self
    }

    /// Tasks sent ahead to a busy worker, so it starts the next one without a round trip
    /// (for many tiny tasks). Off (0) by default. Crash attribution stays exact: only the
    /// running task fails with its worker; prefetched ones go back to the queue, and a
    /// cancel of a prefetched task removes it before it starts.
    pub fn prefetch(&mut self, n: usize) -> &mut Self {
        self.prefetch = n;
        self
    }

    /// Most bytes of messages from one task (`procpool::send_message`) that its handle
    /// has not read yet ([`TaskHandle::recv`](crate::TaskHandle::recv)). A task whose next
    /// message would go past it is killed and fails with `limit_exceeded` (not retried):
    /// a parent that does not keep up must not grow the supervisor without bound. One
    /// message is always accepted whatever its size (up to the frame limit). Messages
    /// of a task whose handle was dropped are discarded as they come. Default 64 MiB.
    pub fn max_unread_message_bytes(&mut self, n: usize) -> &mut Self {
        self.max_unread_bytes = Some(n);
        self
    }

    pub(crate) fn settings(&self) -> Result<Settings, PoolError> {
        let worker = match &self.worker {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| {
                PoolError::Config(format!("cannot find the current executable: {e}"))
            })?,
        };
        let worker = self.worker_env.resolve_worker(worker)?;
        let max_workers = match self.workers {
            Some(0) => return Err(PoolError::Config("a pool needs at least one worker".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let min_workers = self.min_workers.unwrap_or(max_workers);
        if min_workers > max_workers {
            return Err(PoolError::Config(format!(
                "min_workers ({min_workers}) is above workers ({max_workers})"
            )));
        }
        let max_frame = self.max_frame.unwrap_or(DEFAULT_MAX_FRAME);
        if !(1024..=u32::MAX as usize).contains(&max_frame) {
            return Err(PoolError::Config(format!(
                "max frame of {max_frame} bytes is outside 1 KiB ..= 4 GiB - 1"
            )));
        }
        if self.max_tasks_per_worker == Some(0) {
            return Err(PoolError::Config(
                "max_tasks_per_worker must be at least 1".into(),
            ));
        }
        if self.queue_capacity == Some(0) {
            return Err(PoolError::Config(
                "queue_capacity must be at least 1".into(),
            ));
        }
        self.rlimits.check()?;
        if let Some(n) = self.rlimits.open_files
            && n < MIN_OPEN_FILES
        {
            return Err(PoolError::Config(format!(
                "rlimit_open_files must be at least {MIN_OPEN_FILES}, not {n}: a worker keeps \
                 its channel on descriptor 10"
            )));
        }
        Ok(Settings {
            worker,
            worker_args: self.worker_args.clone(),
            env: self.env.clone(),
            worker_env: self.worker_env.clone(),
            task_output: self.task_output,
            max_workers,
            min_workers,
            idle_timeout: self.idle_timeout,
            max_frame,
            start_timeout: self.start_timeout.unwrap_or(Duration::from_secs(10)),
            timeout: self.timeout,
            grace: self.grace.unwrap_or(Duration::from_secs(1)),
            retry: self.retry.unwrap_or_default(),
            max_tasks_per_worker: self.max_tasks_per_worker,
            max_rss: self.max_rss,
            rlimits: self.rlimits,
            queue_capacity: self.queue_capacity,
            prefetch: self.prefetch,
            max_unread_bytes: self.max_unread_bytes.unwrap_or(DEFAULT_MAX_UNREAD_BYTES),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classes_and_backoff() {
        let p = RetryPolicy::new(2).backoff(Duration::from_millis(100), Duration::from_millis(300));
        let crash = TaskError::Crashed {
            signal: Some(9),
            exit_code: None,
            stderr_tail: vec![],
        };
        let user = TaskError::User {
            type_name: "E".into(),
            message: "m".into(),
        };
        assert!(p.retries(&crash, 1) && p.retries(&crash, 2) && !p.retries(&crash, 3));
        assert!(!p.retries(&user, 1) && p.also_task_errors().retries(&user, 1));
        assert!(!p.retries(&TaskError::Cancelled, 1));
        for attempt in 1..6 {
            let full = Duration::from_millis(100 << (attempt - 1)).min(Duration::from_millis(300));
            let d = p.delay(attempt);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
}
