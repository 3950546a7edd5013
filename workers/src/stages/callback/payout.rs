//! callback of a payout's result (channel-call's answer, a status query's,
//! or the channel's webhook): the withdrawal's status moves forward only,
//! along [`withdrawal::MOVES`]; a duplicate changes nothing, a result that
//! contradicts a final one is an exception for ops. A return the channel
//! reports before we knew of the payout's success passes through
//! `succeeded` first, so the books see both. Then settlement books it.

use payfleet_common::{
    messages::{WithdrawalResult, WithdrawalStep, kind},
    runtime::{Outcome, StageError, StageTx},
};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{
    handoff,
    withdrawal::{self, Withdrawal, WithdrawalStatus},
};

/// The moves a result takes a withdrawal in `status` through, in order;
/// `Err` when the result cannot apply (yet, or ever).
fn path(status: WithdrawalStatus, result: WithdrawalResult) -> Result<Vec<WithdrawalStatus>, Miss> {
    use WithdrawalStatus as S;
    let target = match result {
        WithdrawalResult::Succeeded => S::Succeeded,
        WithdrawalResult::Failed => S::Failed,
        WithdrawalResult::Returned => S::Returned,
    };
    match (status, result) {
        (now, _) if now == target => Err(Miss::Duplicate),
        // a success reported again once it has come back
        (S::Returned, WithdrawalResult::Succeeded) => Err(Miss::Duplicate),
        (S::Sending | S::Unknown | S::Exception, WithdrawalResult::Returned) => {
            Ok(vec![S::Succeeded, S::Returned])
        }
        (now, _) if now.may_move_to(target) => Ok(vec![target]),
        (S::Requested | S::Frozen, _) => Err(Miss::Early),
        _ => Err(Miss::Conflict(target)),
    }
}

#[derive(Debug, PartialEq)]
enum Miss {
    Duplicate,
    /// Not sent yet as far as we committed: retried shortly.
    Early,
    /// Contradicts a final status.
    Conflict(WithdrawalStatus),
}

pub(super) async fn on_payout_result(
    tx: &mut StageTx,
    m: &WithdrawalStep,
    w: Withdrawal,
) -> Result<Outcome, StageError> {
    let Some(result) = m.result else {
        return Err(StageError::permanent(format!(
            "withdrawal.result for withdrawal {} carries no result",
            w.id
        )));
    };
    let status = w.status()?;
    let moves = match path(status, result) {
        Ok(moves) => moves,
        Err(Miss::Duplicate) => {
            return Ok(Outcome::Stale {
                reason: format!("withdrawal {} is already {}", w.id, status.as_str()),
            });
        }
        Err(Miss::Early) => {
            return Ok(Outcome::NotYet {
                reason: format!("withdrawal {} is {}", w.id, status.as_str()),
            });
        }
        Err(Miss::Conflict(to)) => {
            let reason = format!(
                "withdrawal {} is {} but the channel now says {}",
                w.id,
                status.as_str(),
                to.as_str()
            );
            tracing::error!(withdrawal_id = %w.id, %reason, "conflicting payout results");
            return Ok(Outcome::Exception { reason });
        }
    };
    let mut from = status;
    for to in moves {
        let detail = match to {
            WithdrawalStatus::Failed | WithdrawalStatus::Returned => m.reason.as_deref(),
            _ => None,
        };
        withdrawal::transition(tx.conn(), w.id, from, to, detail).await?;
        if to == WithdrawalStatus::Succeeded {
            keep_channel_fee(tx.conn(), w.id, m.channel_fee).await?;
        }
        from = to;
    }
    let mut resolved = WithdrawalStep::new(w.id);
    resolved.result = Some(result);
    resolved.reason = m.reason.clone();
    withdrawal::hand_on(
        tx,
        handoff::SETTLEMENT,
        kind::WITHDRAWAL_RESOLVED,
        &resolved,
    )
}

/// Keeps the channel's fee on a paid payout, as it stated it (the first
/// statement stands); one that is no amount in cents is not kept.
async fn keep_channel_fee(
    conn: &mut PgConnection,
    id: Uuid,
    fee: Option<Decimal>,
) -> Result<(), StageError> {
    let fee = fee.and_then(|f| payfleet_common::money::check_amount(f).ok());
    sqlx::query("UPDATE withdrawals SET channel_fee = COALESCE(channel_fee, $2) WHERE id = $1")
        .bind(id)
        .bind(fee)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use WithdrawalStatus as S;

    #[test]
    fn results_only_move_forward_and_a_return_passes_through_success() {
        assert_eq!(
            path(S::Sending, WithdrawalResult::Succeeded),
            Ok(vec![S::Succeeded])
        );
        assert_eq!(
            path(S::Exception, WithdrawalResult::Failed),
            Ok(vec![S::Failed])
        );
        assert_eq!(
            path(S::Unknown, WithdrawalResult::Returned),
            Ok(vec![S::Succeeded, S::Returned])
        );
        assert_eq!(
            path(S::Succeeded, WithdrawalResult::Returned),
            Ok(vec![S::Returned])
        );
        assert_eq!(
            path(S::Returned, WithdrawalResult::Succeeded),
            Err(Miss::Duplicate)
        );
        assert_eq!(
            path(S::Failed, WithdrawalResult::Failed),
            Err(Miss::Duplicate)
        );
        assert_eq!(
            path(S::Frozen, WithdrawalResult::Succeeded),
            Err(Miss::Early)
        );
        assert_eq!(
            path(S::Failed, WithdrawalResult::Succeeded),
            Err(Miss::Conflict(S::Succeeded))
        );
        assert_eq!(
            path(S::Succeeded, WithdrawalResult::Failed),
            Err(Miss::Conflict(S::Failed))
        );
    }
}
