//! A running deployment's step counter and the time to its next step, worked out
//! from its parameters and history (the agent's answer carries no schedule).

use std::time::Duration;

use keystone_api::{DeployState, Deployment, Step, Strategy};

use crate::render;

/// The percentages a deployment steps through, as the agent steps them: from the
/// first step by `increment` up to `max_traffic`, then 100 % when promoted.
pub fn plan(d: &Deployment) -> Option<Vec<f64>> {
    let p = &d.params;
    let (initial, increment) = (p.initial_traffic?, p.increment?);
    let max = p.max_traffic?.min(100.0);
    if increment <= 0.0 {
        return None;
    }
    // A switch's first step after validation is at least one increment.
    let first = match d.strategy {
        Strategy::BlueGreen => initial.max(increment),
        _ => initial,
    };
    let mut steps = Vec::new();
    let mut at = first.min(max);
    while at < max {
        steps.push(at);
        at = (at + increment).min(max);
    }
    steps.push(max);
    if max < 100.0 {
        steps.push(100.0);
    }
    Some(steps)
}

/// When the current step began (Unix seconds): the latest history entry that changed
/// the state or the percentage ("holding at" notes change neither).
fn step_began(history: &[Step]) -> Option<f64> {
    let mut began = None;
    let mut previous: Option<&Step> = None;
    for step in history {
        let changed = previous
            .is_none_or(|p| p.state != step.state || p.canary_percent != step.canary_percent);
        if changed {
            began = step.unix();
        }
        previous = Some(step);
    }
    began
}

/// "  step 3 of 6 (30%), next step in 12s" for a running deployment at `now` (Unix
/// seconds); None when it has finished or its parameters are not known.
pub fn line(d: &Deployment, now: f64) -> Option<String> {
    if !d.is_running() {
        return None;
    }
    if d.strategy == Strategy::BlueGreen && d.canary_percent <= 0.0 {
        return Some("  validating the idle side before switching".to_owned());
    }
    let plan = plan(d)?;
    let step = plan
        .iter()
        .position(|&p| p >= d.canary_percent - 1e-9)
        .map_or(plan.len(), |i| i + 1);
    let next = match d.state {
        DeployState::AwaitingApproval => {
            format!("awaiting approval (keystone-ctl canary promote {})", d.id)
        }
        DeployState::Paused => format!("paused (keystone-ctl canary resume {})", d.id),
        _ => {
            let due = step_began(&d.history)? + d.params.interval_seconds?;
            if due > now {
                let left = Duration::from_secs((due - now).ceil() as u64);
                format!("next step in {}", humantime::format_duration(left))
            } else {
                "next step when the analysis passes".to_owned()
            }
        }
    };
    Some(format!(
        "  step {step} of {} ({}), {next}",
        plan.len(),
        render::percent(d.canary_percent)
    ))
}

/// Now, as Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(
        strategy: &str,
        state: &str,
        percent: f64,
        params: serde_json::Value,
    ) -> Deployment {
        serde_json::from_value(json!({
            "id": "d-1", "strategy": strategy, "state": state, "canary_percent": percent,
            "params": params,
            "history": [
                {"at": "1970-01-01T00:00:00Z", "canary_percent": 10.0, "state": "progressing", "reason": "started"},
                {"at": "1970-01-01T00:00:30Z", "canary_percent": percent, "state": state, "reason": "step"},
                {"at": "1970-01-01T00:00:40Z", "canary_percent": percent, "state": state, "reason": "holding at"},
            ],
        }))
        .unwrap()
    }

    fn canary() -> serde_json::Value {
        json!({"initial_traffic": 10.0, "increment": 10.0, "max_traffic": 50.0, "interval_seconds": 30.0})
    }

    #[test]
    fn plans_step_like_the_agent() {
        let plan =
            |strategy, params| super::plan(&deployment(strategy, "progressing", 20.0, params));
        assert_eq!(
            plan("canary", canary()),
            Some(vec![10.0, 20.0, 30.0, 40.0, 50.0, 100.0])
        );
        assert_eq!(
            plan(
                "rolling",
                json!({"initial_traffic": 10.0, "increment": 30.0, "max_traffic": 100.0})
            ),
            Some(vec![10.0, 40.0, 70.0, 100.0])
        );
        assert_eq!(
            plan(
                "blue_green",
                json!({"initial_traffic": 100.0, "increment": 100.0, "max_traffic": 100.0})
            ),
            Some(vec![100.0]),
            "an instant switch is one step"
        );
        assert_eq!(
            plan(
                "blue_green",
                json!({"initial_traffic": 10.0, "increment": 25.0, "max_traffic": 100.0})
            ),
            Some(vec![25.0, 50.0, 75.0, 100.0])
        );
        assert_eq!(plan("canary", json!({"increment": 10.0})), None);
    }

    #[test]
    fn the_next_step_counts_from_the_last_change_not_a_holding_note() {
        let d = deployment("canary", "progressing", 20.0, canary());
        // The step to 20% began at 30 s; holding notes after it do not move the schedule.
        assert_eq!(
            line(&d, 45.0).unwrap(),
            "  step 2 of 6 (20%), next step in 15s"
        );
        assert_eq!(
            line(&d, 90.0).unwrap(),
            "  step 2 of 6 (20%), next step when the analysis passes"
        );
        let d = deployment("canary", "awaiting_approval", 50.0, canary());
        assert_eq!(
            line(&d, 45.0).unwrap(),
            "  step 5 of 6 (50%), awaiting approval (keystone-ctl canary promote d-1)"
        );
        assert_eq!(
            line(&deployment("canary", "completed", 100.0, canary()), 45.0),
            None
        );
        assert_eq!(
            line(
                &deployment("blue_green", "progressing", 0.0, canary()),
                45.0
            )
            .unwrap(),
            "  validating the idle side before switching"
        );
    }
}
