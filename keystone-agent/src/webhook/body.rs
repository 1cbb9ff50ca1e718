//! The seed's `DeploymentWebhook` body, read strictly into keystone-api's shape: every
//! error names what is wrong, as written.

pub use keystone_api::DeploymentWebhook;
use keystone_api::{Strategy, struct_fields};
use serde_json::Value;

use super::WebhookError;
use crate::requests;

/// Parses and checks a webhook body; every error is a 400 naming what is wrong, but a
/// step parameter in `config` is refused as a request's is (422, `config.interval`).
/// An unknown field is refused by name: a misspelt `config` or `environment` must not
/// silently start a deployment with defaults.
pub fn parse_webhook(body: &[u8]) -> Result<DeploymentWebhook, WebhookError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| WebhookError::MalformedJson {
        line: e.line(),
        column: e.column(),
        reason: strip_position(&e.to_string()),
    })?;
    let Value::Object(mut fields) = value else {
        return Err(typed(value)
            .err()
            .unwrap_or_else(|| body_error("expected a JSON object")));
    };
    let known = struct_fields::<DeploymentWebhook>();
    if let Some(name) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(WebhookError::UnknownField {
            field: name.clone(),
            known: known.join(", "),
        });
    }
    for field in ["pipeline", "config"] {
        if let Some(value) = fields.get(field)
            && !value.is_object()
            && !value.is_null()
        {
            return Err(WebhookError::InvalidField {
                field: field.to_owned(),
                reason: format!("expected a JSON object, got {value}"),
            });
        }
    }
    let config = fields.remove("config").filter(|c| !c.is_null());
    let strategy = fields.get("strategy").cloned();
    let mut webhook = typed(Value::Object(fields))?;
    for (field, value) in [("service", &webhook.service), ("version", &webhook.version)] {
        if value.trim().is_empty() {
            return Err(WebhookError::InvalidField {
                field: field.to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
    }
    // keystone-api reads a word it does not know as `Unknown`; the agent must know it.
    if webhook.strategy == Strategy::Unknown {
        return Err(WebhookError::UnknownStrategy {
            strategy: strategy
                .as_ref()
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        });
    }
    webhook.config = config
        .map(requests::webhook_config)
        .transpose()
        .map_err(WebhookError::Config)?;
    Ok(webhook)
}

/// The body without `config`, as keystone-api's type; an error names the field.
fn typed(body: Value) -> Result<DeploymentWebhook, WebhookError> {
    serde_path_to_error::deserialize(body).map_err(|e| json_error(&e))
}

fn body_error(reason: &str) -> WebhookError {
    WebhookError::InvalidField {
        field: "(body)".to_owned(),
        reason: format!("{reason} (the body must be a JSON object)"),
    }
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
                body_error(&reason)
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
    use keystone_api::SwitchStrategy;

    use super::*;

    #[test]
    fn parses_a_full_webhook() {
        let body = br#"{
            "service": "api", "version": "1.24.0", "strategy": "blue_green",
            "environment": "green",
            "pipeline": {"id": "4711", "url": "https://ci/4711", "commit": "abc123", "triggered_by": "alice"},
            "config": {"switch_strategy": "gradual", "interval": "30s"}
        }"#;
        let w = parse_webhook(body).unwrap();
        assert_eq!(w.service, "api");
        assert_eq!(w.strategy, Strategy::BlueGreen);
        assert_eq!(w.environment.as_deref(), Some("green"));
        assert_eq!(w.pipeline.as_ref().unwrap()["commit"], "abc123");
        let config = w.config.unwrap();
        assert_eq!(config.params.interval, Some("30s".parse().unwrap()));
        assert_eq!(config.switch_strategy, Some(SwitchStrategy::Gradual));
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let e = parse_webhook(
            br#"{"service": "api", "version": "1", "strategy": "canary", "confg": {}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `confg`"), "{e}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        // The fields it lists are keystone-api's `DeploymentWebhook`'s, as the seed spells them.
        assert_eq!(
            e.to_string(),
            "unknown field `confg`; expected one of service, version, strategy, environment, pipeline, config"
        );
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
