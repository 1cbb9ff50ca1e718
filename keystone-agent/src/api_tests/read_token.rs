//! `admin.read_token_file`: a second token that reads every view (status, tenants,
//! deployments, health, metrics, the status page) and is refused every write.

use axum::http::StatusCode;

use super::{CANARY_20_PLUS_30, Harness, TOKEN, config_text, json};

const READ_TOKEN: &str = "read-only-token-0123456789";

/// `h` with `admin.read_token_file` naming a file holding `read_token`, reloaded.
async fn with_read_token(h: &Harness, read_token: &str) -> (StatusCode, String) {
    let file = h.path.with_file_name("read-token");
    std::fs::write(&file, format!("{read_token}\n")).unwrap();
    h.write(&format!(
        "{}admin:\n  read_token_file: {}\n",
        config_text(90, 10),
        file.display()
    ));
    h.call("POST", "/admin/reload", Some(TOKEN)).await
}

#[tokio::test]
async fn the_read_token_reads_every_view_and_is_refused_every_write() {
    let h = Harness::new();
    let (status, body) = with_read_token(&h, READ_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .send(
            "POST",
            "/deployments/canary",
            Some(TOKEN),
            &[],
            CANARY_20_PLUS_30,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    let weights = h.live_weights();

    for uri in [
        "/status",
        "/tenants",
        "/deployments",
        &format!("/deployments/{id}"),
        "/health",
        "/metrics",
        "/ui",
    ] {
        let (status, body) = h.call("GET", uri, Some(READ_TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "GET {uri}: {body}");
    }
    let writes = [
        ("/admin/reload", ""),
        (
            "/tenants/web/weights",
            r#"{"weights":{"blue":1,"green":3}}"#,
        ),
        ("/deployments/canary", CANARY_20_PLUS_30),
        ("/deployments/blue-green/switch", r#"{"tenant":"web"}"#),
        (&format!("/deployments/{id}/promote"), ""),
        (&format!("/deployments/{id}/abort"), ""),
    ];
    for (uri, request) in writes {
        let (status, body) = h.send("POST", uri, Some(READ_TOKEN), &[], request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "POST {uri}: {body}");
        assert_eq!(
            json(&body)["error"],
            format!("the read-only token may only read (GET); POST {uri} needs the admin token")
        );
    }
    assert_eq!(h.live_weights(), weights, "no write went through");
    assert_eq!(h.state.agent.generation(), 2, "no reload went through");
    let (status, body) = h
        .call("POST", &format!("/deployments/{id}/abort"), Some(TOKEN))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the admin token still writes: {body}"
    );
}

#[tokio::test]
async fn a_reload_re_reads_the_read_token() {
    let h = Harness::new();
    let (status, body) = with_read_token(&h, READ_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renewed = "renewed-read-token-9876543210";
    let (status, body) = with_read_token(&h, renewed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = h.call("GET", "/status", Some(READ_TOKEN)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old read token is gone"
    );
    let (status, body) = h.call("GET", "/status", Some(renewed)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_short_read_token_refuses_the_reload_naming_the_field() {
    let h = Harness::new();
    let (status, body) = with_read_token(&h, READ_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = with_read_token(&h, "short").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "admin.read_token_file");
    assert_eq!(body["problems"][0]["line"], 17);
    let reason = body["problems"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("is 5 characters"), "{reason}");
    let (status, _) = h.call("GET", "/status", Some(READ_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "the previous read token stays");
}

#[tokio::test]
async fn a_read_token_equal_to_the_admin_token_is_refused() {
    let h = Harness::new();
    let file = h.path.with_file_name("read-token");
    std::fs::write(&file, READ_TOKEN).unwrap();
    h.write(&format!(
        "{}admin:\n  token: {READ_TOKEN}\n  read_token_file: {}\n",
        config_text(90, 10),
        file.display()
    ));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "admin.read_token_file");
    assert_eq!(
        body["problems"][0]["reason"],
        format!(
            "admin.read_token_file {}: the read-only token is the admin token; give it a value of its own",
            file.display()
        )
    );
}
