//! The classifier: what the program must do with a frame, written from the
//! contract in `keystone_common::{Reason, Event}`, not from the program.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keystone_common::{Endpoint, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Reason, mode};
use keystone_lab::xdp::*;

use crate::expect::{Check, Expected, Output, drop_, pass};
use crate::model::Model;

pub fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn addr(f: &[u8], at: usize, v4: bool) -> IpAddr {
    if v4 {
        Ipv4Addr::from(<[u8; 4]>::try_from(&f[at..at + 4]).unwrap()).into()
    } else {
        Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap()).into()
    }
}

/// The IP layer as the classifier reads it.
struct Ip {
    v4: bool,
    l3: usize,
    /// Header length (IPv6: 40).
    hl: usize,
    /// End of the datagram (IP length, not frame length).
    end: usize,
    proto: u8,
    ttl: u8,
    src: IpAddr,
    dst: IpAddr,
}

impl Ip {
    fn alen(&self) -> usize {
        if self.v4 { 4 } else { 16 }
    }
    fn src_at(&self) -> usize {
        self.l3 + if self.v4 { 12 } else { 8 }
    }
    fn dst_at(&self) -> usize {
        self.src_at() + self.alen()
    }
    fn ttl_at(&self) -> usize {
        self.l3 + if self.v4 { 8 } else { 7 }
    }
    fn header_check(&self) -> Option<Check> {
        self.v4.then_some(Check {
            field: self.l3 + 10,
            start: self.l3,
            end: self.l3 + self.hl,
            pseudo: None,
            zero_is_none: false,
        })
    }
}

/// `None`: a frame the classifier cannot predict without the routing table (a
/// nat backend's packet to someone other than the test's clients); skipped.
pub fn classify(
    f: &[u8],
    model: &Model,
    predict: &dyn Fn(&Endpoint, &Flow) -> Option<SocketAddr>,
) -> Option<Expected> {
    let len = f.len();
    let (mut ethertype, mut l3) = (be16(f, 12), 14);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        if len < 18 {
            return Some(pass(Some(Reason::NotIp)));
        }
        ethertype = be16(f, 16);
        l3 = 18;
    }
    let v4 = match ethertype {
        0x0800 => true,
        0x86dd => false,
        _ => return Some(pass(Some(Reason::NotIp))),
    };
    let fixed = if v4 { 20 } else { 40 };
    if len < l3 + fixed {
        return Some(pass(Some(Reason::BadIpHeader)));
    }
    let dst = addr(f, l3 + if v4 { 16 } else { 24 }, v4);
    let to_vip_addr = model.vip_addrs.contains(&dst);
    let not_ours_or = |reason| {
        Some(if to_vip_addr {
            drop_(reason)
        } else {
            pass(None)
        })
    };
    let bad_ip = Some(if to_vip_addr {
        drop_(Reason::BadIpHeader)
    } else {
        pass(Some(Reason::BadIpHeader))
    });
    let ip = if v4 {
        let hl = usize::from(f[l3] & 0x0f) * 4;
        let tot = usize::from(be16(f, l3 + 2));
        if f[l3] >> 4 != 4 || hl < 20 || tot < hl || l3 + tot > len {
            return bad_ip;
        }
        Ip {
            v4,
            l3,
            hl,
            end: l3 + tot,
            proto: f[l3 + 9],
            ttl: f[l3 + 8],
            src: addr(f, l3 + 12, true),
            dst,
        }
    } else {
        let plen = usize::from(be16(f, l3 + 4));
        if f[l3] >> 4 != 6 || l3 + 40 + plen > len {
            return bad_ip;
        }
        Ip {
            v4,
            l3,
            hl: 40,
            end: l3 + 40 + plen,
            proto: f[l3 + 6],
            ttl: f[l3 + 7],
            src: addr(f, l3 + 8, false),
            dst,
        }
    };
    let l4 = l3 + ip.hl;
    let fragment = v4 && be16(f, l3 + 6) & 0x3fff != 0;
    match ip.proto {
        PROTO_ICMP if v4 => {
            return Some(if fragment {
                pass(None)
            } else {
                icmp_error(f, &ip, model, predict)
            });
        }
        PROTO_ICMPV6 if !v4 => return Some(icmp_error(f, &ip, model, predict)),
        PROTO_TCP | PROTO_UDP => {}
        // IPv6 extension headers (ESP excluded).
        0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 | 253 | 254 if !v4 => {
            return not_ours_or(Reason::Unparseable);
        }
        _ => return Some(pass(None)),
    }
    if fragment {
        return not_ours_or(Reason::Unparseable);
    }
    let tcp = ip.proto == PROTO_TCP;
    let l4_min = if tcp { 20 } else { 8 };
    if l4 + l4_min > ip.end {
        return not_ours_or(Reason::TruncatedL4);
    }
    let (sport, dport) = (be16(f, l4), be16(f, l4 + 2));
    let l4_check = Check {
        field: l4 + if tcp { 16 } else { 6 },
        start: l4,
        end: ip.end,
        pseudo: Some((ip.src_at(), ip.alen(), ip.proto)),
        zero_is_none: v4 && !tcp,
    };
    let port_edit = |at: usize, port: u16| (at, port.to_be_bytes().to_vec());
    if let Some(&(vip, vip_mode)) = model.vips.get(&(dst, dport, ip.proto)) {
        let nat = vip_mode == mode::NAT;
        if nat && ip.ttl <= 1 {
            return Some(pass(Some(Reason::TtlExpired)));
        }
        let flow = Flow {
            src: SocketAddr::new(ip.src, sport),
            dst: SocketAddr::new(dst, dport),
            proto: ip.proto,
        };
        let Some(to) = predict(&vip, &flow) else {
            return Some(drop_(Reason::NoBackend));
        };
        let (edits, checks) = if nat {
            (
                vec![
                    (ip.dst_at(), octets(to.ip())),
                    port_edit(l4 + 2, to.port()),
                    (ip.ttl_at(), vec![ip.ttl - 1]),
                ],
                ip.header_check().into_iter().chain([l4_check]).collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        return Some(towards(model, to.ip(), nat, edits, checks, false));
    }
    if let Some(&vip) = model.reverse.get(&(ip.src, sport, ip.proto)) {
        if ip.dst != IpAddr::from(CLIENT4) && ip.dst != IpAddr::from(CLIENT6) {
            return None;
        }
        if ip.ttl <= 1 {
            return Some(pass(Some(Reason::TtlExpired)));
        }
        // The client is behind the ingress interface: back out of it.
        return Some(Expected {
            action: XDP_TX,
            reason: None,
            icmp_event: false,
            output: Output::Rewrite {
                macs: Some((CLIENT_MAC, IN_MAC)),
                edits: vec![
                    (ip.src_at(), octets(vip.ip())),
                    port_edit(l4, vip.port()),
                    (ip.ttl_at(), vec![ip.ttl - 1]),
                ],
                checks: ip.header_check().into_iter().chain([l4_check]).collect(),
            },
        });
    }
    Some(pass(None))
}

/// ICMP (not a fragment) to any address: a path-MTU error about a VIP flow goes
/// to the flow's backend; everything else passes untouched.
fn icmp_error(
    f: &[u8],
    ip: &Ip,
    model: &Model,
    predict: &dyn Fn(&Endpoint, &Flow) -> Option<SocketAddr>,
) -> Expected {
    let l4 = ip.l3 + ip.hl;
    let inner = l4 + 8;
    let inner_hl = if ip.v4 { 20 } else { 40 };
    if inner + inner_hl + 8 > ip.end {
        return pass(None);
    }
    let path_mtu = if ip.v4 {
        (f[l4], f[l4 + 1]) == (3, 4)
    } else {
        f[l4] == 2
    };
    let (inner_proto, inner_ok) = if ip.v4 {
        (
            f[inner + 9],
            f[inner] == 0x45 && be16(f, inner + 6) & 0x1fff == 0,
        )
    } else {
        (f[inner + 6], f[inner] >> 4 == 6)
    };
    if !path_mtu || !inner_ok || (inner_proto != PROTO_TCP && inner_proto != PROTO_UDP) {
        return pass(None);
    }
    let (src_at, dst_at) = if ip.v4 {
        (inner + 12, inner + 16)
    } else {
        (inner + 8, inner + 24)
    };
    let (esrc, edst) = (addr(f, src_at, ip.v4), addr(f, dst_at, ip.v4));
    let (esport, edport) = (be16(f, inner + inner_hl), be16(f, inner + inner_hl + 2));
    if esrc != ip.dst {
        return pass(None);
    }
    let Some(&(vip, vip_mode)) = model.vips.get(&(esrc, esport, inner_proto)) else {
        return pass(None);
    };
    let nat = vip_mode == mode::NAT;
    if nat && ip.ttl <= 1 {
        return pass(Some(Reason::TtlExpired));
    }
    let flow = Flow {
        src: SocketAddr::new(edst, edport),
        dst: SocketAddr::new(esrc, esport),
        proto: inner_proto,
    };
    let Some(to) = predict(&vip, &flow) else {
        return drop_(Reason::NoBackend);
    };
    let (edits, checks) = if nat {
        let icmp_check = Check {
            field: l4 + 2,
            start: l4,
            end: ip.end,
            pseudo: (!ip.v4).then_some((ip.src_at(), 16, PROTO_ICMPV6)),
            zero_is_none: false,
        };
        let mut checks: Vec<Check> = ip.header_check().into_iter().collect();
        checks.push(icmp_check);
        if ip.v4 {
            checks.push(Check {
                field: inner + 10,
                start: inner,
                end: inner + 20,
                pseudo: None,
                zero_is_none: false,
            });
        }
        (
            vec![
                (ip.dst_at(), octets(to.ip())),
                (ip.ttl_at(), vec![ip.ttl - 1]),
                (src_at, octets(to.ip())),
                (inner + inner_hl, to.port().to_be_bytes().to_vec()),
            ],
            checks,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    towards(model, to.ip(), nat, edits, checks, true)
}

/// A packet on its way to backend `to`, with `edits` (and `checks`) in `nat` mode:
/// MACs towards the backend and `XDP_REDIRECT` out of the backend side; without a
/// neighbour entry for it, `XDP_PASS` counted `FibNoNeighbour`, rewritten (`nat`)
/// or untouched (`dsr`).
fn towards(
    model: &Model,
    to: IpAddr,
    nat: bool,
    edits: Vec<(usize, Vec<u8>)>,
    checks: Vec<Check>,
    icmp_event: bool,
) -> Expected {
    let (action, reason, macs) = match model.macs.get(&to) {
        Some(&mac) => (XDP_REDIRECT, None, Some((mac, OUT_MAC))),
        None => (XDP_PASS, Some(Reason::FibNoNeighbour), None),
    };
    let output = if nat || macs.is_some() {
        Output::Rewrite {
            macs,
            edits,
            checks,
        }
    } else {
        Output::Same
    };
    Expected {
        action,
        reason,
        icmp_event,
        output,
    }
}
