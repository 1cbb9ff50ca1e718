//! Layouts of earlier map versions, for migrating pinned maps on an upgrade.

use super::Endpoint;

/// Value of `names::VIPS_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfoV1 {
    pub index: u32,
    pub mode: u32,
    pub flags: u32,
    pub ring_slot: u32,
    pub ring_size: u32,
}

/// Where a V1 agent put (VIP index, slot)'s table: fixed stripes of 65,537
/// entries in the ring array.
pub const fn v1_ring_base(vip_index: u32, slot: u32) -> u32 {
    (vip_index * 2 + slot) * 65_537
}

/// Value of `names::CONNS_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStateV1 {
    pub backend: u32,
    pub generation: u32,
}

/// Value of `names::BACKEND_L4_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L4CountersV1 {
    pub syn: u64,
    pub syn_ack: u64,
    pub rst: u64,
    pub fin: u64,
}

/// Value of `names::REVERSE_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseNatV1 {
    pub vip: Endpoint,
    pub vip_index: u32,
}
