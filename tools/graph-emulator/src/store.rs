//! Item store with change sequence numbers and tombstones, per collection
//! (a collection is a mailbox folder for messages, a mailbox calendar for events).

use chrono::{DateTime, Utc};
use std::collections::HashMap;

pub(crate) struct Slot<T> {
    pub item: T,
    pub seq: u64,
    pub coll: String,
    pub modified: DateTime<Utc>,
}

pub(crate) struct Store<T> {
    /// Insertion order; `None` once removed.
    pub slots: Vec<Option<Slot<T>>>,
    /// (mailbox, id) -> slot index
    by_key: HashMap<(String, String), usize>,
    /// id -> slot indexes (an id may exist in several mailboxes)
    by_id: HashMap<String, Vec<usize>>,
    /// collection -> slot indexes
    by_coll: HashMap<String, Vec<usize>>,
    /// collection -> (id, seq of removal)
    tombs: HashMap<String, Vec<(String, u64)>>,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            slots: Vec::new(),
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            by_coll: HashMap::new(),
            tombs: HashMap::new(),
        }
    }
}

impl<T> Store<T> {
    pub fn get(&self, mailbox: &str, id: &str) -> Option<&Slot<T>> {
        let idx = self.by_key.get(&(mailbox.to_string(), id.to_string()))?;
        self.slots[*idx].as_ref()
    }

    pub fn coll(&self, coll: &str) -> impl Iterator<Item = &Slot<T>> {
        self.by_coll
            .get(coll)
            .into_iter()
            .flatten()
            .filter_map(|i| self.slots[*i].as_ref())
    }

    pub fn tombs(&self, coll: &str) -> &[(String, u64)] {
        self.tombs.get(coll).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.slots
            .iter()
            .filter_map(|s| s.as_ref().map(|s| &s.item))
    }

    /// Adds or replaces the item `(mailbox, id)`, in collection `coll`.
    pub fn upsert(
        &mut self,
        mailbox: &str,
        id: &str,
        coll: String,
        item: T,
        seq: u64,
        modified: DateTime<Utc>,
    ) {
        let key = (mailbox.to_string(), id.to_string());
        if let Some(&idx) = self.by_key.get(&key) {
            let old = self.slots[idx].as_ref().map(|s| s.coll.clone());
            if let Some(old) = old
                && old != coll
            {
                if let Some(v) = self.by_coll.get_mut(&old) {
                    v.retain(|i| *i != idx);
                }
                self.tombs
                    .entry(old)
                    .or_default()
                    .push((id.to_string(), seq));
                self.by_coll.entry(coll.clone()).or_default().push(idx);
            }
            self.slots[idx] = Some(Slot {
                item,
                seq,
                coll,
                modified,
            });
        } else {
            let idx = self.slots.len();
            self.by_coll.entry(coll.clone()).or_default().push(idx);
            self.by_id.entry(id.to_string()).or_default().push(idx);
            self.by_key.insert(key, idx);
            self.slots.push(Some(Slot {
                item,
                seq,
                coll,
                modified,
            }));
        }
    }

    /// Removes every item with this id (in any mailbox); returns how many.
    pub fn remove_id(&mut self, id: &str, seq: u64) -> usize {
        let Some(idxs) = self.by_id.remove(id) else {
            return 0;
        };
        let mut n = 0;
        for idx in idxs {
            if let Some(slot) = self.slots[idx].take() {
                n += 1;
                if let Some(v) = self.by_coll.get_mut(&slot.coll) {
                    v.retain(|i| *i != idx);
                }
                self.tombs
                    .entry(slot.coll.clone())
                    .or_default()
                    .push((id.to_string(), seq));
            }
        }
        self.by_key.retain(|(_, k), _| k != id);
        n
    }
}
