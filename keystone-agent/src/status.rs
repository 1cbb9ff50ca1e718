//! The status views: `GET /tenants` ([`tenant_views`]) and `GET /status`
//! ([`status`]), and the counter samples behind the live traffic share (the
//! `samples` lock, a leaf).

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use keystone_api::{
    BackendIdentity, BackendStatus, Status, Tenant, TenantAbout, TenantBackend, TenantStatus,
};
use keystone_common::{Endpoint, Reason, TrafficCounters, xdp_action_name};

use crate::{
    config::{LoadedConfig, ProtocolNumber, ResolvedService, ResolvedTenant},
    dataplane::{Counters, problems::problems},
    health::{HealthChecker, HealthState},
    live::Snapshot,
    outcome::TrafficSource,
    persist::PersistStatus,
    reconcile::weights_of,
    store::PersistedState,
};

/// How far back the "live" traffic share looks.
pub const TRAFFIC_WINDOW: Duration = Duration::from_secs(10);

/// Counter samples, oldest first, covering about `TRAFFIC_WINDOW`.
#[derive(Default)]
pub struct TrafficSamples {
    samples: Mutex<VecDeque<(Instant, Counters)>>,
}

impl TrafficSamples {
    /// Records a counter sample; logs a problem when it starts (the previous second
    /// did not show it).
    pub fn record(&self, counters: Counters) {
        let now = Instant::now();
        let mut samples = self.samples.lock().expect("samples lock poisoned");
        let last = samples.back().map(|(_, c)| c);
        let earlier = samples.len().checked_sub(2).and_then(|i| samples.get(i));
        if let Some(last) = last {
            let ongoing = problems(last, earlier.map(|(_, c)| c));
            for p in problems(&counters, Some(last)) {
                if !ongoing.iter().any(|o| o.kind == p.kind) {
                    tracing::warn!(problem = p.kind, "{}", p.message);
                }
            }
        }
        samples.push_back((now, counters));
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= TRAFFIC_WINDOW)
        {
            samples.pop_front();
        }
    }

    fn oldest(&self) -> Option<(Instant, Counters)> {
        self.samples
            .lock()
            .expect("samples lock poisoned")
            .front()
            .cloned()
    }
}

/// Every tenant of `config` with its backends' effective weights and health.
pub fn tenant_views(
    config: &LoadedConfig,
    runtime: &PersistedState,
    health: &HealthChecker,
) -> Vec<Tenant> {
    config
        .tenants
        .iter()
        .map(|t| {
            let weights = weights_of(t, runtime);
            let total: u64 = weights.iter().map(|w| *w as u64).sum();
            Tenant {
                about: TenantAbout {
                    name: t.name.clone(),
                    vip: t.vip.to_string(),
                    protocol: t.protocol,
                    mode: t.mode,
                    strategy: t.strategy,
                    active_environment: t.active_environment.clone(),
                    traffic_source: TrafficSource::of(runtime, &t.name).into(),
                    deployment_id: runtime
                        .deployments
                        .iter()
                        .rev()
                        .find(|d| d.tenant == t.name && d.state.is_running())
                        .map(|d| d.id.clone()),
                },
                backends: t
                    .services
                    .iter()
                    .zip(&weights)
                    .map(|(s, w)| TenantBackend {
                        identity: BackendIdentity {
                            name: s.name.clone(),
                            address: s.address.to_string(),
                            environment: s.environment.clone(),
                            version: s.version.clone(),
                            health: health
                                .get(&t.name, &s.name)
                                .map_or(HealthState::Unknown, |h| h.state)
                                .into(),
                            health_local_error: health.local_error(&t.name, &s.name),
                        },
                        configured_weight: s.weight,
                        effective_weight: *w,
                        traffic_percent: percent(*w as u64, total),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Counters now and at the start of the traffic window (with its age).
struct Window<'a> {
    now: &'a Counters,
    then: Option<(Duration, &'a Counters)>,
}

/// Everything `keystone-ctl status` shows: `views` are [`tenant_views`] of
/// `live.config`, `now` the counters just read.
pub fn status(
    live: &Snapshot,
    views: Vec<Tenant>,
    now: &Counters,
    samples: &TrafficSamples,
    persistence: PersistStatus,
) -> Status {
    let oldest = samples.oldest();
    let window = Window {
        now,
        then: oldest.as_ref().map(|(t, c)| (t.elapsed(), c)),
    };
    let tenants = live
        .config
        .tenants
        .iter()
        .zip(views)
        .map(|(t, view)| tenant_status(t, view, &window))
        .collect();
    Status {
        problems: problems(now, window.then.map(|(_, c)| c))
            .into_iter()
            .map(Into::into)
            .collect(),
        config_path: live.config.path.display().to_string(),
        config_generation: live.generation,
        config_loaded_at: humantime::format_rfc3339_seconds(live.loaded_at).to_string(),
        traffic_window_seconds: window.then.map(|(d, _)| d.as_secs_f64()).unwrap_or(0.0),
        tenants,
        persistence: persistence.into(),
        xdp_actions: now
            .actions
            .iter()
            .enumerate()
            .map(|(i, &n)| (xdp_action_name(i as u32).to_owned(), n))
            .collect(),
        packet_reasons: Reason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), now.reasons[*r as usize]))
            .collect(),
        // The agent adds its fleet's view (see `Agent::status`).
        fleet: None,
        // Filled in by the agent, which owns the announcer.
        announce: None,
    }
}

fn tenant_status(t: &ResolvedTenant, view: Tenant, window: &Window) -> TenantStatus {
    let vip = t.vip_endpoint();
    let mut backends: Vec<BackendStatus> = t
        .services
        .iter()
        .zip(view.backends)
        .map(|(s, backend)| backend_status(t, s, backend, window))
        .collect();
    let recent_total: u64 = backends.iter().map(|b| b.recent_new_connections).sum();
    for b in &mut backends {
        b.recent_traffic_percent = percent(b.recent_new_connections, recent_total);
    }
    let vip_counters = window
        .now
        .vips
        .iter()
        .find(|(v, _)| *v == vip)
        .map(|(_, c)| *c)
        .unwrap_or_default();
    TenantStatus {
        about: view.about,
        packets: vip_counters.packets,
        bytes: vip_counters.bytes,
        new_connections: vip_counters.new_flows,
        backends,
        table_hash: window
            .now
            .table_hashes
            .iter()
            .find(|(v, _)| *v == vip)
            .map(|(_, h)| h.to_string()),
    }
}

/// One backend's view and counters; `recent_traffic_percent` is filled in by the
/// tenant.
fn backend_status(
    t: &ResolvedTenant,
    s: &ResolvedService,
    backend: TenantBackend,
    window: &Window,
) -> BackendStatus {
    let vip = t.vip_endpoint();
    let endpoint = Endpoint::new(s.address, t.protocol.number());
    let total = find(&window.now.backends, &vip, &endpoint);
    let recent = window.then.map(|(_, then)| {
        total
            .new_flows
            .saturating_sub(find(&then.backends, &vip, &endpoint).new_flows)
    });
    let l4 = window
        .now
        .backend_l4
        .iter()
        .find(|(a, b, _)| *a == vip && *b == endpoint)
        .map(|(_, _, c)| *c)
        .unwrap_or_default();
    BackendStatus {
        backend,
        packets: total.packets,
        bytes: total.bytes,
        new_connections: total.new_flows,
        recent_new_connections: recent.unwrap_or(0),
        recent_traffic_percent: 0.0,
        tcp_syn: l4.syn,
        tcp_syn_ack: l4.syn_ack,
        tcp_rst: l4.rst,
        tcp_established: l4.established,
    }
}

fn find(
    list: &[(Endpoint, Endpoint, TrafficCounters)],
    vip: &Endpoint,
    backend: &Endpoint,
) -> TrafficCounters {
    list.iter()
        .find(|(v, b, _)| v == vip && b == backend)
        .map(|(_, _, c)| *c)
        .unwrap_or_default()
}

/// `part` of `total` in percent (0 of nothing).
fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}
