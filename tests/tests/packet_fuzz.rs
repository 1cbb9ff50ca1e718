//! Packet fuzzing through `BPF_PROG_TEST_RUN`: a million random and
//! structure-aware mutated frames (truncated at every header boundary, bad
//! lengths and versions, IPv4 options, IPv6 extension headers, fragments, VLAN
//! tags, ICMP errors, flipped and random bytes) against an independent classifier
//! written here from the contract in `keystone_common::{Reason, Event}`.
//!
//! Checked for every frame: the verdict; a frame not for a VIP leaves untouched
//! (`XDP_PASS`, output = input); only well-formed frames for a configured VIP (or
//! from a nat backend to a client, or a path-MTU error about a VIP flow) are
//! forwarded, and exactly as the classifier rewrites them ("well-formed" is what
//! the balancer reads: Ethernet, at most one VLAN tag, IP version, header and
//! total lengths, no fragment or extension header, a complete fixed TCP/UDP header
//! inside the IP length; checksums and TCP options are the endpoints' business, so
//! a valid checksum must stay valid and an invalid one is not looked at). Checked
//! for every batch: the per-reason, per-action and ICMP-event counters moved by
//! exactly what the classifier predicted, so every drop has a counted reason.
//!
//! `KEYSTONE_FUZZ_SEED=<n>` replays a run (the seed is printed, and named in every
//! failure); `KEYSTONE_FUZZ_PACKETS=<n>` changes the count (default 1,000,000).
//! Each frame is run once (`repeat = 1`: the kernel does not reset the frame
//! between repeats). Needs root: `cargo test -p keystone-tests --test packet_fuzz`.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use keystone_agent::dataplane::{Counters, VipSpec};
use keystone_common::{
    Endpoint, Event, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Reason, checksum, mode,
    tcp_flags::{ACK, FIN, RST, SYN},
};
use keystone_lab::xdp::*;

const DEFAULT_PACKETS: u64 = 1_000_000;
/// Frames between two counter comparisons.
const BATCH: usize = 20_000;

// ---------------------------------------------------------------------------
// The configuration under test, and the classifier's view of it.
// ---------------------------------------------------------------------------

fn fuzz_config() -> Vec<VipSpec> {
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
struct Model {
    /// (address, port, protocol) → (VIP endpoint, mode).
    vips: HashMap<(IpAddr, u16, u8), (Endpoint, u32)>,
    vip_addrs: HashSet<IpAddr>,
    /// nat backend (address, port, protocol) → its VIP.
    reverse: HashMap<(IpAddr, u16, u8), SocketAddr>,
    macs: HashMap<IpAddr, [u8; 6]>,
}

impl Model {
    fn new(specs: &[VipSpec]) -> Model {
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

// ---------------------------------------------------------------------------
// The classifier.
// ---------------------------------------------------------------------------

/// A checksum field and what it covers, so "valid before ⇒ valid after" can be
/// checked on the output.
#[derive(Clone, Copy, Debug)]
struct Check {
    field: usize,
    start: usize,
    end: usize,
    /// Pseudo-header: (offset of the source address, address length, protocol).
    pseudo: Option<(usize, usize, u8)>,
    /// UDP over IPv4: a 0 field means "no checksum" and must stay 0.
    zero_is_none: bool,
}

impl Check {
    fn valid(&self, f: &[u8]) -> bool {
        let pseudo = self.pseudo.map_or(0, |(at, alen, proto)| {
            let mut p = f[at..at + 2 * alen].to_vec();
            let len = self.end - self.start;
            if alen == 4 {
                p.extend([0, proto]);
                p.extend((len as u16).to_be_bytes());
            } else {
                p.extend((len as u32).to_be_bytes());
                p.extend([0, 0, 0, proto]);
            }
            checksum::sum(&p, 0)
        });
        checksum::folded(checksum::sum(&f[self.start..self.end], pseudo)) == 0xffff
    }
}

#[derive(Debug)]
enum Output {
    /// Byte-identical to the input.
    Same,
    /// Not looked at (dropped).
    Any,
    /// The input with new MACs and these bytes replaced; checksum fields must stay
    /// valid where they were.
    Rewrite {
        /// New (destination, source) MACs; None: unchanged.
        macs: Option<([u8; 6], [u8; 6])>,
        edits: Vec<(usize, Vec<u8>)>,
        checks: Vec<Check>,
    },
}

#[derive(Debug)]
struct Expected {
    action: u32,
    reason: Option<Reason>,
    /// Counts `Event::IcmpToBackend`.
    icmp_event: bool,
    output: Output,
}

fn pass(reason: Option<Reason>) -> Expected {
    Expected {
        action: XDP_PASS,
        reason,
        icmp_event: false,
        output: Output::Same,
    }
}

fn drop_(reason: Reason) -> Expected {
    Expected {
        action: XDP_DROP,
        reason: Some(reason),
        icmp_event: false,
        output: Output::Any,
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
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
fn classify(
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

/// Compares the program's output with the expectation; `Err` says what differs.
fn check_output(input: &[u8], out: &[u8], want: &Output) -> Result<(), String> {
    match want {
        Output::Any => Ok(()),
        Output::Same => (out == input)
            .then_some(())
            .ok_or_else(|| "frame changed".into()),
        Output::Rewrite {
            macs,
            edits,
            checks,
        } => {
            if out.len() != input.len() {
                return Err(format!("length {} != {}", out.len(), input.len()));
            }
            let mut want = input.to_vec();
            if let Some((dst, src)) = macs {
                want[0..6].copy_from_slice(dst);
                want[6..12].copy_from_slice(src);
            }
            for (at, bytes) in edits {
                want[*at..at + bytes.len()].copy_from_slice(bytes);
            }
            for c in checks {
                if c.zero_is_none && input[c.field..c.field + 2] == [0, 0] {
                    continue;
                }
                if c.valid(input) && !c.valid(out) {
                    return Err(format!("checksum at {} no longer valid: {c:?}", c.field));
                }
                want[c.field..c.field + 2].copy_from_slice(&out[c.field..c.field + 2]);
            }
            (out == want.as_slice())
                .then_some(())
                .ok_or_else(|| format!("want\n{}", hex(&want)))
        }
    }
}

// ---------------------------------------------------------------------------
// The generator.
// ---------------------------------------------------------------------------

fn client(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        Ipv4Addr::new(198, 18, 0, 2 + rng.below(200) as u8).into()
    } else {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, rng.next_u64() as u16).into()
    }
}

/// Destinations: the VIP addresses most of the time, the gateway, others.
fn destination(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        let last = rng.pick(&[100, 100, 100, 101, 101, 103, 105, 106, 1, 50]);
        vip4(last).into()
    } else {
        let last = rng.pick(&[0x100, 0x100, 0x100, 0x101, 0x101, 1, 0x50]);
        vip6(last).into()
    }
}

/// Mostly the VIP port of `proto`, else another one.
fn port(rng: &mut Rng, proto: u8) -> u16 {
    if rng.chance(70) {
        if proto == PROTO_TCP { 80 } else { 53 }
    } else {
        let any = rng.next_u64() as u16;
        rng.pick(&[80, 53, 8080, 443, 0, any])
    }
}

fn shape(rng: &mut Rng, v4: bool) -> Shape {
    let any_flags = rng.next_u64() as u8;
    let mut s = Shape {
        ttl: rng.pick(&[64, 64, 64, 64, 64, 64, 1, 2, 255, 0]),
        payload: rng.below(80) as usize,
        tcp_flags: rng.pick(&[SYN, SYN, ACK, ACK, ACK | FIN, RST, SYN | ACK, any_flags]),
        udp_no_checksum: rng.chance(10),
        ..Shape::default()
    };
    if rng.chance(15) {
        s.vlan = Some((rng.pick(&[0x8100, 0x88a8]), rng.next_u64() as u16 & 0x0fff));
    }
    if v4 && rng.chance(15) {
        let words = 1 + rng.below(10) as usize;
        s.options = rng.bytes(words * 4);
    }
    s
}

/// A well-formed frame of one of the kinds the program handles.
fn base_frame(rng: &mut Rng) -> Vec<u8> {
    let v4 = rng.chance(60);
    let s = shape(rng, v4);
    let proto = rng.pick(&[PROTO_TCP, PROTO_TCP, PROTO_UDP]);
    match rng.below(10) {
        // An ICMP error (mostly path-MTU) about a flow of (mostly) a VIP.
        0 | 1 => {
            let vip = SocketAddr::new(destination(rng, v4), port(rng, proto));
            let reply = Flow {
                src: vip,
                dst: SocketAddr::new(client(rng, v4), rng.next_u64() as u16),
                proto,
            };
            let quoted = frame(&reply, &shape(rng, v4));
            let l3 = l3_offset(&quoted);
            let cut = rng.pick(&[28, 48, 60, usize::MAX]).min(quoted.len() - l3);
            let icmp = if v4 {
                rng.pick(&[(3, 4), (3, 4), (3, 4), (3, 1), (11, 0), (0, 0)])
            } else {
                rng.pick(&[(2, 0), (2, 0), (2, 0), (1, 4), (3, 0), (129, 0)])
            };
            // The error mostly goes to the quoted source, as routers send it.
            let to = if rng.chance(90) {
                vip.ip()
            } else {
                destination(rng, v4)
            };
            icmp_frame(client(rng, v4), to, icmp, 1280, &quoted[l3..l3 + cut], &s)
        }
        // A nat backend's reply to a client.
        2 => {
            let (from, to): (IpAddr, IpAddr) = if v4 {
                (backend4(rng.below(3) as u8).into(), CLIENT4.into())
            } else {
                (backend6(rng.below(3) as u8).into(), CLIENT6.into())
            };
            let sport = rng.pick(&[8080, 5353, 80]);
            frame(
                &Flow {
                    src: SocketAddr::new(from, sport),
                    dst: SocketAddr::new(to, rng.next_u64() as u16),
                    proto,
                },
                &s,
            )
        }
        // Client to (mostly) a VIP.
        _ => frame(
            &Flow {
                src: SocketAddr::new(client(rng, v4), rng.next_u64() as u16),
                dst: SocketAddr::new(destination(rng, v4), port(rng, proto)),
                proto,
            },
            &s,
        ),
    }
}

/// Header boundaries of `f` (as built, before other mutations), to cut at.
fn boundaries(f: &[u8]) -> Vec<usize> {
    let l3 = l3_offset(f);
    let mut b = vec![12, 13, 14, 16, 17, 18, l3 + 1, l3 + 9, l3 + 19, l3 + 20];
    if f.len() > l3 + 20 {
        let v4 = f[l3] >> 4 == 4;
        let hl = if v4 {
            usize::from(f[l3] & 0x0f) * 4
        } else {
            40
        };
        let l4 = l3 + hl;
        b.extend([l3 + 39, l3 + 40, l4 - 1, l4, l4 + 1, l4 + 4, l4 + 7, l4 + 8]);
        b.extend([
            l4 + 19,
            l4 + 20,
            l4 + 27,
            l4 + 28,
            l4 + 47,
            l4 + 48,
            l4 + 55,
            l4 + 56,
        ]);
    }
    b.retain(|&n| n >= 14 && n < f.len());
    b
}

fn set16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// One mutation: a cut, a bad length, a fragment, an extension header, a tag, ...
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let l3 = l3_offset(f);
    let v4 = f.len() > l3 && f[l3] >> 4 == 4;
    match rng.below(12) {
        0 | 1 => {
            let b = boundaries(f);
            if !b.is_empty() {
                f.truncate(rng.pick(&b));
            }
        }
        2 => {
            let n = 14 + rng.below(f.len().saturating_sub(14).max(1) as u64) as usize;
            f.truncate(n);
        }
        // IP length fields: off by a little or anything.
        3 => {
            let at = l3 + if v4 { 2 } else { 4 };
            if at + 2 <= f.len() {
                let cur = be16(f, at);
                let v = match rng.below(4) {
                    0 => cur.wrapping_add(1),
                    1 => cur.wrapping_sub(1 + rng.below(30) as u16),
                    2 => rng.below(64) as u16,
                    _ => rng.next_u64() as u16,
                };
                set16(f, at, v);
            }
        }
        // IHL / version.
        4 => {
            if l3 < f.len() {
                f[l3] = if rng.chance(50) {
                    (f[l3] & 0xf0) | rng.below(16) as u8
                } else {
                    (f[l3] & 0x0f) | (rng.below(16) as u8) << 4
                };
            }
        }
        // Fragments: MF, an offset, or both.
        5 => {
            if v4 {
                let any = rng.next_u64() as u16 & 0x3fff;
                let v = rng.pick(&[0x2000, 0x0001, 0x2000 | 0x00b9, any]);
                set16(f, l3 + 6, v | (0x4000 * u16::from(rng.chance(30))));
            } else if f.len() >= l3 + 40 {
                insert_ipv6_ext(rng, f, l3, Some(44));
            }
        }
        // IPv6 extension headers.
        6 => {
            if !v4 && f.len() >= l3 + 40 {
                insert_ipv6_ext(rng, f, l3, None);
            }
        }
        // The protocol field.
        7 => {
            let at = l3 + if v4 { 9 } else { 6 };
            if at < f.len() {
                let any = rng.next_u64() as u8;
                f[at] = rng.pick(&[
                    PROTO_TCP,
                    PROTO_UDP,
                    PROTO_ICMP,
                    PROTO_ICMPV6,
                    0,
                    43,
                    44,
                    60,
                    50,
                    any,
                ]);
            }
        }
        // VLAN tags: add one (maybe a second), or make the EtherType odd.
        8 => {
            let tci = rng.next_u64() as u16;
            let tag = [
                rng.pick(&[0x81u8, 0x88]),
                rng.pick(&[0x00u8, 0xa8]),
                (tci >> 8) as u8,
                tci as u8,
            ];
            if rng.chance(80) {
                f.splice(12..12, tag);
            } else {
                let et = rng.pick(&[0x0806u16, 0x88cc, 0x86dd, 0x0800, tci]);
                set16(f, 12, et);
            }
        }
        // Flip bytes.
        9 | 10 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(f.len() as u64) as usize;
                f[at] ^= 1 << rng.below(8);
            }
        }
        // Trailing bytes beyond the IP length (Ethernet padding).
        _ => {
            let n = 1 + rng.below(40) as usize;
            let tail = rng.bytes(n);
            f.extend(tail);
        }
    }
}

/// Inserts an IPv6 extension header (`kind`, or a random one) after the fixed
/// header, with a consistent payload length.
fn insert_ipv6_ext(rng: &mut Rng, f: &mut Vec<u8>, l3: usize, kind: Option<u8>) {
    let kind = kind.unwrap_or_else(|| rng.pick(&[0, 43, 44, 60, 51, 135]));
    let next = f[l3 + 6];
    let ext = match kind {
        44 => vec![next, 0, 0, rng.pick(&[0, 1, 8]), 0, 0, 0x12, 0x34],
        _ => {
            let units = rng.below(3) as usize; // length in 8-byte units, beyond the first
            let mut e = vec![next, units as u8];
            e.extend(vec![1u8; 6 + units * 8]);
            e
        }
    };
    let plen = be16(f, l3 + 4).wrapping_add(ext.len() as u16);
    f.splice(l3 + 40..l3 + 40, ext);
    f[l3 + 6] = kind;
    set16(f, l3 + 4, plen);
}

fn fuzz_frame(rng: &mut Rng) -> Vec<u8> {
    let mut f = if rng.chance(5) {
        // Random bytes behind a plausible EtherType.
        let n = 14 + rng.below(120) as usize;
        let mut f = rng.bytes(n);
        let any = rng.next_u64() as u16;
        let et = rng.pick(&[0x0800u16, 0x86dd, 0x8100, 0x88a8, any]);
        set16(&mut f, 12, et);
        f
    } else {
        base_frame(rng)
    };
    // Some stay well-formed; the rest get up to three mutations.
    if rng.chance(65) {
        for _ in 0..1 + rng.below(3) {
            mutate(rng, &mut f);
        }
    }
    f
}

// ---------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

#[derive(Default)]
struct Tally {
    reasons: [u64; Reason::COUNT as usize],
    actions: [u64; 5],
    icmp_events: u64,
}

fn counter_mismatch(before: &Counters, after: &Counters, want: &Tally) -> Option<String> {
    let reasons: Vec<u64> = (0..Reason::COUNT as usize)
        .map(|i| after.reasons[i] - before.reasons[i])
        .collect();
    let actions: Vec<u64> = (0..5)
        .map(|i| after.actions[i] - before.actions[i])
        .collect();
    let icmp =
        after.events[Event::IcmpToBackend as usize] - before.events[Event::IcmpToBackend as usize];
    (reasons != want.reasons || actions != want.actions || icmp != want.icmp_events).then(|| {
        format!(
            "reasons {reasons:?} (want {:?}), actions {actions:?} (want {:?}), icmp events {icmp} (want {})",
            want.reasons, want.actions, want.icmp_events
        )
    })
}

#[test]
fn a_million_fuzzed_packets_keep_the_contract() {
    let seed = env_u64("KEYSTONE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    let packets = env_u64("KEYSTONE_FUZZ_PACKETS").unwrap_or(DEFAULT_PACKETS);
    println!("packet fuzz: seed {seed} (replay with KEYSTONE_FUZZ_SEED={seed}), {packets} frames");
    in_netns(move || {
        let mut gw = Gateway::new();
        let specs = fuzz_config();
        gw.apply(&specs);
        let model = Model::new(&specs);
        let dp = &gw.dp;
        let predict = |vip: &Endpoint, f: &Flow| dp.predict(vip, &f.key()).map(|e| e.socket_addr());
        let mut rng = Rng(seed);
        let (mut done, mut skipped, mut forwarded, mut dropped) = (0u64, 0u64, 0u64, 0u64);
        let mut batch: Vec<(Vec<u8>, Expected)> = Vec::with_capacity(BATCH);
        let mut total = Tally::default();
        while done < packets {
            let before = gw.counters();
            let mut tally = Tally::default();
            batch.clear();
            while batch.len() < BATCH && done < packets {
                done += 1;
                let input = fuzz_frame(&mut rng);
                let Some(want) = classify(&input, &model, &predict) else {
                    skipped += 1;
                    continue;
                };
                let (action, out) = gw.run(&input, gw.in_index);
                let what = || {
                    format!(
                        "seed {seed}, frame #{done}: {want:?}\ninput\n{}\noutput\n{}",
                        hex(&input),
                        hex(&out)
                    )
                };
                assert_eq!(
                    keystone_common::xdp_action_name(action),
                    keystone_common::xdp_action_name(want.action),
                    "action; {}",
                    what()
                );
                if let Err(e) = check_output(&input, &out, &want.output) {
                    panic!("output: {e}; {}", what());
                }
                if let Some(r) = want.reason {
                    tally.reasons[r as usize] += 1;
                }
                tally.actions[action as usize] += 1;
                tally.icmp_events += u64::from(want.icmp_event);
                forwarded += u64::from(action == XDP_TX || action == XDP_REDIRECT);
                dropped += u64::from(action == XDP_DROP);
                batch.push((input, want));
            }
            for (t, n) in total.reasons.iter_mut().zip(tally.reasons) {
                *t += n;
            }
            total.icmp_events += tally.icmp_events;
            let after = gw.counters();
            if let Some(diff) = counter_mismatch(&before, &after, &tally) {
                // Find the frame: the counted reasons do not depend on flow state.
                for (input, want) in &batch {
                    let before = gw.counters();
                    gw.run(input, gw.in_index);
                    let after = gw.counters();
                    let mut one = Tally::default();
                    if let Some(r) = want.reason {
                        one.reasons[r as usize] = 1;
                    }
                    one.actions[want.action as usize] = 1;
                    one.icmp_events = u64::from(want.icmp_event);
                    if let Some(d) = counter_mismatch(&before, &after, &one) {
                        panic!(
                            "seed {seed}: counters for one frame: {d}; {want:?}\n{}",
                            hex(input)
                        );
                    }
                }
                panic!("seed {seed}: counters over frames up to #{done}: {diff}");
            }
        }
        println!(
            "packet fuzz: {done} frames, {forwarded} forwarded ({} ICMP errors to a backend), {dropped} dropped, {skipped} skipped (unpredictable without routes)",
            total.icmp_events
        );
        let reasons: Vec<String> = Reason::ALL
            .iter()
            .map(|&r| format!("{} {}", r.name(), total.reasons[r as usize]))
            .collect();
        println!("packet fuzz: counted reasons: {}", reasons.join(", "));
        assert!(
            skipped * 100 < done,
            "seed {seed}: {skipped} of {done} frames could not be classified"
        );
        // The generator must reach every interesting outcome, or the run proves little.
        assert!(
            forwarded > done / 20 && dropped > done / 50,
            "seed {seed}: too few forwarded ({forwarded}) or dropped ({dropped}) frames"
        );
    });
}
