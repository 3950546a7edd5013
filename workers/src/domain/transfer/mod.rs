//! A transfer: money moving from one user's wallet to another's, in one
//! currency. It runs the chain without a channel, under its own lock (its
//! id): order-validation checks and keeps it, fund-freeze's Try freezes
//! the amount on the payer's wallet ([`books::freeze`]), settlement's
//! Confirm debits the payer and credits the payee in one `transfer` entry
//! ([`books::confirm`]) and notification reports it.
//!
//! The payer's side is exact: its wallet row is locked and never goes
//! below zero. The payee's credit is appended as a posting not yet rolled
//! up, as a merchant's sale is: the roll-up folds it into the payee's
//! balance and writes the payee's statement line, so a thousand transfers
//! to one popular payee never queue on its wallet row. The credit can be
//! spent once it is rolled up.
//!
//! ```text
//! requested ─ Try ─▶ frozen ─ Confirm ─▶ succeeded
//!     │                 └─ Cancel ─▶ failed (the payee's wallet stopped taking money)
//!     └▶ refused
//! ```

pub mod books;
pub mod record;

use payfleet_common::{
    messages::{TransferResult, TransferStep, kind},
    runtime::{Outcome, StageError, StageTx},
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::handoff;

/// A transfer's per-transfer and daily limits (`transfer_limit_per_transfer`,
/// `transfer_limit_per_day`).
pub type Limits = crate::domain::limits::AmountLimits;
pub use record::{Transfer, lock, lock_key, transfer_id};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferStatus {
    /// Valid and kept; nothing frozen yet.
    Requested,
    /// Refused before anything moved (the parties, limits, risk, the
    /// payer's balance). Terminal.
    Refused,
    /// Try done: the amount is frozen on the payer's wallet.
    Frozen,
    /// Confirm done: the payer debited, the payee credited. Terminal.
    Succeeded,
    /// The freeze released: the payee's wallet no longer takes money. Terminal.
    Failed,
}

impl TransferStatus {
    pub const ALL: [TransferStatus; 5] = [
        TransferStatus::Requested,
        TransferStatus::Refused,
        TransferStatus::Frozen,
        TransferStatus::Succeeded,
        TransferStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Requested => "requested",
            TransferStatus::Refused => "refused",
            TransferStatus::Frozen => "frozen",
            TransferStatus::Succeeded => "succeeded",
            TransferStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "transfer")
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TransferStatus::Refused | TransferStatus::Succeeded | TransferStatus::Failed
        )
    }

    /// Whether [`MOVES`] lets a transfer go from `self` to `to`.
    pub fn may_move_to(self, to: TransferStatus) -> bool {
        MOVES
            .iter()
            .any(|&(from, into, _)| from == self && into == to)
    }
}

/// Every move a transfer's status may make, and what makes it.
pub const MOVES: [(TransferStatus, TransferStatus, &str); 4] = {
    use TransferStatus::*;
    [
        (
            Requested,
            Frozen,
            "Try froze the amount on the payer's wallet",
        ),
        (
            Requested,
            Refused,
            "Try found the payer's wallet short, not usable or past its daily limit",
        ),
        (
            Frozen,
            Succeeded,
            "Confirm debited the payer and credited the payee",
        ),
        (
            Frozen,
            Failed,
            "the payee's wallet stopped taking money: the freeze is released",
        ),
    ]
};

/// Hands transfer step `step` on to `stage` as `message_type`.
pub fn hand_on(
    tx: &mut StageTx,
    stage: &str,
    message_type: &str,
    step: &TransferStep,
) -> Result<Outcome, StageError> {
    tx.emit_to_stage(stage, message_type, step)?;
    Ok(Outcome::Applied)
}

/// Hands a transfer's final word to notification.
pub fn emit_outcome(
    tx: &mut StageTx,
    transfer_id: Uuid,
    result: TransferResult,
    reason: Option<&str>,
) -> Result<Outcome, StageError> {
    let mut step = TransferStep::new(transfer_id);
    step.result = Some(result);
    step.reason = reason.map(str::to_owned);
    hand_on(tx, handoff::NOTIFICATION, kind::TRANSFER_OUTCOME, &step)
}

/// Compare-and-set of a transfer's status (`from` → `to`), keeping
/// `detail` (why) when given; true when it moved.
pub async fn transition(
    conn: &mut PgConnection,
    transfer_id: Uuid,
    from: TransferStatus,
    to: TransferStatus,
    detail: Option<&str>,
) -> Result<bool, StageError> {
    if !from.may_move_to(to) {
        return Err(StageError::permanent(format!(
            "transfer {transfer_id}: no move from {} to {}",
            from.as_str(),
            to.as_str()
        )));
    }
    let moved = sqlx::query(
        "UPDATE transfers SET status = $3, updated_at = now(), detail = COALESCE($4, detail)
         WHERE id = $1 AND status = $2",
    )
    .bind(transfer_id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(moved.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_itself() {
        for status in TransferStatus::ALL {
            assert_eq!(TransferStatus::parse(status.as_str()).unwrap(), status);
        }
        assert!(TransferStatus::parse("paid").is_err());
    }

    #[test]
    fn moves_only_leave_open_statuses_and_a_freeze_ends_in_a_debit_or_a_release() {
        for (from, to, _) in MOVES {
            assert!(!from.is_terminal(), "{from:?} is terminal");
            assert!(TransferStatus::ALL.contains(&to));
        }
        assert!(!TransferStatus::Frozen.may_move_to(TransferStatus::Refused));
        assert!(!TransferStatus::Requested.may_move_to(TransferStatus::Succeeded));
    }
}
