//! Coordinated plans through the API: phase by phase on the deployment engine, the
//! failure policies, a restart and a reload mid-plan, and the refusals.

use axum::http::StatusCode;

use super::{Harness, TOKEN, json, percents};

/// Three tenants, each with a v1 backend taking traffic and a v2 one idle, and
/// [`PLAN`] over them (`on_failure` appended to it).
fn config(on_failure: &str) -> String {
    let mut text = String::from("interfaces: [eth0]\ntenants:\n");
    for (i, name) in ["user-service", "product-service", "payment-service"]
        .iter()
        .enumerate()
    {
        text.push_str(&format!(
            r#"  - name: {name}
    listen: 198.18.0.{vip}:80
    services:
      - name: {name}-v1
        address: 198.18.11.{vip}:8080
        weight: 100
        labels: {{version: v1}}
      - name: {name}-v2
        address: 198.18.12.{vip}:8080
        weight: 0
        labels: {{version: v2}}
"#,
            vip = i + 10
        ));
    }
    text + PLAN + on_failure
}

/// examples/plans/three-services.yaml: user-service → product-service, three phases.
const PLAN: &str = include_str!("../../../examples/plans/three-services.yaml");

/// 50 %, then +50 % each hour: only an operator's promote moves a step here.
const START: &str = r#"{"version":"v2","initial_traffic":50,"increment":50,"interval":"1h"}"#;

impl Harness {
    /// Live percent per backend of `tenant` (v1, v2).
    fn split_of(&self, tenant: &str) -> Vec<f64> {
        let applied = self.fake.applied.lock().unwrap();
        let vip = applied
            .last()
            .unwrap()
            .iter()
            .find(|v| v.name == tenant)
            .unwrap_or_else(|| panic!("no VIP for {tenant}"))
            .clone();
        percents(&vip.backends.iter().map(|b| b.weight).collect::<Vec<_>>())
    }

    async fn plan(&self, id: &str) -> serde_json::Value {
        let (status, body) = self
            .call("GET", &format!("/deployments/plans/{id}"), Some(TOKEN))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        json(&body)
    }

    async fn abort_plan(&self, id: &str) -> (StatusCode, String) {
        let uri = format!("/deployments/plans/{id}/abort");
        self.call("POST", &uri, Some(TOKEN)).await
    }

    async fn start_plan(&self, body: &str) -> serde_json::Value {
        let (status, body) = self
            .send("POST", "/deployments/plans", Some(TOKEN), &[], body)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        json(&body)
    }

    async fn act_on(&self, deployment: &serde_json::Value, action: &str) {
        let id = deployment.as_str().unwrap();
        let (status, body) = self
            .call("POST", &format!("/deployments/{id}/{action}"), Some(TOKEN))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.state.agent.tick();
    }
}

fn phase_states(plan: &serde_json::Value) -> Vec<String> {
    plan["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_plan_moves_phase_by_phase_and_a_failed_phase_is_rolled_back_while_the_first_holds() {
    let h = Harness::with_config(&config(""));
    let plan = h.start_plan(START).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    assert_eq!(plan["state"], "running");
    assert_eq!(phase_states(&plan), ["running", "pending", "pending"]);
    assert_eq!(h.split_of("user-service"), [50.0, 50.0]);
    assert_eq!(h.split_of("product-service"), [100.0, 0.0], "phase 2 waits");

    h.act_on(&plan["phases"][0]["deployments"]["user-service"], "promote")
        .await;
    let plan = h.plan(&id).await;
    assert_eq!(phase_states(&plan), ["completed", "running", "pending"]);
    assert_eq!(h.split_of("user-service"), [0.0, 100.0]);
    assert_eq!(h.split_of("product-service"), [50.0, 50.0]);

    // The middle phase's canary fails (rolled back as its analysis would).
    h.act_on(
        &plan["phases"][1]["deployments"]["product-service"],
        "rollback",
    )
    .await;
    let plan = h.plan(&id).await;
    assert_eq!(plan["state"], "held", "{plan:#}");
    assert_eq!(phase_states(&plan), ["completed", "rolled_back", "pending"]);
    let reason = plan["history"].as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with("phase_2 failed: product-service's canary")
            && reason.ends_with("rolled back phase_2; phase_1 held (on_failure: hold)"),
        "{reason}"
    );
    assert_eq!(h.split_of("user-service"), [0.0, 100.0], "phase 1 holds");
    assert_eq!(h.split_of("product-service"), [100.0, 0.0]);
    assert_eq!(h.split_of("payment-service"), [100.0, 0.0], "never started");
    let (_, list) = h.call("GET", "/deployments/plans", Some(TOKEN)).await;
    assert_eq!(json(&list)["plans"][0]["id"], id.as_str());
}

#[tokio::test]
async fn rollback_all_rolls_the_earlier_phases_back_too() {
    let h = Harness::with_config(&config("  on_failure: rollback_all\n"));
    let plan = h.start_plan(START).await;
    h.act_on(&plan["phases"][0]["deployments"]["user-service"], "promote")
        .await;
    let plan = h.plan(plan["id"].as_str().unwrap()).await;
    h.act_on(
        &plan["phases"][1]["deployments"]["product-service"],
        "abort",
    )
    .await;
    let plan = h.plan(plan["id"].as_str().unwrap()).await;
    assert_eq!(plan["state"], "rolled_back", "{plan:#}");
    assert_eq!(
        phase_states(&plan),
        ["rolled_back", "rolled_back", "pending"]
    );
    assert_eq!(h.split_of("user-service"), [100.0, 0.0]);
}

#[tokio::test]
async fn a_plan_resumes_at_the_same_phase_after_a_restart_and_a_reload() {
    let h = Harness::with_config(&config(""));
    let plan = h.start_plan(START).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    h.act_on(&plan["phases"][0]["deployments"]["user-service"], "promote")
        .await;
    let before = h.plan(&id).await;
    let deployments = h.state.agent.deployments().len();

    let h = h.restart();
    h.state.agent.tick();
    let after = h.plan(&id).await;
    assert_eq!(
        after["phases"], before["phases"],
        "same phase, same canaries"
    );
    assert_eq!(
        h.state.agent.deployments().len(),
        deployments,
        "nothing started again"
    );
    assert_eq!(h.split_of("product-service"), [50.0, 50.0]);

    // A reload mid-plan (even one dropping the block) leaves the running plan be.
    let text = config("");
    h.write(&text[..text.find("\ndeployment_orchestration:").unwrap()]);
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.act_on(
        &after["phases"][1]["deployments"]["product-service"],
        "promote",
    )
    .await;
    let plan = h.plan(&id).await;
    assert_eq!(phase_states(&plan), ["completed", "completed", "running"]);
    h.act_on(
        &plan["phases"][2]["deployments"]["payment-service"],
        "promote",
    )
    .await;
    let plan = h.plan(&id).await;
    assert_eq!(plan["state"], "completed");
    assert!(plan["finished_at"].is_string());
}

#[tokio::test]
async fn abort_stops_the_running_phase() {
    let h = Harness::with_config(&config(""));
    let plan = h.start_plan(START).await;
    let id = plan["id"].as_str().unwrap();
    let (status, body) = h.abort_plan(id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["state"], "aborted");
    assert_eq!(h.split_of("user-service"), [100.0, 0.0]);
    let (status, body) = h.abort_plan(id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(json(&body)["error"], "cannot abort a plan that is aborted");
    let (status, _) = h
        .call("GET", "/deployments/plans/plan-99", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_plans_are_refused_naming_the_services() {
    let h = Harness::with_config(&config(""));
    let refused = async |body: &str| {
        let (status, answer) = h
            .send("POST", "/deployments/plans", Some(TOKEN), &[], body)
            .await;
        (status, json(&answer)["error"].as_str().unwrap().to_owned())
    };
    let cycle = r#"{"version":"v2","orchestration":{"services":["user-service","product-service"],
        "dependencies":["user-service → product-service","product-service -> user-service"]}}"#;
    let unknown = r#"{"version":"v2","orchestration":{"services":["user-service","cart"]}}"#;
    let cases = [
        (
            cycle,
            "orchestration.dependencies: form a cycle: user-service → product-service → user-service",
        ),
        (
            unknown,
            "orchestration.services[1]: 'cart' is not a tenant (tenants: user-service, product-service, payment-service)",
        ),
        (
            r#"{"versions":{"user-service":"v3"},"version":"v2"}"#,
            "versions.user-service: no service of tenant 'user-service' has labels.version 'v3'",
        ),
        (
            r#"{"version":"v2","incremnt":5}"#,
            "incremnt: unknown parameter",
        ),
    ];
    for (body, error) in cases {
        let (status, said) = refused(body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{said}");
        assert!(said.starts_with(error), "{said}\nwanted: {error}");
    }

    h.start_plan(START).await;
    let (status, error) = refused(START).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        error,
        "plan plan-1 is running for 'payment-service'; abort it first"
    );
}

#[tokio::test]
async fn a_config_with_a_cycle_is_refused_with_its_line() {
    let h = Harness::with_config(&config(""));
    h.write(&config("").replace(
        "    - user-service → product-service\n",
        "    - user-service → product-service\n    - product-service → user-service\n",
    ));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let problem = &json(&body)["problems"][0];
    assert_eq!(problem["field"], "deployment_orchestration.dependencies");
    assert_eq!(
        problem["reason"],
        "form a cycle: user-service → product-service → user-service"
    );
    assert!(problem["line"].as_u64().is_some(), "{problem}");
}
