//! A coordinated multi-service plan in the namespace lab, with real traffic through
//! real XDP, the real agent and keystone-ctl: three tenants, one dependency, three
//! phases; the middle phase's canary fails its health checks and is rolled back while
//! the first phase holds, and the agent is SIGKILLed mid-phase on the way.
//! Run it with `cargo xtask test -- plans`.

use std::time::Duration;

use keystone_api::{PhaseState, Plan, PlanState};
use keystone_lab::{
    HealthCheck, Lab, Probe,
    helpers::{
        BACKEND_PORT, Setup, assert_all_on, assert_split, kill_agent, new_lab, stop_agent_cleanly,
        tcp, tcp_tenant, v4,
    },
    ok,
    plans::{ORCHESTRATION, TENANTS, assert_held_after_phase_2, events},
    wait_for,
};

const LONG: Duration = Duration::from_secs(90);
/// New connections per split measurement: at 50/50 σ = 0.79 points, so
/// `check_split`'s 4σ is ±3.2 points.
const CONNS: u32 = 4000;
/// New connections to check that every one lands on one backend.
const ALL_ON: u32 = 300;

/// The lab: six backends serving, the agent running the three tenants (fast HTTP
/// health checks) and the plan block.
fn plan_lab() -> Lab {
    let backends: Vec<&str> = TENANTS.iter().flat_map(|t| [t.2, t.3]).collect();
    let setup = Setup::nat(&backends);
    let mut lab = new_lab(keystone_lab::test_bins!(), setup.mode, setup.backends);
    let r = lab.start_backends(BACKEND_PORT);
    ok(&lab, "starting the backends", r);
    ok(&lab, "warming the neighbours", lab.warm_neighbours());
    let tenants = TENANTS
        .iter()
        .map(|(name, port, old, new, _)| {
            tcp_tenant(&lab, name, v4(*port), &[(old, 100), (new, 0)])
                .with_health(HealthCheck::fast_http())
        })
        .collect();
    let text = lab.agent_config(tenants).to_yaml() + ORCHESTRATION;
    ok(
        &lab,
        "writing the agent config",
        lab.write_config_text(&text),
    );
    let r = lab.start_agent();
    ok(&lab, "starting keystone-agent", r);
    lab
}

fn plan(lab: &Lab, id: &str) -> keystone_lab::Result<Plan> {
    lab.admin_get_as(&format!("/deployments/plans/{id}"))
}

/// Polls the plan until `done` holds for it.
fn wait_plan(lab: &Lab, id: &str, what: &str, done: impl Fn(&Plan) -> bool) -> Plan {
    let r = wait_for(&format!("plan {id}: {what}"), LONG, || {
        let p = plan(lab, id)?;
        Ok(if done(&p) {
            Probe::Ready(p)
        } else {
            Probe::NotYet(format!("{:#?}", p.phases))
        })
    });
    ok(lab, what, r)
}

/// Polls until `phase` runs and its canary has reached 50 % (awaiting approval).
fn wait_phase_at_50(lab: &Lab, id: &str, phase: usize) -> Plan {
    wait_plan(lab, id, "phase at 50 %", |p| {
        p.phases[phase].state == PhaseState::Running
            && p.phases[phase].deployments.values().all(|d| {
                lab.deployment(d)
                    .is_ok_and(|d| d.state == keystone_api::DeployState::AwaitingApproval)
            })
    })
}

fn vip_of(tenant: usize) -> std::net::SocketAddr {
    v4(TENANTS[tenant].1)
}

/// Tenant `tenant`'s new connections split 50/50 between its old and new backend.
fn assert_half_on_new(lab: &Lab, tenant: usize, what: &str) {
    let (_, _, old, new, _) = TENANTS[tenant];
    let s = tcp(lab, vip_of(tenant), CONNS);
    assert_split(lab, what, &s, &[(old, 50), (new, 50)]);
}

fn assert_on(lab: &Lab, tenant: usize, backend: &str, what: &str) {
    let s = tcp(lab, vip_of(tenant), ALL_ON);
    assert_all_on(lab, what, &s, backend);
}

/// `keystone-ctl canary promote` of user-service at phase 1: phase 2 runs at 50 %,
/// user-service all on its new version, product-service split. Returns the plan.
fn promote_to_phase_2(lab: &Lab, id: &str) -> Plan {
    let r = lab.ctl(&["canary", "promote", "--tenant", "user-service"]);
    let promoted = ok(lab, "keystone-ctl canary promote", r);
    assert!(promoted.status.success(), "{promoted:?}");
    let at_phase_2 = wait_phase_at_50(lab, id, 1);
    assert_eq!(at_phase_2.phases[0].state, PhaseState::Completed);
    assert_on(lab, 0, "u2", "phase 2: user-service on its new version");
    assert_half_on_new(lab, 1, "phase 2: product-service");
    at_phase_2
}

/// `keystone-ctl plan start` of every tenant's new version, each canary held at 50 %
/// for approval (`max_traffic 50`); returns the plan's id.
fn start_plan(lab: &Lab) -> String {
    let mut args = vec!["-o", "json", "plan", "start"];
    let versions: Vec<String> = TENANTS
        .iter()
        .map(|(name, _, _, _, v)| format!("{name}={v}"))
        .collect();
    for v in &versions {
        args.extend(["--service-version", v.as_str()]);
    }
    args.extend([
        "--initial-traffic",
        "50",
        "--max-traffic",
        "50",
        "--interval",
        "1s",
    ]);
    let out = ok(lab, "keystone-ctl plan start", lab.ctl(&args));
    assert!(
        out.status.success(),
        "plan start: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.agent_diagnostics()
    );
    let started: Plan = serde_json::from_slice(&out.stdout).expect("plan start answers a plan");
    started.id
}

/// The seed's plan over three tenants, each canary held at 50 % for approval
/// (`max_traffic 50`): phase 1 splits user-service only; promoted, phase 2 starts
/// product-service (user-service all on its new version); the agent is SIGKILLed and
/// restarted mid-phase and resumes phase 2 with the same canary; product-service's new
/// backend is stopped, its canary fails its health checks and is rolled back, phase 1
/// holds, payment-service never moves, and `keystone-ctl plan wait` exits 10.
#[test]
fn a_failing_middle_phase_is_rolled_back_while_the_first_holds() {
    let mut lab = plan_lab();
    let id = start_plan(&lab);
    let r = lab.spawn_ctl(
        "plan-wait",
        &[
            "plan",
            "wait",
            &id,
            "--timeout",
            "120s",
            "--interval",
            "200ms",
        ],
    );
    ok(&lab, "starting keystone-ctl plan wait", r);

    wait_phase_at_50(&lab, &id, 0);
    assert_half_on_new(&lab, 0, "phase 1: user-service");
    assert_on(&lab, 1, "p1", "phase 1: product-service not started");

    let at_phase_2 = promote_to_phase_2(&lab, &id);

    kill_agent(&mut lab);
    let r = lab.start_agent();
    ok(&lab, "starting keystone-agent again", r);
    let resumed = plan(&lab, &id).expect("the plan after the restart");
    assert_eq!(
        resumed.phases,
        at_phase_2.phases,
        "the restarted agent resumes phase 2 with the same canaries\n{}",
        lab.agent_diagnostics()
    );
    let deployments = ok(&lab, "GET /deployments", lab.deployments());
    assert_eq!(
        deployments.len(),
        2,
        "nothing started twice: {deployments:#?}"
    );

    let r = lab.stop_backend("p2");
    ok(&lab, "stopping p2's server", r);
    let held = wait_plan(&lab, &id, "held", |p| !p.is_running());
    eprintln!("{}", held.summary());
    assert_held_after_phase_2(&held);
    assert_on(&lab, 0, "u2", "held: user-service keeps its new version");
    assert_on(
        &lab,
        1,
        "p1",
        "held: product-service back on its old version",
    );
    assert_on(&lab, 2, "y1", "held: payment-service never moved");

    let r = lab.wait_exit("plan-wait", LONG);
    let status = ok(&lab, "keystone-ctl plan wait to exit", r);
    let printed = lab.stdout_of("plan-wait").unwrap_or_default();
    eprintln!("keystone-ctl plan wait ({status}):\n{printed}");
    assert_eq!(status.code(), Some(10), "{printed}");
    assert!(
        printed.contains(&format!("plan {id} ended held: phase_2 failed")),
        "{printed}"
    );
}

/// The plan survives a graceful restart and a reload in its middle: at phase 1 (50 %)
/// the agent is stopped with SIGTERM (it exits 0) and started again, then the config
/// is reloaded; each time the plan is still running phase 1 with the same canary and
/// the same split. Promoted, it goes on to phase 2, and its history has each phase
/// started once.
#[test]
fn a_plan_survives_a_sigterm_restart_and_a_reload() {
    let mut lab = plan_lab();
    let id = start_plan(&lab);
    let at_phase_1 = wait_phase_at_50(&lab, &id, 0);
    assert_half_on_new(&lab, 0, "phase 1 before the restart");

    stop_agent_cleanly(&mut lab);
    let r = lab.start_agent();
    ok(&lab, "starting keystone-agent again", r);
    let after_restart = plan(&lab, &id).expect("the plan after the restart");
    assert_eq!(
        (after_restart.state, &after_restart.phases),
        (PlanState::Running, &at_phase_1.phases),
        "the plan after a SIGTERM restart\n{}",
        lab.agent_diagnostics()
    );
    assert_half_on_new(&lab, 0, "phase 1 after the restart");

    ok(&lab, "keystone-ctl reload", lab.reload());
    let after_reload = plan(&lab, &id).expect("the plan after the reload");
    assert_eq!(
        (after_reload.state, &after_reload.phases),
        (PlanState::Running, &at_phase_1.phases),
        "the plan after a reload\n{}",
        lab.agent_diagnostics()
    );

    let at_phase_2 = promote_to_phase_2(&lab, &id);
    let counts = [
        events(&at_phase_2, "phase_1 started"),
        events(&at_phase_2, "phase_1 completed"),
        events(&at_phase_2, "phase_2 started"),
    ];
    assert_eq!(counts, [1, 1, 1], "{:#?}", at_phase_2.history);
}
