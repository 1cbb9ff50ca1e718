//! What `--check` and a reload say about a config: every problem at once, with its
//! field and line; warnings the same way.

use std::{path::Path, time::Duration};

use super::{
    tests::{parse, problems},
    *,
};
use crate::health::{CheckSpec, ProbeKind, validation_spec};

fn find<'a>(problems: &'a [Problem], field: &str) -> &'a Problem {
    problems
        .iter()
        .find(|p| p.field == field)
        .unwrap_or_else(|| panic!("nothing about {field} in {problems:#?}"))
}

/// One tenant around `services` (indented as a tenant's `services:` items).
fn tenant(extra: &str, services: &str) -> String {
    format!("tenants:\n  - name: api\n    listen: 198.18.0.10:80\n{extra}    services:\n{services}")
}

const ONE_SERVICE: &str = "      - name: a\n        address: 198.18.11.2:8080\n";

#[test]
fn every_type_error_is_reported_at_once_with_its_line() {
    let text = r#"tenants:
  - name: api
    listen: 198.18.0.10:80
    protocol: sctp
    canary_config:
      initial_traffic: 5
      interval: 5m
    services:
      - name: a
        address: 198.18.11.2:8080
        weight: lots
      - name: b
        address: 198.18.11.3:8080
        health: {path: /health, interval: [1]}
  - name: web
    listen: 198.18.0.11:80
    ring_size: 65536
    mode: sideways
    services:
      - name: c
        address: 198.18.12.2:8080
"#;
    let p = problems(text);
    assert_eq!(find(&p, "tenants[0].protocol").line, Some(4));
    let missing = find(&p, "tenants[0].canary_config.increment");
    assert_eq!(
        (missing.line, missing.reason.as_str()),
        (Some(5), "required")
    );
    let weight = find(&p, "tenants[0].services[0].weight");
    assert_eq!(weight.line, Some(11));
    assert!(weight.reason.contains("invalid type"), "{}", weight.reason);
    assert_eq!(
        find(&p, "tenants[0].services[1].health.interval").line,
        Some(14)
    );
    assert_eq!(find(&p, "tenants[1].mode").line, Some(18));
    // The checks after parsing run too, on what parsed.
    assert_eq!(find(&p, "tenants[1].ring_size").line, Some(17));
    assert_eq!(p.len(), 6, "{p:#?}");
}

/// A bare `?` is a YAML key with no name: named as such, never an empty field or
/// a guess at what was meant (found by `arbitrary_config_text_never_panics`).
#[test]
fn a_top_level_key_with_no_name_is_named_as_such() {
    let p = problems("?\n");
    let unknown = find(&p, "(key with no name)");
    assert!(
        unknown.reason.starts_with("a top-level key with no name"),
        "{}",
        unknown.reason
    );
    assert!(p.iter().all(|p| !p.field.is_empty()), "{p:#?}");
}

#[test]
fn an_unknown_top_level_key_and_no_tenant_are_errors() {
    let text = "tenant:\n  - name: api\n    listen: 198.18.0.10:80\n";
    let p = problems(text);
    let unknown = find(&p, "tenant");
    assert_eq!(unknown.line, Some(1));
    assert!(
        unknown
            .reason
            .starts_with("unknown top-level key (did you mean tenants?)"),
        "{}",
        unknown.reason
    );
    assert!(find(&p, "tenants").reason.starts_with("no tenant"));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        find(&problems("{}\n"), "tenants")
            .reason
            .starts_with("no tenant")
    );
}

#[test]
fn unknown_fields_warn_with_line_and_path_also_inside_health() {
    let text = tenant(
        "    colour: red\n",
        "      - name: a\n        address: 198.18.11.2:8080\n        health: {path: /, intervall: 5s}\n",
    );
    let loaded = parse(&text).unwrap();
    let fields: Vec<(&str, Option<usize>)> = loaded
        .warnings
        .iter()
        .map(|w| (w.field.as_str(), w.line))
        .collect();
    assert_eq!(
        fields,
        [
            ("tenants[0].colour", Some(4)),
            ("tenants[0].services[0].health.intervall", Some(8))
        ]
    );
}

#[test]
fn the_seed_health_fields_map_onto_the_check() {
    let text = tenant(
        "",
        r#"      - name: a
        address: 198.18.11.2:8080
        health:
          endpoint: /ready
          interval: 3s
          timeout: 1s
          success_threshold: 2
          failure_threshold: 4
          expected_status_code: 204
          expected_response: ok
          deployment_aware: true
"#,
    );
    let loaded = parse(&text).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let service = &loaded.tenants[0].services[0];
    let health = loaded.config.tenants[0].services[0]
        .health
        .as_ref()
        .unwrap();
    let spec = CheckSpec::from_config(service.address, health);
    assert_eq!(
        spec,
        CheckSpec {
            address: service.address,
            probe: ProbeKind::Http {
                path: "/ready".into(),
                expected_status: 204,
                expected_body: Some("ok".into()),
            },
            interval: Duration::from_secs(3),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 4,
        }
    );
    // `retries` is the seed's other name for failure_threshold.
    let text = tenant(
        "",
        "      - name: a\n        address: 198.18.11.2:8080\n        health: {retries: 5}\n",
    );
    let loaded = parse(&text).unwrap();
    let health = loaded.config.tenants[0].services[0]
        .health
        .as_ref()
        .unwrap();
    let spec = CheckSpec::from_config(loaded.tenants[0].services[0].address, health);
    assert_eq!((&spec.probe, spec.fall), (&ProbeKind::Tcp, 5));
}

#[test]
fn seed_health_fields_keystone_cannot_honour_are_refused_by_name() {
    let text = tenant(
        "",
        r#"      - name: a
        address: 198.18.11.2:8080
        health:
          retries: 3
          failure_threshold: 3
          success_threshold: 0
          expected_status_code: 200
          metrics_endpoint: /metrics
          deployment_aware: false
          canary_tolerance: 0.1
          rollback_threshold: 95
"#,
    );
    let p = problems(&text);
    let at = |f: &str| format!("tenants[0].services[0].health.{f}");
    assert!(find(&p, &at("retries")).reason.contains("not both"));
    assert_eq!(
        find(&p, &at("success_threshold")).reason,
        "must be at least 1"
    );
    assert!(
        find(&p, &at("expected_status_code"))
            .reason
            .starts_with("needs endpoint")
    );
    let metrics = find(&p, &at("metrics_endpoint"));
    assert_eq!(metrics.line, Some(12));
    assert!(metrics.reason.contains("canary_config.analysis.prometheus"));
    assert!(
        find(&p, &at("deployment_aware"))
            .reason
            .starts_with("cannot be false")
    );
    assert!(
        find(&p, &at("canary_tolerance"))
            .reason
            .contains("canary_config.health_threshold")
    );
    assert!(
        find(&p, &at("rollback_threshold"))
            .reason
            .contains("canary_config.rollback_threshold")
    );
    assert_eq!(p.len(), 7, "{p:#?}");
    let p = problems(&tenant(
        "",
        "      - name: a\n        address: 198.18.11.2:8080\n        health: health\n",
    ));
    assert!(
        find(&p, "tenants[0].services[0].health.path")
            .reason
            .contains("'health' is not an HTTP path")
    );
}

#[test]
fn thresholds_are_percentages_and_errors_quote_them_as_written() {
    let canary = |health: &str, rollback: &str| {
        tenant(
            &format!(
                "    canary_config:\n      initial_traffic: 5\n      increment: 10\n      interval: 1m\n      health_threshold: {health}\n      rollback_threshold: {rollback}\n"
            ),
            ONE_SERVICE,
        )
    };
    let loaded = parse(&canary("99.5", "95")).unwrap();
    let params =
        crate::config::Params::from_canary_config(loaded.config.tenants[0].canary_config.as_ref());
    assert_eq!(
        (params.health_threshold, params.rollback_threshold),
        (0.995, 0.95)
    );
    let p = problems(&canary("0.950", "1"));
    let health = find(&p, "tenants[0].canary_config.health_threshold");
    assert_eq!(health.line, Some(8));
    assert!(
        health.reason.starts_with("'0.950' reads like a fraction"),
        "{}",
        health.reason
    );
    assert!(
        find(&p, "tenants[0].canary_config.rollback_threshold")
            .reason
            .starts_with("'1' reads like a fraction")
    );
    assert_eq!(p.len(), 2, "{p:#?}");
    let p = problems(&canary("90", "95.0"));
    assert_eq!(
        find(&p, "tenants[0].canary_config.rollback_threshold").reason,
        "95 % must not be above health_threshold 90 %"
    );
}

#[test]
fn switch_strategy_is_the_seeds_name_for_strategy() {
    let bg = |switch: &str| {
        tenant(
            &format!("    deployment_strategy: blue_green\n    switch_config:\n{switch}"),
            ONE_SERVICE,
        )
    };
    let loaded = parse(&bg(
        "      switch_strategy: gradual\n      validation_endpoint: /ready\n",
    ))
    .unwrap();
    let switch = loaded.config.tenants[0].switch_config.as_ref().unwrap();
    assert_eq!(switch.strategy, Some(keystone_api::SwitchStrategy::Gradual));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let p = problems(&bg(
        "      switch_strategy: sideways\n      validation_endpoint: ready\n",
    ));
    assert!(
        find(&p, "tenants[0].switch_config.validation_endpoint")
            .reason
            .contains("'ready'")
    );
    assert_eq!(
        find(&p, "tenants[0].switch_config.switch_strategy").reason,
        "unknown switch strategy 'sideways'; expected instant or gradual"
    );
}

#[test]
fn the_idle_side_is_validated_on_validation_endpoint() {
    let address = "198.18.12.2:8080".parse().unwrap();
    let health = HealthConfig {
        path: Some("/health".into()),
        expected_status_code: Some(204),
        ..HealthConfig::default()
    };
    let spec = validation_spec(address, Some(&health), Some("/ready"));
    assert_eq!(
        spec.probe,
        ProbeKind::Http {
            path: "/ready".into(),
            expected_status: 204,
            expected_body: None
        }
    );
    let spec = validation_spec(address, None, Some("/ready"));
    assert!(
        matches!(spec.probe, ProbeKind::Http { ref path, expected_status: 200, .. } if path == "/ready")
    );
    assert_eq!(validation_spec(address, None, None).probe, ProbeKind::Tcp);
    assert_eq!(
        validation_spec(address, Some(&health), None),
        CheckSpec::from_config(address, &health)
    );
}

#[test]
fn active_environment_against_the_weights_warns_with_both_lines() {
    let services = "      - name: blue\n        address: 198.18.11.2:8080\n        environment: blue\n        weight: 100\n      - name: green\n        address: 198.18.12.2:8080\n        environment: green\n        weight: 0\n";
    let text = tenant(
        "    deployment_strategy: blue_green\n    active_environment: green\n",
        services,
    );
    let loaded = parse(&text).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert_eq!(
        (w.field.as_str(), w.line),
        ("tenants[0].active_environment", Some(5))
    );
    assert!(
        w.reason
            .contains("tenants[0].services[1].weight (line 14) is 0")
            && w.reason
                .contains("tenants[0].services[0].weight (line 10) is 100")
            && w.reason.contains("active_environment wins"),
        "{}",
        w.reason
    );
    // Agreeing weights say nothing; other strategies ignore it, loudly.
    let agreeing = text.replace("active_environment: green", "active_environment: blue");
    assert!(parse(&agreeing).unwrap().warnings.is_empty());
    let canary = text.replace(
        "deployment_strategy: blue_green",
        "deployment_strategy: canary",
    );
    assert!(
        parse(&canary).unwrap().warnings[0]
            .reason
            .starts_with("ignored")
    );
    let nobody = text.replace("active_environment: green", "active_environment: red");
    assert!(
        find(&problems(&nobody), "tenants[0].active_environment")
            .reason
            .contains("no service has environment: 'red'")
    );
}

#[test]
fn short_admin_tokens_are_refused() {
    for token in ["\"\"", "x", "fifteen-chars-x"] {
        let text = format!("admin:\n  token: {token}\n{}", tenant("", ONE_SERVICE));
        let p = problems(&text);
        let t = find(&p, "admin.token");
        assert_eq!(t.line, Some(2));
        assert!(t.reason.contains("at least 16"), "{}", t.reason);
    }
    let text = format!(
        "admin:\n  token: sixteen-chars-xx\n{}",
        tenant("", ONE_SERVICE)
    );
    assert!(parse(&text).is_ok());
}

#[test]
fn all_zero_weights_are_refused_unless_an_environment_takes_the_traffic() {
    let services = "      - name: a\n        address: 198.18.11.2:8080\n        weight: 0\n        environment: blue\n      - name: b\n        address: 198.18.11.3:8080\n        weight: 0\n";
    let p = problems(&tenant("", services));
    let zero = find(&p, "tenants[0].services");
    assert_eq!(zero.line, Some(4));
    assert!(
        zero.reason.starts_with("every weight is 0"),
        "{}",
        zero.reason
    );
    let bg = "    deployment_strategy: blue_green\n    active_environment: blue\n";
    assert!(parse(&tenant(bg, services)).is_ok());
}

#[test]
fn a_backend_that_is_a_vip_or_link_local_is_refused() {
    let text = r#"tenants:
  - name: api
    listen: 198.18.0.10:80
    services:
      - name: a
        address: 198.18.11.2:8080
  - name: web
    listen: 198.18.0.11:80
    services:
      - name: loop
        address: 198.18.0.10:80
      - name: ll4
        url: http://169.254.1.2:8080
  - name: v6
    listen: "[2001:2::10]:80"
    services:
      - name: ll6
        address: "[fe80::1]:80"
"#;
    let p = problems(text);
    let looped = find(&p, "tenants[1].services[0].address");
    assert_eq!(looped.line, Some(11));
    assert!(
        looped.reason.contains("is the VIP of tenants[0] ('api')"),
        "{}",
        looped.reason
    );
    assert!(
        find(&p, "tenants[1].services[1].url")
            .reason
            .contains("169.254.1.2:8080 is link-local")
    );
    assert!(
        find(&p, "tenants[2].services[0].address")
            .reason
            .contains("is link-local")
    );
    assert_eq!(p.len(), 3, "{p:#?}");
}

#[test]
fn the_check_report_lists_everything_and_strict_fails_on_warnings() {
    let path = Path::new("k.yaml");
    let warned = tenant("    path_prefix: /api/\n", ONE_SERVICE);
    let loaded = parse(&warned);
    let (report, ok) = check_report(path, &loaded, false);
    assert!(ok);
    assert!(
        report.starts_with(
            "warning: line 4: tenants[0].path_prefix: ignored: Keystone balances at L4"
        ),
        "{report}"
    );
    assert!(
        report.ends_with("k.yaml: valid, 1 tenant(s), 0 error(s), 1 warning(s)\n"),
        "{report}"
    );
    let (report, ok) = check_report(path, &loaded, true);
    assert!(!ok);
    assert!(
        report.ends_with("k.yaml: invalid with --strict: 0 error(s), 1 warning(s)\n"),
        "{report}"
    );
    let broken = warned.replace("198.18.11.2:8080", "nowhere");
    let (report, ok) = check_report(path, &parse(&broken), false);
    assert!(!ok);
    assert!(
        report.starts_with("error: line 7: tenants[0].services[0].address:"),
        "{report}"
    );
    assert!(
        report.contains("\nwarning: line 4: tenants[0].path_prefix:"),
        "{report}"
    );
}
