//! Where tables are placed in the ring array, at the limits and across restarts.

use super::*;

fn small(max_vips: u32, max_backends: u32, ring_entries: u32) -> Tables<FakeMaps> {
    let limits = Limits {
        max_vips,
        max_backends,
        ring_entries,
        ..Limits::default()
    };
    Tables::recover(FakeMaps::default(), limits).expect("empty maps")
}

fn numbered_vips(count: u32, ring_size: u32, backends: u32) -> Vec<VipSpec> {
    (0..count)
        .map(|v| {
            let mut spec = vip(
                &format!("198.18.0.{}:80", v + 1),
                (0..backends)
                    .map(|b| backend(&format!("198.18.{}.{}:80", 2 + v, b + 1), 1))
                    .collect(),
            );
            spec.ring_size = ring_size;
            spec
        })
        .collect()
}

/// Every VIP's live table lies inside the ring array, apart from every other
/// live table, and holds only that VIP's backends.
fn check_live_tables(t: &Tables<FakeMaps>, specs: &[VipSpec]) {
    let mut spans = Vec::new();
    for spec in specs {
        let info = t.maps().vips[&spec.vip];
        assert_eq!(info.ring_size, spec.ring_size);
        let end = u64::from(info.ring_base) + u64::from(info.ring_size);
        assert!(end <= u64::from(t.limits().ring_entries), "{info:?}");
        spans.push((info.ring_base, end));
        let slots: HashSet<u32> = spec
            .backends
            .iter()
            .map(|b| t.backend_slot(&spec.vip, &b.endpoint).expect("slot"))
            .collect();
        for i in 0..info.ring_size {
            assert!(slots.contains(&t.maps().rings[&(info.ring_base + i)]));
        }
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(u64::from(w[1].0) >= w[0].1, "overlapping tables {w:?}");
    }
}

#[test]
fn tables_of_their_own_size_share_the_ring_array() {
    // Room for exactly 3 VIPs × 2 tables of 1009, as the limits check says.
    let mut t = small(4, 16, 6 * SIZE);
    let specs = numbered_vips(3, SIZE, 2);
    apply(&mut t, &specs);
    check_live_tables(&t, &specs);
    // Weight changes write the other table of each VIP and flip, still in room.
    let mut changed = specs.clone();
    for spec in &mut changed {
        spec.backends[0].weight = 3;
    }
    apply(&mut t, &changed);
    check_live_tables(&t, &changed);
    // A 4th VIP would need 2 × 1009 more.
    let err = t
        .apply(&numbered_vips(4, SIZE, 2))
        .expect_err("over limits.ring_entries");
    assert!(err.to_string().contains("limits.ring_entries"), "{err}");
}

#[test]
fn a_vip_changing_table_size_moves_into_free_space() {
    let mut t = small(4, 16, 2 * 1009 + 2 * 2003);
    let mut specs = numbered_vips(2, 1009, 3);
    apply(&mut t, &specs);
    // VIP 0 grows to 2003, VIP 1 shrinks to 503: both fit with 2 tables each.
    specs[0].ring_size = 2003;
    specs[1].ring_size = 503;
    apply(&mut t, &specs);
    check_live_tables(&t, &specs);
    specs[0].backends[1].weight = 5;
    specs[1].backends[1].weight = 5;
    apply(&mut t, &specs);
    check_live_tables(&t, &specs);
    // Removing a VIP frees its tables for a new one.
    let mut next = vec![specs[0].clone()];
    next.extend(numbered_vips(3, 1009, 1).into_iter().skip(2));
    apply(&mut t, &next);
    check_live_tables(&t, &next);
}

#[test]
fn many_vips_with_many_backends_fit_their_limits() {
    let mut t = small(100, 100 * 20, 100 * 2 * 211);
    let specs = numbered_vips(100, 211, 20);
    apply(&mut t, &specs);
    check_live_tables(&t, &specs);
    let err = t
        .apply(&numbered_vips(101, 211, 1))
        .expect_err("over limits.max_vips");
    assert!(matches!(err, ApplyError::TooManyVips { max: 100, .. }));
}

#[test]
fn a_restarted_agent_finds_tables_where_they_were_placed() {
    let mut t = small(4, 16, 6 * SIZE);
    let mut specs = numbered_vips(3, SIZE, 2);
    apply(&mut t, &specs);
    specs[1].backends[0].weight = 4;
    apply(&mut t, &specs);
    let maps = t.maps().clone();
    let mut t2 = Tables::recover(maps, *t.limits()).expect("recover");
    // The tables are unknown after a restart, so each VIP gets a new one; the live
    // ones were reserved, so none is written over while packets read it.
    let before: Vec<VipInfo> = specs.iter().map(|s| t2.maps().vips[&s.vip]).collect();
    specs[2].backends[0].weight = 7;
    apply(&mut t2, &specs);
    check_live_tables(&t2, &specs);
    for spec in &specs {
        let now = t2.maps().vips[&spec.vip];
        for old in &before {
            let apart = now.ring_base + now.ring_size <= old.ring_base
                || old.ring_base + old.ring_size <= now.ring_base;
            assert!(apart, "{now:?} written over the live {old:?}");
        }
    }
}

#[test]
fn a_restarted_agent_keeps_slots_and_tables() {
    let mut t = tables();
    apply(&mut t, &two(1, 1));
    apply(&mut t, &two(2, 1));
    let maps = t.maps().clone();
    let before: Vec<_> = flows().map(|f| maps.pick(&ep(V), &f)).collect();

    let mut t2 = Tables::recover(maps, Limits::default()).expect("recover");
    assert_eq!(
        t2.backend_slot(&ep(V), &ep("198.18.1.10:8080")),
        t.backend_slot(&ep(V), &ep("198.18.1.10:8080"))
    );
    let ops = apply(&mut t2, &two(2, 1));
    assert!(
        !ops.iter().any(|o| matches!(o, Op::SetBackend(..))),
        "backends untouched: {ops:?}"
    );
    let after: Vec<_> = flows().map(|f| t2.maps().pick(&ep(V), &f)).collect();
    assert_eq!(
        before, after,
        "every flow maps to the same slot and generation"
    );
    for f in flows() {
        assert_eq!(
            t2.predict(&ep(V), &f),
            t2.maps().pick(&ep(V), &f).map(|(_, b)| b.endpoint)
        );
    }
}
