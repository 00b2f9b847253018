//! macOS implementation of the platform calls: close-on-exec set right after
//! `socketpair` (no `SOCK_CLOEXEC`), a kqueue `EVFILT_PROC` watch instead of
//! `PR_SET_PDEATHSIG`, libproc instead of `/proc`, and no child subreaper.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::libc;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};

use crate::errors::OsError;
use crate::kill::Pgid;
use crate::parent::{self, Arming, Wake};
use crate::rlimits::Rlimit;

/// A connected stream socket pair, both ends close-on-exec: `(supervisor_end,
/// worker_end)`. macOS has no `SOCK_CLOEXEC`, so the flag is set by `fcntl` right after
/// `socketpair`, while the spawn lock is held: no procpool worker can be spawned inside
/// that window and inherit the pair. See the crate docs for the window that remains.
pub fn channel_pair() -> Result<(OwnedFd, OwnedFd), OsError> {
    let _no_spawns = crate::orphans::hold_spawns();
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )
    .map_err(|e| OsError::Channel(e.into()))?;
    for end in [&a, &b] {
        set_cloexec(end.as_fd()).map_err(OsError::Channel)?;
    }
    Ok((a, b))
}

fn set_cloexec(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// macOS has no `MSG_CMSG_CLOEXEC`: a received descriptor gets `FD_CLOEXEC` in
/// [`after_receive`].
pub(crate) const RECV_CLOEXEC: MsgFlags = MsgFlags::empty();

/// Sets `FD_CLOEXEC` on a descriptor just received. The supervisor receives only read
/// ends of result pipes: one inherited by a concurrent spawn in between cannot keep the
/// pipe from its EOF (that needs a write end), it only stays open in that child.
pub(crate) fn after_receive(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_cloexec(fd)
}

/// In the worker, before it runs anything: makes its whole process group die with the
/// supervisor, and fails with [`OsError::ParentGone`] if the supervisor already died.
/// macOS: a kqueue `EVFILT_PROC`/`NOTE_EXIT` filter on the supervisor's pid, and a
/// thread blocked on it that kills the group when the supervisor exits (this follows the
/// supervisor *process*, not its spawning thread); then a `getppid` check. A kqueue that
/// cannot be armed, or fails later, is replaced by a thread polling `getppid`.
pub fn die_with_parent(expected_parent: u32) -> Result<(), OsError> {
    parent::arm(arm_kqueue(expected_parent), expected_parent)
}

fn arm_kqueue(parent: u32) -> Arming {
    // SAFETY: kqueue takes no arguments; the result is checked below.
    let raw = unsafe { libc::kqueue() };
    if raw < 0 {
        return Arming::Failed(io::Error::last_os_error());
    }
    // SAFETY: kqueue just returned this descriptor; nothing else owns it.
    let queue = unsafe { OwnedFd::from_raw_fd(raw) };
    // A kqueue is not inherited across fork anyway; close-on-exec keeps it out of an
    // exec'd task too. No other thread runs yet in the worker, so there is no window.
    if let Err(e) = set_cloexec(queue.as_fd()) {
        return Arming::Failed(e);
    }
    let change = proc_exit_filter(parent);
    // SAFETY: one valid change in, no events out, no timeout.
    let rc = unsafe {
        libc::kevent(
            queue.as_raw_fd(),
            &change,
            1,
            std::ptr::null_mut(),
            0,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return if error.raw_os_error() == Some(libc::ESRCH) {
            Arming::NoSuchProcess
        } else {
            Arming::Failed(error)
        };
    }
    Arming::Armed(Some(Box::new(move || wait_exit(&queue))))
}

fn proc_exit_filter(pid: u32) -> libc::kevent {
    libc::kevent {
        ident: pid as libc::uintptr_t,
        filter: libc::EVFILT_PROC,
        flags: libc::EV_ADD | libc::EV_ONESHOT,
        fflags: libc::NOTE_EXIT,
        data: 0,
        udata: std::ptr::null_mut(),
    }
}

/// One blocking wait on the queue armed by [`arm_kqueue`].
fn wait_exit(queue: &OwnedFd) -> Wake {
    let mut event = proc_exit_filter(0);
    // SAFETY: no changes in, room for one event out, no timeout (block).
    let rc = unsafe {
        libc::kevent(
            queue.as_raw_fd(),
            std::ptr::null(),
            0,
            &mut event,
            1,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted {
            Wake::Interrupted
        } else {
            Wake::Failed(error)
        };
    }
    let (filter, fflags) = (event.filter, event.fflags);
    if rc == 1 && filter == libc::EVFILT_PROC && fflags & libc::NOTE_EXIT != 0 {
        Wake::ParentExited
    } else {
        // Nothing else is registered on this queue; a wake without the exit is spurious.
        Wake::Interrupted
    }
}

/// Nothing to tune: macOS's allocator keeps its own policy for freed memory.
pub fn keep_freed_memory() {}

/// Resident memory of one process, from libproc's `PROC_PIDTASKINFO`; `None` if it is
/// gone (or not ours to inspect).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let pid = libc::c_int::try_from(pid).ok()?;
    // SAFETY: proc_taskinfo is plain data; all-zero is a valid value.
    let mut info: libc::proc_taskinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_taskinfo>() as libc::c_int;
    // SAFETY: the buffer is a proc_taskinfo of exactly `size` bytes.
    let got =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTASKINFO, 0, (&raw mut info).cast(), size) };
    (got == size).then_some(info.pti_resident_size)
}

/// Resident memory of every process in `group`: the kernel lists the members
/// (`proc_listpgrppids`), so members re-parented out of the worker's tree count too;
/// `None` if the group is empty.
pub fn group_rss_bytes(group: Pgid) -> Option<u64> {
    let pgid = libc::pid_t::try_from(group.get()).ok()?;
    // SAFETY: the buffer and its size come from list_pids (null and 0 to ask the count).
    let list = list_pids(|buf, size| unsafe { libc::proc_listpgrppids(pgid, buf, size) });
    let sizes: Vec<u64> = list.into_iter().filter_map(rss_bytes).collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum())
}

/// Runs a libproc pid-list wrapper (`proc_listpgrppids`, `proc_listchildpids`): these
/// return a count of pids, not bytes, and with a null buffer the count to make room for.
/// The buffer gets some slack, since the list may grow between the two calls.
fn list_pids(call: impl Fn(*mut libc::c_void, libc::c_int) -> libc::c_int) -> Vec<u32> {
    let needed = call(std::ptr::null_mut(), 0);
    if needed <= 0 {
        return Vec::new();
    }
    let slots = needed as usize + 16;
    let mut pids: Vec<libc::pid_t> = vec![0; slots];
    let bytes = (slots * std::mem::size_of::<libc::pid_t>()) as libc::c_int;
    let got = call(pids.as_mut_ptr().cast(), bytes);
    if got <= 0 {
        return Vec::new();
    }
    pids.truncate(got as usize);
    pids.into_iter()
        .filter(|&p| p > 0)
        .map(|p| p as u32)
        .collect()
}

/// A resettable resident-memory high-water mark: none on macOS (no `/proc`, no
/// `clear_refs`), so [`open`](Self::open) fails and `max_rss` relies on sampling alone.
pub struct PeakRss {
    _none: (),
}

impl PeakRss {
    /// Fails: macOS has no resettable high-water mark of resident memory.
    pub fn open() -> io::Result<PeakRss> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "macOS has no resettable resident-memory high-water mark (Linux: clear_refs)",
        ))
    }

    /// Unreachable: [`open`](Self::open) never succeeds on macOS.
    pub fn reset(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Unreachable: [`open`](Self::open) never succeeds on macOS.
    pub fn above(&mut self, _limit: u64) -> io::Result<Option<u64>> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Unreachable: [`open`](Self::open) never succeeds on macOS.
    pub fn read(&mut self) -> io::Result<u64> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// macOS has no child subreaper: orphans always go to launchd (which reaps them).
pub(crate) fn become_subreaper() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "macOS has no child subreaper (PR_SET_CHILD_SUBREAPER is Linux-only): a dead \
         worker's orphaned grandchildren are re-parented to launchd, not to this process",
    ))
}

/// The children of this process (`proc_listchildpids`).
pub(crate) fn own_children() -> Vec<u32> {
    let me = std::process::id() as libc::pid_t;
    // SAFETY: the buffer and its size come from list_pids.
    list_pids(|buf, size| unsafe { libc::proc_listchildpids(me, buf, size) })
}

/// Whether `pid` is a zombie (`SZOMB` in libproc's `PROC_PIDTBSDINFO`).
pub(crate) fn is_zombie(pid: u32) -> bool {
    let Ok(pid) = libc::c_int::try_from(pid) else {
        return false;
    };
    // SAFETY: proc_bsdinfo is plain data; all-zero is a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: the buffer is a proc_bsdinfo of exactly `size` bytes.
    let got =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, (&raw mut info).cast(), size) };
    got == size && info.pbi_status == libc::SZOMB
}

/// macOS accepts `RLIMIT_AS` but does not enforce it (XNU ignores it for allocations), so
/// a worker would run unbounded.
pub(crate) const UNENFORCED_RLIMITS: &[(Rlimit, &str)] = &[(
    Rlimit::AddressSpace,
    "macOS accepts RLIMIT_AS but does not enforce it; bound a worker's memory with max_rss",
)];
