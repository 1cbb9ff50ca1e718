//! `keystone-agent/openapi.yaml` against keystone-api's types, so neither drifts:
//! every property of a schema is a field of its type and every field a property,
//! and every enum lists exactly the type's words.

use std::collections::BTreeSet;

use keystone_api::*;
use serde::Serialize;
use serde_json::{Value, json};

fn openapi() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../keystone-agent/openapi.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Follows a `$ref` (`#/components/...`) to what it names.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => resolve(doc, doc.pointer(r.trim_start_matches('#')).expect(r)),
        None => schema,
    }
}

/// A schema's property names, `allOf` parts included.
fn properties(doc: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = resolve(doc, schema);
    let mut names: BTreeSet<String> = schema["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        names.extend(properties(doc, part));
    }
    names
}

/// The fields `values` write (the union, for enums with data or skipped fields).
fn fields<T: Serialize>(values: &[T]) -> BTreeSet<String> {
    values
        .iter()
        .flat_map(|v| match serde_json::to_value(v).unwrap() {
            Value::Object(map) => map.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
            other => panic!("not an object: {other}"),
        })
        .collect()
}

/// A schema's `enum`, null left out.
fn words(doc: &Value, schema: &Value) -> BTreeSet<String> {
    resolve(doc, schema)["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no enum in {schema}"))
        .iter()
        .filter_map(|w| w.as_str().map(str::to_owned))
        .collect()
}

fn names<T: Copy + std::fmt::Display>(all: &[T]) -> BTreeSet<String> {
    all.iter().map(|v| v.to_string()).collect()
}

/// Each mismatch between `in_doc` and `in_type`, described.
fn compare(what: &str, in_doc: BTreeSet<String>, in_type: BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let only_doc: Vec<_> = in_doc.difference(&in_type).collect();
    if !only_doc.is_empty() {
        found.push(format!("{what}: in openapi.yaml only: {only_doc:?}"));
    }
    let only_type: Vec<_> = in_type.difference(&in_doc).collect();
    if !only_type.is_empty() {
        found.push(format!("{what}: in keystone-api only: {only_type:?}"));
    }
    found
}

fn every_step_param() -> StepParams {
    StepParams {
        initial_traffic: Some(1.0),
        increment: Some(1.0),
        interval: Some(DurationValue::Seconds(1.0)),
        max_traffic: Some(1.0),
        health_threshold: Some(1.0),
        rollback_threshold: Some(1.0),
        min_samples: Some(1),
        validation_timeout: Some(DurationValue::Seconds(1.0)),
        rollback_on_failure: Some(true),
    }
}

#[test]
fn every_schema_property_is_a_field_and_back() {
    let doc = openapi();
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    let pipeline = Some(json!({}));
    let problem = Problem::default();
    let checks: Vec<(&str, Value, BTreeSet<String>)> = vec![
        (
            "Error + ConfigError",
            json!({"allOf": [schema("Error"), schema("ConfigError")]}),
            fields(&[ErrorBody {
                problems: vec![problem.clone()],
                ..ErrorBody::default()
            }]),
        ),
        ("Problem", schema("Problem"), fields(&[problem])),
        (
            "Health",
            schema("Health"),
            fields(&[Health {
                problems: vec!["x".into()],
                ..Health::default()
            }]),
        ),
        ("Persistence", schema("Persistence"), fields(&[PersistStatus::default()])),
        (
            "TrafficSource",
            schema("TrafficSource"),
            fields(&[
                TrafficSource::Config,
                TrafficSource::Deployment {
                    deployment_id: "d".into(),
                    state: DeployState::Completed,
                },
                TrafficSource::Manual {
                    reason: Some("r".into()),
                },
            ]),
        ),
        (
            "Status",
            schema("Status"),
            fields(&[Status {
                fleet: Some(FleetStatus::default()),
                announce: Some(AnnounceStatus::default()),
                ..Status::default()
            }]),
        ),
        ("FleetStatus", schema("FleetStatus"), fields(&[FleetStatus::default()])),
        ("FleetMember", schema("FleetMember"), fields(&[FleetMember::default()])),
        (
            "Status.problems",
            schema("Status")["properties"]["problems"]["items"].clone(),
            fields(&[DataplaneProblem::default()]),
        ),
        (
            "TenantStatus",
            schema("TenantStatus"),
            fields(&[TenantStatus {
                table_hash: Some("0123456789abcdef".into()),
                ..TenantStatus::default()
            }]),
        ),
        ("BackendStatus", schema("BackendStatus"), fields(&[BackendStatus::default()])),
        (
            "AnnounceStatus",
            schema("AnnounceStatus"),
            fields(&[AnnounceStatus {
                last_configure: Some(ConfigureResult::default()),
                ..AnnounceStatus::default()
            }]),
        ),
        (
            "AnnounceStatus.last_configure",
            schema("AnnounceStatus")["properties"]["last_configure"].clone(),
            fields(&[ConfigureResult {
                error: Some("e".into()),
                ..ConfigureResult::default()
            }]),
        ),
        (
            "AnnounceStatus.sessions",
            schema("AnnounceStatus")["properties"]["sessions"]["items"].clone(),
            fields(&[BgpSession::default()]),
        ),
        (
            "AnnounceStatus.vips",
            schema("AnnounceStatus")["properties"]["vips"]["items"].clone(),
            fields(&[VipAnnounce::default()]),
        ),
        (
            "DrainRequest",
            schema("DrainRequest"),
            fields(&[DrainRequest {
                timeout_seconds: Some(1.0),
            }]),
        ),
        ("Tenant", schema("Tenant"), fields(&[Tenant::default()])),
        ("TenantBackend", schema("TenantBackend"), fields(&[TenantBackend::default()])),
        ("StepParams", schema("StepParams"), fields(&[every_step_param()])),
        ("WeightsRequest", schema("WeightsRequest"), fields(&[WeightsRequest::default()])),
        (
            "CanaryRequest",
            schema("CanaryRequest"),
            fields(&[CanaryRequest {
                service: "s".into(),
                version: "v".into(),
                params: every_step_param(),
                pipeline: pipeline.clone(),
            }]),
        ),
        (
            "SwitchRequest",
            schema("SwitchRequest"),
            fields(&[SwitchRequest {
                service: "s".into(),
                from: Some("blue".into()),
                to: "green".into(),
                strategy: Some(SwitchStrategy::Gradual),
                params: every_step_param(),
                pipeline: pipeline.clone(),
            }]),
        ),
        ("Deployment", schema("Deployment"), fields(&[Deployment::default()])),
        (
            "DeploymentParams",
            schema("DeploymentParams"),
            fields(&[DeploymentParams::default()]),
        ),
        ("Analysis", schema("Analysis"), fields(&[Analysis::default()])),
        ("Step", schema("Step"), fields(&[Step::default()])),
        (
            "DeploymentWebhook",
            schema("DeploymentWebhook"),
            fields(&[DeploymentWebhook {
                environment: Some("green".into()),
                pipeline: pipeline.clone(),
                config: Some(WebhookConfig::default()),
                ..DeploymentWebhook::default()
            }]),
        ),
        ("Notification", schema("Notification"), fields(&[Notification::default()])),
        (
            "Orchestration",
            schema("Orchestration"),
            fields(&[Orchestration {
                strategy: Some(PlanStrategy::CoordinatedCanary),
                on_failure: Some(OnFailure::Hold),
                ..Orchestration::default()
            }]),
        ),
        (
            "PlanRequest",
            schema("PlanRequest"),
            fields(&[PlanRequest {
                orchestration: Some(Orchestration::default()),
                version: Some("v".into()),
                versions: [("s".to_owned(), "v".to_owned())].into(),
                params: every_step_param(),
                pipeline: pipeline.clone(),
            }]),
        ),
        ("Plan", schema("Plan"), fields(&[Plan::default()])),
        ("PlanPhase", schema("PlanPhase"), fields(&[PlanPhase::default()])),
        ("PlanEvent", schema("PlanEvent"), fields(&[PlanEvent::default()])),
        (
            "GET /deployments/plans 200",
            doc["paths"]["/deployments/plans"]["get"]["responses"]["200"]["content"]
                ["application/json"]["schema"]
                .clone(),
            fields(&[PlanList::default()]),
        ),
        (
            "DeploymentAccepted",
            doc["components"]["responses"]["DeploymentAccepted"]["content"]["application/json"]
                ["schema"]
                .clone(),
            fields(&[Accepted::default()]),
        ),
        (
            "POST /admin/reload 200",
            doc["paths"]["/admin/reload"]["post"]["responses"]["200"]["content"]
                ["application/json"]["schema"]
                .clone(),
            fields(&[Reloaded::default()]),
        ),
    ];
    // The names ctl and the agent check requests against are the fields.
    let names = StepParams::NAMES.iter().map(|n| n.to_string()).collect();
    let mut found = compare("StepParams::NAMES", names, fields(&[every_step_param()]));
    for (what, schema, in_type) in checks {
        let in_doc = properties(&doc, &schema);
        assert!(!in_doc.is_empty(), "{what}: no properties in openapi.yaml");
        found.extend(compare(what, in_doc, in_type));
    }
    assert!(
        found.is_empty(),
        "openapi.yaml and keystone-api differ:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_enum_lists_the_types_words() {
    let doc = openapi();
    let schemas = &doc["components"]["schemas"];
    let sources = [
        TrafficSource::Config,
        TrafficSource::Deployment {
            deployment_id: String::new(),
            state: DeployState::Completed,
        },
        TrafficSource::Manual { reason: None },
    ];
    let kinds = sources
        .iter()
        .map(|s| {
            serde_json::to_value(s).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // `unknown` is a health state the agent sends (no check yet), not only a fallback.
    let mut health = names(HealthState::ALL);
    health.insert(HealthState::Unknown.to_string());
    let checks = [
        ("Protocol", &schemas["Protocol"], names(Protocol::ALL)),
        ("Mode", &schemas["Mode"], names(ForwardingMode::ALL)),
        ("Strategy", &schemas["Strategy"], names(Strategy::ALL)),
        (
            "DeploymentState",
            &schemas["DeploymentState"],
            names(DeployState::ALL),
        ),
        (
            "SwitchStrategy",
            &schemas["SwitchStrategy"],
            names(SwitchStrategy::ALL),
        ),
        ("Actor", &schemas["Actor"], names(Actor::ALL)),
        (
            "Analysis.verdict",
            &schemas["Analysis"]["properties"]["verdict"],
            names(Verdict::ALL),
        ),
        (
            "Notification.event",
            &schemas["Notification"]["properties"]["event"],
            names(EventKind::ALL),
        ),
        ("HealthState", &schemas["HealthState"], health),
        ("PlanState", &schemas["PlanState"], names(PlanState::ALL)),
        ("PhaseState", &schemas["PhaseState"], names(PhaseState::ALL)),
        ("OnFailure", &schemas["OnFailure"], names(OnFailure::ALL)),
        (
            "PlanStrategy",
            &schemas["PlanStrategy"],
            names(PlanStrategy::ALL),
        ),
        (
            "Health.status",
            &schemas["Health"]["properties"]["status"],
            names(HealthStatus::ALL),
        ),
        (
            "TrafficSource.kind",
            &schemas["TrafficSource"]["properties"]["kind"],
            kinds,
        ),
        (
            "AnnounceStatus.drain",
            &schemas["AnnounceStatus"]["properties"]["drain"],
            names(DrainState::ALL),
        ),
        (
            "AnnounceStatus.vips.reason",
            &schemas["AnnounceStatus"]["properties"]["vips"]["items"]["properties"]["reason"],
            names(AnnounceReason::ALL),
        ),
    ];
    let mut found = Vec::new();
    for (what, schema, in_type) in checks {
        found.extend(compare(what, words(&doc, schema), in_type));
    }
    // Each action is a path, and each action path an action.
    let paths: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|p| p.strip_prefix("/deployments/{id}/").map(str::to_owned))
        .collect();
    found.extend(compare(
        "/deployments/{id}/{action}",
        paths,
        names(Action::ALL),
    ));
    assert!(
        found.is_empty(),
        "openapi.yaml and keystone-api differ:\n{}",
        found.join("\n")
    );
}
