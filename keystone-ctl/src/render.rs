//! Human output: tables padded to their widest cell, from the API's answers.

use keystone_api::{
    Analysis, BackendIdentity, Deployment, DeploymentList, FleetStatus, Status, Strategy, Tenant,
    TenantList, TrafficSource,
};
use serde_json::Value;

/// A JSON value as a cell: strings bare, null as "-".
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// An optional text, "-" when absent or empty.
pub fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "-".to_owned(),
    }
}

/// A share (0–100) with one decimal.
pub fn share(percent: f64) -> String {
    format!("{percent:.1}%")
}

/// A 0–100 value as a percentage.
pub fn percent(f: f64) -> String {
    format!("{}%", trim_float(f))
}

/// 20 → "20", 12.5 → "12.5", 33.333333 → "33.33".
pub fn trim_float(f: f64) -> String {
    let s = format!("{f:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Columns padded to their widest cell; the header is the first row.
pub fn table(rows: &[Vec<String>]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let widths: Vec<usize> = (0..first.len())
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_owned()).collect()
}

/// An object's fields as `key=value`, nulls left out (`params`, `pipeline`).
fn pairs(v: &Value) -> Vec<String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect()
}

/// What the new side's share is called: a switch's or a canary's.
pub fn traffic_word(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::BlueGreen => "switch",
        _ => "canary",
    }
}

/// `status`; `wide` adds the effective weight, recent connections and TCP counters.
pub fn status(status: &Status, wide: bool) -> String {
    let mut out = format!(
        "config {} (generation {}, loaded {})\n",
        status.config_path, status.config_generation, status.config_loaded_at
    );
    for p in &status.problems {
        out.push_str(&format!("PROBLEM {}: {}\n", p.kind, p.message));
    }
    let window = status.traffic_window_seconds;
    for t in &status.tenants {
        let (a, backends) = (&t.about, &t.backends);
        out.push_str(&format!(
            "\n{}  VIP {}/{}  mode {}  strategy {}  new connections {}  deployment {}\n",
            a.name,
            a.vip,
            a.protocol,
            a.mode,
            a.strategy,
            t.new_connections,
            or_dash(a.deployment_id.as_deref()),
        ));
        out.push_str(&format!(
            "  live weights from {}; config active environment {}\n",
            traffic_source(&a.traffic_source),
            or_dash(a.active_environment.as_deref()),
        ));
        let traffic = format!("TRAFFIC%({window:.0}s)");
        let recent = format!("RECENT CONNS({window:.0}s)");
        let mut columns = [
            BACKEND_COLUMNS.as_slice(),
            &[
                "CONFIG WEIGHT",
                "LIVE WEIGHT%",
                &traffic,
                "NEW CONNS",
                "PACKETS",
                "BYTES",
            ],
        ]
        .concat();
        if wide {
            columns.extend([
                "EFFECTIVE WEIGHT",
                &recent,
                "SYN",
                "SYN-ACK",
                "RST",
                "ESTABLISHED",
            ]);
        }
        let mut rows = vec![header(&columns)];
        for b in backends {
            let mut row = backend_identity(&b.backend.identity);
            row.extend([
                b.backend.configured_weight.to_string(),
                share(b.backend.traffic_percent),
                share(b.recent_traffic_percent),
                b.new_connections.to_string(),
                b.packets.to_string(),
                b.bytes.to_string(),
            ]);
            if wide {
                row.extend(
                    [
                        u64::from(b.backend.effective_weight),
                        b.recent_new_connections,
                        b.tcp_syn,
                        b.tcp_syn_ack,
                        b.tcp_rst,
                        b.tcp_established,
                    ]
                    .map(|n| n.to_string()),
                );
            }
            rows.push(row);
        }
        out.push_str(&indent(&table(&rows)));
        out.push('\n');
    }
    if let Some(f) = &status.fleet {
        out.push_str(&fleet(f));
    }
    if let Some(a) = &status.announce {
        out.push_str(&format!("\nBGP announcements (drain: {})\n", a.drain));
        out.push_str(&indent(&crate::drain::vips(a)));
        out.push('\n');
    }
    out
}

/// `status.fleet`: this gateway's view of the fleet, a line when it is stale or
/// members' configs differ, and one row per live member.
fn fleet(f: &FleetStatus) -> String {
    let mut out = format!(
        "\nfleet {} (this gateway {}, leader {}, revision {}, applied {})\n",
        f.prefix,
        f.gateway_id,
        or_dash(f.leader.as_deref()),
        f.revision,
        f.applied_revision
    );
    if f.stale {
        out.push_str(&format!(
            "  STALE: {}\n",
            or_dash(f.stale_reason.as_deref())
        ));
    }
    for m in &f.config_mismatch {
        out.push_str(&format!("  CONFIG MISMATCH: {m}\n"));
    }
    let mut rows = vec![header(&["GATEWAY", "LEADER", "APPLIED", "LAG"])];
    for m in &f.members {
        rows.push(vec![
            m.gateway_id.clone(),
            if m.leader { "yes" } else { "no" }.to_owned(),
            m.applied_revision.to_string(),
            m.lag.to_string(),
        ]);
    }
    out.push_str(&indent(&table(&rows)));
    out.push('\n');
    out
}

/// Where a tenant's live weights come from (`traffic_source` of `GET /status`).
fn traffic_source(source: &TrafficSource) -> String {
    match source {
        TrafficSource::Deployment {
            deployment_id,
            state,
        } => format!("deployment {deployment_id} ({state})"),
        TrafficSource::Manual {
            reason: Some(reason),
        } => format!("weights {reason}"),
        TrafficSource::Manual { reason: None } => "weights set by hand".into(),
        TrafficSource::Config => "the config".into(),
        TrafficSource::Unknown => "-".into(),
    }
}

/// The columns that say which backend a row is about, in `status` and `tenants`.
const BACKEND_COLUMNS: [&str; 5] = ["BACKEND", "ADDRESS", "VERSION", "ENV", "HEALTH"];

/// The cells of BACKEND_COLUMNS.
fn backend_identity(b: &BackendIdentity) -> Vec<String> {
    vec![
        or_dash(Some(&b.name)),
        or_dash(Some(&b.address)),
        or_dash(Some(&b.version)),
        or_dash(b.environment.as_deref()),
        b.health.to_string(),
    ]
}

/// One tenant (`GET /tenants` item, or the answer to `weights`).
pub fn tenant(t: &Tenant) -> String {
    let (a, backends) = (&t.about, &t.backends);
    let mut out = format!(
        "{}  VIP {}/{}  mode {}  strategy {}  active environment {}  deployment {}\n",
        a.name,
        a.vip,
        a.protocol,
        a.mode,
        a.strategy,
        or_dash(a.active_environment.as_deref()),
        or_dash(a.deployment_id.as_deref()),
    );
    let mut rows = vec![header(
        &[
            BACKEND_COLUMNS.as_slice(),
            &["WEIGHT", "EFFECTIVE", "TRAFFIC%"],
        ]
        .concat(),
    )];
    for b in backends {
        let mut row = backend_identity(&b.identity);
        row.extend([
            b.configured_weight.to_string(),
            b.effective_weight.to_string(),
            percent(b.traffic_percent),
        ]);
        rows.push(row);
    }
    out.push_str(&indent(&table(&rows)));
    out.push('\n');
    out
}

pub fn tenants(body: &TenantList) -> String {
    let list: Vec<String> = body.tenants.iter().map(tenant).collect();
    if list.is_empty() {
        "no tenants\n".to_owned()
    } else {
        list.join("\n")
    }
}

/// "98.5% of 240 (pass)" or "no samples".
pub fn analysis(a: &Analysis) -> String {
    let verdict = a.verdict.map_or("-", |v| v.name());
    match a.success_rate {
        Some(rate) => format!("{}% of {} ({verdict})", trim_float(rate * 100.0), a.samples),
        None => format!("no samples ({verdict})"),
    }
}

pub fn last_reason(d: &Deployment) -> String {
    or_dash(d.last_reason())
}

/// The deployments table; `wide` adds the backends, the environment and the last reason.
pub fn deployments(body: &DeploymentList, wide: bool) -> String {
    let mut columns = vec![
        "ID", "TENANT", "STRATEGY", "VERSION", "STATE", "CANARY%", "ANALYSIS", "STARTED",
        "FINISHED",
    ];
    if wide {
        columns.extend(["STABLE", "NEW", "ENV", "REASON"]);
    }
    let mut rows = vec![header(&columns)];
    for d in &body.deployments {
        let mut row = vec![
            d.id.clone(),
            d.tenant.clone(),
            d.strategy.to_string(),
            or_dash(d.version.as_deref()),
            d.state.to_string(),
            percent(d.canary_percent),
            analysis(&d.analysis),
            or_dash(Some(&d.started_at)),
            or_dash(d.finished_at.as_deref()),
        ];
        if wide {
            row.extend([
                or_dash(Some(&d.stable_backends.join(","))),
                or_dash(Some(&d.canary_backends.join(","))),
                or_dash(d.to_environment.as_deref()),
                last_reason(d),
            ]);
        }
        rows.push(row);
    }
    if rows.len() == 1 {
        return "no deployments\n".to_owned();
    }
    table(&rows) + "\n"
}

/// One deployment with its parameters and step history.
pub fn deployment(d: &Deployment) -> String {
    let mut out = format!(
        "deployment {}  tenant {}  {} {}  state {}  canary {}\n",
        d.id,
        d.tenant,
        d.strategy,
        or_dash(d.version.as_deref()),
        d.state,
        percent(d.canary_percent),
    );
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        }
    };
    out.push_str(&format!(
        "  stable {}  →  new {}\n",
        list(&d.stable_backends),
        list(&d.canary_backends)
    ));
    if d.from_environment.is_some() || d.to_environment.is_some() {
        out.push_str(&format!(
            "  environment {} → {}\n",
            or_dash(d.from_environment.as_deref()),
            or_dash(d.to_environment.as_deref())
        ));
    }
    out.push_str(&format!(
        "  analysis {} from {}\n",
        analysis(&d.analysis),
        or_dash(Some(&d.analysis.source))
    ));
    let params = pairs(&serde_json::to_value(&d.params).unwrap_or_default());
    if !params.is_empty() {
        out.push_str(&format!("  params {}\n", params.join(" ")));
    }
    out.push_str(&format!(
        "  started {}  updated {}  finished {}\n",
        or_dash(Some(&d.started_at)),
        or_dash(Some(&d.updated_at)),
        or_dash(d.finished_at.as_deref())
    ));
    if let Some(pipeline @ Value::Object(_)) = &d.pipeline {
        out.push_str(&format!("  pipeline {}\n", pairs(pipeline).join(" ")));
    }
    // BY: who made the step (admin_token, webhook or agent).
    let mut rows = vec![header(&["AT", "CANARY%", "STATE", "BY", "REASON"])];
    for s in &d.history {
        rows.push(vec![
            or_dash(Some(&s.at)),
            percent(s.canary_percent),
            s.state.to_string(),
            s.actor.to_string(),
            or_dash(Some(&s.reason)),
        ]);
    }
    if rows.len() > 1 {
        out.push_str(&indent(&table(&rows)));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An answer as the agent sends it, read as keystone-api's type.
    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("an agent answer")
    }

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let rows = vec![
            header(&["NAME", "WEIGHT", "ENV"]),
            vec!["api-v1".into(), "90".into(), "".into()],
            vec!["b".into(), "10".into(), "green".into()],
        ];
        assert_eq!(
            table(&rows),
            "NAME    WEIGHT  ENV\napi-v1  90\nb       10      green"
        );
        assert_eq!(table(&[]), "");
    }

    #[test]
    fn status_shows_health_live_weight_and_measured_traffic() {
        let status = json!({
            "config_path": "/etc/keystone.yaml", "config_generation": 3,
            "config_loaded_at": "2026-11-21T21:00:00Z", "traffic_window_seconds": 10.0,
            "tenants": [{
                "name": "web", "vip": "198.18.0.10:80", "protocol": "tcp", "mode": "nat",
                "strategy": "canary", "new_connections": 2000, "deployment_id": null,
                "active_environment": null,
                "traffic_source": {"kind": "deployment", "deployment_id": "web-1-1", "state": "completed"},
                "backends": [
                    {"name": "blue", "address": "198.18.11.2:8080", "version": "1.0", "environment": "blue",
                     "health": "up", "configured_weight": 90, "traffic_percent": 90.0, "recent_traffic_percent": 89.7,
                     "new_connections": 1794, "packets": 9000, "bytes": 900000},
                    {"name": "green", "address": "198.18.12.2:8080", "version": "1.1", "environment": "green",
                     "health": "down", "configured_weight": 10, "traffic_percent": 10.0, "recent_traffic_percent": 10.3,
                     "new_connections": 206, "packets": 1000, "bytes": 100000}
                ]
            }]
        });
        let wide = super::status(&from(status.clone()), true);
        assert!(
            wide.lines().nth(4).unwrap().ends_with(
                "BYTES   EFFECTIVE WEIGHT  RECENT CONNS(10s)  SYN  SYN-ACK  RST  ESTABLISHED"
            ),
            "{wide}"
        );
        let out = super::status(&from(status), false);
        assert!(
            out.starts_with(
                "config /etc/keystone.yaml (generation 3, loaded 2026-11-21T21:00:00Z)\n"
            ),
            "{out}"
        );
        assert!(out.contains("web  VIP 198.18.0.10:80/tcp  mode nat  strategy canary  new connections 2000  deployment -\n  live weights from deployment web-1-1 (completed); config active environment -\n"), "{out}");
        let rows: Vec<&str> = out.lines().skip(4).collect();
        assert!(
            rows[0].split_whitespace().eq([
                "BACKEND",
                "ADDRESS",
                "VERSION",
                "ENV",
                "HEALTH",
                "CONFIG",
                "WEIGHT",
                "LIVE",
                "WEIGHT%",
                "TRAFFIC%(10s)",
                "NEW",
                "CONNS",
                "PACKETS",
                "BYTES"
            ]),
            "{out}"
        );
        assert!(
            rows[2].split_whitespace().eq([
                "green",
                "198.18.12.2:8080",
                "1.1",
                "green",
                "down",
                "10",
                "10.0%",
                "10.3%",
                "206",
                "1000",
                "100000"
            ]),
            "{out}"
        );
    }

    #[test]
    fn status_puts_problems_above_the_tenants() {
        let status = json!({
            "config_path": "k.yaml", "config_generation": 1, "config_loaded_at": "t",
            "problems": [{"kind": "partial_checksums", "message": "3 TCP SYN(s) ... tx off"}],
            "tenants": [],
        });
        assert_eq!(
            super::status(&from(status), false),
            "config k.yaml (generation 1, loaded t)\n\
             PROBLEM partial_checksums: 3 TCP SYN(s) ... tx off\n"
        );
    }

    #[test]
    fn tenant_table_shows_weights_health_and_traffic() {
        let t = json!({
            "name": "api", "vip": "198.18.0.10:80", "protocol": "tcp", "mode": "nat",
            "strategy": "canary", "active_environment": null, "deployment_id": "d-1",
            "backends": [
                {"name": "api-v1", "address": "198.18.11.2:8080", "environment": "blue",
                 "version": "1.23.0", "configured_weight": 90, "effective_weight": 800000,
                 "traffic_percent": 80.0, "health": "up"},
                {"name": "api-v2", "address": "198.18.12.2:8080", "environment": null,
                 "version": "1.24.0", "configured_weight": 10, "effective_weight": 200000,
                 "traffic_percent": 20.0, "health": "unknown"}
            ]
        });
        let expected = "\
api  VIP 198.18.0.10:80/tcp  mode nat  strategy canary  active environment -  deployment d-1
  BACKEND  ADDRESS           VERSION  ENV   HEALTH   WEIGHT  EFFECTIVE  TRAFFIC%
  api-v1   198.18.11.2:8080  1.23.0   blue  up       90      800000     80%
  api-v2   198.18.12.2:8080  1.24.0   -     unknown  10      200000     20%
";
        assert_eq!(tenant(&from(t.clone())), expected);
        assert_eq!(tenants(&from(json!({"tenants": [t]}))), expected);
        assert_eq!(tenants(&from(json!({"tenants": []}))), "no tenants\n");
    }

    fn sample_deployment() -> Value {
        json!({
            "id": "d-7", "tenant": "api", "strategy": "canary", "version": "1.24.0",
            "state": "awaiting_approval", "canary_percent": 50.0,
            "stable_backends": ["api-v1"], "canary_backends": ["api-v2"],
            "from_environment": null, "to_environment": null,
            "params": {"increment": 10.0, "initial_traffic": 10.0},
            "analysis": {"success_rate": 0.985, "samples": 240, "verdict": "pass", "source": "health probes"},
            "history": [
                {"at": "2026-11-21T21:00:00Z", "canary_percent": 10.0, "state": "progressing", "reason": "started", "actor": "webhook"},
                {"at": "2026-11-21T21:00:02Z", "canary_percent": 50.0, "state": "awaiting_approval", "reason": "reached max_traffic 50%", "actor": "agent"}
            ],
            "started_at": "2026-11-21T21:00:00Z", "updated_at": "2026-11-21T21:00:02Z",
            "finished_at": null, "pipeline": {"id": "4711"}
        })
    }

    #[test]
    fn deployment_list_and_detail() {
        let d = sample_deployment();
        assert_eq!(
            deployments(&from(json!({"deployments": [d.clone()]})), false),
            "\
ID   TENANT  STRATEGY  VERSION  STATE              CANARY%  ANALYSIS             STARTED               FINISHED
d-7  api     canary    1.24.0   awaiting_approval  50%      98.5% of 240 (pass)  2026-11-21T21:00:00Z  -
"
        );
        assert_eq!(
            deployments(&from(json!({"deployments": []})), false),
            "no deployments\n"
        );
        let detail = deployment(&from(d));
        assert!(
            detail.starts_with(
                "deployment d-7  tenant api  canary 1.24.0  state awaiting_approval  canary 50%\n  stable api-v1  →  new api-v2\n"
            ),
            "{detail}"
        );
        assert!(detail.contains("  analysis 98.5% of 240 (pass) from health probes\n"));
        assert!(detail.contains("  params increment=10.0 initial_traffic=10.0\n"));
        assert!(detail.contains("  pipeline id=4711\n"));
        assert!(detail.ends_with(
            "  AT                    CANARY%  STATE              BY       REASON\n  2026-11-21T21:00:00Z  10%      progressing        webhook  started\n  2026-11-21T21:00:02Z  50%      awaiting_approval  agent    reached max_traffic 50%\n"
        ), "{detail}");
    }

    #[test]
    fn analysis_without_samples() {
        assert_eq!(
            analysis(&from(
                json!({"success_rate": null, "samples": 0, "verdict": "inconclusive"})
            )),
            "no samples (inconclusive)"
        );
        assert_eq!(trim_float(33.3333), "33.33");
        assert_eq!(trim_float(20.0), "20");
    }
}
