//! Per-backend L4 counters: SYNs sent and the backends' answers.

use super::*;

pub(crate) fn l4(syn: u64, syn_ack: u64, rst: u64, fin: u64, established: u64) -> L4Counters {
    L4Counters {
        syn,
        syn_ack,
        rst,
        fin,
        established,
    }
}

/// Per backend, the L4 counters that moved between two readings.
pub(crate) fn l4_deltas(before: &Counters, after: &Counters) -> Vec<(SocketAddr, L4Counters)> {
    let mut deltas: Vec<(SocketAddr, L4Counters)> = after
        .backend_l4
        .iter()
        .filter_map(|(vip, b, a)| {
            let z = L4Counters::default();
            let old = before
                .backend_l4
                .iter()
                .find(|(v, e, _)| v == vip && e == b)
                .map_or(z, |(_, _, c)| *c);
            let d = l4(
                a.syn - old.syn,
                a.syn_ack - old.syn_ack,
                a.rst - old.rst,
                a.fin - old.fin,
                a.established - old.established,
            );
            (d != z).then_some((b.socket_addr(), d))
        })
        .collect();
    deltas.sort_by_key(|(b, _)| *b);
    deltas
}

/// (what, flow, frame shape, TCP flags, ingress, action, L4 counters that move).
type L4Step = (
    &'static str,
    Flow,
    Shape,
    u8,
    u32,
    u32,
    Vec<(SocketAddr, L4Counters)>,
);

/// Passive TCP signals per backend: client SYNs (ACK clear) count `syn` for the
/// backend they go to, a nat backend's SYN+ACK/RST/FIN replies count for it, the
/// client's ACK that completes the handshake counts `established`; UDP and other
/// segments count nothing; dsr backends only get `syn` and `established`.
#[test]
fn l4_counters_count_syns_and_the_backends_answers() {
    in_netns(|| {
        let mut gw = Gateway::new();
        let config = case_config();
        gw.apply(&config);
        let (inn, out) = (gw.in_index, gw.out_index);
        let start = gw.counters();
        let programmed: usize = config.iter().map(|v| v.backends.len()).sum();
        assert_eq!(start.backend_l4.len(), programmed, "one entry per backend");
        assert!(
            start
                .backend_l4
                .iter()
                .all(|(_, _, c)| *c == L4Counters::default())
        );

        let client = |s: &str, proto| flow("198.18.0.2:41000", s, proto);
        let from_backend = |b: &str, proto| flow(b, "198.18.0.2:41000", proto);
        let from_client = Shape::default();
        let from = |i: u8| Shape {
            dst_mac: OUT_MAC,
            src_mac: backend_mac(i),
            ..Shape::default()
        };
        let b0: SocketAddr = "198.18.1.10:8080".parse().unwrap();
        let b6: SocketAddr = "[2001:db8:1::10]:8080".parse().unwrap();
        let d0: SocketAddr = "198.18.1.12:80".parse().unwrap();
        #[rustfmt::skip]
        let steps: Vec<L4Step> = vec![
            ("nat SYN", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b0, l4(1, 0, 0, 0, 0))]),
            ("nat SYN retransmit", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b0, l4(1, 0, 0, 0, 0))]),
            ("nat SYN+ACK reply", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), SYN | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 1, 0, 0, 0))]),
            ("client ACK", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), ACK, inn, XDP_REDIRECT, vec![(b0, l4(0, 0, 0, 0, 1))]),
            ("client data", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), ACK | PSH, inn, XDP_REDIRECT, vec![]),
            ("backend data", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), ACK | PSH, out, XDP_REDIRECT, vec![]),
            ("client FIN", client("198.18.0.100:80", PROTO_TCP), from_client.clone(), FIN | ACK, inn, XDP_REDIRECT, vec![]),
            ("backend FIN", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), FIN | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 0, 1, 0))]),
            ("backend RST+ACK (refused)", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), RST | ACK, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 1, 0, 0))]),
            ("backend RST", from_backend("198.18.1.10:8080", PROTO_TCP), from(0), RST, out, XDP_REDIRECT, vec![(b0, l4(0, 0, 1, 0, 0))]),
            // The agent's own health check of b0: not a client's connection.
            ("backend SYN+ACK to the gateway itself", flow("198.18.1.10:8080", "198.18.1.1:41000", PROTO_TCP), from(0), SYN | ACK, out, XDP_PASS, vec![]),
            ("nat ipv6 SYN", flow("[2001:db8::2]:41000", "[2001:db8::100]:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(b6, l4(1, 0, 0, 0, 0))]),
            ("nat ipv6 SYN+ACK", flow("[2001:db8:1::10]:8080", "[2001:db8::2]:41000", PROTO_TCP), from(0), SYN | ACK, out, XDP_REDIRECT, vec![(b6, l4(0, 1, 0, 0, 0))]),
            ("udp to a nat VIP", client("198.18.0.100:53", PROTO_UDP), from_client.clone(), 0, inn, XDP_REDIRECT, vec![]),
            ("udp reply", from_backend("198.18.1.11:5353", PROTO_UDP), from(1), 0, out, XDP_REDIRECT, vec![]),
            ("dsr SYN", client("198.18.0.101:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_REDIRECT, vec![(d0, l4(1, 0, 0, 0, 0))]),
            ("dsr ACK", client("198.18.0.101:80", PROTO_TCP), from_client.clone(), ACK, inn, XDP_REDIRECT, vec![(d0, l4(0, 0, 0, 0, 1))]),
            // A dsr backend answers the client directly; a packet from it that does
            // cross the gateway is not a reply the gateway translates or counts.
            ("dsr backend SYN+ACK", from_backend("198.18.1.12:80", PROTO_TCP), from(2), SYN | ACK, out, XDP_PASS, vec![]),
            ("SYN with no backend", client("198.18.0.106:80", PROTO_TCP), from_client.clone(), SYN, inn, XDP_DROP, vec![]),
        ];
        for (what, f, shape, tcp_flags, ingress, action, want) in steps {
            let before = gw.counters();
            let (got, _) = gw.run(&frame(&f, &Shape { tcp_flags, ..shape }), ingress);
            assert_eq!(
                got,
                action,
                "{what}: action {}",
                keystone_common::xdp_action_name(got)
            );
            assert_eq!(
                l4_deltas(&before, &gw.counters()),
                want,
                "{what}: L4 counters"
            );
        }
        let total: Vec<_> = l4_deltas(&start, &gw.counters());
        assert_eq!(
            total,
            vec![
                (b0, l4(2, 1, 2, 1, 1)),
                (d0, l4(1, 0, 0, 0, 1)),
                (b6, l4(1, 1, 0, 0, 0)),
            ],
            "totals"
        );
    });
}
