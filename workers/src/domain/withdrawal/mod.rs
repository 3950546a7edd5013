//! A withdrawal: a user's money leaving its wallet for a bank card or
//! account through a payout channel. It runs the chain like a payment,
//! under its own lock (its id): order-validation checks and keeps it,
//! fund-freeze's Try freezes the amount ([`books::freeze`]), channel-call
//! pays it out with the withdrawal id as the channel's idempotency key,
//! callback moves it to what the channel said, settlement books it
//! ([`books::confirm`], [`books::cancel`], [`books::credit_back`]) and
//! notification reports it.
//!
//! A payout cannot be closed like a trade: one whose status queries run
//! out stays frozen as `exception` for ops — releasing it would let the
//! money leave twice. Its status only moves forward, along [`MOVES`]; the
//! SQL that moves it is a compare-and-set on the expected status.
//!
//! ```text
//! requested ─ Try ─▶ frozen ─▶ sending ─▶ succeeded ─ the bank ─▶ returned
//!     │                 │         ├▶ failed
//!     └▶ refused        │         └▶ unknown ─ query ─▶ succeeded | failed | exception
//!                       └ (none: a frozen withdrawal is always sent)
//! ```

pub mod answer;
pub mod books;
pub mod limits;
pub mod record;

use payfleet_common::{
    messages::{WithdrawalResult, WithdrawalStep, kind},
    runtime::{Outcome, StageError, StageTx},
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::handoff;

pub use limits::Limits;
pub use record::{Withdrawal, find, lock, lock_key, withdrawal_id};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WithdrawalStatus {
    /// Valid and kept; nothing frozen yet.
    Requested,
    /// Refused before anything was frozen (limits, the wallet, risk). Terminal.
    Refused,
    /// Try done: the amount is frozen in the wallet.
    Frozen,
    /// channel-call committed its intent: the channel is being asked.
    Sending,
    /// No final answer (a timeout, a 5xx, still processing): status queries decide.
    Unknown,
    /// The channel paid it out; settlement books it.
    Succeeded,
    /// The channel refused it for good: the freeze is released. Terminal.
    Failed,
    /// Status queries ran out: still frozen, never sent again under a new
    /// id; ops decide with the channel.
    Exception,
    /// Paid, then sent back by the payee's bank: credited back. Terminal.
    Returned,
}

impl WithdrawalStatus {
    pub const ALL: [WithdrawalStatus; 9] = [
        WithdrawalStatus::Requested,
        WithdrawalStatus::Refused,
        WithdrawalStatus::Frozen,
        WithdrawalStatus::Sending,
        WithdrawalStatus::Unknown,
        WithdrawalStatus::Succeeded,
        WithdrawalStatus::Failed,
        WithdrawalStatus::Exception,
        WithdrawalStatus::Returned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawalStatus::Requested => "requested",
            WithdrawalStatus::Refused => "refused",
            WithdrawalStatus::Frozen => "frozen",
            WithdrawalStatus::Sending => "sending",
            WithdrawalStatus::Unknown => "unknown",
            WithdrawalStatus::Succeeded => "succeeded",
            WithdrawalStatus::Failed => "failed",
            WithdrawalStatus::Exception => "exception",
            WithdrawalStatus::Returned => "returned",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "withdrawal")
    }

    /// Nothing more can happen to it (a succeeded one may still come back).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WithdrawalStatus::Refused | WithdrawalStatus::Failed | WithdrawalStatus::Returned
        )
    }

    /// Whether [`MOVES`] lets a withdrawal go from `self` to `to`.
    pub fn may_move_to(self, to: WithdrawalStatus) -> bool {
        MOVES
            .iter()
            .any(|&(from, into, _)| from == self && into == to)
    }
}

/// Every move a withdrawal's status may make, and what makes it.
pub const MOVES: [(WithdrawalStatus, WithdrawalStatus, &str); 12] = {
    use WithdrawalStatus::*;
    [
        (Requested, Frozen, "Try froze the amount in the wallet"),
        (
            Requested,
            Refused,
            "Try found the wallet short or not usable",
        ),
        (Frozen, Sending, "channel-call committed its intent"),
        (Sending, Succeeded, "the channel paid it out"),
        (Sending, Failed, "the channel refused it for good"),
        (Sending, Unknown, "no final answer: status queries decide"),
        (Unknown, Succeeded, "a status query found it paid"),
        (Unknown, Failed, "a status query found it refused"),
        (Unknown, Exception, "the status queries ran out"),
        (
            Exception,
            Succeeded,
            "the channel (a late notice, or ops) says it was paid",
        ),
        (
            Exception,
            Failed,
            "the channel (a late notice, or ops) says it never paid",
        ),
        (Succeeded, Returned, "the payee's bank sent the money back"),
    ]
};

/// Hands withdrawal step `step` on to `stage` as `message_type`.
pub fn hand_on(
    tx: &mut StageTx,
    stage: &str,
    message_type: &str,
    step: &WithdrawalStep,
) -> Result<Outcome, StageError> {
    tx.emit_to_stage(stage, message_type, step)?;
    Ok(Outcome::Applied)
}

/// Hands a withdrawal's final word (or its return) to notification.
pub fn emit_outcome(
    tx: &mut StageTx,
    withdrawal_id: Uuid,
    result: WithdrawalResult,
    reason: Option<&str>,
) -> Result<Outcome, StageError> {
    let mut step = WithdrawalStep::new(withdrawal_id);
    step.result = Some(result);
    step.reason = reason.map(str::to_owned);
    hand_on(tx, handoff::NOTIFICATION, kind::WITHDRAWAL_OUTCOME, &step)
}

/// Compare-and-set of a withdrawal's status (`from` → `to`), stamping
/// `paid_at` / `returned_at` and keeping `detail` (why) when given; true
/// when it moved.
pub async fn transition(
    conn: &mut PgConnection,
    withdrawal_id: Uuid,
    from: WithdrawalStatus,
    to: WithdrawalStatus,
    detail: Option<&str>,
) -> Result<bool, StageError> {
    if !from.may_move_to(to) {
        return Err(StageError::permanent(format!(
            "withdrawal {withdrawal_id}: no move from {} to {}",
            from.as_str(),
            to.as_str()
        )));
    }
    let moved = sqlx::query(
        "UPDATE withdrawals SET status = $3, updated_at = now(),
                paid_at = CASE WHEN $3 = 'succeeded' THEN now() ELSE paid_at END,
                returned_at = CASE WHEN $3 = 'returned' THEN now() ELSE returned_at END,
                -- what an exception said no longer holds once the channel has paid
                detail = CASE WHEN $3 = 'succeeded' THEN $4 ELSE COALESCE($4, detail) END
         WHERE id = $1 AND status = $2",
    )
    .bind(withdrawal_id)
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
        for status in WithdrawalStatus::ALL {
            assert_eq!(WithdrawalStatus::parse(status.as_str()).unwrap(), status);
        }
        assert!(WithdrawalStatus::parse("paid").is_err());
    }

    #[test]
    fn moves_only_leave_open_statuses_and_a_frozen_one_is_never_released_unasked() {
        for (from, to, _) in MOVES {
            assert!(!from.is_terminal(), "{from:?} is terminal");
            assert!(WithdrawalStatus::ALL.contains(&to));
        }
        // Once frozen, only the channel's word releases it: no move from
        // frozen, sending, unknown or exception straight to refused.
        for from in [
            WithdrawalStatus::Frozen,
            WithdrawalStatus::Sending,
            WithdrawalStatus::Unknown,
            WithdrawalStatus::Exception,
        ] {
            assert!(!from.may_move_to(WithdrawalStatus::Refused));
        }
        assert!(!WithdrawalStatus::Exception.may_move_to(WithdrawalStatus::Frozen));
    }
}
