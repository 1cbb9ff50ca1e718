//! A blue/green switch through the API: validated, flipped, and the old side drained.

use super::{Harness, percents};

#[tokio::test]
async fn blue_green_switch_validates_flips_and_drains_the_old_side() {
    let h = Harness::new();
    // Green must answer the validation probe (a TCP connect): a local listener.
    let green = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let green_addr = green.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let _ = green.accept().await;
        }
    });
    let config = format!(
        r#"interfaces: [eth0]
tenants:
  - name: web
    listen: 198.18.0.10:80
    deployment_strategy: blue_green
    active_environment: blue
    switch_config: {{strategy: instant, interval: 50ms, drain_timeout: 200ms, validation_timeout: 5s}}
    services:
      - {{name: blue, address: "198.18.11.2:8080", environment: blue}}
      - {{name: green, address: "{green_addr}", environment: green}}
"#
    );
    h.reload_with(&config).await;
    assert_eq!(percents(&h.live_weights()), [100.0, 0.0]);
    let (answer, id) = h.switch_web_to_green().await;
    assert_eq!(answer["deployment"]["from_environment"], "blue");
    let blue_up = || h.fake.applied.lock().unwrap().last().unwrap()[0].backends[0].up;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut flipped_with_blue_up = false;
    while blue_up() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            h.state.agent.deployment(&id).unwrap()
        );
        h.state.agent.tick();
        let d = h.state.agent.deployment(&id).unwrap();
        if d.canary_percent == 100.0 && blue_up() {
            // Flipped: blue gets no new connections but keeps its established ones.
            assert_eq!(percents(&h.live_weights()), [0.0, 100.0]);
            flipped_with_blue_up = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await; // the engine's tick period, simulated
    }
    assert!(
        flipped_with_blue_up,
        "blue drained before the flip was seen"
    );
    let d = h.state.agent.deployment(&id).unwrap();
    assert_eq!(
        d.state,
        crate::deploy::DeployState::Completed,
        "{:#?}",
        d.history
    );
    let drained_at = d.finished_unix.unwrap() + 0.2;
    assert!(
        crate::agent::unix_now() >= drained_at,
        "blue left before its drain timeout"
    );
}

/// `switch_config`'s own step parameters reach the switch, read like a request's.
#[tokio::test]
async fn switch_config_step_parameters_are_the_switchs() {
    let h = Harness::new();
    h.reload_with(
        r#"interfaces: [eth0]
tenants:
  - name: web
    listen: 198.18.0.10:80
    deployment_strategy: blue_green
    active_environment: blue
    switch_config: {strategy: instant, validation_timeout: 1m10s, rollback_on_failure: false}
    services:
      - {name: blue, address: "198.18.11.2:8080", environment: blue}
      - {name: green, address: "198.18.11.3:8080", environment: green}
"#,
    )
    .await;
    let (_, id) = h.switch_web_to_green().await;
    let p = h.state.agent.deployment(&id).unwrap().params;
    assert_eq!(
        (p.validation_timeout_seconds, p.rollback_on_failure),
        (Some(70.0), false)
    );
}
