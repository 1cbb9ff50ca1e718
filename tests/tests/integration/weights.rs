//! Weight changes: established connections keep their backend, canary steps and a
//! blue/green flip follow the weights, a removed backend gets no new flows.

use super::*;

/// A canary step (90/10 → 0/100) must not move established connections: held
/// keep-alive connections keep answering from the backend they started on, while
/// new connections follow the new weights.
#[test]
fn established_connections_keep_their_backend_across_a_weight_change() {
    let vip = v4(80);
    let (mut lab, mut cfg) = web_lab(keystone_lab::test_bins!(), vip, W90_10);
    const HELD: u32 = 8;
    let r = lab.spawn_hold("hold", vip, HELD, 120, 50);
    ok(&lab, "starting ks-client --hold", r);

    // Wait until every held connection has answered a few times; note its backend.
    let before: Vec<String> = ok(
        &lab,
        "held connections answering",
        lab.held_answers("hold", HELD, 0, 3, Duration::from_secs(30)),
    );
    assert!(
        before.iter().any(|b| b == "blue"),
        "no held connection landed on blue (90 %), so the test proves nothing: {before:?}"
    );
    let seen_before = hold_events(&lab, "hold").len();

    cfg.tenant_mut("web")
        .set_weights(&[("blue", 0), ("green", 100)]);
    ok(&lab, "writing the config", lab.write_config(&cfg));
    ok(&lab, "keystone-ctl reload", lab.reload());

    let s = tcp(&lab, vip, FLOWS);
    assert_eq!(
        s.by_backend.get("blue"),
        None,
        "new connections still reach blue after its weight went to 0\n{}\n{}",
        s.table(&[("blue", 0), ("green", 100)]),
        lab.test_diagnostics()
    );
    assert_split(
        &lab,
        "new connections after 0/100",
        &s,
        &[("blue", 0), ("green", 100)],
    );

    // The held connections keep answering, each from its first backend, with no error.
    let after: Vec<String> = ok(
        &lab,
        "held connections answering after the reload",
        lab.held_answers("hold", HELD, seen_before, 3, Duration::from_secs(30)),
    );
    let events = hold_events(&lab, "hold");
    assert_holds_unbroken(&lab, "held connections failed", &events);
    assert_eq!(
        before,
        after,
        "held connections changed backend after the reload\n{}",
        lab.test_diagnostics()
    );
    for e in &events {
        assert_eq!(
            e.outcome.as_deref().ok(),
            Some(before[e.conn as usize].as_str()),
            "connection {} moved: {e:?}",
            e.conn
        );
    }
    let r = lab.stop("hold");
    ok(&lab, "stopping ks-client --hold", r);
}

/// The demo's rollout (100/0 → 90/10 → 50/50 → 0/100 → 100/0), each step a config
/// edit plus `keystone-ctl reload`, from one client: every step's new connections
/// follow that step's weights (a backend at weight 0 gets none), none fails.
#[test]
fn canary_steps_and_blue_green_flip_follow_the_weights() {
    let vip = v4(80);
    let (_, blue, green) = ROLLOUT[0];
    let (lab, mut cfg) = web_lab(
        keystone_lab::test_bins!(),
        vip,
        &[("blue", blue), ("green", green)],
    );
    for (i, (what, blue, green)) in ROLLOUT.iter().enumerate() {
        let weights = [("blue", *blue), ("green", *green)];
        if i > 0 {
            cfg.tenant_mut("web").set_weights(&weights);
            ok(&lab, "writing the config", lab.write_config(&cfg));
            ok(&lab, "keystone-ctl reload", lab.reload());
        }
        let s = tcp(&lab, vip, FLOWS);
        for (name, w) in weights {
            assert!(
                w > 0 || !s.by_backend.contains_key(name),
                "step {what}: {name} has weight 0 but got new connections\n{}\n{}",
                s.table(&weights),
                lab.test_diagnostics()
            );
        }
        assert_split(&lab, &format!("step {}: {what}", i + 1), &s, &weights);
    }
}

/// Removing a backend from the config sends its share of new flows to the others,
/// in proportion to their weights.
#[test]
fn removed_backend_gets_no_new_flows() {
    let vip = v4(80);
    let weights = [("blue", 50), ("green", 25), ("red", 25)];
    let (lab, mut cfg) = web_lab(keystone_lab::test_bins!(), vip, &weights);
    let s = tcp(&lab, vip, FLOWS);
    assert_split(&lab, "three backends 50/25/25", &s, &weights);

    cfg.tenant_mut("web").services.retain(|s| s.name != "green");
    ok(&lab, "writing the config", lab.write_config(&cfg));
    ok(&lab, "keystone-ctl reload", lab.reload());
    let s = tcp(&lab, vip, FLOWS);
    assert_eq!(
        s.by_backend.get("green"),
        None,
        "green was removed but still gets new flows\n{}",
        lab.test_diagnostics()
    );
    assert_split(
        &lab,
        "after removing green",
        &s,
        &[("blue", 50), ("red", 25)],
    );
}
