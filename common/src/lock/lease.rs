//! The lock's stand-in while Redis does not answer: a lease row in
//! PostgreSQL (`lock_leases`) per stage and business key, taken when free
//! or expired, renewed and released by compare-and-set on its token.
//!
//! Processes do not all lose Redis at the same moment (a partition, or one
//! simply notices first), so the lease table is also how they agree:
//! - a degraded process first puts up a *signal* (a lease row of its own
//!   under [`SIGNAL_STAGE`]) and takes no lease until a fence has passed:
//!   time for every process to read the signal and to add a lease to every
//!   Redis lock it holds. The signal stays up while the process is degraded
//!   and while it still holds a lease taken instead of a Redis lock;
//! - every process reads, every [`READ_EVERY`], whether any signal is up,
//!   and while one is, a Redis lock is taken *and* leased, so a key is
//!   never held in Redis by one process and leased by another.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::LockError;

/// The stage of the rows that say "a process is leasing": one per degraded
/// process, keyed by the process's own id.
pub const SIGNAL_STAGE: &str = "*degraded*";

/// How often a process reads whether any lease is live.
pub const READ_EVERY: Duration = Duration::from_millis(500);

/// Expired rows older than this are swept by the reader.
const SWEEP_AFTER: &str = "1 minute";

/// A lease row to hold: free or expired → ours, for `ttl`.
pub(super) async fn take(
    pool: &PgPool,
    stage: &str,
    business_key: &str,
    ttl: Duration,
) -> Result<Option<Uuid>, LockError> {
    sqlx::query_scalar(
        "INSERT INTO lock_leases (stage, business_key, token, expires_at)
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
         ON CONFLICT (stage, business_key) DO UPDATE
            SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
          WHERE lock_leases.expires_at < now()
         RETURNING token",
    )
    .bind(stage)
    .bind(business_key)
    .bind(Uuid::new_v4())
    .bind(ttl.as_millis() as i64)
    .fetch_optional(pool)
    .await
    .map_err(|e| LockError::Unavailable(format!("the lease table: {e}")))
}

/// Extends a lease we hold; false when it is no longer ours.
pub(super) async fn renew(
    pool: &PgPool,
    stage: &str,
    business_key: &str,
    token: Uuid,
    ttl: Duration,
) -> Result<bool, LockError> {
    let renewed = sqlx::query(
        "UPDATE lock_leases SET expires_at = now() + $4 * interval '1 millisecond'
         WHERE stage = $1 AND business_key = $2 AND token = $3",
    )
    .bind(stage)
    .bind(business_key)
    .bind(token)
    .bind(ttl.as_millis() as i64)
    .execute(pool)
    .await
    .map_err(|e| LockError::Unavailable(format!("the lease table: {e}")))?;
    Ok(renewed.rows_affected() == 1)
}

pub(super) async fn release(pool: &PgPool, stage: &str, business_key: &str, token: Uuid) {
    let released = sqlx::query(
        "DELETE FROM lock_leases WHERE stage = $1 AND business_key = $2 AND token = $3",
    )
    .bind(stage)
    .bind(business_key)
    .bind(token)
    .execute(pool)
    .await;
    if let Err(error) = released {
        tracing::debug!(%error, stage, business_key, "lease release failed; it expires by itself");
    }
}

/// Puts up (or keeps up) this process's signal that it leases, live for `lasting`.
pub(super) async fn signal(
    pool: &PgPool,
    process: Uuid,
    lasting: Duration,
) -> Result<(), LockError> {
    sqlx::query(
        "INSERT INTO lock_leases (stage, business_key, token, expires_at)
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
         ON CONFLICT (stage, business_key) DO UPDATE SET expires_at = EXCLUDED.expires_at",
    )
    .bind(SIGNAL_STAGE)
    .bind(process.to_string())
    .bind(process)
    .bind(lasting.as_millis() as i64)
    .execute(pool)
    .await
    .map_err(|e| LockError::Unavailable(format!("the lease table: {e}")))?;
    Ok(())
}

/// How long the latest live signal still runs; zero when no process leases.
pub(super) async fn live_for(pool: &PgPool, sweep: bool) -> Result<Duration, sqlx::Error> {
    if sweep {
        sqlx::query(&format!(
            "DELETE FROM lock_leases WHERE expires_at < now() - interval '{SWEEP_AFTER}'"
        ))
        .execute(pool)
        .await?;
    }
    let ms: i64 = sqlx::query_scalar(
        "SELECT COALESCE(ceil(EXTRACT(epoch FROM max(expires_at) - now()) * 1000), 0)::bigint
           FROM lock_leases WHERE stage = $1 AND expires_at > now()",
    )
    .bind(SIGNAL_STAGE)
    .fetch_one(pool)
    .await?;
    Ok(Duration::from_millis(ms.max(0) as u64))
}
