//! The forms a stage takes for the runtime: a [`Transactional`] stage (one
//! transaction, or a savepoint in a batch's transaction) and a [`Calling`]
//! stage (intent, call, result), both seen as a [`Handler`].

use std::future::Future;

use tracing::Instrument;

use super::{
    Shared,
    stage::{CallingStage, Inbound, Intent, Outcome, Stage, StageError, Undecodable},
    transaction::{self, BatchTx, Begun, Kept},
};

/// What the transactions of one delivery came to.
#[derive(Debug)]
pub enum Processed {
    Committed {
        outcome: Outcome,
    },
    /// The inbox already had it.
    AlreadyProcessed,
    /// Rolled back: it arrived before the state it needs.
    NotYet(String),
}

/// The runtime's view of a stage, whichever form it has.
pub trait Handler: Send + Sync + 'static {
    type Message: Send + Sync + 'static;
    /// Whether several deliveries may share one transaction.
    const BATCHES: bool;
    fn name(&self) -> &str;
    fn decode(&self, inbound: &Inbound) -> Result<Self::Message, Undecodable>;
    fn lock_key(&self, message: &Self::Message) -> Option<String>;
    fn process(
        &self,
        shared: &Shared,
        inbound: &Inbound,
        message: &Self::Message,
    ) -> impl Future<Output = Result<Processed, StageError>> + Send;
    /// Handles `items` together, one result per item in their order; an
    /// error means nothing of the batch was committed.
    fn process_batch(
        &self,
        shared: &Shared,
        items: &[(&Inbound, &Self::Message)],
    ) -> impl Future<Output = Result<Vec<Result<Processed, StageError>>, StageError>> + Send;
}

/// A [`Stage`]: one transaction.
pub struct Transactional<S>(pub S);

impl<S: Stage> Handler for Transactional<S> {
    type Message = S::Message;
    const BATCHES: bool = true;
    fn name(&self) -> &str {
        self.0.name()
    }
    fn decode(&self, inbound: &Inbound) -> Result<S::Message, Undecodable> {
        self.0.decode(inbound)
    }
    fn lock_key(&self, message: &S::Message) -> Option<String> {
        self.0.lock_key(message)
    }
    async fn process(
        &self,
        shared: &Shared,
        inbound: &Inbound,
        message: &S::Message,
    ) -> Result<Processed, StageError> {
        self.0
            .before_transaction(&shared.pool, inbound, message)
            .await?;
        let mut cx = match transaction::begin(shared, inbound).await? {
            Begun::AlreadyProcessed => return Ok(Processed::AlreadyProcessed),
            Begun::Fresh(cx) => *cx,
        };
        let result = self.0.handle(&mut cx, inbound, message).await;
        transaction::complete(cx, inbound, &result).await?;
        finish(result)
    }

    async fn process_batch(
        &self,
        shared: &Shared,
        items: &[(&Inbound, &S::Message)],
    ) -> Result<Vec<Result<Processed, StageError>>, StageError> {
        // Each committed on its own before the batch begins.
        let mut before = Vec::with_capacity(items.len());
        for (inbound, message) in items {
            before.push(
                self.0
                    .before_transaction(&shared.pool, inbound, message)
                    .await,
            );
        }
        let lock_timeout = shared.settings.batch_lock_timeout();
        let mut batch = BatchTx::begin(shared, lock_timeout).await?;
        let mut results = Vec::with_capacity(items.len());
        for ((inbound, message), before) in items.iter().zip(before) {
            if let Err(error) = before {
                results.push(Some(Err(error)));
                continue;
            }
            let span = handle_span(inbound);
            span.record("batched", items.len());
            // An error from the batch itself means the whole batch is lost.
            let result = match batch.start(inbound).await {
                Ok(true) => {
                    self.0
                        .handle(batch.tx(), inbound, message)
                        .instrument(span)
                        .await
                }
                Ok(false) => {
                    results.push(Some(Ok(Processed::AlreadyProcessed)));
                    continue;
                }
                // Its inbox row is being written by another transaction.
                Err(StageError::LockWait(reason)) => Err(StageError::LockWait(reason)),
                Err(lost) => return Err(lost),
            };
            match batch.finish(inbound, &result).await? {
                Kept::Stands => results.push(Some(finish(result))),
                Kept::SteppedOut => results.push(None),
            }
        }
        batch.commit().await?;
        // What stepped out runs alone, now that the batch's locks are gone.
        let mut all = Vec::with_capacity(results.len());
        for (result, (inbound, message)) in results.into_iter().zip(items) {
            all.push(match result {
                Some(result) => result,
                None => {
                    metrics::counter!("payfleet_batch_stepped_out_total", "stage" => self.0.name().to_owned())
                        .increment(1);
                    self.process(shared, inbound, message).await
                }
            });
        }
        Ok(all)
    }
}

/// A [`CallingStage`]: intent, call, result.
pub struct Calling<S>(pub S);

impl<S: CallingStage> Handler for Calling<S> {
    type Message = S::Message;
    /// Its intent is committed before the call: one delivery at a time.
    const BATCHES: bool = false;
    fn name(&self) -> &str {
        self.0.name()
    }
    fn decode(&self, inbound: &Inbound) -> Result<S::Message, Undecodable> {
        self.0.decode(inbound)
    }
    fn lock_key(&self, message: &S::Message) -> Option<String> {
        self.0.lock_key(message)
    }
    async fn process(
        &self,
        shared: &Shared,
        inbound: &Inbound,
        message: &S::Message,
    ) -> Result<Processed, StageError> {
        if transaction::already_processed(&shared.pool, inbound).await? {
            return Ok(Processed::AlreadyProcessed);
        }
        let mut cx = transaction::begin_plain(shared, inbound).await?;
        let intent = match self.0.record_intent(&mut cx, inbound, message).await? {
            Intent::Call(intent) => intent,
            Intent::Finished(outcome) => {
                // Nothing to call: this transaction is the whole of the work.
                if !transaction::claim_inbox(&mut cx, inbound).await? {
                    return Ok(Processed::AlreadyProcessed);
                }
                let result = Ok(outcome);
                transaction::complete(cx, inbound, &result).await?;
                return finish(result);
            }
        };
        transaction::commit_plain(cx).await?;
        // No transaction or pooled connection is held across the call.
        let reply = self.0.call(message, &intent).await;
        let mut cx = match transaction::begin(shared, inbound).await? {
            Begun::AlreadyProcessed => return Ok(Processed::AlreadyProcessed),
            Begun::Fresh(cx) => *cx,
        };
        let result = self
            .0
            .record_result(&mut cx, inbound, message, intent, reply)
            .await;
        transaction::complete(cx, inbound, &result).await?;
        finish(result)
    }

    async fn process_batch(
        &self,
        shared: &Shared,
        items: &[(&Inbound, &S::Message)],
    ) -> Result<Vec<Result<Processed, StageError>>, StageError> {
        let mut results = Vec::with_capacity(items.len());
        for (inbound, message) in items {
            results.push(self.process(shared, inbound, message).await);
        }
        Ok(results)
    }
}

fn finish(result: Result<Outcome, StageError>) -> Result<Processed, StageError> {
    match result? {
        Outcome::NotYet { reason } => Ok(Processed::NotYet(reason)),
        outcome => Ok(Processed::Committed { outcome }),
    }
}

/// The span of one message's handling: the payment id travels in it.
pub(super) fn handle_span(inbound: &Inbound) -> tracing::Span {
    tracing::info_span!(
        "handle",
        stage = %inbound.stage,
        message_id = %inbound.message_id,
        payment_id = inbound.correlation_id.as_deref().unwrap_or(""),
        attempt = inbound.attempt,
        batched = tracing::field::Empty,
    )
}
