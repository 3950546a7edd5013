//! The demo's withdrawals: once its payments have their outcomes, some of
//! its users withdraw from their wallets to a bank account, asked for by
//! the platform's wallet application — payouts that succeed, one the bank
//! account refuses, one whose answer times out (a status query finds it
//! paid), one the payee's bank sends back a moment later (credited back
//! once), one larger than the wallet holds (refused by Try), the same
//! request twice (one withdrawal) and a conflicting one (refused). Every
//! withdrawal ends in its events; the summary tells how they ended.

use chrono::Utc;
use payfleet_common::messages::{SCHEMA_VERSION, WithdrawalRequested};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::{
    WALLET_APP,
    seed::{POOR_USERS, USERS},
};

/// The sandbox's payee account tokens, and what each makes of a payout.
const PAID: &str = "acct_success";
const REFUSED: &str = "acct_invalid";
const ANSWER_TIMES_OUT: &str = "acct_timeout";
const RETURNED_BY_THE_BANK: &str = "acct_returned";

/// The withdrawal requests of run `run_id`, in the order they are published.
pub(super) fn plan(run_id: &str) -> Vec<WithdrawalRequested> {
    let ask = |n: usize, user: String, amount: i64, account: &str| WithdrawalRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: WALLET_APP.to_owned(),
        request_id: format!("{run_id}-wd{n:03}"),
        user_id: user,
        amount: Decimal::new(amount, 2),
        currency: "CNY".to_owned(),
        payee_account: account.to_owned(),
        notify_url: None,
        requested_at: Utc::now(),
    };
    let user = |i: usize| format!("demo-user-{}", i % USERS);
    let mut requests: Vec<WithdrawalRequested> = (0..8)
        .map(|i| ask(i, user(i), 10_000 + 2_500 * i as i64, PAID))
        .collect();
    requests.push(ask(8, user(8), 20_000, REFUSED));
    requests.push(ask(9, user(9), 30_000, ANSWER_TIMES_OUT));
    requests.push(ask(10, user(10), 40_000, RETURNED_BY_THE_BANK));
    // a poor user's wallet holds a few CNY at most
    requests.push(ask(
        11,
        format!("demo-poor-{}", 1 % POOR_USERS),
        100_000,
        PAID,
    ));
    // the first request again (one withdrawal), and its id with other content
    requests.push(requests[0].clone());
    requests.push(WithdrawalRequested {
        amount: requests[0].amount + Decimal::ONE,
        ..requests[0].clone()
    });
    requests
}

/// How this run's withdrawals stand: (finished with their events, kept in
/// all). Finished: refused or failed and reported, paid out (and, for an
/// account the bank sends back, returned) with every event out.
pub(super) async fn finished(pool: &PgPool, like: &str) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE
                  (w.status IN ('refused', 'failed') AND EXISTS (SELECT 1 FROM payment_events e
                     WHERE e.withdrawal_id = w.id AND e.event_type = 'withdrawal.failed'))
                  OR (w.status = 'succeeded' AND w.payee_account <> $2 AND EXISTS (SELECT 1 FROM payment_events e
                     WHERE e.withdrawal_id = w.id AND e.event_type = 'withdrawal.succeeded'))
                  OR (w.status = 'returned' AND EXISTS (SELECT 1 FROM payment_events e
                     WHERE e.withdrawal_id = w.id AND e.event_type = 'withdrawal.returned'))),
                count(*)
         FROM withdrawals w WHERE w.request_id LIKE $1",
    )
    .bind(like)
    .bind(RETURNED_BY_THE_BANK)
    .fetch_one(pool)
    .await?)
}

/// How many events this run's withdrawals have had.
pub(super) async fn events(pool: &PgPool, like: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM payment_events e JOIN withdrawals w ON w.id = e.withdrawal_id
         WHERE w.request_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?)
}

/// How many distinct withdrawals `requests` make (a repeated request id is one).
pub(super) fn expected(requests: &[WithdrawalRequested]) -> i64 {
    let ids: std::collections::BTreeSet<&str> =
        requests.iter().map(|r| r.request_id.as_str()).collect();
    ids.len() as i64
}

/// The summary's withdrawal line: how the run's withdrawals ended, by reason.
pub(super) async fn summary(pool: &PgPool, like: &str) -> anyhow::Result<String> {
    let rows: Vec<(String, String, i64, Decimal)> = sqlx::query_as(
        "SELECT status, COALESCE(split_part(detail, ':', 1), payee_account), count(*), sum(amount - fee)
         FROM withdrawals WHERE request_id LIKE $1 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let asked: i64 = rows.iter().map(|r| r.2).sum();
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
        "  {:<11} {asked} kept: {} · {paid_out} CNY paid out",
        "withdrawals",
        parts.join(", ")
    ))
}
