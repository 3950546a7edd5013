//! `payfleet payment`: one payment's whole story in time order, and the
//! manual actions that unstick it — each audited with operator, reason and
//! the state before and after, and each going through the fleet's own code
//! (TCC Confirm / Cancel, the channel adapters), never a direct table edit.

use chrono::{DateTime, Utc};
use payfleet_common::{
    AttemptId, PaymentId, Settings, Topology,
    messages::{ChannelResult, ChannelStatus, Outcome as Final, SCHEMA_VERSION, kind},
    outbox,
};
use serde_json::json;
use sqlx::{Acquire, PgPool};

use super::{Error, Result};
use crate::{
    channels::{Adapters, ChannelReply},
    domain::{
        handoff,
        ledger::ChannelCharge,
        payment::{self, PaymentStatus},
        tcc,
    },
    stages::order_validation,
};

/// `<payment id>` or `<merchant id>:<merchant order id>`.
pub fn parse_reference(reference: &str) -> Result<PaymentId> {
    if let Ok(id) = reference.parse::<PaymentId>() {
        return Ok(id);
    }
    match reference.split_once(':') {
        Some((merchant, order)) if !merchant.is_empty() && !order.is_empty() => {
            Ok(order_validation::payment_id(merchant, order))
        }
        _ => Err(Error::refused(format!(
            "`{reference}` is neither a payment id nor merchant-id:merchant-order-id"
        ))),
    }
}

/// What `payment show` tells of a payment: its head, then every row that
/// carries its id, by time.
#[derive(Debug)]
pub struct Story {
    pub id: PaymentId,
    pub merchant_id: String,
    pub merchant_order_id: String,
    pub user_id: String,
    pub amount: rust_decimal::Decimal,
    pub currency: String,
    pub channel: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub timeline: Vec<Event>,
}

/// One line of a payment's timeline: when, by which stage, what.
#[derive(Debug, sqlx::FromRow)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub stage: String,
    pub what: String,
}

/// The story of payment `id`.
pub async fn show(pool: &PgPool, id: PaymentId) -> Result<Story> {
    type Head = (
        String,
        String,
        String,
        String,
        rust_decimal::Decimal,
        String,
        Option<String>,
        Option<String>,
    );
    let exists: Option<Head> = sqlx::query_as(
        "SELECT merchant_id, merchant_order_id, user_id, status, amount, currency::text, reason, channel FROM payments WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some((merchant_id, merchant_order_id, user_id, status, amount, currency, reason, channel)) =
        exists
    else {
        return Err(Error::not_found(format!("no payment {id}")));
    };
    let id_text = id.to_string();
    let timeline: Vec<Event> = sqlx::query_as(
        "SELECT at, stage, what FROM (
           SELECT created_at AS at, 'order-validation' AS stage,
                  'payment accepted (risk ' || COALESCE(risk_decision, '-') || '), now ' || status || COALESCE(' — ' || reason, '') AS what
             FROM payments WHERE id = $1
           UNION ALL SELECT o.created_at, 'order-validation', 'order ' || o.gross_amount || ' - ' || o.discount_amount || ' = ' || o.payable_amount
                  || COALESCE(' coupon ' || o.coupon_code, '') || ', now ' || o.status FROM orders o WHERE o.payment_id = $1
           UNION ALL SELECT o.created_at, 'order-validation', 'sub-order ' || s.seller_id || '/' || s.warehouse || ' ' || s.payable_amount || ' fee ' || s.fee_amount
                  FROM sub_orders s JOIN orders o ON o.payment_id = s.payment_id WHERE s.payment_id = $1
           UNION ALL SELECT created_at, 'fund-freeze', 'reservation ' || amount || ' ' || status FROM reservations WHERE payment_id = $1
           UNION ALL SELECT r.created_at, 'fund-freeze', 'stock ' || s.sku || ' x' || s.quantity || ' ' || s.status FROM stock_reservations s JOIN reservations r USING (payment_id) WHERE s.payment_id = $1
           UNION ALL SELECT created_at, 'fund-freeze', 'coupon ' || coupon_code || ' ' || amount || ' ' || status FROM coupon_redemptions WHERE payment_id = $1
           UNION ALL SELECT created_at, 'channel-call', 'attempt ' || id || ' at ' || channel || ': ' || status || COALESCE(' ref ' || channel_reference, '') FROM payment_attempts WHERE payment_id = $1
           UNION ALL SELECT created_at, 'integration-log', channel || ' ' || direction || ' ' || payload::text FROM integration_log WHERE payment_id = $1
           UNION ALL SELECT created_at, 'integration-log', channel || ' ' || direction || ' as received: timestamp ' || signed_timestamp || ', signature ' || signature
                  || ', ' || octet_length(raw_body) || ' bytes ' || replace(replace(encode(raw_body, 'escape'), E'\\n', '\\n'), E'\\r', '\\r')
                  FROM integration_log WHERE payment_id = $1 AND raw_body IS NOT NULL
           UNION ALL SELECT p.created_at, 'settlement', 'posting ' || a.owner_kind || ':' || a.owner_id || ' ' || p.amount || ' ' || p.currency
                  FROM postings p JOIN journal_entries j ON j.id = p.entry_id JOIN accounts a ON a.id = p.account_id WHERE j.reference = $2
           UNION ALL SELECT created_at, 'notification', 'event ' || event_type || ' ' || event_id FROM payment_events WHERE payment_id = $1
           UNION ALL SELECT a.at, 'notification', 'webhook attempt ' || a.attempt || ' to ' || d.url || ': ' || COALESCE(a.http_status::text, a.error)
                  FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.payment_id = $1
           UNION ALL SELECT stored_at, stage, 'dead letter ' || id || ' (' || error_kind || ', ' || status || '): ' || error_message FROM dead_letters WHERE correlation_id = $2
           UNION ALL SELECT created_at, CASE WHEN origin = 'upstream' THEN 'refund' ELSE 'callback' END,
                  CASE WHEN origin = 'upstream' THEN 'refund ' || id || ' (' || merchant_refund_id || ') '
                       ELSE 'refund owed ' END
                  || amount || ' ' || currency || ' (' || status || COALESCE(' — ' || detail, '') || ')' FROM refunds WHERE payment_id = $1
           UNION ALL SELECT p.created_at, 'refund', 'posting ' || a.owner_kind || ':' || a.owner_id || ' ' || p.amount || ' ' || p.currency
                  FROM postings p JOIN journal_entries j ON j.id = p.entry_id JOIN accounts a ON a.id = p.account_id
                  JOIN refunds r ON j.reference = r.id::text AND j.kind = 'refund' WHERE r.payment_id = $1 AND r.origin = 'upstream'
           UNION ALL SELECT at, 'ops', action || ' by ' || operator || ': ' || reason || ' — ' || before::text || ' → ' || after::text FROM manual_actions WHERE payment_id = $1
         ) t ORDER BY at, stage",
    )
    .bind(id)
    .bind(&id_text)
    .fetch_all(pool)
    .await?;
    Ok(Story {
        id,
        merchant_id,
        merchant_order_id,
        user_id,
        amount,
        currency,
        channel,
        status,
        reason,
        timeline,
    })
}

/// A payment's state as a manual action found it and left it (in
/// `manual_actions`; its fields in the order the record has always had).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Snapshot {
    pub reason: Option<String>,
    pub reservation: Option<String>,
    pub status: String,
}

/// What `payment resolve` did: the payment before and after.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolution {
    pub payment_id: PaymentId,
    pub before: Snapshot,
    pub after: Snapshot,
}

async fn snapshot(conn: &mut sqlx::PgConnection, id: PaymentId) -> Result<Snapshot> {
    Ok(sqlx::query_as(
        "SELECT p.status, p.reason, r.status AS reservation FROM payments p LEFT JOIN reservations r ON r.payment_id = p.id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_one(conn)
    .await?)
}

/// `payment resolve --as paid|failed`: settles an exception (or a payment
/// stuck frozen or paid) through Confirm or Cancel, then notifies. What the
/// channel actually charged decides: failed → the whole charge is owed back
/// to the payer; paid → the charge is settled (a shortfall taken from the
/// sub-orders, an excess owed back); a charge in another currency cannot be
/// settled.
pub async fn resolve(
    settings: &Settings,
    pool: &PgPool,
    id: PaymentId,
    paid: bool,
    reason: &str,
    operator: &str,
) -> Result<Resolution> {
    if reason.trim().is_empty() {
        return Err(Error::refused("--reason must say why"));
    }
    let topology = Topology::from_settings(settings)?;
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let Some(p) = payment::lock(&mut tx, id).await.map_err(Error::told)? else {
        return Err(Error::not_found(format!("no payment {id}")));
    };
    let status = p.status().map_err(Error::told)?;
    let before = snapshot(&mut tx, id).await?;
    if status != PaymentStatus::Paid && !status.may_move_to(PaymentStatus::Paid) {
        return Err(Error::refused(format!(
            "payment {id} is {}: only an exception, frozen or paid payment can be resolved by hand",
            status.as_str()
        )));
    }
    // Never vouch for a charge the channel has not answered: its own word
    // (a status query) must be on record first.
    let open_attempt: Option<(AttemptId, String, String)> = sqlx::query_as(
        "SELECT id, channel, status FROM payment_attempts
         WHERE payment_id = $1 AND channel <> $2 AND status IN ('sending', 'pending', 'unknown')
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(id)
    .bind(crate::channels::BALANCE)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((attempt, channel, attempt_status)) = open_attempt {
        return Err(Error::refused(format!(
            "payment {id}: attempt {attempt} at {channel} is still {attempt_status}, the channel has not answered; \
             run `payfleet payment requery {id}` first (or let its status queries decide)"
        )));
    }
    let detail = format!("resolved by {operator}: {reason}");
    // What the channel actually holds for this payment decides the way out.
    let charge = ChannelCharge::of_payment(&mut tx, id)
        .await
        .map_err(Error::told)?;
    let outcome = if paid {
        if let Some(charge) = charge.as_ref().filter(|c| c.currency != p.currency) {
            return Err(Error::refused(format!(
                "payment {id} is in {} but its channel charged {} {}: it cannot be settled; resolve it as failed (the charge is refunded)",
                p.currency, charge.amount, charge.currency
            )));
        }
        if status != PaymentStatus::Paid {
            payment::transition(&mut tx, id, status, PaymentStatus::Paid, Some(&detail))
                .await
                .map_err(Error::told)?;
        }
        let p = payment::lock(&mut tx, id)
            .await
            .map_err(Error::told)?
            .ok_or_else(|| Error::told("payment vanished"))?;
        tcc::confirm(&mut tx, &p)
            .await
            .map_err(|e| Error::told(format!("Confirm: {e}")))?;
        Final::Succeeded
    } else {
        if status == PaymentStatus::Paid {
            return Err(Error::refused(format!(
                "payment {id} is paid at its channel: resolve it as paid, or refund it"
            )));
        }
        if !tcc::cancel(&mut tx, &p, PaymentStatus::Failed, &detail)
            .await
            .map_err(|e| Error::told(format!("Cancel: {e}")))?
        {
            return Err(Error::refused(format!(
                "payment {id} could not be cancelled from {}",
                status.as_str()
            )));
        }
        // The channel took money for it: all of it goes back to the payer.
        if let Some(charge) = &charge {
            charge
                .owe_back(&mut tx, "resolved_failed")
                .await
                .map_err(|e| Error::told(format!("owing the charge back: {e}")))?;
        }
        Final::Failed
    };
    let message = handoff::to_stage(
        &topology,
        handoff::NOTIFICATION,
        kind::PAYMENT_OUTCOME,
        id,
        &payment::outcome_message(id, outcome, Some(&detail)),
    )?;
    outbox::insert(&mut tx, &[message]).await?;
    let after = snapshot(&mut tx, id).await?;
    sqlx::query("INSERT INTO manual_actions (payment_id, action, operator, reason, before, after) VALUES ($1, 'resolve', $2, $3, $4, $5)")
        .bind(id)
        .bind(operator)
        .bind(reason)
        .bind(json!(before))
        .bind(json!(after))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Resolution {
        payment_id: id,
        before,
        after,
    })
}

/// What a channel said to `payment requery`.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Resolved {
        status: ChannelStatus,
        amount: rust_decimal::Decimal,
        currency: String,
    },
    Pending,
    /// No answer: why.
    Unknown(String),
}

/// As the answer is put on record (`integration_log`, `manual_actions`).
impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Resolved {
                status,
                amount,
                currency,
            } => write!(f, "{status:?} ({amount} {currency})"),
            Answer::Pending => f.write_str("still pending"),
            Answer::Unknown(error) => write!(f, "no answer: {error}"),
        }
    }
}

/// `payment requery`: asks the channel about the open attempt now; a final
/// answer goes to the callback stage like any status query's.
pub async fn requery(
    settings: &Settings,
    pool: &PgPool,
    id: PaymentId,
    operator: &str,
) -> Result<Answer> {
    let topology = Topology::from_settings(settings)?;
    let attempt: Option<(AttemptId, String, String)> =
        sqlx::query_as("SELECT id, channel, status FROM payment_attempts WHERE payment_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let Some((attempt_id, channel, attempt_status)) = attempt else {
        return Err(Error::not_found(format!(
            "payment {id} has no attempt at a channel"
        )));
    };
    let adapter = Adapters::new(settings.channel_timeout)
        .get(pool, &channel)
        .await?;
    let reply = adapter.query(attempt_id).await;
    let (answer, result) = match &reply {
        ChannelReply::Resolved {
            status,
            amount,
            currency,
            reference,
            reason,
            ..
        } => (
            Answer::Resolved {
                status: *status,
                amount: *amount,
                currency: currency.clone(),
            },
            Some(ChannelResult {
                schema_version: SCHEMA_VERSION,
                payment_id: id,
                attempt_id,
                channel: channel.clone(),
                status: *status,
                amount: *amount,
                currency: currency.clone(),
                channel_reference: reference.clone(),
                reason: reason.clone(),
                reported_at: Utc::now(),
            }),
        ),
        ChannelReply::Pending { .. } => (Answer::Pending, None),
        ChannelReply::Unknown { error } => (Answer::Unknown(error.clone()), None),
    };
    let said = answer.to_string();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload) VALUES ($1, $2, $3, 'query', $4)")
        .bind(id)
        .bind(attempt_id)
        .bind(&channel)
        .bind(json!({"call": "manual requery", "operator": operator, "answer": said}))
        .execute(&mut *tx)
        .await?;
    if let Some(result) = result {
        let message = handoff::to_stage(
            &topology,
            handoff::CALLBACK,
            kind::CHANNEL_RESULT,
            id,
            &result,
        )?;
        outbox::insert(&mut tx, &[message]).await?;
    }
    sqlx::query("INSERT INTO manual_actions (payment_id, action, operator, reason, before, after) VALUES ($1, 'requery', $2, 'status asked by hand', $3, $4)")
        .bind(id)
        .bind(operator)
        .bind(json!({"attempt": attempt_id, "attempt_status": attempt_status}))
        .bind(json!({"answer": said}))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(answer)
}
