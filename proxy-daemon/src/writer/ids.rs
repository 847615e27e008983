//! Id allocation for frontends and backends.
//!
//! Ids index per-CPU counter arrays and are stored in CT entries, so a freed
//! id is not handed out again until the cursor has gone round the whole
//! range: counters and flows of an old frontend are not mistaken for a new
//! one's. Which ids are in use is derived from the maps when the planner is
//! built and followed from plan to plan after that.

use std::collections::BTreeSet;

#[derive(Clone, Debug)]
pub struct IdAllocator {
    /// Ids are `1..limit`.
    limit: u32,
    next: u32,
    used: BTreeSet<u32>,
}

impl IdAllocator {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            next: 1,
            used: BTreeSet::new(),
        }
    }

    /// Forgets which ids are used (the cursor stays where it is).
    pub fn clear_used(&mut self) {
        self.used.clear();
    }

    pub fn mark_used(&mut self, id: u32) {
        self.used.insert(id);
        // After a restart, continue after the highest id seen.
        if id >= self.next && id + 1 < self.limit {
            self.next = id + 1;
        }
    }

    /// Frees `id`; it is handed out again only after the cursor has gone
    /// round.
    pub fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }

    /// The next free id after the cursor, or `None` when all are in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let span = self.limit.saturating_sub(1);
        // Full: say so at once rather than walk the whole range for each
        // frontend that does not fit (35k of them took minutes).
        if self.used.len() >= span as usize {
            return None;
        }
        for _ in 0..span {
            let id = self.next;
            self.next = if self.next + 1 >= self.limit {
                1
            } else {
                self.next + 1
            };
            if self.used.insert(id) {
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::IdAllocator;

    #[test]
    fn ids_start_at_one_and_are_not_reused_before_wrapping() {
        let mut a = IdAllocator::new(5);
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.allocate(), Some(2));
        a.clear_used();
        a.mark_used(2);
        // 1 was freed, but the cursor goes on to 3 and 4 first.
        assert_eq!(a.allocate(), Some(3));
        assert_eq!(a.allocate(), Some(4));
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn a_restart_continues_after_the_highest_id_in_use() {
        let mut a = IdAllocator::new(100);
        a.mark_used(7);
        a.mark_used(3);
        assert_eq!(a.allocate(), Some(8));
    }
}
