//! Deployment requests read as keystone-api's types, strictly: keystone-api reads
//! leniently (a newer agent's field is ignored), while the agent refuses a misspelt
//! step parameter by name and names the parameter of a value of the wrong type
//! (serde's flattened fields would lose the name, hence the separate pass).

use keystone_api::{
    CanaryRequest, PlanRequest, StepParams, SwitchRequest, SwitchStrategy, WebhookConfig,
    WeightsRequest,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{
    deploy::Params,
    errors::{DeployError, invalid},
};

/// Why a request body was refused: its shape (400), or a step parameter (422).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("bad request body: {0}")]
    Body(serde_json::Error),
    #[error(transparent)]
    Param(#[from] DeployError),
}

/// `POST /deployments/canary`.
pub fn canary(body: Value) -> Result<CanaryRequest, RequestError> {
    let (mut req, params) = read::<CanaryRequest>(body, &["service", "version", "pipeline"], "")?;
    req.params = params;
    Ok(req)
}

/// `POST /deployments/blue-green/switch`.
pub fn switch(body: Value) -> Result<SwitchRequest, RequestError> {
    let own = ["service", "from", "to", "strategy", "pipeline"];
    let (mut req, params) = read::<SwitchRequest>(body, &own, "")?;
    req.params = params;
    Ok(req)
}

/// `POST /deployments/plans`.
pub fn plan(body: Value) -> Result<PlanRequest, RequestError> {
    let own = ["orchestration", "version", "versions", "pipeline"];
    let (mut req, params) = read::<PlanRequest>(body, &own, "")?;
    req.params = params;
    Ok(req)
}

/// A webhook's `config` (`config.` in front of every field it names).
pub fn webhook_config(config: Value) -> Result<WebhookConfig, RequestError> {
    let (mut config, params) = read::<WebhookConfig>(config, &["switch_strategy"], "config.")?;
    config.params = params;
    Ok(config)
}

/// `POST /tenants/{name}/weights`: nothing but `weights`.
pub fn weights(body: Value) -> Result<WeightsRequest, RequestError> {
    if let Some(name) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "weights"))
    {
        let e = format!("unknown field `{name}`, expected `weights`");
        return Err(RequestError::Body(serde::de::Error::custom(e)));
    }
    typed(body)
}

/// `T` from `body`; an error names the field (`service: invalid type ...`).
fn typed<T: DeserializeOwned>(body: Value) -> Result<T, RequestError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." => RequestError::Body(inner),
            _ => RequestError::Body(serde::de::Error::custom(format!("{path}: {inner}"))),
        }
    })
}

/// Reads `T` from `body` without its step parameters, then the step parameters on
/// their own; any other field than `own` is refused as an unknown parameter.
fn read<T: DeserializeOwned>(
    body: Value,
    own: &[&str],
    prefix: &str,
) -> Result<(T, StepParams), RequestError> {
    let Value::Object(fields) = body else {
        return Err(typed::<T>(body).err().unwrap_or_else(|| {
            RequestError::Body(serde::de::Error::custom("expected a JSON object"))
        }));
    };
    let (params, rest): (Map<String, Value>, Map<String, Value>) = fields
        .into_iter()
        .partition(|(k, _)| StepParams::NAMES.contains(&k.as_str()));
    let strategy = rest.get("strategy").or(rest.get("switch_strategy"));
    let req = typed(Value::Object(rest.clone()))?;
    if let Some(name) = rest.keys().find(|k| !own.contains(&k.as_str())) {
        return Err(invalid(
            format!("{prefix}{name}"),
            format!("unknown parameter; known: {}", StepParams::NAMES.join(", ")),
        )
        .into());
    }
    if let Some(Value::String(word)) = strategy
        && word.parse::<SwitchStrategy>().is_err()
    {
        let field = if rest.contains_key("strategy") {
            "strategy"
        } else {
            "switch_strategy"
        };
        return Err(invalid(
            format!("{prefix}{field}"),
            format!("unknown switch strategy '{word}'; expected instant or gradual"),
        )
        .into());
    }
    let params = serde_path_to_error::deserialize(Value::Object(params))
        .map_err(|e| invalid(format!("{prefix}{}", e.path()), e.into_inner().to_string()))?;
    Ok((req, params))
}

/// `requested` over `p` (the tenant's config and defaults): the first value that
/// does not read, else the first that breaks a rule of [`Params::problems`].
pub fn apply(requested: &StepParams, p: &mut Params) -> Result<(), DeployError> {
    let unread = p.apply(requested).into_iter().next();
    match unread.or_else(|| p.problems().into_iter().next()) {
        Some((field, reason)) => Err(invalid(field, reason)),
        None => Ok(()),
    }
}
