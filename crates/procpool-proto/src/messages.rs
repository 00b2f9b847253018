//! Message vocabulary of the worker channel.

use serde::{Deserialize, Serialize};

/// Version of the message enums below, and of how they travel. Bump on any change to
/// their layout or to the channel. 4: the worker's frames after `Hello` come on a pipe
/// whose read end rides with `Hello`, large ones on the channel behind
/// [`FromWorker::OnChannel`].
pub const PROTOCOL_VERSION: u32 = 4;

/// First bytes of the handshake frame: lets the supervisor tell "not a procpool worker"
/// from "a procpool worker of another version" before decoding anything else.
pub const HANDSHAKE_MAGIC: [u8; 8] = *b"procpool";

/// Set (to `1`) in a worker's environment: the binary must enter worker mode instead of
/// running its own `main`.
pub const ENV_WORKER: &str = "PROCPOOL_WORKER";

/// The supervisor's pid, so the worker can detect that it was orphaned before it armed
/// its parent-death signal.
pub const ENV_PARENT_PID: &str = "PROCPOOL_PARENT_PID";

/// The frame cap the supervisor will accept, so the worker refuses to send bigger ones.
pub const ENV_MAX_FRAME: &str = "PROCPOOL_MAX_FRAME";

/// Resource limits the worker applies to itself at start: `as=BYTES,cpu=SECS,nofile=N`
/// (any subset).
pub const ENV_RLIMITS: &str = "PROCPOOL_RLIMITS";

/// Set when the supervisor may send `Run`s ahead of time (a prefetch window): the worker
/// then reads its channel on a separate thread so it can answer `Cancel` while a task runs.
pub const ENV_PREFETCH: &str = "PROCPOOL_PREFETCH";

/// The pool's memory limit in bytes (`max_rss`), when it has one: the worker then resets
/// its resident-memory high-water mark at each task's start and reports in its `Done` a
/// peak above this limit, where the platform has such a mark (Linux).
pub const ENV_PEAK_RSS: &str = "PROCPOOL_PEAK_RSS";

/// Largest frame accepted unless the pool is configured otherwise (64 MiB).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Identity of one task run. Every frame about a task carries it, so a late frame for a
/// task the worker no longer owns (a cancel racing a result) can be recognised and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub u128);

/// How a task's arguments and result are encoded inside `Run` and `Done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    /// bincode 2 (standard config): compact, used by the typed Rust API.
    Bincode,
    /// JSON: arguments are a JSON array of positional arguments; used by the CLI.
    Json,
}

/// Supervisor to worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run one registered function.
    Run {
        /// Task identity, echoed on every answer.
        task_id: TaskId,
        /// Registered function name.
        name: String,
        /// Encoded positional arguments.
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
        /// Encoding of `args` and of the result.
        encoding: Encoding,
    },
    /// A message for the running task (read with `procpool::recv_message`).
    Message {
        /// Task the message is for; dropped by the worker if it is not the running one.
        task_id: TaskId,
        /// Opaque payload.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Finish the current task (if any) and exit.
    Shutdown,
    /// Drop this task if it is still waiting in the worker's prefetch queue (answered
    /// with `Skipped`), or say that it already runs (answered with `Running`). Only sent
    /// to workers started with a prefetch window.
    Cancel {
        /// The task to drop.
        task_id: TaskId,
    },
}

/// `ToWorker::Run` with its name and arguments borrowed: the supervisor encodes a task
/// from where it lies, without copying them into a message first. Same bytes on the wire
/// as `ToWorker::Run` (bincode numbers variants in order, and `Run` is the first).
#[derive(Debug, Serialize)]
pub enum RunRef<'a> {
    /// See `ToWorker::Run`.
    Run {
        /// Task identity, echoed on every answer.
        task_id: TaskId,
        /// Registered function name.
        name: &'a str,
        /// Encoded positional arguments.
        #[serde(with = "serde_bytes")]
        args: &'a [u8],
        /// Encoding of `args` and of the result.
        encoding: Encoding,
    },
}

/// Worker to supervisor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Progress reported by the running task.
    Progress {
        /// Reporting task.
        task_id: TaskId,
        /// Completed fraction, 0.0 to 1.0.
        fraction: f32,
        /// Free-form description of the step.
        message: String,
    },
    /// A message from the running task to the parent.
    Message {
        /// Sending task.
        task_id: TaskId,
        /// Opaque payload.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The task ended; the worker is ready for the next `Run`.
    Done {
        /// Finished task.
        task_id: TaskId,
        /// The most memory the worker held resident while the task ran, in bytes (its
        /// high-water mark, reset at the task's start), when that went above the limit
        /// given in `ENV_PEAK_RSS`; otherwise `None`, as where the platform has no such
        /// mark. Before `outcome`, so a result can still end the frame (see
        /// `write_done_ok`).
        peak_rss: Option<u64>,
        /// Encoded result, or why there is none.
        outcome: Result<serde_bytes::ByteBuf, TaskFailure>,
    },
    /// Answer to `Cancel`: the task was dropped from the prefetch queue, never started.
    Skipped {
        /// The dropped task.
        task_id: TaskId,
    },
    /// Answer to `Cancel`: the task is running; only killing the worker stops it.
    Running {
        /// The running task.
        task_id: TaskId,
    },
    /// Sent on the result pipe: the next frame is a large one and comes on the channel
    /// (see `LARGE_FRAME`); the frames after it come on the pipe again.
    OnChannel,
}

/// A frame from the worker of at least this many bytes goes on the channel, behind a
/// [`FromWorker::OnChannel`] on the result pipe, instead of on the pipe itself: a socket
/// moves large buffers faster than a pipe, which copies page by page, while many small
/// frames go faster through a pipe.
pub const LARGE_FRAME: usize = 64 << 10;

/// Why a task produced no result, as seen from inside the worker. Failures only the
/// supervisor can see (crashes, timeouts, cancels) are not here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskFailure {
    /// The function returned `Err`.
    User {
        /// Rust type name of the error value.
        type_name: String,
        /// Its `Display` text.
        message: String,
    },
    /// The function panicked; the panic was caught and the worker stays usable.
    Panicked {
        /// Panic payload as text.
        message: String,
        /// `file:line:column` of the panic.
        location: Option<String>,
        /// Captured when `RUST_BACKTRACE` is set in the worker's environment.
        backtrace: Option<String>,
    },
    /// No function of that name is registered in this worker.
    UnknownTask {
        /// The name asked for.
        name: String,
    },
    /// The arguments did not decode into the function's parameter types.
    BadArgs {
        /// What did not fit.
        message: String,
    },
    /// The result could not be encoded.
    Codec {
        /// Encoder message.
        message: String,
    },
}

/// One parameter of a registered function, as written in its source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamInfo {
    /// Parameter name.
    pub name: String,
    /// Parameter type, as written.
    pub type_name: String,
}

/// One registered function, as announced in the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Registered name.
    pub name: String,
    /// Positional parameters.
    pub params: Vec<ParamInfo>,
    /// Result type, as written (the `Ok` type for a fallible function).
    pub result: String,
    /// Whether the function can return a user error.
    pub fallible: bool,
    /// Whether the function is `async`.
    pub is_async: bool,
}

/// The handshake a worker sends first: after the magic and the version, so a supervisor
/// of another version can still name both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the worker speaks.
    pub version: u32,
    /// The worker's process id, as it sees it.
    pub pid: u32,
    /// Everything it can run.
    pub tasks: Vec<TaskInfo>,
}
