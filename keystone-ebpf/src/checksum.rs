//! The SYN checksum check: tells a complete TCP checksum from a partial one, which
//! XDP cannot complete (see `keystone_common::Event::SynChecksumPartial`); on tc
//! the skb keeps its partial state and is completed at transmit, so only bad
//! checksums count there.

use keystone_common::{Event, FAMILY_IPV4, checksum::folded, limits::checksum::MAX_CHECKED_L4};

use crate::{
    hook::Hook,
    maps::count_event,
    parse::{Packet, raw16_at},
};

/// Counts `Event::SynChecksumPartial` or `Event::SynChecksumBad` for the TCP SYN
/// `pkt` (as it arrived, before any rewrite) when its segment is at most
/// `MAX_CHECKED_L4` bytes (and even); a right checksum counts nothing.
#[inline(always)]
pub fn check_syn<C: Hook>(pkt: &Packet) {
    let l4_len = (pkt.ip_len as usize).wrapping_sub(pkt.l4 - pkt.ip);
    if l4_len > MAX_CHECKED_L4 || !l4_len.is_multiple_of(2) {
        return;
    }
    // On tc a segment not wholly in the linear part is not summed either.
    // (`black_box`: LLVM must not use this to drop the loop's per-word checks,
    // which the verifier needs.)
    if core::hint::black_box(pkt.l4 + l4_len) > pkt.end {
        return;
    }
    // Pseudo-header (RFC 9293 3.1 / RFC 8200 8.1): addresses, protocol, length; as
    // raw 16-bit words like everything else here (the sum is byte-order independent).
    let words = if pkt.family == FAMILY_IPV4 { 1 } else { 4 };
    let mut pseudo = u16::from_ne_bytes([0, pkt.proto]) as u64 + (l4_len as u16).to_be() as u64;
    for i in 0..4 {
        if i < words {
            for w in [pkt.src[i], pkt.dst[i]] {
                pseudo += (w & 0xffff) as u64 + (w >> 16) as u64;
            }
        }
    }
    let mut segment = 0u64;
    for i in 0..MAX_CHECKED_L4 / 2 {
        let at = pkt.l4 + i * 2;
        if i * 2 >= l4_len || at + 2 > pkt.end {
            break;
        }
        segment += raw16_at(at) as u64;
    }
    if folded(pseudo + segment) == 0xffff {
        return;
    }
    // A partial checksum is the pseudo-header's sum, not inverted (what the kernel
    // leaves for hardware: `~tcp_v4_check(len, saddr, daddr, 0)`).
    let field_at = pkt.l4 + 16;
    let partial = field_at + 2 <= pkt.end && raw16_at(field_at) == folded(pseudo);
    if partial && C::SKB {
        return;
    }
    count_event(if partial {
        Event::SynChecksumPartial
    } else {
        Event::SynChecksumBad
    });
}
