//! Prometheus metrics. Traffic counters are read from the kernel at scrape time by a
//! collector, so a scrape always sees the data plane's own numbers.

use std::sync::{Arc, Weak};

use keystone_common::{Endpoint, Event, Reason, xdp_action_name};
use prometheus::{
    GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::{
    agent::Agent, config::ProtocolNumber, deploy::DeployState,
    deploy_metrics::deployment_environment,
};
use keystone_api::HealthState;

const BACKEND_LABELS: [&str; 6] = [
    "tenant",
    "vip",
    "backend",
    "address",
    "version",
    "environment",
];

/// Reads the data plane's counters on every scrape.
struct DataplaneCollector {
    agent: Weak<Agent>,
    descs: Vec<Desc>,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are static and valid")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are static and valid")
}

struct Families {
    backend_packets: IntCounterVec,
    backend_bytes: IntCounterVec,
    backend_new: IntCounterVec,
    backend_weight: IntGaugeVec,
    backend_effective: GaugeVec,
    vip_packets: IntCounterVec,
    vip_bytes: IntCounterVec,
    vip_new: IntCounterVec,
    vip_table_hash: IntGaugeVec,
    backend_health: IntGaugeVec,
    tcp_syn: IntCounterVec,
    tcp_syn_ack: IntCounterVec,
    tcp_rst: IntCounterVec,
    tcp_established: IntCounterVec,
    canary_percent: GaugeVec,
    deployment_state: IntGaugeVec,
    actions: IntCounterVec,
    reasons: IntCounterVec,
    events: IntCounterVec,
    last_apply: GaugeVec,
    last_change: GaugeVec,
    generation: IntGauge,
}

impl Families {
    fn new() -> Families {
        Families {
            backend_packets: counter_vec(
                "keystone_backend_packets_total",
                "Packets forwarded to the backend by the XDP program.",
                &BACKEND_LABELS,
            ),
            backend_bytes: counter_vec(
                "keystone_backend_bytes_total",
                "Bytes (whole frames) forwarded to the backend by the XDP program.",
                &BACKEND_LABELS,
            ),
            backend_new: counter_vec(
                "keystone_backend_new_connections_total",
                "Flows newly pinned to the backend (new connections, or re-picked ones).",
                &BACKEND_LABELS,
            ),
            backend_weight: gauge_vec(
                "keystone_backend_weight",
                "The backend's weight as configured (the config's `weight`).",
                &BACKEND_LABELS,
            ),
            backend_effective: GaugeVec::new(
                Opts::new(
                    "keystone_backend_effective_weight_ratio",
                    "Share (0 to 1) of the VIP's new connections the live weights give the \
                     backend: the config's weights, a deployment's step, health and the API.",
                ),
                &BACKEND_LABELS,
            )
            .expect("metric definitions are static and valid"),
            backend_health: gauge_vec(
                "keystone_backend_health",
                "Health-check state: 1 up, 0 down, -1 unknown (no check configured or none finished).",
                &BACKEND_LABELS,
            ),
            tcp_syn: counter_vec(
                "keystone_backend_tcp_syn_total",
                "TCP connection attempts (SYNs, retransmits included) sent to the backend.",
                &BACKEND_LABELS,
            ),
            tcp_syn_ack: counter_vec(
                "keystone_backend_tcp_syn_ack_total",
                "Handshakes the backend answered with SYN-ACK (nat mode).",
                &BACKEND_LABELS,
            ),
            tcp_rst: counter_vec(
                "keystone_backend_tcp_rst_total",
                "Resets sent by the backend (nat mode).",
                &BACKEND_LABELS,
            ),
            tcp_established: counter_vec(
                "keystone_backend_tcp_established_total",
                "Handshakes completed: the client's ACK after its SYN and (nat mode) the backend's SYN-ACK.",
                &BACKEND_LABELS,
            ),
            canary_percent: GaugeVec::new(
                Opts::new(
                    "keystone_canary_traffic_percent",
                    "Share of new connections the tenant's latest deployment gives its new backends.",
                ),
                &["tenant", "service", "environment"],
            )
            .expect("metric definitions are static and valid"),
            deployment_state: gauge_vec(
                "keystone_deployment_state",
                "1 for the state the tenant's latest deployment is in, 0 for the others.",
                &["tenant", "service", "state"],
            ),
            vip_packets: counter_vec(
                "keystone_vip_packets_total",
                "Packets to the VIP.",
                &["tenant", "vip"],
            ),
            vip_bytes: counter_vec(
                "keystone_vip_bytes_total",
                "Bytes to the VIP.",
                &["tenant", "vip"],
            ),
            vip_new: counter_vec(
                "keystone_vip_new_connections_total",
                "New flows to the VIP.",
                &["tenant", "vip"],
            ),
            vip_table_hash: gauge_vec(
                "keystone_vip_table_hash_info",
                "Always 1; `hash` is the VIP's live Maglev table hash (as in `status`): \
                 equal on every gateway that sends new flows to the same backends.",
                &["tenant", "vip", "hash"],
            ),
            actions: counter_vec(
                "keystone_xdp_actions_total",
                "Packets by XDP verdict (all packets the program saw).",
                &["action"],
            ),
            reasons: counter_vec(
                "keystone_xdp_exceptions_total",
                "Packets that left the fast path, by reason (see keystone_common::Reason).",
                &["reason"],
            ),
            events: counter_vec(
                "keystone_xdp_events_total",
                "Forwarded packets worth counting, by event (see keystone_common::Event): \
                 untracked_mid_flow = TCP packets without SYN that found no connection-table \
                 entry (evicted from a full table, or tracked elsewhere) and were re-picked; \
                 icmp_to_backend = path-MTU ICMP errors delivered to a VIP flow's backend.",
                &["event"],
            ),
            last_apply: GaugeVec::new(
                Opts::new(
                    "keystone_dataplane_last_apply_seconds",
                    "Where the last change of a Maglev table spent its time, by phase: \
                     prepare (validation, allocation, backends), build (Maglev), write \
                     (the changed ring entries), flip (the VIPS write), finish (what \
                     follows the flip).",
                ),
                &["phase"],
            )
            .expect("metric definitions are static and valid"),
            last_change: GaugeVec::new(
                Opts::new(
                    "keystone_api_last_change_seconds",
                    "Where the last change through the admin API spent its time, by stage: \
                     queue (its turn among changes and a blocking thread), check (validation \
                     and locks), etcd (a fleet's write), save (state.json) and apply (the data \
                     plane), which overlap, commit (their wall time), answer (the view).",
                ),
                &["stage"],
            )
            .expect("metric definitions are static and valid"),
            generation: IntGauge::new(
                "keystone_config_generation",
                "Number of the live config (1 at start, +1 per reload).",
            )
            .expect("metric definitions are static and valid"),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 22] {
        [
            &self.backend_packets,
            &self.backend_bytes,
            &self.backend_new,
            &self.backend_weight,
            &self.backend_effective,
            &self.backend_health,
            &self.tcp_syn,
            &self.tcp_syn_ack,
            &self.tcp_rst,
            &self.tcp_established,
            &self.canary_percent,
            &self.deployment_state,
            &self.vip_packets,
            &self.vip_bytes,
            &self.vip_new,
            &self.vip_table_hash,
            &self.actions,
            &self.reasons,
            &self.events,
            &self.last_apply,
            &self.last_change,
            &self.generation,
        ]
    }
}

impl Collector for DataplaneCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(agent) = self.agent.upgrade() else {
            return Vec::new();
        };
        let counters = match agent.counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read data-plane counters for metrics");
                return Vec::new();
            }
        };
        let f = Families::new();
        let config = agent.config();
        let views = agent.tenants();
        for (t, view) in config.tenants.iter().zip(&views) {
            let vip = t.vip_endpoint();
            let vip_text = t.vip.to_string();
            if let Some((_, c)) = counters.vips.iter().find(|(v, _)| *v == vip) {
                let labels = [t.name.as_str(), vip_text.as_str()];
                f.vip_packets.with_label_values(&labels).inc_by(c.packets);
                f.vip_bytes.with_label_values(&labels).inc_by(c.bytes);
                f.vip_new.with_label_values(&labels).inc_by(c.new_flows);
            }
            if let Some((_, hash)) = counters.table_hashes.iter().find(|(v, _)| *v == vip) {
                let hash = hash.to_string();
                f.vip_table_hash
                    .with_label_values(&[t.name.as_str(), vip_text.as_str(), hash.as_str()])
                    .set(1);
            }
            for (s, b) in t.services.iter().zip(&view.backends) {
                let address = s.address.to_string();
                let labels = [
                    t.name.as_str(),
                    vip_text.as_str(),
                    s.name.as_str(),
                    address.as_str(),
                    s.version.as_str(),
                    s.environment.as_deref().unwrap_or(""),
                ];
                f.backend_weight
                    .with_label_values(&labels)
                    .set(b.configured_weight as i64);
                f.backend_effective
                    .with_label_values(&labels)
                    .set(b.traffic_percent / 100.0);
                f.backend_health
                    .with_label_values(&labels)
                    .set(match b.identity.health {
                        HealthState::Up => 1,
                        HealthState::Down => 0,
                        HealthState::Unknown => -1,
                    });
                let endpoint = Endpoint::new(s.address, t.protocol.number());
                if let Some((_, _, c)) = counters
                    .backends
                    .iter()
                    .find(|(v, b, _)| *v == vip && *b == endpoint)
                {
                    f.backend_packets
                        .with_label_values(&labels)
                        .inc_by(c.packets);
                    f.backend_bytes.with_label_values(&labels).inc_by(c.bytes);
                    f.backend_new.with_label_values(&labels).inc_by(c.new_flows);
                }
                if let Some((_, _, l4)) = counters
                    .backend_l4
                    .iter()
                    .find(|(v, b, _)| *v == vip && *b == endpoint)
                {
                    f.tcp_syn.with_label_values(&labels).inc_by(l4.syn);
                    f.tcp_syn_ack.with_label_values(&labels).inc_by(l4.syn_ack);
                    f.tcp_rst.with_label_values(&labels).inc_by(l4.rst);
                    f.tcp_established
                        .with_label_values(&labels)
                        .inc_by(l4.established);
                }
            }
        }
        // The latest deployment per tenant sets its canary percentage.
        let mut seen = Vec::new();
        for d in agent.deployments() {
            if seen.contains(&d.tenant) {
                continue;
            }
            let percent = if d.state == DeployState::Completed {
                100.0
            } else {
                d.canary_percent
            };
            let tenant = d.tenant.as_str();
            f.canary_percent
                .with_label_values(&[tenant, tenant, deployment_environment(&d)])
                .set(percent);
            for &state in DeployState::ALL {
                f.deployment_state
                    .with_label_values(&[tenant, tenant, state.name()])
                    .set(i64::from(state == d.state));
            }
            seen.push(d.tenant);
        }
        for (action, &n) in counters.actions.iter().enumerate() {
            f.actions
                .with_label_values(&[xdp_action_name(action as u32)])
                .inc_by(n);
        }
        for reason in Reason::ALL {
            f.reasons
                .with_label_values(&[reason.name()])
                .inc_by(counters.reasons[reason as usize]);
        }
        for event in Event::ALL {
            f.events
                .with_label_values(&[event.name()])
                .inc_by(counters.events[event as usize]);
        }
        if let Some(t) = counters.last_apply {
            for (phase, d) in [
                ("prepare", t.prepare),
                ("build", t.build),
                ("write", t.write),
                ("flip", t.flip),
                ("finish", t.finish),
            ] {
                f.last_apply
                    .with_label_values(&[phase])
                    .set(d.as_secs_f64());
            }
        }
        for (stage, d) in agent.last_change() {
            f.last_change
                .with_label_values(&[stage])
                .set(d.as_secs_f64());
        }
        f.generation.set(agent.generation() as i64);
        f.collectors()
            .iter()
            .chain(agent.deploy_metrics.collectors().iter())
            .flat_map(|c| c.collect())
            .collect()
    }
}

/// The agent's registry; subsystems register their own metrics on it.
pub fn registry(agent: &Arc<Agent>) -> Registry {
    let registry = Registry::new();
    let families = Families::new();
    let descs = families
        .collectors()
        .iter()
        .chain(agent.deploy_metrics.collectors().iter())
        .flat_map(|c| c.desc())
        .cloned()
        .collect();
    registry
        .register(Box::new(DataplaneCollector {
            agent: Arc::downgrade(agent),
            descs,
        }))
        .expect("the data-plane collector is registered once");
    registry
        .register(Box::new(agent.persistence().metric().clone()))
        .expect("the state-write counter is registered once");
    registry
        .register(Box::new(agent.health().local_error_metric()))
        .expect("the health checker's metrics are registered once");
    registry
        .register(Box::new(crate::announce::AnnounceCollector::new(
            agent.announcer().clone(),
        )))
        .expect("the announcement metrics are registered once");
    registry
        .register(Box::new(build_info()))
        .expect("keystone_build_info is registered once");
    if let Some(fleet) = agent.fleet() {
        registry
            .register(Box::new(crate::fleet::FleetCollector::new(fleet.clone())))
            .expect("the fleet's metrics are registered once");
    }
    registry
}

/// `keystone_build_info{version,commit} 1`: which build runs, for dashboards and alerts.
fn build_info() -> IntGaugeVec {
    let info = gauge_vec(
        "keystone_build_info",
        "Always 1; the labels say which build of the agent is running.",
        &["version", "commit"],
    );
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), crate::GIT_COMMIT])
        .set(1);
    info
}

/// The text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}
