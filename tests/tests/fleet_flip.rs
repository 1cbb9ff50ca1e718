//! A blue/green flip whose validation ends while its gateway is cut off from etcd
//! (the lab of `keystone_lab::fleet_etcd`): the flip is the fleet's, so that gateway
//! must not make it alone, also across a SIGKILL or a reload of that gateway while
//! it waits. Gateway `a` is the lab's agent and carries the client traffic; every
//! wait polls with a deadline; the lab is removed on drop.

use keystone_api::DeployState;
use keystone_lab::{
    AgentConfig, HealthCheck, Lab, Probe, SwitchConfig,
    agent::AGENT,
    etcd::fleet_block,
    fleet_etcd::{
        Fleet, LONG, PREFIX, TTL_SECS, cut_off, deployment_id, etcd_host, reconnect, wait_stale,
    },
    helpers::{BACKEND_PORT, assert_all_on, tcp, tcp_tenant, v4},
    ok, wait_for,
};

/// New connections to check that every one lands on one backend.
const ALL_ON: u32 = 400;
/// What gateway a logs, once, when it cannot share the flip with the fleet.
const WAITS_FOR_THE_FLEET: &str = "the blue/green flip waits for the fleet";
/// What it logs, once, when the flip it waited with is made.
const MADE: &str = "the blue/green flip that waited for the fleet is made";
/// The gauge of a waiting flip and the counter of its refused writes, for web.
const WAITING: &str = "keystone_fleet_flip_waiting{tenant=\"web\"}";
const REFUSED: &str = "keystone_fleet_flip_refused_total{tenant=\"web\"}";
/// Refused flip writes to wait for before counting the warnings (several retries).
const RETRIES: f64 = 3.0;

/// Tenant web as blue/green, blue active; the idle side gets a long validation so
/// the test decides when it passes (by starting green).
fn switch_config(lab: &Lab) -> AgentConfig {
    let switch = SwitchConfig {
        validation_timeout: "80s".into(),
        ..SwitchConfig::instant()
    };
    let tenant = tcp_tenant(lab, "web", v4(80), &[("blue", 1), ("green", 1)])
        .with_health(HealthCheck::fast_http())
        .blue_green("blue", switch);
    lab.agent_config(vec![tenant])
}

/// The value of metric `series` (name and labels as exposed) on gateway a, if shown.
fn metric(fleet: &Fleet, series: &str) -> Option<f64> {
    let (code, body) = fleet.send("a", "GET", "/metrics", None);
    assert_eq!(code, 200, "GET /metrics on a: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Waits until gateway a has had at least `n` flip writes refused and shows the flip
/// as waiting.
fn wait_refused(fleet: &Fleet, n: f64, what: &str) {
    let r = wait_for(what, LONG, || {
        let (waiting, refused) = (metric(fleet, WAITING), metric(fleet, REFUSED));
        Ok(match (waiting, refused) {
            (Some(w), Some(r)) if w == 1.0 && r >= n => Probe::Ready(()),
            _ => Probe::NotYet(format!("{WAITING} {waiting:?}, {REFUSED} {refused:?}")),
        })
    });
    ok(&fleet.lab, what, r);
}

/// How many lines of a's log contain `text`.
fn log_lines(fleet: &Fleet, text: &str) -> usize {
    let log = ok(&fleet.lab, "a's log", fleet.lab.stderr_of(AGENT));
    log.lines().filter(|l| l.contains(text)).count()
}

/// A switch started on a validates green while green is down; a is cut off from
/// etcd, then green comes up: a's validation passes but a cannot write the flip.
/// Returns the fleet with a waiting (several refused writes) and the switch's id.
fn a_waits_to_flip() -> (Fleet, String) {
    let mut fleet = Fleet::start_with(&["blue", "green"], &["a", "b"], switch_config, "");
    fleet.wait_in_step("the fleet before the switch");
    let r = fleet.lab.stop_backend("green");
    ok(&fleet.lab, "stopping green", r);

    let body = r#"{"service":"web","from":"blue","to":"green"}"#;
    let (code, answer) = fleet.send("a", "POST", "/deployments/blue-green/switch", Some(body));
    assert_eq!(code, 202, "switch on a: {answer}\n{}", fleet.diagnostics());
    let id = deployment_id(&answer);

    cut_off(&fleet.lab, 0);
    wait_stale(&fleet.lab, fleet.gateway("a"));
    let r = fleet.lab.start_backend("green", BACKEND_PORT);
    ok(&fleet.lab, "starting green", r);
    wait_refused(&fleet, RETRIES, "a to retry the flip it cannot share");
    (fleet, id)
}

/// Every new connection through a lands on `backend`.
fn all_through_a_on(fleet: &Fleet, what: &str, backend: &str) {
    let s = tcp(&fleet.lab, v4(80), ALL_ON);
    assert_all_on(&fleet.lab, what, &s, backend);
}

/// Once a reaches etcd again the flip is the fleet's: the switch completes, both
/// gateways show one table hash, every new connection through a lands on green and
/// the flip no longer waits.
fn reconnect_and_flip(fleet: &mut Fleet, id: &str) {
    reconnect(&fleet.lab);
    let r = fleet
        .lab
        .wait_deployment(id, "the switch to complete", LONG, |d| !d.is_running());
    let done = ok(&fleet.lab, "the switch after a reconnected", r);
    assert_eq!(
        done.state,
        DeployState::Completed,
        "{}\n{}",
        done.history_table(),
        fleet.diagnostics()
    );
    let statuses = fleet.wait_in_step("both gateways to confirm the flip");
    fleet.one_hash(&statuses, "web", "after the flip");
    all_through_a_on(fleet, "through a after the flip", "green");
    assert_eq!(
        metric(fleet, WAITING),
        Some(0.0),
        "{WAITING} after the flip"
    );
}

/// While cut off, a keeps forwarding to blue instead of flipping alone; it says so
/// once in its log (not once per retry) and in `keystone_fleet_flip_waiting` and
/// `keystone_fleet_flip_refused_total`; once back, it flips with the fleet and says
/// so once.
#[test]
fn a_flip_validated_while_cut_off_from_etcd_waits_for_the_fleet() {
    let (mut fleet, id) = a_waits_to_flip();
    all_through_a_on(
        &fleet,
        "through a, cut off, after its validation passed",
        "blue",
    );
    assert_eq!(
        log_lines(&fleet, WAITS_FOR_THE_FLEET),
        1,
        "one warning for {RETRIES}+ refused flip writes"
    );
    reconnect_and_flip(&mut fleet, &id);
    assert_eq!(log_lines(&fleet, MADE), 1, "one line when the flip is made");
}

/// a is SIGKILLed while it waits and started again while still cut off: it comes
/// back on blue (its saved state has the switch unvalidated), validates again and
/// waits again, and flips once etcd is back.
#[test]
fn a_gateway_killed_while_its_flip_waits_still_waits_after_a_restart() {
    let (mut fleet, id) = a_waits_to_flip();
    let r = fleet.lab.kill(AGENT);
    ok(&fleet.lab, "killing a", r);
    fleet.restart("a");
    // A new process: its counter starts again at 0.
    wait_refused(
        &fleet,
        1.0,
        "a, restarted and still cut off, to wait to flip",
    );
    all_through_a_on(&fleet, "through a, restarted while cut off", "blue");
    reconnect_and_flip(&mut fleet, &id);
}

/// a reloads while it waits: with its config unchanged the reload is taken and the
/// flip still waits; a reload that drops tenant web would end the switch, which is a
/// change of the fleet's state, so it is refused (503 naming the fleet) and the old
/// config stays live. Either way a keeps blue and flips once etcd is back.
#[test]
fn a_gateway_reloaded_while_its_flip_waits_keeps_the_old_side() {
    let (mut fleet, id) = a_waits_to_flip();
    let r = fleet.lab.reload();
    ok(&fleet.lab, "reloading a with its config unchanged", r);
    let refused = metric(&fleet, REFUSED).expect("refused writes before the reload");
    wait_refused(
        &fleet,
        refused + 1.0,
        "a to retry the flip after the reload",
    );
    all_through_a_on(&fleet, "through a after a reload while cut off", "blue");

    let kept = ok(
        &fleet.lab,
        "a's config",
        std::fs::read_to_string(fleet.lab.config_path()),
    );
    let other = tcp_tenant(&fleet.lab, "api", v4(81), &[("blue", 1)]);
    let ttl = format!("{TTL_SECS}s");
    let without_web = fleet.lab.agent_config(vec![other]).to_yaml()
        + &fleet_block(&fleet.etcd, &etcd_host(0), PREFIX, "a", &ttl);
    ok(
        &fleet.lab,
        "writing a's config without web",
        fleet.lab.write_config_text(&without_web),
    );
    let refusal = match fleet.lab.reload() {
        Ok(out) => panic!(
            "a reload dropping web while cut off was taken: {out}\n{}",
            fleet.diagnostics()
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        refusal.contains("503") && refusal.contains("not in step with the fleet"),
        "the refusal names the fleet: {refusal}"
    );
    ok(
        &fleet.lab,
        "writing a's config back",
        fleet.lab.write_config_text(&kept),
    );
    let refused = metric(&fleet, REFUSED).expect("refused writes before the second reload");
    wait_refused(
        &fleet,
        refused + 1.0,
        "a to retry the flip after the refused reload",
    );
    all_through_a_on(&fleet, "through a after a refused reload", "blue");
    reconnect_and_flip(&mut fleet, &id);
}
