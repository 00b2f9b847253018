//! The only per-job state of `procpool run`: which job ids were seen (to refuse a
//! duplicate) and which jobs already have a record from an earlier run (`--resume`). Both
//! live in one hash set of 128-bit hashes, 16 bytes per job (plus the table's slack), so a
//! batch of millions of jobs costs tens of megabytes, not the ids themselves.
//!
//! Two distinct ids share a hash with probability about n²/2^128 (n = number of jobs):
//! below 10^-20 for a billion jobs, far below the odds of a memory error.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// What a job is keyed by: its id, or for a line that has no usable id (a bad job), its
/// line number. The two kinds are hashed with different seeds so they never meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key(u128);

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

/// The set of keys; see the module docs.
#[derive(Default)]
pub(crate) struct Ledger {
    keys: HashSet<u128, BuildHasherDefault<PassThrough>>,
    /// Keys marked done and not met yet.
    pending_done: u64,
}

impl Ledger {
    /// Records that an earlier run wrote a record for `key`.
    pub(crate) fn mark_done(&mut self, key: Key) {
        if !self.keys.contains(&key.0) && self.keys.insert(key.0 | DONE) {
            self.pending_done += 1;
        }
    }

    /// Claims an id met in the job stream.
    pub(crate) fn claim(&mut self, key: Key) -> Claim {
        if self.keys.remove(&(key.0 | DONE)) {
            self.pending_done -= 1;
            self.keys.insert(key.0);
            Claim::Resumed
        } else if self.keys.insert(key.0) {
            Claim::New
        } else {
            Claim::Duplicate
        }
    }

    /// Whether an earlier run wrote a record for `key` (used for line keys, which are
    /// never claimed); true only the first time.
    pub(crate) fn take_done(&mut self, key: Key) -> bool {
        let found = self.keys.remove(&(key.0 | DONE));
        if found {
            self.pending_done -= 1;
        }
        found
    }

    /// Keys marked done: how many records the earlier runs left.
    pub(crate) fn pending_done(&self) -> u64 {
        self.pending_done
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
        let mut ledger = Ledger::default();
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
    fn many_ids_stay_distinct() {
        let mut ledger = Ledger::default();
        for i in 0..200_000u32 {
            assert_eq!(ledger.claim(Key::id(&format!("job-{i}"))), Claim::New);
        }
        assert_eq!(ledger.claim(Key::id("job-199999")), Claim::Duplicate);
    }
}
