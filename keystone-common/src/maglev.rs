//! Weighted Maglev lookup tables (Eisenbud et al., NSDI 2016), built in user space.
//!
//! Each backend walks its own permutation of the table, claiming the next free
//! entry on each of its turns; a backend gets turns in proportion to its weight.
//! The permutation depends only on the backend's identity, so the same backends
//! and weights give the same table on every gateway, and removing a backend moves
//! little more than the entries it held.

use alloc::{vec, vec::Vec};

use crate::limits::ring::NO_BACKEND;

/// One backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stable identity (e.g. `hash::fnv1a64` of "address:port").
    pub id: u64,
    /// Relative weight; 0 keeps the backend out of the table.
    pub weight: u32,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The backends with weight > 0, in identity order so the caller's ordering cannot
/// change the table, and the largest weight (`None` when no backend has weight).
fn weighted_order(backends: &[MaglevBackend]) -> Option<(Vec<usize>, u64)> {
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    order.sort_by_key(|&i| (backends[i].id, i));
    let max_weight = order.iter().map(|&i| backends[i].weight as u64).max()?;
    Some((order, max_weight))
}

/// Backend `id`'s permutation of a table of `m` entries: its `(offset, skip)`.
fn permutation(id: u64, m: u64) -> (u64, u64) {
    let offset = splitmix64(id) % m;
    let skip = splitmix64(id ^ 0x6b65_7973_746f_6e65) % (m - 1) + 1;
    (offset, skip)
}

/// Builds a table of `size` entries (`size` must be prime). Each entry is an index
/// into `backends`; every entry is `NO_BACKEND` when no backend has weight > 0.
///
/// The same table as [`build_scan`] (and the paper's walk), built with less work:
/// backends of equal weight get their turns in the same rounds, so a round visits
/// only the backends it gives a turn to when one weight is due (the usual canary: one
/// heavy backend among many of weight 1), and the probe for a free entry reads a
/// bitmap (`size` bits: in cache for the largest tables) instead of the table.
pub fn build(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let Some((order, max_weight)) = weighted_order(backends) else {
        return vec![NO_BACKEND; size as usize];
    };
    let mut fill = Fill::new(backends, &order, size);
    let mut groups = WeightGroup::of(backends, &order);
    let group_of: Vec<usize> = {
        let mut g = vec![0; order.len()];
        for (n, group) in groups.iter().enumerate() {
            for &k in &group.members {
                g[k] = n;
            }
        }
        g
    };
    let mut due = vec![false; groups.len()];
    loop {
        // A group's credit is each of its members' credit in `build_scan`.
        let mut only = None;
        let mut due_count = 0;
        for (n, group) in groups.iter_mut().enumerate() {
            group.credit += group.weight;
            due[n] = group.credit >= max_weight;
            if due[n] {
                group.credit -= max_weight;
                only = Some(n);
                due_count += 1;
            }
        }
        // This round's turns, in `order`.
        let full = match (due_count, only) {
            (1, Some(n)) => groups[n].members.iter().any(|&k| fill.turn(k)),
            _ => (0..order.len()).any(|k| due[group_of[k]] && fill.turn(k)),
        };
        if full {
            return fill.table;
        }
    }
}

/// The backends (positions in `order`) of one weight, and their common credit.
struct WeightGroup {
    weight: u64,
    credit: u64,
    members: Vec<usize>,
}

impl WeightGroup {
    fn of(backends: &[MaglevBackend], order: &[usize]) -> Vec<WeightGroup> {
        let mut groups: Vec<WeightGroup> = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let weight = backends[i].weight as u64;
            match groups.iter_mut().find(|g| g.weight == weight) {
                Some(g) => g.members.push(k),
                None => groups.push(WeightGroup {
                    weight,
                    credit: 0,
                    members: vec![k],
                }),
            }
        }
        groups
    }
}

/// The table being filled: each backend's place in its permutation, `(offset + n ×
/// skip) mod m` for its n-th step, kept incrementally (skip < m, so one subtraction
/// replaces the division), and which entries are taken.
struct Fill {
    m: u64,
    table: Vec<u32>,
    taken: Vec<u64>,
    filled: u64,
    /// Per position in `order`: (backend index, current place, skip).
    walks: Vec<(u32, u64, u64)>,
}

impl Fill {
    fn new(backends: &[MaglevBackend], order: &[usize], size: u32) -> Fill {
        let m = size as u64;
        Fill {
            m,
            table: vec![NO_BACKEND; size as usize],
            taken: vec![0; (size as usize).div_ceil(64)],
            filled: 0,
            walks: order
                .iter()
                .map(|&i| {
                    let (offset, skip) = permutation(backends[i].id, m);
                    (i as u32, offset, skip)
                })
                .collect(),
        }
    }

    /// Gives the backend at position `k` its turn: the next free entry of its
    /// permutation. True when that filled the table.
    fn turn(&mut self, k: usize) -> bool {
        let (backend, place, skip) = &mut self.walks[k];
        let m = self.m;
        let step = |e: u64| {
            if e + *skip >= m {
                e + *skip - m
            } else {
                e + *skip
            }
        };
        let mut entry = *place;
        while self.taken[(entry >> 6) as usize] & (1 << (entry & 63)) != 0 {
            entry = step(entry);
        }
        self.taken[(entry >> 6) as usize] |= 1 << (entry & 63);
        self.table[entry as usize] = *backend;
        *place = step(entry);
        self.filled += 1;
        self.filled == m
    }
}

/// [`build`] as it was written first: every backend visited on every round, the
/// probe reading the table. Kept as the definition `build` is tested against, and as
/// the baseline `cargo xtask bench control` times `build` against in the same run.
pub fn build_scan(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let m = size as u64;
    let mut table = vec![NO_BACKEND; size as usize];
    let Some((order, max_weight)) = weighted_order(backends) else {
        return table;
    };
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| permutation(backends[i].id, m))
        .collect();
    let mut position: Vec<u64> = perms.iter().map(|&(offset, _)| offset).collect();
    let mut credit = vec![0u64; order.len()];
    let mut filled = 0u64;
    let step = |pos: u64, skip: u64| {
        let next = pos + skip;
        if next >= m { next - m } else { next }
    };
    loop {
        for (k, &i) in order.iter().enumerate() {
            credit[k] += backends[i].weight as u64;
            if credit[k] < max_weight {
                continue;
            }
            credit[k] -= max_weight;
            let skip = perms[k].1;
            let mut entry = position[k];
            while table[entry as usize] != NO_BACKEND {
                entry = step(entry, skip);
            }
            table[entry as usize] = i as u32;
            position[k] = step(entry, skip);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// Whether `n` is prime (table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::fnv1a64;

    const SIZE: u32 = crate::limits::ring::DEFAULT_RING_SIZE;

    fn backends(weights: &[u32]) -> Vec<MaglevBackend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| MaglevBackend {
                id: fnv1a64(alloc::format!("198.18.1.{}:8080", i + 10).as_bytes()),
                weight,
            })
            .collect()
    }

    /// `n` backends of weight 1, the first of weight `heavy`.
    fn canary(n: usize, heavy: u32) -> Vec<u32> {
        let mut w = vec![1; n];
        w[0] = heavy;
        w
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &e in table {
            counts[e as usize] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / table.len() as f64)
            .collect()
    }

    /// The permutation walk written out as in the paper, `(offset + n × skip) mod m`:
    /// the build must give exactly its tables, so gateways of different versions
    /// (during an upgrade, or behind one ECMP group) agree on every flow.
    fn reference_build(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        let m = size as u64;
        let mut table = vec![NO_BACKEND; size as usize];
        let Some((order, max_weight)) = weighted_order(backends) else {
            return table;
        };
        let mut next = vec![0u64; order.len()];
        let mut credit = vec![0u64; order.len()];
        let mut filled = 0u64;
        loop {
            for (k, &i) in order.iter().enumerate() {
                credit[k] += backends[i].weight as u64;
                if credit[k] < max_weight {
                    continue;
                }
                credit[k] -= max_weight;
                let (offset, skip) = permutation(backends[i].id, m);
                let mut entry = (offset + next[k] * skip) % m;
                while table[entry as usize] != NO_BACKEND {
                    next[k] += 1;
                    entry = (offset + next[k] * skip) % m;
                }
                table[entry as usize] = i as u32;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }

    #[test]
    fn tables_equal_the_reference_walk() {
        for (weights, size) in [
            (vec![1, 1], 7),
            (vec![3, 1, 0, 2], 1009),
            (vec![90, 10], SIZE),
            ((1..=100).collect::<Vec<u32>>(), 10_007),
            // One heavy backend among many of weight 1 (a canary step), two weights
            // due in the same rounds, and zero weights in between.
            (canary(1000, 7), 65_537),
            (
                [vec![2; 50], vec![1; 50], vec![0; 3], vec![4; 10]].concat(),
                10_007,
            ),
            ([vec![3; 20], vec![2; 30]].concat(), 1009),
        ] {
            let b = backends(&weights);
            let want = reference_build(&b, size);
            assert_eq!(build(&b, size), want, "{weights:?} / {size}");
            assert_eq!(build_scan(&b, size), want, "scan: {weights:?} / {size}");
        }
    }

    fn assert_shares_match(weights: &[u32]) {
        let table = build(&backends(weights), SIZE);
        let total: u32 = weights.iter().sum();
        for (i, share) in shares(&table, weights.len()).iter().enumerate() {
            let want = weights[i] as f64 / total as f64;
            assert!(
                (share - want).abs() <= 0.01,
                "weights {weights:?}: backend {i} holds {share:.4} of the table, want {want:.4} ± 0.01"
            );
        }
    }

    #[test]
    fn shares_follow_weights_within_one_percent() {
        assert_shares_match(&[95, 5]);
        assert_shares_match(&[90, 10]);
        assert_shares_match(&[1, 1, 1]);
        assert_shares_match(&[50, 30, 15, 5]);
        assert_shares_match(&[1, 99]);
    }

    #[test]
    fn zero_weight_backends_get_nothing_and_empty_sets_give_no_backend() {
        let table = build(&backends(&[0, 100]), SIZE);
        assert!(table.iter().all(|&e| e == 1));
        let table = build(&backends(&[0, 0]), SIZE);
        assert!(table.iter().all(|&e| e == NO_BACKEND));
        assert!(build(&[], 7).iter().all(|&e| e == NO_BACKEND));
    }

    #[test]
    fn same_backends_in_any_order_give_the_same_table() {
        let b = backends(&[3, 2, 1]);
        let mut reversed = b.clone();
        reversed.reverse();
        let t1: Vec<u64> = build(&b, SIZE).iter().map(|&e| b[e as usize].id).collect();
        let t2: Vec<u64> = build(&reversed, SIZE)
            .iter()
            .map(|&e| reversed[e as usize].id)
            .collect();
        assert_eq!(t1, t2);
    }

    #[test]
    fn removing_one_of_n_moves_little_more_than_its_share() {
        for n in [3usize, 5, 10] {
            let all = backends(&vec![1; n]);
            let before: Vec<u64> = build(&all, SIZE)
                .iter()
                .map(|&e| all[e as usize].id)
                .collect();
            let removed = all[n / 2].id;
            let rest: Vec<MaglevBackend> =
                all.iter().copied().filter(|b| b.id != removed).collect();
            let after: Vec<u64> = build(&rest, SIZE)
                .iter()
                .map(|&e| rest[e as usize].id)
                .collect();
            let moved =
                before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / SIZE as f64;
            let bound = 1.0 / n as f64 + 0.02;
            assert!(
                moved <= bound,
                "n={n}: {moved:.4} of entries moved, bound {bound:.4}"
            );
        }
    }

    #[test]
    fn weight_change_moves_few_entries() {
        // A canary step 90/10 -> 80/20 should move about 10 % of the table, not reshuffle it.
        let a = build(&backends(&[90, 10]), SIZE);
        let b = build(&backends(&[80, 20]), SIZE);
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count() as f64 / SIZE as f64;
        assert!(moved <= 0.10 + 0.03, "{moved:.4} of entries moved");
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(7) && is_prime(655_373));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(9));
    }
}
