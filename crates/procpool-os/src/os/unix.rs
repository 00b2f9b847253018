//! Unix implementation of the channel hand-off and the worker's self-protection.

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::errors::OsError;

/// A connected stream socket pair, both ends close-on-exec: `(supervisor_end, worker_end)`.
/// The worker end is given to the child as its stdin (the one place where the spawn path
/// clears close-on-exec for exactly one descriptor) so the spawn needs no `pre_exec`
/// closure and keeps std's fast `posix_spawn` path.
pub fn channel_pair() -> Result<(OwnedFd, OwnedFd), OsError> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| OsError::Channel(e.into()))
}

/// In the worker: moves the channel from stdin to a high close-on-exec descriptor, then
/// puts `/dev/null` on stdin, so neither the task nor anything it execs can read or write
/// the protocol by accident.
pub fn take_worker_channel() -> Result<OwnedFd, OsError> {
    let setup = |what| {
        move |e: nix::Error| OsError::WorkerSetup {
            what,
            source: e.into(),
        }
    };
    let stdin = std::io::stdin();
    let raw = fcntl(stdin.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(setup("dup channel"))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this descriptor; nothing else owns it.
    let channel = unsafe { OwnedFd::from_raw_fd(raw) };
    let null = File::open("/dev/null").map_err(|e| OsError::WorkerSetup {
        what: "open /dev/null",
        source: e,
    })?;
    nix::unistd::dup2_stdin(&null).map_err(setup("replace stdin"))?;
    Ok(channel)
}

/// In the worker: ask the kernel to SIGKILL us when the supervisor's spawning thread dies,
/// then check that the supervisor did not die before we asked (the race the check closes:
/// a parent that exits between our exec and the `prctl` would leave us orphaned for good).
pub fn die_with_parent(expected_parent: u32) -> Result<(), OsError> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|e| {
        OsError::WorkerSetup {
            what: "PR_SET_PDEATHSIG",
            source: e.into(),
        }
    })?;
    let parent = nix::unistd::getppid().as_raw() as u32;
    if parent != expected_parent {
        return Err(OsError::ParentGone {
            expected: expected_parent,
        });
    }
    Ok(())
}
