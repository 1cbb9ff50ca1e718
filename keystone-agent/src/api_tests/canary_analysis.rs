//! A canary judged by its signals: passive L4 counters step or roll it back, and so
//! does a Prometheus query.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use keystone_common::{Endpoint, PROTO_TCP};

use super::{Harness, TOKEN, assert_next_tick_rolls_back, config_text, json, percents};

#[tokio::test]
async fn a_canary_steps_itself_on_passive_signals_and_persists() {
    let h = Harness::new();
    let start = r#"{"service":"web","version":"1.1.0","initial_traffic":10,"increment":45,"interval":"50ms","min_samples":10}"#;
    let (status, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], start)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let green = Endpoint::new("198.18.12.2:8080".parse().unwrap(), PROTO_TCP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = vec![];
    let mut handshakes = 0;
    while h.state.agent.deployment(&id).unwrap().state.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "no promotion: {:#?}",
            h.state.agent.deployment(&id).unwrap().history
        );
        handshakes += 5;
        h.fake.counters.lock().unwrap().backend_l4 = vec![(
            vip,
            green,
            keystone_common::L4Counters {
                syn: handshakes,
                syn_ack: handshakes,
                established: handshakes,
                ..Default::default()
            },
        )];
        h.state.agent.tick();
        let p = h.state.agent.deployment(&id).unwrap().canary_percent;
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await; // pacing of the simulated traffic, not synchronisation
    }
    assert_eq!(seen, [10.0, 55.0, 100.0]);
    let saved = crate::store::Store::new(h._dir.path().join("state"))
        .load()
        .unwrap();
    assert_eq!(
        saved.deployments[0].state,
        crate::deploy::DeployState::Completed
    );
    assert_eq!(percents(&h.live_weights()), [0.0, 100.0]);
}

/// A canary (baseline taken) whose backend's L4 counters then read `l4` is rolled back
/// on the next tick, for `reason`; returns the harness and the deployment's id.
pub(super) async fn canary_rolls_back_on(
    l4: keystone_common::L4Counters,
    reason: &str,
) -> (Harness, String) {
    let h = Harness::new();
    let start = r#"{"service":"web","version":"1.1.0","interval":"1h","min_samples":10}"#;
    let (_, body) = h
        .send("POST", "/deployments/canary", Some(TOKEN), &[], start)
        .await;
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    h.state.agent.tick(); // baseline
    let vip = Endpoint::new("198.18.0.10:80".parse().unwrap(), PROTO_TCP);
    let green = Endpoint::new("198.18.12.2:8080".parse().unwrap(), PROTO_TCP);
    h.fake.counters.lock().unwrap().backend_l4 = vec![(vip, green, l4)];
    assert_next_tick_rolls_back(&h, &id, reason);
    assert_eq!(percents(&h.live_weights()), [100.0, 0.0]);
    (h, id)
}

#[tokio::test]
async fn a_canary_with_failing_handshakes_rolls_back() {
    let l4 = keystone_common::L4Counters {
        syn: 20,
        syn_ack: 2,
        rst: 18,
        established: 2,
        ..Default::default()
    };
    canary_rolls_back_on(
        l4,
        "success rate 10.0% over 20 samples (tcp handshakes 2/20)",
    )
    .await;
}

/// Every SYN answered with a SYN-ACK, but the clients never complete a handshake (they
/// drop the answers, e.g. for bad checksums): the canary fails its analysis.
#[tokio::test]
async fn a_canary_whose_syn_acks_never_complete_a_handshake_rolls_back() {
    let l4 = keystone_common::L4Counters {
        syn: 20,
        syn_ack: 20,
        ..Default::default()
    };
    canary_rolls_back_on(
        l4,
        "success rate 0.0% over 20 samples (tcp handshakes 0/20)",
    )
    .await;
}

/// A stand-in Prometheus answering every query with `value`; records the queries.
async fn fake_prometheus(value: &'static str) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            log.lock()
                .unwrap()
                .push(request.lines().next().unwrap_or("").to_owned());
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000.0,"{value}"]}}]}}}}"#
            );
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_failing_prometheus_query_rolls_the_canary_back() {
    let h = Harness::new();
    let (prom, queries) = fake_prometheus("0.4").await;
    let with_analysis = config_text(90, 10).replace(
        "    services:\n",
        &format!(
            "    canary_config:\n      initial_traffic: 10\n      increment: 10\n      interval: 1h\n      analysis:\n        prometheus:\n          address: http://{prom}\n          query: 'success_rate{{version=\"{{{{version}}}}\"}}'\n    services:\n"
        ),
    );
    h.write(&with_analysis);
    let (status, body) = h.call("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .send(
            "POST",
            "/deployments/canary",
            Some(TOKEN),
            &[],
            r#"{"service":"web","version":"1.1.0"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["deployment_id"].as_str().unwrap().to_owned();
    let agent = h.state.agent.clone();
    tokio::task::spawn_blocking(move || agent.poll_prometheus())
        .await
        .unwrap();
    assert_next_tick_rolls_back(&h, &id, "prometheus 0.400");
    let q = queries.lock().unwrap()[0].clone();
    assert!(
        q.starts_with("GET /api/v1/query?query=success_rate%7Bversion%3D%221.1.0%22%7D"),
        "{q}"
    );
}
