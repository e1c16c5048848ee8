//! [`DefinitionCache`]: the parsed definitions of flow versions, one per process, carried by
//! `app::Ctx` (STYLE rule 7: no process-wide statics) and read by the flow engine
//! (`service::flow_engine`). It lives in `app` because `Ctx` holds it and `app` never
//! depends on `service`.
//!
//! L2: depends on `domain::flow`, `store::flows`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::domain::flow::Definition;
use crate::store::flows as store;

/// A (flow id, version) pair: the key of an immutable definition.
type DefinitionKey = (Uuid, i32);

/// How many definitions a process keeps by default: far more versions than a deployment
/// runs at once, a few MiB at most.
pub const DEFINITION_CACHE_CAPACITY: usize = 10_000;

/// The parsed definitions of flow versions, shared by a process's roles through
/// `app::Ctx` (STYLE rule 7: no process-wide statics). Versions are immutable, so an entry
/// never goes stale; the cache only bounds memory. Cloning shares the same cache.
#[derive(Clone)]
pub struct DefinitionCache(Arc<Mutex<Generations<DefinitionKey, Arc<Definition>>>>);

impl Default for DefinitionCache {
    fn default() -> Self {
        Self::new(DEFINITION_CACHE_CAPACITY)
    }
}

impl DefinitionCache {
    /// A cache holding at most `capacity` definitions.
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Mutex::new(Generations::new(capacity))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<DefinitionKey, Arc<Definition>>> {
        // A panic while holding the lock leaves a map of immutable values: still valid.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The definitions of these (flow, version) pairs, from the cache or the database.
    pub async fn definitions(
        &self,
        conn: &mut AsyncPgConnection,
        keys: &[DefinitionKey],
    ) -> QueryResult<HashMap<DefinitionKey, Arc<Definition>>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut cache = self.lock();
            for k in keys {
                match cache.get(k) {
                    Some(d) => {
                        out.insert(*k, d);
                    }
                    None => missing.push(*k),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(out);
        }
        // Parsed outside the lock; the database is never awaited while holding it.
        let mut loaded = Vec::new();
        for row in store::definitions(conn, &missing).await? {
            let def: Definition = serde_json::from_value(row.definition)
                .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
            loaded.push(((row.flow_id, row.version), Arc::new(def)));
        }
        let mut cache = self.lock();
        for (k, def) in loaded {
            cache.insert(k, def.clone());
            out.insert(k, def);
        }
        Ok(out)
    }

    /// How many definitions are cached (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bounded map that keeps what was used recently: two generations of at most
/// `capacity / 2` entries each. Inserts go to `hot`; when it is full it becomes `cold` (the
/// old `cold` is dropped); a hit in `cold` moves the entry back to `hot`. An approximate
/// LRU with O(1) operations and no dependency: entries unused for two generations go.
#[derive(Debug)]
struct Generations<K, V> {
    half: usize,
    hot: HashMap<K, V>,
    cold: HashMap<K, V>,
}

impl<K: std::hash::Hash + Eq + Copy, V: Clone> Generations<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            half: (capacity / 2).max(1),
            hot: HashMap::new(),
            cold: HashMap::new(),
        }
    }

    fn get(&mut self, k: &K) -> Option<V> {
        if let Some(v) = self.hot.get(k) {
            return Some(v.clone());
        }
        let v = self.cold.remove(k)?;
        self.insert(*k, v.clone());
        Some(v)
    }

    fn insert(&mut self, k: K, v: V) {
        if self.hot.len() >= self.half && !self.hot.contains_key(&k) {
            self.cold = std::mem::take(&mut self.hot);
        }
        self.cold.remove(&k);
        self.hot.insert(k, v);
    }

    fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Generations;

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let mut g = Generations::new(10);
        for i in 0..1000 {
            g.insert(i, i);
            assert!(g.len() <= 10, "{} entries after {i} inserts", g.len());
        }
        assert_eq!(g.get(&999), Some(999));
        assert_eq!(g.get(&0), None);
    }

    #[test]
    fn an_entry_in_use_survives_generations_of_other_inserts() {
        let mut g = Generations::new(4);
        g.insert(0, "kept");
        for i in 1..100 {
            g.insert(i, "other");
            // Read between inserts: the entry is moved back to the young generation.
            assert_eq!(g.get(&0), Some("kept"), "lost after {i} inserts");
        }
    }
}
