//! Linux implementation of the platform calls: `SOCK_CLOEXEC`, `PR_SET_PDEATHSIG`,
//! `PR_SET_CHILD_SUBREAPER` and `/proc`.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};

use crate::errors::OsError;
use crate::kill::Pgid;
use crate::parent::{self, Arming};
use crate::rlimits::Rlimit;

/// A connected stream socket pair, both ends close-on-exec from birth
/// (`SOCK_CLOEXEC`): `(supervisor_end, worker_end)`.
pub fn channel_pair() -> Result<(OwnedFd, OwnedFd), OsError> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| OsError::Channel(e.into()))
}

/// `recvmsg` flags that make a received descriptor close-on-exec from birth, so a
/// worker spawned by another thread meanwhile cannot inherit it.
pub(crate) const RECV_CLOEXEC: MsgFlags = MsgFlags::MSG_CMSG_CLOEXEC;

/// A received descriptor is already close-on-exec here ([`RECV_CLOEXEC`]).
pub(crate) fn after_receive(_fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(())
}

/// The parent-death signal. A realtime signal nobody else uses, whose handler kills the
/// worker's whole process group: a plain `PR_SET_PDEATHSIG = SIGKILL` would kill only the
/// worker, and its task's grandchildren would outlive a SIGKILLed supervisor.
fn parent_death_signal() -> nix::libc::c_int {
    nix::libc::SIGRTMIN() + 3
}

extern "C" fn kill_own_group(_: nix::libc::c_int) {
    // SAFETY: kill(2) is async-signal-safe; pid 0 addresses our own process group, which
    // the supervisor created for this worker alone.
    unsafe {
        nix::libc::kill(0, nix::libc::SIGKILL);
    }
}

/// In the worker, before it runs anything: makes its whole process group die with the
/// supervisor, and fails with [`OsError::ParentGone`] if the supervisor already died.
/// Linux: `PR_SET_PDEATHSIG` with a signal whose handler kills the group (it fires when
/// the supervisor's *spawning thread* exits), then a `getppid` check, since a supervisor
/// that died before the `prctl` would leave us orphaned for good. Should the `prctl`
/// fail, a thread polls `getppid` instead.
pub fn die_with_parent(expected_parent: u32) -> Result<(), OsError> {
    let sig = parent_death_signal();
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
    // only calls an async-signal-safe function.
    let arming = unsafe {
        let mut action: nix::libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = kill_own_group as *const () as usize;
        nix::libc::sigemptyset(&mut action.sa_mask);
        if nix::libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(OsError::WorkerSetup {
                what: "install the parent-death handler",
                source: io::Error::last_os_error(),
            });
        }
        if nix::libc::prctl(
            nix::libc::PR_SET_PDEATHSIG,
            sig as nix::libc::c_ulong,
            0,
            0,
            0,
        ) == 0
        {
            // The kernel delivers the signal; no thread needs to wait for it.
            Arming::Armed(None)
        } else {
            Arming::Failed(io::Error::last_os_error())
        }
    };
    parent::arm(arming, expected_parent)
}

/// In the worker: keep memory freed by one task for the next instead of handing it back
/// to the kernel at once. A task that builds a 10 MiB result otherwise pays for fresh,
/// zeroed pages on every call (page faults were half of the worker's time in the blob
/// benchmark). Blocks below 32 MiB come from the heap, and up to 64 MiB of free heap top
/// is kept; recycling by RSS (`max_rss`) still bounds a worker. glibc only: other
/// allocators keep their own policy.
pub fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 32 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// Resident memory of one process, from `/proc/<pid>/statm`; `None` if it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Resident memory of the members of `group` found by walking its leader's process tree
/// (`/proc/PID/task/TID/children`), each counted once from its `/proc/PID/stat`; `None`
/// if the leader is gone. The walk costs a few reads per thread and per member, not a
/// scan of every process on the host, which matters at one sample per busy worker every
/// 20 ms. Measured on the 2-vCPU dev machine: 28 us for a lone leader (9 us for its
/// `statm` alone), 92 us with two children, against 1.7 ms for a scan of 86 processes,
/// growing with the host. What it misses: a member whose parent exited, so it was
/// re-parented out of the tree (a task's `cmd &` whose shell returned).
pub fn group_rss_bytes(group: Pgid) -> Option<u64> {
    let leader = group.get();
    let stat = std::fs::read_to_string(format!("/proc/{leader}/stat")).ok()?;
    let first = parse_stat(&stat)?;
    if first.pgid != leader {
        // The leader left its group (or the pid was recycled): nothing to measure.
        return None;
    }
    let mut pages = first.rss_pages;
    let mut seen = vec![leader];
    let mut counted = vec![leader];
    let mut todo: Vec<(u32, u32)> = children_of(leader)
        .into_iter()
        .map(|c| (c, leader))
        .collect();
    while let Some((pid, parent)) = todo.pop() {
        if seen.contains(&pid) {
            continue;
        }
        seen.push(pid);
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // exited meanwhile
        };
        let Some(member) = parse_stat(&stat) else {
            continue;
        };
        // A child started with posix_spawn or vfork runs in its parent's memory until
        // its exec: the same pages, counted once.
        if member.pgid == leader && !(counted.contains(&parent) && same_memory(parent, pid)) {
            pages += member.rss_pages;
            counted.push(pid);
        }
        // A descendant in another group may still have children in ours.
        todo.extend(children_of(pid).into_iter().map(|c| (c, pid)));
    }
    Some(pages * page_size())
}

/// Whether two processes share one address space (`kcmp(KCMP_VM)`); false when the
/// kernel cannot say (no `kcmp`, or not permitted), so the member is counted.
fn same_memory(a: u32, b: u32) -> bool {
    // From <linux/kcmp.h>: enum kcmp_type { KCMP_FILE, KCMP_VM, ... }.
    const KCMP_VM: nix::libc::c_long = 1;
    // SAFETY: kcmp only reads the two processes' kernel state; no memory is passed.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_kcmp,
            a as nix::libc::pid_t,
            b as nix::libc::pid_t,
            KCMP_VM,
            0 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
        )
    };
    r == 0
}

/// Children of every thread of `pid`: a child belongs to the thread that forked it, and
/// `/proc/PID/task/T/children` lists the children of thread T only.
fn children_of(pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

/// This process's resident-memory high-water mark (`VmHWM`), reset at will: the most
/// memory resident at any instant since the last [`reset`](Self::reset), which no
/// sampling can miss. The two files stay open, so a reset costs a write of one byte
/// (0.2 us) and a read of the mark a read of `/proc/self/status` (5 us), not path lookups;
/// [`above`](Self::above) mostly spares even that read.
pub struct PeakRss {
    clear_refs: std::fs::File,
    status: std::fs::File,
    buf: Vec<u8>,
}

impl PeakRss {
    /// Opens `/proc/self/clear_refs` and `/proc/self/status`, then resets and reads the
    /// mark once, so a kernel or a `/proc` that refuses either fails here and not at
    /// every task. Fails where there is no such mark (no `/proc`, a read-only one,
    /// kernels before 4.0 that do not know type 5).
    pub fn open() -> io::Result<PeakRss> {
        let mut peak = PeakRss {
            clear_refs: std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/self/clear_refs")?,
            status: std::fs::File::open("/proc/self/status")?,
            buf: Vec::with_capacity(4096),
        };
        peak.reset()?;
        peak.read()?;
        Ok(peak)
    }

    /// Resets the mark to the memory resident now (`echo 5 > /proc/self/clear_refs`, see
    /// proc(5)).
    pub fn reset(&mut self) -> io::Result<()> {
        io::Write::write_all(&mut self.clear_refs, b"5")
    }

    /// The mark when it is above `limit` (both in bytes), `None` when it is not. It asks
    /// `getrusage` first: its `ru_maxrss` is never below the mark and costs 0.3 us, against
    /// 5 us for `/proc/self/status`, which is read only when that bound is above the
    /// limit. The bound also keeps the peak of the process this one was spawned from
    /// (posix_spawn shares the parent's memory until exec, and Linux keeps that peak): in
    /// a worker whose supervisor once held more than `limit`, every call reads the file;
    /// the answer is exact either way.
    pub fn above(&mut self, limit: u64) -> io::Result<Option<u64>> {
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
        let bound = u64::try_from(usage.max_rss())
            .unwrap_or(0)
            .saturating_mul(1024);
        if bound <= limit {
            return Ok(None);
        }
        let peak = self.read()?;
        Ok((peak > limit).then_some(peak))
    }

    /// The mark, in bytes.
    pub fn read(&mut self) -> io::Result<u64> {
        use std::os::unix::fs::FileExt as _;
        // The whole file at each read: `/proc` builds it anew for every read at offset 0.
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.status.read_at(&mut chunk, self.buf.len() as u64)?;
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        parse_vm_hwm(&self.buf).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no VmHWM line in /proc/self/status",
            )
        })
    }
}

/// The `VmHWM:   1234 kB` line of a `/proc/PID/status`, in bytes.
fn parse_vm_hwm(status: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(status).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// `PR_SET_CHILD_SUBREAPER`: orphaned descendants are re-parented to this process.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        nix::libc::prctl(
            nix::libc::PR_SET_CHILD_SUBREAPER,
            1 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
            0 as nix::libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Children of every thread of this process (an orphan is re-parented to one thread of
/// the subreaper).
pub(crate) fn own_children() -> Vec<u32> {
    children_of(std::process::id())
}

/// Whether `pid` is a zombie, from the state letter in `/proc/PID/stat`.
pub(crate) fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .is_some_and(|s| s.state == 'Z')
}

/// The fields of a `/proc/PID/stat` line procpool reads.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    pgid: u32,
    rss_pages: u64,
}

/// Parses a `/proc/PID/stat` line. The fields are counted after the parenthesised
/// command name, which may itself contain spaces and parentheses.
fn parse_stat(line: &str) -> Option<Stat> {
    let mut fields = line.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state: ppid, pgrp, ..., with rss the 21st field after the state.
    let pgid = fields.nth(1)?.parse().ok()?;
    let rss_pages = fields.nth(18)?.parse().ok()?;
    Some(Stat {
        state,
        pgid,
        rss_pages,
    })
}

/// Every limit the worker can apply is enforced by Linux.
pub(crate) const UNENFORCED_RLIMITS: &[(Rlimit, &str)] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    /// A group leader holding 64 MiB with a child that shares its memory (as a
    /// posix_spawn child does until its exec) reads 64 MiB, not 128.
    #[test]
    fn a_child_sharing_its_parents_memory_is_counted_once() {
        use nix::libc;
        const HELD: usize = 64 << 20;
        const STACK: usize = 64 << 10;
        extern "C" fn sleeper(_: *mut libc::c_void) -> libc::c_int {
            loop {
                // SAFETY: async-signal-safe; waits for the SIGKILL.
                unsafe { libc::pause() };
            }
        }
        // SAFETY: the child calls only async-signal-safe functions and raw syscalls (no
        // allocator, no locks) before it ends with `_exit`.
        let leader = unsafe { libc::fork() };
        assert!(leader >= 0, "fork");
        if leader == 0 {
            unsafe {
                libc::setpgid(0, 0);
                let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
                let rw = libc::PROT_READ | libc::PROT_WRITE;
                let held = libc::mmap(std::ptr::null_mut(), HELD, rw, anon, -1, 0) as *mut u8;
                for i in (0..HELD).step_by(4096) {
                    std::ptr::write_volatile(held.add(i), 1);
                }
                let stack = libc::mmap(std::ptr::null_mut(), STACK, rw, anon, -1, 0) as *mut u8;
                let flags = libc::CLONE_VM | libc::SIGCHLD;
                let top = stack.add(STACK) as *mut libc::c_void;
                libc::clone(sleeper, top, flags, std::ptr::null_mut());
                // Reaps the sharing child once the test kills it, then ends.
                libc::waitpid(-1, std::ptr::null_mut(), 0);
                libc::_exit(0);
            }
        }
        let leader = leader as u32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let sharer = loop {
            let children = children_of(leader);
            let ready = rss_bytes(leader).is_some_and(|b| b >= HELD as u64);
            if ready && let Some(&c) = children.first() {
                break c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child never came up"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        // Container seccomp profiles may refuse kcmp: then the sharer is counted again.
        let shared = same_memory(leader, sharer);
        let group = group_rss_bytes(Pgid::of_leader(leader));
        let own = rss_bytes(leader).unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sharer as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(leader as i32), None);
        let group = group.expect("the leader was alive");
        if shared {
            assert!(
                group < own + (HELD as u64) / 2,
                "group {group} bytes, the leader alone {own}"
            );
        } else {
            eprintln!("kcmp is refused here: the sharing child is counted in full");
            assert!(
                group >= own + (HELD as u64) / 2,
                "group {group}, leader {own}"
            );
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    555 10485760 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                pgid: 4240,
                rss_pages: 321
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
    }

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = b"Name:\tw\nVmPeak:\t  9000 kB\nVmHWM:\t    1448 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1448 * 1024));
        assert_eq!(parse_vm_hwm(b"VmRSS:\t 1000 kB\n"), None);
    }

    /// The mark holds a block that was touched and freed, until a reset drops it.
    #[test]
    fn peak_rss_sees_a_freed_block_until_reset() {
        let mut peak = PeakRss::open().expect("this kernel resets VmHWM");
        peak.reset().unwrap();
        let before = peak.read().unwrap();
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        drop(block);
        let after = peak.read().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        let margin = 32 << 20;
        assert!(peak.above(after - margin).unwrap() >= Some(after));
        assert_eq!(peak.above(after + margin).unwrap(), None);
        peak.reset().unwrap();
        let reset = peak.read().unwrap();
        assert!(
            reset < after - (60 << 20),
            "{after} -> {reset} after the reset"
        );
    }

    #[test]
    fn own_stat_parses() {
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        let stat = parse_stat(&me).expect("our own stat parses");
        // The main thread's state: it may be waiting for this test thread.
        assert!(stat.state.is_ascii_alphabetic());
        assert_eq!(stat.pgid, nix::unistd::getpgrp().as_raw() as u32);
        assert!(stat.rss_pages > 0);
    }
}
