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
    dataplane::{Counters, Dataplane, DataplaneError, VipSpec},
};

/// Records every apply; can be told to refuse the next one.
#[derive(Clone, Default)]
struct FakeDataplane {
    applied: Arc<Mutex<Vec<Vec<VipSpec>>>>,
    refuse_next: Arc<Mutex<bool>>,
    counters: Arc<Mutex<Counters>>,
}

impl Dataplane for FakeDataplane {
    fn apply(&mut self, vips: &[VipSpec]) -> Result<(), DataplaneError> {
        if std::mem::take(&mut *self.refuse_next.lock().unwrap()) {
            return Err(DataplaneError::TooManyBackends {
                count: 9999,
                max: 4096,
            });
        }
        self.applied.lock().unwrap().push(vips.to_vec());
        Ok(())
    }

    fn counters(&self) -> Result<Counters, DataplaneError> {
        Ok(self.counters.lock().unwrap().clone())
    }
}

const TOKEN: &str = "test-token";

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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystone.yaml");
        std::fs::write(&path, config_text(90, 10)).unwrap();
        let fake = FakeDataplane::default();
        let agent = Arc::new(
            Agent::start(LoadedConfig::load(&path).unwrap(), Box::new(fake.clone())).unwrap(),
        );
        let registry = Arc::new(crate::metrics::registry(&agent));
        let state = ApiState {
            agent,
            registry,
            token: Arc::new(TOKEN.to_owned()),
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
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = router(self.state.clone())
            .oneshot(request.body(Body::empty()).unwrap())
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
    assert_eq!(status["tenants"][0]["backends"][1]["weight"], 100);
    assert_eq!(status["tenants"][0]["backends"][1]["weight_share"], 1.0);
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

#[test]
fn status_traffic_share_comes_from_the_window() {
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
    assert!((backends[0].traffic_share - 0.9).abs() < 1e-9);
    assert!((backends[1].traffic_share - 0.1).abs() < 1e-9);
}
