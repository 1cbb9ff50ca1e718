//! The built binary: exit codes for bad connection settings, from flags and from the
//! environment alike (a usage error, 2, not "agent unreachable", 3), and the bodies
//! its deployment verbs send.

use std::process::Command;

use serde_json::{Value, json};

#[path = "../src/test_server.rs"]
mod test_server;

fn ctl(envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keystone-ctl"))
        .env_remove("KEYSTONE_API")
        .env_remove("KEYSTONE_CONFIG")
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .expect("running keystone-ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_empty_or_scheme_less_api_or_an_unreadable_config_is_a_usage_error() {
    for (envs, args, says) in [
        (
            vec![("KEYSTONE_API", "")],
            vec!["status"],
            "the admin API URL is empty",
        ),
        (
            vec![],
            vec!["--api", "", "status"],
            "the admin API URL is empty",
        ),
        (
            vec![("KEYSTONE_API", "127.0.0.1:9100")],
            vec!["tenants"],
            "'127.0.0.1:9100' is not an admin API URL: it needs http:// or https://",
        ),
        (
            vec![],
            vec!["--api", "10.0.0.5:9100", "reload"],
            "'10.0.0.5:9100' is not an admin API URL",
        ),
        (
            vec![("KEYSTONE_CONFIG", "/nonexistent/keystone.yaml")],
            vec!["status"],
            "cannot read the agent's config /nonexistent/keystone.yaml",
        ),
    ] {
        let (code, stderr) = ctl(&envs, &args);
        assert_eq!(code, Some(2), "{envs:?} {args:?}: {stderr}");
        assert!(stderr.contains(says), "{envs:?} {args:?}: {stderr}");
    }
}

/// Runs keystone-ctl against a canned agent answering 202; returns the exit code, the
/// one request it saw and the body as JSON.
fn sent(args: &[&str]) -> (Option<i32>, String, Value) {
    let accepted = json!({"deployment_id": "d-1", "deployment": {"id": "d-1", "tenant": "web"}});
    let (url, requests) = test_server::canned(vec![(202, accepted)]);
    let (code, stderr) = ctl(
        &[],
        &[&["--api", url.as_str(), "--token", "t"], args].concat(),
    );
    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{args:?}: {stderr}");
    let (request, body) = requests[0].clone();
    (code, request, serde_json::from_str(&body).unwrap())
}

#[test]
fn canary_start_sends_every_step_parameter() {
    let (code, request, body) = sent(&[
        "canary",
        "start",
        "api",
        "--version",
        "2",
        "--initial-traffic",
        "5",
        "--increment",
        "10",
        "--interval",
        "30s",
        "--max-traffic",
        "50",
        "--health-threshold",
        "99",
        "--rollback-threshold",
        "90",
        "--min-samples",
        "20",
        "--validation-timeout",
        "1m",
        "--rollback-on-failure",
        "false",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(request, "POST /deployments/canary");
    assert_eq!(
        body,
        json!({"service": "api", "version": "2", "initial_traffic": 5.0, "increment": 10.0,
               "interval": "30s", "max_traffic": 50.0, "health_threshold": 99.0,
               "rollback_threshold": 90.0, "min_samples": 20, "validation_timeout": "1m",
               "rollback_on_failure": false})
    );
}

#[test]
fn switch_sends_its_step_parameters() {
    let (code, request, body) = sent(&[
        "switch",
        "web",
        "--to",
        "green",
        "--strategy",
        "gradual",
        "--initial-traffic",
        "25",
        "--increment",
        "25",
        "--interval",
        "5",
        "--validation-timeout",
        "10s",
        "--rollback-on-failure",
        "true",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(request, "POST /deployments/blue-green/switch");
    assert_eq!(
        body,
        json!({"service": "web", "to": "green", "strategy": "gradual", "initial_traffic": 25.0,
               "increment": 25.0, "interval": 5.0, "validation_timeout": "10s",
               "rollback_on_failure": true})
    );
}
