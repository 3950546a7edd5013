//! Keeping the runtime's own tables bounded: the inbox, sent outbox rows
//! and delivery counts grow with every message, so each is pruned past its
//! retention, in batches until nothing is left to prune — a single capped
//! delete per pass would fall behind a fleet writing hundreds of rows a
//! second.
//!
//! The inbox is the duplicate window (`inbox_retention_days`). An inbox
//! row whose message also lies parked in the dead-letter store at the same
//! stage is kept past it for as long as that dead letter is replayable, so
//! that a replay of an old dead letter whose message the stage did apply (a
//! second copy dead-lettered, a crash after the commit) is still recognised.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// Rows deleted per statement: short transactions, no long locks.
pub const BATCH: i64 = 5_000;
/// Sent outbox rows are kept this long for inspection.
pub const OUTBOX_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A crash-loop count not touched for this long belongs to a message long
/// gone (its rounds through the delay queues take minutes).
pub const DELIVERY_COUNT_RETENTION: Duration = Duration::from_secs(24 * 3600);

const INBOX: &str = "DELETE FROM inbox WHERE ctid = ANY(ARRAY(
    SELECT i.ctid FROM inbox i
    WHERE i.processed_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM dead_letters d
                      WHERE d.message_id = i.message_id AND d.stage = i.stage AND d.status = 'parked')
    LIMIT $2))";
const OUTBOX: &str = "DELETE FROM outbox WHERE id = ANY(ARRAY(
    SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1) LIMIT $2))";
const DELIVERY_COUNTS: &str = "DELETE FROM delivery_counts WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM delivery_counts WHERE last_seen_at < now() - make_interval(secs => $1) LIMIT $2))";

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub inbox: u64,
    pub outbox: u64,
    pub delivery_counts: u64,
}

/// Runs `delete` — a statement taking the retention in seconds (`$1`) and
/// a batch size (`$2`) — until a batch comes back short; returns the rows
/// deleted. Each batch commits on its own.
pub async fn prune_in_batches(
    pool: &PgPool,
    delete: &str,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(delete)
            .bind(retention.as_secs_f64())
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Prunes inbox rows past `retention` (see the module's note on dead letters).
pub async fn prune_inbox(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    prune_in_batches(pool, INBOX, retention).await
}

/// Prunes outbox rows sent longer ago than `retention`.
pub async fn prune_sent_outbox(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    prune_in_batches(pool, OUTBOX, retention).await
}

/// One pass over the three tables with the retention of `settings`.
pub async fn prune(pool: &PgPool, settings: &Settings) -> Result<Pruned, sqlx::Error> {
    let inbox_retention = Duration::from_secs(u64::from(settings.inbox_retention_days) * 86_400);
    Ok(Pruned {
        inbox: prune_inbox(pool, inbox_retention).await?,
        outbox: prune_sent_outbox(pool, OUTBOX_RETENTION).await?,
        delivery_counts: prune_in_batches(pool, DELIVERY_COUNTS, DELIVERY_COUNT_RETENTION).await?,
    })
}

/// Prunes every `every` until `stop`.
pub async fn run(pool: PgPool, settings: Settings, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match prune(&pool, &settings).await {
            Ok(pruned) if pruned == Pruned::default() => {}
            Ok(pruned) => tracing::info!(
                inbox = pruned.inbox,
                outbox = pruned.outbox,
                delivery_counts = pruned.delivery_counts,
                "pruned rows past their retention"
            ),
            Err(error) => tracing::warn!(%error, "pruning past retention failed"),
        }
    }
}
