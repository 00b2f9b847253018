//! The child side of procpool: what runs inside a worker process.
//!
//! It defines the build-time task registry ([`TASKS`], filled by `#[procpool::task]`), the
//! worker main loop entered by [`init`], and the task context a running function talks
//! through ([`report_progress`], [`send_message`], [`recv_message`]). The supervisor that
//! starts workers is `procpool-core`; the wire format is `procpool-proto`; users reach all
//! of this through the `procpool` facade.
//!
//! ```no_run
//! // First line of `main`: in a worker process this serves tasks and never returns.
//! procpool_worker::init();
//! assert!(!procpool_worker::is_worker());
//! ```
//!
//! # Caveats
//! - A worker runs one task at a time on its main thread; `async` tasks run on a
//!   current-thread tokio runtime created on first use. Called inside a tokio runtime
//!   (from a `#[tokio::main]` function), [`init`] serves from a thread of its own instead.
//! - [`init`] removes the supervisor's `PROCPOOL_*` variables from the worker's
//!   environment: programs a task starts, procpool binaries included, run normally.
//! - A progress report or message larger than the pool's frame cap is not sent; the task
//!   then fails with a codec error that names its size.
//! - Tasks defined in a library crate are only registered if the binary links that crate:
//!   reference something from it, or write `extern crate that_crate as _;`.
//! - A panic is caught and reported, and the worker stays usable; a panic under
//!   `panic = "abort"` ends the process and is reported as a crash (SIGABRT).
#![deny(missing_docs)]

mod context;
mod errors;
mod outbound;
mod registry;
mod runtime;
mod window;

pub use context::{current_task_id, recv_message, report_progress, send_message};
pub use errors::WorkerError;
pub use registry::{TASKS, TaskEntry, decode_args, encode_result, manifest, user_error};
pub use runtime::{block_on, init, is_worker};

#[doc(hidden)]
pub use linkme;
