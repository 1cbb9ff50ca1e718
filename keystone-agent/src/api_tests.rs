//! The admin API and reload logic against a fake data plane: no root, no socket.

use std::sync::{Arc, Mutex};

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt;
use keystone_common::{Endpoint, PROTO_TCP, TrafficCounters};
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
        let path = dir.path().join("keystone.yaml");
        std::fs::write(&path, config_text(90, 10)).unwrap();
        if let Some(state) = state {
            std::fs::create_dir_all(dir.path().join("state")).unwrap();
            std::fs::write(dir.path().join("state/state.json"), state).unwrap();
        }
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

#[tokio::test]
async fn reload_applies_new_weights() {
    let h = Harness::new();
    assert_eq!(h.live_weights(), [90, 10]);
    h.write(&config_text(0, 100));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["config_generation"], 2);
    assert_eq!(h.live_weights(), [0, 100]);
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    let status = json(&body);
    assert_eq!(
        status["tenants"][0]["backends"][1]["configured_weight"],
        100
    );
    assert_eq!(
        status["tenants"][0]["backends"][1]["traffic_percent"],
        100.0
    );
}

#[tokio::test]
async fn invalid_reload_is_refused_with_field_and_line_and_old_config_stays() {
    let h = Harness::new();
    h.write(&config_text(90, 10).replace("weight: 10", "weight: ten"));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let body = json(&body);
    assert_eq!(
        body["problems"][0]["field"],
        "tenants[0].services[1].weight"
    );
    assert_eq!(body["problems"][0]["line"], 13);
    assert_eq!(
        h.fake.applied.lock().unwrap().len(),
        1,
        "nothing new was applied"
    );
    assert_eq!(h.state.agent.generation(), 1);
    assert_eq!(h.state.agent.config().tenants[0].services[1].weight, 10);
}

#[tokio::test]
async fn interface_change_needs_a_restart() {
    let h = Harness::new();
    h.write(&config_text(90, 10).replace("[eth0]", "[eth0, eth1]"));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "interfaces");
    assert_eq!(body["problems"][0]["line"], 1);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("restart the agent")
    );
}

#[tokio::test]
async fn capacity_change_needs_a_restart() {
    let h = Harness::new();
    h.write(&format!(
        "{}limits:\n  max_backends: 100\n",
        config_text(90, 10)
    ));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "limits.max_backends");
    assert!(body["problems"][0]["line"].as_u64().is_some(), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("4096 → 100") && error.contains("restart"),
        "{error}"
    );
    assert_eq!(h.state.agent.generation(), 1);
}

#[tokio::test]
async fn conn_table_size_change_needs_a_restart() {
    let h = Harness::new();
    h.write(&format!(
        "limits:\n  conn_table_entries: 4096\n{}",
        config_text(90, 10)
    ));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "limits.conn_table_entries");
    assert_eq!(body["problems"][0]["line"], 2);
    assert!(
        body["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("restart the agent"),
        "{body}"
    );
    assert_eq!(h.state.agent.generation(), 1);
}

#[tokio::test]
async fn dataplane_refusal_restores_the_previous_state() {
    let h = Harness::new();
    h.write(&config_text(50, 50));
    *h.fake.refuse_next.lock().unwrap() = true;
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("previous one stays live")
    );
    assert_eq!(h.live_weights(), [90, 10], "old state re-applied");
    assert_eq!(h.state.agent.generation(), 1);
}

#[tokio::test]
async fn metrics_say_which_build_runs() {
    let h = Harness::new();
    let (status, text) = h.call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let commit = env!("KEYSTONE_GIT_COMMIT");
    assert_ne!(commit, "", "build.rs sets the commit");
    let want = format!(
        "keystone_build_info{{commit=\"{commit}\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        text.lines().any(|l| l == want),
        "no line {want:?} in:\n{text}"
    );
}

#[tokio::test]
async fn metrics_carry_backend_counters_with_labels() {
    let h = Harness::new();
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let blue = Endpoint::new("198.18.11.2:8080".parse().unwrap(), PROTO_TCP);
    h.fake.counters.lock().unwrap().backends = vec![(
        vip,
        blue,
        TrafficCounters {
            packets: 7,
            bytes: 700,
            new_flows: 3,
        },
    )];
    h.fake.counters.lock().unwrap().reasons[keystone_common::Reason::TruncatedL4 as usize] = 2;
    let (status, text) = h.call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix} in:\n{text}"))
            .to_owned()
    };
    let packets = line("keystone_backend_packets_total{");
    for label in [
        "tenant=\"web\"",
        "backend=\"blue\"",
        "version=\"1.0.0\"",
        "environment=\"blue\"",
        "vip=\"198.18.0.10:80\"",
    ] {
        assert!(packets.contains(label), "{label} missing from {packets}");
    }
    assert!(packets.ends_with(" 7"), "{packets}");
    assert!(line("keystone_backend_new_connections_total{").ends_with(" 3"));
    assert!(line("keystone_xdp_exceptions_total{reason=\"truncated_l4\"}").ends_with(" 2"));
    assert!(
        text.contains("keystone_backend_weight{") && text.contains("keystone_config_generation 1")
    );
}

#[tokio::test]
async fn status_traffic_share_comes_from_the_window() {
    let h = Harness::new();
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let blue = Endpoint::new("198.18.11.2:8080".parse().unwrap(), PROTO_TCP);
    let green = Endpoint::new("198.18.12.2:8080".parse().unwrap(), PROTO_TCP);
    let set = |b: u64, g: u64| {
        h.fake.counters.lock().unwrap().backends = vec![
            (
                vip,
                blue,
                TrafficCounters {
                    new_flows: b,
                    ..Default::default()
                },
            ),
            (
                vip,
                green,
                TrafficCounters {
                    new_flows: g,
                    ..Default::default()
                },
            ),
        ];
    };
    set(1000, 0); // history before the window
    h.state.agent.sample().unwrap();
    set(1900, 100);
    let status = h.state.agent.status().unwrap();
    let backends = &status.tenants[0].backends;
    assert_eq!(backends[0].recent_new_connections, 900);
    assert!((backends[0].recent_traffic_percent - 90.0).abs() < 1e-7);
    assert!((backends[1].recent_traffic_percent - 10.0).abs() < 1e-7);
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
async fn manual_weights_and_tenant_view() {
    let h = Harness::new();
    let (status, body) = h
        .send(
            "POST",
            "/tenants/web/weights",
            Some(TOKEN),
            &[],
            r#"{"weights":{"blue":1,"green":3}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.live_weights(), [1, 3]);
    let (_, body) = h.call("GET", "/tenants", Some(TOKEN)).await;
    let green = &json(&body)["tenants"][0]["backends"][1];
    assert_eq!(
        (
            green["configured_weight"].clone(),
            green["effective_weight"].clone()
        ),
        (10.into(), 3.into())
    );
    assert_eq!(green["traffic_percent"], 75.0);
    assert_eq!(green["health"], "unknown");
    // A reload that changes the tenant hands it back to the config's weights.
    h.write(&config_text(50, 50));
    h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(h.live_weights(), [50, 50]);
}

#[tokio::test]
async fn a_canary_steps_itself_on_passive_signals_and_persists() {
    let h = Harness::new();
    let start = r#"{"service":"web","version":"1.1.0","initial_traffic":10,"increment":45,"interval":"50ms","min_samples":10}"#;
    let (status, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], start)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let green = Endpoint::new("198.18.12.2:8080".parse().unwrap(), PROTO_TCP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = vec![];
    let mut handshakes = 0;
    while h.state.agent.deployment(&id).unwrap().state.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "no promotion: {:#?}",
            h.state.agent.deployment(&id).unwrap().history
        );
        handshakes += 5;
        h.fake.counters.lock().unwrap().backend_l4 = vec![(
            vip,
            green,
            keystone_common::L4Counters {
                syn: handshakes,
                syn_ack: handshakes,
                established: handshakes,
                ..Default::default()
            },
        )];
        h.state.agent.tick();
        let p = h.state.agent.deployment(&id).unwrap().canary_percent;
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await; // pacing of the simulated traffic, not synchronisation
    }
    assert_eq!(seen, [10.0, 55.0, 100.0]);
    let saved = crate::store::Store::new(h._dir.path().join("state"))
        .load()
        .unwrap();
    assert_eq!(
        saved.deployments[0].state,
        crate::deploy::DeployState::Completed
    );
    assert_eq!(percents(&h.live_weights()), [0.0, 100.0]);
}

/// A canary (baseline taken) whose backend's L4 counters then read `l4` is rolled back
/// on the next tick, for `reason`.
async fn canary_rolls_back_on(l4: keystone_common::L4Counters, reason: &str) {
    let h = Harness::new();
    let start = r#"{"service":"web","version":"1.1.0","interval":"1h","min_samples":10}"#;
    let (_, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], start)
        .await;
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    h.state.agent.tick(); // baseline
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let green = Endpoint::new("198.18.12.2:8080".parse().unwrap(), PROTO_TCP);
    h.fake.counters.lock().unwrap().backend_l4 = vec![(vip, green, l4)];
    assert_next_tick_rolls_back(&h, &id, reason);
    assert_eq!(percents(&h.live_weights()), [100.0, 0.0]);
}

#[tokio::test]
async fn a_canary_with_failing_handshakes_rolls_back() {
    let l4 = keystone_common::L4Counters {
        syn: 20,
        syn_ack: 2,
        rst: 18,
        established: 2,
        ..Default::default()
    };
    canary_rolls_back_on(
        l4,
        "success rate 10.0% over 20 samples (tcp handshakes 2/20)",
    )
    .await;
}

/// Every SYN answered with a SYN-ACK, but the clients never complete a handshake (they
/// drop the answers, e.g. for bad checksums): the canary fails its analysis.
#[tokio::test]
async fn a_canary_whose_syn_acks_never_complete_a_handshake_rolls_back() {
    let l4 = keystone_common::L4Counters {
        syn: 20,
        syn_ack: 20,
        ..Default::default()
    };
    canary_rolls_back_on(
        l4,
        "success rate 0.0% over 20 samples (tcp handshakes 0/20)",
    )
    .await;
}

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

/// A stand-in Prometheus answering every query with `value`; records the queries.
async fn fake_prometheus(value: &'static str) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            log.lock()
                .unwrap()
                .push(request.lines().next().unwrap_or("").to_owned());
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000.0,"{value}"]}}]}}}}"#
            );
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_failing_prometheus_query_rolls_the_canary_back() {
    let h = Harness::new();
    let (prom, queries) = fake_prometheus("0.4").await;
    let with_analysis = config_text(90, 10).replace(
        "    services:\n",
        &format!(
            "    canary_config:\n      initial_traffic: 10\n      increment: 10\n      interval: 1h\n      analysis:\n        prometheus:\n          address: http://{prom}\n          query: 'success_rate{{version=\"{{{{version}}}}\"}}'\n    services:\n"
        ),
    );
    h.write(&with_analysis);
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .send(
            "POST",
            "/deployments/canary",
            Some(TOKEN),
            &[],
            r#"{"service":"web","version":"1.1.0"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    let agent = h.state.agent.clone();
    tokio::task::spawn_blocking(move || agent.poll_prometheus())
        .await
        .unwrap();
    assert_next_tick_rolls_back(&h, &id, "prometheus 0.400");
    let q = queries.lock().unwrap()[0].clone();
    assert!(
        q.starts_with("GET /api/v1/query?query=success_rate%7Bversion%3D%221.1.0%22%7D"),
        "{q}"
    );
}

#[tokio::test]
async fn blue_green_switch_validates_flips_and_drains_the_old_side() {
    let h = Harness::new();
    // Green must answer the validation probe (a TCP connect): a local listener.
    let green = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let green_addr = green.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let _ = green.accept().await;
        }
    });
    let config = format!(
        r#"interfaces: [eth0]
tenants:
  - name: web
    listen: 198.18.0.10:80
    deployment_strategy: blue_green
    active_environment: blue
    switch_config: {{strategy: instant, interval: 50ms, drain_timeout: 200ms, validation_timeout: 5s}}
    services:
      - {{name: blue, address: "198.18.11.2:8080", environment: blue}}
      - {{name: green, address: "{green_addr}", environment: green}}
"#
    );
    h.write(&config);
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(percents(&h.live_weights()), [100.0, 0.0]);
    let (status, body) = h
        .send(
            "POST",
            "/deployments/blue-green/switch",
            Some(TOKEN),
            &[],
            r#"{"service":"web","to":"green"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(json(&body)["deployment"]["from_environment"], "blue");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    let blue_up = || h.fake.applied.lock().unwrap().last().unwrap()[0].backends[0].up;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut flipped_with_blue_up = false;
    while blue_up() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            h.state.agent.deployment(&id).unwrap()
        );
        h.state.agent.tick();
        let d = h.state.agent.deployment(&id).unwrap();
        if d.canary_percent == 100.0 && blue_up() {
            // Flipped: blue gets no new connections but keeps its established ones.
            assert_eq!(percents(&h.live_weights()), [0.0, 100.0]);
            flipped_with_blue_up = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await; // the engine's tick period, simulated
    }
    assert!(
        flipped_with_blue_up,
        "blue drained before the flip was seen"
    );
    let d = h.state.agent.deployment(&id).unwrap();
    assert_eq!(
        d.state,
        crate::deploy::DeployState::Completed,
        "{:#?}",
        d.history
    );
    let drained_at = d.finished_unix.unwrap() + 0.2;
    assert!(
        crate::agent::unix_now() >= drained_at,
        "blue left before its drain timeout"
    );
}

#[tokio::test]
async fn an_unreadable_state_file_is_kept_aside_and_the_agent_starts() {
    for bad in ["", "{\"version\": 1, \"deploym"] {
        let h = Harness::with_state_file(Some(bad));
        assert_eq!(h.live_weights(), [90, 10], "the config's weights are live");
        let (status, body) = h.call("GET", "/health", None).await;
        assert_eq!(status, StatusCode::OK);
        let recovered = json(&body)["persistence"]["recovered"]
            .as_str()
            .unwrap_or_else(|| panic!("/health does not say the state was unreadable: {body}"))
            .to_owned();
        let kept = recovered
            .split_whitespace()
            .find(|w| w.contains("state.json.unreadable-"))
            .unwrap_or_else(|| panic!("no kept file named in '{recovered}'"));
        assert_eq!(std::fs::read_to_string(kept).unwrap(), bad, "{recovered}");
        assert!(
            recovered.contains("is not a Keystone state file"),
            "{recovered}"
        );
        let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
        assert_eq!(json(&body)["persistence"]["recovered"], recovered.as_str());
    }
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

/// A data plane pinned with green taking every new connection (a finished switch),
/// while the config says 90/10.
fn pinned_green() -> FakeDataplane {
    let endpoint = |a: &str| Endpoint::new(a.parse().unwrap(), PROTO_TCP);
    FakeDataplane {
        pinned: vec![LiveShares {
            vip: endpoint("198.18.0.10:80"),
            entries: vec![(endpoint("198.18.12.2:8080"), 1009)],
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn an_unreadable_state_file_keeps_the_pinned_split() {
    let h = Harness::with_pinned(Some("garbage"), pinned_green());
    assert_eq!(
        h.live_weights(),
        [0, 1009],
        "the pinned split is programmed"
    );
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    let status = json(&body);
    assert_eq!(
        status["tenants"][0]["traffic_source"],
        serde_json::json!({"kind": "manual", "reason": crate::recover::REASON}),
        "{body}"
    );
    let recovered = status["persistence"]["recovered"].as_str().unwrap();
    assert!(
        recovered.contains("is not a Keystone state file")
            && recovered.contains("state.json.unreadable-")
            && recovered.ends_with("as manual weights for tenant(s) web"),
        "{recovered}"
    );
    let saved = crate::store::Store::new(h._dir.path().join("state"))
        .load()
        .unwrap();
    assert_eq!(
        saved.plans["web"],
        crate::deploy::TrafficPlan::Manual {
            weights: [("blue".to_owned(), 0), ("green".to_owned(), 1009)].into(),
            reason: Some(crate::recover::REASON.to_owned()),
        },
        "saved, so a second restart keeps it"
    );
    // A readable state file is what counts: the pinned tables are not read back.
    let h = Harness::with_pinned(None, pinned_green());
    assert_eq!(h.live_weights(), [90, 10]);
}

mod audit;
mod input_props;
mod read_token;
mod seed_switch;

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

/// The value of the one sample of `name` whose labels include every `labels` pair;
/// `None` when there is none.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name}{labels:?} matches several samples: {matching:#?}"
    );
    matching
        .first()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
}

#[tokio::test]
async fn metrics_say_what_they_mean() {
    let h = Harness::new();
    let metrics = || async { h.call("GET", "/metrics", None).await.1 };
    let web = ("tenant", "web");
    let (blue, green) = (("backend", "blue"), ("backend", "green"));
    let text = metrics().await;
    // The config says 90/10: the weight metric says so, the share is what forwards.
    assert_eq!(
        sample(&text, "keystone_backend_weight", &[web, blue]),
        Some(90.0)
    );
    assert_eq!(
        sample(&text, "keystone_backend_weight", &[web, green]),
        Some(10.0)
    );
    let share = |text: &str, b| sample(text, "keystone_backend_effective_weight_ratio", &[web, b]);
    assert_eq!(
        (share(&text, blue), share(&text, green)),
        (Some(0.9), Some(0.1))
    );

    let start = CANARY_20_PLUS_30;
    let (status, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], start)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    let text = metrics().await;
    assert_eq!(
        sample(&text, "keystone_backend_weight", &[web, green]),
        Some(10.0)
    );
    assert_eq!(
        (share(&text, blue), share(&text, green)),
        (Some(0.8), Some(0.2))
    );
    let deployment = [
        web,
        ("service", "web"),
        ("strategy", "canary"),
        ("environment", "green"),
    ];
    assert_eq!(
        sample(&text, "keystone_deployments_started_total", &deployment),
        Some(1.0)
    );
    assert!(!text.contains("status=\"started\""), "{text}");
    // Every outcome exists at 0 from the start, so `increase()` sees the first one.
    let outcome = |text: &str, status| {
        let mut labels = deployment.to_vec();
        labels.push(("status", status));
        sample(text, "keystone_deployments_total", &labels)
    };
    assert_eq!(outcome(&text, "rolled_back"), Some(0.0));
    assert_eq!(outcome(&text, "completed"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "keystone_canary_traffic_percent",
            &[web, ("service", "web")]
        ),
        Some(20.0)
    );
    let state = |text: &str, s| sample(text, "keystone_deployment_state", &[web, ("state", s)]);
    assert_eq!(state(&text, "progressing"), Some(1.0));

    let (status, body) = h
        .call("POST", &format!("/deployments/{id}/rollback"), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = metrics().await;
    assert_eq!(outcome(&text, "rolled_back"), Some(1.0));
    assert_eq!(outcome(&text, "completed"), Some(0.0));
    assert_eq!(
        (state(&text, "progressing"), state(&text, "rolled_back")),
        (Some(0.0), Some(1.0))
    );
    let mut labels = deployment.to_vec();
    labels.push(("status", "rolled_back"));
    assert_eq!(
        sample(&text, "keystone_deployment_duration_seconds_count", &labels),
        Some(1.0)
    );
}
