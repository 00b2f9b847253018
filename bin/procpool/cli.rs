//! The command line, as clap derive structs: every flag, its default and its help text in
//! one place, so `--help` and the code cannot drift apart. No logic lives here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Multi-process worker pool: run batch jobs on crash-isolated worker processes.
#[derive(Debug, Parser)]
#[command(name = "procpool", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Log verbosity on stderr. Default: `RUST_LOG` if set, else `warn`.
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub(crate) log_level: Option<LogLevel>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run JSON Lines jobs on a pool of workers, writing one JSON result line per job.
    Run(RunArgs),
    /// List the tasks a worker binary serves, with parameter and result types.
    Tasks(TasksArgs),
}

/// Log levels for `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Flags shared by every subcommand that starts workers.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Worker executable: a binary built with procpool that calls `procpool::init()`.
    #[arg(long, value_name = "PATH")]
    pub(crate) worker: PathBuf,

    /// Seconds a worker may take to start and complete its handshake.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub(crate) start_timeout: Duration,
}

#[derive(Debug, Args)]
#[command(after_long_help = RUN_AFTER_HELP)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) worker: WorkerArgs,

    /// JSON Lines job file; `-` reads the jobs from stdin. Read as a stream, not loaded
    /// whole.
    #[arg(long, value_name = "FILE|-")]
    pub(crate) jobs: PathBuf,

    /// Number of worker processes. Default: the available CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) workers: Option<u32>,

    /// Write the result lines to FILE (created, or truncated if it exists) instead of
    /// stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct TasksArgs {
    #[command(flatten)]
    pub(crate) worker: WorkerArgs,

    /// Print a JSON array (name, params [{name, type_name}], result, fallible, is_async)
    /// instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s} is outside 0 < SECS <= 86400"));
    }
    Ok(Duration::from_secs_f64(secs))
}

const RUN_AFTER_HELP: &str = "\
JOBS (one JSON object per line; blank lines are skipped):
  {\"id\": \"j1\", \"task\": \"add\", \"args\": [1, 2]}
  id     required, a non-empty string, unique within the run
  task   required, the name of a task the worker serves (see `procpool tasks`)
  args   optional, an array of positional arguments; default []
  Any other field, a missing or non-string id, a missing task, args that are not an
  array, a line that is not a JSON object, or an id seen before makes a `bad_job`
  record carrying the line number (1-based); the other jobs still run.

RESULTS (one JSON line per job, written and flushed as soon as that job ends, so not
in input order):
  {\"id\": \"j1\", \"task\": \"add\", \"line\": 1, \"status\": \"completed\", \"result\": 3,
   \"attempts\": 1, \"duration_ms\": 0.4}
  {\"id\": \"j2\", \"task\": \"segfault\", \"line\": 2, \"status\": \"failed\", \"attempts\": 1,
   \"duration_ms\": 1.2, \"error\": {\"kind\": \"crashed\", \"signal\": \"SIGSEGV\",
   \"message\": \"...\", \"stderr_tail\": []}}
  status      completed | failed | cancelled
  error.kind  user_error (+ type) | panicked (+ location) | crashed (+ signal or
              exit_code, stderr_tail) | timed_out | limit_exceeded | unknown_task |
              bad_args | bad_job | protocol | cancelled
  duration_ms time from the task reaching a worker to its result

EXIT CODES:
  0  every job completed
  1  at least one job did not complete (or the run broke down half-way)
  2  bad usage, an unreadable job file, or a worker binary that is missing or is not a
     procpool worker: nothing was run and no record was written";
