//! The coordinated plan the lab tests run (`tests/plans.rs` on one gateway,
//! `tests/fleet_rollouts.rs` on a fleet): the seed's three services with one
//! dependency, and what its outcomes look like.

use keystone_api::{PhaseState, Plan, PlanState};

/// The three tenants: name, VIP port, old backend (taking every connection), new
/// backend, and the new one's `labels.version` (the lab derives it from its place:
/// 1.<index-1>.0).
pub const TENANTS: [(&str, u16, &str, &str, &str); 3] = [
    ("user-service", 81, "u1", "u2", "1.1.0"),
    ("product-service", 82, "p1", "p2", "1.3.0"),
    ("payment-service", 83, "y1", "y2", "1.5.0"),
];

/// examples/plans/three-services.yaml: user-service → product-service, three phases.
pub const ORCHESTRATION: &str = include_str!("../../examples/plans/three-services.yaml");

/// How many history entries of `plan` start with `prefix` (`"phase_2 started"`).
pub fn events(plan: &Plan, prefix: &str) -> usize {
    plan.history
        .iter()
        .filter(|e| e.reason.starts_with(prefix))
        .count()
}

/// `plan` ended held after its middle phase failed: phase 1 completed (and held),
/// phase 2 rolled back because product-service's canary failed, phase 3 never started.
pub fn assert_held_after_phase_2(plan: &Plan) {
    assert_eq!(plan.state, PlanState::Held, "{plan:#?}");
    let phases: Vec<PhaseState> = plan.phases.iter().map(|p| p.state).collect();
    assert_eq!(
        phases,
        [
            PhaseState::Completed,
            PhaseState::RolledBack,
            PhaseState::Pending
        ]
    );
    let reason = plan.last_reason().unwrap_or_default();
    assert!(
        reason.starts_with("phase_2 failed: product-service's canary")
            && reason.contains("rolled back phase_2; phase_1 held"),
        "{reason}"
    );
}
