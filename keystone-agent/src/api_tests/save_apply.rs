//! A change's save and its apply run at once: the data plane does not wait for the
//! state file's fsync, the answer waits for both, and a change whose save fails is
//! put back.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{Harness, TOKEN, error_body};
use crate::api::router;

const WEIGHTS: &str = r#"{"weights":{"blue":1,"green":3}}"#;

/// POST /tenants/web/weights on a task of its own: (status, body).
fn set_weights(h: &Harness) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let state = h.state.clone();
    tokio::spawn(async move {
        let request = Request::builder()
            .method("POST")
            .uri("/tenants/web/weights")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::from(WEIGHTS))
            .unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    })
}

/// The state file's temporary file as a FIFO: the save's `open` blocks until the
/// test reads it, and its fsync then fails (a FIFO cannot be synced).
fn block_the_save(h: &Harness) -> std::path::PathBuf {
    let dir = h._dir.path().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("state.tmp");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
    fifo
}

#[tokio::test]
async fn the_data_plane_takes_a_change_while_its_save_is_still_running() {
    let h = Harness::new();
    assert_eq!(h.live_weights(), [90, 10]);
    let fifo = block_the_save(&h);
    let call = set_weights(&h);
    // The save is stuck in `open` until the FIFO is read: the new weights must reach
    // the data plane meanwhile (before: only after the save, so never here).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut live_while_saving = false;
    while Instant::now() < deadline {
        if h.live_weights() == [1, 3] {
            live_while_saving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!call.is_finished(), "answered before its save ended");
    let drained = tokio::task::spawn_blocking(move || std::fs::read(fifo).unwrap());
    let (status, body) = call.await.unwrap();
    drained.await.unwrap();
    assert!(
        live_while_saving,
        "the new weights were not applied while the state file was being written"
    );
    // The save failed, so the change is refused and put back.
    let error = error_body(&body).error;
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE && error.contains("not applied"),
        "HTTP {status}: {body}"
    );
    assert_eq!(
        h.live_weights(),
        [90, 10],
        "the unsaved change was not put back"
    );
    let stages: Vec<&str> = h.state.agent.last_change().iter().map(|s| s.0).collect();
    assert_eq!(
        stages,
        ["queue", "check", "save", "apply", "commit", "answer"]
    );
}

#[tokio::test]
async fn an_answered_change_survives_a_sigkill() {
    let h = Harness::new();
    let (status, body) = h
        .send("POST", "/tenants/web/weights", Some(TOKEN), &[], WEIGHTS)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Nothing saved on the way out, as after a SIGKILL right after the answer.
    let h = h.restart();
    assert_eq!(h.live_weights(), [1, 3]);
}
