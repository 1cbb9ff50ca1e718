use super::*;
use core::mem::size_of;

#[test]
fn endpoints_round_trip() {
    for s in ["198.18.0.10:80", "[2001:db8::10]:8080"] {
        let addr: core::net::SocketAddr = s.parse().unwrap();
        let e = Endpoint::new(addr, PROTO_TCP);
        assert_eq!(e.socket_addr(), addr);
        assert_ne!(e.identity(), Endpoint::new(addr, PROTO_UDP).identity());
    }
    let e = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    assert_eq!(e.port.to_ne_bytes(), [0, 80]);
    assert_eq!(e.addr[0].to_ne_bytes(), [198, 18, 0, 10]);
}

#[test]
fn layouts_have_no_implicit_padding() {
    assert_eq!(size_of::<Endpoint>(), 16 + 2 + 1 + 1);
    assert_eq!(size_of::<VipAddr>(), 16 + 1 + 3);
    assert_eq!(size_of::<VipInfo>(), 6 * 4);
    assert_eq!(size_of::<legacy::VipInfoV1>(), 5 * 4);
    assert_eq!(size_of::<Backend>(), 20 + 3 * 4);
    assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
    assert_eq!(size_of::<FlowState>(), 16);
    assert_eq!(size_of::<legacy::FlowStateV1>(), 8);
    assert_eq!(size_of::<legacy::L4CountersV1>(), 4 * 8);
    assert_eq!(size_of::<ReverseNat>(), 20 + 4 + 4);
    assert_eq!(size_of::<NextHopCache>(), 8 + 3 * 4 + 6 + 6);
    assert_eq!(size_of::<ReplyHopCache>(), 32 + 16 + 16);
    assert_eq!(size_of::<legacy::ReverseNatV1>(), 20 + 4);
    assert_eq!(size_of::<TrafficCounters>(), 24);
    assert_eq!(size_of::<L4Counters>(), 5 * 8);
    assert_eq!(core::mem::align_of::<L4Counters>(), 8);
}

#[test]
fn a_syn_repicks_only_a_stale_or_unestablished_entry() {
    use conn_flags::{CLOSED, ESTABLISHED, SYN_ACK};
    use tcp_flags::{ACK, FIN, PSH, RST, SYN};
    const SYN_SEEN: u32 = conn_flags::SYN;
    let at = |flags, seen| FlowState {
        backend: 1,
        generation: 1,
        flags,
        seen,
    };
    let idle = crate::limits::conn::REUSE_IDLE_TICKS;
    assert!(FlowState::NONE.syn_repicks(5));
    assert!(
        at(SYN_SEEN, 5).syn_repicks(5),
        "handshake under way (retransmit)"
    );
    assert!(at(0, 5).syn_repicks(5), "unknown (migrated) entry");
    assert!(!at(ESTABLISHED, 5).syn_repicks(5 + idle));
    assert!(at(ESTABLISHED, 5).syn_repicks(6 + idle), "idle too long");
    assert!(
        !at(ESTABLISHED, u32::MAX).syn_repicks(idle - 1),
        "clock wrap"
    );
    assert!(at(ESTABLISHED | CLOSED, 5).syn_repicks(5));

    // nat: SYN, the backend's SYN-ACK, the client's ACK completes it, once.
    let (s, done) = at(ESTABLISHED | CLOSED, 1).after_client(SYN, 2, true);
    assert_eq!((s.flags, s.seen, done), (SYN_SEEN, 2, false));
    let (s2, done) = s.after_client(ACK, 2, true);
    assert!(
        !done,
        "an ACK without the backend's SYN-ACK is no handshake"
    );
    assert_eq!(s2.flags, SYN_SEEN | ESTABLISHED);
    let s = at(s.after_reply(1, SYN | ACK), 2);
    assert_eq!(s.flags, SYN_SEEN | SYN_ACK);
    assert_eq!(
        s.after_reply(2, SYN | ACK),
        s.flags,
        "another backend's reply"
    );
    let (s, done) = s.after_client(ACK | PSH, 3, true);
    assert!(done);
    assert_eq!(s.flags, SYN_SEEN | SYN_ACK | ESTABLISHED);
    assert!(!s.after_client(ACK, 3, true).1, "counted once");
    assert_eq!(s.after_client(FIN | ACK, 4, true).0.flags & CLOSED, CLOSED);
    assert_eq!(s.after_reply(1, RST) & CLOSED, CLOSED);
    // dsr: no SYN-ACK to see.
    assert!(at(SYN_SEEN, 1).after_client(ACK, 1, false).1);
    assert!(!at(SYN_SEEN, 1).after_client(RST | ACK, 1, false).1);
}

#[test]
fn new_connections_are_syn_without_ack() {
    use tcp_flags::*;
    assert!(is_new_connection(SYN));
    assert!(is_new_connection(SYN | PSH));
    assert!(!is_new_connection(SYN | ACK));
    assert!(!is_new_connection(ACK));
    assert!(!is_new_connection(FIN | ACK));
    assert!(!is_new_connection(0));
}

#[test]
fn reply_hop_indexes_stay_in_the_cache_and_spread_neighbouring_clients() {
    const SLOTS: u32 = crate::limits::forward::REPLY_HOP_SLOTS;
    let mut used = [false; SLOTS as usize];
    for i in 0..256u32 {
        let v4 = [u32::from_ne_bytes([198, 18, 0, i as u8]), 0, 0, 0];
        let v6 = [0x0db8_0120, 0, 0, i.to_be()];
        for addr in [v4, v6] {
            let index = ReplyHopCache::index(&addr);
            assert!(index < SLOTS, "{addr:?} -> {index}");
            used[index as usize] = true;
        }
    }
    // 512 clients of two /24-like ranges: most get an entry of their own.
    let distinct = used.iter().filter(|&&u| u).count();
    assert!(distinct > 300, "{distinct} distinct entries");
}
