//! The seed document's fields that Keystone reads differently from their names, or
//! not at all: each is mapped onto what Keystone does, or refused (or warned about)
//! by name with the reason, never silently dropped.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor, value::MapAccessDeserializer},
};

use super::{HealthConfig, Service, Strategy, Tenant};
use crate::yaml_lines::{self, Index};

/// `health: "/health"` is the seed's shorthand for an HTTP check on that path; the
/// map form (`health: {endpoint: /health, interval: 5s}`) stays.
pub(super) fn health_field<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<HealthConfig>, D::Error> {
    struct HealthVisitor;
    impl<'de> Visitor<'de> for HealthVisitor {
        type Value = Option<HealthConfig>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an HTTP path like \"/health\" or a map of check settings")
        }
        fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<Self::Value, E> {
            Ok(Some(HealthConfig {
                path: Some(path.to_owned()),
                ..HealthConfig::default()
            }))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            HealthConfig::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(HealthVisitor)
}

/// Fields of HTTP routers that an L4 balancer cannot act on.
const L7_FIELDS: [&str; 9] = [
    "path_prefix",
    "strip_prefix",
    "paths",
    "routes",
    "rewrite",
    "host",
    "hosts",
    "headers",
    "methods",
];

/// The warning for a field Keystone does not know (`path` as `tenants[0].colour`).
pub(super) fn unknown_field_reason(path: &str) -> String {
    let key = path.rsplit(['.', ']']).next().unwrap_or(path);
    if L7_FIELDS.contains(&key) {
        format!(
            "ignored: Keystone balances at L4 (TCP/UDP connections) and never sees HTTP paths, hosts or headers, so `{key}` cannot route anything; give each service its own VIP (`listen:`), or route by path in an HTTP proxy behind Keystone"
        )
    } else {
        "unknown field, ignored".to_owned()
    }
}

/// Checks of one service's `health:` block (`at` is `tenants[0].services[1].health`).
pub(super) fn check_health(h: &HealthConfig, at: &str, push: &mut impl FnMut(String, String)) {
    let field = |name: &str| format!("{at}.{name}");
    if h.path.is_some() && h.endpoint.is_some() {
        push(
            field("endpoint"),
            "set either endpoint or path (the same HTTP path), not both".into(),
        );
    }
    match h.http_path() {
        Some(path) if !path.starts_with('/') || path.contains(char::is_whitespace) => push(
            field(if h.endpoint.is_some() {
                "endpoint"
            } else {
                "path"
            }),
            format!(
                "'{path}' is not an HTTP path like /health (it starts with / and has no spaces)"
            ),
        ),
        Some(_) => {}
        None => {
            for (name, set) in [
                ("expected_status_code", h.expected_status_code.is_some()),
                ("expected_response", h.expected_response.is_some()),
            ] {
                if set {
                    push(
                        field(name),
                        "needs endpoint (an HTTP path): without one the check is a TCP connect, which has no response".into(),
                    );
                }
            }
        }
    }
    if let Some(code) = h.expected_status_code
        && !(100..=599).contains(&code)
    {
        push(
            field("expected_status_code"),
            format!("{code} is not an HTTP status code (100 to 599)"),
        );
    }
    if h.retries.is_some() && h.failure_threshold.is_some() {
        push(
            field("retries"),
            "set either retries or failure_threshold (both are the failed checks in a row that mark a backend down), not both".into(),
        );
    }
    for (name, value) in [
        ("success_threshold", h.success_threshold),
        ("failure_threshold", h.failure_threshold),
        ("retries", h.retries),
    ] {
        if value == Some(0) {
            push(field(name), "must be at least 1".into());
        }
    }
    if h.deployment_aware == Some(false) {
        push(
            field("deployment_aware"),
            "cannot be false: Keystone always uses health results in deployments (a failing canary or idle side is rolled back or not switched to); remove the line".into(),
        );
    }
    let refused = [
        (
            "metrics_endpoint",
            h.metrics_endpoint.is_some(),
            "not supported: health checks do not read metrics; judge a canary by metrics with canary_config.analysis.prometheus",
        ),
        (
            "canary_tolerance",
            h.canary_tolerance.is_some(),
            "not supported: a canary is judged by its success rate against canary_config.health_threshold and rollback_threshold; set those",
        ),
        (
            "rollback_threshold",
            h.rollback_threshold.is_some(),
            "not supported here: the rollback threshold is the tenant's canary_config.rollback_threshold (a percentage)",
        ),
    ];
    for (name, set, reason) in refused {
        if set {
            push(field(name), reason.into());
        }
    }
}

/// Whether `active_environment` and the weights disagree. The environment wins for
/// a blue/green tenant (its services take all new connections until a switch); for
/// other strategies it is ignored. Returns a warning naming both lines.
pub(super) fn check_active_environment(
    tenant: &Tenant,
    at: &str,
    index: &Index,
    push: &mut impl FnMut(String, String),
    warn: &mut impl FnMut(String, String),
) {
    let Some(env) = &tenant.active_environment else {
        return;
    };
    let field = format!("{at}.active_environment");
    if tenant.deployment_strategy != Strategy::BlueGreen {
        warn(
            field,
            "ignored: active_environment only applies to deployment_strategy: blue_green; the weights decide".into(),
        );
        return;
    }
    let in_env = |s: &&Service| s.environment.as_deref() == Some(env.as_str());
    if !tenant.services.iter().any(|s| in_env(&s)) {
        push(
            field,
            format!("no service has environment: '{env}', so the VIP would have no backend"),
        );
        return;
    }
    let weight_line = |i: usize| {
        let path = format!("{at}.services[{i}].weight");
        match yaml_lines::line_of(&index.lines, &path) {
            Some(line) => format!("{path} (line {line})"),
            None => path,
        }
    };
    let env_unweighted = tenant.services.iter().filter(in_env).all(|s| s.weight == 0);
    let zero_in_env = tenant
        .services
        .iter()
        .position(|s| in_env(&s))
        .filter(|_| env_unweighted);
    let weighted_elsewhere = tenant
        .services
        .iter()
        .position(|s| !in_env(&s) && s.weight > 0);
    if let (Some(active), Some(other)) = (zero_in_env, weighted_elsewhere) {
        warn(
            field,
            format!(
                "'{env}' contradicts the weights: {} is 0 but {} is {}; active_environment wins, so all new connections go to '{env}' until a switch",
                weight_line(active),
                weight_line(other),
                tenant.services[other].weight
            ),
        );
    }
}
