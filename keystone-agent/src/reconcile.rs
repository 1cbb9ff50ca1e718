//! The reconciler: owns the data plane (its lock is the last one taken) and makes it
//! match the desired state, which [`desired`] computes without touching it.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    config::{LoadedConfig, ResolvedTenant},
    dataplane::{Counters, Dataplane, DataplaneError, VipSpec, pins::PinWatch},
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
    ) -> Result<(), DataplaneError> {
        let specs = desired(
            config,
            runtime,
            |tenant, service| health.is_up(tenant, service),
            crate::clock::unix_now(),
        );
        self.dataplane().apply(&specs)
    }

    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        self.dataplane().counters()
    }

    /// Detaches the data plane (or leaves it forwarding); see `Dataplane::shutdown`.
    pub fn shutdown(&self, keep_forwarding: bool) -> Result<(), DataplaneError> {
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
