//! Starting a worker process: the command, the channel hand-off, and the thread the spawn
//! runs on (the parent-death signal follows the spawning *thread*).

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::Arc;

use procpool_os::{Pgid, Signal};
use procpool_proto::{
    ENV_MAX_FRAME, ENV_PARENT_PID, ENV_PEAK_RSS, ENV_PREFETCH, ENV_RLIMITS, ENV_WORKER,
};
use tokio::process::Child;
use tokio::sync::oneshot;

use crate::config::Settings;
use crate::host::{Groups, Refused};

/// Where a pool spawns its workers.
#[derive(Clone)]
pub(crate) enum Spawner {
    /// On the thread that asks: the pool's own supervisor thread (`build`), which lives
    /// as long as the pool.
    Here,
    /// On procpool-os's spawner thread (`start`), inside the context of the pool's
    /// runtime so that tokio registers the child (and its pipes) with that runtime.
    Thread(tokio::runtime::Handle),
}

/// How the executors of one pool get their worker processes.
#[derive(Clone)]
pub(crate) struct Launcher {
    pub(crate) spawner: Spawner,
    pub(crate) groups: Arc<Groups>,
}

/// A worker process just spawned, not yet through its handshake.
pub(crate) struct Spawned {
    /// First field, so it is dropped before `child` (see [`GroupGuard`]).
    pub(crate) guard: GroupGuard,
    pub(crate) child: Child,
    pub(crate) pid: u32,
    /// The supervisor's end of the channel (close-on-exec, blocking).
    pub(crate) channel: OwnedFd,
}

/// A spawn on its way: done at once ([`Spawner::Here`]) or running on the spawner thread.
// Large only where tokio's `Child` is (Linux, with its pidfd reaper); not on macOS.
#[cfg_attr(
    target_os = "linux",
    expect(
        clippy::large_enum_variant,
        reason = "one per worker start, moved once into its executor task"
    )
)]
pub(crate) enum Pending {
    Done(Result<Spawned, Refused>),
    Waiting(oneshot::Receiver<Result<Spawned, Refused>>),
}

impl Pending {
    pub(crate) async fn finish(self) -> Result<Spawned, Refused> {
        match self {
            Pending::Done(result) => result,
            Pending::Waiting(rx) => rx.await.unwrap_or_else(|_| {
                Err(Refused::Failed(
                    "the procpool-spawner thread dropped the spawn".into(),
                ))
            }),
        }
    }
}

impl Launcher {
    /// Spawns a worker process where this pool spawns them.
    pub(crate) fn launch(&self, settings: &Arc<Settings>) -> Pending {
        match &self.spawner {
            Spawner::Here => Pending::Done(spawn_process(settings, &self.groups)),
            Spawner::Thread(runtime) => {
                let (tx, rx) = oneshot::channel();
                let (settings, groups, runtime) =
                    (settings.clone(), self.groups.clone(), runtime.clone());
                let job = Box::new(move || {
                    // The executor that asked is gone (its runtime is shutting down): a
                    // child spawned now would be registered with a dying runtime.
                    if tx.is_closed() {
                        return;
                    }
                    let _entered = runtime.enter();
                    // If the executor went away meanwhile, the Spawned comes back here and
                    // is dropped: its guard kills the group.
                    let _ = tx.send(spawn_process(&settings, &groups));
                });
                match procpool_os::on_spawner_thread(job) {
                    Ok(()) => Pending::Waiting(rx),
                    Err(e) => Pending::Done(Err(Refused::Failed(e.to_string()))),
                }
            }
        }
    }
}

/// Spawns one worker process: its own process group, the channel on its stdin, the
/// settings in its environment. Recorded in `groups` (and in procpool-os's worker list)
/// before anyone can see it exit.
fn spawn_process(settings: &Settings, groups: &Arc<Groups>) -> Result<Spawned, Refused> {
    let (ours, theirs) = procpool_os::channel_pair().map_err(|e| Refused::Failed(e.to_string()))?;
    let mut cmd = tokio::process::Command::new(&settings.worker);
    settings.worker_env.apply(&mut cmd);
    cmd.args(&settings.worker_args)
        .envs(settings.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_WORKER, "1")
        .env(ENV_PARENT_PID, std::process::id().to_string())
        .env(ENV_MAX_FRAME, settings.max_frame.to_string())
        .envs(settings.rlimits.to_env().map(|v| (ENV_RLIMITS, v)))
        .envs((settings.prefetch > 0).then_some((ENV_PREFETCH, "1")))
        .envs(settings.max_rss.map(|max| (ENV_PEAK_RSS, max.to_string())))
        // The worker end rides in on stdin; the worker moves it to a high descriptor and
        // reopens stdin on /dev/null. No pre_exec closure: std keeps its posix_spawn path.
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Registered as a worker before any orphan reaper can see it exit.
    let spawned = groups.spawn(
        || procpool_os::spawn_worker(|| cmd.spawn(), Child::id),
        |child| child.id().expect("a just-spawned child has a pid"),
    );
    // The Command holds the worker's end of the channel; drop it now, or our side would
    // never see EOF when the worker dies.
    drop(cmd);
    let child = spawned?;
    let pid = child.id().expect("a just-spawned child has a pid");
    Ok(Spawned {
        guard: GroupGuard {
            pgid: Some(Pgid::of_leader(pid)),
            groups: groups.clone(),
        },
        child,
        pid,
        channel: ours,
    })
}

/// Kills the worker's whole group if it is dropped unreaped: the executor panicked, the
/// runtime shut down under it, or a spawn came back to nobody. Disarmed once the worker
/// is reaped. Wherever it is kept, it must be dropped before the `Child`: dropping a
/// `Child` may reap the leader, and a reaped leader's group id may be recycled.
pub(crate) struct GroupGuard {
    pgid: Option<Pgid>,
    groups: Arc<Groups>,
}

impl GroupGuard {
    /// The worker was just killed and will be reaped next: take its group out of the
    /// pool's list **before** the leader is reaped, so that the pool's close can never
    /// signal a recycled group id. The guard itself stays armed until [`Self::disarm`].
    pub(crate) fn leave_pool(&self) {
        if let Some(pgid) = self.pgid {
            self.groups.forget(pgid);
        }
    }

    /// The worker was reaped: nothing to kill any more.
    pub(crate) fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            crate::unwind::signal(pgid, Signal::SIGKILL, "worker dropped without being reaped");
            self.groups.forget(pgid);
            // tokio's orphan queue reaps it now; an orphan reaper may as well.
            procpool_os::worker_reaped(pgid.get());
        }
    }
}
