//! The fail-fast group of one run: every task (and every subscription to a shared task)
//! started for a MetaTask run is a live member of its scope until it ends. The first
//! failure is recorded and stops every other member at once; the run then waits for all
//! members to end, so no worker process of the run outlives its result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use tokio::sync::Notify;

use crate::errors::MetaError;

/// Something a run started and must stop and wait for: a task on the pool, or a
/// subscription to a shared task of a task manager.
pub(crate) trait Live: Send + Sync {
    /// Stops it: cancels the task (its worker is killed), or drops the subscription (the
    /// shared task is cancelled only if this was its last consumer).
    fn stop(self: Arc<Self>);

    /// Resolves once it has ended: the task's handle resolved (after its worker was
    /// reaped), or the subscription has its outcome.
    fn ended(&self) -> BoxFuture<'_, ()>;

    /// Adds the pids of the worker processes running it right now to `out` (none while
    /// queued or once ended). For status reports only: a pid may be gone by the time it
    /// is read.
    fn worker_pids(&self, _out: &mut Vec<u32>) {}
}

/// Key of a live member, to leave the scope with.
pub(crate) type Member = u64;

/// A fail-fast group (see the module docs).
pub(crate) struct Scope {
    state: Mutex<State>,
    /// Woken when the first failure is recorded.
    failed: Notify,
}

#[derive(Default)]
struct State {
    /// The first failure (or the cancel); later ones are consequences and are dropped.
    failure: Option<MetaError>,
    live: HashMap<Member, Arc<dyn Live>>,
    next: Member,
    /// Set by [`Scope::settle`]: the run is over, nothing may start in it any more.
    closed: bool,
}

impl Scope {
    pub(crate) fn new() -> Arc<Scope> {
        Arc::new(Scope {
            state: Mutex::new(State::default()),
            failed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated (single
        // inserts and removes), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a member with `start` and keeps it, unless the scope already failed.
    ///
    /// `start` runs under the scope's lock: a failure recorded concurrently either comes
    /// first (and nothing starts) or finds the new member and stops it. Without this, a
    /// task submitted just after the failure's stop sweep would run on unattended.
    pub(crate) fn enter<L: Live + 'static>(
        &self,
        start: impl FnOnce() -> Arc<L>,
    ) -> Result<(Member, Arc<L>), MetaError> {
        let mut st = self.lock();
        if let Some(failure) = &st.failure {
            return Err(failure.clone());
        }
        if st.closed {
            return Err(MetaError::Cancelled);
        }
        let member = st.next;
        st.next += 1;
        let live = start();
        st.live.insert(member, live.clone());
        Ok((member, live))
    }

    /// The member ended and its outcome was taken.
    pub(crate) fn leave(&self, member: Member) {
        self.lock().live.remove(&member);
    }

    /// Records `err` if it is the first failure, and then stops every live member.
    /// Returns `err`, for the caller to propagate.
    pub(crate) fn fail(&self, err: MetaError) -> MetaError {
        let live: Vec<Arc<dyn Live>> = {
            let mut st = self.lock();
            if st.failure.is_some() {
                return err;
            }
            st.failure = Some(err.clone());
            st.live.values().cloned().collect()
        };
        self.failed.notify_waiters();
        // Outside the lock: stopping a subscription takes the task manager's locks.
        for member in live {
            member.stop();
        }
        err
    }

    /// Cancels the run: every live member is stopped.
    pub(crate) fn cancel(&self) {
        self.fail(MetaError::Cancelled);
    }

    /// The first failure, if any.
    pub(crate) fn failure(&self) -> Option<MetaError> {
        self.lock().failure.clone()
    }

    /// Pids of the worker processes running the live members right now.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        // Members are asked outside the lock: a member that is a subscription asks its
        // shared task's own scope.
        let live: Vec<Arc<dyn Live>> = self.lock().live.values().cloned().collect();
        let mut pids = Vec::new();
        for member in live {
            member.worker_pids(&mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Resolves with the first failure, once there is one.
    pub(crate) async fn failed(&self) -> MetaError {
        loop {
            // Created before the check: `notify_waiters` wakes futures created before it
            // was called, so a failure between the check and the await is not missed.
            let notified = self.failed.notified();
            if let Some(failure) = self.failure() {
                return failure;
            }
            notified.await;
        }
    }

    /// Ends the run: closes the scope, stops what is still live (members whose outcome
    /// nobody waited for, or all of them after a failure) and waits until each has ended.
    pub(crate) async fn settle(&self) {
        let live: Vec<Arc<dyn Live>> = {
            let mut st = self.lock();
            st.closed = true;
            st.live.drain().map(|(_, live)| live).collect()
        };
        for member in &live {
            member.clone().stop();
        }
        for member in &live {
            member.ended().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt as _;

    use super::*;

    #[derive(Default)]
    struct Probe {
        stops: AtomicUsize,
    }

    impl Live for Probe {
        fn stop(self: Arc<Self>) {
            self.stops.fetch_add(1, Ordering::SeqCst);
        }
        fn ended(&self) -> BoxFuture<'_, ()> {
            futures::future::ready(()).boxed()
        }
    }

    #[test]
    fn first_failure_wins_and_stops_the_others() {
        let scope = Scope::new();
        let (a, _) = scope.enter(|| Arc::new(Probe::default())).unwrap();
        let (_, b) = scope.enter(|| Arc::new(Probe::default())).unwrap();
        scope.leave(a);
        scope.fail(MetaError::Codec {
            message: "first".into(),
        });
        scope.fail(MetaError::Cancelled);
        assert_eq!(
            scope.failure(),
            Some(MetaError::Codec {
                message: "first".into()
            })
        );
        assert_eq!(b.stops.load(Ordering::SeqCst), 1);
        // Nothing starts in a failed scope.
        assert!(scope.enter(|| Arc::new(Probe::default())).is_err());
    }

    #[test]
    fn settle_stops_leftovers_and_closes() {
        let scope = Scope::new();
        let (_, a) = scope.enter(|| Arc::new(Probe::default())).unwrap();
        futures::executor::block_on(scope.settle());
        assert_eq!(a.stops.load(Ordering::SeqCst), 1);
        assert_eq!(scope.failure(), None, "a settled run did not fail");
        assert!(scope.enter(|| Arc::new(Probe::default())).is_err());
    }
}
