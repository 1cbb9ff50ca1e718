//! The agent's status page (`GET /ui`) in headless Chromium (Debian's `chromium`,
//! installed by `cargo xtask setup`), run in the lab's gateway namespace: given the
//! read-only token in the URL fragment, the page shows each backend's share and
//! health as `GET /tenants` reports them, before and during a canary (the bars
//! move), and the running canary's step timeline.
//!
//! `KEYSTONE_PAGE_SCREENSHOT=<file.png>` also saves a screenshot of the page during
//! the canary (how docs/status-page.png is made).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use keystone_lab::{
    ADMIN_LISTEN, ADMIN_TOKEN, Auth, HealthCheck, Lab, Probe,
    cmd::{self, in_ns},
    helpers::{Setup, lab_with_agent, tcp_tenant, v4},
    ok, wait_for,
};

/// The read-only token the page is given.
const READ_TOKEN: &str = "lab-read-only-token-0123";
/// Virtual time Chromium lets the page run (several of its 1 s polls) before the
/// DOM is taken.
const PAGE_TIME_MS: &str = "3500";

/// Lab with tenant `web` on `vip`, blue at 100 and green at 0, both health-checked,
/// and `admin.read_token_file` naming a file holding [`READ_TOKEN`].
fn page_lab(vip: SocketAddr) -> Lab {
    let (lab, cfg) = lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            let web = tcp_tenant(lab, "web", vip, &[("blue", 100), ("green", 0)]);
            lab.agent_config(vec![web.with_health(HealthCheck::fast_http())])
        },
    );
    let file = lab.state_dir().join("read-token");
    ok(
        &lab,
        "writing the read token",
        std::fs::write(&file, READ_TOKEN),
    );
    let token_line = format!("  token: \"{ADMIN_TOKEN}\"\n");
    let yaml = cfg.to_yaml().replacen(
        &token_line,
        &format!("{token_line}  read_token_file: \"{}\"\n", file.display()),
        1,
    );
    assert!(yaml.contains("read_token_file"), "no token line in\n{yaml}");
    ok(&lab, "writing the config", lab.write_config_text(&yaml));
    ok(&lab, "reload naming the read token", lab.reload());
    lab
}

/// Each backend of `tenant` as (traffic percent to one decimal, health), from an
/// answer of `GET /tenants`.
fn api_view(tenants: &serde_json::Value, tenant: &str) -> BTreeMap<String, (String, String)> {
    let tenant = tenants["tenants"]
        .as_array()
        .and_then(|all| all.iter().find(|t| t["name"] == tenant))
        .unwrap_or_else(|| panic!("no tenant {tenant} in {tenants}"));
    tenant["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let percent = format!("{:.1}", b["traffic_percent"].as_f64().unwrap());
            let health = b["health"].as_str().unwrap().to_owned();
            (b["name"].as_str().unwrap().to_owned(), (percent, health))
        })
        .collect()
}

/// The value of attribute `name` in the start tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[start..].split('"').next()
}

/// The start tags (up to `>`) of the elements whose class is `class`, in order.
fn tags<'a>(dom: &'a str, class: &str) -> Vec<&'a str> {
    let marker = format!("class=\"{class}\"");
    dom.match_indices(&marker)
        .map(|(at, _)| {
            let open = dom[..at].rfind('<').unwrap();
            &dom[open..at + dom[at..].find('>').unwrap()]
        })
        .collect()
}

/// Each backend of `tenant` the page shows, as [`api_view`] gives them.
fn page_view(dom: &str, tenant: &str) -> BTreeMap<String, (String, String)> {
    tags(dom, "backend")
        .into_iter()
        .filter(|tag| attr(tag, "data-tenant") == Some(tenant))
        .map(|tag| {
            let get = |name| attr(tag, name).unwrap_or_default().to_owned();
            (
                get("data-backend"),
                (get("data-percent"), get("data-health")),
            )
        })
        .collect()
}

/// Chromium, headless in the gateway namespace with a profile of this lab's own,
/// on the page with `token` in its fragment; `output` is `--dump-dom` or
/// `--screenshot=<file>`.
fn chromium(lab: &Lab, token: &str, output: &str) -> keystone_lab::Result<String> {
    let profile = lab.state_dir().join("chromium");
    cmd::run(in_ns(lab.gateway_ns(), "timeout").args([
        "120",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        &format!("--user-data-dir={}", profile.display()),
        "--window-size=1000,520",
        &format!("--virtual-time-budget={PAGE_TIME_MS}"),
        output,
        &format!("http://{ADMIN_LISTEN}/ui#token={token}"),
    ]))
}

/// The page's DOM, given `token`, once it has polled a few times.
fn load_page(lab: &Lab, token: &str) -> String {
    ok(
        lab,
        "chromium --dump-dom",
        chromium(lab, token, "--dump-dom"),
    )
}

/// Polls `GET /tenants` until every backend of `web` is up.
fn wait_all_up(lab: &Lab) {
    let r = wait_for("web's backends to be up", Duration::from_secs(30), || {
        let view = api_view(&lab.tenants_json()?, "web");
        Ok(if view.values().all(|(_, health)| health == "up") {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("{view:?}"))
        })
    });
    ok(lab, "health checks", r);
}

/// `web`'s backends as `GET /tenants` reports them, and the page's DOM, asserted
/// to show the same.
fn page_and_api(lab: &Lab, when: &str) -> (BTreeMap<String, (String, String)>, String) {
    let api = api_view(&ok(lab, "GET /tenants", lab.tenants_json()), "web");
    let dom = load_page(lab, READ_TOKEN);
    assert_eq!(page_view(&dom, "web"), api, "the page {when}:\n{dom}");
    (api, dom)
}

#[test]
fn the_page_shows_the_split_health_and_timeline_the_api_reports() {
    let lab = page_lab(v4(8301));
    wait_all_up(&lab);
    let (before, dom) = page_and_api(&lab, "before the canary");
    assert_eq!(before["green"].0, "0.0", "green takes nothing yet");
    assert!(dom.contains("No deployment running."), "{dom}");

    let canary = r#"{"service":"web","version":"1.1.0","initial_traffic":20,"increment":30,"interval":"1h"}"#;
    let (code, answer) = ok(
        &lab,
        "starting a canary",
        lab.admin_send(
            "POST",
            "/deployments/canary",
            Auth::Token,
            &[],
            Some(canary),
        ),
    );
    assert_eq!(code, 202, "{answer}");
    let (during, dom) = page_and_api(&lab, "during the canary");
    assert_eq!(during["green"].0, "20.0", "the canary's first step");
    let deployment = lab.deployments().unwrap().remove(0);
    let block = tags(&dom, "deployment")
        .into_iter()
        .find(|tag| attr(tag, "data-deployment") == Some(deployment.id.as_str()))
        .unwrap_or_else(|| panic!("no timeline of {} in\n{dom}", deployment.id));
    assert_eq!(attr(block, "data-state"), Some("progressing"), "{block}");
    assert!(
        dom.contains("progressing · 20.0%"),
        "the timeline shows the first step:\n{dom}"
    );

    if let Ok(path) = std::env::var("KEYSTONE_PAGE_SCREENSHOT") {
        ok(
            &lab,
            "chromium --screenshot",
            chromium(&lab, READ_TOKEN, &format!("--screenshot={path}")),
        );
    }
}

#[test]
fn the_page_refuses_a_wrong_token_and_asks_for_one() {
    let lab = page_lab(v4(8302));
    let dom = load_page(&lab, "wrong-token-0123456789");
    assert!(
        dom.contains("the agent refused the token: wrong bearer token"),
        "{dom}"
    );
    assert!(page_view(&dom, "web").is_empty(), "no data shown: {dom}");
}
