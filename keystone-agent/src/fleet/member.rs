//! What each gateway publishes under `<prefix>/members/<id>` with its lease: the
//! revision it applied (its confirmation), its tables' and config's hashes, and its passive L4
//! counters per backend, which the leader sums for analysis.

use std::collections::BTreeMap;

use keystone_common::{Endpoint, L4Counters};
use serde::{Deserialize, Serialize};

use crate::dataplane::Counters;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberRecord {
    pub gateway_id: String,
    /// The revision of `<prefix>/state` whose desired state is in this gateway's maps.
    pub applied_revision: i64,
    /// Per tenant: the hash of the live table.
    pub table_hashes: BTreeMap<String, String>,
    /// Per tenant: the hash of this gateway's config of it (its config generation).
    pub config_hashes: BTreeMap<String, String>,
    /// Passive TCP counters per (VIP, backend), since this gateway's agent started.
    pub backend_l4: Vec<BackendL4>,
}

/// An `Endpoint` as its raw fields: (address words, port, protocol, family).
type RawEndpoint = ([u32; 4], u16, u8, u8);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendL4 {
    pub vip: RawEndpoint,
    pub backend: RawEndpoint,
    pub syn: u64,
    pub established: u64,
}

fn raw(e: &Endpoint) -> RawEndpoint {
    (e.addr, e.port, e.proto, e.family)
}

fn endpoint((addr, port, proto, family): RawEndpoint) -> Endpoint {
    Endpoint {
        addr,
        port,
        proto,
        family,
    }
}

impl BackendL4 {
    pub fn of(counters: &Counters) -> Vec<BackendL4> {
        counters
            .backend_l4
            .iter()
            .map(|(vip, backend, l4)| BackendL4 {
                vip: raw(vip),
                backend: raw(backend),
                syn: l4.syn,
                established: l4.established,
            })
            .collect()
    }
}

/// The fleet's passive counters: every member's summed per (VIP, backend), so a
/// canary failing on one gateway's traffic fails for all.
pub fn summed<'a>(members: impl IntoIterator<Item = &'a MemberRecord>) -> Counters {
    let mut sums: BTreeMap<(RawEndpoint, RawEndpoint), (u64, u64)> = BTreeMap::new();
    for b in members.into_iter().flat_map(|m| &m.backend_l4) {
        let sum = sums.entry((b.vip, b.backend)).or_default();
        sum.0 += b.syn;
        sum.1 += b.established;
    }
    let backend_l4 = sums
        .into_iter()
        .map(|((vip, backend), (syn, established))| {
            let l4 = L4Counters {
                syn,
                established,
                ..Default::default()
            };
            (endpoint(vip), endpoint(backend), l4)
        })
        .collect();
    Counters {
        backend_l4,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint::new(
            std::net::SocketAddr::from(([198, 18, 10, 2], port)),
            keystone_common::PROTO_TCP,
        )
    }

    fn member(syn: u64, established: u64) -> MemberRecord {
        let l4 = L4Counters {
            syn,
            established,
            ..Default::default()
        };
        let counters = Counters {
            backend_l4: vec![(endpoint(80), endpoint(8080), l4)],
            ..Default::default()
        };
        MemberRecord {
            backend_l4: BackendL4::of(&counters),
            ..Default::default()
        }
    }

    /// A canary failing on one gateway's traffic shows in the fleet's sum.
    #[test]
    fn every_members_counters_are_summed_per_backend() {
        let healthy = member(100, 100);
        let failing = member(100, 10);
        // Through JSON, as the leader reads them from etcd.
        let read: MemberRecord =
            serde_json::from_str(&serde_json::to_string(&failing).unwrap()).unwrap();
        let sum = summed([&healthy, &read]);
        assert_eq!(sum.backend_l4.len(), 1);
        let (vip, backend, l4) = sum.backend_l4[0];
        assert_eq!((vip, backend), (endpoint(80), endpoint(8080)));
        assert_eq!((l4.syn, l4.established), (200, 110));
    }
}
