//! The environment and working directory workers start with (`PoolBuilder::env_clear`,
//! `env_remove`, `current_dir`; `env` adds variables on top), and where their output goes
//! (`PoolBuilder::task_output`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::PoolBuilder;
use crate::errors::PoolError;

/// What a worker's environment starts from, before the pool's own variables.
#[derive(Clone, Debug, Default)]
pub(crate) struct WorkerEnv {
    /// Start from an empty environment instead of the supervisor's.
    pub(crate) clear: bool,
    /// Variables of the supervisor's environment that workers do not get.
    pub(crate) remove: Vec<OsString>,
    /// The workers' working directory; the supervisor's when `None`.
    pub(crate) current_dir: Option<PathBuf>,
}

impl WorkerEnv {
    /// The worker path to spawn: with a working directory of their own, a relative path
    /// such as `target/debug/worker` is made absolute from the supervisor's directory (a
    /// bare name is still looked up in `PATH`), since which directory a relative program
    /// path is resolved from is up to the platform.
    pub(crate) fn resolve_worker(&self, worker: PathBuf) -> Result<PathBuf, PoolError> {
        if self.current_dir.is_none() || worker.is_absolute() || worker.components().count() < 2 {
            return Ok(worker);
        }
        std::path::absolute(&worker).map_err(|e| {
            PoolError::Config(format!(
                "cannot resolve the worker path {}: {e}",
                worker.display()
            ))
        })
    }

    /// Applies the clearing, removals and directory to a worker's command. Called before
    /// the pool adds its variables (`env`, the protocol's own), so those always reach
    /// the worker.
    pub(crate) fn apply(&self, cmd: &mut tokio::process::Command) {
        if self.clear {
            cmd.env_clear();
        }
        for key in &self.remove {
            cmd.env_remove(key);
        }
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
    }
}

impl PoolBuilder {
    /// Workers start with an empty environment instead of inheriting the supervisor's;
    /// only the variables set with [`env`](Self::env) (and the pool's own, such as
    /// `PROCPOOL_WORKER`) reach them.
    pub fn env_clear(&mut self) -> &mut Self {
        self.worker_env.clear = true;
        self
    }

    /// Workers do not inherit `key` from the supervisor's environment (a variable set with
    /// [`env`](Self::env) still reaches them).
    pub fn env_remove(&mut self, key: impl Into<OsString>) -> &mut Self {
        self.worker_env.remove.push(key.into());
        self
    }

    /// The workers' working directory (default: the supervisor's). A relative worker path
    /// ([`worker`](Self::worker)) is still found from the supervisor's directory.
    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.worker_env.current_dir = Some(dir.into());
        self
    }

    /// Where the lines tasks write to stdout and stderr go: `tracing` events (the
    /// default), the supervisor's own streams with a task prefix, or kept with each
    /// task's result ([`TaskOutput::Capture`](crate::TaskOutput::Capture), read with
    /// [`TaskHandle::output`](crate::TaskHandle::output)).
    pub fn task_output(&mut self, output: crate::output::TaskOutput) -> &mut Self {
        self.task_output = output;
        self
    }
}
