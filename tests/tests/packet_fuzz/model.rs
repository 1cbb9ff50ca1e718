//! The configuration under test, and the classifier's view of it.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use keystone_agent::dataplane::VipSpec;
use keystone_common::{Endpoint, PROTO_TCP, PROTO_UDP, mode};
use keystone_lab::xdp::*;

pub fn fuzz_config() -> Vec<VipSpec> {
    let two = |v4: bool, port, proto| {
        (0..2u8)
            .map(|i| {
                let addr: IpAddr = if v4 {
                    backend4(i).into()
                } else {
                    backend6(i).into()
                };
                backend(&format!("b{i}"), ep(addr, port, proto), u32::from(i) + 1)
            })
            .collect::<Vec<_>>()
    };
    let one = |addr: IpAddr, port, proto, weight| vec![backend("b", ep(addr, port, proto), weight)];
    vec![
        vip(
            "t4",
            ep(vip4(100), 80, PROTO_TCP),
            mode::NAT,
            two(true, 8080, PROTO_TCP),
        ),
        vip(
            "u4",
            ep(vip4(100), 53, PROTO_UDP),
            mode::NAT,
            one(backend4(2).into(), 5353, PROTO_UDP, 1),
        ),
        vip(
            "d4",
            ep(vip4(101), 80, PROTO_TCP),
            mode::DSR,
            one(backend4(3).into(), 80, PROTO_TCP, 1),
        ),
        vip(
            "t6",
            ep(vip6(0x100), 80, PROTO_TCP),
            mode::NAT,
            two(false, 8080, PROTO_TCP),
        ),
        vip(
            "u6",
            ep(vip6(0x100), 53, PROTO_UDP),
            mode::NAT,
            one(backend6(2).into(), 5353, PROTO_UDP, 1),
        ),
        vip(
            "d6",
            ep(vip6(0x101), 80, PROTO_TCP),
            mode::DSR,
            one(backend6(3).into(), 80, PROTO_TCP, 1),
        ),
        // Backends without a neighbour entry: the kernel forwards.
        vip(
            "nn",
            ep(vip4(103), 80, PROTO_TCP),
            mode::NAT,
            one(NO_NEIGH4.into(), 8080, PROTO_TCP, 1),
        ),
        vip(
            "dn",
            ep(vip4(105), 80, PROTO_TCP),
            mode::DSR,
            one(NO_NEIGH4.into(), 80, PROTO_TCP, 1),
        ),
        // No backend with weight > 0: every new flow is dropped.
        vip(
            "w0",
            ep(vip4(106), 80, PROTO_TCP),
            mode::NAT,
            one(backend4(4).into(), 8080, PROTO_TCP, 0),
        ),
    ]
}

/// What the classifier knows: the config, nothing of the program.
pub struct Model {
    /// (address, port, protocol) → (VIP endpoint, mode).
    pub vips: HashMap<(IpAddr, u16, u8), (Endpoint, u32)>,
    pub vip_addrs: HashSet<IpAddr>,
    /// nat backend (address, port, protocol) → its VIP.
    pub reverse: HashMap<(IpAddr, u16, u8), SocketAddr>,
    pub macs: HashMap<IpAddr, [u8; 6]>,
}

impl Model {
    pub fn new(specs: &[VipSpec]) -> Model {
        let mut m = Model {
            vips: HashMap::new(),
            vip_addrs: HashSet::new(),
            reverse: HashMap::new(),
            macs: HashMap::new(),
        };
        for s in specs {
            let a = s.vip.socket_addr();
            m.vips
                .insert((a.ip(), a.port(), s.vip.proto), (s.vip, s.mode));
            m.vip_addrs.insert(a.ip());
            for b in &s.backends {
                let e = b.endpoint.socket_addr();
                if s.mode == mode::NAT {
                    m.reverse.insert((e.ip(), e.port(), s.vip.proto), a);
                }
            }
        }
        for i in 0..BACKENDS {
            m.macs.insert(backend4(i).into(), backend_mac(i));
            m.macs.insert(backend6(i).into(), backend_mac(i));
        }
        m
    }
}
