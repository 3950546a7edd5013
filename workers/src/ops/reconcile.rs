//! `payfleet reconcile`: downloads a channel's statement for a day and
//! compares it with our attempts at that channel: matched, missing on our
//! side, missing on theirs, amount, currency, status or fee mismatch; and
//! the refunds it paid back that day with ours, by refund id. The result is
//! stored (`reconciliation_runs`, `reconciliation_items`).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use payfleet_common::{AttemptId, PaymentId};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Error, Result, error::Doing};
use crate::domain::attempt::AttemptStatus;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub channel: String,
    pub day: NaiveDate,
    pub counts: BTreeMap<&'static str, usize>,
    pub mismatches: Vec<Value>,
}

impl Summary {
    pub fn clean(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Our attempt status and the channel's, seen as the same thing?
fn same_status(ours: &str, theirs: &str) -> bool {
    let Ok(ours) = AttemptStatus::parse(ours) else {
        return false;
    };
    match theirs {
        "SUCCEEDED" => ours == AttemptStatus::Succeeded,
        "FAILED" | "CLOSED" => matches!(ours, AttemptStatus::Failed | AttemptStatus::Closed),
        "PENDING" => ours.is_open(),
        _ => false,
    }
}

/// The channels with a statement to download (a `base_url`), by name.
pub async fn statement_channels(pool: &PgPool) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT name FROM channels WHERE base_url IS NOT NULL ORDER BY name")
            .fetch_all(pool)
            .await?,
    )
}

pub async fn reconcile(pool: &PgPool, channel: &str, day: NaiveDate) -> Result<Summary> {
    let base_url: Option<Option<String>> =
        sqlx::query_scalar("SELECT base_url FROM channels WHERE name = $1")
            .bind(channel)
            .fetch_optional(pool)
            .await?;
    let Some(Some(base_url)) = base_url else {
        return Err(Error::refused(format!(
            "channel `{channel}` has no statement to download (not a sandbox channel)"
        )));
    };
    let url = format!(
        "{}/channels/{channel}/statement?date={day}",
        base_url.trim_end_matches('/')
    );
    let statement: Value = reqwest::get(&url)
        .await
        .doing_with(|| format!("downloading {url}"))?
        .error_for_status()?
        .json()
        .await?;
    let mut theirs: BTreeMap<String, Value> = BTreeMap::new();
    for trade in statement["trades"].as_array().into_iter().flatten() {
        if let Some(out) = trade["out_trade_no"].as_str() {
            theirs.insert(out.to_owned(), trade.clone());
        }
    }
    // Our fee for an attempt: the one booked with its money, else what a
    // success would cost at the payment's agreed fee; nothing for the rest.
    // The day is a range of created_at (in the session's time zone, as
    // `created_at::date` was), so the (channel, created_at) index serves it;
    // the payment's fee is looked up by its key for each attempt of the
    // day, never by a join the planner may turn into a scan of payments.
    let ours: Vec<(AttemptId, PaymentId, Decimal, String, String, Decimal)> = sqlx::query_as(
        "SELECT a.id, a.payment_id, a.amount, a.currency::text, a.status,
                COALESCE(a.fee, CASE WHEN a.status = 'succeeded'
                    THEN (SELECT p.channel_fee FROM payments p WHERE p.id = a.payment_id) ELSE 0 END)
         FROM payment_attempts a
         WHERE a.channel = $1 AND a.created_at >= $2::date::timestamptz AND a.created_at < ($2::date + 1)::timestamptz",
    )
    .bind(channel)
    .bind(day)
    .fetch_all(pool)
    .await?;

    type Item = (
        &'static str,
        String,
        Option<PaymentId>,
        Option<Value>,
        Option<Value>,
    );
    let mut items: Vec<Item> = Vec::new();
    for (attempt, payment, amount, currency, status, fee) in &ours {
        let mine = json!({"amount": amount.to_string(), "currency": currency, "status": status, "fee": fee.to_string()});
        match theirs.remove(&attempt.to_string()) {
            None if status == AttemptStatus::Succeeded.as_str() => items.push((
                "missing_theirs",
                attempt.to_string(),
                Some(*payment),
                Some(mine),
                None,
            )),
            // never reached the channel (declined before, or failed to send): nothing to match
            None => {}
            Some(trade) => {
                let money = |field: &str| -> Option<Decimal> {
                    trade[field].as_str().and_then(|a| a.parse().ok())
                };
                let their_status = trade["status"].as_str().unwrap_or("");
                let kind = if money("amount") != Some(*amount) {
                    "amount_mismatch"
                } else if trade["currency"].as_str() != Some(currency.as_str()) {
                    "currency_mismatch"
                } else if !same_status(status, their_status) {
                    "status_mismatch"
                } else if money("fee") != Some(*fee) {
                    "fee_mismatch"
                } else {
                    "matched"
                };
                items.push((
                    kind,
                    attempt.to_string(),
                    Some(*payment),
                    Some(mine),
                    Some(trade),
                ));
            }
        }
    }
    for (out, trade) in theirs {
        items.push(("missing_ours", out, None, None, Some(trade)));
    }
    items.extend(match_refunds(pool, channel, day, &statement).await?);

    let mut summary = Summary {
        channel: channel.to_owned(),
        day,
        ..Summary::default()
    };
    for (kind, attempt, payment, mine, trade) in &items {
        *summary.counts.entry(kind).or_default() += 1;
        if !matches!(*kind, "matched" | "refund_matched") {
            summary.mismatches.push(json!({"kind": kind, "attempt_id": attempt, "payment_id": payment, "ours": mine, "theirs": trade}));
        }
    }
    let matched = summary.counts.get("matched").copied().unwrap_or(0)
        + summary.counts.get("refund_matched").copied().unwrap_or(0);
    let mut tx = pool.begin().await?;
    let run: i64 = sqlx::query_scalar("INSERT INTO reconciliation_runs (channel, day, matched, mismatched) VALUES ($1, $2, $3, $4) RETURNING id")
        .bind(channel)
        .bind(day)
        .bind(matched as i32)
        .bind(summary.mismatches.len() as i32)
        .fetch_one(&mut *tx)
        .await?;
    for (kind, attempt, payment, mine, trade) in items {
        sqlx::query("INSERT INTO reconciliation_items (run_id, kind, attempt_id, payment_id, ours, theirs) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(run)
            .bind(kind)
            .bind(attempt)
            .bind(payment)
            .bind(mine)
            .bind(trade)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(summary)
}

/// The refunds the channel paid back on `day` (its statement's `refunds`)
/// against ours that succeeded that day, by refund id (the channel's
/// idempotency key): `refund_matched`, `refund_missing_ours` (the channel
/// paid back money we have no refund for — investigate at once),
/// `refund_missing_theirs` (we booked a refund the channel does not list),
/// `refund_amount_mismatch`.
async fn match_refunds(
    pool: &PgPool,
    channel: &str,
    day: NaiveDate,
    statement: &Value,
) -> Result<
    Vec<(
        &'static str,
        String,
        Option<PaymentId>,
        Option<Value>,
        Option<Value>,
    )>,
> {
    let mut theirs: BTreeMap<String, Value> = BTreeMap::new();
    for refund in statement["refunds"].as_array().into_iter().flatten() {
        if let Some(no) = refund["refund_no"].as_str() {
            theirs.insert(no.to_owned(), refund.clone());
        }
    }
    let ours: Vec<(uuid::Uuid, PaymentId, Decimal, String, String)> = sqlx::query_as(
        "SELECT id, payment_id, amount, currency::text, origin FROM refunds
         WHERE channel = $1 AND status = 'succeeded'
           AND refunded_at >= $2::date::timestamptz AND refunded_at < ($2::date + 1)::timestamptz",
    )
    .bind(channel)
    .bind(day)
    .fetch_all(pool)
    .await?;
    let mut items = Vec::new();
    for (id, payment, amount, currency, origin) in ours {
        let mine = json!({"refund": amount.to_string(), "currency": currency, "origin": origin});
        let Some(refund) = theirs.remove(&id.to_string()) else {
            items.push((
                "refund_missing_theirs",
                id.to_string(),
                Some(payment),
                Some(mine),
                None,
            ));
            continue;
        };
        let paid: Option<Decimal> = refund["amount"].as_str().and_then(|a| a.parse().ok());
        let kind = if paid == Some(amount) {
            "refund_matched"
        } else {
            "refund_amount_mismatch"
        };
        items.push((
            kind,
            id.to_string(),
            Some(payment),
            Some(mine),
            Some(refund),
        ));
    }
    for (no, refund) in theirs {
        // Paid back that day, but ours is not (yet) succeeded on that day:
        // the refund may be ours still in flight, or not ours at all.
        let known: Option<(PaymentId, String)> = sqlx::query_as(
            "SELECT payment_id, status FROM refunds WHERE id::text = $1 AND channel = $2",
        )
        .bind(&no)
        .bind(channel)
        .fetch_optional(pool)
        .await?;
        let mine = known.as_ref().map(|(_, status)| json!({"status": status}));
        items.push((
            "refund_missing_ours",
            no,
            known.map(|(p, _)| p),
            mine,
            Some(refund),
        ));
    }
    Ok(items)
}
