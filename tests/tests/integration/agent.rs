//! The agent's admin API and clean stop, and an invalid config refused while traffic
//! keeps flowing.

use super::*;

/// The admin API's unauthenticated endpoints answer, the authenticated ones want the
/// token, and SIGTERM stops the agent with exit 0.
#[test]
fn admin_api_answers_and_agent_stops_cleanly() {
    let (mut lab, _) = web_lab(keystone_lab::test_bins!(), v4(80), W90_10);
    let (code, body) = ok(&lab, "GET /health", lab.admin_get("/health"));
    assert!(
        code == 200 && body.contains("ok"),
        "GET /health: {code} {body}"
    );
    let (code, body) = ok(&lab, "GET /metrics", lab.admin_get("/metrics"));
    assert!(
        code == 200 && body.contains("keystone_"),
        "GET /metrics: {code}\n{body}"
    );
    let out = ok(
        &lab,
        "curl /status without a token",
        keystone_lab::cmd::run(keystone_lab::cmd::in_ns(lab.gateway_ns(), "curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9100/status",
        ])),
    );
    assert_eq!(out.trim(), "401", "GET /status without a token");
    let out = ok(
        &lab,
        "keystone-ctl status -o json",
        lab.ctl(&["-o", "json", "status"]),
    );
    assert!(
        out.status.success(),
        "keystone-ctl -o json status: {out:?}\n{}",
        lab.test_diagnostics()
    );
    let json: Result<serde_json::Value, _> = serde_json::from_slice(&out.stdout);
    assert!(
        json.as_ref().is_ok_and(serde_json::Value::is_object),
        "status -o json is not a JSON object: {json:?} {out:?}"
    );

    stop_agent_cleanly(&mut lab);
}

/// A config with an error is refused by reload (non-zero exit, the field named) and
/// the running config keeps forwarding.
#[test]
fn invalid_config_is_refused_and_traffic_keeps_flowing() {
    let vip = v4(80);
    let (lab, cfg) = web_lab(keystone_lab::test_bins!(), vip, W90_10);
    let good = cfg.to_yaml();
    let bad = good.replacen("weight: 10", "weight: -10", 1);
    assert_ne!(good, bad, "the test failed to break the config");
    ok(
        &lab,
        "writing the broken config",
        lab.write_config_text(&bad),
    );

    let out = ok(&lab, "keystone-ctl reload", lab.ctl(&["reload"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "reload of a config with weight -10 succeeded: {text}\n{}",
        lab.test_diagnostics()
    );
    let field = "tenants[0].services[1].weight";
    assert_eq!(
        text.matches(field).count(),
        1,
        "reload's refusal must name {field} once: {text}"
    );
    let (code, body) = ok(
        &lab,
        "POST /admin/reload",
        lab.admin_request("POST", "/admin/reload"),
    );
    assert!(
        code == 422 && body.contains(field) && body.contains("problems"),
        "POST /admin/reload of a bad config: {code} {body}"
    );

    let s = tcp(&lab, vip, FLOWS);
    assert_split(&lab, "old config after a refused reload", &s, W90_10);
}
