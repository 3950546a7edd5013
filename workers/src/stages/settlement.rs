//! settlement: TCC Confirm of a paid payment, or Cancel of one that failed
//! (both in [`crate::domain::tcc`]), then the outcome to notification.
//!
//! Hot accounts: a payment never updates a seller's or the fee account's
//! row. Its postings are appended (`rolled_up = false`) and
//! [`crate::domain::ledger::roll_up`] folds them into the balances in
//! batches, so a thousand payments to one merchant do not queue on one row
//! lock. Wallets are updated in the payment's transaction, as the freeze
//! needs them to be.

use payfleet_common::{
    messages::{Outcome as Final, PaymentResolved, Resolution},
    runtime::{Inbound, Outcome, Stage, StageError, StageTx},
};

use crate::domain::{
    handoff,
    payment::{self, PaymentStatus},
    tcc::{cancel, confirm},
};

pub const NAME: &str = handoff::SETTLEMENT;

pub struct Settlement;

impl Stage for Settlement {
    type Message = PaymentResolved;

    fn name(&self) -> &str {
        NAME
    }

    fn decode(&self, inbound: &Inbound) -> Result<PaymentResolved, String> {
        payfleet_common::runtime::decode_json(inbound)
    }

    fn lock_key(&self, m: &PaymentResolved) -> Option<String> {
        Some(m.payment_id.to_string())
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        m: &PaymentResolved,
    ) -> Result<Outcome, StageError> {
        tx.set_correlation_id(&m.payment_id.to_string());
        let Some(p) = payment::lock(tx.conn(), m.payment_id).await? else {
            return Ok(Outcome::NotYet {
                reason: format!("payment {} not found", m.payment_id),
            });
        };
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
}
