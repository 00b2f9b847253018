//! Which job ids were seen (to refuse a duplicate) and which jobs already have a record
//! from an earlier run (`--resume`), kept in memory as the jobs stream in: one 128-bit
//! hash per job, about 20 bytes per job all told. Used for jobs read from standard input;
//! a job *file* is checked in bounded memory by `plan.rs`, which gives the same verdicts.
//!
//! Two distinct ids share a hash with probability about n²/2^128 (n = number of jobs):
//! below 10^-20 for a billion jobs, far below the odds of a memory error.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// What a job is keyed by: its id, or for a line that has no usable id (a bad job), its
/// line number. The two kinds are hashed with different seeds so they never meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key(pub(crate) u128);

impl Key {
    pub(crate) fn id(id: &str) -> Key {
        Key(xxh3_128_with_seed(id.as_bytes(), 0x6964) & !DONE)
    }

    pub(crate) fn line(line: u64) -> Key {
        Key(xxh3_128_with_seed(&line.to_le_bytes(), 0x6c69_6e65) & !DONE)
    }
}

/// The low bit of a stored hash marks "has a record from an earlier run, not met in the
/// job stream yet"; a clear bit means "met in the job stream". One entry per key either
/// way, so resuming costs no extra memory per job.
const DONE: u128 = 1;

/// A job an earlier run wrote a record for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// By its id.
    Id(Key),
    /// A `bad_job` record, by its line number: a bad line may carry the id of another
    /// job (a duplicate), so matching it by id would skip that job.
    BadLine(u64),
}

/// How a job line relates to what came before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// First time this id is met: the job runs.
    New,
    /// First time it is met, and an earlier run already wrote its record: skip it.
    Resumed,
    /// Met before in this job stream.
    Duplicate,
}

/// The set of keys. New keys go to `recent`, a small hash table, and move in batches into
/// `sorted`, a sorted vector, whenever `recent` reaches an eighth of it. The vector costs
/// 16 bytes per key; a hash table of the whole set would cost 18 to 36, and twice that for
/// a moment each time it grows. The small table keeps inserts cheap, and the batches keep
/// the re-sorting to a few passes over the set in all.
pub(crate) struct Ledger {
    sorted: Vec<u128>,
    recent: HashSet<u128, BuildHasherDefault<PassThrough>>,
    /// `recent` moves into `sorted` at this size at least.
    min_batch: usize,
    /// Keys marked done and not met yet.
    pending_done: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::with_batch(1 << 16)
    }
}

/// Where a key is stored.
#[derive(Clone, Copy)]
enum Slot {
    Sorted(usize),
    Recent,
}

impl Ledger {
    fn with_batch(min_batch: usize) -> Ledger {
        Ledger {
            sorted: Vec::new(),
            recent: HashSet::default(),
            min_batch,
            pending_done: 0,
        }
    }

    /// Records that an earlier run closed a job.
    pub(crate) fn mark(&mut self, closed: Closed) {
        self.mark_done(match closed {
            Closed::Id(key) => key,
            Closed::BadLine(line) => Key::line(line),
        });
    }

    /// Records that an earlier run wrote a record for `key`.
    fn mark_done(&mut self, key: Key) {
        if self.locate(key.0).is_none() {
            self.insert(key.0 | DONE);
            self.pending_done += 1;
        }
    }

    /// Claims an id met in the job stream.
    pub(crate) fn claim(&mut self, key: Key) -> Claim {
        match self.locate(key.0) {
            Some((slot, true)) => {
                self.met(key.0, slot);
                Claim::Resumed
            }
            Some((_, false)) => Claim::Duplicate,
            None => {
                self.insert(key.0);
                Claim::New
            }
        }
    }

    /// Whether an earlier run wrote a record for `key` (used for line keys, which are
    /// never claimed); true only the first time.
    pub(crate) fn take_done(&mut self, key: Key) -> bool {
        match self.locate(key.0) {
            Some((slot, true)) => {
                self.met(key.0, slot);
                true
            }
            _ => false,
        }
    }

    /// Keys marked done: how many records the earlier runs left.
    pub(crate) fn pending_done(&self) -> u64 {
        self.pending_done
    }

    /// Where `key` is stored, and whether it is stored as done (`key | DONE`).
    fn locate(&self, key: u128) -> Option<(Slot, bool)> {
        match self.sorted.binary_search(&key) {
            Ok(i) => return Some((Slot::Sorted(i), false)),
            // `key | DONE` is `key + 1`: if present, it sits where `key` would go.
            Err(i) if self.sorted.get(i) == Some(&(key | DONE)) => {
                return Some((Slot::Sorted(i), true));
            }
            Err(_) => {}
        }
        if self.recent.contains(&key) {
            Some((Slot::Recent, false))
        } else if self.recent.contains(&(key | DONE)) {
            Some((Slot::Recent, true))
        } else {
            None
        }
    }

    /// A key stored as done is now met in the job stream.
    fn met(&mut self, key: u128, slot: Slot) {
        match slot {
            // In place: no other key sorts between `key | DONE` and `key`, so the vector
            // stays sorted.
            Slot::Sorted(i) => self.sorted[i] = key,
            Slot::Recent => {
                self.recent.remove(&(key | DONE));
                self.recent.insert(key);
            }
        }
        self.pending_done -= 1;
    }

    /// Stores a key known to be absent (in neither form).
    fn insert(&mut self, stored: u128) {
        self.recent.insert(stored);
        if self.recent.len() >= self.min_batch.max(self.sorted.len() / 8) {
            // Exact: the vector is most of the memory, so no growth slack. `drain` keeps
            // the table's capacity for the next batch.
            self.sorted.reserve_exact(self.recent.len());
            self.sorted.extend(self.recent.drain());
            self.sorted.sort_unstable();
        }
    }
}

/// The keys are already uniform hashes: hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; this keeps any other input correct, if slow.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = (n >> 64) as u64 ^ n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_resumes() {
        // Batches of 1 and 2 move keys into the sorted part at once; the default keeps them
        // in the table: every path is taken.
        for batch in [1, 2, 1 << 16] {
            claims_and_resumes_with(Ledger::with_batch(batch));
        }
    }

    fn claims_and_resumes_with(mut ledger: Ledger) {
        ledger.mark_done(Key::id("a"));
        ledger.mark_done(Key::id("a"));
        ledger.mark_done(Key::line(3));
        assert_eq!(ledger.pending_done(), 2);
        assert_eq!(ledger.claim(Key::id("a")), Claim::Resumed);
        assert_eq!(ledger.claim(Key::id("a")), Claim::Duplicate);
        assert_eq!(ledger.claim(Key::id("b")), Claim::New);
        assert_eq!(ledger.claim(Key::id("b")), Claim::Duplicate);
        // An id and a line number never share a key.
        assert_eq!(ledger.claim(Key::id("3")), Claim::New);
        assert!(ledger.take_done(Key::line(3)));
        assert!(!ledger.take_done(Key::line(3)));
        assert_eq!(ledger.pending_done(), 0);
        // A record for an id already met changes nothing.
        ledger.mark_done(Key::id("b"));
        assert_eq!(ledger.pending_done(), 0);
    }

    #[test]
    fn many_ids_stay_distinct_across_batches() {
        let mut ledger = Ledger::with_batch(1000);
        for i in 0..50_000u32 {
            if i % 3 == 0 {
                ledger.mark_done(Key::id(&format!("job-{i}")));
            }
        }
        for i in 0..100_000u32 {
            let expected = match i {
                i if i < 50_000 && i % 3 == 0 => Claim::Resumed,
                _ => Claim::New,
            };
            assert_eq!(ledger.claim(Key::id(&format!("job-{i}"))), expected, "{i}");
        }
        assert_eq!(ledger.pending_done(), 0);
        for i in (0..100_000u32).step_by(7) {
            assert_eq!(ledger.claim(Key::id(&format!("job-{i}"))), Claim::Duplicate);
        }
        assert!(ledger.sorted.len() > 80_000, "{}", ledger.sorted.len());
        assert!(ledger.sorted.is_sorted());
    }

    #[test]
    fn about_twenty_bytes_per_job() {
        let mut ledger = Ledger::default();
        let n = 400_000;
        for i in 0..n {
            ledger.claim(Key::id(&i.to_string()));
        }
        // The table: one 16-byte slot and one control byte per bucket, at most 7/8 full,
        // buckets a power of two.
        let table = (ledger.recent.capacity() * 8 / 7).next_power_of_two() * 17;
        let bytes = ledger.sorted.capacity() * 16 + table;
        assert!(bytes / n <= 24, "{} bytes per job", bytes / n);
    }
}
