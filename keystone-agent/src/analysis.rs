//! Analysis inputs: what a deployment's new backends have shown (probes, passive
//! handshake counters) and the Prometheus HTTP client for its query.

use std::time::Duration;

use keystone_common::Endpoint;

use crate::{
    config::{ForwardingMode, PrometheusQuery, Protocol, ProtocolNumber, ResolvedTenant},
    dataplane::Counters,
    deploy::{Deployment, Samples, Signals},
    health::{HealthChecker, HealthState},
};

/// What the deployment's new backends of `tenant` have shown since the agent
/// started; `prometheus` is its query's latest value.
pub fn signals(
    tenant: &ResolvedTenant,
    d: &Deployment,
    health: &HealthChecker,
    prometheus: Option<f64>,
    counters: Option<&Counters>,
) -> Signals {
    let mut signals = Signals::default();
    let mut checked = 0;
    let mut down = 0;
    for name in &d.canary_backends {
        if let Some(h) = health.get(&tenant.name, name) {
            signals.probes = signals.probes.plus(Samples {
                ok: h.total_ok,
                failed: h.total_failed,
            });
            checked += 1;
            down += usize::from(h.state == HealthState::Down);
        }
    }
    signals.all_down = checked > 0 && checked == d.canary_backends.len() && down == checked;
    signals.prometheus = prometheus;
    if tenant.mode == ForwardingMode::Nat
        && tenant.protocol == Protocol::Tcp
        && let Some(counters) = counters
    {
        let vip = tenant.vip_endpoint();
        for s in tenant
            .services
            .iter()
            .filter(|s| d.canary_backends.contains(&s.name))
        {
            let endpoint = Endpoint::new(s.address, tenant.protocol.number());
            if let Some((_, _, l4)) = counters
                .backend_l4
                .iter()
                .find(|(v, b, _)| *v == vip && *b == endpoint)
            {
                // Completed handshakes, not SYN-ACKs: an answer the client
                // drops (bad checksum, broken path) is a failure.
                let completed = l4.established.min(l4.syn);
                signals.handshakes = signals.handshakes.plus(Samples {
                    ok: completed,
                    failed: l4.syn - completed,
                });
            }
        }
    }
    signals
}

/// Runs `query` (with `{{tenant}}`/`{{version}}` filled in) and returns its value:
/// the first sample of a vector, or a scalar; `None` when the result is empty.
pub fn prometheus_value(
    query: &PrometheusQuery,
    tenant: &str,
    version: &str,
) -> Result<Option<f64>, String> {
    let promql = query
        .query
        .replace("{{tenant}}", tenant)
        .replace("{{version}}", version);
    let encoded: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let url = format!(
        "{}/api/v1/query?query={encoded}",
        query.address.trim_end_matches('/')
    );
    let client: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = client
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("reading {url}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "{url} answered {status}: {}",
            body.chars().take(200).collect::<String>()
        ));
    }
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
    let data = &json["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => data["result"].get(0).map(|r| &r["value"]),
        Some("scalar") => Some(&data["result"]),
        other => {
            return Err(format!(
                "{url}: result type {other:?}; the query must return a scalar or vector"
            ));
        }
    };
    let Some(sample) = sample else {
        return Ok(None);
    };
    let value = sample[1].as_str().and_then(|v| v.parse::<f64>().ok());
    match value {
        Some(v) if v.is_finite() => Ok(Some(v)),
        _ => Ok(None),
    }
}
