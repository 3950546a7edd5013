//! The demo's merchant payout: once the payments have their outcomes, a
//! seller asks for part of its settled balance to be paid out to its bank
//! account (as a merchant would after `payfleet merchant balance`), and
//! asks for one below the minimum, which is refused. The summary tells
//! how they ended.

use chrono::Utc;
use payfleet_common::messages::{PayoutRequested, SCHEMA_VERSION};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::seed::PAID_OUT_SELLER;
use crate::domain::withdrawal::Limits;

/// The request key the paid-out seller signs with (the demo seeds it).
pub(super) fn seller_key() -> String {
    format!("{PAID_OUT_SELLER}-key")
}

/// The `LIKE` pattern of run `run_id`'s payout request ids.
pub(super) fn like(run_id: &str) -> String {
    format!("po-{run_id}-%")
}

/// The payout requests of run `run_id`: half of what the seller may be
/// paid now (its settled balance less the holdback), and one of 1.00.
pub(super) async fn plan(
    pool: &PgPool,
    limits: &Limits,
    run_id: &str,
) -> anyhow::Result<Vec<PayoutRequested>> {
    let balance: Decimal = sqlx::query_scalar(
        "SELECT COALESCE(sum(a.available), 0)
              + COALESCE((SELECT sum(p.amount) FROM postings p JOIN accounts q ON q.id = p.account_id
                          WHERE q.owner_kind = 'merchant' AND q.owner_id = $1 AND q.currency = 'CNY'
                            AND NOT p.rolled_up), 0)
         FROM accounts a WHERE a.owner_kind = 'merchant' AND a.owner_id = $1 AND a.currency = 'CNY'",
    )
    .bind(PAID_OUT_SELLER)
    .fetch_one(pool)
    .await?;
    let ask = |n: usize, amount: Decimal| PayoutRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: PAID_OUT_SELLER.to_owned(),
        request_id: format!("po-{run_id}-{n}"),
        amount,
        currency: "CNY".to_owned(),
        notify_url: None,
        requested_at: Utc::now(),
    };
    let account: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM accounts WHERE owner_kind = 'merchant' AND owner_id = $1 AND currency = 'CNY'",
    )
    .bind(PAID_OUT_SELLER)
    .fetch_optional(pool)
    .await?;
    let payable = match account {
        Some(account) => {
            let mut conn = pool.acquire().await?;
            crate::domain::withdrawal::limits::payable(&mut conn, limits, account, balance).await?
        }
        None => Decimal::ZERO,
    };
    let half = (payable / Decimal::TWO).round_dp(2);
    let mut requests = Vec::new();
    if limits.payout_minimum_refusal(half, "CNY").is_none() {
        requests.push(ask(1, half));
    }
    requests.push(ask(2, Decimal::ONE));
    Ok(requests)
}

/// How many of this run's payouts ended with their event.
pub(super) async fn finished(pool: &PgPool, like: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM withdrawals w WHERE w.owner_kind = 'merchant' AND w.request_id LIKE $1
           AND w.status IN ('refused', 'failed', 'succeeded', 'returned', 'exception')
           AND (w.status = 'exception' OR EXISTS (SELECT 1 FROM payment_events e WHERE e.withdrawal_id = w.id))",
    )
    .bind(like)
    .fetch_one(pool)
    .await?)
}

/// The summary's payout line: how the run's merchant payouts ended.
pub(super) async fn summary(pool: &PgPool, like: &str) -> anyhow::Result<String> {
    let rows: Vec<(String, String, i64, Decimal)> = sqlx::query_as(
        "SELECT status, COALESCE(split_part(detail, ':', 1), user_id), count(*), sum(amount)
         FROM withdrawals WHERE owner_kind = 'merchant' AND request_id LIKE $1 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let paid_out: Decimal = rows
        .iter()
        .filter(|r| r.0 == "succeeded")
        .map(|r| r.3)
        .sum();
    let parts: Vec<String> = rows
        .iter()
        .map(|(status, how, n, _)| format!("{status} {how} {n}"))
        .collect();
    Ok(format!(
        "  {:<11} {} kept: {} · {paid_out} CNY paid out to {PAID_OUT_SELLER}'s bank account",
        "payouts",
        rows.iter().map(|r| r.2).sum::<i64>(),
        parts.join(", ")
    ))
}
