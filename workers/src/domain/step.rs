//! The opening the stages that work on one locked payment share
//! (fund-freeze, callback, settlement): the message is JSON, its payment id
//! is the lock key and the correlation id, and the payment is row-locked
//! for the transaction, or the message is retried shortly (`NotYet`) when
//! the payment is not there yet. Such a stage implements [`PaymentStep`]
//! and is run as [`OnPayment`]; what it does reads from the locked payment
//! on.
//!
//! A refund of the payment travels the same stages as [`Work::Refund`]
//! (told apart by its AMQP `type`), under the same lock and row lock, so a
//! refund and its payment, or two refunds of one payment, never interleave.
//! A withdrawal travels them as [`Work::Withdrawal`], under a lock of its
//! own id and its own row lock: it belongs to no payment. So does a
//! transfer between wallets, as [`Work::Transfer`].
//!
//! It lives with the domain rather than in `payfleet_common`'s runtime
//! because it needs the payment, which the runtime does not know.

use payfleet_common::{
    PaymentId,
    messages::{
        ChannelResult, OrderValidated, PaymentResolved, RefundStep, TransferStep, WithdrawalStep,
        kind,
    },
    runtime::{Inbound, Outcome, Stage, StageError, StageTx, Undecodable, decode_json},
};
use serde::de::DeserializeOwned;

use crate::domain::{
    payment::{self, Payment},
    refund::{self, Refund},
    transfer::{self, Transfer},
    withdrawal::{self, Withdrawal},
};

/// A message about one payment.
pub trait ForPayment {
    fn payment_id(&self) -> PaymentId;
}

impl ForPayment for OrderValidated {
    fn payment_id(&self) -> PaymentId {
        self.payment_id
    }
}

impl ForPayment for ChannelResult {
    fn payment_id(&self) -> PaymentId {
        self.payment_id
    }
}

impl ForPayment for PaymentResolved {
    fn payment_id(&self) -> PaymentId {
        self.payment_id
    }
}

impl ForPayment for RefundStep {
    fn payment_id(&self) -> PaymentId {
        self.payment_id
    }
}

/// What a payment step is handed: its own message, a refund's hand-off,
/// or a withdrawal's.
#[derive(Debug)]
pub enum Work<M> {
    Payment(M),
    Refund(RefundStep),
    Withdrawal(WithdrawalStep),
    Transfer(TransferStep),
}

/// A stage's work on one payment, row-locked in the stage's transaction.
pub trait PaymentStep: Send + Sync + 'static {
    type Message: DeserializeOwned + ForPayment + Send + Sync + 'static;

    /// The stage's name in the topology.
    const NAME: &'static str;

    fn handle(
        &self,
        tx: &mut StageTx,
        message: &Self::Message,
        payment: Payment,
    ) -> impl Future<Output = Result<Outcome, StageError>> + Send;

    /// Whether `message` may be handled set-based with others of its batch.
    fn together(&self, _message: &Self::Message) -> bool {
        false
    }

    /// Handles several payments' messages at once (see
    /// [`Stage::handle_together`]): whether each was applied; one that was
    /// not is handled alone afterwards, so this leaves it untouched.
    fn handle_together(
        &self,
        _tx: &mut StageTx,
        messages: &[&Self::Message],
    ) -> impl Future<Output = Result<Vec<bool>, StageError>> + Send {
        let none = vec![false; messages.len()];
        async move { Ok(none) }
    }

    /// A withdrawal's step, with the withdrawal row-locked; a stage a
    /// withdrawal never visits refuses it as a message sent to the wrong queue.
    fn handle_withdrawal(
        &self,
        _tx: &mut StageTx,
        message: &WithdrawalStep,
        _withdrawal: Withdrawal,
    ) -> impl Future<Output = Result<Outcome, StageError>> + Send {
        let withdrawal_id = message.withdrawal_id;
        async move {
            Err(StageError::permanent(format!(
                "{} takes no withdrawal steps (withdrawal {withdrawal_id})",
                Self::NAME
            )))
        }
    }

    /// A transfer's step, with the transfer row-locked; a stage a transfer
    /// never visits refuses it as a message sent to the wrong queue.
    fn handle_transfer(
        &self,
        _tx: &mut StageTx,
        message: &TransferStep,
        _transfer: Transfer,
    ) -> impl Future<Output = Result<Outcome, StageError>> + Send {
        let transfer_id = message.transfer_id;
        async move {
            Err(StageError::permanent(format!(
                "{} takes no transfer steps (transfer {transfer_id})",
                Self::NAME
            )))
        }
    }

    /// A refund's step on the payment, with the refund row-locked too; a
    /// stage a refund never visits refuses it as a message sent to the
    /// wrong queue.
    fn handle_refund(
        &self,
        _tx: &mut StageTx,
        message: &RefundStep,
        _payment: Payment,
        _refund: Refund,
    ) -> impl Future<Output = Result<Outcome, StageError>> + Send {
        let refund_id = message.refund_id;
        async move {
            Err(StageError::permanent(format!(
                "{} takes no refund steps (refund {refund_id})",
                Self::NAME
            )))
        }
    }
}

/// Runs a [`PaymentStep`] as a stage.
pub struct OnPayment<S>(pub S);

impl<S: PaymentStep> Stage for OnPayment<S> {
    type Message = Work<S::Message>;

    fn name(&self) -> &str {
        S::NAME
    }

    fn decode(&self, inbound: &Inbound) -> Result<Self::Message, Undecodable> {
        if kind::is_refund_step(inbound.message_type.as_deref()) {
            decode_json(inbound).map(Work::Refund)
        } else if kind::is_withdrawal_step(inbound.message_type.as_deref()) {
            decode_json(inbound).map(Work::Withdrawal)
        } else if kind::is_transfer_step(inbound.message_type.as_deref()) {
            decode_json(inbound).map(Work::Transfer)
        } else {
            decode_json(inbound).map(Work::Payment)
        }
    }

    fn lock_key(&self, m: &Self::Message) -> Option<String> {
        Some(match m {
            Work::Payment(m) => m.payment_id().to_string(),
            Work::Refund(m) => m.payment_id.to_string(),
            Work::Withdrawal(m) => withdrawal::lock_key(m.withdrawal_id),
            Work::Transfer(m) => transfer::lock_key(m.transfer_id),
        })
    }

    fn together(&self, m: &Self::Message) -> bool {
        matches!(m, Work::Payment(m) if self.0.together(m))
    }

    async fn handle_together(
        &self,
        tx: &mut StageTx,
        items: &[(&Inbound, &Self::Message)],
    ) -> Result<Vec<bool>, StageError> {
        let messages: Vec<&S::Message> = items
            .iter()
            .filter_map(|(_, m)| match m {
                Work::Payment(m) => Some(m),
                _ => None,
            })
            .collect();
        if messages.len() != items.len() {
            // `together` admits payment messages only.
            return Ok(vec![false; items.len()]);
        }
        self.0.handle_together(tx, &messages).await
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        m: &Self::Message,
    ) -> Result<Outcome, StageError> {
        match m {
            Work::Payment(m) => match locked_payment(tx, m.payment_id()).await? {
                Ok(p) => self.0.handle(tx, m, p).await,
                Err(waiting) => Ok(waiting),
            },
            Work::Refund(m) => {
                let p = match locked_payment(tx, m.payment_id).await? {
                    Ok(p) => p,
                    Err(waiting) => return Ok(waiting),
                };
                match refund::record::lock_handed(tx.conn(), m.refund_id, p.id).await? {
                    Ok(r) => self.0.handle_refund(tx, m, p, r).await,
                    Err(waiting) => Ok(waiting),
                }
            }
            Work::Withdrawal(m) => on_withdrawal(&self.0, tx, m).await,
            Work::Transfer(m) => {
                tx.set_correlation_id(&m.transfer_id.to_string());
                match transfer::lock(tx.conn(), m.transfer_id).await? {
                    Some(t) => self.0.handle_transfer(tx, m, t).await,
                    None => Ok(Outcome::NotYet {
                        reason: format!("transfer {} not found", m.transfer_id),
                    }),
                }
            }
        }
    }
}

/// The payment `id`, row-locked, with its id as the correlation id; or a
/// retry shortly while it is not there yet.
async fn locked_payment(
    tx: &mut StageTx,
    id: PaymentId,
) -> Result<Result<Payment, Outcome>, StageError> {
    tx.set_correlation_id(&id.to_string());
    Ok(payment::lock(tx.conn(), id)
        .await?
        .ok_or_else(|| Outcome::NotYet {
            reason: format!("payment {id} not found"),
        }))
}

/// A withdrawal's step: its id is the correlation id, and the withdrawal
/// is row-locked, or the step is retried shortly while it is not there yet.
async fn on_withdrawal<S: PaymentStep>(
    step: &S,
    tx: &mut StageTx,
    m: &WithdrawalStep,
) -> Result<Outcome, StageError> {
    tx.set_correlation_id(&m.withdrawal_id.to_string());
    match withdrawal::lock(tx.conn(), m.withdrawal_id).await? {
        Some(w) => step.handle_withdrawal(tx, m, w).await,
        None => Ok(Outcome::NotYet {
            reason: format!("withdrawal {} not found", m.withdrawal_id),
        }),
    }
}
