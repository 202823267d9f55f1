//! The TokenRequest nonces this node remembers (as their owner on the ring, or as the
//! owner's copy holder, see `nonce_claims`), each as long as its request's timestamp
//! could still pass the window. That window bounds the memory.

use std::collections::{HashSet, VecDeque};

use parking_lot::Mutex;

#[derive(Default)]
pub struct NonceCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashSet<(String, String)>,
    /// `(forget at ms, key)`, oldest first: entries are added with a forget time that
    /// never precedes an earlier one's by more than clock jitter, so pruning from the
    /// front is enough.
    order: VecDeque<(i64, (String, String))>,
}

impl NonceCache {
    /// Records `nonce` for `key_name`; false when it was already used. It is forgotten
    /// at `forget_at_ms`, once its request's timestamp can no longer pass the window.
    pub fn first_use(&self, key_name: &str, nonce: &str, now_ms: i64, forget_at_ms: i64) -> bool {
        let mut inner = self.inner.lock();
        inner.prune(now_ms);

        let entry = (key_name.to_owned(), nonce.to_owned());
        if !inner.seen.insert(entry.clone()) {
            return false;
        }
        inner.order.push_back((forget_at_ms, entry));
        true
    }
}

impl Inner {
    fn prune(&mut self, now_ms: i64) {
        while let Some((forget_at, _)) = self.order.front() {
            if *forget_at > now_ms {
                break;
            }
            let (_, entry) = self.order.pop_front().expect("front exists");
            self.seen.remove(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once_per_key_until_forgotten() {
        let cache = NonceCache::default();
        assert!(cache.first_use("a.k", "n1", 1_000, 5_000));
        assert!(!cache.first_use("a.k", "n1", 2_000, 6_000));
        assert!(cache.first_use("b.k", "n1", 2_000, 6_000));

        assert!(cache.first_use("a.k", "n1", 5_000, 9_000));
    }
}
