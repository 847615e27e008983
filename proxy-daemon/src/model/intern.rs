//! One shared allocation per distinct string that objects repeat by the
//! thousand (node names, zones, port names, protocols).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

/// The interned strings. Bounded by pruning: when the set has doubled
/// since the last prune, strings nobody else holds any more are dropped,
/// so it never holds more than twice what live objects use (plus a floor).
struct Interner {
    strings: HashSet<Arc<str>>,
    prune_at: usize,
}

const PRUNE_FLOOR: usize = 1024;

static INTERNER: Mutex<Option<Interner>> = Mutex::new(None);

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    let mut guard = INTERNER.lock().unwrap_or_else(PoisonError::into_inner);
    let interner = guard.get_or_insert_with(|| Interner {
        strings: HashSet::new(),
        prune_at: PRUNE_FLOOR,
    });
    if let Some(found) = interner.strings.get(s) {
        return found.clone();
    }
    if interner.strings.len() >= interner.prune_at {
        interner.strings.retain(|s| Arc::strong_count(s) > 1);
        interner.prune_at = (interner.strings.len() * 2).max(PRUNE_FLOOR);
    }
    let shared: Arc<str> = Arc::from(s);
    interner.strings.insert(shared.clone());
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation_and_unused_ones_are_pruned() {
        let a = intern("intern-test-node");
        let b = intern("intern-test-node");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        // Enough new strings to force a prune: the dropped one goes, a
        // held one stays the same allocation.
        let held = intern("intern-test-held");
        let many: Vec<_> = (0..PRUNE_FLOOR * 3)
            .map(|i| intern(&format!("intern-test-{i}")))
            .collect();
        drop(many);
        for i in 0..PRUNE_FLOOR * 3 {
            intern(&format!("intern-test-again-{i}"));
        }
        let len = INTERNER.lock().unwrap().as_ref().unwrap().strings.len();
        assert!(len <= PRUNE_FLOOR * 4, "{len} strings kept");
        assert!(Arc::ptr_eq(&held, &intern("intern-test-held")));
    }
}
