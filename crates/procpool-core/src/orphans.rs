//! [`OrphanReaper`]: the supervisor side of adopting orphaned grandchildren.

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

/// Makes this process a child subreaper and reaps the orphans it adopts, on every SIGCHLD:
/// a worker's grandchildren, re-parented here when the worker dies, never stay zombies,
/// even where PID 1 does not reap (containers without an init). [`OrphanReaper::finish`]
/// then kills and reaps the adopted processes still running, such as grandchildren that
/// left their worker's process group and so escaped its group kill.
///
/// Only for a process whose children are all pool workers (the `procpool` CLI): every
/// other child of the process that exits is reaped here, which would take its exit status
/// away from code that waits for it.
#[derive(Debug)]
pub struct OrphanReaper {
    task: JoinHandle<()>,
}

impl OrphanReaper {
    /// Starts reaping on the current tokio runtime (its signal driver must be enabled).
    /// Fails with [`std::io::ErrorKind::Unsupported`] on macOS, which has no child
    /// subreaper: orphaned grandchildren go to launchd there.
    pub fn start() -> std::io::Result<Self> {
        procpool_os::become_subreaper()?;
        let mut sigchld = signal(SignalKind::child())?;
        let task = tokio::spawn(async move {
            // A signal may stand for several exits, and exits before the listener started
            // are caught by the first pass.
            loop {
                procpool_os::reap_adopted();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(Self { task })
    }

    /// Stops reaping, then kills and reaps every adopted process still there; returns
    /// how many. Call it after the pools are shut down.
    pub fn finish(self) -> usize {
        self.task.abort();
        procpool_os::reap_adopted().len() + procpool_os::kill_adopted().len()
    }
}
