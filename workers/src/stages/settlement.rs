//! settlement: TCC Confirm of a paid payment, or Cancel of one that failed
//! (both in [`crate::domain::tcc`]), then the outcome to notification; and
//! the same for a refund ([`crate::domain::refund::books`]): Confirm of one
//! the channel paid, Cancel of one it refused; and for a withdrawal
//! ([`crate::domain::withdrawal::books`]): Confirm of a paid payout, Cancel
//! of a refused one, and the credit back of one the payee's bank returned;
//! and for a transfer ([`crate::domain::transfer::books`]): Confirm of a
//! frozen one, or Cancel when the payee's wallet stopped taking money.
//!
//! Hot accounts: a payment never updates a seller's or the fee account's
//! row. Its postings are appended (`rolled_up = false`) and
//! [`crate::domain::ledger::roll_up`] folds them into the balances in
//! batches, so a thousand payments to one merchant do not queue on one row
//! lock. A wallet's own spending (a payment's, a withdrawal's, a transfer's
//! payer side) is applied in the transaction, as the freeze needs it to
//! be; a transfer's credit to its payee is appended and rolled up like a
//! sale, so a popular payee's row is never held by a transfer.

use std::collections::HashSet;

use payfleet_common::{
    PaymentId,
    messages::{
        Outcome as Final, PaymentResolved, RefundResult, RefundStep, Resolution, TransferResult,
        TransferStep, WithdrawalResult, WithdrawalStep,
    },
    runtime::{Outcome, StageError, StageTx},
};

use crate::domain::{
    confirm_many::confirm_wallet_purchases,
    handoff,
    payment::{self, Payment, PaymentStatus},
    refund::{self, Refund, RefundStatus, books},
    step::PaymentStep,
    tcc::{cancel, confirm},
    transfer::{self, Transfer, TransferStatus},
    withdrawal::{self, Withdrawal, WithdrawalStatus},
};

pub const NAME: &str = handoff::SETTLEMENT;

pub struct Settlement;

impl PaymentStep for Settlement {
    type Message = PaymentResolved;

    const NAME: &'static str = NAME;

    /// A paid payment's Confirm may be done set-based with others.
    fn together(&self, m: &PaymentResolved) -> bool {
        m.resolution == Resolution::Paid
    }

    /// Confirms the batch's paid wallet purchases at once; the rest
    /// (channel payments, top-ups, anything not `paid`) are handled alone.
    async fn handle_together(
        &self,
        tx: &mut StageTx,
        messages: &[&PaymentResolved],
    ) -> Result<Vec<bool>, StageError> {
        let ids: Vec<PaymentId> = messages.iter().map(|m| m.payment_id).collect();
        let settled: HashSet<PaymentId> = confirm_wallet_purchases(tx.conn(), &ids)
            .await?
            .into_iter()
            .collect();
        let mut applied = Vec::with_capacity(ids.len());
        for id in ids {
            let done = settled.contains(&id);
            if done {
                tx.set_correlation_id(&id.to_string());
                payment::emit_outcome(tx, id, Final::Succeeded, None)?;
            }
            applied.push(done);
        }
        Ok(applied)
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        m: &PaymentResolved,
        p: Payment,
    ) -> Result<Outcome, StageError> {
        let status = p.status()?;
        match (m.resolution, status) {
            (Resolution::Paid, PaymentStatus::Paid) => {
                confirm(tx.conn(), &p).await?;
                payment::emit_outcome(tx, p.id, Final::Succeeded, None)
            }
            (Resolution::Failed, PaymentStatus::Frozen | PaymentStatus::Validated) => {
                let reason = m.reason.clone().unwrap_or_else(|| "declined".to_owned());
                let to = if reason == "expired" {
                    PaymentStatus::Cancelled
                } else {
                    PaymentStatus::Failed
                };
                cancel(tx.conn(), &p, to, &reason).await?;
                payment::emit_outcome(tx, p.id, Final::Failed, Some(&reason))
            }
            (Resolution::Paid, PaymentStatus::Frozen | PaymentStatus::Validated) => {
                Ok(Outcome::NotYet {
                    reason: format!("payment {} is not paid yet", p.id),
                })
            }
            (_, s) => Ok(Outcome::Stale {
                reason: format!("payment {} already {}", p.id, s.as_str()),
            }),
        }
    }

    /// Books a withdrawal as its status now stands, each movement once,
    /// and reports what it booked.
    async fn handle_withdrawal(
        &self,
        tx: &mut StageTx,
        m: &WithdrawalStep,
        w: Withdrawal,
    ) -> Result<Outcome, StageError> {
        let reason = w.detail.clone().or_else(|| m.reason.clone());
        let mut booked = Vec::new();
        match w.status()? {
            WithdrawalStatus::Succeeded | WithdrawalStatus::Returned => {
                if withdrawal::books::confirm(tx.conn(), &w).await? {
                    booked.push(WithdrawalResult::Succeeded);
                }
                if w.status()? == WithdrawalStatus::Returned
                    && withdrawal::books::credit_back(tx.conn(), &w).await?
                {
                    booked.push(WithdrawalResult::Returned);
                }
            }
            WithdrawalStatus::Failed => {
                if withdrawal::books::cancel(tx.conn(), &w).await? {
                    booked.push(WithdrawalResult::Failed);
                }
            }
            status => {
                return Ok(Outcome::NotYet {
                    reason: format!("withdrawal {} is still {}", w.id, status.as_str()),
                });
            }
        }
        if booked.is_empty() {
            return Ok(Outcome::Stale {
                reason: format!("withdrawal {} is already booked", w.id),
            });
        }
        for result in booked {
            let why = (result != WithdrawalResult::Succeeded)
                .then_some(reason.as_deref())
                .flatten();
            withdrawal::emit_outcome(tx, w.id, result, why)?;
        }
        Ok(Outcome::Applied)
    }

    /// Confirm of a frozen transfer (the payer debited, the payee
    /// credited), or Cancel when the payee's wallet no longer takes money.
    async fn handle_transfer(
        &self,
        tx: &mut StageTx,
        _m: &TransferStep,
        t: Transfer,
    ) -> Result<Outcome, StageError> {
        let status = t.status()?;
        if status != TransferStatus::Frozen {
            return Ok(Outcome::Stale {
                reason: format!("transfer {} is already {}", t.id, status.as_str()),
            });
        }
        match transfer::books::confirm(tx.conn(), &t).await? {
            Ok(()) => transfer::emit_outcome(tx, t.id, TransferResult::Succeeded, None),
            Err((reason, detail)) => {
                transfer::books::cancel(tx.conn(), &t, &format!("{reason}: {detail}")).await?;
                transfer::emit_outcome(tx, t.id, TransferResult::Failed, Some(reason))
            }
        }
    }

    async fn handle_refund(
        &self,
        tx: &mut StageTx,
        m: &RefundStep,
        p: Payment,
        r: Refund,
    ) -> Result<Outcome, StageError> {
        let (booked, result) = match r.status()? {
            RefundStatus::Succeeded => (
                books::confirm(tx.conn(), &p, &r).await?,
                RefundResult::Succeeded,
            ),
            RefundStatus::Failed => (books::cancel(tx.conn(), &r).await?, RefundResult::Failed),
            status => {
                return Ok(Outcome::NotYet {
                    reason: format!("refund {} is still {}", r.id, status.as_str()),
                });
            }
        };
        if !booked {
            return Ok(Outcome::Stale {
                reason: format!("refund {} is already booked", r.id),
            });
        }
        let reason = r.detail.clone().or_else(|| m.reason.clone());
        refund::emit_outcome(tx, r.id, p.id, result, reason.as_deref())
    }
}
