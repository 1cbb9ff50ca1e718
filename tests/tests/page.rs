//! The agent's status page (`GET /ui`) in headless Chromium (Debian's `chromium`,
//! installed by `cargo xtask setup`), run in the lab's gateway namespace and driven
//! over the DevTools protocol (`keystone_lab::chromium`): given the read-only token in
//! the URL fragment, ONE open page, never reloaded, shows each backend's share and
//! health as `GET /tenants` reports them and the running deployment's timeline, and
//! follows a canary's first step, a pause and a rollback as they happen.
//!
//! `KEYSTONE_PAGE_SCREENSHOT=<file.png>` also saves a screenshot of the page during
//! the canary (how docs/status-page.png is made).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use keystone_lab::{
    ADMIN_LISTEN, ADMIN_TOKEN, Auth, HealthCheck, Lab, Probe,
    chromium::Browser,
    helpers::{Setup, lab_with_agent, tcp_tenant, v4},
    ok, wait_for,
};

/// The read-only token the page is given.
const READ_TOKEN: &str = "lab-read-only-token-0123";

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
fn api_view(tenants: &[keystone_api::Tenant], tenant: &str) -> BTreeMap<String, (String, String)> {
    let tenant = tenants
        .iter()
        .find(|t| t.about.name == tenant)
        .unwrap_or_else(|| panic!("no tenant {tenant} in {tenants:?}"));
    tenant
        .backends
        .iter()
        .map(|b| {
            let percent = format!("{:.1}", b.traffic_percent);
            let health = b.identity.health.name().to_owned();
            (b.identity.name.clone(), (percent, health))
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

/// Chromium, headless in the gateway namespace with a profile of this lab's own, on
/// the page with `token` in its fragment.
fn open_page(lab: &Lab, token: &str) -> Browser {
    let url = format!("http://{ADMIN_LISTEN}/ui#token={token}");
    let profile = lab.state_dir().join("chromium");
    ok(
        lab,
        "opening the page in chromium",
        Browser::open(lab.gateway_ns(), &profile, &url, (1000, 520)),
    )
}

/// The page's DOM, or '' before the first load commits.
const DOM: &str = "document.documentElement ? document.documentElement.outerHTML : ''";
/// Set once in the open page: a reload or a new navigation would lose it.
const MARK: &str = "window.keystoneTestMark = 'still the first load'";
/// The page's DOM and whether it still carries [`MARK`].
/// (Before the first load commits there is no `documentElement`: an empty DOM, polled again.)
const LOOK: &str = "({dom: document.documentElement ? document.documentElement.outerHTML : '', \
    marked: window.keystoneTestMark === 'still the first load'})";

/// Polls the open page (never reloading it) until it shows `web`'s backends as
/// `GET /tenants` reports them at that moment and `shows` holds; returns that DOM
/// and the API's view. Once `marked`, every look asserts the page was not reloaded.
fn wait_page(
    lab: &Lab,
    page: &mut Browser,
    when: &str,
    marked: bool,
    shows: impl Fn(&str) -> Result<(), String>,
) -> (BTreeMap<String, (String, String)>, String) {
    let r = wait_for(&format!("the page {when}"), Duration::from_secs(30), || {
        let look = page.eval(LOOK)?;
        let dom = look["dom"].as_str().unwrap_or_default().to_owned();
        assert!(
            !marked || look["marked"] == true,
            "the page was reloaded {when}:\n{dom}"
        );
        let api = api_view(&lab.tenants()?, "web");
        let shown = page_view(&dom, "web");
        Ok(match shows(&dom) {
            Ok(()) if shown == api => Probe::Ready((api, dom)),
            Ok(()) => Probe::NotYet(format!("page {shown:?}, API {api:?}")),
            Err(missing) => Probe::NotYet(format!("{missing} in\n{dom}")),
        })
    });
    ok(lab, "the open page", r)
}

/// Ok when `dom` contains `text`.
fn has(dom: &str, text: &str) -> Result<(), String> {
    dom.contains(text)
        .then_some(())
        .ok_or_else(|| format!("no {text:?}"))
}

/// `POST /deployments/{id}/{action}` with the admin token; asserts 200.
fn act(lab: &Lab, id: &str, action: &str) {
    let path = format!("/deployments/{id}/{action}");
    let (code, answer) = ok(
        lab,
        &path,
        lab.admin_send("POST", &path, Auth::Token, &[], None),
    );
    assert_eq!(code, 200, "{path}: {answer}");
}

/// Polls `GET /tenants` until every backend of `web` is up.
fn wait_all_up(lab: &Lab) {
    let r = wait_for("web's backends to be up", Duration::from_secs(30), || {
        let view = api_view(&lab.tenants()?, "web");
        Ok(if view.values().all(|(_, health)| health == "up") {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("{view:?}"))
        })
    });
    ok(lab, "health checks", r);
}

#[test]
fn one_open_page_follows_a_canary_a_pause_and_a_rollback_live() {
    let lab = page_lab(v4(8301));
    wait_all_up(&lab);
    let mut page = open_page(&lab, READ_TOKEN);
    let (before, _) = wait_page(&lab, &mut page, "before the canary", false, |dom| {
        has(dom, "No deployment running.")
    });
    assert_eq!(before["green"].0, "0.0", "green takes nothing yet");
    ok(&lab, "marking the page", page.eval(MARK));

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
    let id = lab.deployments().unwrap().remove(0).id;
    let timeline = |state: &'static str| {
        let id = id.clone();
        move |dom: &str| {
            let block = tags(dom, "deployment")
                .into_iter()
                .find(|tag| attr(tag, "data-deployment") == Some(id.as_str()))
                .ok_or_else(|| format!("no timeline of {id}"))?;
            match attr(block, "data-state") {
                Some(s) if s == state => has(dom, &format!("{state} · 20.0%")),
                other => Err(format!("timeline state {other:?}, not {state}")),
            }
        }
    };
    let (during, _) = wait_page(
        &lab,
        &mut page,
        "during the canary",
        true,
        timeline("progressing"),
    );
    assert_eq!(during["green"].0, "20.0", "the canary's first step");

    act(&lab, &id, "pause");
    let (paused, _) = wait_page(&lab, &mut page, "after the pause", true, timeline("paused"));
    assert_eq!(paused["green"].0, "20.0", "a pause keeps the split");

    if let Ok(path) = std::env::var("KEYSTONE_PAGE_SCREENSHOT") {
        let png = ok(&lab, "a screenshot", page.screenshot());
        ok(&lab, "writing the screenshot", std::fs::write(path, png));
    }

    act(&lab, &id, "rollback");
    let (after, _) = wait_page(&lab, &mut page, "after the rollback", true, |dom| {
        has(dom, "No deployment running.")
    });
    assert_eq!(
        after["green"].0, "0.0",
        "the rollback took green's share back"
    );
}

#[test]
fn the_page_refuses_a_wrong_token_and_asks_for_one() {
    let lab = page_lab(v4(8302));
    let mut page = open_page(&lab, "wrong-token-0123456789");
    let r = wait_for(
        "the page to refuse the token",
        Duration::from_secs(30),
        || {
            let dom = page.eval(DOM)?;
            let dom = dom.as_str().unwrap_or_default().to_owned();
            Ok(
                if dom.contains("the agent refused the token: wrong bearer token") {
                    Probe::Ready(dom)
                } else {
                    Probe::NotYet(dom)
                },
            )
        },
    );
    let dom = ok(&lab, "the open page", r);
    assert!(page_view(&dom, "web").is_empty(), "no data shown: {dom}");
}
