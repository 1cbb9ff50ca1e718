//! Rollouts across a fleet of three gateways sharing one desired state through a
//! real 3-member etcd cluster (the lab of `keystone_lab::fleet_etcd`): blue/green
//! switches under a client loop, coordinated plans, restarts and reloads in the
//! middle of a plan, a replayed webhook, and idle admin connections.
//!
//! Gateway `a` is the lab's agent and carries the client traffic; `b` and `c` attach
//! to veth pairs of their own. What they forward is proven by their table hash: the
//! same hash is the same Maglev table, hence the same backend for every flow
//! (`packet::table_hash`). Every wait polls with a deadline; the lab (etcd, agents,
//! clients) is removed on drop, also when a test fails.

use std::time::{Duration, Instant};

use keystone_api::{
    DeployState, Deployment, DeploymentList, FleetStatus, PhaseState, Plan, PlanState,
};
use keystone_lab::{
    ADMIN_TOKEN, AgentConfig, Auth, CanaryConfig, ClientLoop, HealthCheck, Lab, Probe,
    SwitchConfig, WebhookConfig,
    agent::{answer_as, body_as},
    fleet_etcd::{Fleet, LONG, deployment_id},
    helpers::{
        assert_all_on, assert_holds_unbroken, assert_none_failed, batches_after, hold_events,
        summed_since, tcp, tcp_tenant, v4,
    },
    ok,
    plans::{ORCHESTRATION, TENANTS, assert_held_after_phase_2, events},
    wait_for,
};

const SHORT: Duration = Duration::from_secs(30);
/// Keep-alive connections held through a switch.
const HELD: u32 = 50;
/// New connections to check that every one lands on one backend.
const ALL_ON: u32 = 400;

/// Tenant web as blue/green, blue active, switching by `switch`.
fn switch_config(lab: &Lab, switch: SwitchConfig) -> AgentConfig {
    let tenant = tcp_tenant(lab, "web", v4(80), &[("blue", 1), ("green", 1)])
        .with_health(HealthCheck::fast_http())
        .with_canary(CanaryConfig::ten_plus_thirty("2s"))
        .blue_green("blue", switch);
    lab.agent_config(vec![tenant])
}

/// `POST /deployments/blue-green/switch` web blue → green on gateway `id`; must be
/// accepted. Returns the deployment id.
fn start_switch(fleet: &Fleet, id: &str) -> String {
    let body = r#"{"service":"web","from":"blue","to":"green"}"#;
    let r = fleet.gateway(id).send(
        &fleet.lab,
        "POST",
        "/deployments/blue-green/switch",
        Some(body),
    );
    let (code, answer) = ok(&fleet.lab, "POST /deployments/blue-green/switch", r);
    assert_eq!(
        code,
        202,
        "switch on {id}: {answer}\n{}",
        fleet.diagnostics()
    );
    deployment_id(&answer)
}

/// Starts `keystone-ctl wait <id>` against gateway `on` as lab process `name`.
fn spawn_wait(fleet: &mut Fleet, on: &str, name: &str, id: &str) {
    let g = fleet.gateway(on).clone();
    let r = g.spawn_ctl(
        &mut fleet.lab,
        name,
        &["wait", id, "--timeout", "80s", "--interval", "200ms"],
    );
    ok(&fleet.lab, "starting keystone-ctl wait", r);
}

/// Lab process `name` (a `keystone-ctl wait`) exits with `code`.
fn assert_exits(fleet: &mut Fleet, name: &str, code: i32) {
    let r = fleet.lab.wait_exit(name, LONG);
    let status = ok(&fleet.lab, "keystone-ctl to exit", r);
    assert_eq!(
        status.code(),
        Some(code),
        "{name}: {}\n{}",
        fleet.lab.stdout_of(name).unwrap_or_default(),
        fleet.diagnostics()
    );
}

/// A blue/green instant switch started on gateway b while a client opens new
/// connections without pause and holds 50 keep-alive ones: no request fails, no held
/// connection breaks, every gateway confirms the flip with one table hash (a new
/// one), `keystone-ctl wait` on gateway c exits 0, and every new connection after the
/// flip lands on green.
#[test]
fn an_instant_switch_flips_every_gateway_under_load_with_zero_failures() {
    let mut fleet = Fleet::start_with(
        &["blue", "green"],
        &["a", "b", "c"],
        |lab| switch_config(lab, SwitchConfig::instant()),
        "",
    );
    let vip = v4(80);
    let before = fleet.wait_in_step("the fleet before the switch");
    let blue_hash = fleet.one_hash(&before, "web", "before the switch");
    assert_all_on(
        &fleet.lab,
        "before the switch",
        &tcp(&fleet.lab, vip, ALL_ON),
        "blue",
    );

    let r = fleet.lab.spawn_hold("hold", vip, HELD, 150, 100);
    ok(&fleet.lab, "starting ks-client --hold", r);
    let r = fleet.lab.held_answers("hold", HELD, 0, 2, SHORT);
    let held = ok(&fleet.lab, "held connections answering", r);
    assert!(held.iter().all(|b| b == "blue"), "held before: {held:?}");
    let traffic = ok(
        &fleet.lab,
        "starting the client loop",
        fleet.lab.client_loop(vip, 100, LONG),
    );
    batches_after(&fleet.lab, &traffic, Instant::now(), 2);

    let written = Instant::now();
    let id = start_switch(&fleet, "b");
    spawn_wait(&mut fleet, "c", "wait-c", &id);
    let flipped = fleet.lab.wait_deployment(&id, "flip to green", LONG, |d| {
        d.canary_percent >= 100.0 || !d.is_running()
    });
    let flipped = ok(&fleet.lab, "the flip", flipped);
    assert_ne!(flipped.state, DeployState::Failed, "{}", flipped.summary());
    let statuses = fleet.wait_in_step("every gateway to confirm the flip");
    eprintln!(
        "switch written on b to the last gateway's confirmation: {:?}",
        written.elapsed()
    );
    let green_hash = fleet.one_hash(&statuses, "web", "after the flip");
    assert_ne!(green_hash, blue_hash, "the flip did not change the table");
    let flipped_at = Instant::now();
    batches_after(&fleet.lab, &traffic, flipped_at, 3);
    assert_exits(&mut fleet, "wait-c", 0);
    let batches = ok(&fleet.lab, "the client loop", traffic.stop());

    let total = ClientLoop::total(&batches);
    eprintln!(
        "{} batches through the switch: {:?}, {} failed",
        batches.len(),
        total.by_backend,
        total.failed
    );
    assert_none_failed("new connections during the switch", &total, || {
        fleet.diagnostics()
    });
    let after = summed_since(&batches, flipped_at);
    assert_all_on(
        &fleet.lab,
        "new connections after the flip",
        &after,
        "green",
    );
    let events = hold_events(&fleet.lab, "hold");
    assert_holds_unbroken(&fleet.lab, "held connections through the switch", &events);
    for g in ["a", "b", "c"] {
        let d = fleet.deployment(g, &id);
        assert_eq!(d.state, DeployState::Completed, "{g}: {}", d.summary());
    }
    let r = fleet.lab.stop("hold");
    ok(&fleet.lab, "stopping ks-client --hold", r);
}

/// The seed's gradual switch (25 % a step) started on gateway b: after every step
/// every gateway has confirmed it with one table hash and the split of new
/// connections through a matches the step; it completes on green everywhere.
#[test]
fn a_gradual_switch_steps_every_gateway_alike() {
    // 1,300 connections: at 50/50 (the widest) one standard deviation is
    // 100·√(0.25/1300) = 1.39 points; `check_split` allows 4σ, ±5.5 points.
    const N: u32 = 1300;
    let mut fleet = Fleet::start_with(
        &["blue", "green"],
        &["a", "b", "c"],
        |lab| switch_config(lab, SwitchConfig::seed_gradual("3s", 25.0)),
        "",
    );
    let vip = v4(80);
    let id = start_switch(&fleet, "b");
    let seen = fleet.follow_steps(&id, vip, N);
    eprintln!("steps measured through a: {seen:?}");
    let done = fleet.deployment("b", &id);
    // 0 %: the idle side is validated before the first step.
    assert_eq!(
        done.percent_steps(),
        vec![0.0, 25.0, 50.0, 75.0, 100.0],
        "{}",
        done.history_table()
    );
    assert_all_on(
        &fleet.lab,
        "after the gradual switch",
        &tcp(&fleet.lab, vip, ALL_ON),
        "green",
    );
}

/// New connections per split measurement: at 50/50 one standard deviation is
/// 100·√(0.25/4000) = 0.79 points; `check_split` allows 4σ, ±3.2 points.
const CONNS: u32 = 4000;

/// Gateways a, b, c running the three tenants (fast HTTP health checks) and the plan.
fn plan_fleet() -> Fleet {
    let backends: Vec<&str> = TENANTS.iter().flat_map(|t| [t.2, t.3]).collect();
    Fleet::start_with(
        &backends,
        &["a", "b", "c"],
        |lab| {
            let tenants = TENANTS
                .iter()
                .map(|(name, port, old, new, _)| {
                    tcp_tenant(lab, name, v4(*port), &[(old, 100), (new, 0)])
                        .with_health(HealthCheck::fast_http())
                })
                .collect();
            lab.agent_config(tenants)
        },
        ORCHESTRATION,
    )
}

/// `POST /deployments/plans` on gateway `on`: every canary starts at 50 % and waits
/// there for approval (`max_traffic 50`). Returns the plan.
fn start_plan(fleet: &Fleet, on: &str) -> Plan {
    let versions: Vec<String> = TENANTS
        .iter()
        .map(|(name, _, _, _, v)| format!("\"{name}\":\"{v}\""))
        .collect();
    let body = format!(
        r#"{{"versions":{{{}}},"initial_traffic":50,"max_traffic":50,"interval":"1s"}}"#,
        versions.join(",")
    );
    let (code, answer) = fleet.send(on, "POST", "/deployments/plans", Some(&body));
    assert!(
        (200..300).contains(&code),
        "plan start on {on}: {code} {answer}\n{}",
        fleet.diagnostics()
    );
    body_as("a plan", &answer).unwrap_or_else(|e| panic!("{e}"))
}

/// Plan `id` as gateway `on` shows it.
fn plan(fleet: &Fleet, on: &str, id: &str) -> keystone_lab::Result<Plan> {
    let path = format!("/deployments/plans/{id}");
    let (code, body) = fleet.gateway(on).send(&fleet.lab, "GET", &path, None)?;
    answer_as(&format!("GET {path} on {on}"), code, &body)
}

/// Polls plan `id` on gateway `on` until `done` holds for it.
fn wait_plan(fleet: &Fleet, on: &str, id: &str, what: &str, done: impl Fn(&Plan) -> bool) -> Plan {
    let r = wait_for(&format!("plan {id} on {on}: {what}"), LONG, || {
        let p = plan(fleet, on, id)?;
        Ok(if done(&p) {
            Probe::Ready(p)
        } else {
            Probe::NotYet(p.summary())
        })
    });
    ok(&fleet.lab, what, r)
}

/// Polls on gateway `on` until `phase` runs and each of its canaries waits at 50 %
/// for approval; then waits until every gateway has confirmed that state.
fn wait_phase_at_50(fleet: &Fleet, on: &str, id: &str, phase: usize) -> (Plan, Vec<FleetStatus>) {
    let p = wait_plan(fleet, on, id, "phase at 50 %", |p| {
        p.phases[phase].state == PhaseState::Running
            && p.phases[phase].deployments.values().all(|d| {
                let (code, body) = fleet.send(on, "GET", &format!("/deployments/{d}"), None);
                code == 200
                    && body_as::<Deployment>("a deployment", &body)
                        .is_ok_and(|d| d.state == DeployState::AwaitingApproval)
            })
    });
    (p, fleet.wait_in_step("every gateway to confirm the phase"))
}

/// Every gateway has one table hash per tenant (checked for all three tenants).
fn same_tables(fleet: &Fleet, statuses: &[FleetStatus], what: &str) {
    for (name, ..) in TENANTS {
        fleet.one_hash(statuses, name, what);
    }
}

fn vip_of(tenant: usize) -> std::net::SocketAddr {
    v4(TENANTS[tenant].1)
}

/// Tenant `tenant`'s new connections through a split 50/50 between old and new.
fn assert_half_on_new(fleet: &Fleet, tenant: usize, what: &str) {
    let (_, _, old, new, _) = TENANTS[tenant];
    let s = tcp(&fleet.lab, vip_of(tenant), CONNS);
    if let Err(table) = s.check_split(&[(old, 50), (new, 50)]) {
        panic!("{what}: {table}\n{}", fleet.diagnostics());
    }
}

fn assert_on(fleet: &Fleet, tenant: usize, backend: &str, what: &str) {
    let s = tcp(&fleet.lab, vip_of(tenant), ALL_ON);
    assert_all_on(&fleet.lab, what, &s, backend);
}

/// The seed's three-service plan on a fleet: started on gateway b and followed with
/// `keystone-ctl plan wait` on c. Each phase's weights are applied by every gateway
/// (one table hash per tenant everywhere, the split through a). At phase 2 the leader
/// is SIGKILLed: another gateway takes the plan over at the same phase with the same
/// canaries (nothing started twice, no phase repeated or skipped in the plan's
/// history). product-service's new backend then fails its health checks (its server
/// is stopped, so every gateway's probes fail): phase 2 is rolled back while phase 1
/// holds, on every gateway, and `plan wait` on c exits 10.
#[test]
fn a_plan_on_the_fleet_moves_every_gateway_and_survives_the_leader() {
    let mut fleet = plan_fleet();
    let started = start_plan(&fleet, "b");
    let id = started.id.clone();
    let c = fleet.gateway("c").clone();
    let r = c.spawn_ctl(
        &mut fleet.lab,
        "plan-wait-c",
        &[
            "plan",
            "wait",
            &id,
            "--timeout",
            "150s",
            "--interval",
            "200ms",
        ],
    );
    ok(&fleet.lab, "starting keystone-ctl plan wait on c", r);

    let (_, statuses) = wait_phase_at_50(&fleet, "c", &id, 0);
    same_tables(&fleet, &statuses, "phase 1");
    assert_half_on_new(&fleet, 0, "phase 1: user-service");
    assert_on(&fleet, 1, "p1", "phase 1: product-service not started");

    let user = started.phases[0].deployments["user-service"].clone();
    let (code, body) =
        fleet.send_when_in_step("a", "POST", &format!("/deployments/{user}/promote"), None);
    assert!((200..300).contains(&code), "promote on a: {code} {body}");
    let (at_phase_2, statuses) = wait_phase_at_50(&fleet, "c", &id, 1);
    assert_eq!(at_phase_2.phases[0].state, PhaseState::Completed);
    same_tables(&fleet, &statuses, "phase 2");
    assert_on(&fleet, 0, "u2", "phase 2: user-service on its new version");
    assert_half_on_new(&fleet, 1, "phase 2: product-service");

    let leader = statuses[0].leader.clone().expect("a leader");
    let survivor = if leader == "b" { "c" } else { "b" };
    let killed = fleet.gateway(&leader).process.clone();
    let r = fleet.lab.kill(&killed);
    ok(&fleet.lab, "killing the leader", r);
    let new_leader = fleet.wait_new_leader(survivor, &leader);
    eprintln!("leader {leader} killed at phase 2; {new_leader} took over");
    fleet.restart(&leader);
    fleet.wait_in_step("the fleet with the killed gateway back");
    let resumed = plan(&fleet, survivor, &id).expect("the plan after the failover");
    assert_eq!(
        resumed.phases, at_phase_2.phases,
        "the new leader resumes phase 2 with the same canaries"
    );

    let r = fleet.lab.stop_backend("p2");
    ok(&fleet.lab, "stopping p2's server", r);
    let held = wait_plan(&fleet, survivor, &id, "held", |p| !p.is_running());
    eprintln!("{}", held.summary());
    assert_held_after_phase_2(&held);
    // One start per phase that ran, and one completion of phase 1: nothing repeated
    // or skipped across the failover.
    let counts = [
        events(&held, "phase_1 started"),
        events(&held, "phase_1 completed"),
        events(&held, "phase_2 started"),
        events(&held, "phase_2 failed"),
        events(&held, "phase_3"),
    ];
    assert_eq!(counts, [1, 1, 1, 1, 0], "{:#?}", held.history);
    let (_, list) = fleet.send(survivor, "GET", "/deployments", None);
    let list: DeploymentList = body_as("GET /deployments", &list).expect("deployments");
    assert_eq!(list.deployments.len(), 2, "nothing started twice: {list:?}");

    let statuses = fleet.wait_in_step("every gateway to confirm the rollback");
    same_tables(&fleet, &statuses, "held");
    assert_on(&fleet, 0, "u2", "held: user-service keeps its new version");
    assert_on(
        &fleet,
        1,
        "p1",
        "held: product-service back on its old version",
    );
    assert_on(&fleet, 2, "y1", "held: payment-service never moved");
    assert_exits(&mut fleet, "plan-wait-c", 10);
}

/// The webhook's shared secret in these labs.
const WEBHOOK_SECRET: &str = "lab-webhook-secret-0123";

/// `X-Keystone-Timestamp` and `X-Keystone-Signature` for `body`, signed now with
/// [`WEBHOOK_SECRET`] by the agent's own code.
fn signed(body: &str) -> Vec<(&'static str, String)> {
    let ts = keystone_lab::helpers::unix_now() as u64;
    vec![
        ("X-Keystone-Timestamp", ts.to_string()),
        (
            "X-Keystone-Signature",
            keystone_agent::webhook::sign(WEBHOOK_SECRET.as_bytes(), ts, body.as_bytes()),
        ),
    ]
}

/// `POST /webhooks/deployment` (no bearer token) on gateway `on`: (status, body).
fn post_webhook(fleet: &Fleet, on: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let g = fleet.gateway(on);
    let r = fleet.lab.admin_send_to(
        &g.admin,
        "POST",
        "/webhooks/deployment",
        Auth::None,
        headers,
        Some(body),
    );
    ok(&fleet.lab, &format!("POST /webhooks/deployment on {on}"), r)
}

/// The ids of the deployments gateway `on` lists.
fn deployment_ids(fleet: &Fleet, on: &str) -> Vec<String> {
    let (code, body) = fleet.send(on, "GET", "/deployments", None);
    assert_eq!(code, 200, "GET /deployments on {on}: {body}");
    let list: DeploymentList = body_as("GET /deployments", &body).expect("deployments");
    list.deployments.into_iter().map(|d| d.id).collect()
}

/// A signed webhook delivered to gateway a, its deployment aborted (so a replay
/// accepted by mistake would start another), then the same delivery (body, signature,
/// timestamp) replayed to gateways b and c: both refuse it with 401 "already
/// accepted", and every gateway lists the one deployment. A fresh delivery to b is
/// accepted: the refusal is of the replay, not of b's webhook. With etcd stopped a
/// delivery is refused with 503 naming etcd.
#[test]
fn a_webhook_replayed_to_another_member_is_refused_fleet_wide() {
    let mut fleet = Fleet::start_with(
        &["blue", "green"],
        &["a", "b", "c"],
        |lab| {
            let mut cfg = keystone_lab::fleet_etcd::web_config(lab, "10m");
            cfg.webhook = Some(WebhookConfig {
                secret: WEBHOOK_SECRET.into(),
                tolerance: "5m".into(),
            });
            cfg
        },
        "",
    );
    let body = r#"{"service":"web","version":"1.1.0","strategy":"canary"}"#;
    let headers = signed(body);
    let (code, answer) = post_webhook(&fleet, "a", &headers, body);
    assert_eq!(
        code,
        202,
        "the first delivery, to a: {answer}\n{}",
        fleet.diagnostics()
    );
    let id = deployment_id(&answer);
    let (code, answer) = fleet.send("a", "POST", &format!("/deployments/{id}/abort"), None);
    assert_eq!(code, 200, "aborting {id}: {answer}");
    fleet.wait_in_step("every gateway to see the abort");
    for on in ["b", "c"] {
        let (code, answer) = post_webhook(&fleet, on, &headers, body);
        assert!(
            code == 401 && answer.contains("already accepted"),
            "the same delivery replayed to {on}: HTTP {code} {answer} (want 401)\n{}",
            fleet.diagnostics()
        );
    }
    fleet.wait_in_step("the fleet after the replays");
    for on in ["a", "b", "c"] {
        assert_eq!(
            deployment_ids(&fleet, on),
            vec![id.clone()],
            "deployments on {on}"
        );
    }
    let fresh = r#"{"service":"web","version":"1.1.0","strategy":"canary","pipeline":{"run":2}}"#;
    let (code, answer) = post_webhook(&fleet, "b", &signed(fresh), fresh);
    assert_eq!(code, 202, "a fresh delivery to b: {answer}");

    // Without etcd no gateway can tell whether another accepted a delivery.
    let r = fleet.etcd.stop(&mut fleet.lab);
    ok(&fleet.lab, "stopping etcd", r);
    let third = r#"{"service":"web","version":"1.1.0","strategy":"canary","pipeline":{"run":3}}"#;
    let r = wait_for("c to refuse a delivery while etcd is down", SHORT, || {
        let (code, answer) = post_webhook(&fleet, "c", &signed(third), third);
        Ok(if code == 503 {
            Probe::Ready(answer)
        } else {
            Probe::NotYet(format!("HTTP {code} {answer}"))
        })
    });
    let answer = ok(&fleet.lab, "a delivery while etcd is down", r);
    assert!(answer.contains("etcd"), "the refusal names etcd: {answer}");
}

/// A plan on the fleet survives a graceful restart and a reload in its middle: at
/// phase 1 (50 %) the leader is stopped with SIGTERM (it exits 0; another gateway
/// leads) and started again, and gateway c reloads its config; each time the plan
/// still runs phase 1 with the same canary, on every gateway. Promoted on the
/// restarted gateway, it goes on to phase 2 everywhere, each phase started once.
#[test]
fn a_plan_on_the_fleet_survives_a_sigterm_restart_and_a_reload() {
    let mut fleet = plan_fleet();
    let started = start_plan(&fleet, "b");
    let id = started.id.clone();
    let (at_phase_1, statuses) = wait_phase_at_50(&fleet, "c", &id, 0);
    let leader = statuses[0].leader.clone().expect("a leader");
    let survivor = if leader == "b" { "c" } else { "b" };

    let process = fleet.gateway(&leader).process.clone();
    let r = fleet.lab.stop(&process);
    let status = ok(&fleet.lab, "stopping the leader with SIGTERM", r);
    assert!(
        status.is_some_and(|s| s.success()),
        "the leader {leader} stopped with SIGTERM exited {status:?}\n{}",
        fleet.diagnostics()
    );
    let new_leader = fleet.wait_new_leader(survivor, &leader);
    eprintln!("leader {leader} stopped at phase 1; {new_leader} took over");
    fleet.restart(&leader);
    let statuses = fleet.wait_in_step("the fleet with the restarted gateway back");
    same_tables(&fleet, &statuses, "phase 1 after the restart");
    for on in ["a", "b", "c"] {
        let p = plan(&fleet, on, &id).expect("the plan after the restart");
        assert_eq!(
            (p.state, &p.phases),
            (PlanState::Running, &at_phase_1.phases),
            "the plan on {on} after a SIGTERM restart of {leader}"
        );
    }
    assert_half_on_new(&fleet, 0, "phase 1 after the restart");

    let (code, body) = fleet.send("c", "POST", "/admin/reload", None);
    assert_eq!(code, 200, "reload on c: {body}\n{}", fleet.diagnostics());
    let statuses = fleet.wait_in_step("the fleet after the reload");
    same_tables(&fleet, &statuses, "phase 1 after the reload");
    let p = plan(&fleet, "c", &id).expect("the plan after the reload");
    assert_eq!(
        (p.state, &p.phases),
        (PlanState::Running, &at_phase_1.phases),
        "the plan after a reload on c"
    );

    let user = started.phases[0].deployments["user-service"].clone();
    let path = format!("/deployments/{user}/promote");
    let (code, body) = fleet.send(&leader, "POST", &path, None);
    assert!(
        (200..300).contains(&code),
        "promote on {leader}: {code} {body}"
    );
    let (at_phase_2, statuses) = wait_phase_at_50(&fleet, "a", &id, 1);
    assert_eq!(at_phase_2.phases[0].state, PhaseState::Completed);
    same_tables(&fleet, &statuses, "phase 2");
    assert_on(&fleet, 0, "u2", "phase 2: user-service on its new version");
    assert_half_on_new(&fleet, 1, "phase 2: product-service");
    let counts = [
        events(&at_phase_2, "phase_1 started"),
        events(&at_phase_2, "phase_1 completed"),
        events(&at_phase_2, "phase_2 started"),
    ];
    assert_eq!(counts, [1, 1, 1], "{:#?}", at_phase_2.history);
}

/// Idle admin connections held open against gateway a.
const IDLE: usize = 500;
/// Gateway a's open-files limit: systemd's default soft limit, and no higher hard
/// one to raise it to.
const AGENT_NOFILE: &str = "--nofile=1024:1024";

/// From inside network namespace `ns`: [`IDLE`] connections to `admin`, opened and
/// held without a byte sent, each opened again when the agent closes it, until
/// `stop` is set. Returns how many times one was opened again.
fn hold_idle(ns: &str, admin: std::net::SocketAddr, stop: &std::sync::atomic::AtomicBool) -> u64 {
    use std::{io::Read, net::TcpStream, sync::atomic::Ordering};
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("the namespace");
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let connect = || {
        let s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    };
    let mut held: Vec<Option<TcpStream>> = (0..IDLE).map(|_| connect()).collect();
    let mut reopened = 0;
    // Bounded: the test stops it, and it ends by itself after two minutes.
    let until = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        for s in &mut held {
            // Closed by the agent (EOF or an answer such as a 503 before closing).
            let closed = s.as_mut().is_none_or(|s| {
                let mut buf = [0u8; 512];
                !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            });
            if closed {
                *s = connect();
                reopened += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    reopened
}

/// Descriptors gateway a's agent has open now.
fn open_fds(fleet: &Fleet) -> usize {
    let pid = ok(
        &fleet.lab,
        "the agent's pid",
        fleet.lab.pid_of(keystone_lab::agent::AGENT),
    );
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 500 idle admin connections held against gateway a (running at an open-files limit
/// of 1,024, no higher hard limit), opened again whenever a closes one, while a canary
/// started on b runs: the canary completes on every gateway, `keystone-ctl wait` on a
/// exits 0, every API request on a new connection to a is answered (a connection idle
/// the longest gives its slot to a new one: `keystone_admin_connections_evicted_total`
/// counts them), and a never holds more descriptors than its limit allows.
#[test]
fn idle_admin_connections_do_not_stop_a_fleet_canary_or_the_api() {
    let mut fleet = Fleet::start(&["a", "b", "c"], "3s");
    let r = fleet.lab.stop_agent();
    ok(&fleet.lab, "stopping gateway a", r);
    let r = fleet
        .lab
        .start_agent_wrapped(&["/usr/bin/prlimit", AGENT_NOFILE], &[]);
    ok(&fleet.lab, "starting gateway a under prlimit", r);
    fleet.wait_in_step("the fleet with a under prlimit");

    let stop = std::sync::atomic::AtomicBool::new(false);
    let ns = fleet.lab.gateway_ns().to_owned();
    let admin: std::net::SocketAddr = fleet.gateway("a").admin.parse().expect("address");
    let (reopened, answers, most_fds) = std::thread::scope(|s| {
        let holder = s.spawn(|| hold_idle(&ns, admin, &stop));
        let r = wait_for("the idle connections to be open", SHORT, || {
            let open = metric_of(&fleet, "a", "keystone_admin_connections");
            Ok(if open >= 200.0 || holder.is_finished() {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{open} open"))
            })
        });
        ok(&fleet.lab, "idle connections", r);
        let (code, body) = fleet.start_canary("b");
        assert!((200..300).contains(&code), "start on b: {code} {body}");
        let id = deployment_id(&body);
        let a = fleet.gateway("a").clone();
        let (ns, id_arg, ctl) = (&ns, id.clone(), fleet.lab.bins().ctl.clone());
        let waiter = s.spawn(move || {
            let mut c = keystone_lab::cmd::in_ns(ns, &ctl);
            c.args(["--api", &format!("http://{admin}"), "--token", ADMIN_TOKEN]);
            c.args(["wait", &id_arg, "--timeout", "80s", "--interval", "200ms"]);
            keystone_lab::cmd::output(&mut c)
        });
        let mut answers: Vec<u16> = Vec::new();
        let mut most_fds = 0;
        let done = wait_for(
            "the canary to complete under idle connections",
            LONG,
            || {
                let (code, body) =
                    a.send(&fleet.lab, "GET", &format!("/deployments/{id}"), None)?;
                answers.push(code);
                most_fds = most_fds.max(open_fds(&fleet));
                let completed = body_as::<Deployment>("a deployment", &body)
                    .is_ok_and(|d| d.state == DeployState::Completed);
                Ok(if code == 200 && completed {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(format!("HTTP {code} {body}"))
                })
            },
        );
        let waited = waiter.join().expect("keystone-ctl wait");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let reopened = holder.join().expect("the idle holder");
        ok(&fleet.lab, "the canary", done);
        let waited = ok(&fleet.lab, "keystone-ctl wait on a", waited);
        assert_eq!(
            waited.status.code(),
            Some(0),
            "keystone-ctl wait on a: {}{}",
            String::from_utf8_lossy(&waited.stdout),
            String::from_utf8_lossy(&waited.stderr)
        );
        (reopened, answers, most_fds)
    });
    eprintln!(
        "{} API answers on a during the canary, {reopened} idle connections opened again, \
         at most {most_fds} descriptors open",
        answers.len()
    );
    assert!(
        answers.iter().all(|c| *c == 200),
        "requests on new connections to a: {answers:?}\n{}",
        fleet.diagnostics()
    );
    assert!(most_fds < 1024, "a held {most_fds} descriptors");
    assert!(
        metric_of(&fleet, "a", "keystone_admin_connections_evicted_total") > 0.0,
        "idle connections gave their slots up"
    );
    let statuses = fleet.wait_in_step("every gateway after the canary");
    fleet.one_hash(&statuses, "web", "after the canary");
}

/// The value of gateway `on`'s metric `name` (no labels), 0 when absent.
fn metric_of(fleet: &Fleet, on: &str, name: &str) -> f64 {
    let (_, body) = fleet.send(on, "GET", "/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
