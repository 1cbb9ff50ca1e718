//! Manual weights, the tenant view, and the traffic share `/status` reports.

use axum::http::StatusCode;
use keystone_common::{Endpoint, PROTO_TCP, TrafficCounters};

use super::{Harness, TOKEN, config_text, json};

#[tokio::test]
async fn status_traffic_share_comes_from_the_window() {
    let h = Harness::new();
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let blue = Endpoint::new("198.18.11.2:8080".parse().unwrap(), PROTO_TCP);
    let green = Endpoint::new("198.18.12.2:8080".parse().unwrap(), PROTO_TCP);
    let set = |b: u64, g: u64| {
        h.fake.counters.lock().unwrap().backends = vec![
            (
                vip,
                blue,
                TrafficCounters {
                    new_flows: b,
                    ..Default::default()
                },
            ),
            (
                vip,
                green,
                TrafficCounters {
                    new_flows: g,
                    ..Default::default()
                },
            ),
        ];
    };
    set(1000, 0); // history before the window
    h.state.agent.sample().unwrap();
    set(1900, 100);
    let status = h.state.agent.status().unwrap();
    let backends = &status.tenants[0].backends;
    assert_eq!(backends[0].recent_new_connections, 900);
    assert!((backends[0].recent_traffic_percent - 90.0).abs() < 1e-7);
    assert!((backends[1].recent_traffic_percent - 10.0).abs() < 1e-7);
}

#[tokio::test]
async fn manual_weights_and_tenant_view() {
    let h = Harness::new();
    let (status, body) = h
        .send(
            "POST",
            "/tenants/web/weights",
            Some(TOKEN),
            &[],
            r#"{"weights":{"blue":1,"green":3}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.live_weights(), [1, 3]);
    let (_, body) = h.call("GET", "/tenants", Some(TOKEN)).await;
    let green = &json(&body)["tenants"][0]["backends"][1];
    assert_eq!(
        (
            green["configured_weight"].clone(),
            green["effective_weight"].clone()
        ),
        (10.into(), 3.into())
    );
    assert_eq!(green["traffic_percent"], 75.0);
    assert_eq!(green["health"], "unknown");
    // A reload that changes the tenant hands it back to the config's weights.
    h.write(&config_text(50, 50));
    h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(h.live_weights(), [50, 50]);
}
