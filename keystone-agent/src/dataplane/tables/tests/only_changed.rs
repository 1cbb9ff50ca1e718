//! An apply looks only at the VIPs whose spec changed: a weight change on one tenant
//! builds, writes and flips that tenant's table and leaves every other one alone.

use super::*;

/// Three VIPs of `n` backends each, weight 1; `heavy` gives the first VIP's first
/// backend that weight.
fn three(n: u32, heavy: u32) -> Vec<VipSpec> {
    (0..3u32)
        .map(|v| {
            vip(
                &format!("198.18.0.{}:80", v + 1),
                (0..n)
                    .map(|b| {
                        let w = if v == 0 && b == 0 { heavy } else { 1 };
                        backend(&format!("198.18.{}.{}:8080", 2 + v, b + 1), w)
                    })
                    .collect(),
            )
        })
        .collect()
}

/// Whether `op` writes something that belongs to `vip` (its VIPS entry, its
/// backends' slots or reverse entries, or ring entries of its two stripes).
fn touches(t: &Tables<FakeMaps>, vip: &VipSpec, op: &Op) -> bool {
    let index = t.vip_index(&vip.vip).expect("programmed");
    let slots: Vec<u32> = vip
        .backends
        .iter()
        .filter_map(|b| t.backend_slot(&vip.vip, &b.endpoint))
        .collect();
    let in_stripes = |entry: u32| {
        (0..2).any(|s| {
            t.stripe_region(index, s)
                .is_some_and(|r| (r.base..r.base + r.len).contains(&entry))
        })
    };
    match op {
        Op::SetVip(e, _) | Op::RemoveVip(e) => *e == vip.vip,
        Op::SetBackend(slot, _) | Op::ResetBackendStats(slot) => slots.contains(slot),
        Op::SetReverse(_, rev) => rev.vip == vip.vip,
        Op::RemoveReverse(b) => vip.backends.iter().any(|x| x.endpoint == *b),
        Op::SetRings(entries) => entries.iter().any(|&(entry, _)| in_stripes(entry)),
        Op::ResetVipStats(i) => *i == index,
        Op::SetVipAddr(..) | Op::RemoveVipAddr(..) | Op::SetFilter(..) => false,
    }
}

#[test]
fn a_weight_change_on_one_vip_leaves_the_others_alone() {
    let mut t = tables();
    apply(&mut t, &three(100, 1));
    let before: Vec<VipWork> = three(100, 1)
        .iter()
        .map(|s| t.vip_work(&s.vip).expect("programmed"))
        .collect();

    let changed = three(100, 5);
    let ops = apply(&mut t, &changed);

    let work = |t: &Tables<FakeMaps>, i: usize| t.vip_work(&changed[i].vip).expect("programmed");
    assert_eq!(
        work(&t, 0).builds,
        before[0].builds + 1,
        "the changed VIP's table"
    );
    assert!(
        ops.iter()
            .any(|op| matches!(op, Op::SetVip(e, _) if *e == changed[0].vip)),
        "the changed VIP flips: {ops:?}"
    );
    for (i, other) in changed.iter().enumerate().skip(1) {
        assert_eq!(
            work(&t, i),
            before[i],
            "{}: an unchanged VIP is neither looked at nor rebuilt",
            other.name
        );
        let foreign: Vec<&Op> = ops.iter().filter(|op| touches(&t, other, op)).collect();
        assert!(foreign.is_empty(), "{}: written {foreign:?}", other.name);
    }
    // The same state again looks at nothing.
    let ops = apply(&mut t, &changed);
    assert!(ops.is_empty(), "{ops:?}");
    assert_eq!(work(&t, 0).evaluated, before[0].evaluated + 1);
}

/// A failed apply forgets what was applied: the next one looks at every VIP, so a
/// write that failed half-way is made again.
#[test]
fn after_a_refused_apply_every_vip_is_looked_at_again() {
    let mut t = tables();
    let specs = three(10, 1);
    apply(&mut t, &specs);
    let mut bad = three(10, 1);
    bad[2].ring_size = 1000; // not a prime: refused before any write
    t.apply(&bad).expect_err("a ring size that is not a prime");
    let before: Vec<u64> = specs
        .iter()
        .map(|s| t.vip_work(&s.vip).expect("programmed").evaluated)
        .collect();
    assert!(
        apply(&mut t, &specs).is_empty(),
        "nothing changed in the maps"
    );
    for (s, n) in specs.iter().zip(before) {
        assert_eq!(t.vip_work(&s.vip).expect("programmed").evaluated, n + 1);
    }
}
