//! The admin API and reload logic against a fake data plane: no root, no socket.

use std::sync::{Arc, Mutex};

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::{
    agent::Agent,
    api::{ApiState, router},
    config::LoadedConfig,
    dataplane::{ApplyError, Counters, Dataplane, LiveShares, MapAccessError, VipSpec},
};

/// Records every apply; can be told to refuse the next one.
#[derive(Clone, Default)]
struct FakeDataplane {
    applied: Arc<Mutex<Vec<Vec<VipSpec>>>>,
    refuse_next: Arc<Mutex<bool>>,
    counters: Arc<Mutex<Counters>>,
    /// What `live_shares` reads back, as if found pinned.
    pinned: Vec<LiveShares>,
}

impl Dataplane for FakeDataplane {
    fn apply(&mut self, vips: &[VipSpec]) -> Result<(), ApplyError> {
        if std::mem::take(&mut *self.refuse_next.lock().unwrap()) {
            return Err(ApplyError::TooManyBackends {
                count: 9999,
                max: 4096,
            });
        }
        self.applied.lock().unwrap().push(vips.to_vec());
        Ok(())
    }

    fn counters(&self) -> Result<Counters, MapAccessError> {
        Ok(self.counters.lock().unwrap().clone())
    }

    fn live_shares(&self) -> Result<Vec<LiveShares>, MapAccessError> {
        Ok(self.pinned.clone())
    }
}

const TOKEN: &str = "test-token";
const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

fn config_text(blue: u32, green: u32) -> String {
    format!(
        r#"interfaces: [eth0]
tenants:
  - name: web
    listen: 198.18.0.10:80
    services:
      - name: blue
        address: 198.18.11.2:8080
        weight: {blue}
        environment: blue
        labels: {{version: "1.0.0"}}
      - name: green
        address: 198.18.12.2:8080
        weight: {green}
        environment: green
        labels: {{version: "1.1.0"}}
"#
    )
}

struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    fake: FakeDataplane,
    state: ApiState,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_state_file(None)
    }

    /// An agent that finds `state` as its `state.json` when it starts.
    fn with_state_file(state: Option<&str>) -> Harness {
        Harness::with_pinned(state, FakeDataplane::default())
    }

    /// As `with_state_file`, on `fake` (which may hold a pinned data plane).
    fn with_pinned(state: Option<&str>, fake: FakeDataplane) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keystone.yaml"), config_text(90, 10)).unwrap();
        if let Some(state) = state {
            std::fs::create_dir_all(dir.path().join("state")).unwrap();
            std::fs::write(dir.path().join("state/state.json"), state).unwrap();
        }
        Harness::start_in(dir, fake)
    }

    /// An agent whose config file holds `config`.
    fn with_config(config: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keystone.yaml"), config).unwrap();
        Harness::start_in(dir, FakeDataplane::default())
    }

    /// A new agent on the same files, as after a SIGKILL (nothing saved on the way
    /// out), on a fresh data plane.
    fn restart(self) -> Harness {
        Harness::start_in(self._dir, FakeDataplane::default())
    }

    /// An agent started on `dir`'s `keystone.yaml` and `state/`.
    fn start_in(dir: tempfile::TempDir, fake: FakeDataplane) -> Harness {
        let path = dir.path().join("keystone.yaml");
        let store = crate::store::Store::new(dir.path().join("state"));
        let agent = Agent::start(
            LoadedConfig::load(&path).unwrap(),
            Box::new(fake.clone()),
            Some(store),
        )
        .unwrap();
        agent.use_admin_token(crate::admin_token::AdminToken::fixed(TOKEN));
        let registry = Arc::new(crate::metrics::registry(&agent));
        let state = ApiState {
            agent,
            registry,
            webhook: Some(Arc::new(crate::webhook::WebhookVerifier::new(
                WEBHOOK_SECRET,
                std::time::Duration::from_secs(300),
            ))),
        };
        Harness {
            _dir: dir,
            path,
            fake,
            state,
        }
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    async fn call(&self, method: &str, uri: &str, token: Option<&str>) -> (StatusCode, String) {
        self.send(method, uri, token, &[], "").await
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, String)],
        body: &str,
    ) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = router(self.state.clone())
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Writes `config` and reloads it; it must be accepted.
    async fn reload_with(&self, config: &str) {
        self.write(config);
        let (status, body) = self.call("POST", "/admin/reload", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Asks for a blue/green switch of tenant `web` to green; it must be accepted.
    /// Returns the answer and the deployment's id.
    async fn switch_web_to_green(&self) -> (serde_json::Value, String) {
        let (status, body) = self
            .send(
                "POST",
                "/deployments/blue-green/switch",
                Some(TOKEN),
                &[],
                r#"{"service":"web","to":"green"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let answer = json(&body);
        let id = answer["deployment_id"].as_str().unwrap().to_owned();
        (answer, id)
    }

    fn live_weights(&self) -> Vec<u32> {
        let applied = self.fake.applied.lock().unwrap();
        applied.last().unwrap()[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect()
    }
}

/// Advances the engine once and checks the deployment rolled back, saying why.
fn assert_next_tick_rolls_back(h: &Harness, id: &str, reason: &str) {
    h.state.agent.tick();
    let d = h.state.agent.deployment(id).unwrap();
    assert_eq!(
        d.state,
        crate::deploy::DeployState::RolledBack,
        "{:#?}",
        d.history
    );
    let last = &d.history.last().unwrap().reason;
    assert!(
        last.contains(reason),
        "'{last}' lacks '{reason}': {:#?}",
        d.history
    );
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// An error answer read as keystone-api's `ErrorBody`, which must be all of it.
fn error_body(body: &str) -> keystone_api::ErrorBody {
    let typed: keystone_api::ErrorBody = serde_json::from_str(body).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), json(body), "{body}");
    typed
}

fn percents(weights: &[u32]) -> Vec<f64> {
    let total: u64 = weights.iter().map(|w| *w as u64).sum();
    weights
        .iter()
        .map(|w| (*w as f64 * 1000.0 / total as f64).round() / 10.0)
        .collect()
}

/// A canary of green's 1.1.0: 20 %, then +30 % every hour.
const CANARY_20_PLUS_30: &str =
    r#"{"service":"web","version":"1.1.0","initial_traffic":20,"increment":30,"interval":"1h"}"#;

mod admin_token;
mod audit;
mod bodies;
mod canary;
mod canary_analysis;
mod drain;
mod input_props;
mod metrics;
mod plans;
mod read_token;
mod reload;
mod save_apply;
mod seed_switch;
mod state_file;
mod switch;
mod webhook;
mod weights;
