//! The admin API (axum). `router()` is driven by tests without a socket.
//!
//! `GET /health` and `GET /metrics` are open (load balancers and Prometheus poll
//! them); everything else needs `Authorization: Bearer <token>`. Errors are JSON:
//! `{"error": "...", "problems": [...]}`.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Extension, Path, Request, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use keystone_api::HealthStatus;
use prometheus::Registry;
use tower_http::timeout::TimeoutLayer;

use crate::{
    agent::{Agent, DeployError, ReloadError},
    config::{Problem, Strategy},
    deploy::{Action, Actor, Deployment},
    fleet::FleetError,
    requests::{self, RequestError},
    token_role::Role,
    webhook::{WebhookError, WebhookVerifier, parse_webhook},
};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.yaml");
/// Most bytes a request body may have (axum's default; real bodies are a few kB).
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// How long a client has to send a request's body: a slow sender cannot hold a
/// connection (and its descriptor) for longer.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiState {
    pub agent: Arc<Agent>,
    pub registry: Arc<Registry>,
    /// `None` when the config has no `webhook:` secret.
    pub webhook: Option<Arc<WebhookVerifier>>,
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
        let body = keystone_api::ErrorBody {
            error: self.error,
            problems: self.problems.into_iter().map(Into::into).collect(),
        };
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
            ReloadError::Unsaved(_) => StatusCode::SERVICE_UNAVAILABLE,
            ReloadError::Fleet(e) => fleet_status(e),
        };
        ApiError {
            status,
            problems: e.problems(),
            error: e.to_string(),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        match e {
            RequestError::Body(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            RequestError::Param(e) => e.into(),
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> ApiError {
        let status = match &e {
            DeployError::UnknownTenant { .. }
            | DeployError::UnknownDeployment { .. }
            | DeployError::UnknownPlan { .. } => StatusCode::NOT_FOUND,
            DeployError::AlreadyRunning { .. } | DeployError::NotAllowed { .. } => {
                StatusCode::CONFLICT
            }
            DeployError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            DeployError::Dataplane(_) => StatusCode::INTERNAL_SERVER_ERROR,
            DeployError::Unsaved(_) => StatusCode::SERVICE_UNAVAILABLE,
            DeployError::Fleet(e) => fleet_status(e),
        };
        ApiError::new(status, e.to_string())
    }
}

/// A change the fleet refused: 409 for a lost race, 503 while etcd cannot take it.
fn fleet_status(e: &FleetError) -> StatusCode {
    match e {
        FleetError::Conflict => StatusCode::CONFLICT,
        FleetError::Setup { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON body, or a 400 naming what is wrong with it.
fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(v)| v).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {}", e.body_text()),
        )
    })
}

pub fn router(state: ApiState) -> Router {
    let authed = Router::new()
        .route("/status", get(status))
        .route("/admin/reload", post(reload))
        .route("/admin/drain", post(drain))
        .route("/admin/undrain", post(undrain))
        .route("/tenants", get(tenants))
        .route("/tenants/{name}/weights", post(set_weights))
        .route("/deployments", get(deployments))
        .route("/deployments/canary", post(start_canary))
        .route("/deployments/blue-green/switch", post(start_switch))
        .route("/deployments/plans", get(plans).post(start_plan))
        .route("/deployments/plans/{id}", get(plan))
        .route("/deployments/plans/{id}/abort", post(abort_plan))
        .route("/deployments/{id}", get(deployment))
        .route("/deployments/{id}/{action}", post(act))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.yaml",
            get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }),
        )
        .route("/webhooks/deployment", post(webhook))
        .route("/ui", get(crate::status_page::page))
        .merge(authed)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), mark_stale))
        .layer(middleware::from_fn(read_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .with_state(state)
}

/// Marks every answer of a gateway that cannot follow its fleet with
/// [`keystone_api::STALE_HEADER`] and the reason: what it answers is its last applied
/// state, maybe not the fleet's.
async fn mark_stale(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Some(reason) = state.agent.fleet().and_then(|f| f.stale_reason()) {
        // A header carries visible ASCII only.
        let text: String = reason
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
            .collect();
        let value = header::HeaderValue::from_str(&text).expect("visible ASCII is a header value");
        response
            .headers_mut()
            .insert(keystone_api::STALE_HEADER, value);
    }
    response
}

/// Reads the whole body before any handler runs, within [`MAX_BODY`] and
/// [`BODY_READ_TIMEOUT`], so every endpoint refuses too much or too slow the same way.
async fn read_body(request: Request, next: Next) -> Result<Response, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than the limit of {} MiB",
                MAX_BODY >> 20
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {BODY_READ_TIMEOUT:?}"),
            )
        })?;
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ));
        }
    };
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}

/// Checks the bearer token and leaves its [`Role`] in the request's extensions, for
/// the handlers that record who acted.
async fn require_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
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
        Some(token) => match state.agent.token_role(token) {
            None => ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response(),
            Some(role) => match role.refusal(request.method(), request.uri().path()) {
                Some(reason) => ApiError::new(StatusCode::FORBIDDEN, reason).into_response(),
                None => {
                    request.extensions_mut().insert(role);
                    next.run(request).await
                }
            },
        },
    }
}

/// `status` is `degraded` while a file the agent must keep cannot be written (the
/// `persistence` object says which and why); the agent still serves and forwards.
async fn health(State(state): State<ApiState>) -> Json<keystone_api::Health> {
    let persistence = state.agent.persistence().status();
    // Forwarding would not survive the agent's exit: still 200 (the agent serves), but said.
    let problems: Vec<String> = state
        .agent
        .pin_watch()
        .and_then(|w| w.problem())
        .into_iter()
        .collect();
    let status = if persistence.saved && problems.is_empty() {
        HealthStatus::Ok
    } else {
        HealthStatus::Degraded
    };
    Json(keystone_api::Health {
        status,
        config_generation: state.agent.generation(),
        problems,
        persistence: persistence.into(),
    })
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

/// Runs `f` on Tokio's blocking pool. Agent calls wait for the agent's locks, which a
/// change holds while it writes the kernel's maps and fsyncs the state file: run on
/// the async workers, a burst of weight changes would stall every other request
/// (`/health` and `/metrics` included) behind them.
async fn blocking<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&Arc<Agent>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let agent = state.agent.clone();
    tokio::task::spawn_blocking(move || f(&agent))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the request's handler failed: {e}"),
            )
        })
}

/// [`blocking`] for a change (weights, a deployment or an action on one): it waits
/// for its turn among changes ([`Agent::change_turn`]), so a burst of them is served
/// first come, first served, and reads only ever wait for the one change running.
async fn change<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&Arc<Agent>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let entered = std::time::Instant::now();
    let agent = state.agent.clone();
    let _turn = agent.change_turn().await;
    blocking(state, move |agent| {
        crate::change_timing::begin(entered);
        let answer = f(agent);
        agent.set_last_change(crate::change_timing::end());
        answer
    })
    .await
}

async fn status(State(state): State<ApiState>) -> Result<Json<keystone_api::Status>, ApiError> {
    blocking(&state, |agent| agent.status())
        .await?
        .map(Json)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the data plane: {e}"),
            )
        })
}

async fn reload(State(state): State<ApiState>) -> Result<Json<keystone_api::Reloaded>, ApiError> {
    Ok(Json(state.agent.reload().await?))
}

/// `POST /admin/drain` (body optional: `{"timeout_seconds": N}`): 202 with the
/// announce status once BIRD was told to withdraw; 409 without a `bgp:` block.
async fn drain(State(state): State<ApiState>, payload: Bytes) -> Result<Response, ApiError> {
    let request: keystone_api::DrainRequest = if payload.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        // Through axum's reader, like every other body: the error names the field.
        body(Json::from_bytes(&payload))?
    };
    let timeout = match request.timeout_seconds {
        None => None,
        Some(s) => Some(Duration::try_from_secs_f64(s).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("timeout_seconds: {s} is not a number of seconds ≥ 0"),
            )
        })?),
    };
    let status = change(&state, move |agent| agent.drain(timeout)).await?;
    announce_answer(status)
}

/// `POST /admin/undrain`: announce again what qualifies.
async fn undrain(State(state): State<ApiState>) -> Result<Response, ApiError> {
    announce_answer(change(&state, |agent| agent.undrain()).await?)
}

fn announce_answer(status: Option<keystone_api::AnnounceStatus>) -> Result<Response, ApiError> {
    let status = status.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "this agent announces no VIPs: its config has no `bgp:` block",
        )
    })?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

async fn tenants(
    State(state): State<ApiState>,
) -> Result<Json<keystone_api::TenantList>, ApiError> {
    let tenants = blocking(&state, |agent| agent.tenants()).await?;
    Ok(Json(keystone_api::TenantList { tenants }))
}

async fn set_weights(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<keystone_api::Tenant>, ApiError> {
    let req = requests::weights(body(payload)?)?;
    let view = change(&state, move |agent| agent.set_weights(&name, req.weights)).await??;
    Ok(Json(view))
}

async fn deployments(
    State(state): State<ApiState>,
) -> Result<Json<keystone_api::DeploymentList>, ApiError> {
    let deployments = blocking(&state, |agent| agent.deployments()).await?;
    Ok(Json(keystone_api::DeploymentList {
        deployments: deployments.iter().map(Deployment::view).collect(),
    }))
}

async fn deployment(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<keystone_api::Deployment>, ApiError> {
    let d = blocking(&state, move |agent| agent.deployment(&id)).await??;
    Ok(Json(d.view()))
}

fn accepted(d: Deployment) -> Response {
    let accepted = keystone_api::Accepted {
        deployment_id: d.id.clone(),
        deployment: d.view(),
    };
    (StatusCode::ACCEPTED, Json(accepted)).into_response()
}

async fn start_canary(
    State(state): State<ApiState>,
    Extension(role): Extension<Role>,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = requests::canary(body(payload)?)?;
    Ok(accepted(
        change(&state, move |agent| agent.start_canary(req, role.actor())).await??,
    ))
}

async fn start_switch(
    State(state): State<ApiState>,
    Extension(role): Extension<Role>,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = requests::switch(body(payload)?)?;
    Ok(accepted(
        change(&state, move |agent| agent.start_switch(req, role.actor())).await??,
    ))
}

async fn act(
    State(state): State<ApiState>,
    Extension(role): Extension<Role>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<keystone_api::Deployment>, ApiError> {
    let action = action.parse::<Action>().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no action '{action}'; expected promote, abort, rollback, pause or resume"),
        )
    })?;
    let d = change(&state, move |agent| agent.act(&id, action, role.actor())).await??;
    Ok(Json(d.view()))
}

async fn start_plan(
    State(state): State<ApiState>,
    Extension(role): Extension<Role>,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = requests::plan(body(payload)?)?;
    let plan = change(&state, move |agent| agent.start_plan(req, role.actor())).await??;
    Ok((StatusCode::ACCEPTED, Json(plan)).into_response())
}

async fn plans(State(state): State<ApiState>) -> Result<Json<keystone_api::PlanList>, ApiError> {
    let plans = blocking(&state, |agent| agent.plans()).await?;
    Ok(Json(keystone_api::PlanList { plans }))
}

async fn plan(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<keystone_api::Plan>, ApiError> {
    Ok(Json(blocking(&state, move |agent| agent.plan(&id)).await??))
}

async fn abort_plan(
    State(state): State<ApiState>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
) -> Result<Json<keystone_api::Plan>, ApiError> {
    let plan = change(&state, move |agent| agent.abort_plan(&id, role.actor())).await??;
    Ok(Json(plan))
}

/// The signed CI webhook: verify, parse, then start what it asks for.
async fn webhook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    // Off is "no such endpoint here", not a server fault: 404, saying how to turn it on.
    let Some(verifier) = &state.webhook else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the deployment webhook is off: set webhook.secret (or secret_file) in the config",
        ));
    };
    // Off the async workers: accepting a signature fsyncs the replay file.
    let (check, body) = (verifier.clone(), raw.clone());
    let fleet = state.agent.fleet().cloned();
    let mut verified = tokio::task::spawn_blocking(move || {
        let now = std::time::SystemTime::now();
        check.verify_in(&headers, &body, now, fleet.as_deref())
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the signature check failed: {e}"),
        )
    })?;
    if matches!(verified, Ok(()) | Err(WebhookError::ReplayNotSaved(_))) {
        verified = state
            .agent
            .persistence()
            .record(crate::persist::File::WebhookReplay, verified);
    }
    verified.map_err(|e| ApiError::new(e.status(), e.to_string()))?;
    // A refused step parameter is named where the webhook has it (`config.interval`).
    let hook = parse_webhook(&raw).map_err(|e| ApiError::new(e.status(), e.to_string()))?;
    let config = hook.config.unwrap_or_default();
    let mut params = config.params;
    let deployment = match hook.strategy {
        Strategy::Unknown => unreachable!("parse_webhook refuses a strategy it does not know"),
        Strategy::Canary | Strategy::Rolling => {
            if hook.strategy == Strategy::Rolling {
                // A rolling update is a canary that goes all the way without approval.
                params.max_traffic = Some(100.0);
            }
            let req = keystone_api::CanaryRequest {
                service: hook.service,
                version: hook.version,
                params,
                pipeline: hook.pipeline,
            };
            change(&state, move |agent| agent.start_canary(req, Actor::Webhook)).await??
        }
        Strategy::BlueGreen => {
            let Some(to) = hook.environment else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "environment: required for strategy blue_green (the environment to switch to)",
                ));
            };
            let req = keystone_api::SwitchRequest {
                service: hook.service,
                from: None,
                to,
                strategy: config.switch_strategy,
                params,
                pipeline: hook.pipeline,
            };
            change(&state, move |agent| agent.start_switch(req, Actor::Webhook)).await??
        }
    };
    Ok(accepted(deployment))
}
