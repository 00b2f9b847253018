//! Prefetch mode: the supervisor may send `Run`s ahead, so the worker starts its next task
//! without waiting for a round trip. A reader thread then owns the inbound channel: it
//! queues `Run`s, routes messages, and answers `Cancel` at once (drop a queued task, or
//! say it is running), even while the main thread is busy with a task.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard};

use procpool_proto::{Encoding, FromWorker, TaskId, ToWorker};

use crate::outbound::Outbound;

/// A task waiting in the prefetch queue.
pub(crate) struct Queued {
    pub(crate) task_id: TaskId,
    pub(crate) name: String,
    pub(crate) args: Vec<u8>,
    pub(crate) encoding: Encoding,
    messages: Vec<Vec<u8>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    current: Option<TaskId>,
    /// Messages for the current task.
    inbox: VecDeque<Vec<u8>>,
    /// Shutdown asked, or the supervisor closed the channel.
    stop: bool,
}

#[derive(Default)]
pub(crate) struct Window {
    state: Mutex<State>,
    changed: Condvar,
}

impl Window {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the channel until it ends. Runs on its own thread.
    pub(crate) fn read_loop(&self, out: &Outbound, max_frame: usize, stream: UnixStream) {
        // Buffered: frames sent ahead in a burst come in with few reads.
        let mut stream = std::io::BufReader::with_capacity(64 << 10, stream);
        let mut buf = Vec::new();
        loop {
            // Sleep in `poll`, not in `read`: a reader blocked in `read` is woken for nothing
            // each time the supervisor reads what we wrote on the socket (large frames).
            if stream.buffer().is_empty()
                && procpool_os::wait_readable(stream.get_ref().as_fd()).is_err()
            {
                break;
            }
            if !matches!(
                procpool_proto::read_frame(&mut stream, &mut buf, max_frame),
                Ok(true)
            ) {
                break;
            }
            let msg = match procpool_proto::decode_message::<ToWorker>(&buf) {
                Ok(msg) => msg,
                Err(e) => {
                    eprintln!("procpool worker: undecodable frame from the supervisor: {e}");
                    std::process::exit(70);
                }
            };
            let mut st = self.lock();
            // Whether the main thread may be waiting for this change. A `Run` behind others
            // wakes nobody: the main thread waits in `next` only on an empty queue. Saves
            // a futex wake per task in a burst of prefetched `Run`s.
            let wake = match msg {
                ToWorker::Run {
                    task_id,
                    name,
                    args,
                    encoding,
                } => {
                    st.queue.push_back(Queued {
                        task_id,
                        name,
                        args,
                        encoding,
                        messages: Vec::new(),
                    });
                    st.queue.len() == 1
                }
                ToWorker::Message { task_id, bytes } => {
                    if st.current == Some(task_id) {
                        st.inbox.push_back(bytes);
                        true
                    } else {
                        if let Some(q) = st.queue.iter_mut().find(|q| q.task_id == task_id) {
                            q.messages.push(bytes);
                        }
                        false
                    }
                }
                // Decided under the state lock, so the answer is true when it is sent:
                // the main thread cannot start the task in between.
                ToWorker::Cancel { task_id } => {
                    if let Some(pos) = st.queue.iter().position(|q| q.task_id == task_id) {
                        st.queue.remove(pos);
                        // A few bytes: below any frame cap.
                        let _ = out.send(&FromWorker::Skipped { task_id });
                    } else if st.current == Some(task_id) {
                        let _ = out.send(&FromWorker::Running { task_id });
                    }
                    false
                }
                ToWorker::Shutdown => {
                    st.stop = true;
                    true
                }
            };
            drop(st);
            if wake {
                self.changed.notify_all();
            }
        }
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// Waits for the next task; `None` once the worker should exit.
    pub(crate) fn next(&self) -> Option<Queued> {
        let mut st = self.lock();
        loop {
            if st.stop {
                return None;
            }
            if let Some(q) = st.queue.pop_front() {
                st.current = Some(q.task_id);
                st.inbox = q.messages.iter().cloned().collect();
                return Some(q);
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The current task ended.
    pub(crate) fn done(&self) {
        let mut st = self.lock();
        st.current = None;
        st.inbox.clear();
    }

    /// Next message for `task_id`; `None` when it is not the current task or the worker
    /// is stopping.
    pub(crate) fn recv(&self, task_id: TaskId) -> Option<Vec<u8>> {
        let mut st = self.lock();
        loop {
            if st.current != Some(task_id) {
                return None;
            }
            if let Some(m) = st.inbox.pop_front() {
                return Some(m);
            }
            if st.stop {
                return None;
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}
