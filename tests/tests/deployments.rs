//! The deployment engine in the namespace lab: canaries that promote or roll back
//! themselves, a blue/green flip under load, the signed webhook, an agent killed in
//! the middle of a rollout, and the example CI scripts — with real traffic through
//! real XDP, the real agent and keystone-ctl. Run them with `cargo xtask test`.
//!
//! Every test builds its own lab (unique names, removed on drop, also on panic),
//! waits for states by polling with deadlines (never a sleep standing in for one),
//! and panics with the agent's output, its deployments and counters when something
//! is off.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use keystone_lab::{
    Auth, CanaryConfig, ClientLoop, Deployment, HealthCheck, Lab, Summary, SwitchConfig, Tenant,
    WebhookConfig, cmd,
    helpers::{
        Setup, assert_all_on, assert_holds_unbroken, batches_after, hold_events, lab_with_agent,
        tcp, tcp_tenant, v4, v6, web_lab,
    },
    ok,
};

/// Allowed distance, in percentage points, between a step's percentage and the
/// measured share of new connections.
const TOLERANCE: f64 = 5.0;
/// New connections each step must have been measured with, at least.
const MIN_PER_STEP: u64 = 400;
/// New connections per ks-client run when measuring a step (several runs fit in a step).
const BATCH: u32 = 200;
/// The webhook's shared secret in these labs.
const WEBHOOK_SECRET: &str = "lab-webhook-secret-0123";
/// Generous bounds for things that take a second or two.
const SHORT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(90);

/// A lab whose agent runs tenant `web` on `vip`: blue (stable) takes every new
/// connection, green (the canary's version) none yet.
fn blue_stable_lab(vip: SocketAddr) -> Lab {
    lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            lab.agent_config(vec![tenant(
                lab,
                "web",
                vip,
                &[("blue", 100), ("green", 0)],
            )])
        },
    )
    .0
}

/// Tenant `name` on `vip` over `weights`' backends (blue 1.0.0, green 1.1.0,
/// red 1.2.0), each with a fast HTTP health check.
fn tenant(lab: &Lab, name: &str, vip: SocketAddr, weights: &[(&str, u32)]) -> Tenant {
    tcp_tenant(lab, name, vip, weights).with_health(HealthCheck::fast_http())
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `keystone-ctl wait` (60 s at most) and asserts it exits 0: completed.
fn wait_for_completion(lab: &Lab, id: &str, what: &str) {
    let out = ok(
        lab,
        "keystone-ctl wait",
        lab.ctl(&["wait", id, "--timeout", "60s", "--interval", "200ms"]),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}\n{}",
        output_text(&out),
        lab.agent_diagnostics()
    );
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `keystone-ctl -o json <args>` that starts a deployment; returns its id.
fn ctl_start(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = ok(lab, "keystone-ctl", lab.ctl(&all));
    assert!(
        out.status.success(),
        "keystone-ctl {args:?} failed: {}\n{}",
        output_text(&out),
        lab.agent_diagnostics()
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("keystone-ctl {args:?}: not JSON ({e}): {}", stdout(&out)));
    json["deployment_id"]
        .as_str()
        .unwrap_or_else(|| panic!("keystone-ctl {args:?}: no deployment_id in {json}"))
        .to_owned()
}

/// `keystone-ctl canary start web --version 1.1.0` with the lab's steps (10 %, +30 %
/// every `interval`); returns the deployment's id.
fn start_web_canary(lab: &Lab, interval: &str) -> String {
    let args = CanaryConfig::ten_plus_thirty(interval).ctl_start_args("web", "1.1.0");
    ctl_start(lab, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

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

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A healthy canary (10 % + 30 % every 2 s) started with `keystone-ctl canary start`
/// steps 10 → 40 → 70 → 100 by itself and is promoted (`keystone-ctl wait` exits 0);
/// at every step the share of new connections the canary gets is the step's
/// percentage, ±5 points.
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
        last.state == "completed" && last.reason.contains("promoted"),
        "last step: {last:?}"
    );
}

/// Opens batches of new connections to `vip` while deployment `id` (blue → green)
/// runs, until it completes with its last step measured; asserts it went through
/// `want` (after any 0 % validation step) and that each step's split of new
/// connections is within [`TOLERANCE`]. Returns the completed deployment.
fn measure_each_step(lab: &Lab, vip: SocketAddr, id: &str, want: &[f64]) -> Deployment {
    // Percentage (in tenths) → what the batches measured entirely within it.
    let mut steps: BTreeMap<u32, Summary> = BTreeMap::new();
    let mut straddled = 0;
    let started = Instant::now();
    let done = loop {
        assert!(
            started.elapsed() < LONG && straddled < 100,
            "{id} did not finish measuring within {LONG:?} ({straddled} batches straddled a step)\n{}",
            lab.agent_diagnostics()
        );
        let before = ok(lab, "GET /deployments/{id}", lab.deployment(id));
        assert!(
            before.state == "progressing" || before.state == "completed",
            "{id} is {}\n{}",
            before.summary(),
            lab.agent_diagnostics()
        );
        let final_measured = steps
            .get(&1000)
            .is_some_and(|s| s.answered() >= MIN_PER_STEP);
        if before.state == "completed" && final_measured {
            break before;
        }
        let s = tcp(lab, vip, BATCH);
        let after = ok(lab, "GET /deployments/{id}", lab.deployment(id));
        if after.canary_percent == before.canary_percent {
            steps
                .entry((before.canary_percent * 10.0).round() as u32)
                .or_default()
                .merge(&s);
        } else {
            straddled += 1;
        }
    };

    let mut went_through = done.percent_steps();
    if went_through.first() == Some(&0.0) {
        went_through.remove(0);
    }
    assert_eq!(went_through, want, "{id}'s steps\n{}", done.history_table());
    for &percent in want {
        let s = steps
            .get(&((percent * 10.0).round() as u32))
            .cloned()
            .unwrap_or_default();
        let weights = [("blue", 100 - percent as u32), ("green", percent as u32)];
        eprintln!("step {percent}%:\n{}", s.table(&weights));
        assert!(
            s.answered() >= MIN_PER_STEP,
            "step {percent}%: only {} connections measured within the step (want ≥ {MIN_PER_STEP}; {straddled} batches straddled a step)\n{}",
            s.answered(),
            lab.agent_diagnostics()
        );
        if let Err(table) = s.check_split(&weights, TOLERANCE) {
            panic!("step {percent}%: {table}\n{}", lab.agent_diagnostics());
        }
    }
    done
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
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let id = answer["deployment_id"].as_str().expect("deployment_id");
    let done = measure_each_step(&lab, vip, id, &[25.0, 50.0, 75.0, 100.0]);
    assert_eq!(done.strategy, "blue_green");
    let s = tcp(&lab, vip, BATCH);
    assert_all_on(&lab, "after the gradual switch", &s, "green");
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
    let r = lab.wait_deployment(&id, "reach 40 %", LONG, |d| {
        d.canary_percent >= 40.0 || !d.is_running()
    });
    let at40 = ok(&lab, "waiting for the canary", r);
    assert!(
        at40.state == "progressing" && at40.canary_percent == 40.0,
        "the canary did not get to 40 % healthy: {}\n{}",
        at40.summary(),
        lab.agent_diagnostics()
    );

    let failed_at = unix_now();
    let r = lab.stop_backend("green");
    ok(&lab, "stopping green's server", r);
    let r = lab.wait_deployment(&id, "end", LONG, |d| !d.is_running());
    let done = ok(&lab, "waiting for the rollback", r);
    assert!(
        done.state == "rolled_back" && done.canary_percent == 0.0,
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
        done.state == "rolled_back" && last.reason.contains("tcp handshakes 0/"),
        "a canary whose SYN-ACKs never reach a client ended {}: {last:?}\n{}\n{}",
        done.summary(),
        done.history_table(),
        lab.agent_diagnostics()
    );
    let s = tcp(&lab, vip, 200);
    assert_all_on(&lab, "new connections after the rollback", &s, "blue");
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

    let id = ctl_start(
        &lab,
        &["switch", "web", "--to", "green", "--strategy", "instant"],
    );
    let r = lab.wait_deployment(&id, "flip to green", SHORT, |d| {
        d.canary_percent >= 100.0 || !d.is_running()
    });
    let flipped = ok(&lab, "waiting for the flip", r);
    let flipped_at = Instant::now();
    assert!(
        flipped.canary_percent == 100.0 && flipped.state != "failed",
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
    let mut post_flip = Summary::default();
    for b in batches.iter().filter(|b| b.started >= flipped_at) {
        post_flip.merge(&b.summary);
    }
    eprintln!(
        "{} batches through the switch: {:?}, {} failed; after the flip: {:?}",
        batches.len(),
        total.by_backend,
        total.failed,
        post_flip.by_backend
    );
    assert!(
        total.failed == 0 && total.answered() > 0,
        "new connections failed during the switch: {} of {} ({:?})\n{}",
        total.failed,
        total.attempted,
        total.errors,
        lab.agent_diagnostics()
    );
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
    let switch = ctl_start(
        &lab,
        &["switch", "web", "--to", "green", "--strategy", "instant"],
    );
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
        lab.admin_request("POST", &format!("/deployments/{canary}/promote")),
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
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    for (tenant, id) in [(0, &switch), (1, &canary)] {
        let t = &status["tenants"][tenant];
        assert_eq!(t["traffic_source"]["deployment_id"], id.as_str(), "{t:#}");
        let backends: BTreeMap<String, (u64, u64)> = t["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| {
                let n = |k: &str| b[k].as_u64().expect("a weight");
                (
                    b["name"].as_str().unwrap_or("?").to_owned(),
                    (n("weight"), n("effective_weight")),
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

/// The signed webhook and a fresh Unix timestamp.
fn now_secs() -> u64 {
    unix_now() as u64
}

/// `X-Keystone-Timestamp` and `X-Keystone-Signature` for `body`, signed with `secret`
/// by the agent's own code.
fn signed(secret: &str, ts: u64, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-Keystone-Timestamp", ts.to_string()),
        (
            "X-Keystone-Signature",
            keystone_agent::webhook::sign(secret.as_bytes(), ts, body.as_bytes()),
        ),
    ]
}

fn post_webhook(lab: &Lab, headers: &[(&str, String)], body: &str) -> (u16, String) {
    ok(
        lab,
        "POST /webhooks/deployment",
        lab.admin_send(
            "POST",
            "/webhooks/deployment",
            Auth::None,
            headers,
            Some(body),
        ),
    )
}

/// Effective weight per backend of every tenant, from `GET /tenants`.
fn weights(lab: &Lab) -> BTreeMap<String, u64> {
    let json = ok(lab, "GET /tenants", lab.tenants_json());
    let mut w = BTreeMap::new();
    for t in json["tenants"].as_array().into_iter().flatten() {
        for b in t["backends"].as_array().into_iter().flatten() {
            w.insert(
                format!(
                    "{}/{}",
                    t["name"].as_str().unwrap_or("?"),
                    b["name"].as_str().unwrap_or("?")
                ),
                b["effective_weight"].as_u64().unwrap_or(u64::MAX),
            );
        }
    }
    w
}

fn deployment_ids(lab: &Lab) -> Vec<String> {
    ok(lab, "GET /deployments", lab.deployments())
        .into_iter()
        .map(|d| d.id)
        .collect()
}

/// Blue (stable) takes every new connection to `web` on `vip`, without health checks;
/// the webhook is on with [`WEBHOOK_SECRET`] and a 5 minute tolerance.
fn webhook_lab(vip: SocketAddr) -> Lab {
    lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            let mut cfg = lab.agent_config(vec![tcp_tenant(
                lab,
                "web",
                vip,
                &[("blue", 100), ("green", 0)],
            )]);
            cfg.webhook = Some(WebhookConfig {
                secret: WEBHOOK_SECRET.into(),
                tolerance: "5m".into(),
            });
            cfg
        },
    )
    .0
}

/// The admin API without the bearer token (or with a wrong one) answers 401 with a
/// JSON reason and changes nothing. The signed webhook starts a deployment (202 with
/// its id, visible in `GET /deployments`); a wrong signature, a missing one, a stale
/// or future timestamp, and a replay of an accepted request are refused with 401 and
/// change nothing (no deployment, same weights); malformed JSON and an unknown
/// strategy get 400 with a reason.
#[test]
fn admin_api_needs_the_token_and_the_webhook_needs_a_fresh_signature() {
    let lab = webhook_lab(v4(80));
    let weights0 = weights(&lab);
    assert_eq!(weights0.get("web/green"), Some(&0), "{weights0:?}");

    // The bearer token.
    let canary = r#"{"service":"web","version":"1.1.0","initial_traffic":50}"#;
    let switch = r#"{"service":"web","to":"green"}"#;
    let set = r#"{"weights":{"green":100}}"#;
    for (method, path, body) in [
        ("GET", "/status", None),
        ("GET", "/tenants", None),
        ("GET", "/deployments", None),
        ("GET", "/deployments/web-1-1", None),
        ("POST", "/deployments/canary", Some(canary)),
        ("POST", "/deployments/blue-green/switch", Some(switch)),
        ("POST", "/deployments/web-1-1/promote", None),
        ("POST", "/tenants/web/weights", Some(set)),
        ("POST", "/admin/reload", None),
    ] {
        for auth in [Auth::None, Auth::Bearer("not-the-token")] {
            let (code, answer) = ok(
                &lab,
                "admin request",
                lab.admin_send(method, path, auth, &[], body),
            );
            let json: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            assert!(
                code == 401 && json["error"].is_string(),
                "{method} {path} with {auth:?}: HTTP {code} {answer} (want 401 with a JSON error)"
            );
        }
    }
    assert_eq!(deployment_ids(&lab), Vec::<String>::new());
    assert_eq!(weights(&lab), weights0, "a refused request changed weights");
    let (code, _) = ok(&lab, "GET /health", lab.admin_get("/health"));
    assert_eq!(code, 200, "GET /health needs no token");

    // Refused webhooks.
    let body = serde_json::json!({
        "service": "web",
        "version": "1.1.0",
        "strategy": "canary",
        "pipeline": { "id": "4711", "commit": "3f2c1e9" },
        "config": { "initial_traffic": 10, "increment": 10, "interval": "5m" },
    })
    .to_string();
    let now = now_secs();
    let mut bad_signature = signed(WEBHOOK_SECRET, now, &body);
    bad_signature[1].1 = "sha256=zz".into();
    let refusals: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "signed with another secret",
            signed("another-secret-0123456", now, &body),
        ),
        (
            "signature of another body",
            signed(WEBHOOK_SECRET, now, "{}"),
        ),
        ("not a signature", bad_signature),
        (
            "no signature",
            vec![("X-Keystone-Timestamp", now.to_string())],
        ),
        ("no headers", vec![]),
        (
            "stale timestamp (an hour ago)",
            signed(WEBHOOK_SECRET, now - 3600, &body),
        ),
        (
            "timestamp an hour ahead",
            signed(WEBHOOK_SECRET, now + 3600, &body),
        ),
    ];
    for (what, headers) in &refusals {
        let (code, answer) = post_webhook(&lab, headers, &body);
        assert!(
            code == 401 && answer.contains("error"),
            "webhook {what}: HTTP {code} {answer} (want 401)\n{}",
            lab.agent_diagnostics()
        );
        eprintln!("webhook {what}: 401 {answer}");
        assert_eq!(
            deployment_ids(&lab),
            Vec::<String>::new(),
            "webhook {what} started a deployment"
        );
        assert_eq!(weights(&lab), weights0, "webhook {what} changed weights");
    }

    // Accepted, once.
    let headers = signed(WEBHOOK_SECRET, now_secs(), &body);
    let (code, answer) = post_webhook(&lab, &headers, &body);
    assert_eq!(
        code,
        202,
        "signed webhook: {answer}\n{}",
        lab.agent_diagnostics()
    );
    let json: serde_json::Value = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("webhook answer is not JSON ({e}): {answer}"));
    let id = json["deployment_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no deployment_id in {answer}"))
        .to_owned();
    assert_eq!(deployment_ids(&lab), std::slice::from_ref(&id));
    let d = ok(&lab, "GET /deployments/{id}", lab.deployment(&id));
    assert!(
        d.state == "progressing"
            && d.canary_percent == 10.0
            && d.tenant == "web"
            && d.canary_backends == ["green"],
        "the webhook's deployment: {d:?}"
    );
    assert_eq!(
        d.pipeline.as_ref().map(|p| p["id"].clone()),
        Some(serde_json::json!("4711")),
        "the pipeline is kept with the deployment"
    );
    let weights1 = weights(&lab);
    assert!(
        weights1["web/green"] > 0,
        "the canary's weights: {weights1:?}"
    );

    let (code, answer) = post_webhook(&lab, &headers, &body);
    assert!(
        code == 401 && answer.contains("error"),
        "replayed webhook: HTTP {code} {answer} (want 401)"
    );
    eprintln!("replayed webhook: 401 {answer}");
    assert_eq!(
        deployment_ids(&lab),
        std::slice::from_ref(&id),
        "a replay started a deployment"
    );
    assert_eq!(weights(&lab), weights1, "a replay changed weights");

    // Malformed bodies, properly signed.
    for (what, bad, says) in [
        ("malformed JSON", r#"{"service": "web", "version": "#, ""),
        (
            "unknown strategy",
            r#"{"service":"web","version":"1.1.0","strategy":"yolo"}"#,
            "strategy",
        ),
    ] {
        let (code, answer) = post_webhook(&lab, &signed(WEBHOOK_SECRET, now_secs(), bad), bad);
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        let reason = json["error"].as_str().unwrap_or_default();
        assert!(
            code == 400 && !reason.is_empty() && reason.contains(says),
            "webhook with {what}: HTTP {code} {answer} (want 400 with a reason)"
        );
        eprintln!("webhook with {what}: 400 {reason}");
    }
    assert_eq!(deployment_ids(&lab), [id]);
    assert_eq!(weights(&lab), weights1);
}

/// The agent SIGKILLed in the middle of a canary (at 40 %) and started again with the
/// same state and pin directories resumes the canary at 40 %, which then finishes by
/// itself; new connections opened without pause through the kill and the restart
/// never fail (the pinned XDP program keeps forwarding while no agent runs).
/// A signed webhook request accepted once is refused (401, "already accepted") when
/// replayed after the agent restarted, cleanly (SIGTERM) or not (SIGKILL): the agent
/// saves accepted signatures before it answers. One deployment per signature.
#[test]
fn a_webhook_replayed_after_a_restart_is_refused() {
    let mut lab = webhook_lab(v4(80));
    for restart in ["SIGTERM", "SIGKILL"] {
        let body = serde_json::json!({
            "service": "web",
            "version": "1.1.0",
            "strategy": "canary",
            "pipeline": { "restart": restart },
            "config": { "interval": "10m" },
        })
        .to_string();
        let headers = signed(WEBHOOK_SECRET, now_secs(), &body);
        let (code, answer) = post_webhook(&lab, &headers, &body);
        assert_eq!(code, 202, "the first delivery: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
        let id = json["deployment_id"].as_str().expect("an id").to_owned();
        // Finished, so that a replay accepted by mistake would start a new one.
        let (code, answer) = ok(
            &lab,
            "abort",
            lab.admin_request("POST", &format!("/deployments/{id}/abort")),
        );
        assert_eq!(code, 200, "aborting {id}: {answer}");
        let r = match restart {
            "SIGTERM" => lab.stop_agent(),
            _ => lab.kill("agent"),
        };
        ok(&lab, "stopping the agent", r);
        let r = lab.start_agent();
        ok(&lab, "starting the agent again", r);
        let (code, answer) = post_webhook(&lab, &headers, &body);
        assert!(
            code == 401 && answer.contains("already accepted"),
            "the same delivery after a {restart} restart: HTTP {code} {answer} (want 401)"
        );
    }
    assert_eq!(
        deployment_ids(&lab).len(),
        2,
        "one deployment per signature"
    );
}

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
    assert_eq!(done.state, "failed", "{}", done.history_table());
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
    let r = lab.wait_deployment(&id, "reach 40 %", LONG, |d| {
        d.canary_percent >= 40.0 || !d.is_running()
    });
    let at40 = ok(&lab, "waiting for the canary", r);
    assert!(
        at40.state == "progressing" && at40.canary_percent == 40.0,
        "the canary did not get to 40 %: {}\n{}",
        at40.summary(),
        lab.agent_diagnostics()
    );

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
    assert!(
        resumed.state == "progressing"
            && resumed.canary_percent == 40.0
            && resumed.history.len() >= at40.history.len(),
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

/// Where the example CI scripts live.
fn ci_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .join("examples/ci")
}

/// Runs `sh examples/ci/<script>` in the gateway namespace with the lab's API, token
/// and keystone-ctl, plus `env`; returns its exit code, stdout and stderr (and prints them).
fn run_script(lab: &Lab, script: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let ctl = lab.bins().ctl.clone();
    let mut c = cmd::in_ns(lab.gateway_ns(), "sh");
    c.arg(ci_dir().join(script))
        .env(
            "KEYSTONE_API",
            format!("http://{}", keystone_lab::ADMIN_LISTEN),
        )
        .env("KEYSTONE_TOKEN", keystone_lab::ADMIN_TOKEN)
        .env("KEYSTONE_CTL", &ctl)
        .env("KEYSTONE_WAIT_TIMEOUT", "60s");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = ok(lab, script, cmd::output(&mut c));
    eprintln!(
        "--- {script} {env:?}: {}\n{}",
        out.status,
        output_text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stdout(&out), stderr)
}

/// Runs `script` and asserts it exits `code`; returns its stdout.
fn expect_script(lab: &Lab, code: i32, script: &str, env: &[(&str, &str)]) -> String {
    let (got, out, _) = run_script(lab, script, env);
    assert_eq!(
        got,
        Some(code),
        "{script} {env:?}\n{}",
        lab.agent_diagnostics()
    );
    out
}

/// The jobs of `pipeline` (a YAML map of jobs, or GitHub's `jobs:`) that run `script`.
fn jobs_running<'a>(pipeline: &'a serde_yaml::Value, script: &str) -> Vec<&'a serde_yaml::Value> {
    let jobs = pipeline.get("jobs").unwrap_or(pipeline);
    let jobs = jobs.as_mapping().expect("a map of jobs");
    jobs.values()
        .filter(|job| {
            serde_yaml::to_string(job)
                .unwrap_or_default()
                .contains(script)
        })
        .collect()
}

/// What a careful team would commit: releases only from the default branch, the
/// production switch and the canary's promotion behind a manual job or an approval,
/// and no environment hard-coded as the target.
fn assert_pipelines_are_safe_to_copy() {
    let read = |name: &str| -> (String, serde_yaml::Value) {
        let text = std::fs::read_to_string(ci_dir().join(name))
            .unwrap_or_else(|e| panic!("examples/ci/{name}: {e}"));
        let yaml = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        (text, yaml)
    };
    for name in [".gitlab-ci.yml", "github-actions.yml"] {
        let (text, _) = read(name);
        for script in [
            "keystone-idle.sh",
            "keystone-health.sh",
            "keystone-switch.sh",
            "keystone-canary.sh",
            "keystone-promote.sh",
            "keystone-webhook.sh",
        ] {
            assert!(text.contains(script), "{name} does not run {script}");
        }
        assert!(
            !text.contains("KEYSTONE_TO: green") && !text.contains("green-1.internal"),
            "{name} hard-codes the green side"
        );
        assert!(
            text.contains("keystone-ctl onto the runner"),
            "{name}: how to get keystone-ctl"
        );
    }

    let (_, gitlab) = read(".gitlab-ci.yml");
    let workflow = serde_yaml::to_string(&gitlab["workflow"]).unwrap();
    assert!(
        workflow.contains("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"),
        "GitLab: pipelines only on the default branch: {workflow}"
    );
    for script in ["keystone-switch.sh", "keystone-promote.sh"] {
        for job in jobs_running(&gitlab, script) {
            let rules = serde_yaml::to_string(&job["rules"]).unwrap();
            assert!(
                job["when"] == "manual" || rules.contains("when: manual"),
                "GitLab: the job running {script} must be manual: {job:?}"
            );
        }
    }
    for job in jobs_running(&gitlab, "keystone-canary.sh") {
        let codes = serde_yaml::to_string(&job["allow_failure"]["exit_codes"]).unwrap();
        assert!(
            codes.contains("11"),
            "GitLab: a canary awaiting approval (exit 11) leads to the manual promote job: {job:?}"
        );
    }

    let (_, github) = read("github-actions.yml");
    for (name, job) in github["jobs"].as_mapping().expect("jobs").iter() {
        let job_text = serde_yaml::to_string(job).unwrap();
        assert!(
            job_text.contains("github.event.repository.default_branch")
                || job_text.contains("needs:"),
            "GitHub job {name:?} runs off the default branch: {job_text}"
        );
    }
    for script in ["keystone-switch.sh", "keystone-promote.sh"] {
        for job in jobs_running(&github, script) {
            assert!(
                job["environment"] == "production",
                "GitHub: the job running {script} needs the production environment's approval: {job:?}"
            );
        }
    }
}

/// The example pipelines' scripts (examples/ci), run unchanged in the lab's gateway, for
/// two releases in a row each way, as the pipelines run them: a canary that waits at
/// `max_traffic` (exit 11) and is promoted by the approval job, there and back; the
/// idle side looked up, health-checked and switched to, blue→green then green→blue; the
/// same two switches through the signed webhook; and a canary of a backend that is
/// down, which the agent rolls back and the script fails with 10.
#[test]
fn ci_scripts_release_through_the_lab() {
    assert_pipelines_are_safe_to_copy();
    let web = v4(80);
    let shop = v6(80);
    let (lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green", "red"]),
        |lab| {
            let mut cfg = lab.agent_config(vec![
                tenant(lab, "web", web, &[("blue", 100), ("green", 0), ("red", 0)]),
                tenant(lab, "shop", shop, &[("blue", 1), ("green", 1)])
                    .with_canary(CanaryConfig::ten_plus_thirty("1s"))
                    .blue_green("blue", SwitchConfig::instant()),
            ]);
            cfg.webhook = Some(WebhookConfig {
                secret: WEBHOOK_SECRET.into(),
                tolerance: "5m".into(),
            });
            cfg
        },
    );

    // Canary job, then the approval job: green's 1.1.0, then blue's 1.0.0 back.
    for (version, to) in [("1.1.0", "green"), ("1.0.0", "blue")] {
        let canary = [
            ("KEYSTONE_SERVICE", "web"),
            ("KEYSTONE_VERSION", version),
            ("KEYSTONE_INITIAL_TRAFFIC", "10"),
            ("KEYSTONE_INCREMENT", "40"),
            ("KEYSTONE_MAX_TRAFFIC", "50"),
            ("KEYSTONE_INTERVAL", "1s"),
        ];
        expect_script(&lab, 11, "keystone-canary.sh", &canary);
        expect_script(
            &lab,
            0,
            "keystone-promote.sh",
            &[("KEYSTONE_SERVICE", "web")],
        );
        let s = tcp(&lab, web, 400);
        assert_all_on(&lab, &format!("web after releasing {version}"), &s, to);
    }

    // web has two environments without traffic: no single idle side, and the script says so.
    let (code, _, said) = run_script(&lab, "keystone-idle.sh", &[("KEYSTONE_SERVICE", "web")]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(
            "tenant web needs exactly one environment without traffic to release to; \
             its environments: blue 100%, green 0%, red 0% (set KEYSTONE_TO to choose)"
        ),
        "{said}"
    );

    // Blue/green jobs: the idle side, its health, the switch; twice, each way.
    for to in ["green", "blue"] {
        let service = ("KEYSTONE_SERVICE", "shop");
        let idle = expect_script(&lab, 0, "keystone-idle.sh", &[service]);
        assert_eq!(idle, format!("KEYSTONE_TO={to}\n"), "the idle side");
        let pinned = ("KEYSTONE_TO", to);
        let health = [
            service,
            pinned,
            ("KEYSTONE_HEALTH_TIMEOUT", "30"),
            ("KEYSTONE_HEALTH_PAUSE", "1"),
        ];
        expect_script(&lab, 0, "keystone-health.sh", &health);
        let switch = [service, pinned, ("KEYSTONE_SWITCH_STRATEGY", "instant")];
        expect_script(&lab, 0, "keystone-switch.sh", &switch);
        let s = tcp(&lab, shop, 400);
        assert_all_on(&lab, &format!("shop after the switch to {to}"), &s, to);
    }

    // Webhook jobs: the same two switches, the idle side looked up by the script.
    for (version, to) in [("1.1.0", "green"), ("1.0.0", "blue")] {
        let hook = [
            ("KEYSTONE_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("KEYSTONE_SERVICE", "shop"),
            ("KEYSTONE_VERSION", version),
            ("KEYSTONE_STRATEGY", "blue_green"),
            ("KEYSTONE_PIPELINE_ID", "4711"),
            ("KEYSTONE_COMMIT", "3f2c1e9"),
        ];
        expect_script(&lab, 0, "keystone-webhook.sh", &hook);
        let s = tcp(&lab, shop, 400);
        assert_all_on(&lab, &format!("shop after the webhook to {to}"), &s, to);
    }
    let hooked = ok(&lab, "GET /deployments", lab.deployments())
        .into_iter()
        .find(|d| d.tenant == "shop")
        .expect("the webhook's deployment");
    assert_eq!(
        hooked.pipeline.as_ref().map(|p| p["id"].clone()),
        Some(serde_json::json!("4711")),
        "{hooked:?}"
    );

    // A canary of a backend that is down: rolled back, the job fails with 10.
    let mut lab = lab;
    let r = lab.stop_backend("red");
    ok(&lab, "stopping red's server", r);
    let broken = [
        ("KEYSTONE_SERVICE", "web"),
        ("KEYSTONE_VERSION", "1.2.0"),
        ("KEYSTONE_INTERVAL", "1s"),
    ];
    expect_script(&lab, 10, "keystone-canary.sh", &broken);
    let s = tcp(&lab, web, 400);
    assert_all_on(&lab, "web after the rolled-back canary", &s, "blue");
}
