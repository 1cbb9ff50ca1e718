//! etcd writes per canary step: every put under the fleet's prefix from the canary's
//! start to the last gateway's confirmation of its last step, grouped by the step the
//! shared state was at, beside etcd's own `etcd_mvcc_put_total`; and the bytes of the
//! shared state at the end.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use keystone_api::DeployState;
use serde_json::Value;

use keystone_lab::fleet_etcd::{Fleet, PREFIX};

use super::{
    CANARY_STEPS, CANARY_TENANT, IDS, STEP_INTERVAL, WAIT, admin, call, etcd_http, member_of,
    watch::{Event, Watch, counter},
};
use crate::{
    bench::{live::Admin, table::Table},
    util,
};

/// How long a canary of [`CANARY_STEPS`] steps may take.
const CANARY_DEADLINE: Duration = Duration::from_secs(120);

/// The writes while the shared state showed one canary percentage.
#[derive(Default)]
struct Step {
    percent: f64,
    /// Puts of `<prefix>/state`.
    state: usize,
    /// Member records with a newer applied revision.
    confirmations: usize,
    /// Member records that only refresh counters.
    refreshes: usize,
}

pub struct Writes {
    steps: Vec<Step>,
    took: Duration,
    /// Puts under the prefix the watch saw, and `etcd_mvcc_put_total`'s rise.
    watched: usize,
    etcd_puts: Option<f64>,
    state_bytes: usize,
    member_bytes: Vec<usize>,
    db_in_use: Option<f64>,
}

fn metrics(etcd: &mut Admin) -> Result<String> {
    etcd.ok("GET", "/metrics", None)
}

pub fn measure(fleet: &Fleet, watch: &Watch) -> Result<Writes> {
    let mut etcd = etcd_http(fleet, 0)?;
    let mut starter = admin(fleet, 1)?;
    let mut follower = admin(fleet, 2)?;
    let before = counter(&metrics(&mut etcd)?, "etcd_mvcc_put_total");
    watch.collect(Duration::ZERO);
    let started = Instant::now();
    let body = format!(r#"{{"service":"{CANARY_TENANT}","version":"1.1.0"}}"#);
    let accepted = call(&mut starter, "POST", "/deployments/canary", Some(&body))?;
    let id = accepted["deployment_id"]
        .as_str()
        .or_else(|| accepted["id"].as_str())
        .with_context(|| format!("no deployment id in {accepted}"))?
        .to_owned();
    let mut events = Vec::new();
    loop {
        util::interrupted()?;
        events.extend(watch.collect(Duration::from_millis(200)));
        let d = call(&mut follower, "GET", &format!("/deployments/{id}"), None)?;
        let state: DeployState = serde_json::from_value(d["state"].clone())
            .with_context(|| format!("a deployment without a state: {d}"))?;
        if state == DeployState::Completed {
            break;
        }
        if !state.is_running() {
            bail!("the canary ended {state:?}: {d}");
        }
        if started.elapsed() > CANARY_DEADLINE {
            bail!("the canary did not complete within {CANARY_DEADLINE:?}: {d}");
        }
    }
    let last = events
        .iter()
        .filter(|e| e.key == format!("{PREFIX}/state"))
        .map(|e| e.revision)
        .max()
        .context("no state put during the canary")?;
    if confirmed_members(&events, last) < IDS.len() {
        watch.until("the last step's confirmations", WAIT, |e| {
            events.push(e.clone());
            (confirmed_members(&events, last) == IDS.len()).then_some(())
        })?;
    }
    let took = started.elapsed();
    let page = metrics(&mut etcd)?;
    let etcd_puts = counter(&page, "etcd_mvcc_put_total")
        .zip(before)
        .map(|(a, b)| a - b);
    let latest = |key: &str| {
        events
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map_or(0, |e| e.value.len())
    };
    Ok(Writes {
        steps: by_step(&events, &id),
        took,
        watched: events.iter().filter(|e| !e.deleted).count(),
        etcd_puts,
        state_bytes: latest(&format!("{PREFIX}/state")),
        member_bytes: IDS
            .iter()
            .map(|g| latest(&format!("{PREFIX}/members/{g}")))
            .collect(),
        db_in_use: counter(&page, "etcd_mvcc_db_total_size_in_use_in_bytes"),
    })
}

/// How many members have a record in `events` that confirms `revision`.
fn confirmed_members(events: &[Event], revision: i64) -> usize {
    let mut ids: Vec<&str> = events
        .iter()
        .filter_map(|e| {
            let id = member_of(&e.key)?;
            let (applied, _) = super::confirmation(&e.value, CANARY_TENANT)?;
            (applied >= revision).then_some(id)
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

/// Deployment `id`'s canary percentage in a state document.
fn percent_of(state: &[u8], id: &str) -> Option<f64> {
    let state: Value = serde_json::from_slice(state).ok()?;
    state["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["id"] == id)?["canary_percent"]
        .as_f64()
}

/// The puts of `events` grouped by the canary percentage the state last written
/// showed (puts before the first state write are not counted).
fn by_step(events: &[Event], id: &str) -> Vec<Step> {
    let state_key = format!("{PREFIX}/state");
    let mut steps: Vec<Step> = Vec::new();
    let mut applied: BTreeMap<&str, i64> = BTreeMap::new();
    for e in events.iter().filter(|e| !e.deleted) {
        if e.key == state_key {
            let percent = percent_of(&e.value, id).unwrap_or(f64::NAN);
            if steps.last().is_none_or(|s| s.percent != percent) {
                steps.push(Step {
                    percent,
                    ..Step::default()
                });
            }
            steps.last_mut().expect("pushed").state += 1;
            continue;
        }
        let Some(member) = member_of(&e.key) else {
            continue;
        };
        let Some((revision, _)) = super::confirmation(&e.value, CANARY_TENANT) else {
            continue;
        };
        let newer = applied
            .insert(member, revision)
            .is_none_or(|r| r < revision);
        if let Some(step) = steps.last_mut() {
            if newer {
                step.confirmations += 1;
            } else {
                step.refreshes += 1;
            }
        }
    }
    steps
}

pub fn print(w: &Writes) {
    let mut table = Table::new(&[
        "canary step",
        "state writes",
        "confirmations",
        "counter refreshes",
        "all writes",
    ]);
    let mut total = Step::default();
    for s in &w.steps {
        table.row(&[
            format!("{} %", s.percent),
            s.state.to_string(),
            s.confirmations.to_string(),
            s.refreshes.to_string(),
            (s.state + s.confirmations + s.refreshes).to_string(),
        ]);
        total.state += s.state;
        total.confirmations += s.confirmations;
        total.refreshes += s.refreshes;
    }
    println!(
        "\netcd writes during one canary of {CANARY_STEPS} steps, {STEP_INTERVAL} apart, {:.1} s from start to the last confirmation:",
        w.took.as_secs_f64()
    );
    table.print();
    let all = total.state + total.confirmations + total.refreshes;
    println!(
        "per step: {:.1} state writes, {:.1} confirmations, {:.1} counter refreshes ({:.1} writes)",
        total.state as f64 / CANARY_STEPS as f64,
        total.confirmations as f64 / CANARY_STEPS as f64,
        total.refreshes as f64 / CANARY_STEPS as f64,
        all as f64 / CANARY_STEPS as f64,
    );
    println!(
        "etcd_mvcc_put_total rose by {} (the watch saw {} puts under the prefix)",
        w.etcd_puts.map_or("n/a".into(), |p| format!("{p:.0}")),
        w.watched
    );
    println!(
        "shared state: {} bytes in {PREFIX}/state, member records {:?} bytes; etcd's db in use: {}",
        w.state_bytes,
        w.member_bytes,
        w.db_in_use
            .map_or("n/a".into(), |b| format!("{:.0} KiB", b / 1024.0))
    );
}
