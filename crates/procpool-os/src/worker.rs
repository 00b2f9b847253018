//! The worker side of the channel hand-off, the same on every Unix procpool supports.

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, fcntl};

use crate::errors::OsError;

/// In the worker: moves the channel from stdin to a high close-on-exec descriptor, then
/// puts `/dev/null` on stdin, so neither the task nor anything it execs can read or write
/// the protocol by accident. `F_DUPFD_CLOEXEC` exists on Linux and macOS alike, so the
/// new descriptor is close-on-exec from birth.
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

/// Blocks until `fd` has data to read (or is at its end). A thread blocked in `read` on
/// a socket is also woken each time the peer consumes what this socket wrote (the
/// write-space wake-up shares the wait queue); `poll` for input only sleeps through those.
pub fn wait_readable(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), std::io::Error> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        match poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
