//! Canary deployments through the API: the lifecycle, and the requests it refuses.

use axum::http::StatusCode;

use super::{CANARY_20_PLUS_30, Harness, TOKEN, json, percents};

#[tokio::test]
async fn canary_lifecycle_through_the_api() {
    let h = Harness::new();
    let start = CANARY_20_PLUS_30;
    let (status, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], start)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    assert_eq!(json(&body)["deployment"]["canary_backends"][0], "green");
    assert_eq!(percents(&h.live_weights()), [80.0, 20.0]);

    let (status, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], start)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("already progressing")
    );

    let (status, body) = h
        .call("POST", &format!("/deployments/{id}/pause"), Some(TOKEN))
        .await;
    assert_eq!(
        (status, json(&body)["state"].clone()),
        (StatusCode::OK, "paused".into())
    );
    let (status, body) = h
        .call("POST", &format!("/deployments/{id}/resume"), Some(TOKEN))
        .await;
    assert_eq!(
        (status, json(&body)["state"].clone()),
        (StatusCode::OK, "progressing".into())
    );
    let (status, body) = h
        .call("POST", &format!("/deployments/{id}/promote"), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["state"], "completed");
    assert_eq!(percents(&h.live_weights()), [0.0, 100.0]);
    let (status, body) = h
        .call("POST", &format!("/deployments/{id}/abort"), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("cannot abort a deployment that is completed")
    );
    let (status, _) = h
        .call("POST", &format!("/deployments/{id}/rollback"), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(percents(&h.live_weights()), [100.0, 0.0]);

    let (_, body) = h
        .call("GET", &format!("/deployments/{id}"), Some(TOKEN))
        .await;
    let reasons: Vec<String> = json(&body)["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "started",
            "paused by operator",
            "resumed by operator",
            "promoted by operator",
            "rolled back by operator"
        ]
    );
    let (_, body) = h.call("GET", "/metrics", None).await;
    assert!(body.contains("keystone_deployments_total{environment=\"green\",service=\"web\",status=\"rolled_back\",strategy=\"canary\",tenant=\"web\"} 1"), "{body}");
}

#[tokio::test]
async fn deployment_requests_are_checked() {
    let h = Harness::new();
    let cases = [
        (
            r#"{"service":"nope","version":"1.1.0"}"#,
            StatusCode::NOT_FOUND,
            "no tenant named 'nope'",
        ),
        (
            r#"{"service":"web","version":"9.9"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "no service of tenant 'web' has labels.version '9.9' (versions: 1.0.0, 1.1.0)",
        ),
        (
            r#"{"service":"web","version":"1.1.0","increment":0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "increment: must be greater than 0",
        ),
        (
            r#"{"service":"web","version":"1.1.0","interval":"soon"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "interval: 'soon' is not a duration",
        ),
        (
            r#"{"service":"web"}"#,
            StatusCode::BAD_REQUEST,
            "missing field `version`",
        ),
        (
            r#"{"service":"web","version":"1.1.0","intial_traffic":5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "intial_traffic: unknown parameter; known: initial_traffic",
        ),
        (
            r#"{"service":"web","#,
            StatusCode::BAD_REQUEST,
            "bad request body",
        ),
    ];
    for (request, want_status, want_error) in cases {
        let (status, body) = h
            .send("POST", "/deployments/canary", Some(TOKEN), &[], request)
            .await;
        assert_eq!(status, want_status, "{request} -> {body}");
        let error = json(&body)["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains(want_error),
            "{request}: '{error}' lacks '{want_error}'"
        );
    }
    assert!(h.state.agent.deployments().is_empty());
    let (status, _) = h
        .call("POST", "/deployments/nope/promote", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .send(
            "POST",
            "/tenants/web/weights",
            Some(TOKEN),
            &[],
            r#"{"weights":{"purple":1}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_huge_pipeline_object_is_refused_and_not_stored() {
    let h = Harness::new();
    let big = "x".repeat(crate::deploy::MAX_PIPELINE_BYTES);
    let body = serde_json::json!({"service": "web", "version": "1.1.0", "pipeline": {"log": big}})
        .to_string();
    let (status, answer) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], &body)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let error = json(&answer)["error"].as_str().unwrap().to_owned();
    assert!(
        error.starts_with("pipeline: ")
            && error.contains(&format!("at most {}", crate::deploy::MAX_PIPELINE_BYTES)),
        "{error}"
    );
    assert!(h.state.agent.deployments().is_empty());
    let small = r#"{"service":"web","version":"1.1.0","pipeline":{"id":"4711"}}"#;
    let (status, answer) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], small)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
}
