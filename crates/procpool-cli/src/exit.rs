//! How a subcommand ends: the exit codes scripts rely on ([`Exit`]) and why a subcommand
//! stopped early ([`Failure`]). A leaf: the subcommands return these, `main` maps them.

use std::process::ExitCode;

/// Exit codes: part of the CLI contract, listed in `procpool run --help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Every job completed (or, for `tasks`, the listing was printed).
    Success = 0,
    /// At least one job failed, was cancelled or was a bad job; or the run broke down
    /// half-way (an unreadable job stream, an unwritable output).
    JobsFailed = 1,
    /// Bad usage, or the worker could not be started: nothing was run.
    Usage = 2,
    /// Stopped by SIGINT: 128 + 2, as a shell reports it.
    Interrupted = 130,
    /// Stopped by SIGTERM: 128 + 15.
    Terminated = 143,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Why a subcommand stopped early; decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Detected before any job ran (unusable worker, unreadable job file, ...): exit 2.
    Setup(anyhow::Error),
    /// The run broke down after jobs started: exit 1.
    Runtime(anyhow::Error),
}
