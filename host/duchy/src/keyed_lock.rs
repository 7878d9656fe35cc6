//! One async mutex per key, created on demand and dropped when nobody holds or waits for it:
//! serializes concurrent uploads of the same thing (an AdvanceComputation input, a
//! requisition's data) from "is anything recorded?" to "recorded" (or refused).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// The map of per-key mutexes.
pub(crate) struct KeyedLocks<K>(Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>);

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks(Mutex::new(HashMap::new()))
    }
}

/// Holds `key`'s lock; removes its map entry when nobody else waits for it.
pub(crate) struct KeyedLock<K: Eq + Hash + Clone> {
    locks: Arc<KeyedLocks<K>>,
    key: K,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> KeyedLock<K> {
    /// Waits for `key`'s lock.
    pub(crate) async fn acquire(locks: &Arc<KeyedLocks<K>>, key: K) -> KeyedLock<K> {
        let mutex = locks
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = mutex.lock_owned().await;
        KeyedLock {
            locks: locks.clone(),
            key,
            guard: Some(guard),
        }
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyedLock<K> {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        // The map's and our guard's: nobody else holds (or can, under the map lock, take) one.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            map.remove(&self.key);
        }
        self.guard.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serializes_per_key_and_forgets_idle_keys() {
        let locks: Arc<KeyedLocks<u32>> = Arc::default();
        let a = KeyedLock::acquire(&locks, 1).await;
        // Another key is free.
        let b = KeyedLock::acquire(&locks, 2).await;
        drop(b);
        // The same key waits until the holder lets go.
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _held = KeyedLock::acquire(&locks, 1).await;
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(a);
        let joined = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert!(matches!(joined, Ok(Ok(()))));
        assert!(locks.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
    }
}
