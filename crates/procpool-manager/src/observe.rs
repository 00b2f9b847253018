//! [`Observe`]: who watches the tasks of a run (a MetaTask's progress callbacks, a task
//! manager's node). A leaf: the run's context and the manager's state both hold observers.

use std::sync::Arc;

use procpool_core::Progress;
use uuid::Uuid;

/// Watches the tasks of a run: a MetaTask's progress callbacks, or the task manager's
/// event publisher.
pub(crate) trait Observe: Send + Sync {
    /// A task of the run reported progress (`p.task_id` is that task).
    fn progress(&self, p: &Progress);
    /// A task of the run sent a message to the parent.
    fn message(&self, _input: Uuid, _bytes: &[u8]) {}
    /// Whether [`Observe::message`] wants the messages; when no observer does, they stay
    /// in the task's handle.
    fn wants_messages(&self) -> bool {
        false
    }
}

/// Everyone watching one part of a run, innermost last.
pub(crate) type Observers = Arc<[Arc<dyn Observe>]>;
