//! Request receipts: when each message id was first received, so a replay
//! is judged by its first receipt; pruned before the inbox forgets it.

use std::sync::Arc;

use payfleet_common::{CancellationToken, retention, runtime::Shared};

/// Deletes request receipts older than `older_than`, in batches until none is left.
pub async fn prune_receipts(
    pool: &sqlx::PgPool,
    older_than: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    retention::prune_in_batches(
        pool,
        "DELETE FROM request_receipts WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM request_receipts WHERE first_received_at < now() - make_interval(secs => $1) LIMIT $2))",
        older_than,
    )
    .await
}

/// Prunes request receipts an hour before the inbox rows of the same
/// messages go (`inbox_retention_days`): a first receipt must never outlive
/// the inbox row, or a replay the inbox no longer recognises would be judged
/// by a receipt from when it was fresh. Without its receipt, a replay gets a
/// new one, and its old `requested_at` is refused as `request_expired`.
pub async fn run_receipt_pruning(shared: Arc<Shared>, stop: CancellationToken) {
    let retention =
        std::time::Duration::from_secs(u64::from(shared.settings.inbox_retention_days) * 86_400)
            .saturating_sub(std::time::Duration::from_secs(3_600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
            _ = stop.cancelled() => return,
        }
        match prune_receipts(&shared.pool, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned request receipts past their retention"),
            Err(error) => tracing::warn!(%error, "pruning request receipts failed"),
        }
    }
}
