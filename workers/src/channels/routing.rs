//! Channel routing: a payment method goes to the cheapest active channel that
//! takes it, that an adapter can call, and is healthy. Health is a circuit breaker fed by recent
//! failures and timeouts (kept in Redis per channel over a sliding window):
//! a channel with at least `MIN_CALLS` recent calls of which half or more
//! failed is skipped until its failures age out of the window.
//!
//! While Redis does not answer the breaker neither counts nor opens: every
//! channel counts as healthy, so payments keep flowing, and a failing
//! channel costs each payment its call timeout and the retry budget bounds
//! the rest (a balance-backed channel never needed the breaker).

use payfleet_common::lock::Locks;
use payfleet_common::runtime::StageError;
use rust_decimal::Decimal;
use sqlx::PgConnection;

/// The breaker's window.
pub const WINDOW_MS: i64 = 60_000;
/// Calls needed in the window before the breaker may open.
pub const MIN_CALLS: i64 = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub channel: String,
    pub fee_rate: Decimal,
}

/// The channel for `method`, or `None` when no active, callable, healthy
/// channel takes it.
pub async fn choose(
    conn: &mut PgConnection,
    redis: &Locks,
    prefix: &str,
    method: &str,
) -> Result<Option<Route>, StageError> {
    let candidates: Vec<(String, Decimal, String, Option<String>)> = sqlx::query_as(
        "SELECT name, fee_rate, kind, base_url FROM channels WHERE status = 'active' AND $1 = ANY(methods) ORDER BY fee_rate, name",
    )
    .bind(method)
    .fetch_all(conn)
    .await?;
    for (channel, fee_rate, kind, base_url) in candidates {
        // A payment routed where no adapter can call could be neither charged nor closed.
        if !crate::channels::registry::buildable(&kind, base_url.as_deref()) {
            tracing::warn!(channel, kind, "channel skipped: no adapter can call it");
            continue;
        }
        if channel == super::BALANCE || healthy(redis, prefix, &channel).await {
            return Ok(Some(Route { channel, fee_rate }));
        }
        tracing::info!(channel, "channel skipped: its circuit breaker is open");
    }
    Ok(None)
}

/// The calls in the window, and those of them whose last result failed.
fn keys(prefix: &str, channel: &str) -> (String, String) {
    let calls = format!("{prefix}:breaker:{channel}");
    let failed = format!("{calls}:failed");
    (calls, failed)
}

/// Records one call's result (`failed`: an error, a timeout or a 5xx; a
/// decline is a success of the channel). `call_id` names the call itself
/// (attempt and kind of call), not this handling of it: a message handled
/// again after its commit failed asks the same call again and is counted
/// once, with its latest result.
pub async fn record(redis: &Locks, prefix: &str, channel: &str, call_id: &str, failed: bool) {
    let now = chrono::Utc::now().timestamp_millis();
    let (calls, failures) = keys(prefix, channel);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("ZADD")
        .arg(&calls)
        .arg(now)
        .arg(call_id)
        .ignore();
    if failed {
        pipe.cmd("ZADD")
            .arg(&failures)
            .arg(now)
            .arg(call_id)
            .ignore();
    } else {
        pipe.cmd("ZREM").arg(&failures).arg(call_id).ignore();
    }
    for key in [&calls, &failures] {
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(now - WINDOW_MS)
            .ignore()
            .cmd("PEXPIRE")
            .arg(key)
            .arg(WINDOW_MS * 2)
            .ignore();
    }
    if let Err(error) = redis.query::<()>(&pipe).await {
        tracing::debug!(%error, channel, "breaker not fed: Redis does not answer");
    }
}

/// Whether the breaker of `channel` is closed.
pub async fn healthy(redis: &Locks, prefix: &str, channel: &str) -> bool {
    let now = chrono::Utc::now().timestamp_millis();
    let (calls, failures) = keys(prefix, channel);
    let mut counts = redis::pipe();
    counts
        .cmd("ZCOUNT")
        .arg(&calls)
        .arg(now - WINDOW_MS)
        .arg("+inf")
        .cmd("ZCOUNT")
        .arg(&failures)
        .arg(now - WINDOW_MS)
        .arg("+inf");
    match redis.query::<(i64, i64)>(&counts).await {
        Ok((calls, failures)) => calls < MIN_CALLS || failures * 2 < calls,
        Err(error) => {
            tracing::debug!(%error, channel, "breaker counted as closed: Redis does not answer");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_redis_the_breaker_neither_counts_nor_opens() {
        let redis = Locks::new(
            "redis://127.0.0.1:1/0",
            "breaker-test",
            std::time::Duration::from_secs(5),
        )
        .expect("a valid URL");
        for n in 0..MIN_CALLS * 2 {
            record(&redis, "breaker-test", "sandbox-card", &n.to_string(), true).await;
        }
        assert!(healthy(&redis, "breaker-test", "sandbox-card").await);
        assert!(
            redis.degraded(),
            "the failed calls marked the fleet degraded"
        );
    }
}
