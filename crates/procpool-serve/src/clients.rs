//! Events on their way to the WebSocket clients: one queue per client, bounded in bytes.
//! A client that falls further behind than its budget loses its oldest events and is told
//! how many (`lagged`); the server's memory does not grow with a slow reader. A leaf:
//! the forwarder pushes, each client's stream pops.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// What one queued event costs beyond its text: the queue slot and the shared buffer's
/// header, so that a flood of tiny events is bounded too.
const EVENT_OVERHEAD: usize = 64;

/// One event on its way to the WebSocket clients.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) to: Audience,
    pub(crate) text: Utf8Bytes,
}

/// Who gets an [`Outgoing`] event.
#[derive(Clone, Debug)]
pub(crate) enum Audience {
    /// Every client (news about the stream itself).
    Everyone,
    /// Clients of these channels, and clients following every channel.
    Channels(Arc<[String]>),
}

impl Audience {
    fn includes(&self, channel: Option<&str>) -> bool {
        match (self, channel) {
            (Audience::Everyone, _) | (_, None) => true,
            (Audience::Channels(cs), Some(c)) => cs.iter().any(|x| x == c),
        }
    }
}

/// Every connected client's queue.
pub(crate) struct Clients {
    queues: Mutex<Vec<Weak<Queue>>>,
    /// Most bytes of events one client may have waiting.
    budget: usize,
}

/// One client's end: its events in order. Dropping it unsubscribes.
pub(crate) struct Subscription {
    queue: Arc<Queue>,
}

/// What a client reads next.
pub(crate) enum Next {
    Event(Utf8Bytes),
    /// This many events were dropped, oldest first, because the client fell behind.
    Lagged(u64),
}

struct Queue {
    channel: Option<String>,
    state: Mutex<QueueState>,
    /// One waiter (the client's stream); `notify_one` keeps a wake-up for it.
    changed: Notify,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<Utf8Bytes>,
    bytes: usize,
    missed: u64,
}

impl Clients {
    pub(crate) fn new(budget: usize) -> Clients {
        Clients {
            queues: Mutex::new(Vec::new()),
            budget,
        }
    }

    fn queues(&self) -> MutexGuard<'_, Vec<Weak<Queue>>> {
        // Pushes and removals only: consistent after a panic.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A queue for a client of `channel` (every channel when `None`): it gets what is
    /// sent from now on.
    pub(crate) fn subscribe(&self, channel: Option<String>) -> Subscription {
        let queue = Arc::new(Queue {
            channel,
            state: Mutex::new(QueueState::default()),
            changed: Notify::new(),
        });
        self.queues().push(Arc::downgrade(&queue));
        Subscription { queue }
    }

    /// Queues `out` for every client it is meant for.
    pub(crate) fn send(&self, out: Outgoing) {
        let mut queues = self.queues();
        queues.retain(|q| q.strong_count() > 0);
        for queue in queues.iter().filter_map(Weak::upgrade) {
            if out.to.includes(queue.channel.as_deref()) {
                queue.push(out.text.clone(), self.budget);
            }
        }
    }

    /// Clients connected now.
    #[cfg(test)]
    fn connected(&self) -> usize {
        self.queues()
            .iter()
            .filter(|q| q.strong_count() > 0)
            .count()
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, text: Utf8Bytes, budget: usize) {
        let mut st = self.lock();
        st.bytes += cost(&text);
        st.events.push_back(text);
        // The newest event always stays, however large: it is bounded by the frame cap.
        while st.bytes > budget && st.events.len() > 1 {
            if let Some(old) = st.events.pop_front() {
                st.bytes -= cost(&old);
                st.missed += 1;
            }
        }
        drop(st);
        self.changed.notify_one();
    }
}

fn cost(text: &Utf8Bytes) -> usize {
    text.len() + EVENT_OVERHEAD
}

impl Subscription {
    /// The next event, waiting for one.
    pub(crate) async fn recv(&self) -> Next {
        loop {
            if let Some(next) = self.try_recv() {
                return next;
            }
            self.queue.changed.notified().await;
        }
    }

    /// The next event if one is queued.
    pub(crate) fn try_recv(&self) -> Option<Next> {
        let mut st = self.queue.lock();
        if st.missed > 0 {
            return Some(Next::Lagged(std::mem::take(&mut st.missed)));
        }
        let text = st.events.pop_front()?;
        st.bytes -= cost(&text);
        Some(Next::Event(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Outgoing {
        Outgoing {
            to: Audience::Channels(vec!["c".to_owned()].into()),
            text: "x".repeat(n).into(),
        }
    }

    #[test]
    fn a_slow_client_keeps_at_most_its_budget_and_learns_what_it_missed() {
        let clients = Clients::new(10_000);
        let slow = clients.subscribe(Some("c".into()));
        let other = clients.subscribe(Some("d".into()));
        for _ in 0..100 {
            clients.send(event(1000));
        }
        // 1064 bytes each: nine fit in 10 000.
        assert!(matches!(slow.try_recv(), Some(Next::Lagged(91))));
        let mut left = 0;
        while let Some(Next::Event(text)) = slow.try_recv() {
            assert_eq!(text.len(), 1000);
            left += 1;
        }
        assert_eq!(left, 9);
        assert!(
            other.try_recv().is_none(),
            "another channel's client got it"
        );
        drop(other);
        clients.send(event(1));
        assert_eq!(clients.connected(), 1);
    }
}
