//! `keystone-ctl promote` through real agents, one lab and one context each.
//!
//! Two agents: the canary runs in dev, promotion stops before the gated production
//! (exit 11), the same command again stops there again, and the command it prints (the
//! same one with `--approve production`), run word for word, skips dev and promotes
//! production; new connections then land on the new version in each, and only after
//! its promotion.
//!
//! Three agents, the new version down in the middle one: staging's canary rolls back,
//! promotion stops there (exit 10), dev stays on the new version and production is
//! never started.
//! Run with `cargo xtask test -- promote`.

use std::{
    fs::File,
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use keystone_api::{DeployState, HealthState};
use keystone_lab::{
    ADMIN_LISTEN, ADMIN_TOKEN, CanaryConfig, HealthCheck, Lab, Probe,
    helpers::{Setup, assert_all_on, lab_with_agent, tcp, tcp_tenant, v4},
    ok, wait_for,
};
use nix::sched::{CloneFlags, setns};
use tempfile::TempDir;

/// An agent running tenant `web` on `vip`: blue (1.0.0) takes every new connection,
/// green (1.1.0) none; canaries step 10 → 40 → 70 → 100 every second.
fn web_lab(vip: SocketAddr) -> Lab {
    lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            let web = tcp_tenant(lab, "web", vip, &[("blue", 100), ("green", 0)])
                .with_health(HealthCheck::fast_http())
                .with_canary(CanaryConfig::ten_plus_thirty("1s"));
            lab.agent_config(vec![web])
        },
    )
    .0
}

/// A port on this namespace's loopback forwarding each connection to the lab's admin
/// API (which listens on loopback inside the lab's gateway namespace), so one
/// keystone-ctl reaches both agents. Returns its URL.
fn admin_api_from_here(lab: &Lab) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the forwarder");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let netns = format!("/run/netns/{}", lab.gateway_ns());
    thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let netns = netns.clone();
            thread::spawn(move || {
                // This thread enters the namespace to connect; the socket stays in it.
                let ns = File::open(&netns).expect("opening the gateway namespace");
                setns(&ns, CloneFlags::CLONE_NEWNET).expect("entering the gateway namespace");
                let Ok(agent) = TcpStream::connect(ADMIN_LISTEN) else {
                    return;
                };
                let mut agent_in = agent.try_clone().unwrap();
                let mut client_out = &client;
                let upstream = thread::spawn({
                    let (mut client_in, mut agent_out) = (client.try_clone().unwrap(), agent);
                    move || {
                        std::io::copy(&mut client_in, &mut agent_out).ok();
                        agent_out.shutdown(std::net::Shutdown::Write).ok();
                    }
                });
                std::io::copy(&mut agent_in, &mut client_out).ok();
                client.shutdown(std::net::Shutdown::Write).ok();
                upstream.join().ok();
            });
        }
    });
    url
}

/// keystone-ctl on this side, with its contexts under `home`.
fn ctl(lab: &Lab, home: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(&lab.bins().ctl)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("KEYSTONE_API")
        .env_remove("KEYSTONE_TOKEN")
        .env_remove("KEYSTONE_TOKEN_FILE")
        .env_remove("KEYSTONE_CONTEXT")
        .env_remove("KEYSTONE_CONFIG")
        .args(args)
        .output()
        .expect("running keystone-ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The tenant's newest deployment in `lab`: its version and state.
fn newest(lab: &Lab) -> Option<(Option<String>, DeployState)> {
    let list = lab.deployments().expect("GET /deployments");
    list.into_iter().next().map(|d| (d.version, d.state))
}

/// `web`'s backends in `lab` as `GET /tenants` shows them: name, effective weight, health.
fn backends(lab: &Lab) -> Vec<(String, u32, HealthState)> {
    let tenants = ok(lab, "GET /tenants", lab.tenants());
    let web = tenants.into_iter().find(|t| t.about.name == "web");
    web.expect("tenant web")
        .backends
        .into_iter()
        .map(|b| (b.identity.name, b.effective_weight, b.identity.health))
        .collect()
}

/// A home for keystone-ctl with one context per lab (`name`, lab, gated), all reading
/// one token file.
fn contexts(labs: &[(&str, &Lab, bool)]) -> TempDir {
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("token");
    let mut file = File::create(&token).unwrap();
    writeln!(file, "{ADMIN_TOKEN}").unwrap();
    let token = token.to_str().unwrap();
    for (name, lab, gated) in labs {
        let api = admin_api_from_here(lab);
        let gated = gated.to_string();
        let set = [
            "config",
            "set-context",
            name,
            "--api",
            &api,
            "--token-file",
            token,
            "--gated",
            &gated,
        ];
        let (code, out) = ctl(lab, home.path(), &set);
        assert_eq!(code, Some(0), "{out}");
    }
    home
}

/// `promote web --version 1.1.0 --through <through>`, 60 s for each context.
fn promote_through(through: &str) -> [&str; 10] {
    [
        "promote",
        "web",
        "--version",
        "1.1.0",
        "--through",
        through,
        "--timeout",
        "60s",
        "--interval",
        "200ms",
    ]
}

#[test]
fn promote_goes_through_two_agents_and_stops_before_the_gated_one() {
    let vip = v4(80);
    let dev = web_lab(vip);
    let production = web_lab(vip);
    let home = contexts(&[("dev", &dev, false), ("production", &production, true)]);
    let promote = promote_through("dev,production");

    let gate_stop = "stopped before production: it is gated — exit 11\n\
         resume with: keystone-ctl promote web --version 1.1.0 --through dev,production \
         --timeout 60s --interval 200ms --approve production\n";
    let (code, out) = ctl(&dev, home.path(), &promote);
    assert_eq!(code, Some(11), "{out}\n{}", dev.agent_diagnostics());
    assert!(out.ends_with(gate_stop), "{out}");
    assert_eq!(
        newest(&dev),
        Some((Some("1.1.0".into()), DeployState::Completed))
    );
    assert_eq!(newest(&production), None, "nothing started past the gate");
    assert_all_on(&dev, "dev after its canary", &tcp(&dev, vip, 200), "green");
    assert_all_on(
        &production,
        "production before the approval",
        &tcp(&production, vip, 200),
        "blue",
    );

    // The same command again (a retried CI job) stops at the same gate.
    let (code, again) = ctl(&dev, home.path(), &promote);
    assert_eq!(code, Some(11), "{again}");
    assert!(again.ends_with(gate_stop), "{again}");
    assert!(
        again.contains("dev: web is at version 1.1.0 already"),
        "{again}"
    );
    assert_eq!(newest(&production), None, "a rerun does not pass the gate");

    // The printed command, run word for word, approves the gate and goes on.
    let printed = out
        .lines()
        .last()
        .unwrap()
        .strip_prefix("resume with: ")
        .unwrap();
    let words: Vec<&str> = printed.split(' ').collect();
    assert_eq!(words[0], "keystone-ctl", "{printed}");
    let (code, out) = ctl(&dev, home.path(), &words[1..]);
    assert_eq!(code, Some(0), "{out}\n{}", production.agent_diagnostics());
    assert!(
        out.contains("dev: web is at version 1.1.0 already"),
        "{out}"
    );
    assert_eq!(dev.deployments().unwrap().len(), 1, "dev was not run again");
    assert_eq!(
        newest(&production),
        Some((Some("1.1.0".into()), DeployState::Completed))
    );
    assert_all_on(
        &production,
        "production after its canary",
        &tcp(&production, vip, 200),
        "green",
    );
}

/// The new version's server stopped in staging only, so staging's canary fails its
/// health checks there and rolls back by itself: promotion (production not gated, so
/// only the rollback stops it) exits 10 naming staging, dev stays on 1.1.0 and
/// production is never started.
#[test]
fn promote_stops_with_exit_10_where_the_version_rolls_back() {
    let vip = v4(80);
    let dev = web_lab(vip);
    let mut staging = web_lab(vip);
    let production = web_lab(vip);
    let r = staging.stop_backend("green");
    ok(&staging, "stopping staging's green", r);
    let r = wait_for(
        "staging's green to be down",
        Duration::from_secs(30),
        || {
            let now = backends(&staging);
            Ok(
                if now
                    .iter()
                    .any(|(b, _, h)| b == "green" && *h == HealthState::Down)
                {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(format!("{now:?}"))
                },
            )
        },
    );
    ok(&staging, "waiting for green's health checks to fail", r);
    let home = contexts(&[
        ("dev", &dev, false),
        ("staging", &staging, false),
        ("production", &production, false),
    ]);
    let production_before = backends(&production);

    let (code, out) = ctl(
        &dev,
        home.path(),
        &promote_through("dev,staging,production"),
    );
    assert_eq!(code, Some(10), "{out}\n{}", staging.agent_diagnostics());
    let canary = staging.deployments().unwrap().into_iter().next();
    let canary = canary.expect("staging's canary was started");
    assert!(
        canary.version.as_deref() == Some("1.1.0")
            && canary.state == DeployState::RolledBack
            && canary.canary_percent == 0.0,
        "staging's canary ended {}\n{}",
        canary.summary(),
        canary.history_table()
    );
    let id = &canary.id;
    assert!(
        out.contains(&format!(
            "staging: started deployment {id}: canary of web version 1.1.0"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "deployment {id} ended rolled_back: canary 0% \
             (rolled back: every new backend is failing its health checks"
        )),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "stopped in staging: deployment {id} ended rolled_back — exit 10\n\
             resume with: fix it, then keystone-ctl promote web --version 1.1.0 \
             --through dev,staging,production --timeout 60s --interval 200ms\n"
        )),
        "{out}"
    );
    assert!(
        !out.contains("production:"),
        "production was never started: {out}"
    );

    assert_eq!(
        newest(&dev),
        Some((Some("1.1.0".into()), DeployState::Completed)),
        "dev stays at 1.1.0"
    );
    assert_all_on(
        &dev,
        "dev after the promotion stopped",
        &tcp(&dev, vip, 200),
        "green",
    );
    assert_all_on(
        &staging,
        "staging after its rollback",
        &tcp(&staging, vip, 200),
        "blue",
    );
    assert_eq!(newest(&production), None, "nothing started in production");
    assert_eq!(
        backends(&production),
        production_before,
        "production's split as before"
    );
    assert_all_on(
        &production,
        "production after the promotion stopped",
        &tcp(&production, vip, 200),
        "blue",
    );
}
