//! The `procpool` supervisor command line, as a library: runs JSON Lines batch jobs on a
//! pool of worker processes (`procpool run`) and lists what a worker binary serves
//! (`procpool tasks`), serves a pool over HTTP and WebSocket (`procpool serve`, whose
//! server is the `procpool-serve` crate), and looks into a live supervisor on the same
//! machine (`procpool ctl`). The `procpool` binary is a one-line call to
//! [`main`].
//!
//! An application that registers its own tasks can call [`main`] from its own `main` and
//! get the same command line from its own binary, which is then both the supervisor and
//! the worker (`--worker` defaults to the running executable):
//!
//! ```no_run
//! #[procpool::task]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     // In a worker process this serves tasks and never returns.
//!     procpool_cli::main()
//! }
//! ```
//!
//! This file only wires things together: enter worker mode if this process is a worker,
//! parse the command line ([`cli`], with variables and the config file from [`config`]),
//! set up logging ([`logging`]), run the subcommand on a tokio runtime, and turn the
//! outcome into the exit code scripts rely on ([`exit`]). The batch loop lives in [`run`],
//! the job format in [`jobs`], the result format in [`records`], `--resume` in [`resume`],
//! duplicate ids and skips in [`plan`] (a job file, with [`extsort`]) and [`ledger`]
//! (stdin), signals in [`signals`], the operator's view in [`progress`], the task
//! listing in [`tasks`]. The control socket of `run`, `serve` and `agent` is served by
//! [`control`] (a batch's live jobs are on its [`board`]) and asked by `procpool ctl`
//! ([`ctl`]), both speaking [`ctl_wire`].

/// `eprintln!` that shrugs off a closed pipe or a hung-up terminal on stderr, where
/// `eprintln!` would panic: the supervisor's messages must never cost it its results.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod agent;
mod board;
mod cli;
mod config;
mod control;
mod ctl;
mod ctl_wire;
mod detached;
mod exit;
mod extsort;
mod jobs;
mod ledger;
mod lines;
mod logging;
mod plan;
mod progress;
mod records;
mod resume;
mod run;
mod serve;
mod signals;
mod tasks;

use std::process::ExitCode;

use clap::FromArgMatches as _;

use crate::cli::{Cli, Command};
// Also what `crate::{Exit, Failure}` names in the subcommands.
use crate::exit::{Exit, Failure};

/// Runs the `procpool` command line on this process's arguments and returns its exit code.
///
/// It calls [`procpool::init`] first: in a process started as a worker it serves tasks
/// and never returns, so an application can make this its whole `main`.
pub fn main() -> ExitCode {
    procpool::init();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = match config::command(&argv) {
        Ok(command) => command,
        Err(e) => {
            say!("procpool: error: {e}");
            return Exit::Usage.into();
        }
    };
    // Clap prints help/version to stdout with exit 0, and usage errors to stderr with 2.
    let matches = command.get_matches_from(argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logging::init(cli.log_level, cli.log_format);

    // One thread is plenty: the loop only moves lines between the job stream, the pool
    // (whose supervisor runs on this thread for `run`, on its own for the others) and the
    // output (written by a thread of its own). Measured on 20k tiny jobs, a multi-thread
    // runtime was slower from cross-thread wake-ups.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("procpool: error: cannot start the async runtime: {e}");
            return Exit::JobsFailed.into();
        }
    };
    let outcome = runtime.block_on(async {
        // Every child of this process is a pool worker, so it can adopt the workers'
        // orphaned grandchildren: reaped as they die, killed at the end if still running.
        let reaper = procpool::pool::OrphanReaper::start()
            .map_err(|e| tracing::warn!(error = %e, "orphaned grandchildren will not be adopted"))
            .ok();
        let outcome = match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Tasks(args) => tasks::tasks(args).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Agent(args) => agent::agent(args).await,
            Command::Ctl(args) => ctl::ctl(args).await,
        };
        if let Some(reaper) = reaper {
            let left = reaper.finish();
            if left > 0 {
                tracing::info!(left, "reaped processes the workers left behind");
            }
        }
        outcome
    });
    match outcome {
        Ok(exit) => exit.into(),
        Err(Failure::Setup(e)) => {
            say!("procpool: error: {e:#}");
            Exit::Usage.into()
        }
        Err(Failure::Runtime(e)) => {
            say!("procpool: error: {e:#}");
            Exit::JobsFailed.into()
        }
    }
}
