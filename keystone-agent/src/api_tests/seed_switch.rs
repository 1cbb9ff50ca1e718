//! The seed's `switch_config` as the agent acts on it: the idle side is validated on
//! `validation_endpoint`, and `switch_strategy: gradual` makes a switch request that
//! names no strategy go in steps.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::Harness;
use crate::deploy::{DeployState, Deployment};

/// An HTTP server answering 200 on `ok_path` and 404 on any other path.
async fn http_backend(ok_path: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 1024];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let ok = request[..n].starts_with(format!("GET {ok_path} ").as_bytes());
                let status = if ok { "200 OK" } else { "404 Not Found" };
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// The seed's blue/green block (its field names), with the lab's step timing.
fn seed_blue_green(green: SocketAddr, validation_endpoint: &str) -> String {
    format!(
        r#"interfaces: [eth0]
tenants:
  - name: web
    listen: 198.18.0.10:80
    deployment_strategy: blue_green
    active_environment: blue
    switch_config:
      validation_endpoint: "{validation_endpoint}"
      validation_timeout: 1s
      rollback_on_failure: true
      switch_strategy: "gradual"
      interval: 50ms
      increment: 25
    services:
      - {{name: blue, address: "198.18.11.2:8080", environment: blue, weight: 100}}
      - {{name: green, address: "{green}", environment: green, weight: 0}}
"#
    )
}

/// Reloads `config`, asks for a switch to green naming no strategy, and waits until
/// the idle side's validation has decided.
async fn switch_after_validation(h: &Harness, config: &str) -> Deployment {
    h.reload_with(config).await;
    let (_, id) = h.switch_web_to_green().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = h.state.agent.deployment(&id).unwrap();
        if d.validated || d.state != DeployState::Progressing {
            return d;
        }
        assert!(Instant::now() < deadline, "validation never ended: {d:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polled, bounded above
    }
}

#[tokio::test]
async fn the_idle_side_is_validated_on_validation_endpoint() {
    let h = Harness::new();
    let green = http_backend("/ready").await;
    // Green accepts connections (a TCP check would pass) but 404s this path.
    let d = switch_after_validation(&h, &seed_blue_green(green, "/missing")).await;
    assert_eq!(d.state, DeployState::Failed, "{:#?}", d.history);
    let reason = &d.history.last().unwrap().reason;
    assert!(
        reason.contains("validation of the idle side failed") && reason.contains("HTTP status 404"),
        "{reason}"
    );
}

#[tokio::test]
async fn seed_switch_strategy_gradual_switches_in_steps() {
    let h = Harness::new();
    let green = http_backend("/ready").await;
    let d = switch_after_validation(&h, &seed_blue_green(green, "/ready")).await;
    assert_eq!(d.state, DeployState::Progressing, "{:#?}", d.history);
    // The first step of 25 %, not an instant 100 %.
    assert_eq!(d.canary_percent, 25.0, "{:#?}", d.history);
    assert_eq!(d.params.max_traffic, 100.0);
}
