//! The deployment engine in the namespace lab: canaries that promote or roll back
//! themselves, a blue/green flip under load, the signed webhook, an agent killed in
//! the middle of a rollout, and the example CI scripts — with real traffic through
//! real XDP, the real agent and keystone-ctl. Run them with `cargo xtask test`.
//!
//! Every test builds its own lab (unique names, removed on drop, also on panic),
//! waits for states by polling with deadlines (never a sleep standing in for one),
//! and panics with the agent's output, its deployments and counters when something
//! is off.
//!
//! One file per topic: `canary`, `blue_green`, `webhook`, `restart`, `ci`, `notify`; what
//! several share is here.

mod blue_green;
mod canary;
mod ci;
mod notify;
mod restart;
mod webhook;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use keystone_api::{Action, DeployState, Strategy, SwitchStrategy};
use keystone_lab::{
    Auth, CanaryConfig, ClientLoop, Deployment, HealthCheck, Lab, Summary, SwitchConfig, Tenant,
    WebhookConfig,
    agent::{body_as, deployment_id},
    cmd,
    helpers::{
        Setup, assert_all_on, assert_holds_unbroken, batches_after, hold_events, lab_with_agent,
        tcp, tcp_tenant, unix_now, v4, v6, web_lab,
    },
    ok,
};

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
    deployment_id(&stdout(&out))
}

/// `keystone-ctl canary start web --version 1.1.0` with the lab's steps (10 %, +30 %
/// every `interval`); returns the deployment's id.
fn start_web_canary(lab: &Lab, interval: &str) -> String {
    let args = CanaryConfig::ten_plus_thirty(interval).ctl_start_args("web", "1.1.0");
    ctl_start(lab, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Opens batches of new connections to `vip` while deployment `id` (blue → green)
/// runs, until it completes with its last step measured; asserts it went through
/// `want` (after any 0 % validation step) and that each step's split of new
/// connections is within `check_split`'s 4σ for its n (n ≥ [`MIN_PER_STEP`] = 400:
/// ±9.8 points at 60/40, ±6.0 at 10/90). Returns the completed deployment.
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
            before.state == DeployState::Progressing || before.state == DeployState::Completed,
            "{id} is {}\n{}",
            before.summary(),
            lab.agent_diagnostics()
        );
        let final_measured = steps
            .get(&1000)
            .is_some_and(|s| s.answered() >= MIN_PER_STEP);
        if before.state == DeployState::Completed && final_measured {
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
        if let Err(table) = s.check_split(&weights) {
            panic!("step {percent}%: {table}\n{}", lab.agent_diagnostics());
        }
    }
    done
}

/// Waits until canary `id` is at its third step (10 → 40 %) and still progressing.
fn wait_for_40_percent(lab: &mut Lab, id: &str) -> Deployment {
    let r = lab.wait_deployment(id, "reach 40 %", LONG, |d| {
        d.canary_percent >= 40.0 || !d.is_running()
    });
    let at40 = ok(lab, "waiting for the canary", r);
    assert!(
        at40.state == DeployState::Progressing && at40.canary_percent == 40.0,
        "the canary did not get to 40 %: {}\n{}",
        at40.summary(),
        lab.agent_diagnostics()
    );
    at40
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

/// Effective weight per backend of every tenant, from `GET /tenants`.
fn weights(lab: &Lab) -> BTreeMap<String, u64> {
    let mut w = BTreeMap::new();
    for t in ok(lab, "GET /tenants", lab.tenants()) {
        for b in &t.backends {
            w.insert(
                format!("{}/{}", t.about.name, b.identity.name),
                u64::from(b.effective_weight),
            );
        }
    }
    w
}
