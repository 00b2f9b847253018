//! Every signal procpool sends to a child goes through [`Pgid::signal`].

use nix::sys::signal;
use nix::unistd::Pid;

pub use nix::sys::signal::Signal;

/// The process group of one worker. Workers are started as leaders of their own group, so
/// the group id is the worker's pid; addressing the group (never a bare pid) is what makes a
/// kill reach the task's grandchildren too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pgid(u32);

impl Pgid {
    /// The group led by the worker with this pid (started with `process_group(0)`).
    pub fn of_leader(pid: u32) -> Self {
        Pgid(pid)
    }

    /// The group id.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Sends `sig` to every process in the group. `reason` is logged with the group, so
    /// each kill in a log says why it happened. A group that is already gone is not an
    /// error: the caller wanted it dead.
    pub fn signal(self, sig: Signal, reason: &str) {
        let Ok(raw) = i32::try_from(self.0) else {
            return;
        };
        // pid 0 or 1 would address our own group or every process: never send to those.
        if raw <= 1 {
            return;
        }
        // Sent before anything is logged: a log writer that panics (a closed stderr) must
        // not keep the kill from happening.
        let sent = signal::killpg(Pid::from_raw(raw), sig);
        tracing::debug!(
            pgid = self.0,
            signal = sig.as_str(),
            reason,
            "signalling worker group"
        );
        match sent {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid = self.0, error = %e, "killpg failed"),
        }
    }
}

/// In a worker: SIGKILLs its own process group (itself and its task's children), for
/// `reason`. The supervisor made the worker the leader of a group of its own, so this
/// reaches nobody else.
pub(crate) fn kill_own_group(reason: &str) {
    tracing::debug!(reason, "killing the worker's own process group");
    // pid 0 addresses the caller's own process group.
    let _ = signal::kill(Pid::from_raw(0), Signal::SIGKILL);
}
