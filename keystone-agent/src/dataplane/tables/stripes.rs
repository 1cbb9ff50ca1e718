//! A VIP's Maglev table: built from its inputs, written as a diff into the inactive
//! stripe of the ring array, then flipped to.

use keystone_common::{
    VipInfo,
    limits::ring::{NO_BACKEND, SLOTS_PER_VIP},
    maglev::{self, MaglevBackend},
};

use std::time::Instant;

use super::{ApplyTiming, MapWriter, TableInput, Tables, hash::LiveHash};
use crate::dataplane::{ApplyError, VipSpec, rings::Region};

impl<W: MapWriter> Tables<W> {
    /// Builds the VIP's table if its inputs changed, writes it into the inactive
    /// stripe and flips; rewrites the VIPS entry if mode or flags changed.
    /// Adds what it did to `timing`.
    pub(super) fn apply_table(
        &mut self,
        spec: &VipSpec,
        timing: &mut ApplyTiming,
    ) -> Result<(), ApplyError> {
        let v = &self.vips[&spec.vip];
        let index = v.index;
        let mut backends: Vec<(u64, u32, u32)> = spec
            .backends
            .iter()
            .filter(|b| b.up && b.weight > 0)
            .map(|b| {
                (
                    b.endpoint.identity(),
                    b.weight,
                    self.slot_of[&(spec.vip, b.endpoint)],
                )
            })
            .collect();
        backends.sort_unstable();
        let input = TableInput {
            size: spec.ring_size,
            backends,
        };
        let mut info = VipInfo {
            index,
            mode: spec.mode,
            flags: spec.flags,
            ring_slot: self.live_stripe[index as usize],
            ring_size: v.written.map_or(0, |w| w.ring_size),
            ring_base: v.written.map_or(0, |w| w.ring_base),
        };
        let table_changed = v.table.as_ref() != Some(&input);
        let mut hash = None;
        if table_changed {
            if input.backends.is_empty() {
                info.ring_size = 0;
                hash = Some(LiveHash::empty());
            } else {
                let stripe = 1 - self.live_stripe[index as usize];
                let ids: Vec<MaglevBackend> = input
                    .backends
                    .iter()
                    .map(|&(id, weight, _)| MaglevBackend { id, weight })
                    .collect();
                let started = Instant::now();
                let table: Vec<u32> = maglev::build(&ids, input.size)
                    .into_iter()
                    .map(|i| input.backends.get(i as usize).map_or(NO_BACKEND, |b| b.2))
                    .collect();
                let built = Instant::now();
                timing.build += built - started;
                let region = self.place_stripe(spec, index, stripe, input.size)?;
                self.write_stripe(index, stripe, &table)?;
                timing.write += built.elapsed();
                // Hashed when first read, from the stripe's shadow copy: the hash is
                // for status and metrics, and a SHA-256 over every entry must not
                // delay this table, nor the next change, going live.
                hash = Some(LiveHash::pending());
                info.ring_slot = stripe;
                info.ring_size = input.size;
                info.ring_base = region.base;
            }
        }
        let v = self.vips.get_mut(&spec.vip).expect("allocated above");
        if v.written != Some(info) {
            let started = Instant::now();
            self.maps.set_vip(&spec.vip, &info)?;
            timing.flip += started.elapsed();
            v.written = Some(info);
            self.live_stripe[index as usize] = info.ring_slot;
        }
        v.table = Some(input);
        if let Some(hash) = hash {
            v.hash = hash;
            v.work.builds += u64::from(info.ring_size > 0);
            timing.tables += 1;
        }
        // The table just retired keeps its place only if the next one fits there.
        let retired = 1 - self.live_stripe[index as usize];
        let keep = self.stripes[index as usize][retired as usize]
            .region
            .is_none_or(|r| r.len == spec.ring_size);
        if !keep {
            self.retire_stripe(index, retired);
        }
        Ok(())
    }

    pub(super) fn release_retiring(&mut self) {
        for region in std::mem::take(&mut self.retiring) {
            self.space.release(region);
        }
    }

    /// Gives (VIP index, stripe) a region of `size` entries, keeping the one it has if
    /// it is that size. The stripe is not live, so moving it is safe.
    fn place_stripe(
        &mut self,
        spec: &VipSpec,
        index: u32,
        stripe: u32,
        size: u32,
    ) -> Result<Region, ApplyError> {
        if let Some(region) = self.stripes[index as usize][stripe as usize].region
            && region.len == size
        {
            return Ok(region);
        }
        self.release_stripe(index, stripe);
        let mut region = self.space.allocate(size);
        if region.is_none() && !self.retiring.is_empty() {
            self.release_retiring();
            region = self.space.allocate(size);
        }
        let region = region.ok_or_else(|| ApplyError::RingSpace {
            vip: format!("{} ({})", spec.name, spec.vip.socket_addr()),
            size,
            free: self.space.free(),
            capacity: self.space.capacity(),
        })?;
        self.stripes[index as usize][stripe as usize].region = Some(region);
        Ok(region)
    }

    /// Frees a stripe's region and forgets its contents.
    fn release_stripe(&mut self, index: u32, stripe: u32) {
        let s = &mut self.stripes[index as usize][stripe as usize];
        if let Some(region) = s.region.take() {
            self.space.release(region);
        }
        s.known.clear();
    }

    /// Forgets a stripe that may still be read by packets in flight; its region is
    /// freed at the next apply.
    fn retire_stripe(&mut self, index: u32, stripe: u32) {
        let s = &mut self.stripes[index as usize][stripe as usize];
        if let Some(region) = s.region.take() {
            self.retiring.push(region);
        }
        s.known.clear();
    }

    /// Retires both stripes of a VIP index that is no longer used.
    pub(super) fn retire_stripes(&mut self, index: u32) {
        if (index as usize) < self.stripes.len() {
            for stripe in 0..SLOTS_PER_VIP {
                self.retire_stripe(index, stripe);
            }
        }
    }

    /// Writes the entries of `table` that differ from what the stripe holds, in one
    /// batch. After a failed write the stripe's contents are unknown (it is not live,
    /// so the next table is written into it whole).
    fn write_stripe(&mut self, index: u32, stripe: u32, table: &[u32]) -> Result<(), ApplyError> {
        let s = &mut self.stripes[index as usize][stripe as usize];
        let base = s.region.expect("placed before writing").base;
        let (indexes, slots): (Vec<u32>, Vec<u32>) = table
            .iter()
            .enumerate()
            .filter(|&(i, slot)| s.known.get(i) != Some(slot))
            .map(|(i, &slot)| (base + i as u32, slot))
            .unzip();
        if indexes.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.maps.set_ring_entries(&indexes, &slots) {
            s.known.clear();
            return Err(e.into());
        }
        self.ring_writes += indexes.len() as u64;
        s.known.clear();
        s.known.extend_from_slice(table);
        Ok(())
    }
}
