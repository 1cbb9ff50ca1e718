//! Addresses as the maps key them: endpoints, VIP addresses and the address
//! prefilter.

use super::{FAMILY_IPV4, FAMILY_IPV6};

/// An L4 endpoint: the key of a VIP, and of a backend in the reverse-NAT map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address words, network-order octets (see module docs).
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
}

impl Endpoint {
    pub fn new(addr: core::net::SocketAddr, proto: u8) -> Self {
        let (addr_words, family) = match addr.ip() {
            core::net::IpAddr::V4(ip) => (crate::hash::ipv4_words(ip.octets()), FAMILY_IPV4),
            core::net::IpAddr::V6(ip) => (crate::hash::ipv6_words(ip.octets()), FAMILY_IPV6),
        };
        Endpoint {
            addr: addr_words,
            port: addr.port().to_be(),
            proto,
            family,
        }
    }

    pub fn ip(&self) -> core::net::IpAddr {
        let w = self.addr;
        if self.family == FAMILY_IPV4 {
            core::net::Ipv4Addr::from(w[0].to_ne_bytes()).into()
        } else {
            let mut o = [0u8; 16];
            for (i, word) in w.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
            core::net::Ipv6Addr::from(o).into()
        }
    }

    pub fn socket_addr(&self) -> core::net::SocketAddr {
        core::net::SocketAddr::new(self.ip(), u16::from_be(self.port))
    }

    /// Stable identity for Maglev permutations: the same endpoint hashes the same on
    /// every gateway, whatever the backend is called.
    pub fn identity(&self) -> u64 {
        let mut bytes = [0u8; 20];
        for (i, word) in self.addr.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        bytes[16..18].copy_from_slice(&self.port.to_ne_bytes());
        bytes[18] = self.proto;
        bytes[19] = self.family;
        crate::hash::fnv1a64(&bytes)
    }
}

/// Key of the VIP-address set (`names::VIP_ADDRS`): a VIP's address without port and
/// protocol. The value (`u32`) is how many VIPs use the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddr {
    /// Address words, network-order octets (see module docs).
    pub addr: [u32; 4],
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    // Two fields, not `[u8; 3]`: zeroing a 3-byte array compiles to a call to the
    // BPF object's byte-loop `memset` on every VIP-address lookup.
    pub _pad: u8,
    pub _pad2: u16,
}

impl VipAddr {
    #[inline(always)]
    pub const fn new(addr: [u32; 4], family: u8) -> Self {
        VipAddr {
            addr,
            family,
            _pad: 0,
            _pad2: 0,
        }
    }
}

impl From<&Endpoint> for VipAddr {
    fn from(e: &Endpoint) -> Self {
        VipAddr::new(e.addr, e.family)
    }
}

/// The address prefilter: a bitmap over a 16-bit fold of addresses that tells the
/// program, with one array read, that a packet's destination cannot be a VIP and its
/// source cannot be a nat backend, so most packets that are not ours skip both hash
/// lookups (VIPS, REVERSE). False positives only cost those lookups; the agent sets
/// a bit before the entries it covers exist and clears it after they are gone.
pub mod addr_filter {
    use crate::limits::filter::ADDR_FILTER_WORDS;

    /// 16-bit fold of an address (map words).
    #[inline(always)]
    pub const fn bucket(addr: &[u32; 4]) -> u32 {
        let x = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
        (x ^ (x >> 16)) & 0xffff
    }

    /// Filter word index of an address.
    #[inline(always)]
    pub const fn word(addr: &[u32; 4]) -> u32 {
        (bucket(addr) >> 4) % ADDR_FILTER_WORDS
    }

    /// Bit (in its word) saying "some VIP has this destination address".
    #[inline(always)]
    pub const fn vip_bit(addr: &[u32; 4]) -> u32 {
        1 << (bucket(addr) & 15)
    }

    /// Bit (in its word) saying "some nat backend has this source address".
    #[inline(always)]
    pub const fn backend_bit(addr: &[u32; 4]) -> u32 {
        1 << (16 + (bucket(addr) & 15))
    }
}
