//! Reloads that take the `bgp:` block away or point it at another BIRD.

use keystone_lab::ok;

use super::*;

/// Reloads the running agent onto `text`.
fn reload_to(lab: &Lab, text: &str) {
    ok(lab, "writing the new config", lab.write_config_text(text));
    ok(lab, "keystone-ctl reload", lab.reload());
}

/// A reload that removes `bgp:`: the agent empties its routes file and reconfigures
/// BIRD (which would otherwise keep announcing the VIP for good), then reports no
/// announcements; the VIP still forwards.
#[test]
fn a_reload_without_bgp_withdraws_the_vips_from_bird() {
    let (lab, bird) = announcing_gateway(&[]);
    reload_to(&lab, &config(&lab, None));
    wait(&lab, "BIRD to lose the VIP's route", || {
        !bird.announces(vip4()) && !bird.file_lists(vip4())
    });
    wait(&lab, "status to show no announcements", || {
        announce_status(&lab).is_none()
    });
    let log = lab.stderr_of("agent").unwrap_or_default();
    assert!(
        log.contains("the `bgp:` block is gone") && log.contains(WITHDRAWN_ALL),
        "the log should say why BIRD was emptied:\n{log}"
    );
    assert_forwarding(&lab, "after the reload", 50);
}

/// A reload onto another BIRD (another control socket and routes file): the old
/// file is emptied and the old BIRD loses the route, the new one gets it.
#[test]
fn a_reload_to_another_bird_moves_the_routes() {
    let (mut lab, old) = announcing_gateway(&[]);
    let new = Bird::new(&lab, "bird-new", lab.state_dir());
    new.start(&mut lab);
    reload_to(&lab, &config(&lab, Some(&new)));
    wait(&lab, "the new BIRD to hold the VIP's route", || {
        new.announces(vip4()) && new.file_lists(vip4())
    });
    wait(&lab, "the old BIRD to lose it", || {
        !old.announces(vip4()) && !old.file_lists(vip4())
    });
    // BIRD holds the route a moment before the agent records that it took it.
    wait(&lab, "the status to show the VIP announced", || {
        first_vip(&lab).is_some_and(|v| v.announced)
    });
}
