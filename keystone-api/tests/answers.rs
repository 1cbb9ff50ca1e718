//! Answers captured from a running agent (`answers/`, the admin API of keystone-agent's
//! api_tests harness): each reads as its keystone-api type and writes back the same
//! JSON, less the agent's own bookkeeping fields (so nothing the agent sends is
//! silently dropped, and nothing is invented).

use keystone_api::{
    Accepted, DeployState, Deployment, DeploymentList, DeploymentWebhook, ErrorBody, EventKind,
    Health, HealthStatus, Notification, Reloaded, Status, Strategy, SwitchStrategy, Tenant,
    TenantList, TrafficSource,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

/// The agent's deployment fields a client view leaves out (issue 10: the persisted
/// record is not the API view).
const INTERNAL: [&str; 4] = ["next_step_at", "started_unix", "finished_unix", "validated"];

fn answer(name: &str) -> Value {
    let path = format!("{}/tests/answers/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Drops INTERNAL from every object in `v`.
fn without_internal(mut v: Value) -> Value {
    match &mut v {
        Value::Object(map) => {
            for key in INTERNAL {
                map.remove(key);
            }
            for value in map.values_mut() {
                *value = without_internal(value.take());
            }
        }
        Value::Array(items) => {
            for item in items {
                *item = without_internal(item.take());
            }
        }
        _ => {}
    }
    v
}

/// Reads `name` as T and checks it writes back to the same JSON.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str) -> T {
    let raw = answer(name);
    let typed: T = serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let written = serde_json::to_value(&typed).unwrap();
    assert_eq!(written, without_internal(raw), "{name}");
    let again: T = serde_json::from_value(written).unwrap();
    assert_eq!(again, typed, "{name}");
    typed
}

#[test]
fn deployments_read_and_round_trip() {
    let accepted: Accepted = round_trip("canary_accepted.json");
    let d = &accepted.deployment;
    assert_eq!(accepted.deployment_id, d.id);
    assert_eq!(
        (d.strategy, d.state),
        (Strategy::Canary, DeployState::Progressing)
    );
    assert!(d.is_running());
    assert_eq!(d.canary_backends, ["green"]);
    assert_eq!(d.params.interval_seconds, Some(3600.0));
    assert_eq!(d.pipeline, Some(json!({"id": "4711"})));
    assert_eq!(d.history[0].unix().map(|t| t > 1.7e9), Some(true));

    let paused: Deployment = round_trip("deployment_paused.json");
    assert_eq!(paused.state, DeployState::Paused);
    let aborted: Deployment = round_trip("deployment_aborted.json");
    assert_eq!(aborted.state, DeployState::Aborted);
    assert!(!aborted.is_running() && aborted.finished_at.is_some());
    let list: DeploymentList = round_trip("deployments.json");
    assert_eq!(list.deployments[0].id, aborted.id);
}

#[test]
fn status_tenants_health_and_reloads_read_and_round_trip() {
    let status: Status = round_trip("status.json");
    let web = &status.tenants[0];
    assert!(matches!(
        &web.about.traffic_source,
        TrafficSource::Deployment {
            state: DeployState::Paused,
            ..
        }
    ));
    assert_eq!(web.backends[1].backend.traffic_percent, 20.0);
    let tenants: TenantList = round_trip("tenants.json");
    assert_eq!(tenants.tenants[0].about.name, "web");
    let weights: Tenant = round_trip("weights.json");
    assert_eq!(
        weights.about.traffic_source,
        TrafficSource::Manual { reason: None }
    );
    assert_eq!(weights.backends[0].traffic_percent, 75.0);
    let health: Health = round_trip("health.json");
    assert_eq!(health.status, HealthStatus::Ok);
    let reloaded: Reloaded = round_trip("reloaded.json");
    assert_eq!(reloaded.config_generation, 2);
    let refused: ErrorBody = round_trip("reload_refused.json");
    assert_eq!(refused.problems[0].field, "tenants[0].listen");
    assert_eq!(refused.problems[0].line, Some(1));
}

#[test]
fn a_newer_agents_words_read_as_unknown() {
    let d: Deployment = serde_json::from_value(json!({
        "id": "d-1", "state": "hibernating", "strategy": "shadow",
        "history": [{"state": "hibernating"}], "a_new_field": 1
    }))
    .unwrap();
    assert_eq!(
        (d.state, d.strategy),
        (DeployState::Unknown, Strategy::Unknown)
    );
    assert!(!d.is_running());
    let n: Notification =
        serde_json::from_value(json!({"event": "hibernated", "deployment": {"id": "d-1"}}))
            .unwrap();
    assert_eq!(n.event, EventKind::Unknown);
    let t: Tenant = serde_json::from_value(json!({"traffic_source": {"kind": "fleet"}})).unwrap();
    assert_eq!(t.about.traffic_source, TrafficSource::Unknown);
}

#[test]
fn the_openapi_webhook_example_reads() {
    let hook: DeploymentWebhook = serde_json::from_value(json!({
        "service": "api", "version": "1.24.0", "strategy": "blue_green",
        "environment": "green",
        "pipeline": {"id": "4711", "commit": "3f2c1e9"},
        "config": {"initial_traffic": 5, "interval": "1m", "switch_strategy": "gradual"}
    }))
    .unwrap();
    assert_eq!(hook.strategy, Strategy::BlueGreen);
    let config = hook.config.unwrap();
    assert_eq!(config.switch_strategy, Some(SwitchStrategy::Gradual));
    assert_eq!(config.params.initial_traffic, Some(5.0));
}
