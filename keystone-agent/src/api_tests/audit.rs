//! The audit trail: each step of a deployment's history says who acted — the admin
//! token, the signed webhook, or the agent's own engine.

use axum::http::StatusCode;

use super::{Harness, TOKEN, WEBHOOK_SECRET, canary_analysis::canary_rolls_back_on, json};

const START: &str = r#"{"service":"web","version":"1.1.0","interval":"1h","min_samples":10}"#;

/// Starts a canary with the admin token; returns its id and the 202's body.
async fn start_with_admin_token(h: &Harness) -> (String, serde_json::Value) {
    let (status, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], START)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let answer = json(&body);
    (answer["deployment_id"].as_str().unwrap().to_owned(), answer)
}

#[tokio::test]
async fn a_canary_started_with_the_admin_token_records_admin_token() {
    let h = Harness::new();
    let (id, answer) = start_with_admin_token(&h).await;
    assert_eq!(answer["deployment"]["history"][0]["actor"], "admin_token");
    let (_, body) = h
        .call("GET", &format!("/deployments/{id}"), Some(TOKEN))
        .await;
    assert_eq!(json(&body)["history"][0]["actor"], "admin_token", "{body}");
}

#[tokio::test]
async fn a_promote_with_the_admin_token_records_admin_token_on_its_step() {
    let h = Harness::new();
    let (id, _) = start_with_admin_token(&h).await;
    let (status, body) = h
        .call("POST", &format!("/deployments/{id}/promote"), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let promoted = json(&body)["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(promoted["reason"], "promoted by operator");
    assert_eq!(promoted["actor"], "admin_token", "{promoted}");
}

#[tokio::test]
async fn a_deployment_started_by_the_webhook_records_webhook() {
    let h = Harness::new();
    let body = r#"{"service":"web","version":"1.1.0","strategy":"canary"}"#;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let headers = [
        ("x-keystone-timestamp", ts.to_string()),
        (
            "x-keystone-signature",
            crate::webhook::sign(WEBHOOK_SECRET.as_bytes(), ts, body.as_bytes()),
        ),
    ];
    let (status, answer) = h
        .send("POST", "/webhooks/deployment", None, &headers, body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        json(&answer)["deployment"]["history"][0]["actor"],
        "webhook",
        "{answer}"
    );
}

#[tokio::test]
async fn an_automatic_rollback_records_agent() {
    let failing = keystone_common::L4Counters {
        syn: 20,
        syn_ack: 2,
        ..Default::default()
    };
    let (h, id) = canary_rolls_back_on(failing, "tcp handshakes 0/20").await;
    let (_, body) = h
        .call("GET", &format!("/deployments/{id}"), Some(TOKEN))
        .await;
    let d = json(&body);
    let last = d["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["actor"], "agent", "{last}");
    assert_eq!(d["history"][0]["actor"], "admin_token", "{body}");
}
