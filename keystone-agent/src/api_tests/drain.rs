//! `POST /admin/drain` and `/admin/undrain`: admin-token writes (a missing or wrong
//! token is 401), the body read strictly (a bad field is a 400 naming it), refused
//! without a `bgp:` block, and a drain that is saved so a restarted agent keeps it.
//! BIRD is a stand-in `birdc` script that accepts every configure.

use std::os::unix::fs::PermissionsExt;

use axum::http::StatusCode;

use super::{Harness, TOKEN, config_text, json};

/// An agent with a `bgp:` block on a stand-in `birdc`, and the directory holding
/// the script, the routes file and the socket's place (kept while the test runs).
fn with_bgp() -> (tempfile::TempDir, Harness) {
    let bird = tempfile::tempdir().unwrap();
    let dir = bird.path();
    let birdc = dir.join("birdc");
    std::fs::write(
        &birdc,
        "#!/bin/sh\necho 'BIRD 2.0.12 ready.'\necho Reconfigured\n",
    )
    .unwrap();
    std::fs::set_permissions(&birdc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "{}bgp:\n  control_socket: {}\n  routes_file: {}\n  birdc: {}\n",
        config_text(90, 10),
        dir.join("bird.ctl").display(),
        dir.join("routes.conf").display(),
        birdc.display()
    );
    (bird, Harness::with_config(&config))
}

/// `POST /admin/drain` with the token and `body`.
async fn post_drain(h: &Harness, body: &str) -> (StatusCode, String) {
    h.send("POST", "/admin/drain", Some(TOKEN), &[], body).await
}

fn drain_of(body: &str) -> serde_json::Value {
    json(body)["drain"].clone()
}

#[tokio::test]
async fn drain_and_undrain_need_the_admin_token() {
    let (_bird, h) = with_bgp();
    for uri in ["/admin/drain", "/admin/undrain"] {
        let (status, body) = h.call("POST", uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
        assert!(body.contains("missing bearer token"), "{uri}: {body}");
        let (status, body) = h.call("POST", uri, Some("not-the-token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
        assert_eq!(json(&body)["error"], "wrong bearer token");
    }
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    assert_eq!(json(&body)["announce"]["drain"], "serving", "{body}");
}

#[tokio::test]
async fn a_bad_drain_body_is_refused_naming_the_field() {
    let (_bird, h) = with_bgp();
    let (status, body) = post_drain(&h, r#"{"timeout_seconds": "x"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = json(&body)["error"].as_str().unwrap().to_owned();
    assert!(
        error.starts_with("bad request body: ") && error.contains("timeout_seconds: invalid type"),
        "{error}"
    );
    let (status, body) = post_drain(&h, r#"{"timeout": 5}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("unknown field `timeout`"), "{body}");
    let (status, body) = post_drain(&h, r#"{"timeout_seconds": -1}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        json(&body)["error"],
        "timeout_seconds: -1 is not a number of seconds ≥ 0"
    );
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    assert_eq!(json(&body)["announce"]["drain"], "serving", "{body}");
}

#[tokio::test]
async fn drain_without_a_bgp_block_is_refused_saying_so() {
    let h = Harness::new();
    for uri in ["/admin/drain", "/admin/undrain"] {
        let (status, body) = h.call("POST", uri, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{uri}: {body}");
        assert_eq!(
            json(&body)["error"],
            "this agent announces no VIPs: its config has no `bgp:` block"
        );
    }
}

/// A drain answers 202 with the VIP withdrawn; the agent started again on the same
/// state dir (as after a reboot) is still draining; `undrain` serves again, and a
/// restart after that serves too.
#[tokio::test]
async fn a_drain_is_saved_and_kept_by_a_restarted_agent_until_undrain() {
    let (_bird, h) = with_bgp();
    let (status, body) = post_drain(&h, r#"{"timeout_seconds": 60}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(drain_of(&body), "draining");
    assert_eq!(json(&body)["vips"][0]["reason"], "draining", "{body}");
    assert_eq!(json(&body)["vips"][0]["announced"], false, "{body}");

    let h = h.restart();
    h.state.agent.announce();
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    assert_eq!(json(&body)["announce"]["drain"], "draining", "{body}");
    assert_eq!(json(&body)["announce"]["vips"][0]["reason"], "draining");

    let (status, body) = h.call("POST", "/admin/undrain", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(drain_of(&body), "serving");
    let h = h.restart();
    h.state.agent.announce();
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    assert_eq!(json(&body)["announce"]["drain"], "serving", "{body}");
}
