//! The TCP/UDP checksum change of a NAT rewrite, and its in-place (XDP) update: below
//! `hook` (whose tc side updates through a helper instead) and `nat`.

use keystone_common::checksum::{addr_diff, replace_addr, replace16};

use crate::raw::{put16, raw16_at};

/// A TCP/UDP checksum update: the address in the pseudo-header and the port changed.
pub struct L4Change {
    /// The checksum field (a packet address, bounds-checked).
    pub check_at: usize,
    pub old_addr: [u32; 4],
    pub new_addr: [u32; 4],
    pub old_port: u16,
    pub new_port: u16,
    pub v4: bool,
    pub udp: bool,
}

impl L4Change {
    #[inline(always)]
    fn words(&self) -> usize {
        if self.v4 { 1 } else { 4 }
    }

    /// The address change as one ones'-complement difference (for
    /// `bpf_l4_csum_replace` by difference).
    #[inline(always)]
    pub fn addr_diff(&self) -> u16 {
        addr_diff(&self.old_addr, &self.new_addr, self.words())
    }
}

/// The XDP update: incremental arithmetic on the field (an XDP frame's checksum is
/// complete or, from a sender with transmit offload, partial: see `check_syn`). A
/// UDP/IPv4 checksum of 0 ("none") stays 0; a computed UDP checksum of 0 is sent as
/// 0xffff.
#[inline(always)]
pub fn update_l4_checksum_in_place(c: &L4Change) {
    let old_check = raw16_at(c.check_at);
    if c.udp && c.v4 && old_check == 0 {
        return;
    }
    let mut check = replace_addr(old_check, &c.old_addr, &c.new_addr, c.words());
    check = replace16(check, c.old_port, c.new_port);
    if c.udp && check == 0 {
        check = 0xffff;
    }
    put16(c.check_at, check);
}
