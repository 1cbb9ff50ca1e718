//! `openapi.yaml` (served at `GET /openapi.yaml`) documents every admin route.

use serde_yaml::Value;

const SPEC: &str = include_str!("../../openapi.yaml");

const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.yaml"),
    ("get", "/status"),
    ("post", "/admin/reload"),
    ("post", "/admin/drain"),
    ("post", "/admin/undrain"),
    ("get", "/tenants"),
    ("post", "/tenants/{name}/weights"),
    ("post", "/deployments/canary"),
    ("post", "/deployments/blue-green/switch"),
    ("get", "/deployments"),
    ("get", "/deployments/{id}"),
    ("post", "/deployments/{id}/promote"),
    ("post", "/deployments/{id}/abort"),
    ("post", "/deployments/{id}/rollback"),
    ("post", "/deployments/{id}/pause"),
    ("post", "/deployments/{id}/resume"),
    ("get", "/deployments/plans"),
    ("post", "/deployments/plans"),
    ("get", "/deployments/plans/{id}"),
    ("post", "/deployments/plans/{id}/abort"),
    ("post", "/webhooks/deployment"),
];

fn spec() -> Value {
    serde_yaml::from_str(SPEC).expect("openapi.yaml is not valid YAML")
}

#[test]
fn lists_every_route_and_no_other() {
    let spec = spec();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.0."));
    let paths = spec["paths"].as_mapping().unwrap();
    for (method, path) in ROUTES {
        let op = &paths.get(*path).unwrap_or_else(|| panic!("{path} missing"))[*method];
        assert!(op.is_mapping(), "{method} {path} missing");
        assert!(
            op["responses"].is_mapping(),
            "{method} {path}: no responses"
        );
    }
    let documented: usize = paths.values().map(|p| p.as_mapping().unwrap().len()).sum();
    assert_eq!(documented, ROUTES.len(), "undocumented extra operations");
}

#[test]
fn open_and_signed_routes_need_no_bearer_token() {
    let spec = spec();
    assert_eq!(spec["security"][0]["bearer"], Value::Sequence(vec![]));
    for path in ["/health", "/metrics", "/openapi.yaml"] {
        assert_eq!(
            spec["paths"][path]["get"]["security"],
            Value::Sequence(vec![]),
            "{path}"
        );
    }
    let webhook = &spec["paths"]["/webhooks/deployment"]["post"];
    assert!(webhook["security"][0]["webhookSignature"].is_sequence());
    for status in ["202", "400", "401", "404", "409", "429"] {
        assert!(webhook["responses"][status].is_mapping(), "{status}");
    }
}

#[test]
fn every_ref_resolves() {
    fn walk(v: &Value, refs: &mut Vec<String>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    if k.as_str() == Some("$ref") {
                        refs.push(v.as_str().unwrap().to_owned());
                    } else {
                        walk(v, refs);
                    }
                }
            }
            Value::Sequence(s) => s.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let spec = spec();
    let mut refs = Vec::new();
    walk(&spec, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let mut node = &spec;
        for part in r.trim_start_matches("#/").split('/') {
            node = &node[part];
        }
        assert!(node.is_mapping(), "{r} does not resolve");
    }
}

#[test]
fn deployment_states_match_the_engine() {
    let spec = spec();
    let states: Vec<&str> = spec["components"]["schemas"]["DeploymentState"]["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "progressing",
            "paused",
            "awaiting_approval",
            "completed",
            "rolled_back",
            "aborted",
            "failed"
        ]
    );
    let events: Vec<&str> =
        spec["components"]["schemas"]["Notification"]["properties"]["event"]["enum"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
    assert_eq!(events, crate::config::DEPLOYMENT_EVENTS);
}
