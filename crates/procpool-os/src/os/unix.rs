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

/// The parent-death signal. A realtime signal nobody else uses, whose handler kills the
/// worker's whole process group: a plain `PR_SET_PDEATHSIG = SIGKILL` would kill only the
/// worker, and its task's grandchildren would outlive a SIGKILLed supervisor.
#[cfg(target_os = "linux")]
fn parent_death_signal() -> nix::libc::c_int {
    nix::libc::SIGRTMIN() + 3
}

#[cfg(target_os = "linux")]
extern "C" fn kill_own_group(_: nix::libc::c_int) {
    // SAFETY: kill(2) is async-signal-safe; pid 0 addresses our own process group, which
    // the supervisor created for this worker alone.
    unsafe {
        nix::libc::kill(0, nix::libc::SIGKILL);
    }
}

/// In the worker: keep memory freed by one task for the next instead of handing it back
/// to the kernel at once. A task that builds a 10 MiB result otherwise pays for fresh,
/// zeroed pages on every call (page faults were half of the worker's time in the blob
/// benchmark). Blocks below 32 MiB come from the heap, and up to 64 MiB of free heap top
/// is kept; recycling by RSS (`max_rss`) still bounds a worker. glibc only: other
/// allocators keep their own policy.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 32 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// In the worker: ask the kernel to signal us when the supervisor's spawning thread dies
/// (the handler then kills our whole group), then check that the supervisor did not die
/// before we asked: a parent that exits between our exec and the `prctl` would leave us
/// orphaned for good.
pub fn die_with_parent(expected_parent: u32) -> Result<(), OsError> {
    #[cfg(target_os = "linux")]
    {
        let setup = |what| OsError::WorkerSetup {
            what,
            source: std::io::Error::last_os_error(),
        };
        let sig = parent_death_signal();
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
        // only calls an async-signal-safe function.
        unsafe {
            let mut action: nix::libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = kill_own_group as *const () as usize;
            nix::libc::sigemptyset(&mut action.sa_mask);
            if nix::libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err(setup("install the parent-death handler"));
            }
            if nix::libc::prctl(
                nix::libc::PR_SET_PDEATHSIG,
                sig as nix::libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(setup("PR_SET_PDEATHSIG"));
            }
        }
    }
    let parent = nix::unistd::getppid().as_raw() as u32;
    if parent != expected_parent {
        return Err(OsError::ParentGone {
            expected: expected_parent,
        });
    }
    Ok(())
}

/// Resident memory of a process, from `/proc/<pid>/statm`; `None` if it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page)
}

/// In the worker: applies `as=BYTES,cpu=SECS,nofile=N` (any subset) to itself.
pub fn apply_rlimits(spec: &str) -> Result<(), OsError> {
    use nix::sys::resource::{Resource, setrlimit};
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let bad = || OsError::WorkerSetup {
            what: "parse the resource limits",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad limit {part:?}"),
            ),
        };
        let (key, value) = part.split_once('=').ok_or_else(bad)?;
        let value: u64 = value.parse().map_err(|_| bad())?;
        let resource = match key {
            "as" => Resource::RLIMIT_AS,
            "cpu" => Resource::RLIMIT_CPU,
            "nofile" => Resource::RLIMIT_NOFILE,
            _ => return Err(bad()),
        };
        // For CPU time the hard limit sits one second above the soft one: at the soft limit
        // the kernel sends SIGXCPU (reported as a limit), while equal limits would go
        // straight to SIGKILL, indistinguishable from any other kill.
        let hard = if key == "cpu" {
            value.saturating_add(1)
        } else {
            value
        };
        setrlimit(resource, value, hard).map_err(|e| OsError::WorkerSetup {
            what: "setrlimit",
            source: e.into(),
        })?;
    }
    Ok(())
}
