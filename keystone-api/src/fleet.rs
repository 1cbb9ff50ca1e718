//! The `fleet` section of `GET /status`: this gateway's view of the fleet that shares
//! its desired state through etcd.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The header on every admin API answer of a gateway that cannot follow its fleet
/// (its `stale_reason`): the answer is its last applied state, which may be behind.
pub const STALE_HEADER: &str = "Keystone-Stale";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetStatus {
    /// This gateway's id.
    pub gateway_id: String,
    /// The etcd key prefix naming the fleet.
    pub prefix: String,
    /// The gateway that ticks deployments, if one holds the lease.
    pub leader: Option<String>,
    /// The revision of the fleet's desired state, as this gateway last saw it.
    pub revision: i64,
    /// The revision this gateway's maps hold.
    pub applied_revision: i64,
    /// True while this gateway cannot follow the fleet (etcd unreachable, data
    /// refused): it forwards its last applied state and refuses changes.
    pub stale: bool,
    pub stale_reason: Option<String>,
    /// One line per tenant whose config differs between live members (naming each
    /// member's hash); the leader does not advance its deployments until they match.
    pub config_mismatch: Vec<String>,
    /// Live members (their lease is held), this one included.
    pub members: Vec<FleetMember>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetMember {
    pub gateway_id: String,
    pub leader: bool,
    /// The revision of the desired state this member has applied and confirmed.
    pub applied_revision: i64,
    /// How many revisions it is behind `revision`.
    pub lag: i64,
    /// Per tenant, the hash of the live table it forwards with.
    pub table_hashes: BTreeMap<String, String>,
    /// Per tenant, the hash of its config of the tenant (its config generation).
    pub config_hashes: BTreeMap<String, String>,
}
