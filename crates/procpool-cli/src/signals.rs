//! The signals that stop a subcommand: SIGINT and SIGTERM end it cleanly (the caller
//! decides how), SIGHUP is logged and ignored (a closed terminal or a log rotation must
//! not kill a batch). Installed once per subcommand that wants them; any long-running
//! subcommand can use [`Signals`] the same way `run` does.

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::exit::Exit;

/// A signal asking to stop, and the exit code it leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGINT (Ctrl-C): exit 130 (128 + the signal number, as shells report it).
    Interrupt,
    /// SIGTERM (kill, systemd, docker stop): exit 143.
    Terminate,
    /// `procpool ctl drain`: a drain whatever `--on-signal` says, exit 143 as for the
    /// SIGTERM a service manager would send.
    Drain,
}

impl Stop {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
            Stop::Drain => "procpool ctl drain",
        }
    }

    /// The exit code of a subcommand this stopped.
    pub(crate) fn exit(self) -> Exit {
        match self {
            Stop::Interrupt => Exit::Interrupted,
            Stop::Terminate | Stop::Drain => Exit::Terminated,
        }
    }
}

/// The handlers for SIGINT, SIGTERM and SIGHUP. Once installed, their default action
/// (terminate the process) no longer applies, for the rest of the process's life.
pub(crate) struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next SIGINT or SIGTERM; SIGHUPs meanwhile are logged and ignored. Cancel safe
    /// (a `select!` branch): a signal that arrives while nobody waits is kept for the next
    /// call.
    pub(crate) async fn recv(&mut self) -> Stop {
        loop {
            tokio::select! {
                Some(()) = self.interrupt.recv() => return Stop::Interrupt,
                Some(()) = self.terminate.recv() => return Stop::Terminate,
                Some(()) = self.hangup.recv() => {
                    tracing::warn!(
                        "SIGHUP received and ignored (only SIGINT and SIGTERM stop procpool)"
                    );
                }
                // `None` only once the runtime is shutting down: no signal comes any more.
                else => std::future::pending::<()>().await,
            }
        }
    }
}
