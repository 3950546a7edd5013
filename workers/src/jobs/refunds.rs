//! Refunds owed after a late success (a channel charged a payment we had
//! already given up) are sent back through the channel automatically: a
//! sender leases each owed row, calls the channel outside any transaction
//! with the refund id as the idempotency key, and records the answer. A
//! failed send stays owed and is tried again later; `payfleet status`
//! reports what is still owed. A refund the channel paid posts its journal
//! entry (payer refunds → the channel's clearing account) with the answer.

use std::{sync::Arc, time::Duration};

use payfleet_common::{AttemptId, CancellationToken, PaymentId, runtime::Shared};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

use crate::{
    channels::{Adapters, RefundError},
    domain::refund::{self, RefundStatus},
};

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    // Built on demand: a channel added while the fleet runs is refunded through too.
    let adapters = Adapters::new(shared.settings.channel_timeout);
    loop {
        if let Err(error) = send_owed(&shared, &adapters).await {
            tracing::warn!(%error, "refund pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn send_owed(shared: &Shared, adapters: &Adapters) -> anyhow::Result<()> {
    let pool = &shared.pool;
    let owed: Vec<(Uuid, PaymentId, AttemptId, String, Decimal, String)> = sqlx::query_as(
        "UPDATE refunds SET claimed_until = now() + interval '60 seconds', sends = sends + 1
         WHERE id IN (SELECT id FROM refunds WHERE status = 'owed' AND (claimed_until IS NULL OR claimed_until < now())
                      ORDER BY created_at LIMIT 16 FOR UPDATE SKIP LOCKED)
         RETURNING id, payment_id, attempt_id, channel, amount, currency::text",
    )
    .fetch_all(pool)
    .await?;
    for (refund_id, payment_id, attempt_id, channel, amount, currency) in owed {
        let answer = match adapters.get(pool, &channel).await {
            Ok(adapter) => adapter.refund(attempt_id, refund_id, amount).await,
            Err(error) => Err(error.into()),
        };
        let payload = match &answer {
            Ok(raw) => {
                json!({"call": "refund", "refund_no": refund_id, "amount": amount.to_string(), "answer": raw})
            }
            Err(error) => {
                json!({"call": "refund", "refund_no": refund_id, "amount": amount.to_string(), "error": error.to_string()})
            }
        };
        // Only a refund the channel says it paid, for the amount asked, is
        // booked; anything else (accepted, processing, another amount) stays
        // owed and is asked again with the same refund id.
        let answer = match answer {
            Ok(raw) if paid_in_full(&raw, amount) => Ok(raw),
            Ok(answer) => Err(RefundError::Unconfirmed { amount, answer }),
            Err(error) => Err(error),
        };
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload) VALUES ($1, $2, $3, 'request', $4)")
            .bind(payment_id)
            .bind(attempt_id)
            .bind(&channel)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
        match answer {
            Ok(_) => {
                let paid = refund::transition(
                    &mut tx,
                    refund_id,
                    RefundStatus::Owed,
                    RefundStatus::Succeeded,
                    None,
                )
                .await
                .map_err(|error| anyhow::anyhow!("refund {refund_id}: {error}"))?;
                if paid {
                    crate::domain::ledger::refund_sent(
                        &mut tx, refund_id, attempt_id, &channel, amount, &currency,
                    )
                    .await
                    .map_err(|error| anyhow::anyhow!("booking refund {refund_id}: {error}"))?;
                }
                metrics::counter!("payfleet_refunds_total", "kind" => "refund", "result" => "succeeded").increment(1);
                tracing::info!(%payment_id, %refund_id, %amount, channel, "late charge refunded");
            }
            Err(error) => {
                sqlx::query("UPDATE refunds SET claimed_until = now() + interval '30 seconds', last_error = $2 WHERE id = $1")
                    .bind(refund_id)
                    .bind(error.to_string())
                    .execute(&mut *tx)
                    .await?;
                metrics::counter!("payfleet_refunds_total", "kind" => "refund", "result" => "retried").increment(1);
                tracing::warn!(%payment_id, %refund_id, %error, "refund not accepted by the channel; trying again later");
            }
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Whether a channel's refund answer says it paid `amount` back.
fn paid_in_full(raw: &serde_json::Value, amount: Decimal) -> bool {
    raw["status"] == "SUCCEEDED"
        && raw["amount"]
            .as_str()
            .and_then(|a| a.parse::<Decimal>().ok())
            == Some(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refund_paid_in_full_is_booked() {
        let asked = Decimal::new(8000, 2);
        assert!(paid_in_full(
            &json!({"status": "SUCCEEDED", "amount": "80.00"}),
            asked
        ));
        for raw in [
            json!({"status": "PROCESSING", "amount": "80.00"}),
            json!({"status": "SUCCEEDED", "amount": "79.99"}),
            json!({"status": "SUCCEEDED"}),
            json!({}),
        ] {
            assert!(!paid_in_full(&raw, asked), "{raw}");
        }
    }
}
