//! procpool's OS layer: the only code that sends a signal to a child or touches raw
//! descriptors.
//!
//! It defines [`Pgid`] (a worker's process group, the unit every kill addresses), the
//! channel handed to a worker ([`channel_pair`] on the supervisor side,
//! [`take_worker_channel`] in the worker), the worker's own orphan protection
//! ([`die_with_parent`]), the adoption of orphaned grandchildren by a subreaper supervisor
//! ([`become_subreaper`], [`reap_adopted`], [`kill_adopted`]), the one long-lived thread
//! workers can be spawned from ([`on_spawner_thread`]) and readable exit verdicts
//! ([`ExitVerdict`]). It knows nothing of
//! tasks or frames: `procpool-core` decides *when* to kill, this crate only *how*.
//!
//! ```
//! let verdict = procpool_os::ExitVerdict::Signal(11);
//! assert_eq!(verdict.to_string(), "killed by SIGSEGV");
//! ```
//!
//! # Caveats
//! Killing a [`Pgid`] reaches every process still in the worker's group, grandchildren
//! included; a grandchild that moved itself to another group or session escapes it.
#![deny(missing_docs)]

mod errors;
mod exit;
mod kill;
#[cfg(target_os = "linux")]
mod orphans;
#[cfg(unix)]
#[path = "os/unix.rs"]
mod os;
mod spawner;

pub use errors::OsError;
pub use exit::{ExitVerdict, signal_name};
pub use kill::{Pgid, Signal};
#[cfg(target_os = "linux")]
pub use orphans::{become_subreaper, kill_adopted, reap_adopted, spawn_worker, worker_reaped};
pub use os::{
    apply_rlimits, channel_pair, die_with_parent, keep_freed_memory, rss_bytes,
    take_worker_channel, wait_readable,
};
pub use spawner::{SpawnJob, on_spawner_thread, start_spawner};
