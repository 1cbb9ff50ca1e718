//! The reconciler: owns the data plane (its lock is the last one taken) and makes it
//! match the desired state, which [`desired`] computes without touching it.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    config::{LoadedConfig, ResolvedTenant},
    dataplane::{
        ApplyError, Counters, Dataplane, LoadError, MapAccessError, VipSpec, pins::PinWatch,
    },
    deploy::effective_weights,
    health::HealthChecker,
    store::PersistedState,
};

pub struct Reconciler {
    dataplane: Mutex<Box<dyn Dataplane>>,
    /// The data plane's pins, readable without its lock.
    pin_watch: Option<Arc<PinWatch>>,
}

impl Reconciler {
    pub fn new(dataplane: Box<dyn Dataplane>) -> Reconciler {
        let pin_watch = dataplane.pin_watch();
        Reconciler {
            dataplane: Mutex::new(dataplane),
            pin_watch,
        }
    }

    fn dataplane(&self) -> MutexGuard<'_, Box<dyn Dataplane>> {
        self.dataplane.lock().expect("dataplane lock poisoned")
    }

    /// Makes the data plane match `config`, the runtime's plans and health.
    pub fn reconcile(
        &self,
        config: &LoadedConfig,
        runtime: &PersistedState,
        health: &HealthChecker,
    ) -> Result<(), ApplyError> {
        let specs = desired(
            config,
            runtime,
            |tenant, service| health.is_up(tenant, service),
            crate::clock::unix_now(),
        );
        self.dataplane().apply(&specs)
    }

    pub fn counters(&self) -> Result<Counters, MapAccessError> {
        self.dataplane().counters()
    }

    /// Detaches the data plane (or leaves it forwarding); see `Dataplane::shutdown`.
    pub fn shutdown(&self, keep_forwarding: bool) -> Result<(), LoadError> {
        self.dataplane().shutdown(keep_forwarding)
    }

    /// See [`Dataplane::restore_pins`].
    pub fn restore_pins(&self) {
        self.dataplane().restore_pins();
    }

    pub fn pin_watch(&self) -> Option<&Arc<PinWatch>> {
        self.pin_watch.as_ref()
    }
}

/// The data plane's desired state: config weights overridden by the runtime's plans,
/// without the backends `is_up(tenant, service)` says are down or that a blue/green
/// switch drained by `now`.
pub fn desired(
    config: &LoadedConfig,
    runtime: &PersistedState,
    is_up: impl Fn(&str, &str) -> bool,
    now: f64,
) -> Vec<VipSpec> {
    config
        .tenants
        .iter()
        .map(|t| {
            let weights = weights_of(t, runtime);
            let latest = runtime
                .deployments
                .iter()
                .rev()
                .find(|d| d.tenant == t.name);
            t.vip_spec(
                |i, _| weights[i],
                |s| is_up(&t.name, &s.name) && !latest.is_some_and(|d| d.drained(&s.name, now)),
            )
        })
        .collect()
}

/// Effective weights of `tenant`'s services under the runtime's plan.
pub fn weights_of(tenant: &ResolvedTenant, runtime: &PersistedState) -> Vec<u32> {
    effective_weights(
        tenant,
        tenant.active_environment.as_deref(),
        runtime.plans.get(&tenant.name),
    )
}

/// Sends one empty UDP datagram to the discard port of every backend so the kernel
/// resolves its neighbour entry: `bpf_fib_lookup` only forwards to known
/// neighbours, and `dsr` packets cannot fall back to the kernel (their destination
/// is the VIP). Health checks keep entries fresh; this covers backends without one.
pub fn prime_neighbours(config: &LoadedConfig) {
    let mut addresses: Vec<std::net::IpAddr> = config
        .tenants
        .iter()
        .flat_map(|t| t.services.iter().map(|s| s.address.ip()))
        .collect();
    addresses.sort();
    addresses.dedup();
    for ip in addresses {
        let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let sent = std::net::UdpSocket::bind(bind).and_then(|socket| socket.send_to(&[], (ip, 9)));
        if let Err(e) = sent {
            tracing::debug!(%ip, error = %e, "cannot prime the neighbour entry");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use super::*;
    use crate::{
        config::Strategy,
        deploy::{DeployState, Deployment, Params, Start, TrafficPlan},
    };

    fn config(extra: &str) -> LoadedConfig {
        let text = format!(
            "interfaces: [eth0]
tenants:
  - name: web
    listen: 198.18.0.10:80
{extra}    services:
      - name: blue
        address: 198.18.11.2:8080
        weight: 90
        environment: blue
      - name: green
        address: 198.18.12.2:8080
        weight: 10
        environment: green
"
        );
        LoadedConfig::parse(Path::new("test.yaml"), &text).unwrap()
    }

    /// (backend, weight, up) of the one tenant's spec.
    fn backends(specs: &[VipSpec]) -> Vec<(String, u32, bool)> {
        assert_eq!(specs.len(), 1);
        specs[0]
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.weight, b.up))
            .collect()
    }

    fn all_up(_: &str, _: &str) -> bool {
        true
    }

    fn row(name: &str, weight: u32, up: bool) -> (String, u32, bool) {
        (name.to_owned(), weight, up)
    }

    #[test]
    fn without_plans_the_config_weights_are_desired() {
        let specs = desired(&config(""), &PersistedState::default(), all_up, 0.0);
        assert_eq!(specs[0].name, "web");
        assert_eq!(
            backends(&specs),
            [row("blue", 90, true), row("green", 10, true)]
        );
    }

    #[test]
    fn a_plan_overrides_the_config_weights() {
        let mut runtime = PersistedState::default();
        runtime.plans.insert(
            "web".into(),
            TrafficPlan::Manual {
                weights: BTreeMap::from([("green".to_owned(), 5)]),
                reason: None,
            },
        );
        let specs = desired(&config(""), &runtime, all_up, 0.0);
        assert_eq!(
            backends(&specs),
            [row("blue", 0, true), row("green", 5, true)]
        );
    }

    #[test]
    fn the_active_environment_takes_all_the_weight() {
        let config = config("    deployment_strategy: blue_green\n    active_environment: green\n");
        let specs = desired(&config, &PersistedState::default(), all_up, 0.0);
        let weights: Vec<u32> = backends(&specs).into_iter().map(|(_, w, _)| w).collect();
        assert!(weights[0] == 0 && weights[1] > 0, "{weights:?}");
    }

    #[test]
    fn a_backend_health_calls_down_is_not_up() {
        let is_up = |tenant: &str, service: &str| !(tenant == "web" && service == "green");
        let specs = desired(&config(""), &PersistedState::default(), is_up, 0.0);
        assert_eq!(
            backends(&specs),
            [row("blue", 90, true), row("green", 10, false)]
        );
    }

    #[test]
    fn a_finished_switch_drains_the_old_side_at_its_deadline() {
        let params = Params {
            drain_timeout_seconds: Some(30.0),
            ..Params::from_canary_config(None)
        };
        let mut d = Deployment::new(
            Start {
                tenant: "web".into(),
                strategy: Strategy::BlueGreen,
                version: None,
                stable: vec!["blue".into()],
                canary: vec!["green".into()],
                params,
                pipeline: None,
                from_environment: Some("blue".into()),
                to_environment: Some("green".into()),
            },
            1,
            1000.0,
            "started",
            crate::deploy::Actor::Agent,
        );
        d.state = DeployState::Completed;
        d.finished_unix = Some(1000.0);
        let runtime = PersistedState {
            deployments: vec![d],
            ..Default::default()
        };
        let config = config("");
        let up = |now| backends(&desired(&config, &runtime, all_up, now));
        assert_eq!(up(1029.0), [row("blue", 90, true), row("green", 10, true)]);
        assert_eq!(up(1030.0), [row("blue", 90, false), row("green", 10, true)]);
    }
}
