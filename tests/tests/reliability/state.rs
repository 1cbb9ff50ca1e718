//! What the agent keeps and refuses around its state: a change that cannot be saved,
//! a restart with a dead backend, an unreadable state file.

use keystone_api::{ErrorBody, HealthState, HealthStatus, TrafficSource};
use keystone_lab::agent::{body_as, deployment_id};

use super::*;

/// A lab whose agent keeps its state on a tmpfs of `bytes` (mounted before it starts).
fn lab_with_small_state_dir(bytes: u64, cfg: impl FnOnce(&Lab) -> AgentConfig) -> Lab {
    let mut lab = new_lab(keystone_lab::test_bins!(), Mode::Nat, &["blue", "green"]);
    let dir = lab.agent_state_dir();
    let r = lab.mount_tmpfs(&dir, bytes);
    ok(&lab, "mounting a tmpfs on the agent's state dir", r);
    let r = lab.start_with_config(BACKEND_PORT, &[], |lab| Ok(cfg(lab)));
    ok(&lab, "starting the backends and keystone-agent", r);
    lab
}

/// `n` new TCP connections to the VIP, which must all be answered by `backend`.
fn assert_new_connections_on(lab: &Lab, what: &str, backend: &str) {
    let s = ok(lab, "TCP connections", lab.tcp_connections(vip(), 200));
    assert!(
        s.failed == 0 && s.by_backend.keys().eq([backend]),
        "{what}: expected every new connection on {backend}, got {:?} ({} failed)\n{}",
        s.by_backend,
        s.failed,
        lab.agent_diagnostics()
    );
}

/// The live table hash of the lab's first tenant (`status.tenants[0].table_hash`).
fn table_hash(lab: &Lab) -> keystone_lab::Result<Option<String>> {
    Ok(lab
        .status()?
        .tenants
        .first()
        .and_then(|t| t.table_hash.clone()))
}

/// Posts `switch` to `/deployments/blue-green/switch` (`what` names it), waits until
/// it has completed, and checks that new connections land on green.
fn switch_completes(lab: &mut Lab, what: &str, switch: &str) {
    let (code, answer) = admin(lab, "POST", "/deployments/blue-green/switch", Some(switch));
    assert_eq!(code, 202, "{what}: {answer}");
    let id = deployment_id(&answer);
    let r = lab.wait_deployment(&id, "finish", SHORT, |d| !d.is_running());
    let done = ok(lab, "waiting for the switch", r);
    assert_eq!(
        done.state,
        DeployState::Completed,
        "{}",
        done.history_table()
    );
    assert_new_connections_on(lab, "after the switch", "green");
}

/// `method path` with `body` and the admin token: (status, body).
fn admin(lab: &Lab, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    ok(
        lab,
        path,
        lab.admin_send(method, path, Auth::Token, &[], body),
    )
}

/// With the state directory full, then read-only, a switch and a weight change are
/// refused with 503 naming the reason and change nothing (new connections stay on
/// blue); `/health` is degraded and names the file, and
/// `keystone_state_write_failures_total` counts the failures. Once the disk takes
/// writes again the switch works and survives a restart.
#[test]
fn a_change_that_cannot_be_saved_is_refused_and_not_applied() {
    let mut lab = lab_with_small_state_dir(256 * 1024, |lab| {
        lab.agent_config(vec![tcp_tenant(
            lab,
            "web",
            vip(),
            &[("blue", 100), ("green", 0)],
        )])
    });
    let dir = lab.agent_state_dir();
    let filler = dir.join("filler");
    let r = keystone_lab::mounts::fill_filesystem(&filler, 1 << 20);
    ok(&lab, "filling the state dir", r);
    let switch = r#"{"service":"web","to":"green","interval":"1s"}"#;
    let weights = r#"{"weights":{"blue":0,"green":100}}"#;
    let refusals = [
        ("POST", "/deployments/blue-green/switch", switch),
        ("POST", "/tenants/web/weights", weights),
    ];
    for (disk, reason) in [
        ("full", "No space left on device"),
        ("read-only", "Read-only file system"),
    ] {
        if disk == "read-only" {
            std::fs::remove_file(&filler).expect("removing the filler");
            let r = lab.set_read_only(&dir, true);
            ok(&lab, "remounting the state dir read-only", r);
        }
        for (method, path, body) in refusals {
            let (code, answer) = admin(&lab, method, path, Some(body));
            let error = body_as::<ErrorBody>(path, &answer)
                .map(|e| e.error)
                .unwrap_or_default();
            assert!(
                code == 503 && error.contains("not applied") && error.contains(reason),
                "{method} {path} with the state dir {disk}: HTTP {code} {answer} (want 503 naming '{reason}')\n{}",
                lab.agent_diagnostics()
            );
        }
        assert_new_connections_on(&lab, &format!("after the refusals ({disk} disk)"), "blue");
        let health = ok(&lab, "GET /health", lab.health());
        assert!(
            health.status == HealthStatus::Degraded
                && health
                    .persistence
                    .unsaved
                    .get("state")
                    .is_some_and(|e| e.contains(reason)),
            "/health with the state dir {disk}: {health:#?}"
        );
    }
    assert!(
        ok(&lab, "deployments", lab.deployments()).is_empty(),
        "a refused switch left a deployment"
    );
    let (_, metrics) = ok(&lab, "GET /metrics", lab.admin_get("/metrics"));
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"keystone_state_write_failures_total{file="state"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        failures >= 4.0,
        "4 failed state writes, metric says {failures}:\n{metrics}"
    );

    let r = lab.set_read_only(&dir, false);
    ok(&lab, "remounting the state dir read-write", r);
    switch_completes(&mut lab, "the switch once the disk takes writes", switch);
    // Every file that failed while the disk was full is written again on its own
    // (health.json too, which otherwise saves only on a health change).
    let r = keystone_lab::wait_for("/health to be ok again", SHORT, || {
        let health = lab.health()?;
        Ok(if health.status == HealthStatus::Ok {
            keystone_lab::Probe::Ready(())
        } else {
            keystone_lab::Probe::NotYet(format!("{health:#?}"))
        })
    });
    ok(&lab, "/health once the disk takes writes", r);
    let r = lab.stop_agent();
    ok(&lab, "stopping the agent", r);
    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    assert_new_connections_on(&lab, "after a restart", "green");
}

/// The agent restarted (SIGKILL) under load while green's backend is dead and known
/// to be down: no new connection is refused, not even before the restarted agent's
/// first checks, because it starts from the health it saved.
#[test]
fn a_restart_with_a_dead_backend_refuses_no_connection() {
    let (mut lab, _) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            lab.agent_config(vec![
                tcp_tenant(lab, "web", vip(), &[("blue", 1), ("green", 1)])
                    .with_health(HealthCheck::fast_http()),
            ])
        },
    );
    let with_green = ok(&lab, "GET /status", table_hash(&lab));
    let r = lab.stop_backend("green");
    ok(&lab, "stopping green's backend", r);
    // The status shows the health before the data plane drops green (the health
    // follow-up applies it): wait for the live table to change too.
    let r = keystone_lab::wait_for("green to be down and out of the table", SHORT, || {
        let health = lab
            .tenants()?
            .first()
            .and_then(|t| t.backends.get(1))
            .map(|b| b.identity.health);
        let table = table_hash(&lab)?;
        Ok(
            if health == Some(HealthState::Down) && table != with_green {
                keystone_lab::Probe::Ready(())
            } else {
                keystone_lab::Probe::NotYet(format!(
                    "green {health:?}, table {table:?} (with green {with_green:?})"
                ))
            },
        )
    });
    ok(&lab, "waiting for green's health", r);
    let traffic = ok(
        &lab,
        "starting the client loop",
        lab.client_loop(vip(), 100, Duration::from_secs(90)),
    );
    batches_after(&lab, &traffic, Instant::now(), 2);
    let r = lab.kill("agent");
    ok(&lab, "killing the agent", r);
    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    batches_after(&lab, &traffic, Instant::now(), 4);
    let batches = ok(&lab, "the client loop", traffic.stop());
    let total = ClientLoop::total(&batches);
    eprintln!(
        "{} batches: {:?}, {} failed",
        batches.len(),
        total.by_backend,
        total.failed
    );
    assert!(
        total.failed == 0 && total.by_backend.keys().eq(["blue"]),
        "new connections around the restart: {:?}, {} of {} failed ({:?})\n{}",
        total.by_backend,
        total.failed,
        total.attempted,
        total.errors,
        lab.agent_diagnostics()
    );
}

/// A finished blue/green switch (green 100 %, the config still says blue), then the
/// agent SIGKILLed, `state.json` overwritten with garbage, and the agent started
/// again: new connections still all go to green, `status` says where the weights come
/// from, and the bad file is kept aside.
#[test]
fn an_unreadable_state_file_keeps_the_pinned_split() {
    let (mut lab, _) = web_lab(
        keystone_lab::test_bins!(),
        vip(),
        &[("blue", 100), ("green", 0)],
    );
    let switch = r#"{"service":"web","to":"green","interval":"1s"}"#;
    switch_completes(&mut lab, "the switch", switch);

    let r = lab.kill("agent");
    ok(&lab, "killing the agent", r);
    let state = lab.agent_state_dir().join("state.json");
    std::fs::write(&state, "\u{0}garbage{").expect("corrupting state.json");
    let r = lab.start_agent();
    ok(&lab, "starting the agent again", r);
    assert_new_connections_on(&lab, "after the restart on a corrupt state.json", "green");

    let status = ok(&lab, "GET /status", lab.status());
    assert_eq!(
        status.tenants.first().map(|t| &t.about.traffic_source),
        Some(&TrafficSource::Manual {
            reason: Some("recovered from the pinned data plane".into())
        }),
        "{status:#?}"
    );
    let recovered = status.persistence.recovered.as_deref().unwrap_or_default();
    let kept = recovered
        .split_whitespace()
        .find(|w| w.contains("state.json.unreadable-"))
        .unwrap_or_else(|| panic!("no kept file named in {recovered:?}"));
    assert_eq!(
        std::fs::read_to_string(kept).expect("the kept file"),
        "\u{0}garbage{",
        "{recovered}"
    );
    let out = ok(&lab, "keystone-ctl status", lab.ctl(&["status"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("weights recovered from the pinned data plane"),
        "keystone-ctl status:\n{text}"
    );
}
