//! `payfleet reconcile`: downloads a channel's statement for a day and
//! compares it with our attempts at that channel: matched, missing on our
//! side, missing on theirs, amount mismatch, status mismatch. The result is
//! stored (`reconciliation_runs`, `reconciliation_items`).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

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
    matches!(
        (ours, theirs),
        ("succeeded", "SUCCEEDED")
            | ("failed", "FAILED")
            | ("closed", "CLOSED")
            | ("failed", "CLOSED")
            | ("closed", "FAILED")
            | ("sending" | "pending" | "unknown", "PENDING")
    )
}

pub async fn reconcile(pool: &PgPool, channel: &str, day: NaiveDate) -> anyhow::Result<Summary> {
    let base_url: Option<Option<String>> =
        sqlx::query_scalar("SELECT base_url FROM channels WHERE name = $1")
            .bind(channel)
            .fetch_optional(pool)
            .await?;
    let Some(Some(base_url)) = base_url else {
        bail!("channel `{channel}` has no statement to download (not a sandbox channel)")
    };
    let url = format!(
        "{}/channels/{channel}/statement?date={day}",
        base_url.trim_end_matches('/')
    );
    let statement: Value = reqwest::get(&url)
        .await
        .with_context(|| format!("downloading {url}"))?
        .error_for_status()?
        .json()
        .await?;
    let mut theirs: BTreeMap<String, Value> = BTreeMap::new();
    for trade in statement["trades"].as_array().into_iter().flatten() {
        if let Some(out) = trade["out_trade_no"].as_str() {
            theirs.insert(out.to_owned(), trade.clone());
        }
    }
    let ours: Vec<(Uuid, Uuid, Decimal, String)> = sqlx::query_as(
        "SELECT id, payment_id, amount, status FROM payment_attempts WHERE channel = $1 AND created_at::date = $2",
    )
    .bind(channel)
    .bind(day)
    .fetch_all(pool)
    .await?;

    type Item = (
        &'static str,
        String,
        Option<Uuid>,
        Option<Value>,
        Option<Value>,
    );
    let mut items: Vec<Item> = Vec::new();
    for (attempt, payment, amount, status) in &ours {
        let mine = json!({"amount": amount.to_string(), "status": status});
        match theirs.remove(&attempt.to_string()) {
            None if status == "succeeded" => items.push((
                "missing_theirs",
                attempt.to_string(),
                Some(*payment),
                Some(mine),
                None,
            )),
            // never reached the channel (declined before, or failed to send): nothing to match
            None => {}
            Some(trade) => {
                let their_amount: Decimal = trade["amount"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_default();
                let their_status = trade["status"].as_str().unwrap_or("");
                let kind = if their_amount != *amount {
                    "amount_mismatch"
                } else if !same_status(status, their_status) {
                    "status_mismatch"
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

    let mut summary = Summary {
        channel: channel.to_owned(),
        day,
        ..Summary::default()
    };
    for (kind, attempt, payment, mine, trade) in &items {
        *summary.counts.entry(kind).or_default() += 1;
        if *kind != "matched" {
            summary.mismatches.push(json!({"kind": kind, "attempt_id": attempt, "payment_id": payment, "ours": mine, "theirs": trade}));
        }
    }
    let matched = summary.counts.get("matched").copied().unwrap_or(0);
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
