//! A refund the platform owes a payer: today the automatic one after a late
//! success (a channel charged a payment we had already given up). Its
//! status only moves forward, along [`MOVES`]; the SQL that moves it is a
//! compare-and-set on the expected status.
//!
//! ```text
//! owed ─▶ sent ─▶ succeeded | failed
//!   └───────────▶ succeeded
//! ```

use payfleet_common::runtime::StageError;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    /// Owed to the payer; the refund sender asks the channel (again) with
    /// the refund id as the idempotency key.
    Owed,
    /// The channel accepted it and will answer later.
    Sent,
    /// The channel paid it back; its journal entry is posted. Terminal.
    Succeeded,
    /// The channel refused it for good. Terminal.
    Failed,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 4] = [
        RefundStatus::Owed,
        RefundStatus::Sent,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Owed => "owed",
            RefundStatus::Sent => "sent",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "refund")
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RefundStatus::Succeeded | RefundStatus::Failed)
    }

    /// Whether [`MOVES`] lets a refund go from `self` to `to`.
    pub fn may_move_to(self, to: RefundStatus) -> bool {
        MOVES
            .iter()
            .any(|&(from, into, _)| from == self && into == to)
    }
}

/// Every move a refund's status may make, and what makes it.
pub const MOVES: [(RefundStatus, RefundStatus, &str); 4] = {
    use RefundStatus::*;
    [
        (Owed, Sent, "the channel accepted it, to answer later"),
        (Owed, Succeeded, "the channel paid it at once"),
        (Sent, Succeeded, "the channel reported it paid"),
        (Sent, Failed, "the channel refused it for good"),
    ]
};

/// Compare-and-set of a refund's status (`from` → `to`), stamping
/// `refunded_at` when it succeeds; true when it moved.
pub async fn transition(
    conn: &mut PgConnection,
    refund_id: Uuid,
    from: RefundStatus,
    to: RefundStatus,
) -> Result<bool, StageError> {
    if !from.may_move_to(to) {
        return Err(StageError::permanent(format!(
            "refund {refund_id}: no move from {} to {}",
            from.as_str(),
            to.as_str()
        )));
    }
    let moved = sqlx::query(
        "UPDATE refunds SET status = $3, claimed_until = NULL, last_error = NULL,
                refunded_at = CASE WHEN $3 = 'succeeded' THEN now() ELSE refunded_at END
         WHERE id = $1 AND status = $2",
    )
    .bind(refund_id)
    .bind(from.as_str())
    .bind(to.as_str())
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
            assert_ne!(from, to);
        }
        assert!(!RefundStatus::Succeeded.may_move_to(RefundStatus::Owed));
    }
}
