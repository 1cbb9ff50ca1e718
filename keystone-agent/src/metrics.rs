//! Prometheus metrics. Traffic counters are read from the kernel at scrape time by a
//! collector, so a scrape always sees the data plane's own numbers.

use std::sync::{Arc, Weak};

use keystone_common::{Endpoint, Reason, xdp_action_name};
use prometheus::{
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::agent::Agent;

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
    vip_packets: IntCounterVec,
    vip_bytes: IntCounterVec,
    vip_new: IntCounterVec,
    actions: IntCounterVec,
    reasons: IntCounterVec,
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
                "The backend's configured weight for new connections.",
                &BACKEND_LABELS,
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
            generation: IntGauge::new(
                "keystone_config_generation",
                "Number of the live config (1 at start, +1 per reload).",
            )
            .expect("metric definitions are static and valid"),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 10] {
        [
            &self.backend_packets,
            &self.backend_bytes,
            &self.backend_new,
            &self.backend_weight,
            &self.vip_packets,
            &self.vip_bytes,
            &self.vip_new,
            &self.actions,
            &self.reasons,
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
        for t in &config.tenants {
            let vip = t.vip_endpoint();
            let vip_text = t.vip.to_string();
            if let Some((_, c)) = counters.vips.iter().find(|(v, _)| *v == vip) {
                let labels = [t.name.as_str(), vip_text.as_str()];
                f.vip_packets.with_label_values(&labels).inc_by(c.packets);
                f.vip_bytes.with_label_values(&labels).inc_by(c.bytes);
                f.vip_new.with_label_values(&labels).inc_by(c.new_flows);
            }
            for s in &t.services {
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
                    .set(s.weight as i64);
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
            }
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
        f.generation.set(agent.generation() as i64);
        f.collectors().iter().flat_map(|c| c.collect()).collect()
    }
}

/// The agent's registry; subsystems register their own metrics on it.
pub fn registry(agent: &Arc<Agent>) -> Registry {
    let registry = Registry::new();
    let families = Families::new();
    let descs = families
        .collectors()
        .iter()
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
}

/// The text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}
