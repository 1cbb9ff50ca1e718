//! `POST /admin/reload`: new weights go live; a bad config or a change that needs a
//! restart is refused and the old config stays.

use axum::http::StatusCode;

use super::{Harness, TOKEN, config_text, error_body, json};

#[tokio::test]
async fn reload_applies_new_weights() {
    let h = Harness::new();
    assert_eq!(h.live_weights(), [90, 10]);
    h.write(&config_text(0, 100));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["config_generation"], 2);
    assert_eq!(h.live_weights(), [0, 100]);
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    let status = json(&body);
    assert_eq!(
        status["tenants"][0]["backends"][1]["configured_weight"],
        100
    );
    assert_eq!(
        status["tenants"][0]["backends"][1]["traffic_percent"],
        100.0
    );
}

#[tokio::test]
async fn invalid_reload_is_refused_with_field_and_line_and_old_config_stays() {
    let h = Harness::new();
    h.write(&config_text(90, 10).replace("weight: 10", "weight: ten"));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let problem = &error_body(&body).problems[0];
    assert_eq!(problem.field, "tenants[0].services[1].weight");
    assert_eq!(problem.line, Some(13));
    assert_eq!(
        h.fake.applied.lock().unwrap().len(),
        1,
        "nothing new was applied"
    );
    assert_eq!(h.state.agent.generation(), 1);
    assert_eq!(h.state.agent.config().tenants[0].services[1].weight, 10);
}

#[tokio::test]
async fn interface_change_needs_a_restart() {
    let h = Harness::new();
    h.write(&config_text(90, 10).replace("[eth0]", "[eth0, eth1]"));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "interfaces");
    assert_eq!(body["problems"][0]["line"], 1);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("restart the agent")
    );
}

#[tokio::test]
async fn capacity_change_needs_a_restart() {
    let h = Harness::new();
    h.write(&format!(
        "{}limits:\n  max_backends: 100\n",
        config_text(90, 10)
    ));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "limits.max_backends");
    assert!(body["problems"][0]["line"].as_u64().is_some(), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("4096 → 100") && error.contains("restart"),
        "{error}"
    );
    assert_eq!(h.state.agent.generation(), 1);
}

#[tokio::test]
async fn conn_table_size_change_needs_a_restart() {
    let h = Harness::new();
    h.write(&format!(
        "limits:\n  conn_table_entries: 4096\n{}",
        config_text(90, 10)
    ));
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(&body);
    assert_eq!(body["problems"][0]["field"], "limits.conn_table_entries");
    assert_eq!(body["problems"][0]["line"], 2);
    assert!(
        body["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("restart the agent"),
        "{body}"
    );
    assert_eq!(h.state.agent.generation(), 1);
}

#[tokio::test]
async fn dataplane_refusal_restores_the_previous_state() {
    let h = Harness::new();
    h.write(&config_text(50, 50));
    *h.fake.refuse_next.lock().unwrap() = true;
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("previous one stays live")
    );
    assert_eq!(h.live_weights(), [90, 10], "old state re-applied");
    assert_eq!(h.state.agent.generation(), 1);
}
