//! The demo's transfers between wallets, asked for by the platform's wallet
//! application once the payments have their outcomes: forty from twenty
//! payers to one popular payee (whose wallet row no transfer holds), ten
//! spread over ten payees, one of each refusal — to oneself, to a wallet
//! ops froze, in a currency the payee does not hold, more than the payer
//! has, to a user who does not exist, from a payer on the risk block
//! list — the same request twice (one transfer) and a conflicting one.
//! Every transfer ends in its event; the summary tells how they ended.

use chrono::Utc;
use payfleet_common::messages::{SCHEMA_VERSION, TransferRequested};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::{
    WALLET_APP,
    seed::{BLOCKED_USER, USERS},
};
use crate::{ops, seed as seeder};

/// The user every hot transfer pays.
fn hot_payee() -> String {
    format!("demo-user-{}", USERS - 1)
}

/// A user whose CNY wallet ops froze, and one who holds only dollars.
const FROZEN_WALLET_USER: &str = "demo-frozen-wallet";
const DOLLAR_USER: &str = "demo-dollar-user";

/// Registers the transfers' own parties: a user whose wallet ops froze
/// (through `payfleet wallet freeze`'s own function) and one who holds
/// only dollars.
pub(super) async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    seeder::Catalogue {
        users: vec![
            seeder::user(FROZEN_WALLET_USER).wallet(
                "CNY",
                Decimal::new(10_000, 2),
                "demo-seed:frozen-wallet",
            ),
            seeder::user(DOLLAR_USER).wallet("USD", Decimal::new(10_000, 2), "demo-seed:dollars"),
        ],
        ..Default::default()
    }
    .seed(pool)
    .await?;
    let acting = ops::merchant::Acting {
        operator: "payfleet-demo",
        reason: "the demo's wallet under a fraud review",
    };
    ops::user::set_wallet_status(pool, FROZEN_WALLET_USER, "CNY", true, &acting).await?;
    Ok(())
}

/// The `LIKE` pattern of run `run_id`'s transfer request ids.
pub(super) fn like(run_id: &str) -> String {
    format!("tr-{run_id}-%")
}

/// The transfer requests of run `run_id`, in the order they are published.
pub(super) fn plan(run_id: &str) -> Vec<TransferRequested> {
    let ask = |n: usize, payer: String, payee: String, cents: i64| TransferRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: WALLET_APP.to_owned(),
        request_id: format!("tr-{run_id}-{n:03}"),
        payer_user_id: payer,
        payee_user_id: payee,
        amount: Decimal::new(cents, 2),
        currency: "CNY".to_owned(),
        memo: None,
        notify_url: None,
        requested_at: Utc::now(),
    };
    // users the payments share but the withdrawals and top-ups leave alone
    let user = |i: usize| format!("demo-user-{i}");
    let mut requests: Vec<TransferRequested> = (0..40)
        .map(|n| ask(n, user(140 + n % 20), hot_payee(), 100 + 25 * n as i64))
        .collect();
    requests.extend((0..10).map(|n| ask(40 + n, user(160 + n), user(170 + n), 2_000)));
    requests.push(ask(50, user(160), user(160), 1_000));
    requests.push(ask(51, user(161), FROZEN_WALLET_USER.to_owned(), 1_000));
    let mut dollars = ask(52, DOLLAR_USER.to_owned(), user(170), 1_000);
    dollars.currency = "USD".to_owned();
    requests.push(dollars);
    requests.push(ask(53, "demo-poor-0".to_owned(), user(170), 5_000));
    requests.push(ask(54, user(162), "demo-nobody".to_owned(), 1_000));
    requests.push(ask(55, BLOCKED_USER.to_owned(), user(170), 1_000));
    // the first request again (one transfer), and its id with other content
    requests.push(requests[0].clone());
    requests.push(TransferRequested {
        amount: requests[0].amount + Decimal::ONE,
        ..requests[0].clone()
    });
    requests
}

/// How many distinct transfers `requests` make (a repeated request id is one).
pub(super) fn expected(requests: &[TransferRequested]) -> i64 {
    let ids: std::collections::BTreeSet<&str> =
        requests.iter().map(|r| r.request_id.as_str()).collect();
    ids.len() as i64
}

/// How many of this run's transfers ended with their event.
pub(super) async fn finished(pool: &PgPool, like: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM transfers t WHERE t.request_id LIKE $1
           AND t.status IN ('refused', 'succeeded', 'failed')
           AND EXISTS (SELECT 1 FROM payment_events e WHERE e.transfer_id = t.id)",
    )
    .bind(like)
    .fetch_one(pool)
    .await?)
}

/// The summary's transfer line: how the run's transfers ended, by reason,
/// and what the popular payee received.
pub(super) async fn summary(pool: &PgPool, like: &str) -> anyhow::Result<String> {
    let rows: Vec<(String, Option<String>, i64, Decimal)> = sqlx::query_as(
        "SELECT status, split_part(detail, ':', 1), count(*), sum(amount)
         FROM transfers WHERE request_id LIKE $1 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let (hot, received): (i64, Decimal) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(amount), 0) FROM transfers
         WHERE request_id LIKE $1 AND payee_user_id = $2 AND status = 'succeeded'",
    )
    .bind(like)
    .bind(hot_payee())
    .fetch_one(pool)
    .await?;
    let kept: i64 = rows.iter().map(|r| r.2).sum();
    let parts: Vec<String> = rows
        .iter()
        .map(|(status, reason, n, amount)| match reason {
            Some(reason) => format!("{status} {reason} {n}"),
            None => format!("{status} {n} ({amount} CNY)"),
        })
        .collect();
    Ok(format!(
        "  {:<11} {kept} kept: {} · {} received {received} CNY from {hot} transfers",
        "transfers",
        parts.join(", "),
        hot_payee()
    ))
}

/// How many events this run's transfers have had (each a webhook to the requester).
pub(super) async fn events(pool: &PgPool, like: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM payment_events e JOIN transfers t ON t.id = e.transfer_id
         WHERE t.request_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?)
}
