//! Where a demo load stands, whether it is quiet, and its summary.

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use payfleet_common::telemetry;
use sqlx::PgPool;

/// Where a load stands: its payments by outcome, its refusals and its poison dead letters.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub terminal: i64,
    pub settled: i64,
    pub failed: i64,
    pub rejected: i64,
    pub refused: i64,
    pub dead: i64,
}

pub(super) async fn progress(
    pool: &PgPool,
    like: &str,
    since: chrono::DateTime<Utc>,
) -> anyhow::Result<Progress> {
    let (terminal, settled, failed, rejected): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status IN ('settled', 'failed', 'cancelled', 'rejected', 'challenged', 'exception')
                                  AND EXISTS (SELECT 1 FROM payment_events e WHERE e.payment_id = payments.id)),
                count(*) FILTER (WHERE status = 'settled'),
                count(*) FILTER (WHERE status IN ('failed', 'cancelled')),
                count(*) FILTER (WHERE status IN ('rejected', 'challenged'))
         FROM payments WHERE merchant_order_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM request_rejections WHERE merchant_order_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE stored_at >= $1 AND error_kind = 'poison'",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(Progress {
        terminal,
        settled,
        failed,
        rejected,
        refused,
        dead,
    })
}

/// Nothing in flight: the outbox sent, postings rolled up, this run's
/// webhooks delivered and its refunds paid back or ended (an earlier run's
/// receiver and sandbox are gone: what it left retrying is not waited for).
pub(super) async fn quiet(pool: &PgPool, since: chrono::DateTime<Utc>) -> anyhow::Result<bool> {
    let (unsent, unrolled, webhooks, refunds): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL),
                (SELECT count(*) FROM postings WHERE NOT rolled_up),
                (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' AND created_at >= $1),
                (SELECT count(*) FROM refunds WHERE created_at >= $1
                  AND status IN ('owed', 'requested', 'reserved', 'sending', 'unknown'))",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(unsent == 0 && unrolled == 0 && webhooks == 0 && refunds == 0)
}

pub(super) async fn summarize(
    pool: &PgPool,
    like: &str,
    since: chrono::DateTime<Utc>,
    elapsed: Duration,
    webhooks: u64,
) -> anyhow::Result<String> {
    let by_status: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, split_part(reason, ':', 1), count(*) FROM payments WHERE merchant_order_id LIKE $1 GROUP BY 1, 2 ORDER BY 1, 3 DESC",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let refusals: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, count(*) FROM request_rejections WHERE merchant_order_id LIKE $1 GROUP BY 1 ORDER BY 2 DESC")
            .bind(like)
            .fetch_all(pool)
            .await?;
    type Latency = (
        Option<f64>,
        Option<f64>,
        Option<chrono::DateTime<Utc>>,
        Option<chrono::DateTime<Utc>>,
    );
    let (p50, p99, first, last): Latency = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), min(requested_at), max(done_at)
         FROM (SELECT p.requested_at, e.created_at AS done_at,
                      extract(epoch FROM e.created_at - p.requested_at) * 1000 AS ms
               FROM payments p JOIN payment_events e ON e.payment_id = p.id
               WHERE p.merchant_order_id LIKE $1) t",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let dead: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT stage, error_kind, count(*) FROM dead_letters WHERE stored_at >= $1 GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let by_channel: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT channel, count(*) FILTER (WHERE status = 'settled'), count(*) FROM payments
         WHERE merchant_order_id LIKE $1 AND channel IS NOT NULL GROUP BY 1 ORDER BY 1",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let (queries, refunds_owed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM integration_log l JOIN payments p ON p.id = l.payment_id
                 WHERE p.merchant_order_id LIKE $1 AND l.direction = 'query'),
                (SELECT count(*) FROM refunds r JOIN payments p ON p.id = r.payment_id
                  WHERE p.merchant_order_id LIKE $1 AND r.origin = 'automatic')",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let payments: i64 = by_status.iter().map(|r| r.2).sum();
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (status, reason, count) in &by_status {
        let entry = grouped.entry(status.clone()).or_default();
        match reason.as_deref() {
            Some(reason) if !reason.is_empty() => entry.push(format!("{reason} {count}")),
            _ => entry.push(count.to_string()),
        }
    }
    let metrics = telemetry::metrics_handle().render();
    let metric = |result: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("payfleet_messages_total{")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).num_milliseconds().max(1) as f64 / 1000.0,
        _ => elapsed.as_secs_f64(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "payfleet demo summary ({:.1} s)\n",
        elapsed.as_secs_f64()
    ));
    out.push_str(&format!("  payments    {payments}\n"));
    for (status, parts) in &grouped {
        out.push_str(&format!("    {status:<11} {}\n", parts.join(", ")));
    }
    let refused: Vec<String> = refusals.iter().map(|(r, n)| format!("{r} {n}")).collect();
    out.push_str(&format!(
        "  refused     {}\n",
        if refused.is_empty() {
            "0".into()
        } else {
            refused.join(", ")
        }
    ));
    let channels: Vec<String> = by_channel
        .iter()
        .map(|(c, settled, all)| format!("{} {settled}/{all} settled", c.as_deref().unwrap_or("?")))
        .collect();
    out.push_str(&format!(
        "  channels    {} · status queries {queries} · refunds owed {refunds_owed}\n",
        channels.join(", ")
    ));
    // Counted by the fleet's metrics: known here only when it ran in this process.
    let fleet_here = metrics.contains("payfleet_messages_total{");
    if fleet_here {
        out.push_str(&format!(
            "  duplicates  {} absorbed (stale)\n",
            metric("stale") + metric("duplicate")
        ));
    }
    out.push_str(&format!(
        "  throughput  {:.1} payments/s · end-to-end p50 {:.0} ms · p99 {:.0} ms\n",
        payments as f64 / span,
        p50.unwrap_or(0.0),
        p99.unwrap_or(0.0)
    ));
    if fleet_here {
        out.push_str(&format!(
            "  retries     {} (lock waits {})\n",
            metric("retried"),
            metric("lock_busy")
        ));
    }
    let dead: Vec<String> = dead
        .iter()
        .map(|(s, k, n)| format!("{s}/{k} {n}"))
        .collect();
    out.push_str(&format!(
        "  dead letters {}\n",
        if dead.is_empty() {
            "0".into()
        } else {
            dead.join(", ")
        }
    ));
    out.push_str(&format!(
        "  webhooks    {webhooks} received by the demo merchant"
    ));
    Ok(out)
}
