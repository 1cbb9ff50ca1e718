//! The announcements in `/metrics`: `keystone_vip_announced{address}`,
//! `keystone_bgp_session_up{session}` and `keystone_bgp_configure_errors_total`.

use std::sync::Arc;

use prometheus::{
    IntGaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use super::Announcer;

/// Reads the announcer's status at every scrape.
pub struct AnnounceCollector {
    announcer: Arc<Announcer>,
    descs: Vec<Desc>,
}

fn families() -> (IntGaugeVec, IntGaugeVec) {
    let gauge = |name: &str, help: &str, label: &str| {
        IntGaugeVec::new(Opts::new(name, help), &[label])
            .expect("metric definitions are static and valid")
    };
    (
        gauge(
            "keystone_vip_announced",
            "1 while the VIP address is in the routes BIRD was last configured with; \
             `status` says why (or why not).",
            "address",
        ),
        gauge(
            "keystone_bgp_session_up",
            "1 while BIRD's BGP protocol is Established, 0 otherwise.",
            "session",
        ),
    )
}

impl AnnounceCollector {
    pub fn new(announcer: Arc<Announcer>) -> AnnounceCollector {
        let (announced, sessions) = families();
        let descs = [
            announced.desc(),
            sessions.desc(),
            announcer.configure_errors().desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        AnnounceCollector { announcer, descs }
    }
}

impl Collector for AnnounceCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (announced, sessions) = families();
        let status = self.announcer.status();
        for vip in &status.vips {
            announced
                .with_label_values(&[vip.address.as_str()])
                .set(i64::from(vip.announced));
        }
        for s in &status.sessions {
            sessions
                .with_label_values(&[s.name.as_str()])
                .set(i64::from(s.state == "Established"));
        }
        [
            announced.collect(),
            sessions.collect(),
            self.announcer.configure_errors().collect(),
        ]
        .concat()
    }
}
