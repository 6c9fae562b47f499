//! Locks by key, for the control plane: a change to one function waits for
//! other changes to that function only, never for another tenant's upload.
//!
//! [`ChangeLocks`] holds three kinds, always taken in this order:
//! 1. a function's (tenant, name): create, update, delete, concurrency;
//! 2. a tenant's reservations: PutFunctionConcurrency's sum check;
//! 3. a code version's (the zip's SHA-256, shared between tenants): held
//!    from storing code until the registry row naming it is committed, and
//!    while unused code is removed, so that removing never races a store
//!    of the same zip. At most one code lock is held at a time.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// A held lock; dropping it releases the key.
pub type KeyGuard = OwnedMutexGuard<()>;

/// One async mutex per key, made on first use and dropped when unused.
pub struct KeyedLocks<K> {
    map: Mutex<HashMap<K, Weak<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> KeyedLocks<K> {
    /// Waits for `key`'s lock.
    pub async fn lock(&self, key: K) -> KeyGuard {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            // Keys nobody holds or waits for go: the map stays as small as
            // the number of changes in flight.
            map.retain(|_, m| m.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&m));
                    m
                }
            }
        };
        mutex.lock_owned().await
    }

    /// How many keys are locked or waited for (for tests).
    pub fn in_use(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|m| m.strong_count() > 0).count()
    }
}

/// The control plane's locks (see the module doc for their order).
#[derive(Default)]
pub struct ChangeLocks {
    functions: KeyedLocks<(String, String)>,
    reservations: KeyedLocks<String>,
    code: KeyedLocks<String>,
}

impl ChangeLocks {
    /// Changes to one function.
    pub async fn function(&self, tenant: &str, name: &str) -> KeyGuard {
        self.functions
            .lock((tenant.to_string(), name.to_string()))
            .await
    }

    /// A tenant's reserved concurrency total.
    pub async fn reservations(&self, tenant: &str) -> KeyGuard {
        self.reservations.lock(tenant.to_string()).await
    }

    /// One stored code version.
    pub async fn code(&self, sha256_hex: &str) -> KeyGuard {
        self.code.lock(sha256_hex.to_string()).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn keys_are_independent_and_forgotten_when_unused() {
        let locks = KeyedLocks::<&str>::default();
        let a = locks.lock("a").await;
        // Another key does not wait.
        let b = tokio::time::timeout(Duration::from_secs(5), locks.lock("b"))
            .await
            .expect("b waits for a");
        // The same key does.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), locks.lock("a"))
                .await
                .is_err()
        );
        assert_eq!(locks.in_use(), 2);
        drop((a, b));
        assert_eq!(locks.in_use(), 0);
        let _a = locks.lock("a").await;
        assert_eq!(locks.map.lock().unwrap().len(), 1);
    }
}
