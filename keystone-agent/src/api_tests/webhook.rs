//! `POST /webhooks/deployment`: a signed request starts a deployment; bad ones change
//! nothing.

use axum::http::StatusCode;

use super::{Harness, WEBHOOK_SECRET, json};

#[tokio::test]
async fn signed_webhook_starts_a_deployment_and_bad_ones_change_nothing() {
    let h = Harness::new();
    let body = r#"{"service":"web","version":"1.1.0","strategy":"canary","pipeline":{"id":"42"},"config":{"initial_traffic":5}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = |ts: u64, body: &str, secret: &str| {
        vec![
            ("x-keystone-timestamp", ts.to_string()),
            (
                "x-keystone-signature",
                crate::webhook::sign(secret.as_bytes(), ts, body.as_bytes()),
            ),
        ]
    };
    let refused = [
        (
            signed(now, body, "wrong-secret-0123456789"),
            StatusCode::UNAUTHORIZED,
        ),
        (vec![], StatusCode::UNAUTHORIZED),
        (
            signed(now - 3600, body, WEBHOOK_SECRET),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (headers, want) in refused {
        let (status, answer) = h
            .send("POST", "/webhooks/deployment", None, &headers, body)
            .await;
        assert_eq!(status, want, "{answer}");
        assert!(json(&answer)["error"].is_string());
    }
    assert!(
        h.state.agent.deployments().is_empty(),
        "refused webhooks changed nothing"
    );

    let headers = signed(now, body, WEBHOOK_SECRET);
    let (status, answer) = h
        .send("POST", "/webhooks/deployment", None, &headers, body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let d = &json(&answer)["deployment"];
    assert_eq!(
        (d["canary_percent"].clone(), d["pipeline"]["id"].clone()),
        (5.0.into(), "42".into())
    );
    let (status, _) = h
        .send("POST", "/webhooks/deployment", None, &headers, body)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a replay is refused");

    for (bad, want) in [
        (
            r#"{"service":"web","version":"1.1.0","strategy":"yolo"}"#,
            "unknown strategy 'yolo'",
        ),
        (r#"{"service":"web","#, "JSON"),
    ] {
        let (status, answer) = h
            .send(
                "POST",
                "/webhooks/deployment",
                None,
                &signed(now, bad, WEBHOOK_SECRET),
                bad,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            json(&answer)["error"].as_str().unwrap().contains(want),
            "{answer}"
        );
    }
    let misspelt =
        r#"{"service":"web","version":"1.1.0","strategy":"canary","config":{"incremnt":5}}"#;
    let (status, answer) = h
        .send(
            "POST",
            "/webhooks/deployment",
            None,
            &signed(now, misspelt, WEBHOOK_SECRET),
            misspelt,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        json(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("config.incremnt: unknown parameter"),
        "{answer}"
    );
    assert_eq!(h.state.agent.deployments().len(), 1);
}
