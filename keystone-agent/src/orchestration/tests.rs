//! The plan logic on its own: phases from the seed's block, the refusals, and a plan
//! moved over a fake engine (phase order, failure policies, abort).

use std::collections::BTreeMap;

use keystone_api::{
    DeployState, OnFailure, Orchestration, PhaseState, Plan, PlanRequest, PlanState,
};

use super::*;

const TENANTS: [&str; 4] = [
    "user-service",
    "product-service",
    "payment-service",
    "notification-service",
];

/// The seed's `deployment_orchestration` block, as written there.
const SEED: &str = r#"
services:
  - user-service
  - product-service
  - payment-service
  - notification-service
strategy: "coordinated_canary"
dependencies:
  - user-service → product-service
  - product-service → payment-service
rollout_plan:
  - phase_1: [user-service]
  - phase_2: [product-service, notification-service]
  - phase_3: [payment-service]
"#;

fn seed() -> Orchestration {
    serde_yaml::from_str(SEED).unwrap()
}

fn problems(o: &Orchestration) -> Vec<String> {
    phases(o, &TENANTS)
        .unwrap_err()
        .into_iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect()
}

#[test]
fn the_seeds_plan_reads_as_its_three_phases() {
    let phases = phases(&seed(), &TENANTS).unwrap();
    let names: Vec<(&str, Vec<&str>)> = phases
        .iter()
        .map(|(n, s)| (n.as_str(), s.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        names,
        [
            ("phase_1", vec!["user-service"]),
            ("phase_2", vec!["product-service", "notification-service"]),
            ("phase_3", vec!["payment-service"]),
        ]
    );
}

#[test]
fn without_a_rollout_plan_the_dependencies_make_the_phases() {
    let mut o = seed();
    o.rollout_plan.clear();
    o.dependencies
        .push("user-service -> notification-service".into());
    let phases = phases(&o, &TENANTS).unwrap();
    assert_eq!(
        phases,
        [
            ("phase_1".to_owned(), vec!["user-service".to_owned()]),
            (
                "phase_2".to_owned(),
                vec![
                    "product-service".to_owned(),
                    "notification-service".to_owned()
                ]
            ),
            ("phase_3".to_owned(), vec!["payment-service".to_owned()]),
        ]
    );
}

#[test]
fn a_cycle_is_refused_naming_its_services() {
    let mut o = seed();
    o.dependencies.push("payment-service → user-service".into());
    assert_eq!(
        problems(&o),
        [
            "dependencies: form a cycle: user-service → product-service → payment-service → user-service"
        ]
    );
}

#[test]
fn unknown_services_and_misplaced_phases_are_refused_by_field() {
    let mut o = seed();
    o.services.push("cart-service".into());
    o.dependencies.push("user-service → search-service".into());
    o.dependencies.push("user-service product-service".into());
    assert_eq!(
        problems(&o),
        [
            "services[4]: 'cart-service' is not a tenant (tenants: user-service, product-service, payment-service, notification-service)",
            "dependencies[2]: 'search-service' not in services",
            "dependencies[3]: 'user-service product-service' is not `service → service`",
        ]
    );

    let mut o = seed();
    o.rollout_plan.swap(0, 2);
    o.rollout_plan[1]
        .get_mut("phase_2")
        .unwrap()
        .push("user-service".into());
    o.on_failure = Some(OnFailure::Unknown);
    assert_eq!(
        problems(&o),
        ["on_failure: unknown failure policy; expected hold or rollback_all",]
    );
    o.on_failure = None;
    assert_eq!(
        problems(&o),
        [
            "rollout_plan[2].phase_1: 'user-service' is already in phase_2",
            "dependencies[0]: 'product-service' depends on 'user-service', so they cannot share phase_2",
            "dependencies[1]: 'payment-service' (phase_3) depends on 'product-service' (phase_2), so phase_3 must come after phase_2",
        ]
    );
}

/// Deployments by id, whose states the test sets; records what the plan asked.
#[derive(Default)]
struct FakeEngine {
    states: BTreeMap<String, DeployState>,
    started: Vec<String>,
    rolled_back: Vec<String>,
    aborted: Vec<String>,
    refuse: Option<String>,
}

impl Engine for FakeEngine {
    fn state(&self, id: &str) -> Option<(DeployState, String)> {
        self.states
            .get(id)
            .map(|s| (*s, "health checks failing".into()))
    }
    fn start_canary(&mut self, _: &Plan, service: &str, version: &str) -> Result<String, String> {
        if self.refuse.as_deref() == Some(service) {
            return Err("no such version".into());
        }
        let id = format!("{service}-{version}");
        self.states.insert(id.clone(), DeployState::Progressing);
        self.started.push(id.clone());
        Ok(id)
    }
    fn roll_back(&mut self, id: &str) -> Result<(), String> {
        self.states.insert(id.into(), DeployState::RolledBack);
        self.rolled_back.push(id.into());
        Ok(())
    }
    fn abort(&mut self, id: &str) -> Result<(), String> {
        self.states.insert(id.into(), DeployState::Aborted);
        self.aborted.push(id.into());
        Ok(())
    }
}

fn plan(on_failure: Option<OnFailure>) -> Plan {
    let mut o = seed();
    o.on_failure = on_failure;
    let req = PlanRequest {
        version: Some("v2".into()),
        ..Default::default()
    };
    new(start(&o, &req, &TENANTS).unwrap(), 1, 0.0)
}

fn complete(engine: &mut FakeEngine, ids: &[&str]) {
    for id in ids {
        engine.states.insert((*id).into(), DeployState::Completed);
    }
}

fn phase_states(plan: &Plan) -> Vec<PhaseState> {
    plan.phases.iter().map(|p| p.state).collect()
}

#[test]
fn a_phase_starts_only_when_the_one_before_completed() {
    let mut engine = FakeEngine::default();
    let mut p = plan(None);
    assert!(advance(&mut p, &mut engine, 1.0));
    assert_eq!(engine.started, ["user-service-v2"]);
    assert!(!advance(&mut p, &mut engine, 2.0), "nothing to do yet");
    assert_eq!(engine.started.len(), 1);

    complete(&mut engine, &["user-service-v2"]);
    advance(&mut p, &mut engine, 3.0);
    assert_eq!(
        engine.started,
        [
            "user-service-v2",
            "product-service-v2",
            "notification-service-v2"
        ]
    );
    // One of two done: phase 3 still waits.
    complete(&mut engine, &["product-service-v2"]);
    advance(&mut p, &mut engine, 4.0);
    assert_eq!(engine.started.len(), 3);
    complete(&mut engine, &["notification-service-v2"]);
    advance(&mut p, &mut engine, 5.0);
    assert_eq!(engine.started.last().unwrap(), "payment-service-v2");
    complete(&mut engine, &["payment-service-v2"]);
    advance(&mut p, &mut engine, 6.0);
    assert_eq!(p.state, PlanState::Completed);
    assert_eq!(p.last_reason(), Some("every phase completed"));
    assert!(p.finished_at.is_some());
    assert_eq!(engine.rolled_back, Vec::<String>::new());
}

#[test]
fn a_failed_phase_is_rolled_back_and_the_earlier_ones_hold() {
    let mut engine = FakeEngine::default();
    let mut p = plan(None);
    advance(&mut p, &mut engine, 1.0);
    complete(&mut engine, &["user-service-v2"]);
    advance(&mut p, &mut engine, 2.0);
    engine
        .states
        .insert("product-service-v2".into(), DeployState::RolledBack);
    advance(&mut p, &mut engine, 3.0);
    assert_eq!(p.state, PlanState::Held);
    assert_eq!(
        phase_states(&p),
        [
            PhaseState::Completed,
            PhaseState::RolledBack,
            PhaseState::Pending
        ]
    );
    // The other canary of the failed phase is rolled back; phase 1 keeps its version.
    assert_eq!(engine.rolled_back, ["notification-service-v2"]);
    assert_eq!(
        p.last_reason().unwrap(),
        "phase_2 failed: product-service's canary product-service-v2 rolled_back: health \
         checks failing; rolled back phase_2; phase_1 held (on_failure: hold)"
    );
    assert!(!advance(&mut p, &mut engine, 4.0), "a held plan stays held");
}

#[test]
fn rollback_all_rolls_back_the_earlier_phases_too() {
    let mut engine = FakeEngine::default();
    let mut p = plan(Some(OnFailure::RollbackAll));
    advance(&mut p, &mut engine, 1.0);
    complete(&mut engine, &["user-service-v2"]);
    advance(&mut p, &mut engine, 2.0);
    engine
        .states
        .insert("notification-service-v2".into(), DeployState::Aborted);
    advance(&mut p, &mut engine, 3.0);
    assert_eq!(p.state, PlanState::RolledBack);
    assert_eq!(
        phase_states(&p),
        [
            PhaseState::RolledBack,
            PhaseState::RolledBack,
            PhaseState::Pending
        ]
    );
    assert_eq!(
        engine.rolled_back,
        ["product-service-v2", "user-service-v2"]
    );
    assert!(
        p.last_reason()
            .unwrap()
            .ends_with("rolled back phase_2, phase_1 (on_failure: rollback_all)")
    );
}

#[test]
fn a_canary_that_cannot_start_fails_its_phase() {
    let mut engine = FakeEngine {
        refuse: Some("notification-service".into()),
        ..Default::default()
    };
    let mut p = plan(None);
    advance(&mut p, &mut engine, 1.0);
    complete(&mut engine, &["user-service-v2"]);
    advance(&mut p, &mut engine, 2.0);
    assert_eq!(p.state, PlanState::Held);
    assert_eq!(engine.rolled_back, ["product-service-v2"]);
    assert!(
        p.last_reason()
            .unwrap()
            .contains("cannot start notification-service's canary of v2: no such version"),
        "{:?}",
        p.last_reason()
    );
}

#[test]
fn abort_stops_the_running_phase_only() {
    let mut engine = FakeEngine::default();
    let mut p = plan(None);
    advance(&mut p, &mut engine, 1.0);
    complete(&mut engine, &["user-service-v2"]);
    advance(&mut p, &mut engine, 2.0);
    abort(&mut p, &mut engine, 3.0).unwrap();
    assert_eq!(p.state, PlanState::Aborted);
    assert_eq!(
        engine.aborted,
        ["notification-service-v2", "product-service-v2"]
    );
    assert_eq!(p.last_reason(), Some("aborted by operator in phase_2"));
    assert_eq!(
        abort(&mut p, &mut engine, 4.0).unwrap_err(),
        "cannot abort a plan that is aborted"
    );
}

#[test]
fn every_service_needs_a_version() {
    let req = PlanRequest {
        versions: [
            ("user-service".to_owned(), "v2".to_owned()),
            ("cart".to_owned(), "v1".to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    let errors: Vec<String> = start(&seed(), &req, &TENANTS)
        .err()
        .unwrap()
        .into_iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect();
    assert_eq!(
        errors,
        [
            "versions.cart: 'cart' is not a service of the plan",
            "versions.product-service: no version for 'product-service' (give `version` or `versions.product-service`)",
            "versions.payment-service: no version for 'payment-service' (give `version` or `versions.payment-service`)",
            "versions.notification-service: no version for 'notification-service' (give `version` or `versions.notification-service`)",
        ]
    );
}
