//! The opening the stages that work on one locked payment share
//! (fund-freeze, callback, settlement): the message is JSON, its payment id
//! is the lock key and the correlation id, and the payment is row-locked
//! for the transaction, or the message is retried shortly (`NotYet`) when
//! the payment is not there yet. Such a stage implements [`PaymentStep`]
//! and is run as [`OnPayment`]; what it does reads from the locked payment
//! on.
//!
//! It lives with the domain rather than in `payfleet_common`'s runtime
//! because it needs the payment, which the runtime does not know.

use payfleet_common::{
    PaymentId,
    messages::{ChannelResult, OrderValidated, PaymentResolved},
    runtime::{Inbound, Outcome, Stage, StageError, StageTx, Undecodable, decode_json},
};
use serde::de::DeserializeOwned;

use crate::domain::payment::{self, Payment};

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
}

/// Runs a [`PaymentStep`] as a stage.
pub struct OnPayment<S>(pub S);

impl<S: PaymentStep> Stage for OnPayment<S> {
    type Message = S::Message;

    fn name(&self) -> &str {
        S::NAME
    }

    fn decode(&self, inbound: &Inbound) -> Result<S::Message, Undecodable> {
        decode_json(inbound)
    }

    fn lock_key(&self, m: &S::Message) -> Option<String> {
        Some(m.payment_id().to_string())
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        m: &S::Message,
    ) -> Result<Outcome, StageError> {
        let id = m.payment_id();
        tx.set_correlation_id(&id.to_string());
        let Some(p) = payment::lock(tx.conn(), id).await? else {
            return Ok(Outcome::NotYet {
                reason: format!("payment {id} not found"),
            });
        };
        self.0.handle(tx, m, p).await
    }
}
