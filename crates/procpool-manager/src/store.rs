//! [`Store`]: where a task manager keeps results (taken once) and cached values (read by
//! every request with the same cache key), with [`MemoryStore`] as the default.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::time::Instant;
use uuid::Uuid;

use crate::errors::StoreError;

/// What a store entry is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum StoreKey {
    /// The result of a task run by the manager, taken once by `get_result`.
    Result(Uuid),
    /// The result of a task with a cache key, read by every later request with that key.
    Cache(String),
}

impl fmt::Display for StoreKey {
    /// `result/<uuid>` or `cache/<key>`: a flat key for stores outside the process.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreKey::Result(id) => write!(f, "result/{id}"),
            StoreKey::Cache(key) => write!(f, "cache/{key}"),
        }
    }
}

/// A key-value store for JSON-encoded results, so a networked store can replace the
/// in-memory one without touching the manager. Methods return boxed futures so the trait
/// can be used as `dyn Store`.
pub trait Store: Send + Sync + 'static {
    /// Stores `value` under `key`, replacing what was there; it expires after `ttl`
    /// (`None`: it is kept until taken, removed or evicted).
    fn put<'a>(
        &'a self,
        key: StoreKey,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The value under `key`, if present and not expired; it stays in the store.
    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Removes and returns the value under `key`, if present and not expired: a second
    /// `take` of the same key finds nothing.
    fn take<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Removes the value under `key`, if any.
    fn remove<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The default [`Store`]: a map in memory, bounded in bytes.
///
/// - **Size.** An entry counts the length of its value; the sum never exceeds the
///   capacity. A value larger than the whole capacity is refused with
///   [`StoreError::TooLarge`] and the store is left as it was.
/// - **Eviction.** When a `put` would go over the capacity, expired entries go first, then
///   the entries written longest ago (first in, first out; reads do not refresh an
///   entry), until the new value fits.
/// - **Expiry.** An entry past its TTL is never returned; it is dropped when next looked
///   up, or by the next `put`.
pub struct MemoryStore {
    capacity: usize,
    state: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<StoreKey, Entry>,
    /// Write order: sequence number -> key, oldest first.
    order: BTreeMap<u64, StoreKey>,
    bytes: usize,
    next: u64,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
    seq: u64,
}

impl Entries {
    fn remove(&mut self, key: &StoreKey) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.order.remove(&entry.seq);
        self.bytes -= entry.value.len();
        Some(entry)
    }

    /// The entry under `key` unless it expired (an expired one is dropped).
    fn live(&mut self, key: &StoreKey, now: Instant) -> Option<&Entry> {
        if self
            .map
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|t| t <= now))
        {
            self.remove(key);
        }
        self.map.get(key)
    }

    fn sweep_expired(&mut self, now: Instant) {
        let expired: Vec<StoreKey> = self
            .map
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
    }
}

impl MemoryStore {
    /// The capacity of [`MemoryStore::default`]: 64 MiB.
    pub const DEFAULT_CAPACITY: usize = 64 << 20;

    /// An empty store holding at most `capacity` bytes of values.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            capacity,
            state: Mutex::new(Entries::default()),
        }
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of values held now (expired ones included until they are dropped).
    pub fn used_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries held now (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Every update keeps `map`, `order` and `bytes` in step before it can panic (the
        // only panics are allocation failures), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_now(
        &self,
        key: StoreKey,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let size = value.len();
        if size > self.capacity {
            return Err(StoreError::TooLarge {
                size,
                capacity: self.capacity,
            });
        }
        let now = Instant::now();
        let mut st = self.lock();
        st.remove(&key);
        if st.bytes + size > self.capacity {
            st.sweep_expired(now);
        }
        while st.bytes + size > self.capacity {
            let Some(oldest) = st.order.values().next().cloned() else {
                break;
            };
            st.remove(&oldest);
            tracing::debug!(key = %oldest, "evicted from the result store to make room");
        }
        let seq = st.next;
        st.next += 1;
        st.bytes += size;
        st.order.insert(seq, key.clone());
        st.map.insert(
            key,
            Entry {
                value,
                expires: ttl.map(|ttl| now + ttl),
                seq,
            },
        );
        Ok(())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Self::DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("used_bytes", &st.bytes)
            .field("entries", &st.map.len())
            .finish()
    }
}

impl Store for MemoryStore {
    fn put<'a>(
        &'a self,
        key: StoreKey,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        futures::future::ready(self.put_now(key, value, ttl)).boxed()
    }

    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let value = self
            .lock()
            .live(key, Instant::now())
            .map(|e| e.value.clone());
        futures::future::ready(Ok(value)).boxed()
    }

    fn take<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let mut st = self.lock();
        let value = match st.live(key, Instant::now()) {
            Some(_) => st.remove(key).map(|e| e.value),
            None => None,
        };
        futures::future::ready(Ok(value)).boxed()
    }

    fn remove<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<(), StoreError>> {
        self.lock().remove(key);
        futures::future::ready(Ok(())).boxed()
    }
}

/// A shared store: the manager and its owner can both hold it.
impl<S: Store + ?Sized> Store for Arc<S> {
    fn put<'a>(
        &'a self,
        key: StoreKey,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).put(key, value, ttl)
    }

    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        (**self).get(key)
    }

    fn take<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        (**self).take(key)
    }

    fn remove<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u128) -> StoreKey {
        StoreKey::Result(Uuid::from_u128(n))
    }

    #[tokio::test(start_paused = true)]
    async fn take_is_once_and_get_is_many() {
        let store = MemoryStore::new(100);
        store.put(key(1), b"abc".to_vec(), None).await.unwrap();
        store
            .put(StoreKey::Cache("k".into()), b"v".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(
            store.take(&key(1)).await.unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(store.take(&key(1)).await.unwrap(), None);
        let cache = StoreKey::Cache("k".into());
        for _ in 0..2 {
            assert_eq!(store.get(&cache).await.unwrap().as_deref(), Some(&b"v"[..]));
        }
        assert_eq!(store.used_bytes(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let store = MemoryStore::new(100);
        let ttl = Some(Duration::from_secs(10));
        store.put(key(1), vec![1; 10], ttl).await.unwrap();
        store.put(key(2), vec![2; 10], None).await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(store.get(&key(1)).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(store.get(&key(1)).await.unwrap(), None);
        assert_eq!(store.take(&key(1)).await.unwrap(), None);
        assert!(store.get(&key(2)).await.unwrap().is_some(), "no TTL: kept");
        assert_eq!(store.used_bytes(), 10, "the expired entry was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_evicts_expired_then_oldest_writes() {
        let store = MemoryStore::new(30);
        store.put(key(1), vec![1; 10], None).await.unwrap();
        store
            .put(key(2), vec![2; 10], Some(Duration::from_secs(1)))
            .await
            .unwrap();
        store.put(key(3), vec![3; 10], None).await.unwrap();
        // A read does not refresh: key 1 stays the oldest write.
        assert!(store.get(&key(1)).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;

        // Full: the expired key 2 makes room first.
        store.put(key(4), vec![4; 10], None).await.unwrap();
        assert!(store.get(&key(1)).await.unwrap().is_some());
        assert_eq!(store.get(&key(2)).await.unwrap(), None);

        // Nothing expired: the oldest write (key 1), then key 3, make room for 15 bytes.
        store.put(key(5), vec![5; 15], None).await.unwrap();
        assert_eq!(store.get(&key(1)).await.unwrap(), None);
        assert_eq!(store.get(&key(3)).await.unwrap(), None);
        assert!(store.get(&key(4)).await.unwrap().is_some());
        assert!(store.get(&key(5)).await.unwrap().is_some());
        assert_eq!(store.used_bytes(), 25);

        // Rewriting a key replaces it and moves it to the newest place.
        store.put(key(4), vec![4; 5], None).await.unwrap();
        assert_eq!(store.used_bytes(), 20);
        store.put(key(6), vec![6; 11], None).await.unwrap();
        assert_eq!(
            store.get(&key(5)).await.unwrap(),
            None,
            "oldest after the rewrite"
        );
        assert_eq!(store.used_bytes(), 16);
        assert!(store.get(&key(4)).await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_larger_than_the_store_is_refused() {
        let store = MemoryStore::new(8);
        store.put(key(1), vec![1; 8], None).await.unwrap();
        assert_eq!(
            store.put(key(2), vec![2; 9], None).await,
            Err(StoreError::TooLarge {
                size: 9,
                capacity: 8
            })
        );
        assert!(
            store.get(&key(1)).await.unwrap().is_some(),
            "left as it was"
        );
    }
}
