//! A fleet of gateways sharing one desired state through etcd (the `fleet:` block).
//!
//! Layout under the prefix (see `keys`): `format_version`, `state` (deployments,
//! plans and the id sequence as one JSON document, written with compare-and-swap on
//! its mod revision), `leader` and `members/<id>` (each under its gateway's lease).
//! Every gateway watches the prefix and applies each new state to its maps, then
//! confirms the revision in its member record; only the leader ticks deployments, and
//! only once every live member has confirmed the current revision.
//!
//! `Fleet` is the handle the rollout controller and the status views use; its calls
//! block (the caller is on the blocking pool) with a bounded timeout. `run` is the
//! background loop: lease, election, watch, member record. The view (`view`) is a
//! leaf lock, never held across an etcd call.

mod etcd;
mod flips;
mod generation;
mod keys;
mod member;
mod metrics;
mod replay;
mod run;

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use keystone_api::{FleetMember, FleetStatus};

pub use flips::FlipWaits;
pub use keys::FORMAT_VERSION;
pub use member::{BackendL4, MemberRecord, summed};
pub use metrics::FleetCollector;
pub use run::{Apply, run};

use crate::{
    config::{FleetConfig, LoadedConfig},
    dataplane::Counters,
    store::PersistedState,
};
use keys::Keys;

/// How long one etcd call may take before the change it serves is refused.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd ({endpoints}) did not answer: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error(
        "this gateway is not in step with the fleet ({reason}); changes are refused until it is"
    )]
    Stale { reason: String },
    /// The shared state moved on since this gateway read it: read again and retry.
    #[error("the fleet's state changed during the request; try again")]
    Conflict,
    #[error("the fleet's data in etcd is refused: {reason}")]
    Refused { reason: String },
    #[error("fleet.{field}: {reason}")]
    Setup { field: &'static str, reason: String },
}

/// What this gateway knows of the fleet; updated by `run` and by writes.
#[derive(Debug, Default)]
struct View {
    lease: Option<i64>,
    /// Last successful lease keep-alive.
    contact: Option<Instant>,
    /// The watch is established and synced.
    watching: bool,
    /// Why the state document is refused (unreadable, newer version), if it is.
    refused: Option<String>,
    /// Why the fleet's layout is refused (`format_version` of a newer agent), if it is.
    format_refused: Option<String>,
    leader: Option<String>,
    /// Mod revision of `<prefix>/state` as last seen (0: none yet).
    revision: i64,
    /// The revision in this gateway's maps.
    applied: i64,
    members: BTreeMap<String, MemberRecord>,
    /// Published with the member record.
    table_hashes: BTreeMap<String, String>,
    /// Per tenant, the hash of this gateway's config of it (see `generation`).
    config_hashes: BTreeMap<String, String>,
    backend_l4: Vec<BackendL4>,
}

pub struct Fleet {
    gateway_id: String,
    keys: Keys,
    endpoints: String,
    lease_ttl: Duration,
    client: etcd_client::Client,
    handle: tokio::runtime::Handle,
    view: Mutex<View>,
    /// Wakes `run` to publish the member record (a new revision was applied).
    publish: tokio::sync::Notify,
    /// Blue/green flips validated here that wait for etcd (see `rollout::flip`).
    flips: FlipWaits,
}

impl Fleet {
    /// Sets up the etcd client (TLS and credentials files are read here); etcd
    /// itself need not answer yet. Must run inside the tokio runtime.
    pub async fn connect(config: &FleetConfig) -> Result<Fleet, FleetError> {
        let gateway_id = match &config.gateway_id {
            Some(id) => id.clone(),
            None => etcd::hostname()?,
        };
        let client = etcd::client(config).await?;
        Ok(Fleet {
            gateway_id,
            keys: Keys::new(&config.prefix),
            endpoints: config.endpoints.join(","),
            lease_ttl: config.lease_ttl(),
            client,
            handle: tokio::runtime::Handle::current(),
            view: Mutex::new(View::default()),
            publish: tokio::sync::Notify::new(),
            flips: FlipWaits::new(),
        })
    }

    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    pub fn flips(&self) -> &FlipWaits {
        &self.flips
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().expect("fleet view lock poisoned")
    }

    /// Runs one etcd call from blocking code, bounded by [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, FleetError> {
        tokio::task::block_in_place(|| self.handle.block_on(run::bounded(self, fut)))
    }

    fn unreachable(&self, reason: String) -> FleetError {
        FleetError::Unreachable {
            endpoints: self.endpoints.clone(),
            reason,
        }
    }

    /// Why this gateway is not in step with the fleet, if it is not.
    pub fn stale_reason(&self) -> Option<String> {
        stale_reason(&self.view(), self.lease_ttl, &self.endpoints)
    }

    /// Writes `state` as the fleet's desired state if nobody wrote since the revision
    /// this gateway applied (compare-and-swap on the mod revision): `state` was built
    /// on that one. (Not on the newest revision seen: the watch may have seen one the
    /// runtime does not hold yet, and writing over it would lose that change.)
    /// Returns the new revision.
    pub fn write_state(&self, state: &PersistedState) -> Result<i64, FleetError> {
        if let Some(reason) = self.stale_reason() {
            return Err(FleetError::Stale { reason });
        }
        let base = self.view().applied;
        let key = self.keys.state();
        let value = serde_json::to_vec(state).expect("state serialises");
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, base)])
            .and_then([TxnOp::put(key, value, None)]);
        let mut client = self.client.clone();
        let response = self.call(async move { client.txn(txn).await })?;
        if !response.succeeded() {
            return Err(FleetError::Conflict);
        }
        let revision = response.header().map_or(0, |h| h.revision());
        let mut view = self.view();
        view.revision = view.revision.max(revision);
        drop(view);
        Ok(revision)
    }

    /// The fleet's desired state and its revision, read now (`None`: none yet).
    pub fn read_state(&self) -> Result<Option<(i64, PersistedState)>, FleetError> {
        let mut client = self.client.clone();
        let key = self.keys.state();
        let response = self.call(async move { client.get(key, None).await })?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let state = self.decode_state(kv.value())?;
        let revision = kv.mod_revision();
        let mut view = self.view();
        view.revision = view.revision.max(revision);
        Ok(Some((revision, state)))
    }

    /// The state document, or why it is refused (recorded in the view).
    fn decode_state(&self, bytes: &[u8]) -> Result<PersistedState, FleetError> {
        let decoded = serde_json::from_slice::<PersistedState>(bytes)
            .map_err(|e| {
                format!(
                    "{} is not a Keystone state document: {e}",
                    self.keys.state()
                )
            })
            .and_then(|state| {
                if state.version == crate::store::STATE_VERSION {
                    Ok(state)
                } else {
                    Err(format!(
                        "{} has state version {}; this agent understands {}",
                        self.keys.state(),
                        state.version,
                        crate::store::STATE_VERSION
                    ))
                }
            });
        decoded.map_err(|reason| {
            self.view().refused = Some(reason.clone());
            FleetError::Refused { reason }
        })
    }

    /// Records that this gateway's maps now hold `revision`, and confirms it.
    pub fn applied(&self, revision: i64) {
        let mut view = self.view();
        view.applied = view.applied.max(revision);
        view.revision = view.revision.max(revision);
        drop(view);
        self.publish.notify_one();
    }

    pub fn applied_revision(&self) -> i64 {
        self.view().applied
    }

    /// What the member record publishes besides the revision.
    pub fn set_local(&self, table_hashes: BTreeMap<String, String>, counters: Option<&Counters>) {
        let mut view = self.view();
        let changed = view.table_hashes != table_hashes;
        view.table_hashes = table_hashes;
        if let Some(counters) = counters {
            view.backend_l4 = BackendL4::of(counters);
        }
        drop(view);
        if changed {
            self.publish.notify_one();
        }
    }

    /// Publishes the config generation of `config` (a start, a reload).
    pub fn set_config(&self, config: &LoadedConfig) {
        let hashes = generation::config_hashes(config);
        let mut view = self.view();
        let changed = view.config_hashes != hashes;
        view.config_hashes = hashes;
        drop(view);
        if changed {
            self.publish.notify_one();
        }
    }

    /// Per tenant whose config differs between live members: why (a status line).
    /// The leader does not advance their deployments.
    pub fn config_mismatch(&self) -> BTreeMap<String, String> {
        config_mismatch(&self.view(), &self.gateway_id)
    }

    pub fn is_leader(&self) -> bool {
        let view = self.view();
        view.leader.as_deref() == Some(&self.gateway_id)
            && stale_reason(&view, self.lease_ttl, &self.endpoints).is_none()
    }

    /// The leader may tick deployments: it leads, is in step, and every live member
    /// has confirmed the current revision (a step is never done while one gateway
    /// still forwards the previous split).
    pub fn may_advance(&self) -> bool {
        if !self.is_leader() {
            return false;
        }
        let view = self.view();
        view.applied >= view.revision
            && view
                .members
                .values()
                .filter(|m| m.gateway_id != self.gateway_id)
                .all(|m| m.applied_revision >= view.revision)
    }

    /// Every live member's passive counters, summed (the leader's analysis input).
    pub fn fleet_counters(&self) -> Counters {
        let view = self.view();
        let own = MemberRecord {
            backend_l4: view.backend_l4.clone(),
            ..Default::default()
        };
        summed(
            view.members
                .values()
                .filter(|m| m.gateway_id != self.gateway_id)
                .chain([&own]),
        )
    }

    /// `status.fleet`.
    pub fn status(&self) -> FleetStatus {
        let view = self.view();
        let stale_reason = stale_reason(&view, self.lease_ttl, &self.endpoints);
        let mut members: Vec<FleetMember> = view
            .members
            .values()
            .map(|m| FleetMember {
                gateway_id: m.gateway_id.clone(),
                leader: view.leader.as_deref() == Some(&m.gateway_id),
                applied_revision: m.applied_revision,
                lag: (view.revision - m.applied_revision).max(0),
                table_hashes: m.table_hashes.clone(),
                config_hashes: m.config_hashes.clone(),
            })
            .collect();
        members.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
        FleetStatus {
            gateway_id: self.gateway_id.clone(),
            prefix: self.keys.prefix().to_owned(),
            leader: view.leader.clone(),
            revision: view.revision,
            applied_revision: view.applied,
            stale: stale_reason.is_some(),
            stale_reason,
            config_mismatch: config_mismatch(&view, &self.gateway_id)
                .into_values()
                .collect(),
            members,
        }
    }
}

/// The tenants whose config differs between this gateway (`own`, as it is now) and
/// the other live members (as last published).
fn config_mismatch(view: &View, own: &str) -> BTreeMap<String, String> {
    let others = view
        .members
        .values()
        .filter(|m| m.gateway_id != own)
        .map(|m| (m.gateway_id.as_str(), &m.config_hashes));
    generation::mismatches([(own, &view.config_hashes)].into_iter().chain(others))
}

/// Why a gateway with `view` is not in step, if it is not: refused data, no lease
/// kept alive within its TTL, or no watch.
fn stale_reason(view: &View, ttl: Duration, endpoints: &str) -> Option<String> {
    if let Some(reason) = view.format_refused.as_ref().or(view.refused.as_ref()) {
        return Some(format!("the fleet's data is refused: {reason}"));
    }
    match view.contact {
        None => return Some(format!("etcd ({endpoints}) has not answered yet")),
        Some(at) if at.elapsed() > ttl => {
            return Some(format!(
                "etcd ({endpoints}) has not answered for {}s (lease TTL {}s)",
                at.elapsed().as_secs(),
                ttl.as_secs()
            ));
        }
        Some(_) => {}
    }
    if !view.watching {
        return Some(format!(
            "the watch on etcd ({endpoints}) is not established"
        ));
    }
    None
}
