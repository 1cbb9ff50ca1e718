//! A fleet of gateways sharing one rollout through a real 3-member etcd cluster (the
//! lab of `keystone_lab::fleet_etcd`): the lab's agent (gateway `a`, carrying the
//! client traffic) and extra agents (`b`, `c`), each reaching etcd through its own
//! loopback address, so one gateway can be cut off from etcd with an nft rule.
//!
//! Every wait polls with a deadline; the lab (etcd, agents, nft table) is removed on
//! drop, also when a test fails.

use std::{
    thread,
    time::{Duration, Instant},
};

use keystone_api::DeployState;
use keystone_lab::{
    AgentConfig, CanaryConfig, Deployment, HealthCheck, Lab, Probe,
    etcd::{Gateway, fleet_block, gateway_interface, wait_fleet},
    fleet_etcd::{
        Fleet, LONG, PREFIX, TTL_SECS, admin, cut_off, deployment_id, etcd_host, in_step,
        reconnect, wait_stale,
    },
    helpers::{assert_all_on, tcp, tcp_tenant, v4},
    ok, wait_for,
};
use serde_json::Value;

const SHORT: Duration = Duration::from_secs(30);
/// New connections per measurement of a canary step through gateway a (10, 40, 70,
/// 100 %): `check_split` allows 4σ, at n = 1,100 ±5.9 points at 60/40 (σ = 1.48).
const BATCH: u32 = 1100;

/// Two starts for one tenant sent at once to two gateways: exactly one is accepted,
/// the other is refused with 409 naming the accepted deployment, and both gateways
/// then show that one deployment.
#[test]
fn two_starts_for_one_tenant_on_two_gateways_one_wins_the_other_gets_409() {
    let fleet = Fleet::start(&["a", "b"], "30s");
    let answers: Vec<(u16, String)> = thread::scope(|s| {
        let a = s.spawn(|| fleet.start_canary("a"));
        let b = s.spawn(|| fleet.start_canary("b"));
        vec![
            a.join().expect("a's request"),
            b.join().expect("b's request"),
        ]
    });
    let accepted: Vec<&(u16, String)> = answers
        .iter()
        .filter(|(c, _)| (200..300).contains(c))
        .collect();
    let refused: Vec<&(u16, String)> = answers.iter().filter(|(c, _)| *c == 409).collect();
    assert!(
        accepted.len() == 1 && refused.len() == 1,
        "want one 2xx and one 409, got {answers:?}\n{}",
        fleet.diagnostics()
    );
    let id = deployment_id(&accepted[0].1);
    assert!(
        refused[0].1.contains(&id),
        "the 409 does not name the running deployment {id}: {}",
        refused[0].1
    );
    for g in ["a", "b"] {
        let (code, body) = ok(
            &fleet.lab,
            "GET /deployments",
            fleet
                .gateway(g)
                .send(&fleet.lab, "GET", "/deployments", None),
        );
        let list: Value = serde_json::from_str(&body).expect("JSON");
        let ids: Vec<&str> = list["deployments"]
            .as_array()
            .expect("deployments")
            .iter()
            .filter_map(|d| d["id"].as_str())
            .collect();
        assert_eq!((code, ids), (200, vec![id.as_str()]), "deployments on {g}");
    }
}

/// A canary started through gateway b and watched with `keystone-ctl wait` on gateway
/// c steps 10 → 40 → 70 → 100 and completes (wait exits 0). After every step every
/// gateway has confirmed it with the same table hash, and the split of new
/// connections through gateway a matches the step (within 4σ for its n).
#[test]
fn a_canary_started_on_b_and_watched_on_c_reaches_100_on_every_gateway() {
    let mut fleet = Fleet::start(&["a", "b", "c"], "3s");
    let vip = v4(80);
    assert_all_on(
        &fleet.lab,
        "before the canary",
        &tcp(&fleet.lab, vip, BATCH),
        "blue",
    );
    let written = Instant::now();
    let (code, body) = fleet.start_canary("b");
    assert!(
        (200..300).contains(&code),
        "start on b: {code} {body}\n{}",
        fleet.diagnostics()
    );
    let id = deployment_id(&body);
    let c = fleet.gateway("c").clone();
    let r = c.spawn_ctl(
        &mut fleet.lab,
        "wait-c",
        &["wait", &id, "--timeout", "80s", "--interval", "200ms"],
    );
    ok(&fleet.lab, "starting keystone-ctl wait on c", r);

    fleet.wait_in_step("every gateway to confirm the first step");
    eprintln!(
        "leader's write to the last confirmation: {:?}",
        written.elapsed()
    );
    fleet.follow_steps(&id, vip, BATCH);
    let r = fleet.lab.wait_exit("wait-c", LONG);
    let status = ok(&fleet.lab, "keystone-ctl wait on c to exit", r);
    assert_eq!(
        status.code(),
        Some(0),
        "keystone-ctl wait on c: {}\n{}",
        fleet.lab.stdout_of("wait-c").unwrap_or_default(),
        fleet.diagnostics()
    );
    let done = fleet.deployment("c", &id);
    assert_eq!(
        done.percent_steps(),
        vec![10.0, 40.0, 70.0, 100.0],
        "{}",
        done.history_table()
    );
}

/// SIGKILLs gateway `leader` and waits until another gateway's status names a new
/// leader (printed): returns the gateway asked and the time from the kill.
fn kill_leader(fleet: &mut Fleet, leader: &str) -> (Gateway, Duration) {
    let asked = fleet
        .gateways
        .iter()
        .find(|g| g.id != leader)
        .expect("a survivor")
        .clone();
    let killed = fleet.gateway(leader).clone();
    let at = Instant::now();
    let r = fleet.lab.kill(&killed.process);
    ok(&fleet.lab, "killing the leader", r);
    let new_leader = fleet.wait_new_leader(&asked.id, leader);
    let took = at.elapsed();
    eprintln!("leader {leader} killed; {new_leader} leads after {took:?} (lease TTL {TTL_SECS}s)");
    (asked, took)
}

/// The leader is SIGKILLed at 40 %: another gateway takes over once its lease is
/// gone and the canary goes on from 40 %: its history has every step exactly once.
#[test]
fn the_leader_killed_mid_canary_another_resumes_at_the_same_step() {
    let mut fleet = Fleet::start(&["a", "b", "c"], "4s");
    let (code, body) = fleet.start_canary("a");
    assert!((200..300).contains(&code), "start: {code} {body}");
    let id = deployment_id(&body);
    let r = fleet.lab.wait_deployment(&id, "reach 40 %", LONG, |d| {
        d.canary_percent >= 40.0 || !d.is_running()
    });
    let at40 = ok(&fleet.lab, "reaching 40 %", r);
    assert_eq!(
        (at40.state, at40.canary_percent),
        (DeployState::Progressing, 40.0)
    );
    let statuses = fleet.wait_in_step("in step at 40 %");
    let leader = statuses[0]["leader"].as_str().expect("a leader").to_owned();
    let (asked, _) = kill_leader(&mut fleet, &leader);
    let done = wait_for("the canary to complete", LONG, || {
        let (_, body) = asked.send(&fleet.lab, "GET", &format!("/deployments/{id}"), None)?;
        let d: Deployment =
            serde_json::from_str(&body).map_err(|e| keystone_lab::LabError::Parse {
                what: "deployment".into(),
                output: body.clone(),
                source: e,
            })?;
        Ok(if d.is_running() {
            Probe::NotYet(d.summary())
        } else {
            Probe::Ready(d)
        })
    });
    let done = ok(&fleet.lab, "completion after the failover", done);
    assert_eq!(
        done.state,
        DeployState::Completed,
        "{}",
        done.history_table()
    );
    assert_eq!(
        done.percent_steps(),
        vec![10.0, 40.0, 70.0, 100.0],
        "no step repeated or skipped:\n{}",
        done.history_table()
    );
}

fn metric(lab: &Lab, g: &Gateway, name: &str) -> Option<f64> {
    let (_, body) = g.send(lab, "GET", "/metrics", None).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Gateway a, cut off from etcd, keeps forwarding its last split, reports stale
/// (status and `keystone_fleet_stale 1`), refuses a weight change with 503 and a
/// reason; the others go on without it (its lease expires) and take a change; once
/// reconnected a catches up on that change.
#[test]
fn a_gateway_cut_off_from_etcd_goes_stale_refuses_writes_and_catches_up() {
    let fleet = Fleet::start(&["a", "b", "c"], "30s");
    let vip = v4(80);
    let (a, b, c) = (fleet.gateway("a"), fleet.gateway("b"), fleet.gateway("c"));
    cut_off(&fleet.lab, 0);
    let reason = wait_stale(&fleet.lab, a);
    assert!(reason.contains("etcd"), "{reason}");
    assert_eq!(
        metric(&fleet.lab, a, "keystone_fleet_stale"),
        Some(1.0),
        "{}",
        fleet.diagnostics()
    );
    let (code, body) = fleet.set_weights(a);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("etcd"), "the refusal names etcd: {body}");
    assert_all_on(
        &fleet.lab,
        "a forwards its last split while cut off",
        &tcp(&fleet.lab, vip, BATCH),
        "blue",
    );
    // b and c stop counting a once its lease is gone, and change the split.
    let r = wait_fleet(&fleet.lab, &[b, c], "b and c to drop a", LONG, |s| {
        in_step(s, 2)
    });
    ok(&fleet.lab, "b and c without a", r);
    let (code, body) = fleet.set_weights(b);
    assert_eq!(code, 200, "{body}\n{}", fleet.diagnostics());
    reconnect(&fleet.lab);
    fleet.wait_in_step("a to catch up");
    assert_eq!(metric(&fleet.lab, a, "keystone_fleet_stale"), Some(0.0));
    let s = tcp(&fleet.lab, vip, 1000);
    if let Err(table) = s.check_split(&[("blue", 50), ("green", 50)]) {
        panic!("a after catching up: {table}\n{}", fleet.diagnostics());
    }
}

/// With the whole etcd cluster stopped every gateway keeps forwarding, reports stale,
/// serves reads and refuses writes with 503 naming etcd; after etcd is back they are
/// in step again and a write goes through.
#[test]
fn etcd_down_forwarding_goes_on_writes_are_refused_then_it_recovers() {
    let mut fleet = Fleet::start(&["a", "b"], "30s");
    let vip = v4(80);
    let r = fleet.etcd.stop(&mut fleet.lab);
    ok(&fleet.lab, "stopping etcd", r);
    for g in &fleet.gateways {
        let reason = wait_stale(&fleet.lab, g);
        assert!(reason.contains("etcd"), "{}: {reason}", g.id);
        let (code, body) = ok(
            &fleet.lab,
            "GET /deployments",
            g.send(&fleet.lab, "GET", "/deployments", None),
        );
        assert_eq!(code, 200, "reads are served while etcd is down: {body}");
        let (code, body) = fleet.set_weights(g);
        assert_eq!(code, 503, "{}: {body}", g.id);
        assert!(body.contains("etcd"), "{}: {body}", g.id);
    }
    assert_all_on(
        &fleet.lab,
        "forwarding while etcd is down",
        &tcp(&fleet.lab, vip, BATCH),
        "blue",
    );
    let r = fleet.etcd.restart(&mut fleet.lab);
    ok(&fleet.lab, "restarting etcd", r);
    fleet.wait_in_step("the fleet after etcd's restart");
    let (code, body) = fleet.set_weights(fleet.gateway("b"));
    assert_eq!(code, 200, "{body}\n{}", fleet.diagnostics());
    fleet.wait_in_step("the weights on every gateway");
}

/// A corrupt state document, then a newer format version, written straight into
/// etcd: every gateway refuses it with a reason naming the key, applies nothing
/// (forwarding unchanged) and refuses writes.
#[test]
fn corrupt_or_newer_fleet_data_is_refused_and_nothing_applied() {
    let fleet = Fleet::start(&["a", "b"], "30s");
    let vip = v4(80);
    let state_key = format!("{PREFIX}/state");
    ok(
        &fleet.lab,
        "etcdctl put",
        fleet
            .etcd
            .ctl(&fleet.lab, &["put", &state_key, "{not json"]),
    );
    for g in &fleet.gateways {
        let reason = wait_stale(&fleet.lab, g);
        assert!(
            reason.contains(&state_key) && reason.contains("not a Keystone state document"),
            "{}: {reason}",
            g.id
        );
        let (code, body) = fleet.set_weights(g);
        assert_eq!(code, 503, "{}: {body}", g.id);
    }
    assert_all_on(
        &fleet.lab,
        "nothing applied from corrupt data",
        &tcp(&fleet.lab, vip, BATCH),
        "blue",
    );

    let version_key = format!("{PREFIX}/format_version");
    ok(
        &fleet.lab,
        "etcdctl put",
        fleet.etcd.ctl(&fleet.lab, &["put", &version_key, "2"]),
    );
    for g in &fleet.gateways {
        let r = wait_for("the newer format to be refused", SHORT, || {
            let s = g.status(&fleet.lab)?;
            let reason = s["fleet"]["stale_reason"].as_str().unwrap_or("").to_owned();
            Ok(if reason.contains("newer Keystone") {
                Probe::Ready(reason)
            } else {
                Probe::NotYet(reason)
            })
        });
        let reason = ok(&fleet.lab, "newer format", r);
        assert!(reason.contains(&version_key), "{reason}");
    }
}

/// Rewrites extra gateway `i`'s config with tenant web on `weights` and canary steps
/// every `interval` (its fleet block
/// unchanged) and reloads it: (status, body) of `POST /admin/reload`.
fn reload_gateway(
    fleet: &Fleet,
    i: usize,
    interval: &str,
    weights: &[(&str, u32)],
) -> (u16, String) {
    let g = &fleet.gateways[i];
    let lab = &fleet.lab;
    let tenant = tcp_tenant(lab, "web", v4(80), weights)
        .with_health(HealthCheck::fast_http())
        .with_canary(CanaryConfig::ten_plus_thirty(interval));
    let cfg = AgentConfig {
        interfaces: vec![gateway_interface(&g.id)],
        admin_listen: admin(i),
        ..lab.agent_config(vec![tenant])
    };
    let block = fleet_block(
        &fleet.etcd,
        &etcd_host(i),
        PREFIX,
        &g.id,
        &format!("{TTL_SECS}s"),
    );
    let path = lab.state_dir().join(&g.process).join("keystone.yaml");
    let r = std::fs::write(&path, cfg.to_yaml() + &block);
    ok(lab, &format!("writing {}", path.display()), r);
    let r = g.send(lab, "POST", "/admin/reload", None);
    ok(lab, &format!("POST /admin/reload on {}", g.id), r)
}

/// A reload on gateway b that removes the canary's service green fails the running
/// deployment, and that outcome is the fleet's: gateway a (whose config still has
/// green) shows it failed with b's reason, read from the shared state.
#[test]
fn a_reload_that_fails_a_running_deployment_is_written_to_the_fleet() {
    let fleet = Fleet::start(&["a", "b"], "30s");
    let (code, body) = fleet.start_canary("a");
    assert!((200..300).contains(&code), "start: {code} {body}");
    let id = deployment_id(&body);
    fleet.wait_in_step("the canary on both gateways");
    let (code, body) = reload_gateway(&fleet, 1, "30s", &[("blue", 100)]);
    assert_eq!(code, 200, "reload on b: {body}\n{}", fleet.diagnostics());
    let r = wait_for("a to see the deployment fail", SHORT, || {
        let d = fleet.deployment("a", &id);
        Ok(if d.is_running() {
            Probe::NotYet(d.summary())
        } else {
            Probe::Ready(d)
        })
    });
    let d = ok(&fleet.lab, "the failure on a", r);
    assert_eq!(d.state, DeployState::Failed, "{}", d.history_table());
    assert!(
        d.history_table()
            .contains("green were removed from the config"),
        "{}",
        d.history_table()
    );
}

/// The `config_mismatch` lines of a `status.fleet`.
fn mismatch(status: &Value) -> Vec<String> {
    status["config_mismatch"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect()
}

/// Gateway b reloaded with another weight for web: every gateway's status names the
/// mismatch (and `keystone_fleet_config_mismatch` counts it), and the leader does not
/// advance web's canary (1 s steps) while it lasts; once b runs the same config
/// again the mismatch clears and the canary completes.
#[test]
fn members_with_different_configs_are_flagged_and_the_canary_holds_until_they_match() {
    let mut fleet = Fleet::start(&["a", "b"], "1s");
    let (code, body) = reload_gateway(&fleet, 1, "1s", &[("blue", 90), ("green", 10)]);
    assert_eq!(code, 200, "reload on b: {body}");
    let flagged = wait_fleet(
        &fleet.lab,
        &fleet.all(),
        "both gateways to flag web's config",
        SHORT,
        |s| {
            s.iter()
                .all(|s| mismatch(s).iter().any(|l| l.contains("'web'")))
        },
    );
    let (statuses, _) = ok(&fleet.lab, "the mismatch", flagged);
    let line = &mismatch(&statuses[0])[0];
    assert!(
        line.contains("a:") && line.contains("b:"),
        "the line names both gateways' hashes: {line}"
    );
    for g in fleet.all() {
        assert_eq!(
            metric(&fleet.lab, g, "keystone_fleet_config_mismatch"),
            Some(1.0),
            "{}",
            g.id
        );
    }
    let (code, body) = fleet.start_canary("a");
    assert!((200..300).contains(&code), "start: {code} {body}");
    let id = deployment_id(&body);
    // Three step intervals pass (each would be a step): a negative, so it is
    // waited out, with the mismatch checked to last all along.
    let started = Instant::now();
    let flagged_throughout = std::cell::Cell::new(true);
    let r = wait_for("three step intervals", SHORT, || {
        let s = fleet.gateway("a").status(&fleet.lab)?;
        let flagged = !mismatch(&s["fleet"]).is_empty();
        flagged_throughout.set(flagged_throughout.get() && flagged);
        Ok(if started.elapsed() > Duration::from_secs(3) {
            Probe::Ready(())
        } else {
            Probe::NotYet(s["fleet"].to_string())
        })
    });
    ok(&fleet.lab, "holding", r);
    assert!(flagged_throughout.get(), "the mismatch cleared by itself");
    let held = fleet.deployment("a", &id);
    assert_eq!(
        (held.state, held.canary_percent),
        (DeployState::Progressing, 10.0),
        "not advanced while the configs differ:\n{}",
        held.history_table()
    );
    let (code, body) = reload_gateway(&fleet, 1, "1s", &[("blue", 100), ("green", 0)]);
    assert_eq!(code, 200, "reload on b: {body}");
    let r = fleet
        .lab
        .wait_deployment(&id, "completion", LONG, |d| !d.is_running());
    let done = ok(&fleet.lab, "the canary once the configs match", r);
    assert_eq!(
        done.state,
        DeployState::Completed,
        "{}",
        done.history_table()
    );
    let (statuses, _) = ok(
        &fleet.lab,
        "the mismatch to clear",
        wait_fleet(&fleet.lab, &fleet.all(), "no mismatch", SHORT, |s| {
            s.iter().all(|s| mismatch(s).is_empty())
        }),
    );
    assert_eq!(statuses.len(), 2);
}

/// The `Keystone-Stale` header of `GET <path>` on gateway `g` (curl -D), if any.
fn stale_header(lab: &Lab, g: &Gateway, path: &str) -> Option<String> {
    let auth = format!("Authorization: Bearer {}", keystone_lab::ADMIN_TOKEN);
    let url = format!("http://{}{path}", g.admin);
    let args = [
        "-sS",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        &auth,
        &url,
    ];
    let headers = ok(lab, "curl -D", lab.exec(lab.gateway_ns(), "curl", &args));
    headers.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("keystone-stale")
            .then(|| value.trim().to_owned())
    })
}

/// A completed canary is rolled back through b while a is cut off from etcd: a's
/// answers to /status, /deployments and /deployments/{id} carry `Keystone-Stale`
/// naming etcd, `keystone-ctl deployments <id>` warns, and `keystone-ctl wait` on a does not
/// report the completion a still shows as success. In step, no answer is marked.
#[test]
fn a_cut_off_gateway_marks_every_answer_stale_and_ctl_wait_does_not_succeed_on_it() {
    let mut fleet = Fleet::start(&["a", "b"], "1s");
    let (code, body) = fleet.start_canary("b");
    assert!((200..300).contains(&code), "start: {code} {body}");
    let id = deployment_id(&body);
    let r = fleet
        .lab
        .wait_deployment(&id, "completion", LONG, |d| !d.is_running());
    let done = ok(&fleet.lab, "the canary", r);
    assert_eq!(done.state, DeployState::Completed);
    fleet.wait_in_step("in step after the canary");
    let a = fleet.gateway("a").clone();
    let paths = [
        "/status".to_owned(),
        "/deployments".into(),
        format!("/deployments/{id}"),
    ];
    for path in &paths {
        assert_eq!(stale_header(&fleet.lab, &a, path), None, "{path} in step");
    }
    cut_off(&fleet.lab, 0);
    wait_stale(&fleet.lab, &a);
    let (code, body) = ok(
        &fleet.lab,
        "rollback on b",
        fleet.gateway("b").send(
            &fleet.lab,
            "POST",
            &format!("/deployments/{id}/rollback"),
            None,
        ),
    );
    assert!((200..300).contains(&code), "rollback on b: {code} {body}");
    for path in &paths {
        let header = stale_header(&fleet.lab, &a, path);
        assert!(
            header.as_deref().is_some_and(|h| h.contains("etcd")),
            "{path} on a: {header:?}"
        );
    }
    let a_ctl = |args: &[&str]| {
        let ctl = fleet.lab.bins().ctl.clone();
        let mut all = vec![
            "--api".to_owned(),
            format!("http://{}", a.admin),
            "--token".to_owned(),
            keystone_lab::ADMIN_TOKEN.to_owned(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", fleet.lab.gateway_ns()])
            .arg(&ctl)
            .args(&all)
            .output()
            .expect("keystone-ctl runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, _, stderr) = a_ctl(&["deployments", &id]);
    assert!(
        stderr.contains("stale") && stderr.contains("etcd"),
        "keystone-ctl deployments warns: {stderr}"
    );
    let (code, stdout, stderr) = a_ctl(&["wait", &id, "--timeout", "3s", "--interval", "200ms"]);
    assert_ne!(
        code,
        Some(0),
        "wait reported success from a stale gateway:\n{stdout}{stderr}"
    );
    assert!(stderr.contains("stale"), "wait says why: {stdout}{stderr}");
    reconnect(&fleet.lab);
    fleet.wait_in_step("a back in step");
    let d = fleet.deployment("a", &id);
    assert_eq!(d.state, DeployState::RolledBack, "{}", d.history_table());
    assert_eq!(stale_header(&fleet.lab, &a, "/status"), None);
}

/// The lease id a key of the fleet is held under (`etcdctl get -w json`).
fn lease_of(fleet: &Fleet, key: &str) -> i64 {
    let out = ok(
        &fleet.lab,
        "etcdctl get",
        fleet.etcd.ctl(&fleet.lab, &["get", key, "-w", "json"]),
    );
    let v: Value = serde_json::from_str(&out).expect("etcdctl JSON");
    v["kvs"][0]["lease"]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} has no lease: {out}"))
}

/// After the whole etcd cluster was down and back, the leader is the one from before,
/// holding `leader` under the same lease its member record is under (the lease it
/// had before the outage, which etcd renewed: no lease of its is left holding keys
/// nobody keeps alive, and no needless failover); killed, that leader is replaced
/// within the lease TTL plus a bound (read from the survivor's status).
#[test]
fn after_an_etcd_outage_the_leader_holds_one_lease_and_fails_over_within_the_ttl() {
    let mut fleet = Fleet::start(&["a", "b"], "30s");
    let statuses = fleet.wait_in_step("in step before the outage");
    let leader = statuses[0]["leader"].as_str().expect("a leader").to_owned();
    let leader_key = format!("{PREFIX}/leader");
    let member_key = format!("{PREFIX}/members/{leader}");
    let lease = lease_of(&fleet, &member_key);
    let r = fleet.etcd.stop(&mut fleet.lab);
    ok(&fleet.lab, "stopping etcd", r);
    for g in &fleet.gateways {
        wait_stale(&fleet.lab, g);
    }
    let r = fleet.etcd.restart(&mut fleet.lab);
    ok(&fleet.lab, "restarting etcd", r);
    let statuses = fleet.wait_in_step("the fleet after etcd's restart");
    assert_eq!(
        statuses[0]["leader"].as_str(),
        Some(leader.as_str()),
        "the leader from before the outage leads"
    );
    assert_eq!(
        (lease_of(&fleet, &leader_key), lease_of(&fleet, &member_key)),
        (lease, lease),
        "{leader_key} and {member_key} are under {leader}'s lease from before the outage\n{}",
        fleet.diagnostics()
    );
    let (_, took) = kill_leader(&mut fleet, &leader);
    // Not a timing benchmark: the bound tells "the old lease is the one kept alive
    // and it expires" (a failover within a few TTLs) from "the outage left a lease
    // that never ends". Generous: etcd under a loaded CI machine may extend a lease
    // by an election timeout, and the revoke waits for a raft commit and fsync.
    let bound = Duration::from_secs(TTL_SECS + 10);
    assert!(took <= bound, "failover took {took:?}, more than {bound:?}");
}

/// Gateway a's state dir is a tmpfs of the test's own, made read-only: a weight
/// change through a still succeeds (etcd holds it), a's status and metric show
/// the local save failed, and a restarted a (its local copy lacking the change)
/// forwards the fleet's split again.
#[test]
fn a_read_only_state_dir_in_a_fleet_fails_the_local_copy_not_the_change() {
    let mut fleet = Fleet::start(&["a", "b"], "30s");
    let vip = v4(80);
    let dir = fleet.lab.agent_state_dir();
    let r = fleet.lab.stop_agent();
    ok(&fleet.lab, "stopping a", r);
    let r = fleet.lab.mount_tmpfs(&dir, 1 << 20);
    ok(&fleet.lab, "a tmpfs for a's state", r);
    let r = fleet.lab.start_agent();
    ok(&fleet.lab, "starting a on it", r);
    fleet.wait_in_step("a back in the fleet");
    let r = fleet.lab.set_read_only(&dir, true);
    ok(&fleet.lab, "making a's state dir read-only", r);
    let (code, body) = fleet.set_weights(fleet.gateway("a"));
    assert_eq!(
        code,
        200,
        "the change goes through etcd: {body}\n{}",
        fleet.diagnostics()
    );
    let status = ok(
        &fleet.lab,
        "a's status",
        fleet.gateway("a").status(&fleet.lab),
    );
    let persistence = &status["persistence"];
    assert!(
        persistence["saved"] == false && persistence["unsaved"]["state"].is_string(),
        "a's status shows the local save failed: {persistence}"
    );
    let failures = metric(
        &fleet.lab,
        fleet.gateway("a"),
        "keystone_state_write_failures_total{file=\"state\"}",
    );
    assert!(failures.is_some_and(|n| n >= 1.0), "{failures:?}");
    fleet.wait_in_step("b has the weights too");
    // Restarted on its stale local copy (made writable only while a is down).
    let r = fleet.lab.stop_agent();
    ok(&fleet.lab, "stopping a", r);
    let r = fleet.lab.set_read_only(&dir, false);
    ok(&fleet.lab, "a's state dir writable again", r);
    let r = fleet.lab.start_agent();
    ok(&fleet.lab, "restarting a", r);
    fleet.wait_in_step("a after its restart");
    // `check_split` allows 3.5σ for the n measured (1,000 at 50/50: about ±5.5 points).
    let s = tcp(&fleet.lab, vip, 1000);
    if let Err(table) = s.check_split(&[("blue", 50), ("green", 50)]) {
        panic!("a after its restart: {table}\n{}", fleet.diagnostics());
    }
}
