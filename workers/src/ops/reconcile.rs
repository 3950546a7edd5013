//! `payfleet reconcile`: downloads a channel's statement for a day and
//! compares it with our attempts at that channel: matched, missing on our
//! side, missing on theirs, amount, currency, status or fee mismatch (a
//! reversed charge is REVERSED with no fee on both sides); and the refunds
//! it paid back and the reversals it made that day with ours, by refund
//! (reversal) id; and the payouts it made with our withdrawals, by payout_no
//! (`payouts`). The day is the fleet's business day (`business_time_zone`),
//! as the channel's statement counts it. The result is stored
//! (`reconciliation_runs`, `reconciliation_items`).

mod payouts;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use payfleet_common::{AttemptId, PaymentId};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Error, Result, error::Doing};
use crate::domain::{attempt::AttemptStatus, business_day::day_bounds};

/// The item kinds that are no mismatch.
const MATCHED: [&str; 4] = [
    "matched",
    "refund_matched",
    "reversal_matched",
    "payout_matched",
];

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

pub async fn reconcile(pool: &PgPool, channel: &str, day: NaiveDate, zone: Tz) -> Result<Summary> {
    let (from, until) = day_bounds(day, zone);
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
    let statement = fetch_statement(&base_url, channel, day).await?;
    let mut theirs: BTreeMap<String, Value> = BTreeMap::new();
    for trade in statement["trades"].as_array().into_iter().flatten() {
        if let Some(out) = trade["out_trade_no"].as_str() {
            theirs.insert(out.to_owned(), trade.clone());
        }
    }
    // Our fee for an attempt: the one booked with its money, else what a
    // success would cost at the payment's agreed fee; nothing for the rest,
    // nor for a charge we reversed (the channel keeps no fee on it). The
    // day is a range of created_at, so the (channel, created_at) index
    // serves it; the payment's fee and the reversal are looked up by key
    // for each attempt of the day, never by a join the planner may turn
    // into a scan of payments.
    let ours: Vec<(AttemptId, PaymentId, Decimal, String, String, Decimal)> = sqlx::query_as(
        "SELECT id, payment_id, amount, currency, CASE WHEN reversed THEN 'reversed' ELSE status END,
                CASE WHEN reversed THEN 0 ELSE fee END
         FROM (SELECT a.id, a.payment_id, a.amount, a.currency::text AS currency, a.status,
                      COALESCE(a.fee, CASE WHEN a.status = 'succeeded'
                          THEN (SELECT p.channel_fee FROM payments p WHERE p.id = a.payment_id) ELSE 0 END) AS fee,
                      EXISTS (SELECT 1 FROM refunds r WHERE r.attempt_id = a.id AND r.kind = 'reversal'
                                                        AND r.status = 'succeeded') AS reversed
               FROM payment_attempts a
               WHERE a.channel = $1 AND a.created_at >= $2 AND a.created_at < $3) attempts",
    )
    .bind(channel)
    .bind(from)
    .bind(until)
    .fetch_all(pool)
    .await?;

    let mut items: Vec<Item> = Vec::new();
    for (attempt, payment, amount, currency, status, fee) in &ours {
        let mine = json!({"amount": amount.to_string(), "currency": currency, "status": status, "fee": fee.to_string()});
        match theirs.remove(&attempt.to_string()) {
            None if status == AttemptStatus::Succeeded.as_str() || status == "reversed" => items
                .push((
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
                } else if !(same_status(status, their_status)
                    || (status == "reversed" && their_status == "REVERSED"))
                {
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
    // A refund or reversal done by the channel late on the day before may
    // be ours only after midnight (a status query found it): listed there,
    // it is not missing.
    let day_before = fetch_statement(&base_url, channel, day.pred_opt().unwrap_or(day)).await?;
    for kind in [GivenBack::Refund, GivenBack::Reversal] {
        items.extend(
            match_given_back(
                pool,
                channel,
                (from, until),
                (&statement, &day_before),
                kind,
            )
            .await?,
        );
    }
    items.extend(
        payouts::match_payouts(pool, channel, (from, until), (&statement, &day_before)).await?,
    );

    let mut summary = Summary {
        channel: channel.to_owned(),
        day,
        ..Summary::default()
    };
    for (kind, attempt, payment, mine, trade) in &items {
        *summary.counts.entry(kind).or_default() += 1;
        if !MATCHED.contains(kind) {
            summary.mismatches.push(json!({"kind": kind, "attempt_id": attempt, "payment_id": payment, "ours": mine, "theirs": trade}));
        }
    }
    let matched: usize = MATCHED
        .iter()
        .filter_map(|kind| summary.counts.get(kind))
        .sum();
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

/// The channel's statement for `day`.
async fn fetch_statement(base_url: &str, channel: &str, day: NaiveDate) -> Result<Value> {
    let url = format!(
        "{}/channels/{channel}/statement?date={day}",
        base_url.trim_end_matches('/')
    );
    Ok(reqwest::get(&url)
        .await
        .doing_with(|| format!("downloading {url}"))?
        .error_for_status()?
        .json()
        .await?)
}

/// Money a channel gave back for a charge, listed on its statement.
#[derive(Debug, Clone, Copy)]
enum GivenBack {
    Refund,
    Reversal,
}

impl GivenBack {
    /// The statement's list, the id field of its entries, our `refunds.kind`
    /// and the items' kinds (matched, missing ours, missing theirs, amount).
    fn names(self) -> (&'static str, &'static str, &'static str, [&'static str; 4]) {
        match self {
            GivenBack::Refund => (
                "refunds",
                "refund_no",
                "refund",
                [
                    "refund_matched",
                    "refund_missing_ours",
                    "refund_missing_theirs",
                    "refund_amount_mismatch",
                ],
            ),
            GivenBack::Reversal => (
                "reversals",
                "reversal_no",
                "reversal",
                [
                    "reversal_matched",
                    "reversal_missing_ours",
                    "reversal_missing_theirs",
                    "reversal_amount_mismatch",
                ],
            ),
        }
    }
}

/// One reconciliation item: its kind, the id it is about (an attempt, a
/// refund or reversal id, a payout_no), the payment if any, ours, theirs.
type Item = (
    &'static str,
    String,
    Option<PaymentId>,
    Option<Value>,
    Option<Value>,
);

/// The refunds (or reversals) the channel made on the day (its
/// statement's `refunds` / `reversals`) against ours, by id (the channel's
/// idempotency key) — ours that succeeded that day, and any of ours the
/// statement lists whenever we learned of it: `*_matched`, `*_missing_ours`
/// (the channel gave back money we have no refund for — investigate at
/// once), `*_missing_theirs` (we booked one the channel lists neither that
/// day nor the day before), `*_amount_mismatch`.
async fn match_given_back(
    pool: &PgPool,
    channel: &str,
    (from, until): (DateTime<Utc>, DateTime<Utc>),
    (statement, day_before): (&Value, &Value),
    given_back: GivenBack,
) -> Result<Vec<Item>> {
    let (list, id_field, our_kind, [matched, missing_ours, missing_theirs, amount_mismatch]) =
        given_back.names();
    let listed = |statement: &Value| -> BTreeMap<String, Value> {
        statement[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| Some((entry[id_field].as_str()?.to_owned(), entry.clone())))
            .collect()
    };
    let mut theirs = listed(statement);
    let listed_before = listed(day_before);
    let ids: Vec<uuid::Uuid> = theirs.keys().filter_map(|no| no.parse().ok()).collect();
    let ours: Vec<(uuid::Uuid, PaymentId, Decimal, String, String)> = sqlx::query_as(
        "SELECT id, payment_id, amount, currency::text, origin FROM refunds
         WHERE channel = $1 AND status = 'succeeded' AND kind = $4 AND refunded_at >= $2 AND refunded_at < $3
         UNION
         SELECT id, payment_id, amount, currency::text, origin FROM refunds
         WHERE id = ANY($5) AND channel = $1 AND status = 'succeeded' AND kind = $4",
    )
    .bind(channel)
    .bind(from)
    .bind(until)
    .bind(our_kind)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut items = Vec::new();
    for (id, payment, amount, currency, origin) in ours {
        let mine = json!({our_kind: amount.to_string(), "currency": currency, "origin": origin});
        let Some(entry) = theirs.remove(&id.to_string()) else {
            if !listed_before.contains_key(&id.to_string()) {
                items.push((
                    missing_theirs,
                    id.to_string(),
                    Some(payment),
                    Some(mine),
                    None,
                ));
            }
            continue;
        };
        let paid: Option<Decimal> = entry["amount"].as_str().and_then(|a| a.parse().ok());
        let kind = if paid == Some(amount) {
            matched
        } else {
            amount_mismatch
        };
        items.push((kind, id.to_string(), Some(payment), Some(mine), Some(entry)));
    }
    for (no, entry) in theirs {
        // Given back that day, but ours is not (yet) succeeded on that day:
        // it may be ours still in flight, or not ours at all.
        let known: Option<(PaymentId, String)> = sqlx::query_as(
            "SELECT payment_id, status FROM refunds WHERE id::text = $1 AND channel = $2",
        )
        .bind(&no)
        .bind(channel)
        .fetch_optional(pool)
        .await?;
        let mine = known.as_ref().map(|(_, status)| json!({"status": status}));
        items.push((missing_ours, no, known.map(|(p, _)| p), mine, Some(entry)));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_business_day_is_midnight_to_midnight_in_its_zone() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
        assert_eq!(
            day_bounds(day, Tz::UTC),
            (at("2026-12-06T00:00:00Z"), at("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            day_bounds(day, Tz::Asia__Shanghai),
            (at("2026-12-05T16:00:00Z"), at("2026-12-06T16:00:00Z"))
        );
    }

    #[test]
    fn a_day_whose_midnight_the_clocks_skip_starts_after_the_gap() {
        // São Paulo moved its clocks from 00:00 to 01:00 on 2018-11-04.
        let day = NaiveDate::from_ymd_opt(2018, 11, 4).unwrap();
        let (start, end) = day_bounds(day, Tz::America__Sao_Paulo);
        assert_eq!(start, at("2018-11-04T03:00:00Z"));
        assert_eq!(end, at("2018-11-05T02:00:00Z"));
    }
}
