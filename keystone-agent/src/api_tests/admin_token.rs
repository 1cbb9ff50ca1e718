//! Who may call the admin API: the open health check, the bearer token, and a reload
//! that rotates it (inline or from `admin.token_file`).

use axum::http::StatusCode;

use super::{Harness, TOKEN, config_text, json};

#[tokio::test]
async fn health_is_open_and_everything_else_needs_the_token() {
    let h = Harness::new();
    let (status, body) = h.call("GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["status"], "ok");
    for (method, uri) in [("GET", "/status"), ("POST", "/admin/reload")] {
        let (status, body) = h.call(method, uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert!(
            json(&body)["error"]
                .as_str()
                .unwrap()
                .contains("missing bearer token")
        );
        let (status, _) = h.call(method, uri, Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
    let (status, body) = h.call("GET", "/status", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h.call("GET", "/nope", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"], "no such endpoint");
}

/// `config_text` with an `admin:` block.
fn config_with_admin(admin: &str) -> String {
    format!("admin:\n{admin}\n{}", config_text(90, 10))
}

async fn status_code(h: &Harness, token: &str) -> StatusCode {
    h.call("GET", "/status", Some(token)).await.0
}

#[tokio::test]
async fn a_reload_rotates_the_inline_admin_token() {
    let h = Harness::new();
    let first = "rotated-inline-token-0001";
    h.write(&config_with_admin(&format!("  token: {first}")));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_code(&h, TOKEN).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_code(&h, first).await, StatusCode::OK);

    let second = "rotated-inline-token-0002";
    h.write(&config_with_admin(&format!("  token: {second}")));
    let (status, body) = h.call("POST", "/admin/reload", Some(first)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_code(&h, first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_code(&h, second).await, StatusCode::OK);
}

#[tokio::test]
async fn a_reload_rereads_the_token_file_and_refuses_an_unreadable_one() {
    let h = Harness::new();
    let file = h.path.with_file_name("admin-token-file");
    let admin = format!("  token_file: {}", file.display());
    h.write(&config_with_admin(&admin));
    std::fs::write(&file, "file-token-aaaaaaaaaaaa\n").unwrap();
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_code(&h, TOKEN).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_code(&h, "file-token-aaaaaaaaaaaa").await,
        StatusCode::OK
    );

    // Only the file changes.
    std::fs::write(&file, "file-token-bbbbbbbbbbbb\n").unwrap();
    let (status, body) = h
        .call("POST", "/admin/reload", Some("file-token-aaaaaaaaaaaa"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        status_code(&h, "file-token-aaaaaaaaaaaa").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_code(&h, "file-token-bbbbbbbbbbbb").await,
        StatusCode::OK
    );

    // An empty file refuses the reload, naming the field; the token and config stay.
    std::fs::write(&file, "\n").unwrap();
    let generation = h.state.agent.generation();
    let (status, body) = h
        .call("POST", "/admin/reload", Some("file-token-bbbbbbbbbbbb"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "admin.token_file");
    assert_eq!(body["problems"][0]["line"], 2);
    assert!(
        body["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .ends_with("is empty"),
        "{body}"
    );
    assert_eq!(h.state.agent.generation(), generation);
    assert_eq!(
        status_code(&h, "file-token-bbbbbbbbbbbb").await,
        StatusCode::OK
    );
}
