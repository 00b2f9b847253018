//! Adopted orphans: a supervisor that owns every child it has (the `procpool` CLI) can
//! become a child subreaper, so a worker's grandchildren are re-parented to it instead of
//! to PID 1 when the worker dies. That matters where PID 1 does not reap (containers
//! without an init, some sandboxes): there, killed grandchildren stay zombies forever. A
//! grandchild that moved to its own process group or session escapes every group kill,
//! but not this: it is adopted too, and killed at shutdown by [`kill_adopted`].
//!
//! Pools register their workers here ([`spawn_worker`], [`worker_reaped`]) so that
//! [`reap_adopted`] never takes the exit status of a worker its executor is waiting for.

use std::collections::HashSet;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::os;

/// Pids of the live workers of every pool in this process: spawned, not yet reaped.
static WORKERS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn workers() -> MutexGuard<'static, Option<HashSet<u32>>> {
    WORKERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spawns a worker with `spawn` and registers its pid (from `pid_of`) before any reaper
/// can look: the lock is held across the spawn, so a worker that dies at once is never
/// mistaken for an adopted orphan.
pub fn spawn_worker<C>(
    spawn: impl FnOnce() -> io::Result<C>,
    pid_of: impl FnOnce(&C) -> Option<u32>,
) -> io::Result<C> {
    let mut live = workers();
    let child = spawn()?;
    if let Some(pid) = pid_of(&child) {
        live.get_or_insert_with(HashSet::new).insert(pid);
    }
    Ok(child)
}

/// The worker `pid` was reaped by its owner (or handed to another reaper): forget it.
pub fn worker_reaped(pid: u32) {
    if let Some(live) = workers().as_mut() {
        live.remove(&pid);
    }
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER` on Linux): orphaned
/// descendants are re-parented to it. Only for a process that does not wait for children
/// of its own outside procpool's pools, since [`reap_adopted`] reaps every other exited
/// child. Fails with [`io::ErrorKind::Unsupported`] on macOS, which has no subreaper.
pub fn become_subreaper() -> io::Result<()> {
    os::become_subreaper()
}

/// Holds off every worker spawn of the process (they run under the same lock) while a
/// descriptor is not yet close-on-exec, so no worker inherits it.
#[cfg_attr(
    all(target_os = "linux", not(test)),
    expect(
        dead_code,
        reason = "Linux creates every descriptor close-on-exec atomically"
    )
)]
pub(crate) fn hold_spawns() -> MutexGuard<'static, Option<HashSet<u32>>> {
    workers()
}

/// Reaps every exited child of this process that is not a registered worker; returns
/// their pids. Cheap enough to call on every SIGCHLD: it reads only this process's
/// children lists.
pub fn reap_adopted() -> Vec<u32> {
    let live = workers();
    let mut reaped = Vec::new();
    for pid in os::own_children() {
        if is_worker(&live, pid) || !os::is_zombie(pid) {
            continue;
        }
        if let Ok(status) = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG))
            && status.pid().is_some()
        {
            tracing::debug!(pid, ?status, "reaped an adopted orphan");
            reaped.push(pid);
        }
    }
    reaped
}

/// SIGKILLs every child of this process that is not a registered worker (adopted
/// grandchildren still running, e.g. ones that left their worker's group), then reaps
/// them; returns their pids. For shutdown, after the pools are gone.
///
/// The worker list's lock is held only for short passes, never across a wait: pools
/// spawning or reaping workers meanwhile are not held up. Each pass looks at the children
/// again under the lock, and a pid is signalled or reaped only while it is an unreaped
/// child that is no worker (so it cannot have been recycled).
pub fn kill_adopted() -> Vec<u32> {
    let mut killed = Vec::new();
    let mut signalled = HashSet::new();
    // A SIGKILLed process exits promptly; this bounds the wait for one stuck in the
    // kernel (uninterruptible sleep) instead of blocking on it forever.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = {
            let live = workers();
            let mut left = 0;
            for pid in os::own_children() {
                if is_worker(&live, pid) {
                    continue;
                }
                let target = Pid::from_raw(pid as i32);
                if !os::is_zombie(pid) && signalled.insert(pid) {
                    tracing::warn!(pid, "killing a leftover descendant of a worker");
                    let _ = kill(target, Signal::SIGKILL);
                }
                match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
                    Ok(status) if status.pid().is_some() => killed.push(pid),
                    Ok(_) => left += 1,
                    // Not our child any more (reaped elsewhere): nothing to wait for.
                    Err(_) => {}
                }
            }
            left
        };
        if left == 0 || Instant::now() >= deadline {
            return killed;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn is_worker(live: &Option<HashSet<u32>>, pid: u32) -> bool {
    live.as_ref().is_some_and(|l| l.contains(&pid))
}

#[cfg(test)]
mod tests {
    use std::sync::TryLockError;

    use super::*;

    /// Where `socketpair` cannot set close-on-exec atomically (macOS), the channel is made
    /// under [`hold_spawns`]; that only keeps it from procpool's own spawns if every
    /// spawn runs under the same lock.
    #[test]
    fn worker_spawns_run_under_the_lock_that_holds_spawns_off() {
        let held_during_spawn = spawn_worker(
            || Ok(matches!(WORKERS.try_lock(), Err(TryLockError::WouldBlock))),
            |_| None,
        )
        .unwrap();
        assert!(held_during_spawn);
        let guard = hold_spawns();
        assert!(matches!(WORKERS.try_lock(), Err(TryLockError::WouldBlock)));
        drop(guard);
    }
}
