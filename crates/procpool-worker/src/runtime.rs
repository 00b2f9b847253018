//! The worker main loop: handshake, then one `Run` at a time until told to stop.

use std::cell::RefCell;
use std::future::Future;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use procpool_proto::{
    DEFAULT_MAX_FRAME, ENV_MAX_FRAME, ENV_PARENT_PID, ENV_PREFETCH, ENV_RLIMITS, ENV_WORKER,
    FromWorker, Hello, PROTOCOL_VERSION, TaskFailure, ToWorker,
};

use crate::context::{CHANNEL, Channel, Inbound, Reader, Writer};
use crate::errors::WorkerError;
use crate::registry;
use crate::window::Window;

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

pub(crate) fn request_shutdown() {
    SHUTDOWN.store(true, Ordering::Relaxed);
}

/// Whether this process was started as a procpool worker.
pub fn is_worker() -> bool {
    std::env::var_os(ENV_WORKER).is_some()
}

/// Enters worker mode if this process was started by a procpool supervisor, and never
/// returns in that case; otherwise returns at once. Call it first thing in `main`, before
/// any thread or runtime is started.
pub fn init() {
    if !is_worker() {
        return;
    }
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("procpool worker: {msg}");
            // EX_SOFTWARE: distinguishes a broken worker from a task's own exit code.
            70
        }
    };
    std::process::exit(code);
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

fn run() -> Result<(), WorkerError> {
    let parent = env_number(ENV_PARENT_PID)?
        .ok_or_else(|| WorkerError::Env(format!("{ENV_PARENT_PID} is not set")))?;
    procpool_os::die_with_parent(parent as u32)?;
    procpool_os::keep_freed_memory();
    if let Ok(spec) = std::env::var(ENV_RLIMITS) {
        procpool_os::apply_rlimits(&spec)?;
    }
    let max_frame = env_number(ENV_MAX_FRAME)?.map_or(DEFAULT_MAX_FRAME, |v| v as usize);
    let stream = UnixStream::from(procpool_os::take_worker_channel()?);
    let writer = stream
        .try_clone()
        .map_err(|e| WorkerError::Frame(e.into()))?;
    install_panic_hook();

    let hello = procpool_proto::encode_hello(&Hello {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
        tasks: registry::manifest(),
    })?;
    let mut frame = Vec::with_capacity(hello.len() + 4);
    frame.extend_from_slice(&(hello.len() as u32).to_le_bytes());
    frame.extend_from_slice(&hello);
    std::io::Write::write_all(&mut &writer, &frame).map_err(|e| WorkerError::Frame(e.into()))?;

    let prefetch = std::env::var_os(ENV_PREFETCH).is_some();
    let (inbound, reader_stream) = if prefetch {
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
        writer: Mutex::new(Writer {
            stream: writer,
            buf: Vec::new(),
        }),
        current: Mutex::new(None),
    });

    match (&channel.inbound, reader_stream) {
        (Inbound::Prefetch(window), Some(stream)) => {
            std::thread::Builder::new()
                .name("procpool-reader".into())
                .spawn(move || window.read_loop(channel, stream))
                .map_err(|e| WorkerError::Frame(e.into()))?;
            while let Some(q) = window.next() {
                run_one(channel, q.task_id, &q.name, &q.args, q.encoding);
                window.done();
            }
        }
        (Inbound::Direct(reader), _) => {
            while !SHUTDOWN.load(Ordering::Relaxed) {
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
                    } => run_one(channel, task_id, &name, &args, encoding),
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

/// Runs one task and reports its outcome.
fn run_one(
    channel: &Channel,
    task_id: procpool_proto::TaskId,
    name: &str,
    args: &[u8],
    encoding: procpool_proto::Encoding,
) {
    *channel.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(task_id);
    let outcome = call(name, args, encoding);
    // Flush task output before the result, so the supervisor sees a task's own lines
    // before it hears that the task ended.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    *channel.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    match outcome {
        Ok(result) => channel.send_done_ok(task_id, &result),
        Err(failure) => channel.send(&FromWorker::Done {
            task_id,
            outcome: Err(failure),
        }),
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
