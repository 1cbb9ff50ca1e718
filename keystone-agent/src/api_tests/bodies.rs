//! Request bodies the API will not wait for or hold: too large (413) or never sent (408).

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{Harness, TOKEN, json};
use crate::api::router;

#[tokio::test]
async fn oversized_bodies_get_413_naming_the_limit() {
    let h = Harness::new();
    let huge = format!(
        r#"{{"weights": {{"blue": 1}}, "pad": "{}"}}"#,
        "x".repeat(100 * 1024 * 1024)
    );
    for uri in [
        "/tenants/web/weights",
        "/deployments/canary",
        "/webhooks/deployment",
    ] {
        let (status, answer) = h.send("POST", uri, Some(TOKEN), &[], &huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}: {answer}");
        assert_eq!(
            json(&answer)["error"],
            "request body larger than the limit of 2 MiB",
            "{uri}"
        );
    }
    assert_eq!(h.live_weights(), [90, 10], "nothing changed");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_gets_408_and_changes_nothing() {
    let h = Harness::new();
    // A body that never sends a byte (a slowloris client after its headers).
    let (_sender, stalled) =
        http_body_util::channel::Channel::<axum::body::Bytes, std::convert::Infallible>::new(1);
    let request = Request::post("/tenants/web/weights")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::new(stalled))
        .unwrap();
    let response = router(h.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        json(std::str::from_utf8(&body).unwrap())["error"],
        "request body not received within 10s"
    );
    assert_eq!(h.live_weights(), [90, 10]);
}
