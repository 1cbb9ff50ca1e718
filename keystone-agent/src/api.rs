//! The admin API (axum). `router()` is driven by tests without a socket.
//!
//! `GET /health` and `GET /metrics` are open (load balancers and Prometheus poll
//! them); everything else needs `Authorization: Bearer <token>`. Errors are JSON:
//! `{"error": "...", "problems": [...]}`.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prometheus::Registry;
use serde_json::json;
use tower_http::timeout::TimeoutLayer;

use crate::{
    agent::{Agent, ReloadError},
    config::Problem,
};

#[derive(Clone)]
pub struct ApiState {
    pub agent: Arc<Agent>,
    pub registry: Arc<Registry>,
    pub token: Arc<String>,
}

/// A JSON error answer with a reason.
pub struct ApiError {
    status: StatusCode,
    error: String,
    problems: Vec<Problem>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            problems: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if !self.problems.is_empty() {
            body["problems"] = json!(self.problems);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<ReloadError> for ApiError {
    fn from(e: ReloadError) -> ApiError {
        let status = match &e {
            ReloadError::Config(crate::config::ConfigError::Read { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ReloadError::Config(_)
            | ReloadError::NeedsRestart { .. }
            | ReloadError::Dataplane(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError {
            status,
            problems: e.problems(),
            error: e.to_string(),
        }
    }
}

pub fn router(state: ApiState) -> Router {
    let authed = Router::new()
        .route("/status", get(status))
        .route("/admin/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(authed)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .with_state(state)
}

/// Compares without an early exit, so response time does not leak how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>)",
        )
        .into_response(),
        Some(token) if !constant_time_eq(token.trim().as_bytes(), state.token.as_bytes()) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response()
        }
        Some(_) => next.run(request).await,
    }
}

async fn health(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "config_generation": state.agent.generation() }))
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let registry = state.registry.clone();
    match tokio::task::spawn_blocking(move || crate::metrics::render(&registry)).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics rendering failed: {e}"),
        )
        .into_response(),
    }
}

async fn status(State(state): State<ApiState>) -> Result<Json<crate::agent::Status>, ApiError> {
    state.agent.status().map(Json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the data plane: {e}"),
        )
    })
}

async fn reload(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let generation = state.agent.reload().await?;
    Ok(Json(
        json!({ "status": "reloaded", "config_generation": generation }),
    ))
}
