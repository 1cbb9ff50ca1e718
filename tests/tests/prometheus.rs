//! The shipped Grafana dashboard and alert rules in a real Prometheus (Debian's,
//! installed by `cargo xtask setup`): `promtool` checks and unit-tests the rules, and a
//! lab agent is scraped while traffic, a blue/green switch, a canary awaiting approval,
//! its rollback, failing backends and a stopped agent happen. Every panel query must
//! return data, and every alert must become active (pending, or firing when it has no
//! `for:`; the `for:` durations are what `promtool test rules` proves) in its scenario.
//!
//! Prometheus runs as a lab process in the gateway namespace (its data in the lab's
//! state dir), so the lab stops it on every path, panics included.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use keystone_api::{DeployState, SwitchStrategy};
use keystone_lab::{
    ADMIN_LISTEN, CanaryConfig, HealthCheck, Lab, LabBuilder, Mode, Probe, Protocol, SwitchConfig,
    Tenant, VIP4, VIP6, forge::TCP_ACK, helpers::unix_now, lab::CLIENT4, ok, wait_for,
};
use serde_json::Value;

const BACKEND_PORT: u16 = 8080;
/// Where Prometheus listens, inside the gateway namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Bounds for Prometheus to see a change (1 s scrapes and rule evaluations).
const SEE: Duration = Duration::from_secs(60);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn alert_rules() -> PathBuf {
    repo_file("examples/prometheus/keystone-alerts.yml")
}

/// `promtool <args>`; panics with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (cargo xtask setup installs Debian's prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = alert_rules();
    promtool(&["check", "rules", rules.to_str().unwrap()]);
    let tests = repo_file("examples/prometheus/keystone-alerts.test.yml");
    promtool(&["test", "rules", tests.to_str().unwrap()]);
}

/// `GET http://PROMETHEUS/api/v1/<path>` with `params` (curl in the gateway
/// namespace); the answer's `data`.
fn api(lab: &Lab, path: &str, params: &[(&str, String)]) -> keystone_lab::Result<Value> {
    let mut args = vec!["-sS".to_owned(), "-m".into(), "5".into(), "--get".into()];
    for (k, v) in params {
        args.extend(["--data-urlencode".to_owned(), format!("{k}={v}")]);
    }
    args.push(format!("http://{PROMETHEUS}/api/v1/{path}"));
    let body = lab.exec(lab.gateway_ns(), "curl", &args)?;
    let json: Value = serde_json::from_str(&body).map_err(|e| keystone_lab::LabError::Io {
        what: format!("Prometheus /api/v1/{path}"),
        source: std::io::Error::other(format!("{e}: {body}")),
    })?;
    if json["status"] != "success" {
        panic!("Prometheus /api/v1/{path} {params:?}: {json}");
    }
    Ok(json["data"].clone())
}

/// Starts Prometheus scraping the lab agent every second with the shipped rules.
fn start_prometheus(lab: &mut Lab) {
    let dir = lab.state_dir().join("prometheus");
    std::fs::create_dir_all(&dir).expect("creating Prometheus' dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  \
             - job_name: keystone\n    \
               static_configs: [{{targets: [{ADMIN_LISTEN:?}]}}]\n",
            rules = alert_rules().canonicalize().expect("the alert rules exist"),
        ),
    )
    .expect("writing prometheus.yml");
    let program = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .expect("prometheus on PATH (cargo xtask setup installs Debian's)");
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={PROMETHEUS}"),
    ];
    let ns = lab.gateway_ns().to_owned();
    let r = lab.spawn("prometheus", &ns, &program, &args);
    ok(lab, "starting prometheus", r);
    let r = wait_for("Prometheus scraping the agent", SEE, || {
        lab.ensure_running("prometheus")?;
        let up = api(
            lab,
            "query",
            &[("query", "up{job=\"keystone\"} == 1".into())],
        );
        Ok(match up {
            Ok(d) if d["result"].as_array().is_some_and(|r| !r.is_empty()) => Probe::Ready(()),
            other => Probe::NotYet(format!("{other:?}")),
        })
    });
    ok(lab, "Prometheus scraping the agent", r);
}

/// Waits until alert `name` is active (pending or firing) with `labels`.
fn wait_alert(lab: &mut Lab, name: &str, labels: &[(&str, &str)], seen: &mut BTreeSet<String>) {
    let r = wait_for(&format!("alert {name} {labels:?}"), SEE, || {
        lab.ensure_running("prometheus")?;
        let alerts = api(lab, "alerts", &[])?;
        let active = alerts["alerts"].as_array().cloned().unwrap_or_default();
        Ok(
            match active.iter().find(|a| {
                a["labels"]["alertname"] == name
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            }) {
                Some(_) => Probe::Ready(()),
                None => Probe::NotYet(format!("active alerts: {active:?}")),
            },
        )
    });
    ok(lab, "an alert becoming active", r);
    seen.insert(name.to_owned());
}

/// Every panel query of the shipped dashboard, with `$tenant` as "all tenants".
fn panel_queries() -> Vec<(String, String)> {
    let path = repo_file("examples/grafana/keystone.json");
    let text = std::fs::read_to_string(&path).expect("reading the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target's expr");
            let expr = expr.replace("$tenant", ".*");
            assert!(
                !expr.contains('$'),
                "a variable the test does not fill: {expr}"
            );
            queries.push((panel["title"].as_str().unwrap_or("").to_owned(), expr));
        }
    }
    queries
}

/// The panels whose query, as Grafana runs it (a range query from `since`), has no
/// number in any series.
fn empty_panels(lab: &Lab, since: f64) -> keystone_lab::Result<Vec<String>> {
    let mut empty = Vec::new();
    for (title, expr) in panel_queries() {
        let data = api(
            lab,
            "query_range",
            &[
                ("query", expr.clone()),
                ("start", since.to_string()),
                ("end", unix_now().to_string()),
                ("step", "1".into()),
            ],
        )?;
        let has_number = data["result"].as_array().into_iter().flatten().any(|s| {
            s["values"].as_array().into_iter().flatten().any(|v| {
                v[1].as_str()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            })
        });
        if !has_number {
            empty.push(format!("{title:?}: {expr}"));
        }
    }
    Ok(empty)
}

fn tenant(lab: &Lab, name: &str, vip: SocketAddr, weights: &[(&str, u32)]) -> Tenant {
    let t = lab.tenant(name, vip, Protocol::Tcp, Mode::Nat, BACKEND_PORT, weights);
    ok(lab, "tenant", t).with_health(HealthCheck::fast_http())
}

fn ctl(lab: &Lab, args: &[&str]) -> String {
    let out = ok(lab, "keystone-ctl", lab.ctl(args));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "keystone-ctl {args:?}: {text}");
    text
}

/// `keystone-ctl -o json <args>` that starts a deployment; returns its id.
fn start(lab: &Lab, args: &[&str]) -> String {
    let text = ctl(lab, &[&["-o", "json"], args].concat());
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    json["deployment_id"]
        .as_str()
        .expect("deployment_id")
        .to_owned()
}

#[test]
fn dashboard_and_alerts_work_in_prometheus() {
    let mut lab = LabBuilder::new()
        .mode(Mode::Nat)
        .backends(&["blue", "green"])
        .bins(keystone_lab::test_bins!())
        .build()
        .unwrap_or_else(|e| panic!("building the lab: {e}"));
    // One backend address serves one nat VIP: web on IPv4, shop on IPv6.
    let (web, shop) = (
        SocketAddr::new(IpAddr::V4(VIP4), 80),
        SocketAddr::new(IpAddr::V6(VIP6), 80),
    );
    let r = lab.start_with_config(BACKEND_PORT, &[], |lab| {
        Ok(lab.agent_config(vec![
            tenant(lab, "web", web, &[("blue", 100), ("green", 0)]),
            tenant(lab, "shop", shop, &[("blue", 1), ("green", 1)])
                .blue_green("blue", SwitchConfig::instant()),
        ]))
    });
    ok(&lab, "starting the backends and keystone-agent", r);
    let since = unix_now();
    start_prometheus(&mut lab);
    let mut seen = BTreeSet::new();
    let traffic = |lab: &Lab| {
        for vip in [web, shop] {
            let s = ok(lab, "traffic", lab.tcp_connections(vip, 200));
            assert_eq!(
                s.failed,
                0,
                "{vip}: {:?}\n{}",
                s.errors,
                lab.agent_diagnostics()
            );
        }
    };
    traffic(&lab);

    // A blue/green switch that completes.
    let id = start(
        &lab,
        &[
            "switch",
            "shop",
            "--to",
            "green",
            "--strategy",
            SwitchStrategy::Instant.name(),
        ],
    );
    let r = lab.wait_deployment(&id, "completed", SEE, |d| d.state == DeployState::Completed);
    ok(&lab, "the switch", r);

    // A canary that stops at 50 % for approval, under traffic, then is rolled back.
    let mut canary = CanaryConfig::ten_plus_thirty("1s");
    canary.max_traffic = Some(50.0);
    let args = canary.ctl_start_args("web", "1.1.0");
    let id = start(&lab, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let r = lab.wait_deployment(&id, "awaiting approval", SEE, |d| {
        d.state == DeployState::AwaitingApproval
    });
    ok(&lab, "the canary", r);
    traffic(&lab);
    wait_alert(
        &mut lab,
        "KeystoneDeploymentAwaitingApproval",
        &[("tenant", "web")],
        &mut seen,
    );
    ctl(&lab, &["rollback", &id]);
    wait_alert(
        &mut lab,
        "KeystoneDeploymentRolledBack",
        &[("tenant", "web")],
        &mut seen,
    );
    traffic(&lab);

    // Every panel has data now (the failures below add none that they need).
    let r = wait_for("every dashboard panel to have data", SEE, || {
        let empty = empty_panels(&lab, since)?;
        Ok(if empty.is_empty() {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("empty panels:\n{}", empty.join("\n")))
        })
    });
    ok(&lab, "the dashboard's panels", r);

    // TCP packets of a connection the gateway never saw (ACK, no SYN).
    let strays: Vec<SocketAddr> = (0..20)
        .map(|i| SocketAddr::new(IpAddr::V4(CLIENT4), 40_000 + i))
        .collect();
    let r = lab.forge_segments(&strays, SocketAddrV4::new(VIP4, 80), TCP_ACK);
    ok(&lab, "forging mid-flow ACKs", r);
    wait_alert(&mut lab, "KeystoneUntrackedMidFlow", &[], &mut seen);

    // Backends fail: one, then all; new connections then find no backend.
    let r = lab.stop_backend("green");
    ok(&lab, "stopping green", r);
    wait_alert(
        &mut lab,
        "KeystoneBackendDown",
        &[("tenant", "web"), ("backend", "green")],
        &mut seen,
    );
    let r = lab.stop_backend("blue");
    ok(&lab, "stopping blue", r);
    wait_alert(
        &mut lab,
        "KeystoneVipAllBackendsDown",
        &[("tenant", "web")],
        &mut seen,
    );
    let s = ok(&lab, "traffic to no backend", lab.tcp_connections(web, 20));
    assert_eq!(s.answered(), 0, "with every backend down: {s:?}");
    wait_alert(
        &mut lab,
        "KeystoneXdpExceptions",
        &[("reason", "no_backend")],
        &mut seen,
    );

    let r = lab.stop_agent();
    ok(&lab, "stopping the agent", r);
    wait_alert(
        &mut lab,
        "KeystoneAgentDown",
        &[("job", "keystone")],
        &mut seen,
    );

    let rules = ok(&lab, "Prometheus rules", api(&lab, "rules", &[]));
    let names: BTreeSet<String> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    let untested: Vec<&String> = names.difference(&seen).collect();
    assert!(
        names.len() >= 7 && untested.is_empty(),
        "alert rules without a lab scenario: {untested:?} (loaded: {names:?})"
    );
}
