//! The seed's `DeploymentWebhook` body: parsed and checked, every error naming what
//! is wrong.

use serde::{Deserialize, Serialize};

use super::WebhookError;
use crate::config::Strategy;

/// The webhook body a CI pipeline sends to start a deployment.
/// An unknown field is refused by name: a misspelt `config` or `environment` must not
/// silently start a deployment with defaults.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentWebhook {
    /// The tenant's name.
    pub service: String,
    /// `labels.version` of the backends to roll out.
    pub version: String,
    /// `canary`, `blue_green` or `rolling`.
    pub strategy: String,
    /// Target environment, e.g. `green` for a blue/green switch.
    #[serde(default)]
    pub environment: Option<String>,
    /// Pipeline metadata (e.g. `{id, url, commit, triggered_by}`), kept verbatim.
    #[serde(default)]
    pub pipeline: Option<serde_json::Value>,
    /// Strategy overrides: `initial_traffic`, `increment`, `interval`, `max_traffic`,
    /// `health_threshold`, `rollback_threshold`, `min_samples`, `strategy` (switch) ...
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

impl DeploymentWebhook {
    /// The strategy as the config's enum (`parse_webhook` has checked it).
    pub fn strategy(&self) -> Strategy {
        parse_strategy(&self.strategy).unwrap_or_default()
    }
}

fn parse_strategy(text: &str) -> Option<Strategy> {
    match text {
        "canary" => Some(Strategy::Canary),
        "blue_green" => Some(Strategy::BlueGreen),
        "rolling" => Some(Strategy::Rolling),
        _ => None,
    }
}

/// Parses and checks a webhook body; every error is a 400 naming what is wrong.
/// Unknown fields are ignored (pipelines may send more than Keystone reads).
pub fn parse_webhook(body: &[u8]) -> Result<DeploymentWebhook, WebhookError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let webhook: DeploymentWebhook = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| json_error(&e))
        .and_then(|w| {
            deserializer
                .end()
                .map_err(|e| WebhookError::MalformedJson {
                    line: e.line(),
                    column: e.column(),
                    reason: strip_position(&e.to_string()),
                })?;
            Ok(w)
        })?;
    for (field, value) in [("service", &webhook.service), ("version", &webhook.version)] {
        if value.trim().is_empty() {
            return Err(WebhookError::InvalidField {
                field: field.to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
    }
    if parse_strategy(&webhook.strategy).is_none() {
        return Err(WebhookError::UnknownStrategy {
            strategy: webhook.strategy.clone(),
        });
    }
    for (field, value) in [("pipeline", &webhook.pipeline), ("config", &webhook.config)] {
        if let Some(value) = value
            && !value.is_object()
            && !value.is_null()
        {
            return Err(WebhookError::InvalidField {
                field: field.to_owned(),
                reason: format!("expected a JSON object, got {value}"),
            });
        }
    }
    Ok(webhook)
}

fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> WebhookError {
    let inner = e.inner();
    let reason = strip_position(&inner.to_string());
    let path = e.path().to_string();
    match inner.classify() {
        serde_json::error::Category::Data => {
            if let Some(field) = reason
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                let field = if path == "." {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                WebhookError::MissingField { field }
            } else if path == "." {
                WebhookError::InvalidField {
                    field: "(body)".to_owned(),
                    reason: format!("{reason} (the body must be a JSON object)"),
                }
            } else {
                WebhookError::InvalidField {
                    field: path,
                    reason,
                }
            }
        }
        _ => WebhookError::MalformedJson {
            line: inner.line(),
            column: inner.column(),
            reason,
        },
    }
}

/// serde_json appends " at line L column C"; the error carries those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn parses_a_full_webhook() {
        let body = br#"{
            "service": "api", "version": "1.24.0", "strategy": "blue_green",
            "environment": "green",
            "pipeline": {"id": "4711", "url": "https://ci/4711", "commit": "abc123", "triggered_by": "alice"},
            "config": {"strategy": "gradual", "interval": "30s"}
        }"#;
        let w = parse_webhook(body).unwrap();
        assert_eq!(w.service, "api");
        assert_eq!(w.strategy(), Strategy::BlueGreen);
        assert_eq!(w.environment.as_deref(), Some("green"));
        assert_eq!(w.pipeline.as_ref().unwrap()["commit"], "abc123");
        assert_eq!(w.config.as_ref().unwrap()["interval"], "30s");
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let e = parse_webhook(
            br#"{"service": "api", "version": "1", "strategy": "canary", "confg": {}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `confg`"), "{e}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn parse_errors_are_named() {
        let e = parse_webhook(b"{\"service\": \"api\",\n \"version\": }").unwrap_err();
        match &e {
            WebhookError::MalformedJson { line, column, .. } => {
                assert_eq!((*line, *column), (2, 13), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let e = parse_webhook(br#"{"service":"api","strategy":"canary"}"#).unwrap_err();
        assert!(
            matches!(&e, WebhookError::MissingField { field } if field == "version"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "missing field 'version'");

        let e =
            parse_webhook(br#"{"service":"api","version":124,"strategy":"canary"}"#).unwrap_err();
        assert!(
            matches!(&e, WebhookError::InvalidField { field, reason } if field == "version" && reason.contains("invalid type: integer")),
            "{e:?}"
        );

        let e = parse_webhook(br#"{"service":"api","version":"1","strategy":"foo"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown strategy 'foo'; expected canary, blue_green or rolling"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let e = parse_webhook(br#"{"service":"","version":"1","strategy":"canary"}"#).unwrap_err();
        assert_eq!(e.to_string(), "field 'service': must not be empty");

        let e = parse_webhook(br#"[1,2]"#).unwrap_err();
        assert!(matches!(e, WebhookError::InvalidField { .. }), "{e:?}");

        let e =
            parse_webhook(br#"{"service":"a","version":"1","strategy":"canary"} x"#).unwrap_err();
        assert!(matches!(e, WebhookError::MalformedJson { .. }), "{e:?}");

        let e = parse_webhook(br#"{"service":"a","version":"1","strategy":"canary","config":5}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "field 'config': expected a JSON object, got 5"
        );
    }
}
