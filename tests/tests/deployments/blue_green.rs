//! Blue/green switches: the seed's gradual switch, an instant flip under load, and
//! a reload after a finished release.

use keystone_api::{Status, TrafficSource};
use keystone_lab::helpers::{assert_none_failed, summed_since};

use super::*;

/// `keystone-ctl switch web --to green --strategy instant`: its deployment id.
fn ctl_switch_web_to_green_at_once(lab: &Lab) -> String {
    let instant = SwitchStrategy::Instant.name();
    ctl_start(
        lab,
        &["switch", "web", "--to", "green", "--strategy", instant],
    )
}

/// The seed's blue/green block with `switch_strategy: "gradual"` (and its
/// `validation_endpoint: "/health"`): a switch request that names no strategy, as the
/// seed's `keystone-deploy.sh` sends without `"strategy"`, moves green up in steps,
/// each step's split of new connections measured, then completes on green.
#[test]
fn seed_gradual_switch_moves_in_steps() {
    let vip = v4(80);
    let (lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            lab.agent_config(vec![
                tenant(lab, "web", vip, &[("blue", 100), ("green", 0)])
                    .blue_green("blue", SwitchConfig::seed_gradual("2s", 25.0)),
            ])
        },
    );
    let before = tcp(&lab, vip, BATCH);
    assert_all_on(
        &lab,
        "before the switch (active_environment blue)",
        &before,
        "blue",
    );
    let (status, body) = ok(
        &lab,
        "POST /deployments/blue-green/switch",
        lab.admin_send(
            "POST",
            "/deployments/blue-green/switch",
            Auth::Token,
            &[],
            Some(r#"{"service":"web","from":"blue","to":"green"}"#),
        ),
    );
    assert_eq!(status, 202, "{body}\n{}", lab.agent_diagnostics());
    let id = deployment_id(&body);
    let done = measure_each_step(&lab, vip, &id, &[25.0, 50.0, 75.0, 100.0]);
    assert_eq!(done.strategy, Strategy::BlueGreen);
    let s = tcp(&lab, vip, BATCH);
    assert_all_on(&lab, "after the gradual switch", &s, "green");
}

/// Waits until every held connection of lab process `name` has answered `min` more
/// times after event index `skip`; returns each one's backend.
fn held_answers(lab: &Lab, name: &str, conns: u32, skip: usize, min: usize) -> Vec<String> {
    let r = lab.held_answers(name, conns, skip, min, SHORT);
    ok(lab, "held connections answering", r)
}

/// A blue/green instant flip under load: a client opens new connections without
/// pause through the switch; none fails, and every connection opened after the flip
/// lands on green. Keep-alive connections opened on blue before the flip keep
/// answering from blue afterwards (they drain, they are not cut).
#[test]
fn blue_green_instant_flip_under_load() {
    const HELD: u32 = 4;
    let vip = v4(80);
    let (mut lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            lab.agent_config(vec![
                tenant(lab, "web", vip, &[("blue", 1), ("green", 1)])
                    .with_canary(CanaryConfig::ten_plus_thirty("2s"))
                    .blue_green("blue", SwitchConfig::instant()),
            ])
        },
    );
    let s = tcp(&lab, vip, 400);
    assert_all_on(
        &lab,
        "before the switch (active_environment blue)",
        &s,
        "blue",
    );

    let r = lab.spawn_hold("hold", vip, HELD, 120, 50);
    ok(&lab, "starting ks-client --hold", r);
    let before = held_answers(&lab, "hold", HELD, 0, 3);
    assert!(
        before.iter().all(|b| b == "blue"),
        "held connections before the switch: {before:?}"
    );
    let traffic = ok(
        &lab,
        "starting the client loop",
        lab.client_loop(vip, 100, LONG),
    );
    batches_after(&lab, &traffic, Instant::now(), 2);

    let id = ctl_switch_web_to_green_at_once(&lab);
    let r = lab.wait_deployment(&id, "flip to green", SHORT, |d| {
        d.canary_percent >= 100.0 || !d.is_running()
    });
    let flipped = ok(&lab, "waiting for the flip", r);
    let flipped_at = Instant::now();
    assert!(
        flipped.canary_percent == 100.0 && flipped.state != DeployState::Failed,
        "the switch did not flip: {}\n{}",
        flipped.summary(),
        lab.agent_diagnostics()
    );
    batches_after(&lab, &traffic, flipped_at, 3);
    wait_for_completion(&lab, &id, "keystone-ctl wait on the switch");
    let seen = hold_events(&lab, "hold").len();
    let after = held_answers(&lab, "hold", HELD, seen, 3);
    let batches = ok(&lab, "the client loop", traffic.stop());

    let total = ClientLoop::total(&batches);
    let post_flip = summed_since(&batches, flipped_at);
    eprintln!(
        "{} batches through the switch: {:?}, {} failed; after the flip: {:?}",
        batches.len(),
        total.by_backend,
        total.failed,
        post_flip.by_backend
    );
    assert_none_failed("new connections during the switch", &total, || {
        lab.agent_diagnostics()
    });
    assert_all_on(&lab, "new connections after the flip", &post_flip, "green");
    let s = tcp(&lab, vip, 400);
    assert_all_on(
        &lab,
        "new connections after the switch completed",
        &s,
        "green",
    );

    let events = hold_events(&lab, "hold");
    assert_holds_unbroken(&lab, "held connections were cut", &events);
    assert!(
        after.iter().all(|b| b == "blue"),
        "held connections after the switch: {after:?} (they should stay on blue)"
    );
    let r = lab.stop("hold");
    ok(&lab, "stopping ks-client --hold", r);
}

/// A finished release survives reloads: `web` switched to green (blue/green) and
/// `api` promoted to green (a canary over the config's 90/10) keep every new
/// connection on green through a reload that adds a weight-0 service to both; `status`
/// shows the config's weights beside the live ones and which deployment set them. A
/// reload that removes the promoted backend answers with a conflict naming it, and
/// that tenant falls back to its config.
#[test]
fn a_reload_keeps_a_finished_release() {
    // nat mode maps replies back by backend address: api's backends are the IPv6 ones.
    let (web, api) = (v4(80), v6(80));
    let config = |lab: &Lab, extra: &[(&str, u32)], web_green: bool| {
        let mut web_services = vec![("blue", 1)];
        if web_green {
            web_services.push(("green", 1));
        }
        web_services.extend_from_slice(extra);
        let mut api_services = vec![("blue", 90), ("green", 10)];
        api_services.extend_from_slice(extra);
        lab.agent_config(vec![
            tenant(lab, "web", web, &web_services)
                .with_canary(CanaryConfig::ten_plus_thirty("1s"))
                .blue_green("blue", SwitchConfig::instant()),
            tenant(lab, "api", api, &api_services),
        ])
    };
    let (lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green", "red"]),
        |lab| config(lab, &[], true),
    );
    let switch = ctl_switch_web_to_green_at_once(&lab);
    wait_for_completion(&lab, &switch, "the switch of web to green");
    let canary = ctl_start(
        &lab,
        &[
            "canary",
            "start",
            "api",
            "--version",
            "1.1.0",
            "--interval",
            "10m",
        ],
    );
    let (code, answer) = ok(
        &lab,
        "promote",
        lab.admin_request(
            "POST",
            &format!("/deployments/{canary}/{}", Action::Promote),
        ),
    );
    assert_eq!(code, 200, "promoting {canary}: {answer}");
    assert_all_on(&lab, "web after the switch", &tcp(&lab, web, 300), "green");
    assert_all_on(
        &lab,
        "api after the promotion",
        &tcp(&lab, api, 300),
        "green",
    );

    ok(
        &lab,
        "writing the config",
        lab.write_config(&config(&lab, &[("red", 0)], true)),
    );
    let answer = ok(&lab, "reload adding red (weight 0)", lab.reload());
    for (name, vip) in [("web", web), ("api", api)] {
        let s = tcp(&lab, vip, 300);
        assert_all_on(
            &lab,
            &format!("{name} after a reload adding red ({answer})"),
            &s,
            "green",
        );
    }
    let (code, body) = ok(&lab, "GET /status", lab.admin_get("/status"));
    assert_eq!(code, 200, "{body}");
    let status: Status = body_as("GET /status", &body).expect("status is JSON");
    for (tenant, id) in [(0, &switch), (1, &canary)] {
        let t = status
            .tenants
            .get(tenant)
            .unwrap_or_else(|| panic!("no tenant {tenant} in {status:#?}"));
        let source = match &t.about.traffic_source {
            TrafficSource::Deployment { deployment_id, .. } => Some(deployment_id),
            _ => None,
        };
        assert_eq!(source, Some(id), "{t:#?}");
        let backends: BTreeMap<String, (u64, u64)> = t
            .backends
            .iter()
            .map(|b| {
                let b = &b.backend;
                (
                    b.identity.name.clone(),
                    (b.configured_weight.into(), b.effective_weight.into()),
                )
            })
            .collect();
        assert!(
            backends["blue"].0 > 0 && backends["blue"].1 == 0 && backends["green"].1 > 0,
            "status must show blue's config weight beside its live 0: {backends:?}"
        );
    }
    let text = stdout(&ok(&lab, "keystone-ctl status", lab.ctl(&["status"])));
    assert!(
        text.contains(&switch) && text.contains(&canary) && text.contains("CONFIG WEIGHT"),
        "keystone-ctl status must name the deployments that set the live weights and show the config's:\n{text}"
    );

    // Green leaves web's config: the promoted side is gone; the answer says so.
    ok(
        &lab,
        "writing the config",
        lab.write_config(&config(&lab, &[("red", 0)], false)),
    );
    let answer = ok(&lab, "reload removing green from web", lab.reload());
    assert!(
        answer.contains("conflict") && answer.contains("web") && answer.contains("green"),
        "the reload must report that it undoes web's release to green: {answer}"
    );
    assert_all_on(
        &lab,
        "web after green left its config",
        &tcp(&lab, web, 300),
        "blue",
    );
    assert_all_on(
        &lab,
        "api after web's conflict",
        &tcp(&lab, api, 300),
        "green",
    );
}
