//! The spawner thread: one long-lived thread per process from which workers can be
//! spawned when the caller has no thread of its own that lives as long as its workers.
//!
//! `PR_SET_PDEATHSIG`, which every worker arms against a dead supervisor, fires when the
//! thread that *spawned* the worker exits, not the process. A pool on a caller's tokio
//! runtime has no such thread: runtime worker threads live only as long as the runtime,
//! and blocking-pool threads come and go within seconds. So its spawns run here.
//!
//! One thread for the whole process, started on first use and never ended, rather than
//! one per pool: the death signal must follow the process, and a thread that never exits
//! is exactly that; a per-pool thread would have to outlive every worker it spawned
//! (including those still being reaped after the pool is dropped) and would cost a
//! thread start for every pool. Spawns of different pools queue behind each other, but
//! a `posix_spawn` takes well under a millisecond.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

/// A spawn to run on the spawner thread.
pub type SpawnJob = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Sender<SpawnJob>> = OnceLock::new();

/// Starts the spawner thread if it is not running yet. Idempotent; fails only when the
/// thread cannot be created.
pub fn start_spawner() -> io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = channel::<SpawnJob>();
    // Two callers may race here: the loser's thread ends at once when its sender is
    // dropped below, before it ever spawned anything.
    std::thread::Builder::new()
        .name("procpool-spawner".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                // A panicking job must not end this thread: its exit would fire the death
                // signal of every worker spawned from it, in every pool of the process.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
    let _ = SPAWNER.set(tx);
    Ok(())
}

/// Runs `job` on the spawner thread (starting it if needed). Returns at once; the job
/// reports back through whatever channel it carries.
pub fn on_spawner_thread(job: SpawnJob) -> io::Result<()> {
    start_spawner()?;
    let tx = SPAWNER
        .get()
        .expect("start_spawner returned Ok, so the sender is set");
    tx.send(job)
        .map_err(|_| io::Error::other("the procpool-spawner thread is gone"))
}
