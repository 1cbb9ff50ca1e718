//! Placement of Maglev tables in the ring array: each VIP's two tables are regions
//! of their own size in one flat array (`limits.ring_entries`), so 1,000 small
//! tables and a few large ones share it without a fixed stripe per VIP.

use std::collections::BTreeMap;

/// A region of the ring array: `base .. base + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u32,
    pub len: u32,
}

/// Which entries of the ring array are taken. First fit: regions are placed at the
/// lowest base with room, so equal-size tables pack without gaps.
#[derive(Clone, Debug)]
pub struct RingSpace {
    capacity: u32,
    /// Taken regions by base.
    taken: BTreeMap<u32, u32>,
    used: u64,
}

impl RingSpace {
    pub fn new(capacity: u32) -> Self {
        RingSpace {
            capacity,
            taken: BTreeMap::new(),
            used: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Entries not in any region.
    pub fn free(&self) -> u64 {
        u64::from(self.capacity) - self.used
    }

    /// A free region of `len` entries, taken; `None` if no gap is that large.
    pub fn allocate(&mut self, len: u32) -> Option<Region> {
        if len == 0 {
            return None;
        }
        let mut start = 0u64;
        for (&base, &taken) in &self.taken {
            if u64::from(base) - start >= u64::from(len) {
                break;
            }
            start = u64::from(base) + u64::from(taken);
        }
        if start + u64::from(len) > u64::from(self.capacity) {
            return None;
        }
        let region = Region {
            base: start as u32,
            len,
        };
        self.taken.insert(region.base, len);
        self.used += u64::from(len);
        Some(region)
    }

    /// Takes a given region (one a previous agent placed); false if it leaves the
    /// array or overlaps a taken one.
    pub fn reserve(&mut self, region: Region) -> bool {
        let end = u64::from(region.base) + u64::from(region.len);
        if region.len == 0 || end > u64::from(self.capacity) {
            return false;
        }
        let before = self.taken.range(..=region.base).next_back();
        if before.is_some_and(|(&b, &l)| u64::from(b) + u64::from(l) > u64::from(region.base)) {
            return false;
        }
        let after = self.taken.range(region.base..).next();
        if after.is_some_and(|(&b, _)| u64::from(b) < end) {
            return false;
        }
        self.taken.insert(region.base, region.len);
        self.used += u64::from(region.len);
        true
    }

    /// Gives a region back. Only regions returned by `allocate`/`reserve`.
    pub fn release(&mut self, region: Region) {
        if self.taken.get(&region.base) == Some(&region.len) {
            self.taken.remove(&region.base);
            self.used -= u64::from(region.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_packs_and_reuses_gaps() {
        let mut s = RingSpace::new(100);
        let a = s.allocate(30).unwrap();
        let b = s.allocate(30).unwrap();
        let c = s.allocate(40).unwrap();
        assert_eq!((a.base, b.base, c.base), (0, 30, 60));
        assert_eq!(s.free(), 0);
        assert_eq!(s.allocate(1), None);
        s.release(b);
        assert_eq!(s.free(), 30);
        assert_eq!(s.allocate(31), None, "no gap of 31");
        let d = s.allocate(20).unwrap();
        assert_eq!(d.base, 30);
        let e = s.allocate(10).unwrap();
        assert_eq!(e.base, 50);
        assert_eq!(s.allocate(0), None);
    }

    #[test]
    fn reserve_refuses_overlap_and_out_of_range() {
        let mut s = RingSpace::new(100);
        assert!(s.reserve(Region { base: 10, len: 10 }));
        assert!(!s.reserve(Region { base: 15, len: 10 }));
        assert!(!s.reserve(Region { base: 5, len: 6 }));
        assert!(!s.reserve(Region { base: 95, len: 6 }));
        assert!(!s.reserve(Region {
            base: u32::MAX,
            len: 2
        }));
        assert!(s.reserve(Region { base: 20, len: 80 }));
        assert_eq!(s.allocate(10).unwrap().base, 0);
        assert_eq!(s.free(), 0);
    }

    #[test]
    fn release_of_a_foreign_region_changes_nothing() {
        let mut s = RingSpace::new(10);
        let a = s.allocate(5).unwrap();
        s.release(Region { base: 0, len: 4 });
        assert_eq!(s.free(), 5);
        s.release(a);
        assert_eq!(s.free(), 10);
    }
}
