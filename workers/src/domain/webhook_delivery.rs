//! A merchant webhook delivery: one event for one merchant, sent by the
//! notification stage's sender until the merchant answers 2xx, refuses it
//! for good, or the schedule runs out. Only an operator's resend reopens a
//! finished delivery. The SQL that moves it is a compare-and-set.
//!
//! ```text
//! pending ─▶ delivered | refused | exhausted ─(resend)─▶ pending
//! ```

use payfleet_common::runtime::StageError;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Due now or at `next_attempt_at`.
    Pending,
    /// The merchant answered 2xx.
    Delivered,
    /// The merchant's address may not be sent to (or answered "gone"); on record, not retried.
    Refused,
    /// Every retry failed; dead-lettered for an operator.
    Exhausted,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Refused,
        DeliveryStatus::Exhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Refused => "refused",
            DeliveryStatus::Exhausted => "exhausted",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "webhook delivery")
    }

    /// Whether the sender is done with it (only a resend reopens it).
    pub fn is_terminal(self) -> bool {
        self != DeliveryStatus::Pending
    }

    /// Whether [`MOVES`] lets a delivery go from `self` to `to`.
    pub fn may_move_to(self, to: DeliveryStatus) -> bool {
        MOVES
            .iter()
            .any(|&(from, into, _)| from == self && into == to)
    }
}

/// Every move a delivery's status may make, and what makes it.
pub const MOVES: [(DeliveryStatus, DeliveryStatus, &str); 6] = {
    use DeliveryStatus::*;
    [
        (Pending, Delivered, "the merchant answered 2xx"),
        (Pending, Refused, "the address may not be sent to"),
        (Pending, Exhausted, "the retry schedule ran out"),
        (Delivered, Pending, "`payfleet webhook resend`"),
        (Refused, Pending, "`payfleet webhook resend`"),
        (Exhausted, Pending, "`payfleet webhook resend`"),
    ]
};

/// Finishes a pending delivery after its `attempts`-th attempt
/// (compare-and-set on `pending`); true when it moved.
pub async fn finish(
    executor: impl PgExecutor<'_>,
    delivery_id: Uuid,
    attempts: i32,
    to: DeliveryStatus,
) -> Result<bool, sqlx::Error> {
    debug_assert!(DeliveryStatus::Pending.may_move_to(to));
    let moved = sqlx::query(
        "UPDATE webhook_deliveries SET status = $3, attempts = $2, claimed_until = NULL,
                delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(delivery_id)
    .bind(attempts)
    .bind(to.as_str())
    .execute(executor)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Reopens these deliveries for an operator's resend: each finished one
/// goes back to `pending`, due now, its retry schedule started again.
/// Returns those reopened (a pending one is already on its way).
pub async fn reopen(executor: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    let reopenable: Vec<&str> = MOVES
        .iter()
        .filter(|(_, to, _)| *to == DeliveryStatus::Pending)
        .map(|(from, _, _)| from.as_str())
        .collect();
    sqlx::query_scalar(
        "UPDATE webhook_deliveries SET status = $3, schedule_from = attempts, next_attempt_at = now(),
                claimed_until = NULL, delivered_at = NULL
         WHERE id = ANY($1) AND status = ANY($2) RETURNING id",
    )
    .bind(ids)
    .bind(&reopenable)
    .bind(DeliveryStatus::Pending.as_str())
    .fetch_all(executor)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_itself() {
        for status in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(status.as_str()).unwrap(), status);
        }
    }

    #[test]
    fn only_a_resend_reopens_a_finished_delivery() {
        for (from, to, why) in MOVES {
            if from.is_terminal() {
                assert_eq!(to, DeliveryStatus::Pending);
                assert!(why.contains("resend"));
            }
        }
    }
}
