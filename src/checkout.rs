//! Point-in-time checkout of a replica that a sync engine is running on:
//! the store moves the visible state ([`Store::checkout`]), then everyone
//! watching it wakes and the metrics follow.
//!
//! Offline (`pitr checkout`) the store is used directly; here the engine
//! holds the store, so the checkout runs between two of its transactions.
//!
//! [`Store::checkout`]: crate::store::Store::checkout

use crate::metrics;
use crate::store::pitr::{CheckoutError, CheckoutOutcome, CheckoutTarget};
use crate::store::{self, StoreError};
use crate::sync::Syncer;

/// Moves the visible state of `syncer`'s replica to `target` and wakes
/// everyone watching it.
pub async fn checkout(
    syncer: &Syncer,
    target: CheckoutTarget,
) -> Result<CheckoutOutcome, CheckoutError> {
    let out = syncer
        .locked(move |s| {
            s.checkout(target).map_err(|e| match e {
                CheckoutError::Store(e) => CheckoutError::Store(store::explain(s.path(), e)),
                e => e,
            })
        })
        .await
        .map_err(|e| {
            CheckoutError::Store(StoreError::Corrupt(format!("checkout task failed: {e}")))
        })??;
    syncer.show(Some(out.to.versionstamp));
    metrics::checkout(&out);
    Ok(out)
}
