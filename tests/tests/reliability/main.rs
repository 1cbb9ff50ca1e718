//! Reliability in the namespace lab, with real traffic through real XDP and the real
//! agent. Run them with `cargo xtask test`.
//!
//! * Hitless agent restart and upgrade: while a client opens new connections without
//!   pause and holds keep-alive connections that echo fresh bytes every 100 ms, the
//!   agent is SIGKILLed and started again, or stopped with `--keep-forwarding` and
//!   replaced by a new agent process that swaps its freshly loaded program into the
//!   pinned XDP links. The client sees no failed connection and no broken or corrupted
//!   one; the kernel shows the same bpf_links and maps with a new program in them, and
//!   the held flows' connection-table entries unchanged.
//! * The admin API under load: 100 concurrent clients mix status reads and weight
//!   changes for 30 s; every answer is the one its request calls for (and one the
//!   OpenAPI document lists), and afterwards the kernel's live Maglev table is the one
//!   `keystone_common::maglev` builds for the last accepted write.
//!
//! Every test builds its own lab (unique names, removed on drop, also on panic) and
//! waits by polling with deadlines.
//!
//! One file per topic: `hitless`, `state`, `api_load`; what several share is here.

mod api_load;
mod hitless;
mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use keystone_agent::dataplane::{Hook, aya_dataplane::MAP_NAMES};
use keystone_api::DeployState;
use keystone_common::{
    Backend, Endpoint, FAMILY_IPV4, FlowKey, FlowState, PROTO_TCP, VipInfo, backend_flags,
    hash::ipv4_words,
    limits::ring::DEFAULT_RING_SIZE,
    maglev::{self, MaglevBackend},
    names,
};
use keystone_lab::{
    AgentConfig, Auth, ClientLoop, HealthCheck, Lab, Mode, Summary, VIP4,
    helpers::{
        BACKEND_PORT, Setup, assert_holds_unbroken, batches_after, hold_events, kill_agent,
        lab_with_agent, new_lab, stop_agent_cleanly, tcp_tenant, vip, web_lab,
    },
    lab::CLIENT4,
    ok,
};

/// Generous bounds for things that take a second or two.
const SHORT: Duration = Duration::from_secs(30);

fn open_pinned(lab: &Lab, name: &str) -> Map {
    let data = MapData::from_pin(lab.pin_dir().join(name))
        .unwrap_or_else(|e| panic!("opening the agent's pinned map {name}: {e}"));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("map {name}: {e}"))
}

/// The XDP program id each gateway interface runs (each must run one).
fn interface_programs(lab: &Lab) -> BTreeMap<String, u32> {
    ok(lab, "ip link show", lab.xdp_programs())
        .into_iter()
        .map(|(iface, id)| {
            let id = id.unwrap_or_else(|| panic!("{iface} runs no XDP program"));
            (iface, id)
        })
        .collect()
}
