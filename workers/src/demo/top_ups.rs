//! The demo's wallet top-ups: once its payments have their outcomes, some
//! of its users fill their wallets, asked for by the platform's wallet
//! application — by card (a synchronous answer) and at the wallet platform
//! (an asynchronous webhook), one whose answer times out (a status query
//! finds it paid: credited once), one the card issuer declines, the same
//! request twice (one top-up) and a conflicting one (refused). Every
//! top-up ends in its event; the summary tells how they ended.

use chrono::Utc;
use payfleet_common::messages::{SCHEMA_VERSION, TopUpRequested};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::{WALLET_APP, seed::USERS};

/// The sandbox's payer tokens, and what each makes of a charge.
const PAID: &str = "tok_success";
const ANSWER_TIMES_OUT: &str = "tok_timeout";
const DECLINED: &str = "tok_decline";

/// The `LIKE` pattern of run `run_id`'s top-up request ids: apart from its
/// merchant orders, which the payment figures count.
pub(super) fn like(run_id: &str) -> String {
    format!("tu-{run_id}-%")
}

/// The top-up requests of run `run_id`, in the order they are published.
pub(super) fn plan(run_id: &str) -> Vec<TopUpRequested> {
    let ask = |n: usize, amount: i64, method: &str, token: &str| TopUpRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: WALLET_APP.to_owned(),
        request_id: format!("tu-{run_id}-{n:03}"),
        // users the withdrawals leave alone
        user_id: format!("demo-user-{}", USERS / 2 + n),
        amount: Decimal::new(amount, 2),
        currency: "CNY".to_owned(),
        payment_method: method.to_owned(),
        payer_token: Some(token.to_owned()),
        notify_url: None,
        requested_at: Utc::now(),
    };
    let mut requests: Vec<TopUpRequested> = (0..4)
        .map(|i| ask(i, 5_000 + 2_500 * i as i64, "card", PAID))
        .collect();
    requests.extend((4..6).map(|i| ask(i, 3_000 + 1_000 * i as i64, "wallet", PAID)));
    requests.push(ask(6, 12_000, "card", ANSWER_TIMES_OUT));
    requests.push(ask(7, 8_000, "card", DECLINED));
    // the first request again (one top-up), and its id with other content
    requests.push(requests[0].clone());
    requests.push(TopUpRequested {
        amount: requests[0].amount + Decimal::ONE,
        ..requests[0].clone()
    });
    requests
}

/// How many of this run's top-ups ended with their event.
pub(super) async fn finished(pool: &PgPool, like: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM payments p WHERE p.kind = 'top_up' AND p.merchant_order_id LIKE $1
           AND p.status IN ('settled', 'failed', 'cancelled', 'rejected', 'challenged', 'exception')
           AND EXISTS (SELECT 1 FROM payment_events e WHERE e.payment_id = p.id)",
    )
    .bind(like)
    .fetch_one(pool)
    .await?)
}

/// How many distinct top-ups `requests` make (a repeated request id is one).
pub(super) fn expected(requests: &[TopUpRequested]) -> i64 {
    let ids: std::collections::BTreeSet<&str> =
        requests.iter().map(|r| r.request_id.as_str()).collect();
    ids.len() as i64
}

/// The summary's top-up line: how the run's top-ups ended, by reason,
/// and what reached the wallets.
pub(super) async fn summary(pool: &PgPool, like: &str) -> anyhow::Result<String> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT status, COALESCE(split_part(reason, ':', 1), method), count(*)
         FROM payments WHERE kind = 'top_up' AND merchant_order_id LIKE $1 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let (credited, fees): (Decimal, Decimal) = sqlx::query_as(
        "SELECT COALESCE(sum(q.amount) FILTER (WHERE a.owner_kind = 'user'), 0),
                COALESCE(-sum(q.amount) FILTER (WHERE a.owner_kind = 'platform_cost'), 0)
         FROM payments p JOIN journal_entries j ON j.reference = p.id::text AND j.kind = 'top_up'
         JOIN postings q ON q.entry_id = j.id JOIN accounts a ON a.id = q.account_id
         WHERE p.kind = 'top_up' AND p.merchant_order_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let kept: i64 = rows.iter().map(|r| r.2).sum();
    let parts: Vec<String> = rows
        .iter()
        .map(|(status, how, n)| format!("{status} {how} {n}"))
        .collect();
    Ok(format!(
        "  {:<11} {kept} kept: {} · {credited} CNY credited to wallets, {fees} CNY of channel fees on the platform",
        "top-ups",
        parts.join(", ")
    ))
}

/// How many events this run's top-ups have had (each a webhook to the requester).
pub(super) async fn events(pool: &PgPool, like: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM payment_events e JOIN payments p ON p.id = e.payment_id
         WHERE p.kind = 'top_up' AND p.merchant_order_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?)
}
