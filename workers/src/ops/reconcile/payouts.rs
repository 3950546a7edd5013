//! The payouts on a channel's statement against our withdrawals at that
//! channel, by payout_no (our withdrawal id). A payout the channel made
//! that we do not hold as paid out (an `exception` whose queries ran out)
//! shows as `payout_status_mismatch`: what ops settle it with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Item, Result};
use crate::domain::withdrawal::WithdrawalStatus;

/// A withdrawal of ours: id, amount, fee, currency, status, channel fee.
type Row = (Uuid, Decimal, Decimal, String, String, Option<Decimal>);

/// Did the channel pay it out, as we hold it (a returned one was paid too)?
fn paid_out(status: &str) -> bool {
    matches!(
        WithdrawalStatus::parse(status),
        Ok(WithdrawalStatus::Succeeded | WithdrawalStatus::Returned)
    )
}

/// A payout's key: its payout_no, as our withdrawal id prints when it is one.
fn key(payout_no: &str) -> String {
    payout_no
        .parse::<Uuid>()
        .map_or_else(|_| payout_no.to_owned(), |id| id.to_string())
}

/// The payouts a statement lists, by key.
fn listed(statement: &Value) -> BTreeMap<String, Value> {
    statement["payouts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|payout| Some((key(payout["payout_no"].as_str()?), payout.clone())))
        .collect()
}

/// What a listed payout says of our withdrawal (its status, the amount
/// leaving the wallet, our fee, currency and the channel's fee as our books
/// charged it): the payee got amount − fee in our currency (else an amount
/// mismatch), SUCCEEDED ↔ succeeded and RETURNED ↔ returned (else a status
/// mismatch: one we do not hold as paid out too), and the channel took the
/// fee our books charged the platform (else a fee mismatch).
fn classify(ours: &Row, payout: &Value) -> &'static str {
    let (_, amount, fee, currency, status, channel_fee) = ours;
    let (amount, fee, currency) = (*amount, *fee, currency.as_str());
    let money = |field: &str| -> Option<Decimal> { payout[field].as_str()?.parse().ok() };
    let paid = money("amount");
    if paid != Some(amount - fee) || payout["currency"].as_str() != Some(currency) {
        return "payout_amount_mismatch";
    }
    let same = matches!(
        (WithdrawalStatus::parse(status), payout["status"].as_str()),
        (Ok(WithdrawalStatus::Succeeded), Some("SUCCEEDED"))
            | (Ok(WithdrawalStatus::Returned), Some("RETURNED"))
    );
    if !same {
        "payout_status_mismatch"
    } else if money("fee") != Some(channel_fee.unwrap_or(Decimal::ZERO)) {
        "payout_fee_mismatch"
    } else {
        "payout_matched"
    }
}

/// The payouts the channel made on the day (its statement's `payouts`,
/// listed by the day the channel paid) against our withdrawals at the
/// channel, by payout_no — ours paid out that day (succeeded or returned
/// since), and any of ours the statement lists whatever its status:
/// `payout_matched`, `payout_amount_mismatch`, `payout_status_mismatch`,
/// `payout_missing_theirs` (paid out by our books, listed neither that day
/// nor the day before: a payout we learned of after midnight is on the
/// day before), `payout_missing_ours` (the channel paid money out that we
/// have no withdrawal at the channel for — investigate at once). The
/// items' attempt column holds the payout_no; they name no payment.
pub(super) async fn match_payouts(
    pool: &PgPool,
    channel: &str,
    (from, until): (DateTime<Utc>, DateTime<Utc>),
    (statement, day_before): (&Value, &Value),
) -> Result<Vec<Item>> {
    let mut theirs = listed(statement);
    let listed_before = listed(day_before);
    let ids: Vec<Uuid> = theirs.keys().filter_map(|no| no.parse().ok()).collect();
    let ours: Vec<Row> = sqlx::query_as(
        "SELECT id, amount, fee, currency::text, status, channel_fee FROM withdrawals
         WHERE channel = $1 AND status IN ('succeeded', 'returned') AND paid_at >= $2 AND paid_at < $3
         UNION
         SELECT id, amount, fee, currency::text, status, channel_fee FROM withdrawals
         WHERE id = ANY($4) AND channel = $1",
    )
    .bind(channel)
    .bind(from)
    .bind(until)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut items: Vec<Item> = Vec::new();
    for row in ours {
        let (id, amount, fee, currency, status, channel_fee) = &row;
        let (amount, fee) = (*amount, *fee);
        let no = id.to_string();
        let mine = json!({
            "amount": amount.to_string(), "fee": fee.to_string(), "payout": (amount - fee).to_string(),
            "currency": currency, "status": status, "channel_fee": channel_fee.map(|f| f.to_string()),
        });
        match theirs.remove(&no) {
            Some(payout) => {
                items.push((classify(&row, &payout), no, None, Some(mine), Some(payout)))
            }
            None if paid_out(status) && !listed_before.contains_key(&no) => {
                items.push(("payout_missing_theirs", no, None, Some(mine), None));
            }
            // Listed the day before, or never paid out: nothing to match.
            None => {}
        }
    }
    items.extend(missing_ours(pool, theirs).await?);
    Ok(items)
}

/// The listed payouts left over: no withdrawal of ours at the channel. One
/// of ours at another channel (or at none yet) is named with where it is.
async fn missing_ours(pool: &PgPool, theirs: BTreeMap<String, Value>) -> Result<Vec<Item>> {
    let ids: Vec<Uuid> = theirs.keys().filter_map(|no| no.parse().ok()).collect();
    let elsewhere: Vec<(Uuid, Option<String>, String)> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as("SELECT id, channel, status FROM withdrawals WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?
    };
    let elsewhere: BTreeMap<String, Value> = elsewhere
        .into_iter()
        .map(|(id, channel, status)| {
            (
                id.to_string(),
                json!({"channel": channel, "status": status}),
            )
        })
        .collect();
    Ok(theirs
        .into_iter()
        .map(|(no, payout)| {
            let mine = elsewhere.get(&no).cloned();
            ("payout_missing_ours", no, None, mine, Some(payout))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn payout(amount: &str, currency: &str, status: &str) -> Value {
        json!({"payout_no": "p", "amount": amount, "currency": currency, "status": status, "fee": "3.00"})
    }

    #[test]
    fn a_payout_matches_what_the_payee_got_and_the_status() {
        let (amount, fee) = (d("250.00"), d("0.25"));
        let ours = |status: &str, channel_fee: &str| -> Row {
            let (id, currency) = (Uuid::nil(), "CNY".to_owned());
            (
                id,
                amount,
                fee,
                currency,
                status.to_owned(),
                Some(d(channel_fee)),
            )
        };
        let check = |status: &str, listed: &Value| classify(&ours(status, "3.00"), listed);
        // the channel took another fee than our books charged the platform
        assert_eq!(
            classify(
                &ours("succeeded", "2.50"),
                &payout("249.75", "CNY", "SUCCEEDED")
            ),
            "payout_fee_mismatch"
        );
        assert_eq!(
            check("succeeded", &payout("249.75", "CNY", "SUCCEEDED")),
            "payout_matched"
        );
        assert_eq!(
            check("returned", &payout("249.75", "CNY", "RETURNED")),
            "payout_matched"
        );
        // returned at the channel, not (yet) by our books; and the reverse
        assert_eq!(
            check("succeeded", &payout("249.75", "CNY", "RETURNED")),
            "payout_status_mismatch"
        );
        assert_eq!(
            check("returned", &payout("249.75", "CNY", "SUCCEEDED")),
            "payout_status_mismatch"
        );
        // paid by the channel, not paid out by our books
        for ours in ["exception", "unknown", "sending", "failed"] {
            assert_eq!(
                check(ours, &payout("249.75", "CNY", "SUCCEEDED")),
                "payout_status_mismatch",
                "{ours}"
            );
        }
        // the whole amount (the fee not taken), or another currency
        assert_eq!(
            check("succeeded", &payout("250.00", "CNY", "SUCCEEDED")),
            "payout_amount_mismatch"
        );
        assert_eq!(
            check("succeeded", &payout("249.75", "USD", "SUCCEEDED")),
            "payout_amount_mismatch"
        );
        assert_eq!(
            check("succeeded", &json!({"status": "SUCCEEDED"})),
            "payout_amount_mismatch"
        );
    }

    #[test]
    fn a_statement_lists_payouts_by_our_withdrawal_id() {
        let id = Uuid::new_v4();
        let statement = json!({"payouts": [
            {"payout_no": id.to_string().to_uppercase(), "amount": "1.00"},
            {"payout_no": "not-ours"},
            {"amount": "2.00"},
        ]});
        let found = listed(&statement);
        assert_eq!(
            found.keys().cloned().collect::<Vec<_>>(),
            [id.to_string(), "not-ours".to_owned()]
        );
        assert!(
            listed(&json!({"trades": []})).is_empty(),
            "a statement from before payouts"
        );
        assert!(paid_out("succeeded") && paid_out("returned"));
        assert!(!paid_out("exception") && !paid_out("failed") && !paid_out("bogus"));
    }
}
