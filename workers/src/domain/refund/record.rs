//! The refund row as the stages read it.

use chrono::{DateTime, Utc};
use payfleet_common::{AttemptId, PaymentId, messages, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use super::RefundStatus;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Refund {
    pub id: Uuid,
    pub payment_id: PaymentId,
    pub origin: String,
    /// `refund`, or `reversal`: the whole payment cancelled the day it was
    /// paid, the channel's fee included.
    pub kind: String,
    pub merchant_id: Option<String>,
    pub merchant_refund_id: Option<String>,
    /// The payment's succeeded charge at a channel; none for a wallet payment.
    pub attempt_id: Option<AttemptId>,
    /// The payment's channel (`balance` for the wallet).
    pub channel: String,
    pub amount: Decimal,
    pub currency: String,
    pub reason: String,
    pub status: String,
    pub return_stock: bool,
    pub fee_back: Decimal,
    pub detail: Option<String>,
    pub booked_at: Option<DateTime<Utc>>,
}

impl Refund {
    pub fn status(&self) -> Result<RefundStatus, StageError> {
        RefundStatus::parse(&self.status)
    }

    /// Paid back into the payer's wallet rather than at a channel.
    pub fn to_wallet(&self) -> bool {
        self.channel == crate::channels::BALANCE
    }

    pub fn is_reversal(&self) -> bool {
        self.kind == RefundKind::Reversal.as_str()
    }

    /// Its kind as a metric label (two values).
    pub fn kind_label(&self) -> &'static str {
        if self.is_reversal() {
            RefundKind::Reversal.as_str()
        } else {
            RefundKind::Refund.as_str()
        }
    }
}

/// What upstream asked for: part of a settled payment back, or the whole
/// of today's payment cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundKind {
    Refund,
    Reversal,
}

impl RefundKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundKind::Refund => "refund",
            RefundKind::Reversal => "reversal",
        }
    }
}

const COLUMNS: &str =
    "id, payment_id, origin, kind, merchant_id, merchant_refund_id, attempt_id, channel, amount,
     currency::text AS currency, reason, status, return_stock, fee_back, detail, booked_at";

/// Loads and row-locks a refund for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Refund>, StageError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Loads and row-locks a refund a stage was handed with payment `payment`
/// (row-locked by the stage), or the outcome of a message that came
/// before its refund exists (retried shortly). A hand-off naming another
/// payment than the refund's is refused: it would split the refund over
/// the wrong sub-orders.
pub async fn lock_handed(
    conn: &mut PgConnection,
    id: Uuid,
    payment: PaymentId,
) -> Result<Result<Refund, payfleet_common::runtime::Outcome>, StageError> {
    match lock(conn, id).await? {
        Some(refund) if refund.payment_id == payment => Ok(Ok(refund)),
        Some(refund) => Err(StageError::permanent(format!(
            "refund {id} is of payment {}, not of {payment}",
            refund.payment_id
        ))),
        None => Ok(Err(payfleet_common::runtime::Outcome::NotYet {
            reason: format!("refund {id} not found"),
        })),
    }
}

/// The refund id of a merchant's refund request: the same request always maps to it.
pub fn upstream_id(merchant_id: &str, merchant_refund_id: &str) -> Uuid {
    messages::stable_id(&["refund-request", merchant_id, merchant_refund_id])
}

/// The id of a merchant's reversal (a refund row of kind `reversal`): its
/// reversal ids are a namespace of their own.
pub fn reversal_id(merchant_id: &str, merchant_reversal_id: &str) -> Uuid {
    messages::stable_id(&["reversal-request", merchant_id, merchant_reversal_id])
}

impl RefundKind {
    /// The refund row's id for the merchant's request id of this kind.
    pub fn id_of(self, merchant_id: &str, merchant_request_id: &str) -> Uuid {
        match self {
            RefundKind::Refund => upstream_id(merchant_id, merchant_request_id),
            RefundKind::Reversal => reversal_id(merchant_id, merchant_request_id),
        }
    }
}

/// What an upstream refund request becomes when it is accepted: a row in
/// `requested`, for fund-freeze to reserve.
pub struct NewUpstream<'a> {
    pub id: Uuid,
    pub kind: RefundKind,
    pub payment_id: PaymentId,
    pub merchant_id: &'a str,
    pub merchant_refund_id: &'a str,
    pub request_hash: &'a str,
    pub attempt_id: Option<AttemptId>,
    pub channel: &'a str,
    pub amount: Decimal,
    pub currency: &'a str,
    pub reason: &'a str,
    pub return_stock: bool,
}

impl NewUpstream<'_> {
    /// Inserts the refund in `status` (`requested`, or `refused` with
    /// why); false when a refund with its id is already there.
    pub async fn insert(
        &self,
        conn: &mut PgConnection,
        status: RefundStatus,
        detail: Option<&str>,
    ) -> Result<bool, StageError> {
        let inserted = sqlx::query(
            "INSERT INTO refunds (id, payment_id, origin, merchant_id, merchant_refund_id, request_hash, attempt_id,
                                  channel, amount, currency, reason, return_stock, status, detail, kind)
             VALUES ($1, $2, 'upstream', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(self.id)
        .bind(self.payment_id)
        .bind(self.merchant_id)
        .bind(self.merchant_refund_id)
        .bind(self.request_hash)
        .bind(self.attempt_id)
        .bind(self.channel)
        .bind(self.amount)
        .bind(self.currency)
        .bind(self.reason)
        .bind(self.return_stock)
        .bind(status.as_str())
        .bind(detail)
        .bind(self.kind.as_str())
        .execute(conn)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}

/// Moves a refund to `refused` with why (compare-and-set from `requested`).
pub async fn refuse(conn: &mut PgConnection, id: Uuid, detail: &str) -> Result<bool, StageError> {
    super::transition(
        conn,
        id,
        RefundStatus::Requested,
        RefundStatus::Refused,
        Some(detail),
    )
    .await
}
