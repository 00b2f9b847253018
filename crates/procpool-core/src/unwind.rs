//! Panics in code the supervisor does not own must not unwind through it: a user's
//! callback, or a `tracing` subscriber whose writer panics (tracing-subscriber's default
//! writer does when stderr is a closed pipe). Unwound, such a panic would drop the tasks
//! an executor or the dispatcher holds and resolve them as `pool_closed` while the pool
//! is open. Everything here runs the foreign code under `catch_unwind` and goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};

use procpool_os::{Pgid, Signal};

/// Emits a `tracing` event (`log!(debug!(...))`); a panic inside the subscriber is
/// swallowed. The event keeps the caller's module as its target.
macro_rules! log {
    ($($event:tt)*) => {{
        let _ = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {
            ::tracing::$($event)*
        }));
    }};
}

/// Signals a worker's group. procpool-os sends the signal before it logs, so a panicking
/// log cannot keep a kill from happening; its panic stops here.
pub(crate) fn signal(pgid: Pgid, sig: Signal, reason: &str) {
    let _ = catch_unwind(AssertUnwindSafe(|| pgid.signal(sig, reason)));
}

/// Runs a user callback (`what` names it in the log); a panic is logged, not propagated.
pub(crate) fn user_callback(what: &str, f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let message = panic_message(panic.as_ref());
        log!(warn!(
            callback = what,
            panic = message,
            "a user callback panicked"
        ));
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
