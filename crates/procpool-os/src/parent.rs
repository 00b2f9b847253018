//! The worker's watch on its supervisor, the part every platform shares: what to do once
//! the kernel was asked to report the supervisor's death (trust it, wait for it on a
//! thread, poll, or give up at once), and the watch thread's loop. The platform modules
//! only do the asking (`PR_SET_PDEATHSIG` on Linux, a kqueue `EVFILT_PROC` watch on
//! macOS).

use std::io;
use std::time::Duration;

use crate::errors::OsError;

/// How often the fallback watch compares `getppid` with the supervisor's pid: an orphaned
/// worker lives at most this long after its supervisor. Only used where the kernel watch
/// could not be armed.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// A blocking wait on an armed kernel watch, run on the watch thread.
pub(crate) type KernelWait = Box<dyn FnMut() -> Wake + Send>;

/// What came of asking the kernel to report the supervisor's death.
pub(crate) enum Arming {
    /// Armed. `None`: the kernel acts on its own (a parent-death signal); `Some`: a
    /// thread must block in this wait to hear of it.
    Armed(Option<KernelWait>),
    /// The kernel knows no process with the supervisor's pid: it already exited.
    #[cfg_attr(
        all(target_os = "linux", not(test)),
        expect(
            dead_code,
            reason = "PR_SET_PDEATHSIG names no process, so it cannot fail this way"
        )
    )]
    NoSuchProcess,
    /// The watch is unavailable here (a sandbox, an old kernel): poll instead.
    Failed(io::Error),
}

/// What one blocking wait on the kernel watch returned.
#[cfg_attr(
    all(target_os = "linux", not(test)),
    expect(dead_code, reason = "Linux needs no waiting thread")
)]
pub(crate) enum Wake {
    /// The supervisor exited.
    ParentExited,
    /// A signal interrupted the wait; wait again.
    Interrupted,
    /// The wait itself failed: poll from now on.
    Failed(io::Error),
}

/// The watch the worker keeps once it asked the kernel.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// The supervisor is already gone: stop before running anything.
    Gone,
    /// The kernel acts on the supervisor's death by itself.
    Kernel,
    /// A thread waits on the kernel watch.
    KernelThread,
    /// A thread polls `getppid`.
    Poll,
}

/// Decides the watch. `current_parent` must be read *after* the arming: a supervisor
/// that died between our exec and the arming is seen only by that check (we were
/// re-parented), and one alive at that check was alive when the watch was armed, so the
/// watch is on the right process (its pid cannot have been recycled while it was our
/// parent).
fn plan(arming: &Arming, current_parent: u32, expected: u32) -> Plan {
    if current_parent != expected {
        return Plan::Gone;
    }
    match arming {
        Arming::Armed(None) => Plan::Kernel,
        Arming::Armed(Some(_)) => Plan::KernelThread,
        Arming::NoSuchProcess => Plan::Gone,
        Arming::Failed(_) => Plan::Poll,
    }
}

/// The watch thread's loop: returns once the supervisor is gone. A kernel watch that
/// fails falls back to polling `current_parent` (re-parenting means the supervisor died).
fn watch(
    mut kernel: Option<KernelWait>,
    expected: u32,
    current_parent: &mut dyn FnMut() -> u32,
    pause: &mut dyn FnMut(),
) {
    loop {
        if let Some(wait) = kernel.as_mut() {
            match wait() {
                Wake::ParentExited => return,
                Wake::Interrupted => {}
                Wake::Failed(error) => {
                    tracing::warn!(%error, "parent watch failed; polling the parent pid instead");
                    kernel = None;
                }
            }
        } else {
            if current_parent() != expected {
                return;
            }
            pause();
        }
    }
}

/// In the worker, right after the platform armed its watch: fails if the supervisor is
/// already gone, otherwise starts the watch thread where one is needed; when the watch
/// ends, the worker's whole process group is killed (its task's children included).
pub(crate) fn arm(arming: Arming, expected: u32) -> Result<(), OsError> {
    let current = || nix::unistd::getppid().as_raw() as u32;
    let kernel = match (plan(&arming, current(), expected), arming) {
        (Plan::Gone, _) => return Err(OsError::ParentGone { expected }),
        (Plan::Kernel, _) => return Ok(()),
        (_, Arming::Armed(wait)) => wait,
        (_, Arming::Failed(error)) => {
            tracing::warn!(%error, "parent watch unavailable; polling the parent pid instead");
            None
        }
        (_, Arming::NoSuchProcess) => unreachable!("plan() maps NoSuchProcess to Gone"),
    };
    std::thread::Builder::new()
        .name("procpool-parent-watch".into())
        .spawn(move || {
            let mut current_parent = current;
            watch(kernel, expected, &mut current_parent, &mut || {
                std::thread::sleep(POLL_EVERY)
            });
            crate::kill::kill_own_group("the supervisor exited");
        })
        .map_err(|source| OsError::WorkerSetup {
            what: "start the parent watch thread",
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const SUPERVISOR: u32 = 4242;

    fn armed_thread() -> Arming {
        Arming::Armed(Some(Box::new(|| Wake::ParentExited)))
    }

    #[test]
    fn a_parent_gone_before_the_arming_stops_the_worker_whatever_the_kernel_said() {
        for arming in [
            Arming::Armed(None),
            armed_thread(),
            Arming::NoSuchProcess,
            Arming::Failed(io::Error::other("no kqueue")),
        ] {
            assert_eq!(plan(&arming, 1, SUPERVISOR), Plan::Gone);
        }
    }

    #[test]
    fn a_live_parent_keeps_the_watch_the_kernel_could_arm() {
        assert_eq!(
            plan(&Arming::Armed(None), SUPERVISOR, SUPERVISOR),
            Plan::Kernel
        );
        assert_eq!(
            plan(&armed_thread(), SUPERVISOR, SUPERVISOR),
            Plan::KernelThread
        );
        let failed = Arming::Failed(io::Error::other("EPERM"));
        assert_eq!(plan(&failed, SUPERVISOR, SUPERVISOR), Plan::Poll);
        // The kernel says the pid is gone although getppid still names it: trust the
        // kernel, the worker must not run unwatched.
        assert_eq!(
            plan(&Arming::NoSuchProcess, SUPERVISOR, SUPERVISOR),
            Plan::Gone
        );
    }

    #[test]
    fn the_kernel_watch_is_waited_on_again_after_an_interruption_and_never_polled() {
        let waits = Arc::new(AtomicUsize::new(0));
        let counter = waits.clone();
        let kernel: KernelWait = Box::new(move || match counter.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Wake::Interrupted,
            _ => Wake::ParentExited,
        });
        let mut polled = 0;
        watch(
            Some(kernel),
            SUPERVISOR,
            &mut || {
                polled += 1;
                SUPERVISOR
            },
            &mut || panic!("no pause while the kernel watch works"),
        );
        assert_eq!(waits.load(Ordering::SeqCst), 3);
        assert_eq!(polled, 0);
    }

    #[test]
    fn a_failed_kernel_watch_falls_back_to_polling_until_the_worker_is_reparented() {
        let kernel: KernelWait = Box::new(|| Wake::Failed(io::Error::other("EBADF")));
        let mut parents = [SUPERVISOR, SUPERVISOR, SUPERVISOR, 1].into_iter();
        let mut pauses = 0;
        watch(
            Some(kernel),
            SUPERVISOR,
            &mut || parents.next().expect("polled only until re-parented"),
            &mut || pauses += 1,
        );
        assert_eq!(pauses, 3);
        assert_eq!(parents.next(), None);
    }

    #[test]
    fn polling_alone_ends_at_the_first_other_parent() {
        let mut parents = [SUPERVISOR, 77].into_iter();
        let mut pauses = 0;
        watch(
            None,
            SUPERVISOR,
            &mut || parents.next().expect("polled only until re-parented"),
            &mut || pauses += 1,
        );
        assert_eq!(pauses, 1);
    }
}
