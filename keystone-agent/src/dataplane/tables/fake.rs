//! In-memory maps for tests that need no root.

use std::collections::HashMap;

use keystone_common::{
    Backend, Endpoint, FlowKey, ReverseNat, VipAddr, VipInfo, backend_flags, flow_hash,
    limits::{filter::ADDR_FILTER_WORDS, ring::NO_BACKEND},
    vip_flags,
};

use super::MapWriter;
use crate::dataplane::{Limits, MapAccessError};

/// One map operation, as recorded by [`FakeMaps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetVip(Endpoint, VipInfo),
    RemoveVip(Endpoint),
    SetVipAddr(VipAddr, u32),
    RemoveVipAddr(VipAddr),
    SetFilter(u32, u32),
    SetBackend(u32, Backend),
    /// One batch of ring entries: (index, slot).
    SetRings(Vec<(u32, u32)>),
    SetReverse(Endpoint, ReverseNat),
    RemoveReverse(Endpoint),
    ResetVipStats(u32),
    ResetBackendStats(u32),
}

/// In-memory maps that log every operation: for tests that need no root. Sized by
/// the default `Limits`.
#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    pub vips: HashMap<Endpoint, VipInfo>,
    pub vip_addrs: HashMap<VipAddr, u32>,
    pub filter: HashMap<u32, u32>,
    pub backends: HashMap<u32, Backend>,
    pub rings: HashMap<u32, u32>,
    pub reverse: HashMap<Endpoint, ReverseNat>,
    pub log: Vec<Op>,
}

impl FakeMaps {
    /// The backend the kernel would pick for a new flow, from these maps alone.
    pub fn pick(&self, vip: &Endpoint, flow: &FlowKey) -> Option<(u32, Backend)> {
        let info = self.vips.get(vip)?;
        if info.ring_size == 0 {
            return None;
        }
        let entry = flow_hash(flow, info.flags & vip_flags::SOURCE_STICKY != 0) % info.ring_size;
        let slot = *self.rings.get(&(info.ring_base + entry))?;
        let b = *self.backends.get(&slot)?;
        (b.flags & backend_flags::UP != 0).then_some((slot, b))
    }
}

impl MapWriter for FakeMaps {
    fn read_vips(&self) -> Result<Vec<(Endpoint, VipInfo)>, MapAccessError> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_backends(&self) -> Result<Vec<Backend>, MapAccessError> {
        Ok((0..Limits::default().max_backends)
            .map(|i| self.backends.get(&i).copied().unwrap_or_default())
            .collect())
    }
    fn read_reverse(&self) -> Result<Vec<(Endpoint, ReverseNat)>, MapAccessError> {
        Ok(self.reverse.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_vip_addrs(&self) -> Result<Vec<(VipAddr, u32)>, MapAccessError> {
        Ok(self.vip_addrs.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, MapAccessError> {
        Ok((base..base + len)
            .map(|i| self.rings.get(&i).copied().unwrap_or(NO_BACKEND))
            .collect())
    }
    fn read_filter(&self) -> Result<Vec<u32>, MapAccessError> {
        Ok((0..ADDR_FILTER_WORDS)
            .map(|i| self.filter.get(&i).copied().unwrap_or(0))
            .collect())
    }
    fn set_filter_word(&mut self, index: u32, word: u32) -> Result<(), MapAccessError> {
        self.filter.insert(index, word);
        self.log.push(Op::SetFilter(index, word));
        Ok(())
    }
    fn set_vip(&mut self, vip: &Endpoint, info: &VipInfo) -> Result<(), MapAccessError> {
        self.vips.insert(*vip, *info);
        self.log.push(Op::SetVip(*vip, *info));
        Ok(())
    }
    fn remove_vip(&mut self, vip: &Endpoint) -> Result<(), MapAccessError> {
        self.vips.remove(vip);
        self.log.push(Op::RemoveVip(*vip));
        Ok(())
    }
    fn set_vip_addr(&mut self, addr: &VipAddr, count: u32) -> Result<(), MapAccessError> {
        self.vip_addrs.insert(*addr, count);
        self.log.push(Op::SetVipAddr(*addr, count));
        Ok(())
    }
    fn remove_vip_addr(&mut self, addr: &VipAddr) -> Result<(), MapAccessError> {
        self.vip_addrs.remove(addr);
        self.log.push(Op::RemoveVipAddr(*addr));
        Ok(())
    }
    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), MapAccessError> {
        self.backends.insert(slot, *backend);
        self.log.push(Op::SetBackend(slot, *backend));
        Ok(())
    }
    fn set_ring_entries(&mut self, indexes: &[u32], slots: &[u32]) -> Result<(), MapAccessError> {
        let entries: Vec<(u32, u32)> = indexes.iter().copied().zip(slots.iter().copied()).collect();
        self.rings.extend(entries.iter().copied());
        self.log.push(Op::SetRings(entries));
        Ok(())
    }
    fn set_reverse(&mut self, backend: &Endpoint, rev: &ReverseNat) -> Result<(), MapAccessError> {
        self.reverse.insert(*backend, *rev);
        self.log.push(Op::SetReverse(*backend, *rev));
        Ok(())
    }
    fn remove_reverse(&mut self, backend: &Endpoint) -> Result<(), MapAccessError> {
        self.reverse.remove(backend);
        self.log.push(Op::RemoveReverse(*backend));
        Ok(())
    }
    fn reset_vip_stats(&mut self, index: u32) -> Result<(), MapAccessError> {
        self.log.push(Op::ResetVipStats(index));
        Ok(())
    }
    fn reset_backend_stats(&mut self, slot: u32) -> Result<(), MapAccessError> {
        self.log.push(Op::ResetBackendStats(slot));
        Ok(())
    }
}
