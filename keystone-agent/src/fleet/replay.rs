//! Fleet-wide replay refusal of signed requests (the deployment webhook): each
//! accepted delivery is claimed under `<prefix>/webhooks/<timestamp>-<signature>`,
//! created only if absent, so the same delivery sent to two gateways is accepted by
//! one. The key lives under a lease of its own that outlasts the delivery's timestamp
//! window, after which the timestamp check refuses it anyway.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{Fleet, FleetError};

impl Fleet {
    /// Claims the delivery `(timestamp, signature)` for the whole fleet for `keep`:
    /// true if this gateway is the first to, false if it was claimed before.
    pub fn claim_delivery(
        &self,
        timestamp: u64,
        signature: &str,
        keep: Duration,
    ) -> Result<bool, FleetError> {
        if let Some(reason) = self.stale_reason() {
            return Err(FleetError::Stale { reason });
        }
        let key = format!("{}/webhooks/{timestamp}-{signature}", self.keys.prefix());
        let ttl = i64::try_from(keep.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut client = self.client.clone();
        self.call(async move {
            let lease = client.lease_grant(ttl, None).await?.id();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    "",
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let claimed = client.txn(txn).await?.succeeded();
            if !claimed {
                client.lease_revoke(lease).await?;
            }
            Ok(claimed)
        })
    }
}
