//! A refund: money going back to a payer. Two origins share one table,
//! keyed by refund id, and one journal entry kind (`refund`):
//! - **automatic**: a channel charged what payfleet does not keep (a late
//!   success, an over-charge); the refund sender sends it;
//! - **upstream**: a merchant asked for (part of) a settled payment back
//!   (`refund.requested`); it runs the chain like a payment ([`reserve`] is
//!   its Try, [`books`] its Confirm and Cancel).
//!
//! Its status only moves forward, along [`MOVES`]; the SQL that moves it is
//! a compare-and-set on the expected status.
//!
//! ```text
//! automatic: owed ─▶ sent ─▶ succeeded | failed
//!              └───────────▶ succeeded
//! upstream:  requested ─ Try ─▶ reserved ─▶ sending ─▶ succeeded | failed
//!                │                            └▶ unknown ─ query ─▶ succeeded | failed | exception
//!                └▶ refused
//! ```

pub mod books;
pub mod record;
pub mod reserve;

use payfleet_common::{
    PaymentId,
    messages::{RefundResult, RefundStep, kind},
    runtime::{Outcome, StageError, StageTx},
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::handoff;

pub use record::{Refund, RefundKind, lock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    /// Owed to the payer; the refund sender asks the channel (again) with
    /// the refund id as the idempotency key.
    Owed,
    /// The channel accepted it and will answer later.
    Sent,
    /// Asked for by upstream and valid; nothing reserved yet.
    Requested,
    /// Try done: each merchant's part is reserved on its account.
    Reserved,
    /// channel-call committed its intent: the channel is being asked.
    Sending,
    /// The channel gave no final answer (a timeout, a 5xx): status queries decide.
    Unknown,
    /// The channel paid it back; its journal entry is posted. Terminal.
    Succeeded,
    /// The channel refused it for good. Terminal.
    Failed,
    /// Refused before anything was sent (more than is left, a merchant
    /// short of balance). Terminal.
    Refused,
    /// Status queries ran out: still reserved, never re-sent under a new
    /// id; ops decide with the channel.
    Exception,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 10] = [
        RefundStatus::Owed,
        RefundStatus::Sent,
        RefundStatus::Requested,
        RefundStatus::Reserved,
        RefundStatus::Sending,
        RefundStatus::Unknown,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
        RefundStatus::Refused,
        RefundStatus::Exception,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Owed => "owed",
            RefundStatus::Sent => "sent",
            RefundStatus::Requested => "requested",
            RefundStatus::Reserved => "reserved",
            RefundStatus::Sending => "sending",
            RefundStatus::Unknown => "unknown",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
            RefundStatus::Refused => "refused",
            RefundStatus::Exception => "exception",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "refund")
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RefundStatus::Succeeded | RefundStatus::Failed | RefundStatus::Refused
        )
    }

    /// Whether [`MOVES`] lets a refund go from `self` to `to`.
    pub fn may_move_to(self, to: RefundStatus) -> bool {
        MOVES
            .iter()
            .any(|&(from, into, _)| from == self && into == to)
    }
}

/// Every move a refund's status may make, and what makes it.
pub const MOVES: [(RefundStatus, RefundStatus, &str); 15] = {
    use RefundStatus::*;
    [
        (Owed, Sent, "the channel accepted it, to answer later"),
        (Owed, Succeeded, "the channel paid it at once"),
        (Sent, Succeeded, "the channel reported it paid"),
        (Sent, Failed, "the channel refused it for good"),
        (Requested, Reserved, "Try reserved each merchant's part"),
        (
            Requested,
            Refused,
            "Try found too little left, or a merchant short",
        ),
        (Reserved, Sending, "channel-call committed its intent"),
        (
            Sending,
            Succeeded,
            "the channel (or the wallet) paid it back",
        ),
        (Sending, Failed, "the channel refused it for good"),
        (Sending, Unknown, "no final answer: status queries decide"),
        (Unknown, Succeeded, "a status query found it paid"),
        (Unknown, Failed, "a status query found it refused"),
        (Unknown, Exception, "the status queries ran out"),
        (Exception, Succeeded, "ops confirmed it with the channel"),
        (
            Exception,
            Failed,
            "ops confirmed with the channel that it never paid",
        ),
    ]
};

/// Hands refund `step` on to `stage` as `message_type`.
pub fn hand_on(
    tx: &mut StageTx,
    stage: &str,
    message_type: &str,
    step: &RefundStep,
) -> Result<Outcome, StageError> {
    tx.emit_to_stage(stage, message_type, step)?;
    Ok(Outcome::Applied)
}

/// Hands a refund's final word to notification.
pub fn emit_outcome(
    tx: &mut StageTx,
    refund_id: Uuid,
    payment_id: PaymentId,
    result: RefundResult,
    reason: Option<&str>,
) -> Result<Outcome, StageError> {
    let mut step = RefundStep::new(refund_id, payment_id);
    step.result = Some(result);
    step.reason = reason.map(str::to_owned);
    hand_on(tx, handoff::NOTIFICATION, kind::REFUND_OUTCOME, &step)
}

/// Compare-and-set of a refund's status (`from` → `to`), stamping
/// `refunded_at` when it succeeds and keeping `detail` (why) when given;
/// true when it moved.
pub async fn transition(
    conn: &mut PgConnection,
    refund_id: Uuid,
    from: RefundStatus,
    to: RefundStatus,
    detail: Option<&str>,
) -> Result<bool, StageError> {
    if !from.may_move_to(to) {
        return Err(StageError::permanent(format!(
            "refund {refund_id}: no move from {} to {}",
            from.as_str(),
            to.as_str()
        )));
    }
    let moved = sqlx::query(
        "UPDATE refunds SET status = $3, claimed_until = NULL, last_error = NULL, updated_at = now(),
                refunded_at = CASE WHEN $3 = 'succeeded' THEN now() ELSE refunded_at END,
                detail = COALESCE($4, detail)
         WHERE id = $1 AND status = $2",
    )
    .bind(refund_id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(detail)
    .execute(conn)
    .await
    .map_err(StageError::from)?;
    Ok(moved.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_itself() {
        for status in RefundStatus::ALL {
            assert_eq!(RefundStatus::parse(status.as_str()).unwrap(), status);
        }
        assert!(RefundStatus::parse("paid").is_err());
    }

    #[test]
    fn moves_only_go_forward_out_of_open_statuses() {
        for (from, to, _) in MOVES {
            assert!(!from.is_terminal(), "{from:?} is terminal");
            assert!(RefundStatus::ALL.contains(&to));
            assert_ne!(from, to);
        }
        assert!(!RefundStatus::Succeeded.may_move_to(RefundStatus::Owed));
    }
}
