//! Stop signals: SIGTERM and SIGINT stop the server (the first gracefully, the second at
//! once); SIGHUP is ignored, so closing the terminal a server was started from does not
//! kill it.

use std::task::Poll;

use futures::Stream;
use tokio::signal::unix::{SignalKind, signal};

use crate::errors::ServeError;

/// A signal that stops the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// The exit code a process stopped by this signal reports by convention: 128 + its
    /// number (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }

    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// The process's SIGTERM and SIGINT, as a stream for [`Server::run`](crate::Server::run).
/// Installing it replaces their default action (dying at once) and makes SIGHUP harmless;
/// install it before anything that should not die silently. Needs a tokio runtime.
pub fn os_signals() -> Result<impl Stream<Item = StopSignal> + Send + Unpin, ServeError> {
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    Ok(futures::stream::poll_fn(move |cx| {
        while let Poll::Ready(Some(())) = hup.poll_recv(cx) {
            tracing::info!("SIGHUP ignored");
        }
        if let Poll::Ready(Some(())) = term.poll_recv(cx) {
            return Poll::Ready(Some(StopSignal::Terminate));
        }
        if let Poll::Ready(Some(())) = int.poll_recv(cx) {
            return Poll::Ready(Some(StopSignal::Interrupt));
        }
        Poll::Pending
    }))
}
