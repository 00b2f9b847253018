//! The task table: every task the server accepted, from submission until its result
//! expires, then a tombstone so that a late reader gets `410 Gone` rather than `404`.
//! Both are bounded: results by their TTL and by the bytes they hold (the oldest expire
//! early past that), tombstones by a count cap (the oldest are forgotten and then read
//! as unknown).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use procpool::MetaError;
use procpool::manager::PendingTask;
use serde_json::Value;
use uuid::Uuid;

use procpool::records::ErrorReport;

use crate::report::{self, Status};

/// What an ended entry costs beyond its result or error: the entry, its map slot, its
/// name and channels, about. Keeps a flood of tiny results bounded by the byte budget too.
const ENTRY_OVERHEAD: usize = 256;
/// Ids of expired tasks remembered for `410 Gone` (16 bytes each, plus the set's slot).
const MAX_TOMBSTONES: usize = 100_000;

/// One accepted task.
pub(crate) struct Entry {
    /// The task's name (the top-level call).
    pub(crate) task: String,
    pub(crate) cache_key: Option<String>,
    /// Channels of the submissions that share it (one per distinct channel).
    pub(crate) channels: Vec<String>,
    /// One consumer of the run, to await its outcome; dropped once the outcome is here
    /// (it holds a copy of the result).
    pub(crate) pending: Option<PendingTask>,
    pub(crate) accepted: Instant,
    /// Set once any of its tasks was seen on a worker: `pending` never comes back.
    pub(crate) started: bool,
    /// The last progress report: fraction and message.
    pub(crate) progress: Option<(f32, String)>,
    pub(crate) end: Option<Ended>,
}

/// How an entry ended.
pub(crate) struct Ended {
    pub(crate) status: Status,
    pub(crate) result: Option<Value>,
    pub(crate) error: Option<ErrorReport>,
}

/// What the table knows about an id.
pub(crate) enum Lookup<'a> {
    Known(&'a mut Entry),
    /// It ended and its result expired.
    Expired,
    Unknown,
}

/// What a [`Table::finish`] changed, for the metrics.
pub(crate) struct Finished {
    pub(crate) status: Status,
    pub(crate) kind: &'static str,
    pub(crate) took: Duration,
}

pub(crate) struct Table {
    entries: HashMap<Uuid, Entry>,
    /// Ended entries in the order they ended (so by expiry time too), with their cost.
    ended: VecDeque<(Instant, Uuid, usize)>,
    /// Sum of the costs in `ended`.
    ended_bytes: usize,
    /// Most bytes `ended` may hold: past it, the oldest results expire early.
    max_bytes: usize,
    tombstones: HashSet<Uuid>,
    tombstone_order: VecDeque<Uuid>,
    active: usize,
    ttl: Duration,
}

impl Table {
    pub(crate) fn new(ttl: Duration, max_bytes: usize) -> Table {
        Table {
            entries: HashMap::new(),
            ended: VecDeque::new(),
            ended_bytes: 0,
            max_bytes,
            tombstones: HashSet::new(),
            tombstone_order: VecDeque::new(),
            active: 0,
            ttl,
        }
    }

    /// Tasks accepted and not ended.
    pub(crate) fn active(&self) -> usize {
        self.active
    }

    /// Ids and entries of the tasks not ended.
    pub(crate) fn active_entries(&mut self) -> impl Iterator<Item = (&Uuid, &mut Entry)> {
        self.entries.iter_mut().filter(|(_, e)| e.end.is_none())
    }

    pub(crate) fn insert(&mut self, id: Uuid, entry: Entry) {
        if self.entries.insert(id, entry).is_none() {
            self.active += 1;
        }
    }

    /// The entry of `id`, if it is still in the table.
    pub(crate) fn entry(&mut self, id: Uuid) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    pub(crate) fn lookup(&mut self, id: Uuid, now: Instant) -> Lookup<'_> {
        self.sweep(now);
        match self.entries.get_mut(&id) {
            Some(entry) => Lookup::Known(entry),
            None if self.tombstones.contains(&id) => Lookup::Expired,
            None => Lookup::Unknown,
        }
    }

    /// Records the outcome of `id`; `None` if it was already recorded (or is unknown).
    pub(crate) fn finish(
        &mut self,
        id: Uuid,
        outcome: &Result<Value, MetaError>,
        now: Instant,
    ) -> Option<Finished> {
        let entry = self.entries.get_mut(&id)?;
        if entry.end.is_some() {
            return None;
        }
        let ended = match outcome {
            Ok(value) => Ended {
                status: Status::Completed,
                result: Some(value.clone()),
                error: None,
            },
            Err(err) => {
                let (status, info) = report::describe(err);
                Ended {
                    status,
                    result: None,
                    error: Some(info),
                }
            }
        };
        let finished = Finished {
            status: ended.status,
            kind: ended.error.as_ref().map_or("none", |e| e.kind),
            took: now.saturating_duration_since(entry.accepted),
        };
        let cost =
            ENTRY_OVERHEAD + entry.task.len() + json_len(&ended.result) + json_len(&ended.error);
        entry.end = Some(ended);
        entry.pending = None;
        self.active -= 1;
        self.ended.push_back((now, id, cost));
        self.ended_bytes += cost;
        self.sweep(now);
        Some(finished)
    }

    /// Turns expired results into tombstones, and forgets the oldest tombstones.
    pub(crate) fn sweep(&mut self, now: Instant) {
        while let Some(&(at, id, cost)) = self.ended.front() {
            let expired = now.saturating_duration_since(at) >= self.ttl;
            if !expired && self.ended_bytes <= self.max_bytes {
                break;
            }
            self.ended.pop_front();
            self.ended_bytes -= cost;
            self.entries.remove(&id);
            if self.tombstones.insert(id) {
                self.tombstone_order.push_back(id);
            }
        }
        while self.tombstone_order.len() > MAX_TOMBSTONES {
            if let Some(old) = self.tombstone_order.pop_front() {
                self.tombstones.remove(&old);
            }
        }
    }
}

/// Bytes of `value` as JSON, counted without building the text.
fn json_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Only an I/O error could stop it, and counting has none.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(accepted: Instant) -> Entry {
        Entry {
            task: "add".into(),
            cache_key: None,
            channels: Vec::new(),
            // Not needed by the table itself.
            pending: None,
            accepted,
            started: false,
            progress: None,
            end: None,
        }
    }

    #[test]
    fn first_outcome_wins_then_it_expires_into_a_tombstone() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut table = Table::new(ttl, usize::MAX);
        let id = Uuid::new_v4();
        table.insert(id, entry(t0));
        assert_eq!(table.active(), 1);

        let done = table.finish(id, &Ok(3.into()), t0 + Duration::from_millis(5));
        let done = done.expect("the first outcome is recorded");
        assert_eq!((done.status, done.kind), (Status::Completed, "none"));
        assert_eq!(done.took, Duration::from_millis(5));
        assert!(
            table.finish(id, &Err(MetaError::Cancelled), t0).is_none(),
            "a second outcome is ignored"
        );
        assert_eq!(table.active(), 0);

        let at = t0 + Duration::from_millis(5);
        match table.lookup(id, at + ttl - Duration::from_millis(1)) {
            Lookup::Known(e) => assert_eq!(e.end.as_ref().unwrap().result, Some(3.into())),
            _ => panic!("readable until its TTL"),
        }
        assert!(matches!(table.lookup(id, at + ttl), Lookup::Expired));
        assert!(matches!(
            table.lookup(Uuid::new_v4(), at + ttl),
            Lookup::Unknown
        ));
    }

    #[test]
    fn failures_carry_their_kind_and_running_tasks_never_expire() {
        let t0 = Instant::now();
        let mut table = Table::new(Duration::from_millis(1), usize::MAX);
        let (running, failed) = (Uuid::new_v4(), Uuid::new_v4());
        table.insert(running, entry(t0));
        table.insert(failed, entry(t0));
        let err = MetaError::Task {
            id: failed,
            name: "panic".into(),
            path: "$".into(),
            source: Box::new(procpool::TaskError::Panicked {
                message: "boom".into(),
                location: None,
                backtrace: None,
            }),
        };
        let done = table.finish(failed, &Err(err), t0).unwrap();
        assert_eq!((done.status, done.kind), (Status::Failed, "panicked"));
        let later = t0 + Duration::from_secs(3600);
        assert!(matches!(table.lookup(running, later), Lookup::Known(_)));
        assert!(matches!(table.lookup(failed, later), Lookup::Expired));
        assert_eq!(table.active(), 1);
    }

    #[test]
    fn results_past_the_byte_budget_expire_oldest_first() {
        let t0 = Instant::now();
        let big = Value::String("x".repeat(10_000));
        let mut table = Table::new(Duration::from_secs(3600), 25_000);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            table.insert(*id, entry(t0));
            table.finish(*id, &Ok(big.clone()), t0);
        }
        // Two results of about 10 KB fit in 25 000 bytes; the first one expired early.
        assert!(matches!(table.lookup(ids[0], t0), Lookup::Expired));
        assert!(matches!(table.lookup(ids[1], t0), Lookup::Known(_)));
        assert!(matches!(table.lookup(ids[2], t0), Lookup::Known(_)));
    }
}
