//! The control protocol between `procpool ctl` and a live supervisor, and where its
//! sockets live. A leaf shared by both ends (`control.rs` serves, `ctl.rs` asks): one
//! JSON object per line each way, versioned, every request answered by one reply.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the request and reply objects (`"v"`); a request of another version is
/// answered with an `unsupported_version` error naming both.
pub(crate) const VERSION: u32 = 1;

/// Most bytes of one request line, newline included: a request is a command and a job
/// id, so anything longer is refused and the connection closed, unread.
pub(crate) const MAX_REQUEST: usize = 64 << 10;

/// Most bytes of one reply the client reads (a `jobs` listing of a large window).
pub(crate) const MAX_REPLY: usize = 64 << 20;

/// One request: `{"v": 1, "cmd": "cancel", "id": "job-42"}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    pub(crate) v: u32,
    pub(crate) cmd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
}

/// One reply: `ok` with a `result`, or not with an `error`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) v: u32,
    pub(crate) ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ReplyError>,
}

/// Why a request was refused.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReplyError {
    /// `bad_request`, `too_large`, `unsupported_version`, `unknown_job`, `busy`,
    /// `unavailable` (an agent's broker could not be reached).
    pub(crate) kind: String,
    pub(crate) message: String,
}

impl Reply {
    pub(crate) fn ok(result: impl Serialize) -> Reply {
        // Every result type is plain data: encoding it to a Value cannot fail.
        let result = serde_json::to_value(result).unwrap_or(serde_json::Value::Null);
        Reply {
            v: VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub(crate) fn error(kind: &str, message: impl Into<String>) -> Reply {
        Reply {
            v: VERSION,
            ok: false,
            result: None,
            error: Some(ReplyError {
                kind: kind.to_owned(),
                message: message.into(),
            }),
        }
    }

    /// The reply as one line, newline included.
    pub(crate) fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// `status`: counts by status, workers by state.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StatusReply {
    /// `run`, `serve` or `agent`.
    pub(crate) supervisor: String,
    pub(crate) pid: u32,
    pub(crate) uptime_ms: u64,
    /// A drain was asked for (by `ctl drain` or a signal): no new job starts.
    pub(crate) draining: bool,
    /// Jobs by status (`run` only: a batch counts its records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jobs: Option<JobCounts>,
    /// Tasks waiting in the pool for a worker.
    pub(crate) pool_queued: usize,
    pub(crate) workers: WorkerCounts,
}

/// The jobs of a `procpool run` by status.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct JobCounts {
    /// On a worker now.
    pub(crate) running: u64,
    /// Dispatched, not on a worker yet (in the pool's queue, waiting for nested tasks or
    /// for a retry).
    pub(crate) queued: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    pub(crate) bad_job: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerCounts {
    pub(crate) busy: usize,
    pub(crate) idle: usize,
    pub(crate) starting: usize,
    /// Most workers at once.
    pub(crate) size: usize,
}

/// `jobs`: the live jobs, running first (longest running first), then queued.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobsReply {
    pub(crate) jobs: Vec<JobView>,
}

/// A live job of `run`, a task of `serve` not ended yet, or a broker task an `agent` runs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobView {
    /// The job's id (`run`), the task id (`serve`, `agent`): what `cancel` takes.
    pub(crate) id: String,
    pub(crate) task: String,
    /// `running` or `queued`.
    pub(crate) status: String,
    /// The attempt running: 2 and on after retries (`run`); the broker's attempt
    /// (`agent`). Absent for `serve` and while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) attempt: Option<u32>,
    /// The worker of the current attempt (`serve`: one of the task's workers, for a
    /// graph of nested tasks running on several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) worker_pid: Option<u32>,
    /// Time on that worker so far (`serve`: since the task was accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) elapsed_ms: Option<u64>,
}

/// What a live job is doing, as `jobs` and `cancel` say it: on a worker, or not yet.
pub(crate) fn job_state(running: bool) -> &'static str {
    if running { "running" } else { "queued" }
}

/// `workers`: the live worker processes by pid.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkersReply {
    pub(crate) workers: Vec<WorkerView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerView {
    pub(crate) pid: u32,
    /// Resident memory of the worker process; absent if it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rss_bytes: Option<u64>,
    /// The job (or task) it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) job: Option<String>,
}

/// `cancel`: what the job was doing when the cancel reached it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CancelReply {
    pub(crate) id: String,
    /// `running` or `queued`.
    pub(crate) was: String,
}

/// `drain`: how many jobs are left to finish.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DrainReply {
    /// Jobs (or tasks) still running or queued, which finish before the exit.
    pub(crate) unfinished: u64,
}

/// The directory of this user's control sockets: `$XDG_RUNTIME_DIR/procpool` (already
/// private to the user), else `/tmp/procpool-UID`. Created 0700 when missing; one that
/// another user owns, or that others may enter, is refused: a socket there could be
/// replaced by someone else.
pub(crate) fn socket_dir() -> io::Result<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => Path::new(&runtime).join("procpool"),
        None => std::env::temp_dir().join(format!("procpool-{}", euid())),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(with_path(e, "cannot create", &dir)),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| with_path(e, "cannot read", &dir))?;
    if !meta.is_dir() || meta.uid() != euid() || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory private to this user (it must be owned by uid {} \
                 with mode 0700); pass --control PATH",
                dir.display(),
                euid()
            ),
        ));
    }
    Ok(dir)
}

/// The default socket of this process: `SUBCOMMAND-PID.sock` in [`socket_dir`], so two
/// supervisors never pick the same one.
pub(crate) fn default_socket(subcommand: &str) -> io::Result<PathBuf> {
    Ok(socket_dir()?.join(format!("{subcommand}-{}.sock", std::process::id())))
}

/// The sockets in [`socket_dir`], sorted; whether each is live is the caller's question.
pub(crate) fn candidate_sockets() -> io::Result<Vec<PathBuf>> {
    let dir = socket_dir()?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| with_path(e, "cannot list", &dir))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    found.sort();
    Ok(found)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
