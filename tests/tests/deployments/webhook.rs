//! The admin token and the signed CI webhook: what each refuses, and a webhook
//! replayed after a restart.

use keystone_api::ErrorBody;

use super::*;

/// The signed webhook and a fresh Unix timestamp.
fn now_secs() -> u64 {
    unix_now() as u64
}

fn post_webhook(lab: &Lab, headers: &[(&str, String)], body: &str) -> (u16, String) {
    ok(
        lab,
        "POST /webhooks/deployment",
        lab.admin_send(
            "POST",
            "/webhooks/deployment",
            Auth::None,
            headers,
            Some(body),
        ),
    )
}

fn deployment_ids(lab: &Lab) -> Vec<String> {
    ok(lab, "GET /deployments", lab.deployments())
        .into_iter()
        .map(|d| d.id)
        .collect()
}

/// Blue (stable) takes every new connection to `web` on `vip`, without health checks;
/// the webhook is on with [`WEBHOOK_SECRET`] and a 5 minute tolerance.
fn webhook_lab(vip: SocketAddr) -> Lab {
    lab_with_agent(
        keystone_lab::test_bins!(),
        Setup::nat(&["blue", "green"]),
        |lab| {
            let mut cfg = lab.agent_config(vec![tcp_tenant(
                lab,
                "web",
                vip,
                &[("blue", 100), ("green", 0)],
            )]);
            cfg.webhook = Some(WebhookConfig {
                secret: WEBHOOK_SECRET.into(),
                tolerance: "5m".into(),
            });
            cfg
        },
    )
    .0
}

/// The admin API without the bearer token (or with a wrong one) answers 401 with a
/// JSON reason and changes nothing. The signed webhook starts a deployment (202 with
/// its id, visible in `GET /deployments`); a wrong signature, a missing one, a stale
/// or future timestamp, and a replay of an accepted request are refused with 401 and
/// change nothing (no deployment, same weights); malformed JSON and an unknown
/// strategy get 400 with a reason.
#[test]
fn admin_api_needs_the_token_and_the_webhook_needs_a_fresh_signature() {
    let lab = webhook_lab(v4(80));
    let weights0 = weights(&lab);
    assert_eq!(weights0.get("web/green"), Some(&0), "{weights0:?}");

    // The bearer token.
    let canary = r#"{"service":"web","version":"1.1.0","initial_traffic":50}"#;
    let switch = r#"{"service":"web","to":"green"}"#;
    let set = r#"{"weights":{"green":100}}"#;
    for (method, path, body) in [
        ("GET", "/status", None),
        ("GET", "/tenants", None),
        ("GET", "/deployments", None),
        ("GET", "/deployments/web-1-1", None),
        ("POST", "/deployments/canary", Some(canary)),
        ("POST", "/deployments/blue-green/switch", Some(switch)),
        ("POST", "/deployments/web-1-1/promote", None),
        ("POST", "/tenants/web/weights", Some(set)),
        ("POST", "/admin/reload", None),
    ] {
        for auth in [Auth::None, Auth::Bearer("not-the-token")] {
            let (code, answer) = ok(
                &lab,
                "admin request",
                lab.admin_send(method, path, auth, &[], body),
            );
            let error = body_as::<ErrorBody>(path, &answer)
                .map(|e| e.error)
                .unwrap_or_default();
            assert!(
                code == 401 && !error.is_empty(),
                "{method} {path} with {auth:?}: HTTP {code} {answer} (want 401 with a JSON error)"
            );
        }
    }
    assert_eq!(deployment_ids(&lab), Vec::<String>::new());
    assert_eq!(weights(&lab), weights0, "a refused request changed weights");
    let (code, _) = ok(&lab, "GET /health", lab.admin_get("/health"));
    assert_eq!(code, 200, "GET /health needs no token");

    // Refused webhooks.
    let body = serde_json::json!({
        "service": "web",
        "version": "1.1.0",
        "strategy": Strategy::Canary,
        "pipeline": { "id": "4711", "commit": "3f2c1e9" },
        "config": { "initial_traffic": 10, "increment": 10, "interval": "5m" },
    })
    .to_string();
    let now = now_secs();
    let mut bad_signature = signed(WEBHOOK_SECRET, now, &body);
    bad_signature[1].1 = "sha256=zz".into();
    let refusals: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "signed with another secret",
            signed("another-secret-0123456", now, &body),
        ),
        (
            "signature of another body",
            signed(WEBHOOK_SECRET, now, "{}"),
        ),
        ("not a signature", bad_signature),
        (
            "no signature",
            vec![("X-Keystone-Timestamp", now.to_string())],
        ),
        ("no headers", vec![]),
        (
            "stale timestamp (an hour ago)",
            signed(WEBHOOK_SECRET, now - 3600, &body),
        ),
        (
            "timestamp an hour ahead",
            signed(WEBHOOK_SECRET, now + 3600, &body),
        ),
    ];
    for (what, headers) in &refusals {
        let (code, answer) = post_webhook(&lab, headers, &body);
        assert!(
            code == 401 && answer.contains("error"),
            "webhook {what}: HTTP {code} {answer} (want 401)\n{}",
            lab.agent_diagnostics()
        );
        eprintln!("webhook {what}: 401 {answer}");
        assert_eq!(
            deployment_ids(&lab),
            Vec::<String>::new(),
            "webhook {what} started a deployment"
        );
        assert_eq!(weights(&lab), weights0, "webhook {what} changed weights");
    }

    // Accepted, once.
    let headers = signed(WEBHOOK_SECRET, now_secs(), &body);
    let (code, answer) = post_webhook(&lab, &headers, &body);
    assert_eq!(
        code,
        202,
        "signed webhook: {answer}\n{}",
        lab.agent_diagnostics()
    );
    let id = deployment_id(&answer);
    assert_eq!(deployment_ids(&lab), std::slice::from_ref(&id));
    let d = ok(&lab, "GET /deployments/{id}", lab.deployment(&id));
    assert!(
        d.state == DeployState::Progressing
            && d.canary_percent == 10.0
            && d.tenant == "web"
            && d.canary_backends == ["green"],
        "the webhook's deployment: {d:?}"
    );
    assert_eq!(
        d.pipeline.as_ref().map(|p| p["id"].clone()),
        Some(serde_json::json!("4711")),
        "the pipeline is kept with the deployment"
    );
    let weights1 = weights(&lab);
    assert!(
        weights1["web/green"] > 0,
        "the canary's weights: {weights1:?}"
    );

    let (code, answer) = post_webhook(&lab, &headers, &body);
    assert!(
        code == 401 && answer.contains("error"),
        "replayed webhook: HTTP {code} {answer} (want 401)"
    );
    eprintln!("replayed webhook: 401 {answer}");
    assert_eq!(
        deployment_ids(&lab),
        std::slice::from_ref(&id),
        "a replay started a deployment"
    );
    assert_eq!(weights(&lab), weights1, "a replay changed weights");

    // Malformed bodies, properly signed.
    for (what, bad, says) in [
        ("malformed JSON", r#"{"service": "web", "version": "#, ""),
        (
            "unknown strategy",
            r#"{"service":"web","version":"1.1.0","strategy":"yolo"}"#,
            "strategy",
        ),
    ] {
        let (code, answer) = post_webhook(&lab, &signed(WEBHOOK_SECRET, now_secs(), bad), bad);
        let reason = body_as::<ErrorBody>("the webhook's answer", &answer)
            .map(|e| e.error)
            .unwrap_or_default();
        assert!(
            code == 400 && !reason.is_empty() && reason.contains(says),
            "webhook with {what}: HTTP {code} {answer} (want 400 with a reason)"
        );
        eprintln!("webhook with {what}: 400 {reason}");
    }
    assert_eq!(deployment_ids(&lab), [id]);
    assert_eq!(weights(&lab), weights1);
}

/// The agent SIGKILLed in the middle of a canary (at 40 %) and started again with the
/// same state and pin directories resumes the canary at 40 %, which then finishes by
/// itself; new connections opened without pause through the kill and the restart
/// never fail (the pinned XDP program keeps forwarding while no agent runs).
/// A signed webhook request accepted once is refused (401, "already accepted") when
/// replayed after the agent restarted, cleanly (SIGTERM) or not (SIGKILL): the agent
/// saves accepted signatures before it answers. One deployment per signature.
#[test]
fn a_webhook_replayed_after_a_restart_is_refused() {
    let mut lab = webhook_lab(v4(80));
    for restart in ["SIGTERM", "SIGKILL"] {
        let body = serde_json::json!({
            "service": "web",
            "version": "1.1.0",
            "strategy": Strategy::Canary,
            "pipeline": { "restart": restart },
            "config": { "interval": "10m" },
        })
        .to_string();
        let headers = signed(WEBHOOK_SECRET, now_secs(), &body);
        let (code, answer) = post_webhook(&lab, &headers, &body);
        assert_eq!(code, 202, "the first delivery: {answer}");
        let id = deployment_id(&answer);
        // Finished, so that a replay accepted by mistake would start a new one.
        let (code, answer) = ok(
            &lab,
            "abort",
            lab.admin_request("POST", &format!("/deployments/{id}/{}", Action::Abort)),
        );
        assert_eq!(code, 200, "aborting {id}: {answer}");
        let r = match restart {
            "SIGTERM" => lab.stop_agent(),
            _ => lab.kill("agent"),
        };
        ok(&lab, "stopping the agent", r);
        let r = lab.start_agent();
        ok(&lab, "starting the agent again", r);
        let (code, answer) = post_webhook(&lab, &headers, &body);
        assert!(
            code == 401 && answer.contains("already accepted"),
            "the same delivery after a {restart} restart: HTTP {code} {answer} (want 401)"
        );
    }
    assert_eq!(
        deployment_ids(&lab).len(),
        2,
        "one deployment per signature"
    );
}
