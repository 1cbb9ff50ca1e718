//! Agent restarts during a rollout: a validation timeout that does not start over,
//! and an agent killed mid-canary that resumes while traffic keeps flowing.

use super::*;

/// The blue/green validation timeout counts from the switch's start, not from each
/// agent start: green's backend is dead, the agent is killed while validating and
/// started again after the 20 s timeout has passed; the switch then fails at once
/// (a fresh 20 s window would keep it validating) and traffic stays on blue.
#[test]
fn a_restart_does_not_restart_the_validation_timeout() {
    const TIMEOUT: f64 = 20.0;
    let vip = v4(80);
    let (mut lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            let switch = SwitchConfig {
                validation_timeout: format!("{TIMEOUT}s"),
                ..SwitchConfig::instant()
            };
            lab.agent_config(vec![
                tcp_tenant(lab, "web", vip, &[("blue", 1), ("green", 1)])
                    .blue_green("blue", switch),
            ])
        },
    );
    let r = lab.stop_backend("green");
    ok(&lab, "stopping green's backend", r);
    let id = ctl_start(&lab, &["switch", "web", "--to", "green"]);
    let started = ok(&lab, "the switch", lab.deployment(&id));
    let r = lab.kill("agent");
    ok(&lab, "killing the agent", r);
    let deadline = started.history[0].unix().expect("started at") + TIMEOUT;
    let r = keystone_lab::wait_for("the validation deadline", LONG, || {
        Ok(if unix_now() > deadline {
            keystone_lab::Probe::Ready(())
        } else {
            keystone_lab::Probe::NotYet(format!("{:.1} s to go", deadline - unix_now()))
        })
    });
    ok(&lab, "waiting out the validation timeout", r);
    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    let r = lab.wait_deployment(
        &id,
        "give up",
        Duration::from_secs_f64(TIMEOUT / 2.0),
        |d| !d.is_running(),
    );
    let done = ok(&lab, "the switch after the restart", r);
    assert_eq!(done.state, DeployState::Failed, "{}", done.history_table());
    let reason = &done.history.last().expect("history").reason;
    assert!(reason.contains("validation"), "{reason}");
    assert_all_on(
        &lab,
        "after the failed switch",
        &tcp(&lab, vip, 200),
        "blue",
    );
}

#[test]
fn agent_killed_mid_canary_resumes_and_traffic_keeps_flowing() {
    let vip = v4(80);
    let mut lab = blue_stable_lab(vip);
    let id = start_web_canary(&lab, "10s");
    let traffic = ok(
        &lab,
        "starting the client loop",
        lab.client_loop(vip, 100, Duration::from_secs(120)),
    );
    let at40 = wait_for_40_percent(&mut lab, &id);

    let killed_at = Instant::now();
    let r = lab.kill("agent");
    let status = ok(&lab, "killing the agent", r);
    eprintln!("keystone-agent killed: {status:?}");
    batches_after(&lab, &traffic, killed_at, 2);
    let restarted_at = Instant::now();
    let r = lab.start_agent();
    ok(&lab, "starting keystone-agent again", r);
    let resumed = ok(&lab, "GET /deployments/{id}", lab.deployment(&id));
    eprintln!(
        "after the restart: {}\n{}",
        resumed.summary(),
        resumed.history_table()
    );
    // The schedule is wall-clock: a restart slower than what was left of the step
    // resumes at the next one (70 %). Either way the history before the kill is
    // kept as it was (the final check below sees every step exactly once).
    assert!(
        resumed.state == DeployState::Progressing
            && (resumed.canary_percent == 40.0 || resumed.canary_percent == 70.0)
            && resumed.history.starts_with(&at40.history),
        "the restarted agent did not resume the canary at 40 %: {}\n{}",
        resumed.summary(),
        lab.agent_diagnostics()
    );
    batches_after(&lab, &traffic, Instant::now(), 2);
    let batches = ok(&lab, "the client loop", traffic.stop());

    let total = ClientLoop::total(&batches);
    let mut agentless = Summary::default();
    for b in batches
        .iter()
        .filter(|b| b.started >= killed_at && b.finished <= restarted_at)
    {
        agentless.merge(&b.summary);
    }
    eprintln!(
        "{} batches: {:?}, {} failed; while no agent ran: {:?}",
        batches.len(),
        total.by_backend,
        total.failed,
        agentless.by_backend
    );
    assert!(
        total.failed == 0,
        "new connections failed around the agent's restart: {} of {} ({:?})\n{}",
        total.failed,
        total.attempted,
        total.errors,
        lab.agent_diagnostics()
    );
    assert!(
        agentless.answered() > 0 && agentless.by_backend.contains_key("green"),
        "no connection was measured while the agent was down: {agentless:?}"
    );

    wait_for_completion(&lab, &id, "the resumed canary did not finish");
    let done = ok(&lab, "GET /deployments/{id}", lab.deployment(&id));
    assert_eq!(
        done.percent_steps(),
        [10.0, 40.0, 70.0, 100.0],
        "{}",
        done.history_table()
    );
}
