//! procpool: a multi-process worker pool with subprocess isolation.
//!
//! Register functions with [`task`]; each gets a typed handle (`add::task(1, 2)` is a
//! [`Task<i64>`](Task)) that runs it in a warm worker process of a [`Pool`]. A task can be
//! awaited or blocked on, reports progress, exchanges messages with the parent, and is
//! killed (with its whole process group) when cancelled. When it fails, [`TaskError`] says
//! exactly why: the function's own error, a panic, a crash with its signal or exit code,
//! a cancel, bad arguments, a protocol error.
//!
//! [`MetaTask`] fans tasks out to workers and combines their results (failing fast by
//! killing the other inputs' workers), and [`TaskManager`] shares runs between consumers
//! by cache key, publishes [`TaskEvent`]s per channel and keeps results to be taken once.
//!
//! The crate root holds what most programs need; the rest is grouped: [`pool`] (pool
//! status, the worker manifest, orphan reaping), [`manager`] (the task manager's
//! building blocks: cache keys, stores, inputs of your own types, JSON task graphs),
//! [`records`] (the error records the CLI and `procpool serve` write) and [`worker`]
//! (the worker side's introspection).
//!
//! This crate only re-exports: the supervisor lives in `procpool-core`, orchestration in
//! `procpool-manager`, the worker side in `procpool-worker`, the wire format in
//! `procpool-proto`, the attributes in `procpool-macros`.
//!
//! ```no_run
//! #[procpool::task]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! #[procpool::task]
//! fn count(n: u32) -> u32 {
//!     for i in 1..=n {
//!         procpool::report_progress(i as f32 / n as f32, format!("{i}/{n}"));
//!     }
//!     n
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // In a worker process (this same binary, re-executed) this never returns.
//!     procpool::init();
//!     let pool = procpool::Pool::builder().workers(2).build()?;
//!     assert_eq!(pool.run_blocking(add::task(1, 2))?, 3);
//!     let n = pool.run_blocking(count::task(3).on_progress(|p| println!("{:.0}%", p.fraction * 100.0)))?;
//!     assert_eq!(n, 3);
//!     Ok(())
//! }
//! ```
//!
//! # On a tokio runtime
//! [`PoolBuilder::build`] runs the pool on its own supervisor thread and works from any
//! code. A tokio application can instead run it on its own runtime with
//! [`PoolBuilder::start`]: the pool's dispatcher and executors become tasks of that
//! runtime, so a round trip wakes no supervisor thread in between (shorter round trips,
//! higher throughput of one-at-a-time tasks). Everything else behaves the same.
//!
//! ```no_run
//! # #[procpool::task]
//! # fn add(a: i64, b: i64) -> i64 { a + b }
//! #[procpool::main]
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = procpool::Pool::builder().workers(2).start().await?;
//!     assert_eq!(pool.run(add::task(1, 2)).await?, 3);
//!     pool.shutdown(procpool::Shutdown::Drain).await; // every worker reaped
//!     Ok(())
//! }
//! ```
//!
//! # Many tasks, and a plain `main`
//! [`Pool::map`] runs an iterator of tasks with a bounded number in flight and yields
//! `(task id, result)` as they end ([`Pool::map_ordered`]: in input order); dropping the
//! stream cancels the rest. Every async call has a blocking twin for code without a
//! runtime: [`Pool::map_blocking`], [`Pool::status_blocking`],
//! [`Pool::worker_pids_blocking`], [`Pool::shutdown_blocking`],
//! [`TaskHandle::started_blocking`], [`MetaTask::run_blocking`], and [`Pool::block_on`]
//! for any other future.
//!
//! # Examples
//! Runnable programs in `crates/procpool/examples/` (`cargo run -p procpool --example
//! NAME`; the test command runs them all):
//! - `batch_files`: a crash-isolated batch over files from a plain `main`
//!   ([`Pool::map_ordered_blocking`], a retry policy, a crash reported per file).
//! - `tokio_service`: a tokio service with [`PoolBuilder::start`], concurrent requests, a
//!   streamed batch ([`Pool::map`]) and a cancel by drop ([`CancelOnDropHandle`]).
//! - `two_consumers`: a [`TaskManager`] with two consumers sharing one run by cache key,
//!   each with its own event channel.
//!
//! # The re-exec contract
//! By default the pool starts `std::env::current_exe()` as its workers, with the
//! environment variable [`worker::WORKER_ENV`] set. [`init`] (or `#[procpool::main]` on
//! `main`) must run first in `main`: in a worker it serves tasks and exits, never
//! returning into the application's `main`. Any other binary that calls `init` can serve as the worker
//! ([`PoolBuilder::worker`]).
//!
//! # Caveats
//! - **Linking**: tasks defined in a library crate are registered only if the binary links
//!   that crate; if nothing else references it, write `extern crate that_crate as _;`.
//! - **Dropping**: the last [`Pool`] clone kills and reaps every worker; dropping a
//!   [`TaskHandle`] detaches its task; dropping a [`Pool::run`] future, a
//!   [`CancelOnDropHandle`] ([`TaskHandle::cancel_on_drop`]) or the stream of
//!   [`Pool::map`] cancels what has not finished. A pool
//!   from [`PoolBuilder::start`] cannot block its runtime: its last drop SIGKILLs every
//!   worker's group before it returns and leaves the reaping to the runtime; await
//!   [`Pool::shutdown`] to know every worker is reaped.
//! - **A pool on your runtime** ([`PoolBuilder::start`]) lives as long as that runtime: if
//!   the runtime shuts down with the pool alive, its workers are killed but may stay
//!   zombies until the process exits (or until a [`pool::OrphanReaper`] reaps them).
//!   Its blocking calls ([`Pool::run_blocking`], [`TaskHandle::wait`],
//!   [`TaskHandle::recv_blocking`]) need the runtime to run meanwhile: do not call them on
//!   its own threads (on a multi-thread runtime they go through `block_in_place`; on the
//!   thread of a current-thread runtime they would deadlock, so they panic). From
//!   `spawn_blocking` or a thread of your own they are fine. Workers are still spawned
//!   from one long-lived thread ("procpool-spawner"), so they die with the process, not
//!   with a runtime thread. The runtime needs its I/O and time drivers (`enable_all`).
//! - **Grandchildren**: cancel and crash kill the worker's whole process group; a
//!   grandchild that moved to its own group or session escapes. Killed grandchildren are
//!   re-parented to PID 1, which may never reap them; a process whose only children are
//!   pool workers can adopt and reap them with [`pool::OrphanReaper`] (the `procpool`
//!   CLI does).
//! - **Encoding**: arguments and results are bincode 2 for typed tasks and JSON for
//!   [`Task::json`]; use [`Bytes`] for byte payloads (a plain `Vec<u8>` is encoded element
//!   by element). Frames are capped ([`PoolBuilder::max_frame_bytes`], 64 MiB by default).
//! - **Memory limit**: [`PoolBuilder::max_rss`] reads the resident memory of the worker's
//!   process tree every 20 ms while a task runs and, on Linux, checks the worker's exact
//!   peak over each task when it ends (a block allocated and freed between two readings
//!   counts). The peak is the worker process's own: a child a task started is seen by the
//!   readings only (and not at all once it left the worker's tree), and on macOS there
//!   are only the readings. Bound children with an rlimit
//!   ([`PoolBuilder::rlimit_address_space`], inherited by children) or in the task.
//! - **Worker environment**: [`init`] removes the supervisor's `PROCPOOL_*` variables in
//!   the worker, so programs a task starts (procpool binaries included) run normally.
//!   Forgetting `init` is caught: a worker whose `main` runs anyway cannot build a pool,
//!   and the parent's error says to call `procpool::init()` first. Inside
//!   `#[tokio::main]`, `init` serves from a thread of its own so `async` tasks still work;
//!   `#[procpool::main]` above `#[tokio::main]` spares the worker that runtime.
//! - **Zombies**: every worker is reaped by its executor (on the supervisor thread, or on
//!   the runtime of a `start` pool); tokio's orphan queue is relied on only for workers
//!   whose runtime went away under them.
//! - **macOS** (checked at compile time; the suite runs on Linux): there is no child
//!   subreaper, so [`pool::OrphanReaper::start`] fails and a dead worker's orphaned
//!   grandchildren go to launchd (which reaps them); one that left its worker's process
//!   group is then never killed by procpool. macOS does not enforce `RLIMIT_AS`, so a pool
//!   with [`PoolBuilder::rlimit_address_space`] fails to build there; use
//!   [`PoolBuilder::max_rss`] (its readings only: macOS has no resettable peak, so a task
//!   that allocates and frees between two readings can finish under it). Workers die with their supervisor through a kqueue watch
//!   on it instead of `PR_SET_PDEATHSIG` (see `procpool-os`).
#![deny(missing_docs)]

pub use procpool_core::{
    Pool, PoolBuilder, PoolError, Progress, RetryPolicy, Shutdown, Task, TaskError, TaskHandle,
};
pub use procpool_macros::{main, task};
pub use procpool_manager::{MetaError, MetaTask, TaskEvent, TaskManager};
pub use procpool_worker::{current_task_id, init, recv_message, report_progress, send_message};
pub use serde_bytes::ByteBuf as Bytes;
/// Task ids ([`Task::id`], [`TaskHandle::id`], [`current_task_id`]).
pub use uuid::Uuid;

/// A [`Pool`]'s status and introspection beyond running tasks: what its workers serve,
/// how busy it is, and reaping the grandchildren its kills leave behind.
pub mod pool {
    pub use procpool_core::OrphanReaper;
    pub use procpool_core::{
        CancelOnDropHandle, CapturedOutput, MapItem, MapIter, MapStream, TaskOutput, TaskWatch,
    };
    pub use procpool_core::{ParamInfo, PoolStatus, TaskInfo};
    pub use procpool_os::{rss_bytes, signal_name};
}

/// The building blocks of [`MetaTask`] and
/// [`TaskManager`]: shared runs by cache key, result stores, inputs of
/// your own types, JSON task graphs, and the handles and errors that come with them.
pub mod manager {
    pub use procpool_manager::{
        Cached, Identity, InputContext, Inputs, JsonGraph, JsonGraphError, ManagerError,
        MemoryStore, MetaHandle, PendingTask, Ready, Store, StoreError, StoreKey,
        TaskManagerBuilder,
    };
}

/// Records of how a task ended, as the `procpool` CLI's result lines and `procpool serve`
/// write them (`error.kind`, `error.input`, ...).
pub mod records {
    pub use procpool_manager::{Ending, ErrorReport, FailedInput};
}

/// The worker side: whether this process is a worker, and what it serves.
pub mod worker {
    pub use procpool_proto::ENV_WORKER as WORKER_ENV;
    pub use procpool_worker::is_worker;
    /// The tasks linked into the running binary, sorted by name: what this binary would
    /// serve as a worker (empty for a binary that registers none, such as the `procpool`
    /// CLI).
    pub use procpool_worker::manifest as registered_tasks;
}

// The paths before the grouping, kept (out of the docs) so code written against them
// still compiles.
#[doc(hidden)]
pub use crate::manager::{
    Cached, Identity, InputContext, Inputs, JsonGraph, JsonGraphError, ManagerError, MemoryStore,
    MetaHandle, PendingTask, Ready, Store, StoreError, StoreKey, TaskManagerBuilder,
};
#[doc(hidden)]
pub use crate::pool::*;
#[doc(hidden)]
pub use crate::records::{Ending, ErrorReport, FailedInput};
#[doc(hidden)]
pub use crate::worker::{WORKER_ENV, is_worker, registered_tasks};

/// Used by the code `#[procpool::task]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use procpool_proto::{Encoding, TaskFailure};
    pub use procpool_worker::{
        TASKS, TaskEntry, block_on, decode_args, encode_result, linkme, user_error,
    };
}
