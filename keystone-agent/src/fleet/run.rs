//! The fleet's background loop: one etcd session at a time (lease, format check,
//! sync, member record, election, watch), started again after any failure. While no
//! session is up the gateway forwards what it last applied and is stale.

use std::{sync::Arc, time::Instant};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::{sync::watch, time::Duration};

use super::{Fleet, FleetError, MemberRecord, keys::FORMAT_VERSION};
use crate::store::PersistedState;

/// Applies the fleet's desired state at a revision to this gateway (blocking; run on
/// the blocking pool). Given by the rollout controller.
pub type Apply = Arc<dyn Fn(i64, PersistedState) + Send + Sync>;

/// Pause before a new session after a failed one.
const RETRY: Duration = Duration::from_millis(500);
/// How often the member record is refreshed (counters) without a new revision.
const REFRESH: Duration = Duration::from_secs(1);

/// Runs sessions until `shutdown`; then gives the lease back so this gateway's
/// membership (and leadership) ends at once.
pub async fn run(fleet: Arc<Fleet>, apply: Apply, mut shutdown: watch::Receiver<bool>) {
    let mut previous_lease = None;
    loop {
        let result = tokio::select! {
            r = session(&fleet, &apply, &mut previous_lease) => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, gateway = %fleet.gateway_id, "fleet session ended; starting a new one");
        }
        fleet.view().watching = false;
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    let lease = fleet.view().lease.take();
    if let Some(lease) = lease {
        let mut client = fleet.client.clone();
        let _ = bounded(&fleet, client.lease_revoke(lease)).await;
    }
}

fn etcd(fleet: &Fleet) -> impl Fn(etcd_client::Error) -> FleetError + '_ {
    move |e| fleet.unreachable(e.to_string())
}

/// One etcd call, bounded by [`super::CALL_TIMEOUT`] (a cut-off etcd may never answer).
pub(super) async fn bounded<T>(
    fleet: &Fleet,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(super::CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(etcd(fleet)),
        Err(_) => Err(fleet.unreachable(format!("no answer within {:?}", super::CALL_TIMEOUT))),
    }
}

async fn session(
    fleet: &Arc<Fleet>,
    apply: &Apply,
    previous_lease: &mut Option<i64>,
) -> Result<(), FleetError> {
    let mut client = fleet.client.clone();
    let ttl = fleet.lease_ttl.as_secs() as i64;
    // One lease for as long as etcd keeps it: a session that failed (etcd down, the
    // watch cut) goes on with the same lease, so the keys it holds (`leader`, the
    // member record) stay under the lease this gateway keeps alive. (etcd renews
    // every lease when it restarts: a lease left behind would hold `leader` one
    // more TTL.) Only once it expired is a new one granted.
    let lease = match *previous_lease {
        Some(old)
            if bounded(fleet, client.lease_time_to_live(old, None))
                .await?
                .ttl()
                > 0 =>
        {
            old
        }
        _ => bounded(fleet, client.lease_grant(ttl, None)).await?.id(),
    };
    *previous_lease = Some(lease);
    {
        let mut view = fleet.view();
        view.lease = Some(lease);
        view.contact = Some(Instant::now());
    }
    check_format(fleet).await?;
    let (keeper, beats) = bounded(fleet, client.lease_keep_alive(lease)).await?;

    let all = fleet.keys.all();
    let synced = bounded(
        fleet,
        client.get(all.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let at = synced.header().map_or(0, |h| h.revision());
    fleet.view().members.clear();
    for kv in synced.kvs() {
        on_put(fleet, apply, kv).await;
    }
    if !synced
        .kvs()
        .iter()
        .any(|kv| kv.key() == fleet.keys.leader().as_bytes())
    {
        fleet.view().leader = None;
    }
    let watch = WatchOptions::new()
        .with_prefix()
        .with_start_revision(at + 1);
    let events = bounded(fleet, client.watch(all, Some(watch))).await?;
    publish(fleet, lease).await?;
    campaign(fleet, lease).await?;
    fleet.view().watching = true;

    // Side by side in this task: a new state waiting for the rollout controller's
    // lock (held across a write's etcd call, up to `CALL_TIMEOUT`) holds up the watch,
    // never the keep-alives.
    tokio::select! {
        r = keep_alive(fleet, keeper, beats) => r,
        r = follow(fleet, apply, lease, events) => r,
    }
}

/// Keeps this gateway's lease alive until etcd stops answering for the lease TTL.
async fn keep_alive(
    fleet: &Fleet,
    mut keeper: LeaseKeeper,
    mut beats: LeaseKeepAliveStream,
) -> Result<(), FleetError> {
    let err = etcd(fleet);
    let mut beat = tokio::time::interval(fleet.lease_ttl / 3);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                keeper.keep_alive().await.map_err(&err)?;
                let contact = fleet.view().contact;
                if contact.is_some_and(|at| at.elapsed() > fleet.lease_ttl) {
                    return Err(fleet.unreachable("lease keep-alives unanswered for the lease TTL".into()));
                }
            }
            beat = beats.message() => match beat.map_err(&err)? {
                Some(b) if b.ttl() > 0 => fleet.view().contact = Some(Instant::now()),
                Some(_) => return Err(fleet.unreachable("this gateway's lease expired".into())),
                None => return Err(fleet.unreachable("the keep-alive stream closed".into())),
            },
        }
    }
}

/// Applies every change the watch brings, campaigns when the leader goes, and
/// publishes the member record (on a new revision, and every [`REFRESH`]).
async fn follow(
    fleet: &Arc<Fleet>,
    apply: &Apply,
    lease: i64,
    mut events: WatchStream,
) -> Result<(), FleetError> {
    let err = etcd(fleet);
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            message = events.message() => {
                let Some(response) = message.map_err(&err)? else {
                    return Err(fleet.unreachable("the watch closed".into()));
                };
                if response.canceled() {
                    return Err(fleet.unreachable(format!("the watch was cancelled: {}", response.cancel_reason())));
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => on_put(fleet, apply, kv).await,
                        EventType::Delete => {
                            if on_delete(fleet, kv) {
                                campaign(fleet, lease).await?;
                            }
                        }
                    }
                }
            }
            _ = fleet.publish.notified() => publish(fleet, lease).await?,
            _ = refresh.tick() => publish(fleet, lease).await?,
        }
    }
}

/// Writes the format version if the fleet is new; refuses a fleet written in
/// another layout.
async fn check_format(fleet: &Fleet) -> Result<(), FleetError> {
    let mut client = fleet.client.clone();
    let key = fleet.keys.format_version();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), FORMAT_VERSION.to_string(), None)]);
    bounded(fleet, client.txn(txn)).await?;
    let found = bounded(fleet, client.get(key.clone(), None)).await?;
    let value = found.kvs().first().map_or(&[][..], |kv| kv.value());
    if let Some(reason) = format_refusal(&key, value) {
        fleet.view().format_refused = Some(reason.clone());
        return Err(FleetError::Refused { reason });
    }
    fleet.view().format_refused = None;
    Ok(())
}

/// Why a fleet whose `format_version` key holds `value` is refused, if it is.
fn format_refusal(key: &str, value: &[u8]) -> Option<String> {
    let value = String::from_utf8_lossy(value);
    let value = value.trim();
    match value.parse::<u32>() {
        Ok(FORMAT_VERSION) => None,
        Ok(v) if v > FORMAT_VERSION => Some(format!(
            "{key} is {v}: written by a newer Keystone; this agent understands {FORMAT_VERSION}"
        )),
        _ => Some(format!(
            "{key} is '{value}'; this agent understands {FORMAT_VERSION}"
        )),
    }
}

async fn on_put(fleet: &Arc<Fleet>, apply: &Apply, kv: &KeyValue) {
    let key = kv.key();
    if key == fleet.keys.format_version().as_bytes() {
        let refusal = format_refusal(&fleet.keys.format_version(), kv.value());
        if let Some(reason) = &refusal {
            tracing::error!(%reason, "fleet data refused; nothing more is applied");
        }
        fleet.view().format_refused = refusal;
    } else if key == fleet.keys.state().as_bytes() {
        if fleet.view().format_refused.is_some() {
            return;
        }
        let Ok(state) = fleet.decode_state(kv.value()) else {
            tracing::error!(key = %fleet.keys.state(), reason = ?fleet.view().refused, "fleet state refused; nothing applied");
            return;
        };
        let revision = kv.mod_revision();
        {
            let mut view = fleet.view();
            view.refused = None;
            view.revision = view.revision.max(revision);
            if revision <= view.applied {
                return;
            }
        }
        let apply = apply.clone();
        let _ = tokio::task::spawn_blocking(move || apply(revision, state)).await;
    } else if key == fleet.keys.leader().as_bytes() {
        fleet.view().leader = Some(String::from_utf8_lossy(kv.value()).into_owned());
    } else if let Some(id) = key.strip_prefix(fleet.keys.members().as_bytes()) {
        match serde_json::from_slice::<MemberRecord>(kv.value()) {
            Ok(record) => {
                let id = String::from_utf8_lossy(id).into_owned();
                fleet.view().members.insert(id, record);
            }
            Err(e) => {
                tracing::warn!(member = %String::from_utf8_lossy(id), error = %e, "unreadable member record ignored")
            }
        }
    }
}

/// Forgets a deleted key; true when it was the leader's (time to campaign).
fn on_delete(fleet: &Fleet, kv: &KeyValue) -> bool {
    let key = kv.key();
    if key == fleet.keys.leader().as_bytes() {
        fleet.view().leader = None;
        return true;
    }
    if let Some(id) = key.strip_prefix(fleet.keys.members().as_bytes()) {
        fleet
            .view()
            .members
            .remove(String::from_utf8_lossy(id).as_ref());
    }
    false
}

/// Becomes the leader if nobody is: the key is created only if absent, under this
/// gateway's lease, so it goes when the lease does.
async fn campaign(fleet: &Fleet, lease: i64) -> Result<(), FleetError> {
    let mut client = fleet.client.clone();
    let key = fleet.keys.leader();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            fleet.gateway_id.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let response = bounded(fleet, client.txn(txn)).await?;
    let leader = if response.succeeded() {
        tracing::info!(gateway = %fleet.gateway_id, "this gateway now leads the fleet");
        Some(fleet.gateway_id.clone())
    } else {
        response.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        })
    };
    fleet.view().leader = leader;
    Ok(())
}

/// Puts this gateway's member record (its confirmation) under its lease.
async fn publish(fleet: &Fleet, lease: i64) -> Result<(), FleetError> {
    let record = {
        let view = fleet.view();
        MemberRecord {
            gateway_id: fleet.gateway_id.clone(),
            applied_revision: view.applied,
            table_hashes: view.table_hashes.clone(),
            config_hashes: view.config_hashes.clone(),
            backend_l4: view.backend_l4.clone(),
        }
    };
    let mut client = fleet.client.clone();
    let value = serde_json::to_vec(&record).expect("member record serialises");
    let key = fleet.keys.member(&fleet.gateway_id);
    bounded(
        fleet,
        client.put(key, value, Some(PutOptions::new().with_lease(lease))),
    )
    .await?;
    Ok(())
}
