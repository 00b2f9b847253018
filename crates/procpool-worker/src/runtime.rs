//! The worker main loop: handshake, then one `Run` at a time until told to stop.
//!
//! The channel from the supervisor is a socket on the worker's stdin; what the worker
//! sends goes on a pipe it creates itself and hands over with its handshake (`Hello` on
//! the socket, the pipe's read end attached), so all its frames keep their order.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use procpool_proto::{
    DEFAULT_MAX_FRAME, ENV_MAX_FRAME, ENV_PARENT_PID, ENV_PEAK_RSS, ENV_PREFETCH, ENV_RLIMITS,
    ENV_WORKER, Hello, PROTOCOL_VERSION, TaskFailure, ToWorker,
};

use crate::context::{CHANNEL, Channel, Inbound, Reader, shutdown_requested};
use crate::errors::WorkerError;
use crate::outbound::Outbound;
use crate::registry;
use crate::window::Window;

/// Every variable the supervisor sets for its worker. `init` removes them all, so a
/// program a task starts (a procpool binary above all) does not believe it is a worker.
const WORKER_VARS: [&str; 6] = [
    ENV_WORKER,
    ENV_PARENT_PID,
    ENV_MAX_FRAME,
    ENV_RLIMITS,
    ENV_PREFETCH,
    ENV_PEAK_RSS,
];

/// Set by `init` when it takes this process into worker mode (and removes `ENV_WORKER`).
static SERVING: AtomicBool = AtomicBool::new(false);

/// Whether this process was started as a procpool worker.
pub fn is_worker() -> bool {
    SERVING.load(Ordering::Relaxed) || std::env::var_os(ENV_WORKER).is_some()
}

/// Enters worker mode if this process was started by a procpool supervisor, and never
/// returns in that case; otherwise returns at once. Call it first thing in `main`, before
/// any thread is started.
///
/// Inside a tokio runtime (called from a `#[tokio::main]` function) it serves from a
/// thread of its own, so that `async` tasks can run on the worker's own runtime; the
/// application's runtime stays idle. `#[procpool::main]` above `#[tokio::main]` avoids
/// starting that runtime at all.
pub fn init() {
    if std::env::var_os(ENV_WORKER).is_none() {
        return;
    }
    SERVING.store(true, Ordering::Relaxed);
    let env = WorkerEnv::take();
    let code = if tokio::runtime::Handle::try_current().is_ok() {
        // tokio refuses to start a runtime (the one `async` tasks run on) on a thread that
        // is inside another's: serve from a thread outside it.
        std::thread::Builder::new()
            .name("procpool-worker".into())
            .spawn(move || serve(env))
            .map_or(EX_SOFTWARE, |t| t.join().unwrap_or(EX_SOFTWARE))
    } else {
        serve(env)
    };
    std::process::exit(code);
}

/// Exit code of a broken worker (sysexits' EX_SOFTWARE): distinguishes it from a task's
/// own exit code.
const EX_SOFTWARE: i32 = 70;

fn serve(env: Result<WorkerEnv, WorkerError>) -> i32 {
    match env.and_then(run) {
        Ok(()) => 0,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("procpool worker: {msg}");
            EX_SOFTWARE
        }
    }
}

/// What the supervisor told the worker through its environment.
struct WorkerEnv {
    parent: u32,
    max_frame: usize,
    rlimits: Option<String>,
    prefetch: bool,
    /// The pool's memory limit: report a task's peak resident memory above it.
    max_rss: Option<u64>,
}

impl WorkerEnv {
    /// Reads the worker's variables, then removes them from the environment (whether
    /// they were valid or not).
    fn take() -> Result<WorkerEnv, WorkerError> {
        let env = WorkerEnv::read();
        for name in WORKER_VARS {
            // SAFETY: `init`'s contract is to run first in `main`, before any thread that
            // could read the environment concurrently. Under `#[tokio::main]` the
            // runtime's threads exist but are parked: `main` has given them nothing yet.
            unsafe { std::env::remove_var(name) };
        }
        env
    }

    fn read() -> Result<WorkerEnv, WorkerError> {
        let parent = env_number(ENV_PARENT_PID)?
            .ok_or_else(|| WorkerError::Env(format!("{ENV_PARENT_PID} is not set")))?;
        let parent = u32::try_from(parent)
            .map_err(|_| WorkerError::Env(format!("{ENV_PARENT_PID}={parent} is not a pid")))?;
        let max_frame = match env_number(ENV_MAX_FRAME)? {
            None => DEFAULT_MAX_FRAME,
            // The length prefix is a u32: a larger cap would let a frame's length wrap.
            Some(n) if n <= u64::from(u32::MAX) => usize::try_from(n).map_err(|_| {
                WorkerError::Env(format!("{ENV_MAX_FRAME}={n} does not fit this platform"))
            })?,
            Some(n) => {
                return Err(WorkerError::Env(format!(
                    "{ENV_MAX_FRAME}={n} exceeds the largest frame length a u32 holds ({})",
                    u32::MAX
                )));
            }
        };
        Ok(WorkerEnv {
            parent,
            max_frame,
            rlimits: std::env::var(ENV_RLIMITS).ok(),
            prefetch: std::env::var_os(ENV_PREFETCH).is_some(),
            max_rss: env_number(ENV_PEAK_RSS)?,
        })
    }
}

fn env_number(name: &str) -> Result<Option<u64>, WorkerError> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| WorkerError::Env(format!("{name}={v:?} is not a number"))),
        Err(_) => Ok(None),
    }
}

fn run(env: WorkerEnv) -> Result<(), WorkerError> {
    procpool_os::die_with_parent(env.parent)?;
    procpool_os::keep_freed_memory();
    if let Some(spec) = &env.rlimits {
        procpool_os::apply_rlimits(spec)?;
    }
    let max_frame = env.max_frame;
    let stream = UnixStream::from(procpool_os::take_worker_channel()?);
    // Every frame after the handshake goes out on a pipe of our own, whose read end
    // rides to the supervisor with the handshake: see `procpool_os::result_pipe`.
    let (results, pipe) = procpool_os::result_pipe()?;
    let large = stream
        .try_clone()
        .map_err(|e| WorkerError::Frame(e.into()))?;
    install_panic_hook();
    // Where the platform has no resettable mark (macOS, a read-only `/proc`), nothing is
    // reported and the supervisor's sampling alone enforces the limit.
    let mut peak = env.max_rss.and_then(|limit| {
        Some(PeakCheck {
            mark: procpool_os::PeakRss::open().ok()?,
            limit,
        })
    });

    let hello = procpool_proto::encode_hello(&Hello {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
        tasks: registry::manifest(),
    })?;
    let mut frame = Vec::with_capacity(hello.len() + 4);
    frame.extend_from_slice(&(hello.len() as u32).to_le_bytes());
    frame.extend_from_slice(&hello);
    procpool_os::send_with_fd(stream.as_fd(), &frame, results.as_fd())
        .map_err(|e| WorkerError::Frame(e.into()))?;
    // The supervisor holds the read end now; ours would only keep the pipe open.
    drop(results);

    let (inbound, reader_stream) = if env.prefetch {
        (Inbound::Prefetch(Window::default()), Some(stream))
    } else {
        (
            Inbound::Direct(Mutex::new(Reader {
                stream: std::io::BufReader::with_capacity(64 << 10, stream),
                buf: Vec::new(),
            })),
            None,
        )
    };
    let channel = CHANNEL.get_or_init(|| Channel {
        max_frame,
        inbound,
        outbound: Outbound::new(pipe, large, max_frame),
        current: Mutex::new(None),
        unsent: Mutex::new(None),
    });

    match (&channel.inbound, reader_stream) {
        (Inbound::Prefetch(window), Some(stream)) => {
            std::thread::Builder::new()
                .name("procpool-reader".into())
                .spawn(move || window.read_loop(&channel.outbound, max_frame, stream))
                .map_err(|e| WorkerError::Frame(e.into()))?;
            while let Some(q) = window.next() {
                run_one(channel, &mut peak, q.task_id, &q.name, &q.args, q.encoding);
                window.done();
            }
        }
        (Inbound::Direct(reader), _) => {
            while !shutdown_requested() {
                let msg = {
                    let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
                    let Reader { stream, buf } = &mut *r;
                    if !procpool_proto::read_frame(stream, buf, max_frame)? {
                        return Ok(()); // supervisor closed the channel: nothing more to do
                    }
                    procpool_proto::decode_message::<ToWorker>(buf)?
                };
                match msg {
                    ToWorker::Run {
                        task_id,
                        name,
                        args,
                        encoding,
                    } => run_one(channel, &mut peak, task_id, &name, &args, encoding),
                    // A late message for a task that already finished.
                    ToWorker::Message { .. } => {}
                    ToWorker::Cancel { .. } => {
                        return Err(WorkerError::Protocol("Cancel outside prefetch mode"));
                    }
                    ToWorker::Shutdown => break,
                }
            }
        }
        (Inbound::Prefetch(_), None) => unreachable!("prefetch mode always has its reader stream"),
    }
    Ok(())
}

/// The pool's memory limit and this worker's high-water mark, checked per task.
struct PeakCheck {
    mark: procpool_os::PeakRss,
    limit: u64,
}

/// Runs one task and reports its outcome, with its peak resident memory when `peak`
/// measured one above the pool's limit.
fn run_one(
    channel: &Channel,
    peak: &mut Option<PeakCheck>,
    task_id: procpool_proto::TaskId,
    name: &str,
    args: &[u8],
    encoding: procpool_proto::Encoding,
) {
    *channel.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(task_id);
    // Reset here, in the worker, right before the call: tasks run one after another on
    // this thread, so the mark is this task's alone even when the next one was sent
    // ahead (a reset by the supervisor would race the worker starting it). A reset that
    // failed leaves the mark of earlier tasks: then no figure is sent.
    let check = peak.as_mut().and_then(|p| p.mark.reset().ok().map(|()| p));
    let outcome = call(name, args, encoding);
    // After the call, which also encoded the result: that memory is the task's too.
    let peak_rss = check.and_then(|p| p.mark.above(p.limit).ok().flatten());
    // Flush task output before the result, so the supervisor sees a task's own lines
    // before it hears that the task ended.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    *channel.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    // A progress report or message that was never sent turns a success into a failure:
    // the parent must not take the run for complete.
    let unsent = channel.take_unsent();
    match (outcome, unsent) {
        (Ok(result), None) => channel.outbound.send_done_ok(task_id, peak_rss, &result),
        (Ok(_), Some(why)) => {
            let failure = TaskFailure::Codec { message: why };
            channel.outbound.send_done_err(task_id, peak_rss, failure)
        }
        (Err(failure), _) => channel.outbound.send_done_err(task_id, peak_rss, failure),
    }
}

fn call(
    name: &str,
    args: &[u8],
    encoding: procpool_proto::Encoding,
) -> Result<Vec<u8>, TaskFailure> {
    let Some(entry) = registry::find(name) else {
        return Err(TaskFailure::UnknownTask {
            name: name.to_owned(),
        });
    };
    match catch_unwind(AssertUnwindSafe(|| (entry.call)(args, encoding))) {
        Ok(outcome) => outcome,
        Err(payload) => Err(LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| TaskFailure::Panicked {
                message: payload_text(payload.as_ref()),
                location: None,
                backtrace: None,
            })),
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<TaskFailure>> = const { RefCell::new(None) };
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Records message, location and (when `RUST_BACKTRACE` asks for it) a backtrace, then
/// prints the usual line on stderr so the task's output shows it too.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = payload_text(info.payload());
        let location = info.location().map(|l| l.to_string());
        let bt = std::backtrace::Backtrace::capture();
        let backtrace =
            (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| bt.to_string());
        eprintln!(
            "task panicked at {}: {message}",
            location.as_deref().unwrap_or("<unknown>")
        );
        LAST_PANIC.with(|p| {
            *p.borrow_mut() = Some(TaskFailure::Panicked {
                message,
                location,
                backtrace,
            })
        });
    }));
}

/// Runs an `async` task to completion on the worker's current-thread tokio runtime
/// (created on first use, so workers that only run plain functions never pay for it).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds unless the OS is out of resources")
        });
        rt.block_on(fut)
    })
}
