//! Starting on an unreadable `state.json`: it is kept aside and the agent starts, on
//! the pinned split if there is one.

use axum::http::StatusCode;
use keystone_common::{Endpoint, PROTO_TCP};

use super::{FakeDataplane, Harness, TOKEN, json};
use crate::dataplane::LiveShares;

#[tokio::test]
async fn an_unreadable_state_file_is_kept_aside_and_the_agent_starts() {
    for bad in ["", "{\"version\": 1, \"deploym"] {
        let h = Harness::with_state_file(Some(bad));
        assert_eq!(h.live_weights(), [90, 10], "the config's weights are live");
        let (status, body) = h.call("GET", "/health", None).await;
        assert_eq!(status, StatusCode::OK);
        let recovered = json(&body)["persistence"]["recovered"]
            .as_str()
            .unwrap_or_else(|| panic!("/health does not say the state was unreadable: {body}"))
            .to_owned();
        let kept = recovered
            .split_whitespace()
            .find(|w| w.contains("state.json.unreadable-"))
            .unwrap_or_else(|| panic!("no kept file named in '{recovered}'"));
        assert_eq!(std::fs::read_to_string(kept).unwrap(), bad, "{recovered}");
        assert!(
            recovered.contains("is not a Keystone state file"),
            "{recovered}"
        );
        let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
        assert_eq!(json(&body)["persistence"]["recovered"], recovered.as_str());
    }
}

/// A data plane pinned with green taking every new connection (a finished switch),
/// while the config says 90/10.
fn pinned_green() -> FakeDataplane {
    let endpoint = |a: &str| Endpoint::new(a.parse().unwrap(), PROTO_TCP);
    FakeDataplane {
        pinned: vec![LiveShares {
            vip: endpoint("198.18.0.10:80"),
            entries: vec![(endpoint("198.18.12.2:8080"), 1009)],
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn an_unreadable_state_file_keeps_the_pinned_split() {
    let h = Harness::with_pinned(Some("garbage"), pinned_green());
    assert_eq!(
        h.live_weights(),
        [0, 1009],
        "the pinned split is programmed"
    );
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    let status = json(&body);
    assert_eq!(
        status["tenants"][0]["traffic_source"],
        serde_json::json!({"kind": "manual", "reason": crate::recover::REASON}),
        "{body}"
    );
    let recovered = status["persistence"]["recovered"].as_str().unwrap();
    assert!(
        recovered.contains("is not a Keystone state file")
            && recovered.contains("state.json.unreadable-")
            && recovered.ends_with("as manual weights for tenant(s) web"),
        "{recovered}"
    );
    let saved = crate::store::Store::new(h._dir.path().join("state"))
        .load()
        .unwrap();
    assert_eq!(
        saved.plans["web"],
        crate::deploy::TrafficPlan::Manual {
            weights: [("blue".to_owned(), 0), ("green".to_owned(), 1009)].into(),
            reason: Some(crate::recover::REASON.to_owned()),
        },
        "saved, so a second restart keeps it"
    );
    // A readable state file is what counts: the pinned tables are not read back.
    let h = Harness::with_pinned(None, pinned_green());
    assert_eq!(h.live_weights(), [90, 10]);
}
