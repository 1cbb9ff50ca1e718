//! Canaries that step to 100 % and promote themselves, and canaries that roll
//! themselves back: on failing health, and on answers that never reach the clients.

use super::*;

/// Starts `keystone-ctl wait <id>` in the background as lab process `name`.
fn spawn_wait(lab: &mut Lab, name: &str, id: &str, timeout: &str) {
    let r = lab.spawn_ctl(
        name,
        &["wait", id, "--timeout", timeout, "--interval", "200ms"],
    );
    ok(lab, "starting keystone-ctl wait", r);
}

/// The exit code of the background `keystone-ctl wait` `name`, once it exits.
fn wait_code(lab: &mut Lab, name: &str) -> Option<i32> {
    let r: Result<ExitStatus, _> = lab.wait_exit(name, LONG);
    let status = ok(lab, "keystone-ctl wait to exit", r);
    eprintln!(
        "keystone-ctl wait ({status}):\n{}",
        lab.stdout_of(name).unwrap_or_default()
    );
    status.code()
}

/// A healthy canary (10 % + 30 % every 2 s) started with `keystone-ctl canary start`
/// steps 10 → 40 → 70 → 100 by itself and is promoted (`keystone-ctl wait` exits 0);
/// at every step the share of new connections the canary gets is the step's
/// percentage, within 4σ for the connections measured in it.
///
/// Each step is measured with batches of new connections; a batch counts only when
/// the deployment's percentage was the same before and after it (so it was measured
/// entirely within one step); batches that straddle a step are dropped.
#[test]
fn healthy_canary_steps_to_100_and_promotes_itself() {
    let vip = v4(80);
    let mut lab = blue_stable_lab(vip);
    let before = tcp(&lab, vip, BATCH);
    assert_all_on(&lab, "before the canary", &before, "blue");

    let id = start_web_canary(&lab, "2s");
    spawn_wait(&mut lab, "wait", &id, "90s");
    let done = measure_each_step(&lab, vip, &id, &[10.0, 40.0, 70.0, 100.0]);
    assert_eq!(
        wait_code(&mut lab, "wait"),
        Some(0),
        "keystone-ctl wait on a promoted canary\n{}",
        lab.agent_diagnostics()
    );
    let last = done.history.last().expect("history");
    assert!(
        last.state == DeployState::Completed && last.reason.contains("promoted"),
        "last step: {last:?}"
    );
}

/// A canary whose backend starts failing its health check mid-rollout (its server is
/// stopped at 40 %) is rolled back to 0 % by the agent within two intervals of the
/// failure; `keystone-ctl wait` exits 10, and new connections all land on stable.
#[test]
fn failing_canary_rolls_back_by_itself() {
    const INTERVAL_SECS: f64 = 3.0;
    let vip = v4(80);
    let mut lab = blue_stable_lab(vip);
    let id = start_web_canary(&lab, "3s");
    spawn_wait(&mut lab, "wait", &id, "90s");
    wait_for_40_percent(&mut lab, &id);

    let failed_at = unix_now();
    let r = lab.stop_backend("green");
    ok(&lab, "stopping green's server", r);
    let r = lab.wait_deployment(&id, "end", LONG, |d| !d.is_running());
    let done = ok(&lab, "waiting for the rollback", r);
    assert!(
        done.state == DeployState::RolledBack && done.canary_percent == 0.0,
        "after green failed the canary is {}\n{}",
        done.summary(),
        lab.agent_diagnostics()
    );
    let rollback = done.history.last().expect("history");
    let after = rollback.unix().expect("RFC 3339 timestamp") - failed_at;
    eprintln!(
        "rolled back {after:.2} s after green's server stopped:\n{}",
        done.history_table()
    );
    assert!(
        after <= 2.0 * INTERVAL_SECS,
        "the rollback came {after:.1} s after the failure, more than two intervals ({} s)\n{}",
        2.0 * INTERVAL_SECS,
        lab.agent_diagnostics()
    );
    assert!(
        rollback.reason.contains("rolled back"),
        "rollback reason: {rollback:?}"
    );
    assert_eq!(
        wait_code(&mut lab, "wait"),
        Some(10),
        "keystone-ctl wait on a rolled-back canary\n{}",
        lab.agent_diagnostics()
    );
    let s = tcp(&lab, vip, 1000);
    assert_all_on(&lab, "new connections after the rollback", &s, "blue");
}

/// Loads an nftables `script` in namespace `ns` (from a file in the lab's state dir).
fn nft(lab: &Lab, ns: &str, name: &str, script: &str) {
    let path = lab.state_dir().join(format!("{name}.nft"));
    std::fs::write(&path, script).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let r = lab.exec(ns, "nft", &["-f".as_ref(), path.as_os_str()]);
    ok(lab, &format!("nft -f {name}.nft in {ns}"), r);
}

/// A canary whose answers never reach the clients fails its analysis and is rolled
/// back, although it answers every SYN: green's SYN-ACKs are marked (DSCP CS1) as they
/// leave green and dropped as they reach the client, as a client drops segments with
/// bad checksums. No health checks: the passive signal alone judges, and it counts
/// completed handshakes (the client's ACK), not SYN-ACKs.
#[test]
fn a_canary_whose_answers_never_reach_the_clients_rolls_back() {
    let vip = v4(80);
    let (lab, _) = web_lab(
        keystone_lab::test_bins!(),
        vip,
        &[("blue", 100), ("green", 0)],
    );
    let green_ns = ok(&lab, "green", lab.backend("green")).ns.clone();
    nft(
        &lab,
        &green_ns,
        "mark-syn-ack",
        "table ip ks_break {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    tcp flags & (syn | ack) == (syn | ack) ip dscp set cs1\n  }\n}\n",
    );
    nft(
        &lab,
        lab.client_ns(),
        "drop-marked",
        "table ip ks_break {\n  chain in {\n    type filter hook input priority 0; policy accept;\n    ip dscp cs1 drop\n  }\n}\n",
    );
    let id = start_web_canary(&lab, "3s");
    let started = Instant::now();
    let done = loop {
        let d = ok(&lab, "GET /deployments/{id}", lab.deployment(&id));
        if !d.is_running() {
            break d;
        }
        assert!(
            started.elapsed() < LONG,
            "the canary is still {} after {LONG:?}\n{}",
            d.summary(),
            lab.agent_diagnostics()
        );
        let s = tcp(&lab, vip, 100);
        assert!(
            !s.by_backend.contains_key("green"),
            "a connection to green completed, so its path is not broken: {:?}",
            s.by_backend
        );
    };
    let last = done.history.last().expect("history");
    assert!(
        done.state == DeployState::RolledBack && last.reason.contains("tcp handshakes 0/"),
        "a canary whose SYN-ACKs never reach a client ended {}: {last:?}\n{}\n{}",
        done.summary(),
        done.history_table(),
        lab.agent_diagnostics()
    );
    let s = tcp(&lab, vip, 200);
    assert_all_on(&lab, "new connections after the rollback", &s, "blue");
}
