//! How a process ended, in words an operator can act on.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// The end of a worker process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitVerdict {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl From<ExitStatus> for ExitVerdict {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitVerdict::Code(code),
            (None, Some(sig)) => ExitVerdict::Signal(sig),
            // Neither code nor signal only happens for stopped/continued states, which
            // `wait` does not report for a child that was not traced.
            (None, None) => ExitVerdict::Code(-1),
        }
    }
}

impl fmt::Display for ExitVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitVerdict::Code(code) => write!(f, "exited with code {code}"),
            ExitVerdict::Signal(sig) => write!(f, "killed by {}", signal_name(*sig)),
        }
    }
}

/// `SIGSEGV` for 11, `signal 99` for numbers the platform does not name.
pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) => format!("signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(6), "SIGABRT");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(200), "signal 200");
        assert_eq!(ExitVerdict::Code(3).to_string(), "exited with code 3");
    }
}
