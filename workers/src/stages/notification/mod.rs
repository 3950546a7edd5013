//! notification: the last stage. Publishes one versioned BI event per
//! payment (refund, withdrawal, transfer) and outcome (deduplicated by a stable event id) and queues a
//! signed webhook to the merchant's notify URL. Webhooks are sent by
//! [`run_webhooks`], outside any transaction, on their own exponential
//! schedule; every attempt is logged and an exhausted delivery is
//! dead-lettered to this stage's DLQ. Targets are checked by
//! [`webhook_target`] (deny by default); a refused one is recorded
//! once and marked `refused`, never retried.

mod refund;
mod transfer;
pub mod webhook_target;
mod webhooks;
mod withdrawal;

pub use webhooks::{rotate_webhook_secret, run_webhooks};

use chrono::Utc;
use payfleet_common::{
    PaymentId,
    messages::{
        self, EventSubOrder, PaymentEvent, PaymentOutcome, RefundStep, SCHEMA_VERSION, TopUpEvent,
        TransferStep, WithdrawalStep, kind,
    },
    runtime::{Inbound, Outcome, Stage, StageError, StageTx, Undecodable},
};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::domain::webhook_delivery::DeliveryStatus;

pub const NAME: &str = crate::domain::handoff::NOTIFICATION;
/// AMQP `type` of an exhausted webhook's dead letter (its body is the event);
/// `dlq replay` of one resets the delivery instead of publishing it.
pub const WEBHOOK_DELIVERY_TYPE: &str = "webhook.delivery";
/// Merchant webhooks follow the Standard Webhooks specification
/// (standardwebhooks.com): `webhook-id` (the event id: stable across retries
/// and resends), `webhook-timestamp` and `webhook-signature` (one
/// `v1,<base64 HMAC-SHA256>` of `id.timestamp.body` per active webhook
/// secret), made fresh for each attempt.
pub use payfleet_common::messages::{
    WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER,
};

pub struct Notification;

/// A payment's final word, a refund's, or a withdrawal's.
#[derive(Debug)]
pub enum Final {
    Payment(PaymentOutcome),
    Refund(RefundStep),
    Withdrawal(WithdrawalStep),
    Transfer(TransferStep),
}

impl Stage for Notification {
    type Message = Final;

    fn name(&self) -> &str {
        NAME
    }

    fn decode(&self, inbound: &Inbound) -> Result<Final, Undecodable> {
        if inbound.message_type.as_deref() == Some(kind::REFUND_OUTCOME) {
            payfleet_common::runtime::decode_json(inbound).map(Final::Refund)
        } else if inbound.message_type.as_deref() == Some(kind::WITHDRAWAL_OUTCOME) {
            payfleet_common::runtime::decode_json(inbound).map(Final::Withdrawal)
        } else if inbound.message_type.as_deref() == Some(kind::TRANSFER_OUTCOME) {
            payfleet_common::runtime::decode_json(inbound).map(Final::Transfer)
        } else {
            payfleet_common::runtime::decode_json(inbound).map(Final::Payment)
        }
    }

    fn lock_key(&self, m: &Final) -> Option<String> {
        Some(match m {
            Final::Payment(m) => m.payment_id.to_string(),
            Final::Refund(m) => m.payment_id.to_string(),
            Final::Withdrawal(m) => crate::domain::withdrawal::lock_key(m.withdrawal_id),
            Final::Transfer(m) => crate::domain::transfer::lock_key(m.transfer_id),
        })
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        m: &Final,
    ) -> Result<Outcome, StageError> {
        match m {
            Final::Payment(m) => notify_payment(tx, m).await,
            Final::Refund(m) => refund::notify(tx, m).await,
            Final::Withdrawal(m) => withdrawal::notify(tx, m).await,
            Final::Transfer(m) => transfer::notify(tx, m).await,
        }
    }
}

/// The payment's event (a top-up's own event for a top-up), and its
/// webhook when it has somewhere to go.
async fn notify_payment(tx: &mut StageTx, m: &PaymentOutcome) -> Result<Outcome, StageError> {
    tx.set_correlation_id(&m.payment_id.to_string());
    let Some(paid) = PaidFor::load(tx, m).await? else {
        return Ok(Outcome::NotYet {
            reason: format!("payment {} not found", m.payment_id),
        });
    };
    let operation = Operation {
        payment_id: Some(m.payment_id),
        refund_id: None,
        withdrawal_id: None,
        transfer_id: None,
        event_type: if paid.top_up {
            m.outcome.top_up_event_type()
        } else {
            m.outcome.event_type()
        },
    };
    let event_id = messages::stable_id(&["event", &m.payment_id.to_string(), operation.event_type]);
    if !operation.claim_event(tx, event_id).await? {
        return Ok(Outcome::Stale {
            reason: format!(
                "{} for payment {} already emitted",
                operation.event_type, m.payment_id
            ),
        });
    }
    crate::signals::outcomes::observe(
        &paid.status,
        paid.stored_reason.as_deref(),
        paid.channel.as_deref(),
        paid.age_seconds,
    );
    let notify_url = paid.notify_url();
    let merchant_id = paid.merchant_id.clone();
    if paid.top_up {
        let event = paid.top_up_event(m, event_id, operation.event_type);
        return operation
            .publish(tx, event_id, &merchant_id, &event, notify_url)
            .await;
    }
    let event = paid.payment_event(m, event_id, operation.event_type);
    operation
        .publish(tx, event_id, &merchant_id, &event, notify_url)
        .await
}

/// The payment, one of its refunds, or a withdrawal, that an event is
/// about: each has its own event of a type, and its own webhook.
struct Operation<'a> {
    payment_id: Option<PaymentId>,
    refund_id: Option<Uuid>,
    withdrawal_id: Option<Uuid>,
    transfer_id: Option<Uuid>,
    event_type: &'a str,
}

impl Operation<'_> {
    /// Records the event as emitted; false when it already was.
    async fn claim_event(&self, tx: &mut StageTx, event_id: Uuid) -> Result<bool, StageError> {
        let new = sqlx::query(
            "INSERT INTO payment_events (event_id, payment_id, refund_id, withdrawal_id, transfer_id, event_type)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(event_id)
        .bind(self.payment_id)
        .bind(self.refund_id)
        .bind(self.withdrawal_id)
        .bind(self.transfer_id)
        .bind(self.event_type)
        .execute(tx.conn())
        .await?;
        Ok(new.rows_affected() == 1)
    }

    /// Emits the event once this commits, and queues its signed webhook
    /// when it has somewhere to go.
    async fn publish(
        &self,
        tx: &mut StageTx,
        event_id: Uuid,
        merchant_id: &str,
        event: &impl serde::Serialize,
        notify_url: Option<String>,
    ) -> Result<Outcome, StageError> {
        tx.emit_event(self.event_type, event)?;
        if let Some(url) = notify_url {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, payment_id, refund_id, withdrawal_id, transfer_id, merchant_id,
                                                 event_type, url, payload, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
            .bind(messages::stable_id(&["webhook", &event_id.to_string()]))
            .bind(self.payment_id)
            .bind(self.refund_id)
            .bind(self.withdrawal_id)
            .bind(self.transfer_id)
            .bind(merchant_id)
            .bind(self.event_type)
            .bind(url)
            .bind(serde_json::to_value(event).map_err(StageError::permanent)?)
            .bind(DeliveryStatus::Pending.as_str())
            .execute(tx.conn())
            .await?;
        }
        Ok(Outcome::Applied)
    }
}

/// A payment as its outcome's event reads it now.
#[derive(sqlx::FromRow)]
struct PaidFor {
    top_up: bool,
    merchant_id: String,
    merchant_order_id: String,
    user_id: String,
    status: String,
    amount: Decimal,
    currency: String,
    /// The stored reason, else the outcome's.
    reason: Option<String>,
    stored_reason: Option<String>,
    channel: Option<String>,
    /// Since order-validation received the request.
    age_seconds: f64,
    payment_notify_url: Option<String>,
    merchant_notify_url: Option<String>,
    /// A purchase's sub-orders, column by column in seller and warehouse
    /// order (none for a top-up).
    sub_order_ids: Option<Vec<Uuid>>,
    sub_order_sellers: Option<Vec<String>>,
    sub_order_amounts: Option<Vec<Decimal>>,
    sub_order_fees: Option<Vec<Decimal>>,
}

impl PaidFor {
    /// `None` while the payment is not found. One statement reads all the
    /// event, the webhook and the outcome's metrics need.
    async fn load(tx: &mut StageTx, m: &PaymentOutcome) -> Result<Option<PaidFor>, StageError> {
        let found: Option<PaidFor> = sqlx::query_as(
            "SELECT p.kind = 'top_up' AS top_up, p.merchant_id, p.merchant_order_id, p.user_id, p.status, p.amount,
                    p.currency::text AS currency, p.reason, p.reason AS stored_reason, p.channel,
                    extract(epoch FROM now() - p.created_at)::float8 AS age_seconds,
                    p.notify_url AS payment_notify_url, m.notify_url AS merchant_notify_url,
                    s.ids AS sub_order_ids, s.sellers AS sub_order_sellers,
                    s.amounts AS sub_order_amounts, s.fees AS sub_order_fees
             FROM payments p JOIN merchants m ON m.id = p.merchant_id
             LEFT JOIN LATERAL (
                 SELECT array_agg(id ORDER BY seller_id, warehouse) AS ids,
                        array_agg(seller_id ORDER BY seller_id, warehouse) AS sellers,
                        array_agg(payable_amount ORDER BY seller_id, warehouse) AS amounts,
                        array_agg(fee_amount ORDER BY seller_id, warehouse) AS fees
                 FROM sub_orders WHERE payment_id = p.id
             ) s ON true
             WHERE p.id = $1",
        )
        .bind(m.payment_id)
        .fetch_optional(tx.conn())
        .await?;
        Ok(found.map(|mut paid| {
            paid.reason = paid.reason.or_else(|| m.reason.clone());
            paid
        }))
    }

    /// Where the webhook goes, if anywhere. A URL refused as
    /// invalid_notify_url is never a delivery target: the rejection goes
    /// to the merchant's registered URL, if any.
    fn notify_url(&self) -> Option<String> {
        let refused_url = self
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("invalid_notify_url"));
        if refused_url {
            self.merchant_notify_url.clone()
        } else {
            self.payment_notify_url
                .clone()
                .or_else(|| self.merchant_notify_url.clone())
        }
    }

    /// A purchase's event, with its sub-orders.
    fn payment_event(self, m: &PaymentOutcome, event_id: Uuid, event_type: &str) -> PaymentEvent {
        let sub_orders = self
            .sub_order_ids
            .unwrap_or_default()
            .into_iter()
            .zip(self.sub_order_sellers.unwrap_or_default())
            .zip(self.sub_order_amounts.unwrap_or_default())
            .zip(self.sub_order_fees.unwrap_or_default())
            .map(|(((sub_order_id, seller_id), amount), fee)| EventSubOrder {
                sub_order_id,
                seller_id,
                amount,
                fee,
            })
            .collect();
        PaymentEvent {
            schema_version: SCHEMA_VERSION,
            event_id,
            event_type: event_type.to_owned(),
            payment_id: m.payment_id,
            merchant_id: self.merchant_id,
            merchant_order_id: self.merchant_order_id,
            user_id: self.user_id,
            status: self.status,
            amount: self.amount,
            currency: self.currency,
            reason: self.reason,
            sub_orders,
            occurred_at: Utc::now(),
        }
    }

    /// A top-up's event: its requester and request id, no order.
    fn top_up_event(self, m: &PaymentOutcome, event_id: Uuid, event_type: &str) -> TopUpEvent {
        TopUpEvent {
            schema_version: SCHEMA_VERSION,
            event_id,
            event_type: event_type.to_owned(),
            top_up_id: m.payment_id,
            requester_id: self.merchant_id,
            request_id: self.merchant_order_id,
            user_id: self.user_id,
            status: self.status,
            amount: self.amount,
            currency: self.currency,
            reason: self.reason,
            occurred_at: Utc::now(),
        }
    }
}
