//! The expiry sweeper: cancels payments left unpaid past their expiry,
//! releasing what Try reserved (or recording an empty rollback when Try never
//! ran, so a late Try reserves nothing). Any fleet process may run it; a
//! PostgreSQL advisory lock makes exactly one sweep run at a time.

use std::sync::Arc;

use payfleet_common::{
    CancellationToken, PaymentId,
    messages::{Outcome as Final, SCHEMA_VERSION, TradeClose, kind},
    outbox,
    runtime::{Shared, StageError},
};
use sqlx::Acquire;

use crate::channels::BALANCE;
use crate::domain::{
    handoff, ledger,
    payment::{self, PaymentStatus},
    tcc,
};

/// The advisory lock key of the sweep ("PFSWEEP" in ASCII, as a number).
pub const SWEEP_LOCK: i64 = 0x0050_4653_5745_4550;
const BATCH: i64 = 200;

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.settings.sweep_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match sweep(&shared).await {
            Ok(Some(n)) if n > 0 => tracing::info!(cancelled = n, "expired payments cancelled"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "expiry sweep failed"),
        }
    }
}

/// One sweep; `None` when another process holds the sweep lock.
pub async fn sweep(shared: &Shared) -> Result<Option<usize>, StageError> {
    let mut lock_conn = shared.pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK)
        .fetch_one(&mut *lock_conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let result = sweep_locked(shared).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut *lock_conn)
        .await;
    result.map(Some)
}

async fn sweep_locked(shared: &Shared) -> Result<usize, StageError> {
    let expired: Vec<PaymentId> = sqlx::query_scalar(
        "SELECT id FROM payments WHERE status IN ('validated', 'frozen') AND expires_at < now()
           AND (close_requested_at IS NULL OR close_requested_at < now() - interval '5 minutes')
         ORDER BY expires_at LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(&shared.pool)
    .await?;
    let mut cancelled = 0;
    for id in expired {
        let mut conn = shared.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let Some(p) = payment::lock(&mut tx, id).await? else {
            continue;
        };
        let status = p.status()?;
        if !matches!(status, PaymentStatus::Validated | PaymentStatus::Frozen)
            || p.expires_at > chrono::Utc::now()
        {
            continue; // moved on since the scan
        }
        let at_a_channel =
            status == PaymentStatus::Frozen && p.channel.as_deref().is_some_and(|c| c != BALANCE);
        if at_a_channel {
            // A trade may exist at the channel: it is closed first, so no late
            // success can follow the release (channel-call closes, then settlement cancels).
            let message = handoff::to_stage(
                &shared.topology,
                handoff::CHANNEL_CALL,
                kind::TRADE_CLOSE,
                id,
                &TradeClose {
                    schema_version: SCHEMA_VERSION,
                    payment_id: id,
                    reason: "expired".into(),
                    requested_at: chrono::Utc::now(),
                },
            )
            .map_err(StageError::permanent)?;
            outbox::insert(&mut tx, &[message]).await?;
            sqlx::query("UPDATE payments SET close_requested_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            shared.outbox_wake.notify_one();
            cancelled += 1;
            continue;
        }
        if tcc::cancel(&mut tx, &p, PaymentStatus::Cancelled, "expired").await? {
            let message = handoff::to_stage(
                &shared.topology,
                handoff::NOTIFICATION,
                kind::PAYMENT_OUTCOME,
                id,
                &payment::outcome_message(id, Final::Failed, Some("expired")),
            )
            .map_err(StageError::permanent)?;
            outbox::insert(&mut tx, &[message]).await?;
            tx.commit().await?;
            shared.outbox_wake.notify_one();
            cancelled += 1;
        }
    }
    Ok(cancelled)
}

/// Folds merchant and fee postings into balances until `stop`.
pub async fn run_roll_up(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.settings.rollup_interval;
    loop {
        match ledger::roll_up(&shared.pool, 5_000).await {
            Ok(5_000) => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "roll-up failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => {
                let _ = ledger::roll_up(&shared.pool, 100_000).await;
                return;
            }
        }
    }
}
