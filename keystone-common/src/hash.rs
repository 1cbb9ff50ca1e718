//! The flow hash. The XDP program and the agent call this same function, so the
//! agent can predict which backend the kernel picks, and two gateways with the same
//! config pick the same backend for a flow (ECMP scale-out).

use crate::flow::FlowKey;

/// The fields of a packet the hash reads; the connection-table key doubles as it.
pub type FlowTuple = FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// One MurmurHash3 (x86_32) block step.
#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser: every input bit affects every output bit.
#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow. With `source_only` it hashes the client address alone, so a
/// client keeps its backend across connections (source stickiness).
#[inline(always)]
pub fn flow_hash(flow: &FlowTuple, source_only: bool) -> u32 {
    let mut h = 0x4b53_7431; // "KSt1": the hash's version, shared by both sides.
    h = mix(h, flow.src[0]);
    h = mix(h, flow.src[1]);
    h = mix(h, flow.src[2]);
    h = mix(h, flow.src[3]);
    if source_only {
        return finish(h, 16);
    }
    h = mix(h, flow.dst[0]);
    h = mix(h, flow.dst[1]);
    h = mix(h, flow.dst[2]);
    h = mix(h, flow.dst[3]);
    h = mix(h, ((flow.src_port as u32) << 16) | flow.dst_port as u32);
    h = mix(h, flow.proto as u32);
    finish(h, 40)
}

/// Words of an IPv4 address as stored in maps (network-order octets, word 0).
#[inline(always)]
pub const fn ipv4_words(octets: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Words of an IPv6 address as stored in maps (network-order octets).
#[inline(always)]
pub const fn ipv6_words(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// FNV-1a, 64 bit: a stable hash of a backend's identity for Maglev permutations.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sport: u16) -> FlowKey {
        FlowKey {
            src: ipv4_words([198, 18, 0, 2]),
            dst: ipv4_words([198, 18, 0, 100]),
            src_port: sport.to_be(),
            dst_port: 80u16.to_be(),
            proto: crate::flow::PROTO_TCP,
            family: crate::flow::FAMILY_IPV4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn hash_reads_the_right_fields() {
        // Deterministic, port-sensitive, and port-blind when source-only.
        assert_eq!(
            flow_hash(&flow(40000), false),
            flow_hash(&flow(40000), false)
        );
        let a = flow_hash(&flow(40000), false);
        let b = flow_hash(&flow(40001), false);
        assert_ne!(a, b);
        assert_eq!(flow_hash(&flow(40000), true), flow_hash(&flow(1), true));
    }

    #[test]
    fn hash_spreads_ports_evenly() {
        let mut buckets = [0u32; 16];
        for p in 0..16_000u16 {
            buckets[(flow_hash(&flow(20000 + p), false) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!(
                (900..1100).contains(&b),
                "bucket {b} far from 1000: {buckets:?}"
            );
        }
    }
}
