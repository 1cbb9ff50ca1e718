//! A drain across a reload, a SIGTERM and a restart: a draining or drained gateway
//! stays withdrawn until `undrain`.

use keystone_lab::{helpers::stop_agent_cleanly, ok};

use super::*;

/// The agent's log line when it configured BIRD with the VIP's route.
fn announced_line() -> String {
    format!("announced=[\"{}\"]", vip4())
}

fn undrain_announces(lab: &Lab, bird: &Bird) {
    let (code, out, err) = ctl(lab, &["undrain"]);
    assert_eq!(code, 0, "keystone-ctl undrain: {out}{err}");
    assert!(out.starts_with("drain: serving\n"), "{out}");
    wait_announced(lab, bird);
}

/// Drained, then reloaded (same config): still drained, the VIP still withdrawn
/// with reason `draining`, BIRD without its route; `undrain` announces it again.
#[test]
fn a_drain_stays_through_a_reload() {
    let (lab, bird) = announcing_gateway(&[]);
    let (code, out, err) = ctl(&lab, &["drain"]);
    assert_eq!(code, 0, "keystone-ctl drain: {out}{err}");
    assert!(out.starts_with("drain: drained\n"), "{out}");
    assert!(!bird.announces(vip4()), "{}", bird.birdc("show route"));

    ok(&lab, "keystone-ctl reload", lab.reload());
    let status = announce_status(&lab).expect("status.announce");
    let vip = status.vips.first();
    assert_eq!(status.drain, DrainState::Drained, "{status:?}");
    assert_eq!(vip.map(|v| v.announced), Some(false), "{status:?}");
    assert_eq!(
        vip.map(|v| v.reason),
        Some(AnnounceReason::Draining),
        "{status:?}"
    );
    assert!(!bird.announces(vip4()), "{}", bird.birdc("show route"));
    let log = lab.stderr_of("agent").unwrap_or_default();
    assert_eq!(
        log.matches(&announced_line()).count(),
        1,
        "announced once, at start, never again after the drain:\n{log}"
    );
    undrain_announces(&lab, &bird);
}

/// SIGTERM while a drain waits (new connections keep arriving: there is no router
/// here to stop sending them, so it would wait its whole 120 s): the agent exits at
/// once, 0, with the VIP withdrawn. Started again, it is still draining and never
/// announces until `undrain`.
#[test]
fn sigterm_mid_drain_exits_at_once_and_the_restarted_gateway_stays_withdrawn() {
    let (mut lab, bird) = announcing_gateway(&[]);
    let traffic = ok(
        &lab,
        "starting new connections",
        lab.client_loop(vip(), 20, Duration::from_secs(120)),
    );
    let (code, out, err) = ctl(&lab, &["drain", "--no-wait", "--timeout", "120s"]);
    assert_eq!(code, 0, "keystone-ctl drain: {out}{err}");
    assert!(out.starts_with("drain: draining\n"), "{out}");
    let since = std::time::Instant::now();
    let r = traffic.wait_batches_since(since, 2, SHORT);
    ok(&lab, "new connections during the drain", r);
    let status = announce_status(&lab).expect("status.announce");
    assert_eq!(status.drain, DrainState::Draining, "{status:?}");

    // The lab's stop gives the agent a few seconds, then SIGKILLs: exit 0 means it
    // did not wait for the drain.
    stop_agent_cleanly(&mut lab);
    drop(traffic);
    assert!(!bird.file_lists(vip4()), "the routes file lists the VIP");
    assert!(!bird.announces(vip4()), "{}", bird.birdc("show route"));

    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    wait(&lab, "the restarted agent to configure BIRD", || {
        last_configure(&lab).is_some_and(|c| c.ok)
    });
    let status = announce_status(&lab).expect("status.announce");
    assert_ne!(status.drain, DrainState::Serving, "{status:?}");
    assert_eq!(
        status.vips.first().map(|v| v.reason),
        Some(AnnounceReason::Draining),
        "{status:?}"
    );
    assert!(!bird.announces(vip4()), "{}", bird.birdc("show route"));
    let log = lab.stderr_of("agent").unwrap_or_default();
    assert!(
        !log.contains(&announced_line()),
        "the restarted agent announced a drained gateway:\n{log}"
    );
    undrain_announces(&lab, &bird);
}
