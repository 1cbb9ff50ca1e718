use super::*;
use crate::config::{ForwardingMode, PrometheusQuery, Protocol, Stickiness};

fn tenant() -> ResolvedTenant {
    let svc = |name: &str, weight, env: &str, version: &str| ResolvedService {
        name: name.into(),
        address: "198.18.11.2:8080".parse().unwrap(),
        weight,
        environment: Some(env.into()),
        version: version.into(),
        health: None,
    };
    ResolvedTenant {
        name: "web".into(),
        vip: "198.18.0.10:80".parse().unwrap(),
        protocol: Protocol::Tcp,
        mode: ForwardingMode::Nat,
        stickiness: Stickiness::None,
        ring_size: 65537,
        strategy: Strategy::Canary,
        services: vec![
            svc("blue-1", 3, "blue", "1.0"),
            svc("blue-2", 1, "blue", "1.0"),
            svc("green", 0, "green", "1.1"),
        ],
        active_environment: None,
        canary_config: None,
        switch_config: None,
    }
}

fn canary(params: Params) -> Deployment {
    Deployment {
        id: "d1".into(),
        tenant: "web".into(),
        strategy: Strategy::Canary,
        version: Some("1.1".into()),
        state: DeployState::Progressing,
        canary_percent: params.initial_traffic,
        stable_backends: vec!["blue-1".into(), "blue-2".into()],
        canary_backends: vec!["green".into()],
        from_environment: None,
        to_environment: None,
        next_step_at: params.interval_seconds,
        params,
        analysis: Analysis::default(),
        history: Vec::new(),
        started_at: rfc3339(0.0),
        updated_at: rfc3339(0.0),
        finished_at: None,
        pipeline: None,
        started_unix: 0.0,
        finished_unix: None,
        validated: false,
        baseline: None,
    }
}

fn params() -> Params {
    Params {
        initial_traffic: 10.0,
        increment: 30.0,
        interval_seconds: 2.0,
        max_traffic: 100.0,
        health_threshold: 0.95,
        rollback_threshold: 0.9,
        min_samples: 5,
        validation_timeout_seconds: None,
        rollback_on_failure: true,
        drain_timeout_seconds: None,
        prometheus: None,
    }
}

fn ok(n: u64) -> Signals {
    Signals {
        probes: Samples { ok: n, failed: 0 },
        ..Default::default()
    }
}

#[test]
fn weights_split_by_plan_and_configured_weight() {
    let t = tenant();
    assert_eq!(effective_weights(&t, None, None), [3, 1, 0]);
    let plan = TrafficPlan::Split {
        from: vec!["blue-1".into(), "blue-2".into()],
        to: vec!["green".into()],
        to_percent: 10.0,
    };
    let w = effective_weights(&t, None, Some(&plan));
    assert_eq!(w, [675_000, 225_000, 100_000]);
    let mut bg = t.clone();
    bg.strategy = Strategy::BlueGreen;
    assert_eq!(
        effective_weights(&bg, Some("green"), None),
        [0, 0, 1_000_000],
        "all-zero group splits equally"
    );
    let manual = TrafficPlan::Manual {
        weights: BTreeMap::from([("green".to_owned(), 7)]),
        reason: None,
    };
    assert_eq!(effective_weights(&t, None, Some(&manual)), [0, 0, 7]);
}

#[test]
fn healthy_canary_steps_on_schedule_and_promotes_itself() {
    let mut d = canary(params());
    let mut percents = vec![d.canary_percent];
    let mut t = 0.0;
    let mut probes = 0;
    while d.state == DeployState::Progressing && t < 20.0 {
        t += 0.5;
        probes += 2;
        for e in d.tick(t, &ok(probes)) {
            assert!(
                matches!(e.kind, EventKind::Step | EventKind::Promoted),
                "{e:?}"
            );
            percents.push(d.canary_percent);
        }
    }
    assert_eq!(percents, [10.0, 40.0, 70.0, 100.0]);
    assert_eq!(d.state, DeployState::Completed);
    assert!(d.finished_at.is_some());
    assert!(
        d.history
            .last()
            .unwrap()
            .reason
            .starts_with("promoted: success rate 100.0%"),
        "{:?}",
        d.history
    );
}

#[test]
fn failing_canary_rolls_back_at_once() {
    let mut d = canary(params());
    d.tick(0.5, &ok(0)); // baseline
    let bad = Signals {
        probes: Samples { ok: 2, failed: 8 },
        ..Default::default()
    };
    let events = d.tick(1.0, &bad);
    assert_eq!(
        events,
        [Event {
            deployment_id: "d1".into(),
            kind: EventKind::RolledBack
        }]
    );
    assert_eq!((d.state, d.canary_percent), (DeployState::RolledBack, 0.0));
    assert!(
        d.history
            .last()
            .unwrap()
            .reason
            .contains("success rate 20.0%")
    );
    // Health checks marking every canary backend down is enough on its own.
    let mut d = canary(params());
    let events = d.tick(
        0.5,
        &Signals {
            all_down: true,
            ..Default::default()
        },
    );
    assert_eq!(events[0].kind, "rolled_back");
}

#[test]
fn too_few_samples_hold_the_step() {
    let mut d = canary(params());
    d.tick(0.1, &ok(0));
    assert!(d.tick(2.5, &ok(3)).is_empty(), "3 < min_samples 5");
    assert_eq!(d.canary_percent, 10.0);
    assert_eq!(d.analysis.verdict, Some(Verdict::Inconclusive));
    assert!(
        d.history
            .last()
            .unwrap()
            .reason
            .contains("inconclusive: 3 samples < min_samples 5")
    );
    d.tick(3.0, &ok(4));
    assert_eq!(d.history.len(), 1, "the same hold is recorded once");
    let events = d.tick(3.5, &ok(6));
    assert_eq!(events[0].kind, "step");
    assert_eq!(d.canary_percent, 40.0);
}

#[test]
fn max_traffic_waits_for_approval_and_operator_actions_follow_state() {
    let mut d = canary(Params {
        max_traffic: 40.0,
        ..params()
    });
    d.tick(0.1, &ok(0));
    d.tick(2.5, &ok(10));
    assert_eq!(d.canary_percent, 40.0);
    let events = d.tick(5.0, &ok(20));
    assert_eq!(events[0].kind, "paused");
    assert_eq!(d.state, DeployState::AwaitingApproval);
    assert!(d.tick(9.0, &ok(40)).is_empty(), "no steps while waiting");
    assert_eq!(
        d.act(9.5, Action::Resume, Actor::AdminToken).unwrap_err(),
        "cannot resume a deployment that is awaiting_approval"
    );
    assert_eq!(
        d.act(10.0, Action::Promote, Actor::AdminToken)
            .unwrap()
            .kind,
        "promoted"
    );
    assert_eq!((d.state, d.canary_percent), (DeployState::Completed, 100.0));
    assert!(d.act(11.0, Action::Abort, Actor::AdminToken).is_err());
    assert_eq!(
        d.act(12.0, Action::Rollback, Actor::AdminToken)
            .unwrap()
            .kind,
        "rolled_back"
    );
    assert_eq!(d.canary_percent, 0.0);
}

#[test]
fn pause_and_resume() {
    let mut d = canary(params());
    d.act(0.5, Action::Pause, Actor::AdminToken).unwrap();
    assert!(d.tick(5.0, &ok(100)).is_empty());
    d.act(6.0, Action::Resume, Actor::AdminToken).unwrap();
    d.tick(6.1, &ok(100));
    assert_eq!(d.tick(8.5, &ok(200))[0].kind, "step");
}

#[test]
fn prometheus_gates_every_step() {
    let query = PrometheusQuery {
        address: "http://127.0.0.1:9090".into(),
        query: "x".into(),
    };
    let mut d = canary(Params {
        prometheus: Some(query),
        ..params()
    });
    d.tick(0.1, &ok(0));
    let with = |n, value| Signals {
        prometheus: value,
        ..ok(n)
    };
    assert!(
        d.tick(2.5, &with(10, None)).is_empty(),
        "no Prometheus data holds the step"
    );
    assert!(
        d.history
            .last()
            .unwrap()
            .reason
            .contains("prometheus at http://127.0.0.1:9090: no data yet")
    );
    assert_eq!(d.tick(3.0, &with(20, Some(0.99)))[0].kind, "step");
    let events = d.tick(3.5, &with(30, Some(0.5)));
    assert_eq!(
        events[0].kind, "rolled_back",
        "a failing query rolls back though probes pass"
    );
    assert!(
        d.history
            .last()
            .unwrap()
            .reason
            .contains("prometheus 0.500"),
        "{:?}",
        d.history
    );
    // Without probes or L4 samples (e.g. dsr), the query alone decides.
    let query = PrometheusQuery {
        address: "http://127.0.0.1:9090".into(),
        query: "x".into(),
    };
    let mut d = canary(Params {
        prometheus: Some(query),
        ..params()
    });
    d.tick(0.1, &Signals::default());
    let none = |v| Signals {
        prometheus: Some(v),
        ..Default::default()
    };
    assert_eq!(d.tick(2.5, &none(0.97))[0].kind, "step");
}

#[test]
fn params_problems_are_named() {
    let p = Params {
        increment: 0.0,
        initial_traffic: 120.0,
        rollback_threshold: 0.99,
        ..params()
    };
    let fields: Vec<&str> = p.problems().iter().map(|(f, _)| *f).collect();
    assert_eq!(
        fields,
        [
            "initial_traffic",
            "increment",
            "initial_traffic",
            "rollback_threshold"
        ]
    );
}

/// One rule: percentages 0–100; (0, 1] refused as ambiguous, quoting the text.
#[test]
fn thresholds_are_percentages_and_fractions_are_refused() {
    assert_eq!(threshold_rate(95.0, "95"), Ok(0.95));
    assert_eq!(threshold_rate(99.5, "99.5"), Ok(0.995));
    assert_eq!(threshold_rate(0.0, "0"), Ok(0.0));
    assert_eq!(threshold_rate(100.0, "100"), Ok(1.0));
    assert_eq!(
        threshold_rate(1.0, "1.0").unwrap_err(),
        "'1.0' reads like a fraction; thresholds are percentages from 0 to 100 (write 100 for 100 %), and values above 0 up to 1 are refused as ambiguous"
    );
    assert!(
        threshold_rate(0.95, "0.950")
            .unwrap_err()
            .starts_with("'0.950' reads like a fraction; thresholds are percentages from 0 to 100 (write 95 for 95 %)")
    );
    assert_eq!(
        threshold_rate(150.0, "150").unwrap_err(),
        "'150' is not a percentage from 0 to 100"
    );
    assert!(threshold_rate(f64::NAN, "nan").is_err());
}

/// A state file from before the audit trail has steps without `actor`: they read as
/// the agent's own, and are written back with it.
#[test]
fn an_old_record_without_actor_reads_as_agent_and_round_trips() {
    let mut d = canary(params());
    d.tick(3.0, &ok(10));
    let mut old = serde_json::to_value(&d).unwrap();
    for step in old["history"].as_array_mut().unwrap() {
        step.as_object_mut().unwrap().remove("actor");
    }
    let read: Deployment = serde_json::from_value(old).unwrap();
    assert!(!read.history.is_empty());
    assert!(read.history.iter().all(|s| s.actor == Actor::Agent));
    let written = serde_json::to_value(&read).unwrap();
    assert_eq!(written["history"][0]["actor"], "agent");
    assert_eq!(serde_json::from_value::<Deployment>(written).unwrap(), read);
}
