//! Logs through `tracing` on stderr, as text or JSON lines (`--log-format`), for every
//! subcommand. While a progress bar is drawn on stderr, each log line is written with the
//! bar lifted off the screen and redrawn after, so the two never mix on the terminal.

use std::io::{IsTerminal as _, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, LogLevel};

/// The bar on stderr, if one is drawn (see [`attach_bar`]).
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Starts logging. `--log-level` wins over `RUST_LOG`; with neither, only warnings and
/// errors are shown.
pub(crate) fn init(level: Option<LogLevel>, format: LogFormat) {
    let filter = match level {
        Some(level) => EnvFilter::new(level.as_str()),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        // On a write error the default is to report it with `eprintln!`, which panics when
        // stderr is a closed pipe or a hung-up terminal; a lost log line is the lesser evil.
        .log_internal_errors(false)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object per line, fields flattened for log collectors.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Routes log lines around `bar` until [`detach_bar`].
pub(crate) fn attach_bar(bar: &ProgressBar) {
    *BAR.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
}

/// Log lines go straight to stderr again.
pub(crate) fn detach_bar() {
    *BAR.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// stderr, with the bar (if any) suspended around each write. The fmt layer writes each
/// event with one `write_all`, so a line is never split around a redraw.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
