//! procpool's OS layer: the only code that sends a signal to a child or touches raw
//! descriptors.
//!
//! It defines [`Pgid`] (a worker's process group, the unit every kill addresses), the
//! channel handed to a worker ([`channel_pair`] on the supervisor side,
//! [`take_worker_channel`] in the worker), the worker's result pipe and its hand-off
//! over that channel ([`result_pipe`], [`send_with_fd`], [`recv_with_fd`]), the worker's
//! own orphan protection ([`die_with_parent`]), the memory a worker's group holds
//! ([`group_rss_bytes`]) and a worker's own peak ([`PeakRss`]), the resource limits a
//! worker applies to itself ([`Rlimit`], [`apply_rlimits`]), the
//! adoption of orphaned grandchildren by a subreaper supervisor ([`become_subreaper`],
//! [`reap_adopted`], [`kill_adopted`]), the one long-lived thread workers can be spawned
//! from ([`on_spawner_thread`]) and readable exit verdicts ([`ExitVerdict`]). It knows
//! nothing of tasks or frames: `procpool-core` decides *when* to kill, this crate only
//! *how*.
//!
//! ```
//! let verdict = procpool_os::ExitVerdict::Signal(11);
//! assert_eq!(verdict.to_string(), "killed by SIGSEGV");
//! ```
//!
//! # Platforms
//! Linux and macOS, each in a module of its own behind one name (`os`), with the same
//! signatures, so no caller needs a `cfg`. Linux is what the test suite runs on; macOS is
//! checked at compile time. The guarantees and how macOS keeps them:
//!
//! - **Close-on-exec.** Linux creates the channel with `SOCK_CLOEXEC`. macOS has no such
//!   flag, so [`channel_pair`] sets `FD_CLOEXEC` with `fcntl` right after `socketpair`.
//!   During that window a process forked by another thread would inherit both ends (a
//!   sibling holding a worker's end keeps the supervisor from seeing EOF when the worker
//!   dies). procpool's own spawns cannot fall in it: the window runs under the lock every
//!   worker spawn holds ([`spawn_worker`]). What remains is a fork by *other* code of the
//!   application, on another thread, in those few microseconds; std has the same window
//!   on macOS for every pipe it creates, for the same reason. The worker's own copy
//!   ([`take_worker_channel`]) uses `F_DUPFD_CLOEXEC`, which macOS has: no window there.
//!   The worker's result pipe ([`result_pipe`]) is std's, close-on-exec on both ends (on
//!   macOS set right after `pipe`, in the worker before any task runs); the supervisor
//!   receives its read end with `MSG_CMSG_CLOEXEC` on Linux and sets `FD_CLOEXEC` right
//!   after on macOS. A read end inherited in that window cannot delay the pipe's end of
//!   file (only a write end can), so the window is harmless there.
//! - **Dying with the supervisor.** Linux arms `PR_SET_PDEATHSIG` (which follows the
//!   spawning *thread*, hence [`on_spawner_thread`]). macOS has no parent-death signal:
//!   [`die_with_parent`] registers a kqueue `EVFILT_PROC`/`NOTE_EXIT` filter on the
//!   supervisor's pid and a thread blocks on it, started before the worker reads its
//!   first task; on the event it SIGKILLs the worker's whole group. It follows the
//!   supervisor *process*, so a spawning thread's exit does not matter there. On both,
//!   the parent is checked with `getppid` *after* arming, so a supervisor that died in
//!   between is caught; a kernel watch that cannot be armed or fails falls back to
//!   polling `getppid` every 100 ms (re-parenting means the supervisor died). The
//!   decisions are platform-neutral code, unit-tested on Linux.
//! - **Memory.** Linux reads `/proc`; macOS asks libproc (`proc_listpgrppids`, then
//!   `proc_pidinfo(PROC_PIDTASKINFO)` for each member's resident size), part of the
//!   system library, so no C compiler or extra crate is needed. A peak since a reset
//!   ([`PeakRss`]) is Linux's `VmHWM` with `clear_refs`; macOS has none, and
//!   [`PeakRss::open`] fails there.
//! - **Resource limits.** macOS accepts `RLIMIT_AS` but does not enforce it:
//!   [`check_rlimit`] refuses it there, so a pool asking for it fails at build time
//!   instead of running unbounded. `RLIMIT_CPU` (with `SIGXCPU`) and `RLIMIT_NOFILE`
//!   work on both.
//! - **Child subreaper.** None on macOS: [`become_subreaper`] fails there with
//!   [`std::io::ErrorKind::Unsupported`] (see Caveats).
//!
//! Windows is not supported: the design rests on process groups, POSIX signals and
//! descriptor inheritance across exec, which have no Windows counterpart (a Job Object
//! port would be a different OS layer), and the crate refuses to compile there.
//!
//! # Caveats
//! - Killing a [`Pgid`] reaches every process still in the worker's group, grandchildren
//!   included; a grandchild that moved itself to another group or session escapes it.
//! - [`group_rss_bytes`] on Linux walks the leader's process tree (a scan of every
//!   process on the host at each 20 ms sample costs too much); a group member whose
//!   parent exited, so it was re-parented out of that tree, is not counted. macOS lists
//!   the group's members directly and counts them all.
//! - macOS has no child subreaper: when a worker dies, its orphaned grandchildren go to
//!   launchd instead of to the supervisor, so the `procpool` CLI cannot kill at shutdown
//!   the ones that left the worker's process group (launchd does reap them, so no zombies
//!   pile up). Those that stayed in the group still die with every group kill.
#![deny(missing_docs)]

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!(
    "procpool-os supports Linux and macOS only: it rests on process groups, POSIX signals \
     and descriptor inheritance across exec"
);

mod errors;
mod exit;
mod handoff;
mod kill;
mod orphans;
#[cfg(target_os = "linux")]
#[path = "os/linux.rs"]
mod os;
#[cfg(target_os = "macos")]
#[path = "os/macos.rs"]
mod os;
mod parent;
mod rlimits;
mod spawner;
mod worker;

pub use errors::OsError;
pub use exit::{ExitVerdict, signal_name};
pub use handoff::{recv_with_fd, result_pipe, send_with_fd};
pub use kill::{Pgid, Signal};
pub use orphans::{become_subreaper, kill_adopted, reap_adopted, spawn_worker, worker_reaped};
pub use os::{
    PeakRss, channel_pair, die_with_parent, group_rss_bytes, keep_freed_memory, rss_bytes,
};
pub use rlimits::{Rlimit, apply_rlimits, check_rlimit};
pub use spawner::{SpawnJob, on_spawner_thread, start_spawner};
pub use worker::{take_worker_channel, wait_readable};
