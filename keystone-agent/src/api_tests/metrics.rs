//! `/metrics`: the build, the backend counters and labels, and what each deployment
//! metric says.

use axum::http::StatusCode;
use keystone_common::{Endpoint, PROTO_TCP, TrafficCounters};

use super::{CANARY_20_PLUS_30, Harness, TOKEN, json};

#[tokio::test]
async fn metrics_say_which_build_runs() {
    let h = Harness::new();
    let (status, text) = h.call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let commit = env!("KEYSTONE_GIT_COMMIT");
    assert_ne!(commit, "", "build.rs sets the commit");
    let want = format!(
        "keystone_build_info{{commit=\"{commit}\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        text.lines().any(|l| l == want),
        "no line {want:?} in:\n{text}"
    );
}

#[tokio::test]
async fn metrics_carry_backend_counters_with_labels() {
    let h = Harness::new();
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let blue = Endpoint::new("198.18.11.2:8080".parse().unwrap(), PROTO_TCP);
    h.fake.counters.lock().unwrap().backends = vec![(
        vip,
        blue,
        TrafficCounters {
            packets: 7,
            bytes: 700,
            new_flows: 3,
        },
    )];
    h.fake.counters.lock().unwrap().reasons[keystone_common::Reason::TruncatedL4 as usize] = 2;
    let (status, text) = h.call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix} in:\n{text}"))
            .to_owned()
    };
    let packets = line("keystone_backend_packets_total{");
    for label in [
        "tenant=\"web\"",
        "backend=\"blue\"",
        "version=\"1.0.0\"",
        "environment=\"blue\"",
        "vip=\"198.18.0.10:80\"",
    ] {
        assert!(packets.contains(label), "{label} missing from {packets}");
    }
    assert!(packets.ends_with(" 7"), "{packets}");
    assert!(line("keystone_backend_new_connections_total{").ends_with(" 3"));
    assert!(line("keystone_xdp_exceptions_total{reason=\"truncated_l4\"}").ends_with(" 2"));
    assert!(
        text.contains("keystone_backend_weight{") && text.contains("keystone_config_generation 1")
    );
}

/// The value of the one sample of `name` whose labels include every `labels` pair;
/// `None` when there is none.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name}{labels:?} matches several samples: {matching:#?}"
    );
    matching
        .first()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
}

#[tokio::test]
async fn metrics_say_what_they_mean() {
    let h = Harness::new();
    let metrics = || async { h.call("GET", "/metrics", None).await.1 };
    let web = ("tenant", "web");
    let (blue, green) = (("backend", "blue"), ("backend", "green"));
    let text = metrics().await;
    // The config says 90/10: the weight metric says so, the share is what forwards.
    assert_eq!(
        sample(&text, "keystone_backend_weight", &[web, blue]),
        Some(90.0)
    );
    assert_eq!(
        sample(&text, "keystone_backend_weight", &[web, green]),
        Some(10.0)
    );
    let share = |text: &str, b| sample(text, "keystone_backend_effective_weight_ratio", &[web, b]);
    assert_eq!(
        (share(&text, blue), share(&text, green)),
        (Some(0.9), Some(0.1))
    );

    let start = CANARY_20_PLUS_30;
    let (status, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], start)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    let text = metrics().await;
    assert_eq!(
        sample(&text, "keystone_backend_weight", &[web, green]),
        Some(10.0)
    );
    assert_eq!(
        (share(&text, blue), share(&text, green)),
        (Some(0.8), Some(0.2))
    );
    let deployment = [
        web,
        ("service", "web"),
        ("strategy", "canary"),
        ("environment", "green"),
    ];
    assert_eq!(
        sample(&text, "keystone_deployments_started_total", &deployment),
        Some(1.0)
    );
    assert!(!text.contains("status=\"started\""), "{text}");
    // Every outcome exists at 0 from the start, so `increase()` sees the first one.
    let outcome = |text: &str, status| {
        let mut labels = deployment.to_vec();
        labels.push(("status", status));
        sample(text, "keystone_deployments_total", &labels)
    };
    assert_eq!(outcome(&text, "rolled_back"), Some(0.0));
    assert_eq!(outcome(&text, "completed"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "keystone_canary_traffic_percent",
            &[web, ("service", "web")]
        ),
        Some(20.0)
    );
    let state = |text: &str, s| sample(text, "keystone_deployment_state", &[web, ("state", s)]);
    assert_eq!(state(&text, "progressing"), Some(1.0));

    let (status, body) = h
        .call("POST", &format!("/deployments/{id}/rollback"), Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = metrics().await;
    assert_eq!(outcome(&text, "rolled_back"), Some(1.0));
    assert_eq!(outcome(&text, "completed"), Some(0.0));
    assert_eq!(
        (state(&text, "progressing"), state(&text, "rolled_back")),
        (Some(0.0), Some(1.0))
    );
    let mut labels = deployment.to_vec();
    labels.push(("status", "rolled_back"));
    assert_eq!(
        sample(&text, "keystone_deployment_duration_seconds_count", &labels),
        Some(1.0)
    );
}

/// The data plane's table hash is the tenant's `table_hash` in `/status` and the
/// `hash` label of `keystone_vip_table_hash_info`; a tenant without one has neither.
#[tokio::test]
async fn table_hash_shows_in_status_and_metrics() {
    let h = Harness::new();
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let (status, body) = h.call("GET", "/status", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["tenants"][0].get("table_hash"), None, "{body}");

    let hash = crate::dataplane::TableHash([0x3f, 0x9a, 0x0c, 0x41, 0xd2, 0xe8, 0x7b, 0x65]);
    h.fake.counters.lock().unwrap().table_hashes = vec![(vip, hash)];
    let (_, body) = h.call("GET", "/status", Some(TOKEN)).await;
    assert_eq!(json(&body)["tenants"][0]["table_hash"], "3f9a0c41d2e87b65");
    let (_, text) = h.call("GET", "/metrics", None).await;
    assert_eq!(
        sample(
            &text,
            "keystone_vip_table_hash_info",
            &[
                ("tenant", "web"),
                ("vip", "198.18.0.10:80"),
                ("hash", "3f9a0c41d2e87b65")
            ]
        ),
        Some(1.0),
        "{text}"
    );
}
