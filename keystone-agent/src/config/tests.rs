use std::time::Duration;

use super::*;
use crate::dataplane::Limits;

pub(super) fn parse(text: &str) -> Result<LoadedConfig, ConfigError> {
    LoadedConfig::parse(Path::new("test.yaml"), text)
}

pub(super) fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.problems().to_vec(),
    }
}

/// Fails with the whole problem when it is not about `field` at `line`.
fn assert_at(problem: &Problem, field: &str, line: usize) {
    assert_eq!(
        (problem.field.as_str(), problem.line),
        (field, Some(line)),
        "{problem:?}"
    );
}

/// Fails with the whole problem when its reason does not contain `part`.
fn assert_reason(problem: &Problem, part: &str) {
    assert!(problem.reason.contains(part), "{problem:?}");
}

/// The seed's example shape, with the `listen:` line Keystone adds.
const SEED: &str = r#"
tenants:
  - name: api
    listen: 198.18.0.10:80
    deployment_strategy: canary
    canary_config:
      initial_traffic: 10
      increment: 10
      interval: 5m
      max_traffic: 50
      health_threshold: 95
      rollback_threshold: 90
    services:
      - name: api-v1
        url: http://localhost:8080
        weight: 90
        environment: production
        health:
          path: /health
          interval: 10s
          timeout: 5s
          retries: 3
        labels:
          version: "1.23.0"
      - name: api-v2
        url: http://127.0.0.1:8081/
        weight: 10
        environment: canary
        labels:
          version: "1.24.0"
  - name: web
    listen: "[2001:db8::10]:443"
    deployment_strategy: blue_green
    active_environment: blue
    switch_config:
      strategy: instant
      validation_timeout: 30s
      rollback_on_failure: true
    services:
      - name: web-blue
        address: "[2001:db8::1:1]:8443"
        environment: blue
      - name: web-green
        address: "[2001:db8::1:2]:8443"
        environment: green
        weight: 0
"#;

#[test]
fn seed_shaped_config_loads() {
    let loaded = parse(SEED).unwrap();
    assert_eq!(loaded.tenants.len(), 2);
    let api = &loaded.tenants[0];
    assert_eq!(api.vip, "198.18.0.10:80".parse().unwrap());
    assert_eq!(api.protocol, Protocol::Tcp);
    assert_eq!(api.mode, ForwardingMode::Nat);
    assert_eq!(api.services[0].address, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(api.services[1].version, "1.24.0");
    let web = &loaded.tenants[1];
    assert_eq!(web.strategy, Strategy::BlueGreen);
    assert_eq!(web.services[0].weight, 1, "weight defaults to 1");
    assert_eq!(web.services[1].weight, 0);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let canary = loaded.config.tenants[0].canary_config.as_ref().unwrap();
    assert_eq!(canary.interval.get(), Duration::from_secs(300));
    let specs = loaded.vip_specs();
    assert_eq!(specs[1].vip.family, keystone_common::FAMILY_IPV6);
    assert_eq!(specs[0].backends[0].weight, 90);
}

#[test]
fn conn_table_entries_default_and_range() {
    let loaded = parse(SEED).unwrap();
    assert_eq!(
        loaded.config.limits.conn_table_entries,
        Limits::default().conn_table_entries
    );
    let text = format!("limits:\n  conn_table_entries: 512\n{SEED}");
    assert_eq!(parse(&text).unwrap().config.limits.conn_table_entries, 512);
    for bad in ["0", "255", "16777217"] {
        let text = format!("limits:\n  conn_table_entries: {bad}\n{SEED}");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_at(&p[0], "limits.conn_table_entries", 2);
        assert_reason(&p[0], "256 to 16777216");
    }
}

#[test]
fn unknown_fields_are_reported_not_fatal() {
    let text = SEED.replace(
        "    deployment_strategy: canary",
        "    deployment_strategy: canary\n    colour: red",
    );
    let loaded = parse(&text).unwrap();
    assert_eq!(
        loaded.warnings,
        [Problem {
            field: "tenants[0].colour".into(),
            line: Some(6),
            reason: "unknown field, ignored".into()
        }]
    );
}

#[test]
fn missing_listen_names_field_and_line() {
    let text =
        "tenants:\n  - name: api\n    services:\n      - name: a\n        address: 127.0.0.1:80\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_at(&p[0], "tenants[0].listen", 2);
    assert!(p[0].reason.contains("required"));
}

#[test]
fn wrong_type_names_field_and_line() {
    let text = "tenants:\n  - name: api\n    listen: 198.18.0.10:80\n    services:\n      - name: a\n        address: 127.0.0.1:80\n        weight: lots\n";
    let p = problems(text);
    assert_at(&p[0], "tenants[0].services[0].weight", 7);
    assert_reason(&p[0], "invalid type");
}

#[test]
fn bad_enum_and_duration_are_named() {
    let text = "tenants:\n  - name: api\n    listen: 198.18.0.10:80\n    protocol: sctp\n    services: []\n";
    let p = problems(text);
    assert_at(&p[0], "tenants[0].protocol", 4);
    let text = SEED.replace("interval: 5m", "interval: soon");
    let p = problems(&text);
    assert_at(&p[0], "tenants[0].canary_config.interval", 9);
    assert_reason(&p[0], "'soon' is not a duration");
}

/// Each enum of a tenant refuses a word it does not know with the field, its line and
/// the accepted words (the words are keystone-api's, read strictly).
#[test]
fn an_unknown_word_names_the_field_line_and_accepted_words() {
    for (field, word, accepted) in [
        ("protocol", "sctp", "expected `tcp` or `udp`"),
        ("mode", "sideways", "expected `nat` or `dsr`"),
        (
            "deployment_strategy",
            "yolo",
            "expected one of `canary`, `blue_green`, `rolling`",
        ),
        // `unknown` is the API's word for a word it does not know: not a config value.
        ("protocol", "unknown", "expected `tcp` or `udp`"),
    ] {
        let text = format!(
            "tenants:\n  - name: api\n    listen: 198.18.0.10:80\n    {field}: {word}\n    services: []\n"
        );
        let p = problems(&text);
        assert_at(&p[0], &format!("tenants[0].{field}"), 4);
        assert_eq!(
            p[0].reason,
            format!("unknown variant `{word}`, {accepted}"),
            "{p:#?}"
        );
    }
}

#[test]
fn all_semantic_problems_reported_at_once_with_lines() {
    let text = r#"tenants:
  - name: api
    listen: 198.18.0.10:80
    ring_size: 65536
    services:
      - name: a
        address: 127.0.0.1:80
        weight: 2000000
      - name: a
        address: "[::1]:80"
      - name: c
        url: http://no-such-host.invalid:8080
  - name: api
    listen: 198.18.0.10:80
    mode: dsr
    services:
      - name: d
        address: 127.0.0.1:81
"#;
    let p = problems(text);
    let find = |field: &str| {
        p.iter()
            .find(|p| p.field == field)
            .unwrap_or_else(|| panic!("no problem for {field} in {p:#?}"))
    };
    assert_eq!(find("tenants[0].ring_size").line, Some(4));
    assert_eq!(find("tenants[0].services[0].weight").line, Some(8));
    assert_eq!(find("tenants[0].services[1].name").line, Some(9));
    assert!(
        find("tenants[0].services[1].address")
            .reason
            .contains("address families")
    );
    let unresolved = find("tenants[0].services[2].url");
    assert_eq!(unresolved.line, Some(12));
    assert!(
        unresolved
            .reason
            .contains("cannot resolve host 'no-such-host.invalid'"),
        "{}",
        unresolved.reason
    );
    assert_eq!(find("tenants[1].name").line, Some(13));
    assert!(find("tenants[1].listen").reason.contains("already served"));
    assert!(
        find("tenants[1].services[0].address")
            .reason
            .contains("must equal the VIP port")
    );
    assert_eq!(p.len(), 8, "{p:#?}");
}

#[test]
fn limits_default_to_the_compiled_sizes_and_are_checked_against_the_tenants() {
    let c = parse(SEED).expect("seed config");
    assert_eq!(c.config.limits, Limits::default());

    let text = r#"limits:
  max_vips: 1
  max_backends: 2
  ring_entries: 4000
  conn_table_entries: 0
tenants:
  - name: a
    listen: 198.18.0.10:80
    ring_size: 1009
    services: [{name: x, address: "198.18.11.2:8080"}, {name: y, address: "198.18.11.3:8080"}]
  - name: b
    listen: 198.18.0.11:80
    ring_size: 1009
    services: [{name: z, address: "198.18.11.4:8080"}]
"#;
    let p = problems(text);
    let find = |field: &str| {
        p.iter()
            .find(|p| p.field == field)
            .unwrap_or_else(|| panic!("no problem for {field} in {p:#?}"))
    };
    assert!(find("tenants").reason.contains("limits.max_vips is 1"));
    let backends = find("limits.max_backends");
    assert_eq!(backends.line, Some(3));
    assert!(
        backends.reason.contains("3 services"),
        "{}",
        backends.reason
    );
    let ring = find("limits.ring_entries");
    assert_eq!(ring.line, Some(4));
    assert!(ring.reason.contains("4036"), "{}", ring.reason);
    assert_eq!(find("limits.conn_table_entries").line, Some(5));
    assert_eq!(p.len(), 4, "{p:#?}");

    // Large tables fit when the ring array is sized for them.
    let text = r#"limits:
  ring_entries: 1310746
tenants:
  - name: a
    listen: 198.18.0.10:80
    ring_size: 655373
    services: [{name: x, address: "198.18.11.2:8080"}]
"#;
    let c = parse(text).expect("fits");
    assert_eq!(c.config.limits.ring_entries, 2 * 655_373);
    assert_eq!(c.config.limits.max_vips, Limits::default().max_vips);
}

#[test]
fn nat_backend_shared_by_two_vips_is_refused() {
    let text = r#"tenants:
  - name: a
    listen: 198.18.0.10:80
    services: [{name: x, address: "198.18.11.2:8080"}]
  - name: b
    listen: 198.18.0.11:80
    services: [{name: y, address: "198.18.11.2:8080"}]
"#;
    let p = problems(text);
    assert_eq!(p[0].field, "tenants[1].services[0].address");
    assert_reason(&p[0], "already serves tenant 'a'");
}

#[test]
fn canary_config_ranges_are_checked() {
    let text = SEED
        .replace("initial_traffic: 10", "initial_traffic: 80")
        .replace("increment: 10", "increment: 0");
    let p = problems(&text);
    let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "tenants[0].canary_config.increment",
            "tenants[0].canary_config.initial_traffic"
        ]
    );
    assert_eq!(p[0].line, Some(8));
}

#[test]
fn switch_config_is_checked() {
    let text = SEED.replace(
        "strategy: instant",
        "strategy: sideways\n      interval: never\n      increment: 0",
    );
    let p = problems(&text);
    let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "tenants[1].switch_config.interval",
            "tenants[1].switch_config.increment",
            "tenants[1].switch_config.strategy"
        ],
        "{p:#?}"
    );
    assert!(p[2].reason.contains("unknown switch strategy 'sideways'"));
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let p = problems("tenants:\n  - name: [unclosed\n");
    assert!(p[0].line.is_some(), "{p:?}");
}

#[test]
fn interfaces_are_names_or_a_name_with_its_own_attach() {
    use crate::dataplane::AttachMode;
    let text =
        format!("attach: xdp-generic\ninterfaces: [eth0, {{name: eth1, attach: tc}}]\n{SEED}");
    let cfg = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.config.interface_modes(),
        vec![
            ("eth0".to_owned(), AttachMode::Generic),
            ("eth1".to_owned(), AttachMode::Tc)
        ]
    );
}

#[test]
fn a_bad_interface_attach_is_named_with_its_line() {
    let text = format!("interfaces:\n  - eth0\n  - name: eth1\n    attach: fast\n{SEED}");
    let p = problems(&text);
    assert_at(&p[0], "interfaces[1].attach", 4);
    assert_reason(&p[0], "fast");
    assert_reason(&p[0], "tc");
}
