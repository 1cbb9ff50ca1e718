//! A `deployment_orchestration` block checked against the tenants and turned into
//! its phases: every problem at once, each naming its field (relative to the block)
//! and the services at fault. Pure; the config and the API report the same problems.

use std::collections::BTreeMap;

use keystone_api::{OnFailure, Orchestration, PlanStrategy};

/// One thing wrong with a plan: `field` is relative to the block (`dependencies[1]`).
#[derive(Clone, Debug, PartialEq)]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn error(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A phase: its name and services, in the order written.
pub type Phase = (String, Vec<String>);

/// `a → b` (or `a -> b`) as (a, b).
fn dependency(text: &str) -> Option<(&str, &str)> {
    let (a, b) = text.split_once('→').or_else(|| text.split_once("->"))?;
    let (a, b) = (a.trim(), b.trim());
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

/// The phases of `o`, whose services must be among `tenants`; or every problem.
pub fn phases(o: &Orchestration, tenants: &[&str]) -> Result<Vec<Phase>, Vec<SpecError>> {
    let mut problems = Vec::new();
    if let Some(PlanStrategy::Unknown) = o.strategy {
        problems.push(error(
            "strategy",
            "unknown plan strategy; expected coordinated_canary",
        ));
    }
    if let Some(OnFailure::Unknown) = o.on_failure {
        problems.push(error(
            "on_failure",
            "unknown failure policy; expected hold or rollback_all",
        ));
    }
    if o.services.is_empty() {
        problems.push(error("services", "lists no service"));
    }
    for (i, s) in o.services.iter().enumerate() {
        if !tenants.contains(&s.as_str()) {
            problems.push(error(
                format!("services[{i}]"),
                format!("'{s}' is not a tenant (tenants: {})", tenants.join(", ")),
            ));
        } else if o.services[..i].contains(s) {
            problems.push(error(
                format!("services[{i}]"),
                format!("'{s}' is listed twice"),
            ));
        }
    }
    let listed = |s: &str| o.services.iter().any(|x| x == s);
    let mut edges: Vec<(usize, &str, &str)> = Vec::new();
    for (i, text) in o.dependencies.iter().enumerate() {
        let field = format!("dependencies[{i}]");
        let Some((a, b)) = dependency(text) else {
            problems.push(error(field, format!("'{text}' is not `service → service`")));
            continue;
        };
        let unknown: Vec<&str> = [a, b].into_iter().filter(|s| !listed(s)).collect();
        if !unknown.is_empty() {
            problems.push(error(
                field,
                format!("'{}' not in services", unknown.join("', '")),
            ));
        } else if a == b {
            problems.push(error(field, format!("'{a}' cannot depend on itself")));
        } else {
            edges.push((i, a, b));
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        problems.push(error(
            "dependencies",
            format!("form a cycle: {}", cycle.join(" → ")),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let phases = if o.rollout_plan.is_empty() {
        layered(&o.services, &edges)
    } else {
        written_phases(o, &edges).map_err(|mut p| {
            problems.append(&mut p);
            problems
        })?
    };
    Ok(phases)
}

/// The rollout_plan as written, checked: each listed service in exactly one phase,
/// every dependency's phase before its dependant's.
fn written_phases(
    o: &Orchestration,
    edges: &[(usize, &str, &str)],
) -> Result<Vec<Phase>, Vec<SpecError>> {
    let mut problems = Vec::new();
    let mut phases: Vec<Phase> = Vec::new();
    let mut phase_of: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (i, entry) in o.rollout_plan.iter().enumerate() {
        let mut entries = entry.iter();
        let (Some((name, services)), None) = (entries.next(), entries.next()) else {
            problems.push(error(
                format!("rollout_plan[{i}]"),
                "needs exactly one `phase_name: [services]`",
            ));
            continue;
        };
        let field = format!("rollout_plan[{i}].{name}");
        if services.is_empty() {
            problems.push(error(&field, "lists no service"));
        }
        for s in services {
            if !o.services.contains(s) {
                problems.push(error(&field, format!("'{s}' is not in services")));
            } else if let Some((_, other)) = phase_of.get(s.as_str()) {
                problems.push(error(&field, format!("'{s}' is already in {other}")));
            } else {
                phase_of.insert(s, (i, name));
            }
        }
        phases.push((name.clone(), services.clone()));
    }
    for (i, s) in o.services.iter().enumerate() {
        if !phase_of.contains_key(s.as_str()) {
            problems.push(error(
                format!("services[{i}]"),
                format!("'{s}' is in no phase of rollout_plan"),
            ));
        }
    }
    for (i, a, b) in edges {
        if let (Some((pa, na)), Some((pb, nb))) = (phase_of.get(a), phase_of.get(b))
            && pa >= pb
        {
            let reason = if pa == pb {
                format!("'{b}' depends on '{a}', so they cannot share {na}")
            } else {
                format!("'{b}' ({nb}) depends on '{a}' ({na}), so {nb} must come after {na}")
            };
            problems.push(error(format!("dependencies[{i}]"), reason));
        }
    }
    if problems.is_empty() {
        Ok(phases)
    } else {
        Err(problems)
    }
}

/// Phases from the dependencies alone: each service in the first phase after all it
/// depends on (`phase_1`, `phase_2` ...). `edges` has no cycle.
fn layered(services: &[String], edges: &[(usize, &str, &str)]) -> Vec<Phase> {
    let mut level: BTreeMap<&str, usize> = services.iter().map(|s| (s.as_str(), 0)).collect();
    // Longest path by relaxation: at most one pass per service settles it.
    for _ in 0..services.len() {
        for (_, a, b) in edges {
            let next = level[a] + 1;
            if level[b] < next {
                level.insert(b, next);
            }
        }
    }
    let depth = level.values().max().map_or(0, |m| m + 1);
    (0..depth)
        .map(|n| {
            let members = services
                .iter()
                .filter(|s| level[s.as_str()] == n)
                .cloned()
                .collect();
            (format!("phase_{}", n + 1), members)
        })
        .collect()
}

/// A cycle among the edges, as the services along it (first repeated at the end).
fn find_cycle<'a>(edges: &[(usize, &'a str, &'a str)]) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        node: &'a str,
        edges: &[(usize, &'a str, &'a str)],
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        if done.contains(&node) {
            return None;
        }
        path.push(node);
        for (_, _, next) in edges.iter().filter(|(_, from, _)| *from == node) {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.push(node);
        None
    }
    let mut done = Vec::new();
    edges
        .iter()
        .find_map(|(_, from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}
