//! Backend slots: allocation, generations and the BACKENDS writes.

use std::collections::HashSet;

use keystone_common::{Backend, backend_flags};

use super::{MapWriter, SlotKey, Tables};
use crate::dataplane::ApplyError;

impl<W: MapWriter> Tables<W> {
    pub(super) fn write_backend(&mut self, slot: u32, value: Backend) -> Result<(), ApplyError> {
        let s = &mut self.slots[slot as usize];
        if s.written != Some(value) {
            self.maps.set_backend(slot, &value)?;
            s.written = Some(value);
        }
        Ok(())
    }

    /// Clears `UP` on a slot, keeping the rest (flows pinned to it re-pick).
    pub(super) fn take_down(&mut self, slot: u32) -> Result<(), ApplyError> {
        if let Some(mut b) = self.slots[slot as usize].written
            && b.flags & backend_flags::UP != 0
        {
            b.flags &= !backend_flags::UP;
            self.write_backend(slot, b)?;
        }
        Ok(())
    }

    pub(super) fn free_slot(&mut self, key: SlotKey) {
        if let Some(slot) = self.slot_of.remove(&key) {
            self.slots[slot as usize].owner = None;
            self.free_slots.insert(slot);
        }
    }

    /// Gives `key` a slot: the one it held last if free (same backend, so its pinned
    /// flows may stay), else a free slot not freed by this apply, else any free slot.
    /// A slot that held another backend gets a new generation.
    pub(super) fn allocate(
        &mut self,
        key: SlotKey,
        freed: &HashSet<u32>,
        total: usize,
    ) -> Result<u32, ApplyError> {
        let own = self
            .last_slot_of
            .get(&key)
            .copied()
            .filter(|s| self.free_slots.contains(s));
        let slot = own
            .or_else(|| self.free_slots.iter().copied().find(|s| !freed.contains(s)))
            .or_else(|| self.free_slots.first().copied())
            .ok_or(ApplyError::TooManyBackends {
                count: total,
                max: self.limits.max_backends,
            })? as usize;
        self.free_slots.remove(&(slot as u32));
        let s = &mut self.slots[slot];
        if s.last_owner.is_some() && s.last_owner != Some(key) {
            s.generation = s.generation.wrapping_add(1);
        }
        let fresh = s.last_owner != Some(key);
        if let Some(previous) = s.last_owner
            && previous != key
        {
            self.last_slot_of.remove(&previous);
        }
        s.owner = Some(key);
        s.last_owner = Some(key);
        self.last_slot_of.insert(key, slot as u32);
        self.slot_of.insert(key, slot as u32);
        if fresh {
            self.maps.reset_backend_stats(slot as u32)?;
        }
        Ok(slot as u32)
    }
}
