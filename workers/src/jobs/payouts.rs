//! The daily settlement payouts (T+1): once a business day of
//! `business_time_zone`, every active merchant with a registered bank
//! account is paid what settled before the day began, less the holdback
//! (a share of its sales of the last 30 days), when that is at least the
//! currency's minimum (`merchant_payout_minimum`). Each is a payout of
//! request id `settlement-<day>-<currency>`: the unique (merchant, request id) makes
//! it once per merchant, currency and day however many processes run the
//! job, and it takes the payout's path from fund-freeze on (Try judges
//! the balance again under the account's lock).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use payfleet_common::{
    CancellationToken, Topology,
    messages::{WithdrawalStep, kind},
    outbox::{self, OutboxMessage},
    runtime::{Shared, StageError},
};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{
    handoff,
    withdrawal::{
        Limits, WithdrawalStatus,
        limits::payable,
        record::{NewWithdrawal, OWNER_MERCHANT},
    },
};
use crate::stages::order_validation::{
    payout::{DAILY_PREFIX, payout_id},
    withdrawal::PAYOUT_METHOD,
};

/// How often a process looks for the day's payouts still to make.
const EVERY: std::time::Duration = std::time::Duration::from_secs(600);
/// The first look after a process starts: soon, so processes restarted
/// more often than [`EVERY`] still make the day's payouts.
const FIRST: std::time::Duration = std::time::Duration::from_secs(30);

/// The request id of a merchant's daily payout in `currency` on business day `day`.
pub fn daily_request_id(day: NaiveDate, currency: &str) -> String {
    format!("{DAILY_PREFIX}{day}-{currency}")
}

/// Runs [`schedule`] half a minute after start-up, then every ten minutes.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let limits = Limits::new(&shared.settings);
    let mut wait = FIRST;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = EVERY;
        let topology = match Topology::from_settings(&shared.settings) {
            Ok(topology) => topology,
            Err(error) => {
                tracing::warn!(%error, "daily payouts: no topology");
                continue;
            }
        };
        let zone = shared.settings.business_zone();
        match schedule(&shared.pool, &topology, &limits, zone, Utc::now()).await {
            Ok(made) if !made.is_empty() => {
                tracing::info!(payouts = made.len(), "daily payouts asked")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "daily payouts failed"),
        }
    }
}

/// Asks today's payout of every merchant that is owed one and has none
/// yet; the ids of the payouts it made.
pub async fn schedule(
    pool: &PgPool,
    topology: &Topology,
    limits: &Limits,
    zone: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StageError> {
    let day = now.with_timezone(&zone).date_naive();
    let (day_start, _) = crate::domain::business_day::day_bounds(day, zone);
    let channel: Option<String> = sqlx::query_scalar(
        "SELECT name FROM channels WHERE status = 'active' AND $1 = ANY (methods) ORDER BY fee_rate, name LIMIT 1",
    )
    .bind(PAYOUT_METHOD)
    .fetch_optional(pool)
    .await?;
    let Some(channel) = channel else {
        return Ok(Vec::new());
    };
    // What each merchant may be paid of what it held before the day began:
    // its balance now (postings not yet rolled up included) less what
    // today's credits brought. Its debits need no undoing: a refund's or a
    // payout's debit leaves the frozen amount, never the available one.
    let owed: Vec<Owed> = sqlx::query_as(
        "SELECT m.id AS merchant, m.payout_account, a.id AS account, a.currency::text AS currency,
                a.available + COALESCE((SELECT sum(p.amount) FROM postings p WHERE p.account_id = a.id AND NOT p.rolled_up), 0)
                  - COALESCE((SELECT sum(p.amount) FROM postings p
                               WHERE p.account_id = a.id AND p.created_at >= $1 AND p.amount > 0), 0)
                  AS before_today
         FROM merchants m JOIN accounts a ON a.owner_kind = 'merchant' AND a.owner_id = m.id
         WHERE m.status = 'active' AND m.payout_account IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM withdrawals w WHERE w.requester_id = m.id
                            AND w.owner_kind = 'merchant' AND w.request_id = 'settlement-' || $2 || '-' || a.currency)
         ORDER BY m.id, a.currency",
    )
    .bind(day_start)
    .bind(day.to_string())
    .fetch_all(pool)
    .await?;
    let mut made = Vec::new();
    for owed in owed {
        // one merchant's trouble never keeps the others from being paid
        match pay_one(pool, topology, limits, (&channel, day), &owed).await {
            Ok(Some(id)) => made.push(id),
            Ok(None) => {}
            Err(error) => tracing::warn!(
                %error,
                merchant = owed.merchant,
                currency = owed.currency,
                "daily payout not asked"
            ),
        }
    }
    Ok(made)
}

/// A merchant that may be owed a payout in one currency.
#[derive(sqlx::FromRow)]
struct Owed {
    merchant: String,
    payout_account: String,
    account: i64,
    currency: String,
    /// What it held before the day began.
    before_today: Decimal,
}

/// Asks one merchant's payout of the day in one currency, unless it is
/// owed less than the minimum or another process asked it first.
async fn pay_one(
    pool: &PgPool,
    topology: &Topology,
    limits: &Limits,
    (channel, day): (&str, NaiveDate),
    owed: &Owed,
) -> Result<Option<Uuid>, StageError> {
    let mut tx = pool.begin().await?;
    let amount = payable(&mut tx, limits, owed.account, owed.before_today).await?;
    if limits
        .payout_minimum_refusal(amount, &owed.currency)
        .is_some()
    {
        return Ok(None);
    }
    let day_request = daily_request_id(day, &owed.currency);
    let id = payout_id(&owed.merchant, &day_request);
    let new = NewWithdrawal {
        id,
        requester_id: &owed.merchant,
        request_id: &day_request,
        // the schedule's own request: no upstream body to compare with
        request_hash: "scheduled",
        owner_kind: OWNER_MERCHANT,
        user_id: &owed.merchant,
        account_id: Some(owed.account),
        amount,
        fee: Decimal::ZERO,
        currency: &owed.currency,
        payee_account: &owed.payout_account,
        channel: Some(channel),
        notify_url: None,
    };
    if !new
        .insert(&mut tx, WithdrawalStatus::Requested, None)
        .await?
    {
        return Ok(None);
    }
    let message = OutboxMessage::json(
        &topology.exchanges().stages,
        handoff::FUND_FREEZE,
        kind::WITHDRAWAL_VALIDATED,
        Some(&id.to_string()),
        &WithdrawalStep::new(id),
    )
    .map_err(StageError::permanent)?;
    outbox::insert(&mut tx, &[message]).await?;
    tx.commit().await?;
    Ok(Some(id))
}
