//! How the agent's process stops, seen from BIRD and from the client.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use keystone_lab::{
    helpers::{kill_agent, stop_agent_cleanly},
    ok,
};

use super::*;

/// SIGTERM without `--keep-forwarding`: the routes file loses the VIP, BIRD no longer
/// holds its route, and the agent's log shows BIRD took the empty file before the
/// first program was detached (the routers stop sending while forwarding still works).
#[test]
fn sigterm_withdraws_through_bird_before_the_program_is_detached() {
    let (mut lab, bird) = announcing_gateway(&[]);
    let log = stop_agent_for_log(&mut lab);
    assert!(
        !bird.file_lists(vip4()),
        "the routes file still lists the VIP"
    );
    assert!(!bird.announces(vip4()), "{}", bird.birdc("show route"));
    let withdrawn = log.find(WITHDRAWN_ALL);
    let detached = log.find("detached the program");
    assert!(
        withdrawn.is_some() && detached.is_some() && withdrawn < detached,
        "BIRD must be reconfigured before the data plane goes; the agent's log:\n{log}"
    );
    let plane = ok(&lab, "reading the data plane", lab.plane_view());
    assert!(plane.is_empty(), "the program is still attached: {plane:?}");
}

/// `--keep-forwarding`: the agent exits with the routes as they were and the program
/// still forwards new connections.
#[test]
fn keep_forwarding_keeps_the_routes_and_the_forwarding() {
    let (mut lab, bird) = announcing_gateway(&["--keep-forwarding"]);
    stop_agent_cleanly(&mut lab);
    assert!(bird.file_lists(vip4()), "the routes file lost the VIP");
    assert!(bird.announces(vip4()), "{}", bird.birdc("show route"));
    assert_forwarding(&lab, "after the agent exited with --keep-forwarding", 50);
}

/// SIGKILL: the routes stay (the pinned program still forwards). The agent started
/// again adopts them: BIRD holds the VIP's route at every look while it starts, and
/// the new agent never configures BIRD without it.
#[test]
fn sigkill_keeps_the_routes_and_a_restart_never_withdraws_them() {
    restart_after_sigkill_keeps_the_routes(|_| {});
}

/// The same restart with no saved health (`health.json` gone): the VIP stays
/// announced, as "kept until health is known", while the pinned program forwards and
/// the first checks run; then it is announced as ready.
#[test]
fn a_restart_without_saved_health_keeps_the_routes_until_health_is_known() {
    restart_after_sigkill_keeps_the_routes(|lab| {
        let health = lab.agent_state_dir().join("health.json");
        let r = std::fs::remove_file(&health);
        ok(lab, &format!("removing {}", health.display()), r);
    });
}

/// SIGKILL, then `before_restart`, then the agent started again: BIRD holds the
/// VIP's route at every look while it starts, and the new agent never configures
/// BIRD without it.
fn restart_after_sigkill_keeps_the_routes(before_restart: impl FnOnce(&Lab)) {
    let (mut lab, bird) = announcing_gateway(&[]);
    wait(&lab, "the agent to save its backends' health", || {
        lab.agent_state_dir().join("health.json").exists()
    });
    kill_agent(&mut lab);
    assert!(bird.file_lists(vip4()), "the routes file lost the VIP");
    assert!(bird.announces(vip4()), "{}", bird.birdc("show route"));
    assert_forwarding(&lab, "after the SIGKILL", 50);
    before_restart(&lab);

    // Look at BIRD's routes again and again while the new agent starts.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, bird) = (done.clone(), bird.clone());
        thread::spawn(move || {
            let mut missing = Vec::new();
            let mut looks = 0u32;
            while !done.load(Ordering::SeqCst) {
                looks += 1;
                let routes = bird.birdc("show route protocol keystone4");
                if !routes.contains(&format!("{}/32", vip4())) {
                    missing.push(routes);
                }
            }
            (looks, missing)
        })
    };
    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    wait(
        &lab,
        "the new agent to report the VIP announced as ready",
        || first_vip(&lab).is_some_and(|v| v.announced && v.reason == AnnounceReason::Ready),
    );
    done.store(true, Ordering::SeqCst);
    let (looks, missing) = watcher.join().expect("the watcher");
    assert!(
        missing.is_empty(),
        "BIRD lacked the VIP's route at {} of {looks} looks while the agent restarted: {missing:?}",
        missing.len()
    );
    let log = lab.stderr_of("agent").unwrap_or_default();
    assert!(
        !log.contains(WITHDRAWN_ALL),
        "the restarted agent withdrew the VIP it was announcing:\n{log}"
    );
    assert_forwarding(&lab, "after the restart", 50);
}
