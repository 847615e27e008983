//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), the table part.
//!
//! As in Maglev, a frontend has a lookup table of M slots (M prime), a flow
//! is sent to the backend in slot `hash(flow) % M`, and each backend has a
//! permutation of the slots from two hashes of its identity (address and
//! port, not its node-local id): `offset + j * skip (mod M)`.
//!
//! The population differs: Maglev lets backends take turns claiming their
//! next free preferred slot, so removing one shifts everyone's turns and
//! moves slots between surviving backends too (measured at M = 16381: up
//! to 1/N + 1.5% of the slots for N = 100). Here each slot goes to the
//! backend whose permutation reaches it first (rendezvous hashing over the
//! permutations). A backend's claim on a slot does not depend on which
//! other backends exist, so removing one moves exactly its own slots, and
//! adding one moves only the slots it takes. The table still depends only
//! on the set of identities: every node builds the same one, and a flow
//! reaches the same backend whichever node it enters.

use std::net::Ipv4Addr;

/// A backend as Maglev sees it: its identity and the id to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub id: u32,
}

/// FNV-1a 64 with a seed, then a 64-bit finalizer: cheap, deterministic
/// across machines and versions (unlike std's randomized hashers).
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn identity(m: &Member) -> [u8; 6] {
    let mut b = [0u8; 6];
    b[..4].copy_from_slice(&m.addr.octets());
    b[4..].copy_from_slice(&m.port.to_be_bytes());
    b
}

/// Whether `n` is prime (table sizes must be, for the permutations to
/// visit every slot).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A fingerprint of the table `table(members, size)` would build: equal
/// fingerprints mean equal tables, without building them.
pub fn fingerprint(members: &[Member], size: u32) -> u64 {
    let mut members = members.to_vec();
    members.sort();
    let mut bytes = Vec::with_capacity(members.len() * 10 + 4);
    bytes.extend_from_slice(&size.to_be_bytes());
    for m in &members {
        bytes.extend_from_slice(&identity(m));
        bytes.extend_from_slice(&m.id.to_be_bytes());
    }
    // Never 0: 0 means "unknown" to the planner.
    hash(&bytes, 0x5c1c_f1f1).max(1)
}

/// `a^e mod m` (for the modular inverse of a permutation's step).
fn pow_mod(mut a: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1u64;
    a %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = r * a % m;
        }
        a = a * a % m;
        e >>= 1;
    }
    r
}

/// The lookup table of `size` slots (a prime) for `members`, each slot
/// holding a member's id. Empty when there are no members.
pub fn table(members: &[Member], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    if members.is_empty() {
        return Vec::new();
    }
    // Order by identity: ties (none in practice) must not depend on input
    // order, nor may duplicates count twice.
    let mut members = members.to_vec();
    members.sort();
    members.dedup_by_key(|m| (m.addr, m.port));
    let m = u64::from(size);
    // Slot s sits at position (s - offset) * skip^-1 (mod M) of a backend's
    // permutation (M prime, so skip has an inverse: skip^(M-2)).
    let walks: Vec<(u64, u64)> = members
        .iter()
        .map(|b| {
            let id = identity(b);
            let offset = hash(&id, 0x5c1c_e0ff) % m;
            let skip = hash(&id, 0x5c1c_5c1f) % (m - 1) + 1;
            (offset, pow_mod(skip, m - 2, m))
        })
        .collect();
    (0..m)
        .map(|s| {
            let (mut best, mut best_pos) = (0usize, u64::MAX);
            for (i, (offset, inv)) in walks.iter().enumerate() {
                let pos = (s + m - offset) % m * inv % m;
                if pos < best_pos {
                    best = i;
                    best_pos = pos;
                }
            }
            members[best].id
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                addr: Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1),
                port: 8080,
                id: 100 + i,
            })
            .collect()
    }

    /// Fraction of slots whose backend identity differs between two tables.
    fn moved(a: &[u32], b: &[u32], a_of: &[Member], b_of: &[Member]) -> f64 {
        let ident = |ms: &[Member], id: u32| {
            ms.iter()
                .find(|m| m.id == id)
                .map(|m| (m.addr, m.port))
                .unwrap()
        };
        let n = a
            .iter()
            .zip(b)
            .filter(|(x, y)| ident(a_of, **x) != ident(b_of, **y))
            .count();
        n as f64 / a.len() as f64
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        let ms = members(10);
        let t = table(&ms, 16381);
        assert_eq!(t.len(), 16381);
        for m in &ms {
            let share = t.iter().filter(|id| **id == m.id).count() as f64 / 16381.0;
            assert!((share - 0.1).abs() < 0.01, "{m:?} has {share}");
        }
    }

    #[test]
    fn the_table_depends_on_identities_only() {
        let ms = members(7);
        let mut shuffled = ms.clone();
        shuffled.reverse();
        assert_eq!(table(&ms, 251), table(&shuffled, 251));
        // Another node numbers the same backends differently: same owners.
        let renumbered: Vec<Member> = ms
            .iter()
            .map(|m| Member {
                id: m.id + 1000,
                ..*m
            })
            .collect();
        let (a, b) = (table(&ms, 251), table(&renumbered, 251));
        assert_eq!(moved(&a, &b, &ms, &renumbered), 0.0);
    }

    #[test]
    fn a_removed_backend_takes_only_its_own_slots_with_it() {
        let all = members(10);
        let before = table(&all, 16381);
        let mut rest = all.clone();
        let gone = rest.remove(3);
        let after = table(&rest, 16381);
        for (b, a) in before.iter().zip(&after) {
            if *b != gone.id {
                assert_eq!(b, a, "a slot moved between surviving backends");
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_at_most_one_nth_plus_one_percent() {
        for n in [2u32, 3, 5, 10, 30, 50, 100, 250] {
            let all = members(n);
            let before = table(&all, 16381);
            for gone in [0, n as usize / 2, n as usize - 1] {
                let mut rest = all.clone();
                rest.remove(gone);
                let after = table(&rest, 16381);
                let f = moved(&before, &after, &all, &rest);
                let bound = 1.0 / f64::from(n) + 0.01;
                assert!(f <= bound, "n={n} removing #{gone}: {f:.4} > {bound:.4}");
            }
        }
    }

    #[test]
    fn sizes_must_be_prime() {
        assert!(is_prime(16381) && is_prime(251) && is_prime(2));
        assert!(!is_prime(16384) && !is_prime(1) && !is_prime(0));
        assert!(table(&[], 7).is_empty());
    }
}
