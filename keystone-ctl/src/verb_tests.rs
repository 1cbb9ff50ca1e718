//! The verbs against a canned agent: the requests they send and what they print.

use serde_json::Value;

use super::*;
use crate::test_server::canned;

fn run_against(
    answers: Vec<(u16, Value)>,
    args: &[&str],
) -> (Result<u8, Failure>, String, Vec<(String, String)>) {
    let (url, requests) = canned(answers);
    let cli = Cli::try_parse_from(
        ["keystone-ctl", "--api", url.as_str(), "--token", "t"]
            .into_iter()
            .chain(args.iter().copied()),
    )
    .unwrap();
    let client = Client::new(cli.api.as_deref().unwrap(), cli.token.clone());
    let mut out = Vec::new();
    let result = run(&cli, &client, &mut out);
    let requests = requests.lock().unwrap().clone();
    (result, String::from_utf8(out).unwrap(), requests)
}

fn deployment(id: &str, tenant: &str, state: &str) -> Value {
    json!({"id": id, "tenant": tenant, "strategy": "canary", "version": "2",
           "state": state, "canary_percent": 100.0,
           "history": [{"reason": "promoted by operator"}]})
}

#[test]
fn promote_by_tenant_resolves_the_running_deployment() {
    let (result, out, requests) = run_against(
        vec![
            (
                200,
                json!({"deployments": [deployment("d-9", "web", "progressing"), deployment("d-8", "api", "awaiting_approval")]}),
            ),
            (200, deployment("d-8", "api", "completed")),
        ],
        &["canary", "promote", "--tenant", "api"],
    );
    assert_eq!(result.unwrap(), 0);
    let lines: Vec<&str> = requests.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(lines, ["GET /deployments", "POST /deployments/d-8/promote"]);
    assert_eq!(
        out,
        "deployment d-8 is now completed: canary 100% (promoted by operator)\n"
    );
}

#[test]
fn weights_and_canary_start_send_their_bodies() {
    let tenant = json!({"name": "api", "backends": []});
    let (result, _, requests) = run_against(vec![(200, tenant)], &["weights", "api", "a=1", "b=0"]);
    assert_eq!(result.unwrap(), 0);
    assert_eq!(requests[0].0, "POST /tenants/api/weights");
    assert_eq!(
        serde_json::from_str::<Value>(&requests[0].1).unwrap(),
        json!({"weights": {"a": 1, "b": 0}})
    );

    let accepted = json!({"deployment_id": "d-1", "deployment": {"strategy": "canary", "tenant": "api", "version": "2", "canary_percent": 10.0}});
    let (result, out, requests) = run_against(
        vec![(202, accepted.clone())],
        &["canary", "start", "api", "--version", "2"],
    );
    assert_eq!(result.unwrap(), 0);
    assert_eq!(requests[0].0, "POST /deployments/canary");
    assert_eq!(
        out,
        "started deployment d-1: canary of api version 2 at 10%\nfollow it with: keystone-ctl wait d-1\n"
    );
    let (_, out, _) = run_against(
        vec![(202, accepted.clone())],
        &["-o", "json", "switch", "web", "--to", "green"],
    );
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), accepted);
}

#[test]
fn refusals_and_auth_map_to_exit_codes() {
    let (result, _, _) = run_against(
        vec![(
            409,
            json!({"error": "a deployment is already running for tenant 'api'"}),
        )],
        &["canary", "start", "api", "--version", "2"],
    );
    let e = result.unwrap_err();
    assert_eq!(e.code, exit::REFUSED);
    assert_eq!(
        e.message,
        "the agent answered 409: a deployment is already running for tenant 'api'"
    );
    let (result, _, _) = run_against(
        vec![(401, json!({"error": "wrong bearer token"}))],
        &["tenants"],
    );
    assert_eq!(result.unwrap_err().code, exit::AUTH);
    let (result, _, _) = run_against(
        vec![(
            422,
            json!({"error": "config k.yaml is invalid:\n  line 3: tenants[0].listen: required\n  tenants[1].name: required",
                   "problems": [{"field": "tenants[0].listen", "line": 3, "reason": "required"},
                                {"field": "tenants[1].name", "line": null, "reason": "required"}]}),
        )],
        &["reload"],
    );
    let e = result.unwrap_err();
    assert_eq!(e.code, exit::REFUSED);
    assert_eq!(
        e.message,
        "the agent answered 422: config k.yaml is invalid:\n  line 3: tenants[0].listen: required\n  tenants[1].name: required",
        "each problem once"
    );
}

#[test]
fn status_until_done_exits_like_wait() {
    let status = json!({"config_path": "k.yaml", "tenants": []});
    let (result, out, requests) = run_against(
        vec![
            (200, status),
            (
                200,
                json!({"deployments": [deployment("d-1", "api", "progressing")]}),
            ),
            (200, deployment("d-1", "api", "rolled_back")),
        ],
        &[
            "status",
            "--watch",
            "--until-done",
            "d-1",
            "--interval",
            "10ms",
        ],
    );
    assert_eq!(result.unwrap(), exit::ROLLED_BACK, "{out}");
    let lines: Vec<&str> = requests.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        lines,
        ["GET /status", "GET /deployments", "GET /deployments/d-1"]
    );
    assert!(out.contains("config k.yaml"), "{out}");
    assert!(
        out.contains("deployment d-1  tenant api"),
        "running deployment shown: {out}"
    );
    assert!(out.ends_with("— exit 10\n"), "{out}");
}

mod drain;
mod fleet;
