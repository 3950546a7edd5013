//! The payment (transaction record) and its status machine. Statuses only
//! move forward, along the one table of moves ([`MOVES`]) that the stages
//! consult; every change is a compare-and-set on the expected status.
//!
//! ```text
//! validated ─ Try ─▶ frozen ─ callback ─▶ paid ─ Confirm ─▶ settled
//!     │                 │ └──── declined / expired ─ Cancel ─▶ failed | cancelled
//!     └ expired before Try (empty rollback) ─▶ cancelled
//! rejected, challenged: decided by order-validation; exception: for review
//! ```

use chrono::{DateTime, Utc};
use payfleet_common::{
    PaymentId,
    messages::{Outcome as Final, PaymentOutcome, SCHEMA_VERSION, kind},
    runtime::{Outcome, StageError, StageTx},
    transition::Status,
};
use rust_decimal::Decimal;
use sqlx::PgConnection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// Accepted by order-validation; nothing reserved yet.
    Validated,
    /// Try done: funds, stock and coupon reserved; awaiting the channel.
    Frozen,
    /// The channel reported success; Confirm pending.
    Paid,
    /// Confirm done: money moved, ledger posted. Terminal.
    Settled,
    /// Business failure (insufficient balance, out of stock, declined);
    /// anything reserved was released. Terminal.
    Failed,
    /// Expired before being paid; anything reserved was released. Terminal.
    Cancelled,
    /// The request was invalid (reason says why). Terminal.
    Rejected,
    /// Risk asked for step-up verification, which payfleet does not perform:
    /// upstream verifies the user and submits a new merchant order. Terminal.
    Challenged,
    /// Conflicting facts (amount mismatch, success after failure): held for
    /// manual review, reservations kept. Terminal for the fleet.
    Exception,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 9] = [
        PaymentStatus::Validated,
        PaymentStatus::Frozen,
        PaymentStatus::Paid,
        PaymentStatus::Settled,
        PaymentStatus::Failed,
        PaymentStatus::Cancelled,
        PaymentStatus::Rejected,
        PaymentStatus::Challenged,
        PaymentStatus::Exception,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Validated => "validated",
            PaymentStatus::Frozen => "frozen",
            PaymentStatus::Paid => "paid",
            PaymentStatus::Settled => "settled",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Cancelled => "cancelled",
            PaymentStatus::Rejected => "rejected",
            PaymentStatus::Challenged => "challenged",
            PaymentStatus::Exception => "exception",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "payment")
    }
}

/// Every move a payment's status may make, and what makes it: the one table
/// the stages consult, and [`transition`] refuses any other. A payment is
/// created `validated`, `rejected` or `challenged` by order-validation.
pub const MOVES: [(PaymentStatus, PaymentStatus, &str); 11] = {
    use PaymentStatus::*;
    [
        (Validated, Frozen, "Try"),
        (
            Validated,
            Failed,
            "Try refused (insufficient balance, out of stock), or Cancel",
        ),
        (
            Validated,
            Cancelled,
            "expired before Try: an empty rollback",
        ),
        (
            Frozen,
            Paid,
            "the channel reported success (or `payment resolve --as paid`)",
        ),
        (
            Frozen,
            Failed,
            "Cancel: declined, or the trade closed unresolved",
        ),
        (Frozen, Cancelled, "Cancel: expired"),
        (Frozen, Exception, "conflicting facts: held for review"),
        (Paid, Settled, "Confirm"),
        (Paid, Exception, "conflicting facts: held for review"),
        (Exception, Paid, "`payment resolve --as paid`"),
        (Exception, Failed, "`payment resolve --as failed`: Cancel"),
    ]
};

impl PaymentStatus {
    /// Whether [`MOVES`] lets a payment go from `self` to `to`.
    pub fn may_move_to(self, to: PaymentStatus) -> bool {
        MOVES
            .iter()
            .any(|&(from, into, _)| from == self && into == to)
    }
}

impl Status for PaymentStatus {
    fn rank(self) -> u8 {
        match self {
            PaymentStatus::Validated => 0,
            PaymentStatus::Frozen => 1,
            PaymentStatus::Paid => 2,
            _ => 3,
        }
    }
    fn is_terminal(self) -> bool {
        self.rank() == 3
    }
}

/// What a payment pays for: a merchant's order, or the payer's own wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentKind {
    /// An order of goods: settlement pays the sellers.
    Purchase,
    /// A wallet top-up (`topup.requested`): no order; settlement credits
    /// the payer's wallet with what the channel charged.
    TopUp,
}

impl PaymentKind {
    pub const ALL: [PaymentKind; 2] = [PaymentKind::Purchase, PaymentKind::TopUp];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Purchase => "purchase",
            PaymentKind::TopUp => "top_up",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "payment kind")
    }
}

/// The columns stages read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Payment {
    pub id: PaymentId,
    /// `purchase` or `top_up` ([`PaymentKind`]).
    pub kind: String,
    pub merchant_id: String,
    pub merchant_order_id: String,
    pub user_id: String,
    pub method: String,
    pub channel: Option<String>,
    pub currency: String,
    pub amount: Decimal,
    pub status: String,
    pub reason: Option<String>,
    pub notify_url: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub payer_token: Option<String>,
    /// What the chosen channel charges for this payment.
    pub channel_fee: Decimal,
    /// Set when the sweeper asked for the trade to be closed.
    pub close_requested_at: Option<DateTime<Utc>>,
}

impl Payment {
    pub fn status(&self) -> Result<PaymentStatus, StageError> {
        PaymentStatus::parse(&self.status)
    }

    pub fn kind(&self) -> Result<PaymentKind, StageError> {
        PaymentKind::parse(&self.kind)
    }

    /// The channel's fee on a charge of `charged`: the fee the route stated
    /// when the channel charged the amount asked, else at the same rate.
    pub fn channel_fee_on(&self, charged: Decimal) -> Decimal {
        if charged == self.amount {
            self.channel_fee
        } else {
            payfleet_common::money::round(self.channel_fee * charged / self.amount)
        }
    }
}

const COLUMNS: &str = "id, kind, merchant_id, merchant_order_id, user_id, method, channel, currency, amount, status, reason, notify_url, expires_at,
     payer_token, channel_fee, close_requested_at";

/// Loads and row-locks a payment for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, id: PaymentId) -> Result<Option<Payment>, StageError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Loads and row-locks the payments `ids` that exist, in id order (the
/// order a batch takes its payments' locks in).
pub async fn lock_many(
    conn: &mut PgConnection,
    ids: &[PaymentId],
) -> Result<Vec<Payment>, StageError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// [`transition`] of several payments at once, with no reason; every one
/// of them must move (their locks held), else an error names how many left
/// `from` meanwhile.
pub async fn transition_many(
    conn: &mut PgConnection,
    ids: &[PaymentId],
    from: PaymentStatus,
    to: PaymentStatus,
) -> Result<(), StageError> {
    refuse_unlisted_move(from, to, "payments")?;
    let moved = sqlx::query(
        "UPDATE payments SET status = $3, updated_at = now(),
                finished_at = CASE WHEN $4 THEN now() ELSE finished_at END
         WHERE id = ANY($1) AND status = $2",
    )
    .bind(ids)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(to.is_terminal())
    .execute(conn)
    .await?
    .rows_affected();
    if moved != ids.len() as u64 {
        return Err(StageError::transient(format!(
            "{} of {} payments left `{}` before moving to `{}`",
            ids.len() as u64 - moved,
            ids.len(),
            from.as_str(),
            to.as_str()
        )));
    }
    Ok(())
}

/// Compare-and-set of the status; true when it moved. A move [`MOVES`]
/// does not list is refused before anything is written.
pub async fn transition(
    conn: &mut PgConnection,
    id: PaymentId,
    from: PaymentStatus,
    to: PaymentStatus,
    reason: Option<&str>,
) -> Result<bool, StageError> {
    refuse_unlisted_move(from, to, &format!("payment {id}"))?;
    let finished = to.is_terminal();
    let moved = sqlx::query(
        "UPDATE payments SET status = $3, reason = COALESCE($4, reason), updated_at = now(),
                finished_at = CASE WHEN $5 THEN now() ELSE finished_at END
         WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(reason)
    .bind(finished)
    .execute(conn)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// A move [`MOVES`] does not list, refused for `whom` before anything is written.
fn refuse_unlisted_move(
    from: PaymentStatus,
    to: PaymentStatus,
    whom: &str,
) -> Result<(), StageError> {
    if from.may_move_to(to) {
        return Ok(());
    }
    Err(StageError::permanent(format!(
        "{whom}: no move from {} to {}",
        from.as_str(),
        to.as_str()
    )))
}

/// The account that owns `(kind, owner, currency)`, created when missing.
pub async fn account_id(
    conn: &mut PgConnection,
    kind: &str,
    owner: &str,
    currency: &str,
) -> Result<i64, StageError> {
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM accounts WHERE owner_kind = $1 AND owner_id = $2 AND currency = $3",
    )
    .bind(kind)
    .bind(owner)
    .bind(currency)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO accounts (owner_kind, owner_id, currency) VALUES ($1, $2, $3)
         ON CONFLICT (owner_kind, owner_id, currency) DO UPDATE SET owner_id = EXCLUDED.owner_id
         RETURNING id",
    )
    .bind(kind)
    .bind(owner)
    .bind(currency)
    .fetch_one(conn)
    .await?)
}

/// The platform's fee account and the external (outside world) account.
pub const PLATFORM_FEES: &str = "fees";
pub const EXTERNAL_WORLD: &str = "world";

/// Hands a payment's final word to notification.
pub fn emit_outcome(
    tx: &mut StageTx,
    id: PaymentId,
    outcome: Final,
    reason: Option<&str>,
) -> Result<Outcome, StageError> {
    tx.emit_to_stage(
        crate::domain::handoff::NOTIFICATION,
        kind::PAYMENT_OUTCOME,
        &outcome_message(id, outcome, reason),
    )?;
    Ok(Outcome::Applied)
}

pub fn outcome_message(id: PaymentId, outcome: Final, reason: Option<&str>) -> PaymentOutcome {
    PaymentOutcome {
        schema_version: SCHEMA_VERSION,
        payment_id: id,
        outcome,
        reason: reason.map(str::to_owned),
        decided_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward_and_only_an_exception_is_reopened() {
        for (from, to, _) in MOVES {
            if from == PaymentStatus::Exception {
                // by hand, to settle it or to cancel it
                assert!(matches!(to, PaymentStatus::Paid | PaymentStatus::Failed));
                continue;
            }
            assert!(!from.is_terminal(), "{from:?} is terminal");
            assert!(from.rank() < to.rank(), "{from:?} -> {to:?} goes back");
        }
        for status in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(status.as_str()).ok(), Some(status));
        }
    }
}
