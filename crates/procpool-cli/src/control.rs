//! The control socket of `procpool run`, `serve` and `agent`: a local socket (the
//! `interprocess` crate's, on tokio) on which `procpool ctl` asks a live supervisor for
//! its status, jobs and workers, cancels a job or starts a drain. [`ControlServer::open`]
//! binds it (mode 0600; a stale socket of a dead process is replaced, a live one
//! refused) and serves it until dropped, which removes it. The protocol is in
//! `ctl_wire.rs`; the jobs of a batch come from its board (`board.rs`), the tasks of
//! `serve` and `agent` from `procpool-serve` and `procpool-broker`.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, Name};
use interprocess::os::unix::local_socket::ListenerOptionsExt as _;
use procpool::{Pool, Uuid};
use procpool_broker::AgentTasks;
use procpool_serve::{CancelOutcome, ServeControl};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{Semaphore, mpsc};

use crate::board::{Board, CancelRefused};
use crate::ctl_wire::{
    self, CancelReply, DrainReply, JobView, JobsReply, Reply, Request, StatusReply, WorkerCounts,
    WorkerView, WorkersReply, job_state,
};

/// Connections served at once; more are answered `busy` and closed, so a runaway client
/// cannot pile up tasks in the supervisor.
const MAX_CONNECTIONS: usize = 16;

/// A connection that sends no complete request for this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// What the control socket answers from: the supervisor's pool, its live jobs, and
/// where a drain request goes.
pub(crate) struct Control {
    /// `run`, `serve` or `agent`.
    subcommand: &'static str,
    pool: Pool,
    jobs: Jobs,
    /// Where `drain` goes (the first time only).
    drain: mpsc::UnboundedSender<()>,
    draining: AtomicBool,
    started: Instant,
}

/// Where a supervisor's live jobs are listed and cancelled.
pub(crate) enum Jobs {
    /// `procpool run`: the batch's board, which also counts the records.
    Batch(Arc<Board>),
    /// `procpool serve`: the server's tasks not ended yet.
    Serve(ServeControl),
    /// `procpool agent`: the broker tasks it runs.
    Agent(AgentTasks),
}

impl Control {
    pub(crate) fn new(
        subcommand: &'static str,
        pool: Pool,
        jobs: Jobs,
        drain: mpsc::UnboundedSender<()>,
    ) -> Control {
        Control {
            subcommand,
            pool,
            jobs,
            drain,
            draining: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Marks the supervisor as draining (a signal started it), for `status`.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The reply to one request line (newline included or not).
    async fn answer(&self, line: &[u8]) -> Reply {
        let bad = |e: serde_json::Error| {
            Reply::error(
                "bad_request",
                format!(
                    "not a request ({e}); send one JSON object per line, e.g. \
                     {{\"v\": {}, \"cmd\": \"status\"}}",
                    ctl_wire::VERSION
                ),
            )
        };
        // The version first: a request of another version may have other fields.
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return bad(e),
        };
        if let Some(v) = value.get("v").and_then(|v| v.as_u64())
            && v != u64::from(ctl_wire::VERSION)
        {
            return Reply::error(
                "unsupported_version",
                format!(
                    "request version {v} is not supported; this supervisor speaks version {}",
                    ctl_wire::VERSION
                ),
            );
        }
        let request: Request = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => return bad(e),
        };
        match (request.cmd.as_str(), request.id) {
            ("status", None) => Reply::ok(self.status().await),
            ("jobs", None) => Reply::ok(JobsReply { jobs: self.jobs() }),
            ("workers", None) => Reply::ok(self.workers().await),
            ("cancel", Some(id)) => self.cancel(id).await,
            ("drain", None) => self.drain(),
            ("cancel", None) => Reply::error("bad_request", "cancel needs the job's \"id\""),
            (cmd @ ("status" | "jobs" | "workers" | "drain"), Some(_)) => {
                Reply::error("bad_request", format!("{cmd} takes no \"id\""))
            }
            (cmd, _) => Reply::error(
                "bad_request",
                format!(
                    "unknown command {cmd:?}; the commands are status, jobs, workers, \
                     cancel and drain"
                ),
            ),
        }
    }

    async fn status(&self) -> StatusReply {
        let pool = self.pool.status().await;
        StatusReply {
            supervisor: self.subcommand.to_owned(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            draining: self.draining.load(Ordering::Acquire),
            jobs: match &self.jobs {
                Jobs::Batch(board) => Some(board.counts()),
                Jobs::Serve(_) | Jobs::Agent(_) => None,
            },
            pool_queued: pool.queued,
            workers: WorkerCounts {
                busy: pool.busy,
                idle: pool.idle,
                starting: pool.starting,
                size: self.pool.size(),
            },
        }
    }

    /// The live jobs, running ones first (longest running first).
    fn jobs(&self) -> Vec<JobView> {
        let millis = |d: Duration| d.as_millis() as u64;
        match &self.jobs {
            Jobs::Batch(board) => board.jobs(),
            Jobs::Serve(server) => server
                .tasks()
                .into_iter()
                .map(|t| JobView {
                    id: t.id.to_string(),
                    task: t.task,
                    status: job_state(t.running).into(),
                    attempt: None,
                    worker_pid: t.worker_pids.first().copied(),
                    elapsed_ms: Some(millis(t.elapsed)),
                })
                .collect(),
            Jobs::Agent(agent) => agent
                .list()
                .into_iter()
                .map(|t| JobView {
                    id: t.id.to_string(),
                    task: t.name,
                    status: job_state(t.worker_pid.is_some()).into(),
                    attempt: Some(t.attempt),
                    worker_pid: t.worker_pid,
                    elapsed_ms: t.elapsed.map(millis),
                })
                .collect(),
        }
    }

    async fn workers(&self) -> WorkersReply {
        // Every worker of a serve task's graph, not only the one `jobs` shows.
        let on: HashMap<u32, String> = match &self.jobs {
            Jobs::Serve(server) => server
                .tasks()
                .into_iter()
                .flat_map(|t| {
                    let id = t.id.to_string();
                    t.worker_pids.into_iter().map(move |pid| (pid, id.clone()))
                })
                .collect(),
            _ => self
                .jobs()
                .into_iter()
                .filter_map(|j| Some((j.worker_pid?, j.id)))
                .collect(),
        };
        let workers = self
            .pool
            .worker_pids()
            .await
            .into_iter()
            .map(|pid| WorkerView {
                pid,
                rss_bytes: procpool::pool::rss_bytes(pid),
                job: on.get(&pid).cloned(),
            })
            .collect();
        WorkersReply { workers }
    }

    async fn cancel(&self, id: String) -> Reply {
        let unknown = || {
            Reply::error(
                "unknown_job",
                format!("no running or queued job has the id {id:?}"),
            )
        };
        let was = match &self.jobs {
            Jobs::Batch(board) => match board.cancel(&id) {
                Ok(was) => was,
                Err(CancelRefused::Unknown) => return unknown(),
                Err(CancelRefused::AlreadyCancelled) => {
                    return Reply::error(
                        "unknown_job",
                        format!("job {id:?} is already cancelled; its record is on its way"),
                    );
                }
            },
            Jobs::Serve(server) => {
                let Ok(uuid) = Uuid::parse_str(&id) else {
                    return unknown();
                };
                match server.cancel(uuid).await {
                    CancelOutcome::Cancelled { was_running } => job_state(was_running),
                    CancelOutcome::AlreadyFinished => {
                        return Reply::error("unknown_job", format!("task {id} already finished"));
                    }
                    _ => return unknown(),
                }
            }
            Jobs::Agent(agent) => {
                let Ok(uuid) = Uuid::parse_str(&id) else {
                    return unknown();
                };
                // A task the list no longer shows is ending: it was running.
                let queued = agent
                    .list()
                    .iter()
                    .any(|t| t.id == uuid && t.worker_pid.is_none());
                let was = job_state(!queued);
                match agent.cancel(uuid).await {
                    Ok(true) => was,
                    Ok(false) => return unknown(),
                    Err(e) => {
                        return Reply::error(
                            "unavailable",
                            format!("cannot cancel task {id} on the broker: {e}"),
                        );
                    }
                }
            }
        };
        tracing::info!(job = %id, was, "job cancelled by procpool ctl");
        Reply::ok(CancelReply {
            id,
            was: was.into(),
        })
    }

    fn drain(&self) -> Reply {
        if !self.draining.swap(true, Ordering::AcqRel) {
            tracing::info!("procpool ctl drain: no new job starts; the running ones finish");
            // The receiver lives as long as the supervisor's loop; after it, nothing is
            // left to drain.
            let _ = self.drain.send(());
        }
        let unfinished = match &self.jobs {
            Jobs::Batch(board) => board.unfinished(),
            _ => self.jobs().len() as u64,
        };
        Reply::ok(DrainReply { unfinished })
    }
}

/// A bound control socket, served on the current runtime until this is dropped; the drop
/// stops serving and removes the socket file (if it is still the one bound here).
pub(crate) struct ControlServer {
    path: PathBuf,
    /// (device, inode) of the socket file bound here: a file put in its place later by
    /// someone else is not removed.
    file: Option<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` and starts serving `control`. A `--control PATH` that cannot be
    /// bound is an error; without one, a default socket that cannot be made (no private
    /// directory) costs only the control socket, with a warning: the batch or the
    /// service matters more than looking into it.
    pub(crate) fn open(
        path: Option<&Path>,
        control: Arc<Control>,
    ) -> anyhow::Result<Option<ControlServer>> {
        let (path, given) = match path {
            Some(p) => (p.to_owned(), true),
            None => match ctl_wire::default_socket(control.subcommand) {
                Ok(p) => (p, false),
                Err(e) => {
                    tracing::warn!(error = %e, "no control socket (procpool ctl will not reach this process)");
                    return Ok(None);
                }
            },
        };
        let listener = match bind(&path) {
            Ok(listener) => listener,
            Err(e) => {
                let e = e.context(format!("cannot open the control socket {}", path.display()));
                if given {
                    return Err(e);
                }
                tracing::warn!(
                    error = format!("{e:#}"),
                    "no control socket (procpool ctl will not reach this process)"
                );
                return Ok(None);
            }
        };
        let file = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        tracing::info!(path = %path.display(), "control socket open (procpool ctl)");
        let task = tokio::spawn(serve(listener, control));
        Ok(Some(ControlServer { path, file, task }))
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn name(path: &Path) -> io::Result<Name<'_>> {
    path.to_fs_name::<GenericFilePath>()
}

/// Binds a listener on `path` with mode 0600. A socket file already there is replaced
/// when nobody listens on it (its process died without removing it) and refused when
/// someone does: two supervisors on one socket would answer for each other.
fn bind(path: &Path) -> anyhow::Result<Listener> {
    match listen(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            use interprocess::local_socket::{Stream as SyncStream, traits::Stream as _};
            match SyncStream::connect(name(path)?) {
                Ok(_) => {
                    anyhow::bail!("another live process listens on it; pass another --control PATH")
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path).context("cannot remove the stale socket")?;
                    Ok(listen(path)?)
                }
                Err(e) => Err(e).context("a file is in the way, and it is no live socket"),
            }
        }
        other => Ok(other?),
    }
}

fn listen(path: &Path) -> io::Result<Listener> {
    let name = name(path)?;
    let options = || {
        ListenerOptions::new()
            .name(name.clone())
            // Removal is ours (`ControlServer::drop`), after checking the file is ours.
            .reclaim_name(false)
    };
    match options().mode(0o600).create_tokio() {
        // Where the socket's mode cannot be set before bind (macOS), set it after:
        // the directory is private to the user, so nobody else can connect meanwhile.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            let listener = options().create_tokio()?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(listener)
        }
        other => other,
    }
}

async fn serve(listener: Listener, control: Arc<Control>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let conn = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to be freed.
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(async move {
                    if let Err(e) = connection(conn, &control).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let busy = Reply::error(
                        "busy",
                        format!("{MAX_CONNECTIONS} control connections are open; try again"),
                    );
                    let _ = (&conn).write_all(&busy.to_line()).await;
                });
            }
        }
    }
}

/// Answers the requests of one connection, one line each, until it closes, stays idle
/// past [`IDLE`], or sends a line longer than [`ctl_wire::MAX_REQUEST`].
async fn connection(conn: Stream, control: &Control) -> io::Result<()> {
    let mut reader = BufReader::new(&conn);
    let mut tx = &conn;
    let mut line = Vec::new();
    loop {
        line.clear();
        // At most one byte past the bound is read: enough to know it was passed.
        let mut limited = (&mut reader).take(ctl_wire::MAX_REQUEST as u64 + 1);
        let read = tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await;
        match read {
            Err(_) | Ok(Ok(0)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        if line.len() > ctl_wire::MAX_REQUEST {
            let reply = Reply::error(
                "too_large",
                format!(
                    "a request is at most {} bytes; closing the connection",
                    ctl_wire::MAX_REQUEST
                ),
            );
            tx.write_all(&reply.to_line()).await?;
            return Ok(());
        }
        let reply = control.answer(&line).await;
        tx.write_all(&reply.to_line()).await?;
    }
}
