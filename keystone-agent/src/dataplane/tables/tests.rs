use keystone_common::{PROTO_TCP, backend_flags::UP, limits::ring::NO_BACKEND, mode};

use super::*;
use crate::dataplane::BackendSpec;

const SIZE: u32 = 1009;

fn ep(s: &str) -> Endpoint {
    Endpoint::new(s.parse().expect("socket address"), PROTO_TCP)
}

fn backend(addr: &str, weight: u32) -> BackendSpec {
    BackendSpec {
        name: addr.into(),
        endpoint: ep(addr),
        weight,
        up: true,
    }
}

fn vip(addr: &str, backends: Vec<BackendSpec>) -> VipSpec {
    VipSpec {
        name: format!("vip {addr}"),
        vip: ep(addr),
        mode: mode::NAT,
        flags: 0,
        ring_size: SIZE,
        backends,
    }
}

const V: &str = "198.18.0.100:80";

fn two(w0: u32, w1: u32) -> Vec<VipSpec> {
    vec![vip(
        V,
        vec![
            backend("198.18.1.10:8080", w0),
            backend("198.18.1.11:8080", w1),
        ],
    )]
}

fn tables() -> Tables<FakeMaps> {
    Tables::recover(FakeMaps::default(), Limits::default()).expect("empty maps")
}

/// Applies and returns the operations it did.
fn apply(t: &mut Tables<FakeMaps>, specs: &[VipSpec]) -> Vec<Op> {
    t.maps_mut().log.clear();
    t.apply(specs).unwrap_or_else(|e| panic!("apply: {e}"));
    t.maps().log.clone()
}

/// The index of the first operation `is` picks (`what` names it when there is none).
fn first(ops: &[Op], what: &str, is: impl Fn(&Op) -> bool) -> usize {
    ops.iter()
        .position(is)
        .unwrap_or_else(|| panic!("{what}: none in {ops:?}"))
}

/// The index of the last operation `is` picks.
fn last(ops: &[Op], what: &str, is: impl Fn(&Op) -> bool) -> usize {
    ops.iter()
        .rposition(is)
        .unwrap_or_else(|| panic!("{what}: none in {ops:?}"))
}

/// From `two(1, 1)`: 198.18.1.10 leaves, then 198.18.1.12 joins (in the freed slot).
fn first_leaves_third_joins(t: &mut Tables<FakeMaps>) {
    apply(t, &[vip(V, vec![backend("198.18.1.11:8080", 1)])]);
    apply(
        t,
        &[vip(
            V,
            vec![
                backend("198.18.1.11:8080", 1),
                backend("198.18.1.12:8080", 1),
            ],
        )],
    );
}

/// Ring entries written by `ops`, over all their batches.
fn ring_writes(ops: &[Op]) -> usize {
    ops.iter()
        .map(|o| match o {
            Op::SetRings(entries) => entries.len(),
            _ => 0,
        })
        .sum()
}

fn flows() -> impl Iterator<Item = FlowKey> {
    (0..2000u32).map(|i| FlowKey {
        src: [
            u32::from_ne_bytes([198, 19, (i >> 8) as u8, i as u8]),
            0,
            0,
            0,
        ],
        dst: ep(V).addr,
        src_port: ((i * 7919) as u16).to_be(),
        dst_port: 80u16.to_be(),
        proto: PROTO_TCP,
        family: keystone_common::FAMILY_IPV4,
        _pad: [0; 2],
    })
}

fn slot(t: &Tables<FakeMaps>, backend: &str) -> u32 {
    t.backend_slot(&ep(V), &ep(backend))
        .expect("backend has a slot")
}

#[test]
fn first_apply_writes_the_stripe_then_flips_with_one_vip_write() {
    let mut t = tables();
    let ops = apply(&mut t, &two(1, 1));
    let flip = first(&ops, "a VIPS write", |o| matches!(o, Op::SetVip(..)));
    assert_eq!(
        ops.iter().filter(|o| matches!(o, Op::SetVip(..))).count(),
        1
    );
    let last_ring = last(&ops, "ring writes", |o| matches!(o, Op::SetRings(..)));
    let first_backend = first(&ops, "backend writes", |o| matches!(o, Op::SetBackend(..)));
    assert!(
        first_backend < last_ring && last_ring < flip,
        "backends, then stripe, then flip: {ops:?}"
    );
    assert_eq!(ring_writes(&ops), SIZE as usize);
    let Op::SetVip(_, info) = ops[flip] else {
        unreachable!()
    };
    assert_eq!((info.ring_slot, info.ring_size), (1, SIZE));
    // Every entry of the live stripe names an up backend of this VIP.
    for i in 0..SIZE {
        let s = t.maps().rings[&(info.ring_base + i)];
        assert!(s == slot(&t, "198.18.1.10:8080") || s == slot(&t, "198.18.1.11:8080"));
    }
    // Addresses and reverse NAT are in place before the flip.
    assert!(
        ops[..flip]
            .iter()
            .any(|o| matches!(o, Op::SetVipAddr(_, 1)))
    );
    assert_eq!(
        ops[..flip]
            .iter()
            .filter(|o| matches!(o, Op::SetReverse(..)))
            .count(),
        2
    );
}

#[test]
fn unchanged_config_writes_nothing() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    assert_eq!(apply(&mut t, &two(1, 1)), vec![]);
}

#[test]
fn only_changed_entries_are_written_and_flips_alternate() {
    let mut t = tables();
    apply(&mut t, &two(1, 1)); // stripe 1: table A
    let ops = apply(&mut t, &two(3, 1)); // stripe 0 was never written: all of it
    assert_eq!(ring_writes(&ops), SIZE as usize);
    let a: Vec<u32> = (0..SIZE)
        .map(|i| t.maps().rings[&(t.stripe_region(0, 1).unwrap().base + i)])
        .collect();
    let b: Vec<u32> = (0..SIZE)
        .map(|i| t.maps().rings[&(t.stripe_region(0, 0).unwrap().base + i)])
        .collect();
    assert_eq!(t.maps().vips[&ep(V)].ring_slot, 0);

    // Back to A: stripe 1 already holds it, so only the flip.
    let ops = apply(&mut t, &two(1, 1));
    assert_eq!(ring_writes(&ops), 0, "{ops:?}");
    assert_eq!(ops.len(), 1);
    assert!(matches!(
        ops[0],
        Op::SetVip(_, VipInfo { ring_slot: 1, .. })
    ));

    // A third table into stripe 0: only entries that differ from B.
    let ops = apply(&mut t, &two(2, 1));
    let c: Vec<u32> = (0..SIZE)
        .map(|i| t.maps().rings[&(t.stripe_region(0, 0).unwrap().base + i)])
        .collect();
    let differ = b.iter().zip(&c).filter(|(x, y)| x != y).count();
    assert_eq!(ring_writes(&ops), differ);
    assert!(
        differ > 0 && differ < SIZE as usize / 2,
        "{differ} entries changed"
    );
    assert_ne!(a, c);
}

#[test]
fn a_table_change_writes_its_ring_entries_in_one_batch() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    apply(&mut t, &two(3, 1));
    // Stripe 1 holds two(1, 1): the change writes only the entries that differ, and
    // all of them in one batch (one syscall on the real maps), before the flip.
    let ops = apply(&mut t, &two(2, 1));
    let batches: Vec<usize> = ops
        .iter()
        .filter_map(|o| match o {
            Op::SetRings(entries) => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert!(
        batches[0] > 0 && batches[0] < SIZE as usize / 2,
        "{batches:?}"
    );
    let batch = first(&ops, "the batch", |o| matches!(o, Op::SetRings(..)));
    let flip = first(&ops, "the flip", |o| matches!(o, Op::SetVip(..)));
    assert!(batch < flip, "{ops:?}");
}

#[test]
fn weight_zero_keeps_the_slot_up_and_out_of_the_table() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    let b0 = slot(&t, "198.18.1.10:8080");
    apply(&mut t, &two(0, 1));
    assert_eq!(slot(&t, "198.18.1.10:8080"), b0, "slot is stable");
    assert_ne!(
        t.maps().backends[&b0].flags & UP,
        0,
        "weight 0 keeps established flows"
    );
    let info = t.maps().vips[&ep(V)];
    assert!((0..SIZE).all(|i| t.maps().rings[&(info.ring_base + i)] != b0));
}

#[test]
fn removal_clears_up_and_reverse_after_the_flip() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    let b0 = slot(&t, "198.18.1.10:8080");
    let mut spec = two(1, 1);
    spec[0].backends.remove(0);
    let ops = apply(&mut t, &spec);
    assert_eq!(t.maps().backends[&b0].flags & UP, 0);
    assert!(!t.maps().reverse.contains_key(&ep("198.18.1.10:8080")));
    assert_eq!(t.backend_slot(&ep(V), &ep("198.18.1.10:8080")), None);
    let flip = first(&ops, "flip", |o| matches!(o, Op::SetVip(..)));
    let down = first(
        &ops,
        "b0 down",
        |o| matches!(o, Op::SetBackend(s, _) if *s == b0),
    );
    assert!(
        flip < down,
        "the new table is live before the slot goes down: {ops:?}"
    );
    assert!(
        ops[flip..]
            .iter()
            .any(|o| matches!(o, Op::RemoveReverse(_)))
    );
}

#[test]
fn down_backends_keep_their_slot_and_lose_up_after_the_flip() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    let b0 = slot(&t, "198.18.1.10:8080");
    let mut spec = two(1, 1);
    spec[0].backends[0].up = false;
    let ops = apply(&mut t, &spec);
    assert_eq!(slot(&t, "198.18.1.10:8080"), b0);
    assert_eq!(t.maps().backends[&b0].flags & UP, 0);
    let flip = first(&ops, "flip", |o| matches!(o, Op::SetVip(..)));
    let down = first(
        &ops,
        "b0 down",
        |o| matches!(o, Op::SetBackend(s, _) if *s == b0),
    );
    assert!(flip < down, "{ops:?}");
    // Back up: same slot, same generation (same backend).
    let gen_before = t.slot_generation(b0);
    apply(&mut t, &two(1, 1));
    assert_ne!(t.maps().backends[&b0].flags & UP, 0);
    assert_eq!(t.slot_generation(b0), gen_before);
}

#[test]
fn a_slot_given_to_another_backend_gets_a_new_generation() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    let b0 = slot(&t, "198.18.1.10:8080");
    let g0 = t.maps().backends[&b0].generation;
    first_leaves_third_joins(&mut t);
    assert_eq!(slot(&t, "198.18.1.12:8080"), b0, "the freed slot is reused");
    let b = t.maps().backends[&b0];
    assert_eq!(b.endpoint, ep("198.18.1.12:8080"));
    assert_eq!(b.generation, g0 + 1);
    assert_ne!(b.flags & UP, 0);
    assert!(
        t.maps().log.contains(&Op::ResetBackendStats(b0)),
        "new occupant starts with zero counters"
    );
}

#[test]
fn reverse_entries_carry_the_backend_slot() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    for b in ["198.18.1.10:8080", "198.18.1.11:8080"] {
        assert_eq!(t.maps().reverse[&ep(b)].backend_slot, slot(&t, b), "{b}");
    }
    // b0 leaves, b2 takes its slot, b0 comes back in another slot: the reply
    // path must count each backend's answers under its own slot.
    let b0 = slot(&t, "198.18.1.10:8080");
    first_leaves_third_joins(&mut t);
    assert_eq!(slot(&t, "198.18.1.12:8080"), b0);
    apply(
        &mut t,
        &[vip(
            V,
            vec![
                backend("198.18.1.10:8080", 1),
                backend("198.18.1.11:8080", 1),
                backend("198.18.1.12:8080", 1),
            ],
        )],
    );
    assert_ne!(slot(&t, "198.18.1.10:8080"), b0);
    for b in ["198.18.1.10:8080", "198.18.1.11:8080", "198.18.1.12:8080"] {
        assert_eq!(t.maps().reverse[&ep(b)].backend_slot, slot(&t, b), "{b}");
    }
}

#[test]
fn a_slot_freed_in_the_same_apply_is_not_reused_by_it() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    let b0 = slot(&t, "198.18.1.10:8080");
    apply(
        &mut t,
        &[vip(
            V,
            vec![
                backend("198.18.1.11:8080", 1),
                backend("198.18.1.12:8080", 1),
            ],
        )],
    );
    assert_ne!(slot(&t, "198.18.1.12:8080"), b0);
}

#[test]
fn removed_vips_and_shared_addresses() {
    let mut t = tables();
    let v2 = vip("198.18.0.100:443", vec![backend("198.18.1.20:8443", 1)]);
    let mut both = two(1, 1);
    both.push(v2.clone());
    apply(&mut t, &both);
    let addr = VipAddr::from(&ep(V));
    assert_eq!(t.maps().vip_addrs[&addr], 2);
    let slot20 = t
        .backend_slot(&v2.vip, &ep("198.18.1.20:8443"))
        .expect("slot");
    let ops = apply(&mut t, &two(1, 1));
    assert!(ops.contains(&Op::RemoveVip(v2.vip)));
    assert_eq!(t.maps().vip_addrs[&addr], 1);
    assert_eq!(t.maps().backends[&slot20].flags & UP, 0);
    assert!(!t.maps().reverse.contains_key(&ep("198.18.1.20:8443")));
    apply(&mut t, &[]);
    assert!(
        t.maps().vips.is_empty() && t.maps().vip_addrs.is_empty() && t.maps().reverse.is_empty()
    );
    assert!(t.maps().backends.values().all(|b| b.flags & UP == 0));
}

fn filter_has(t: &Tables<FakeMaps>, addr: &Endpoint, bit: fn(&[u32; 4]) -> u32) -> bool {
    let word = t
        .maps()
        .filter
        .get(&addr_filter::word(&addr.addr))
        .copied()
        .unwrap_or(0);
    word & bit(&addr.addr) != 0
}

#[test]
fn prefilter_covers_vips_and_nat_backends_while_they_exist() {
    let mut t = tables();
    let ops = apply(&mut t, &two(1, 1));
    let first_filter = first(&ops, "filter written", |o| matches!(o, Op::SetFilter(..)));
    let first_vip = first(&ops, "flip", |o| matches!(o, Op::SetVip(..)));
    let first_rev = first(&ops, "reverse", |o| matches!(o, Op::SetReverse(..)));
    assert!(
        first_filter < first_vip && first_filter < first_rev,
        "bits set first: {ops:?}"
    );
    assert!(filter_has(&t, &ep(V), addr_filter::vip_bit));
    assert!(filter_has(
        &t,
        &ep("198.18.1.10:8080"),
        addr_filter::backend_bit
    ));
    assert!(filter_has(
        &t,
        &ep("198.18.1.11:8080"),
        addr_filter::backend_bit
    ));
    let ops = apply(&mut t, &[]);
    let last_filter = last(&ops, "cleared", |o| matches!(o, Op::SetFilter(..)));
    assert_eq!(last_filter, ops.len() - 1, "bits cleared last: {ops:?}");
    assert!(t.maps().filter.values().all(|&w| w == 0));
}

#[test]
fn prediction_matches_the_maps() {
    let mut t = tables();
    apply(&mut t, &two(3, 1));
    apply(&mut t, &two(1, 2));
    for f in flows() {
        let (_, b) = t.maps().pick(&ep(V), &f).expect("a backend");
        assert_eq!(t.predict(&ep(V), &f), Some(b.endpoint));
    }
}

#[test]
fn no_eligible_backend_means_ring_size_zero() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    let ops = apply(&mut t, &two(0, 0));
    assert_eq!(ring_writes(&ops), 0);
    assert_eq!(t.maps().vips[&ep(V)].ring_size, 0);
    assert_eq!(t.predict(&ep(V), &flows().next().unwrap()), None);
    // Maglev's "no backend" never reaches the kernel.
    assert!(t.maps().rings.values().all(|&s| s != NO_BACKEND));
}

#[test]
fn bad_input_is_rejected_before_any_write() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    let cases: Vec<(Vec<VipSpec>, &str)> = vec![
        (
            vec![VipSpec {
                ring_size: 1000,
                ..two(1, 1).remove(0)
            }],
            "prime",
        ),
        (
            vec![VipSpec {
                ring_size: 1_048_583,
                ..two(1, 1).remove(0)
            }],
            "prime",
        ),
        (
            // 4 × 2 × 655,373 entries: more than the default ring array.
            (0..4)
                .map(|i| VipSpec {
                    ring_size: 655_373,
                    ..vip(&format!("198.18.0.{}:80", 200 + i), vec![])
                })
                .collect(),
            "limits.ring_entries",
        ),
        ([two(1, 1), two(1, 1)].concat(), "twice"),
        (
            vec![vip(
                V,
                vec![
                    backend("198.18.1.10:8080", 1),
                    backend("198.18.1.10:8080", 2),
                ],
            )],
            "twice",
        ),
        (
            vec![vip(V, vec![backend("[2001:db8::10]:8080", 1)])],
            "family",
        ),
        (
            vec![
                two(1, 1).remove(0),
                vip("198.18.0.101:80", vec![backend("198.18.1.10:8080", 1)]),
            ],
            "two nat-mode VIPs",
        ),
        (
            vec![VipSpec {
                mode: 7,
                ..two(1, 1).remove(0)
            }],
            "mode",
        ),
    ];
    for (spec, want) in cases {
        t.maps_mut().log.clear();
        let err = t.apply(&spec).expect_err("invalid config");
        assert!(
            err.to_string().contains(want),
            "{err} should mention {want:?}"
        );
        assert_eq!(t.maps().log, vec![], "nothing written for: {err}");
    }
    // DSR VIPs may share a backend with a nat VIP: no reverse entry is needed.
    let mut dsr = vip("198.18.0.101:80", vec![backend("198.18.1.10:8080", 1)]);
    dsr.mode = mode::DSR;
    t.apply(&[two(1, 1).remove(0), dsr])
        .expect("dsr VIP sharing a backend");
}

#[test]
fn too_many_vips_and_backends() {
    let mut t = tables();
    let Limits {
        max_vips,
        max_backends,
        ..
    } = Limits::default();
    let vips: Vec<VipSpec> = (0..=max_vips)
        .map(|i| vip(&format!("198.18.0.{}:80", i + 1), vec![]))
        .collect();
    assert!(matches!(
        t.apply(&vips),
        Err(ApplyError::TooManyVips { .. })
    ));
    let many: Vec<BackendSpec> = (0..=max_backends)
        .map(|i| backend(&format!("198.18.{}.{}:80", 2 + i / 250, i % 250), 1))
        .collect();
    assert!(matches!(
        t.apply(&[vip(V, many)]),
        Err(ApplyError::TooManyBackends { .. })
    ));
    assert!(t.maps().log.is_empty());
}

mod hash;
mod only_changed;
mod placement;
