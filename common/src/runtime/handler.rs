//! The forms a stage takes for the runtime: a [`Transactional`] stage (one
//! transaction, or a savepoint in a batch's transaction) and a [`Calling`]
//! stage (intent, call, result), both seen as a [`Handler`].

use std::future::Future;

use tracing::Instrument;

use super::{
    Shared,
    stage::{CallingStage, Inbound, Intent, Outcome, Stage, StageError, Undecodable},
    transaction::{self, BatchTx, Begun, Kept, StageTx},
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
    fn name(&self) -> &str;
    fn decode(&self, inbound: &Inbound) -> Result<Self::Message, Undecodable>;
    fn lock_key(&self, message: &Self::Message) -> Option<String>;
    fn process(
        &self,
        shared: &Shared,
        inbound: &Inbound,
        message: &Self::Message,
    ) -> impl Future<Output = Result<Processed, StageError>> + Send;
    /// Whether this message may join a batch (when the stage batches).
    fn batchable(&self, _message: &Self::Message) -> bool {
        true
    }
    /// Handles one message inside a batch's savepoint, its inbox row
    /// claimed; `None` when it cannot be handled there and must run alone.
    fn handle_in_batch(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        message: &Self::Message,
    ) -> impl Future<Output = Result<Option<Outcome>, StageError>> + Send;
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
            .before_transaction(&shared.pool, &[(inbound, message)])
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
        // A batch of one is a message's own transaction: no savepoint, no
        // lock timeout (nothing else of its batch waits behind it). A
        // deadlock still costs no retry: the batch's re-run takes it.
        if let [(inbound, message)] = items {
            return match self.process(shared, inbound, message).await {
                Err(error @ StageError::Contention(_)) => Err(error),
                result => Ok(vec![result]),
            };
        }
        // Committed on its own before the batch begins (when it fails, the
        // batch's messages are handled one at a time, each doing its own).
        self.0.before_transaction(&shared.pool, items).await?;
        let (mut batch, fresh) = open_batch(self, shared, items).await?;
        let together = run_together(&self.0, &mut batch, items, &fresh).await?;
        finish_batch(self, shared, batch, items, &fresh, &together).await
    }

    async fn handle_in_batch(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        message: &S::Message,
    ) -> Result<Option<Outcome>, StageError> {
        self.0.handle(tx, inbound, message).await.map(Some)
    }
}

/// The transaction of a batch, begun, with its inbox rows claimed: which
/// of `items` are fresh. An error from the batch itself (here or in
/// [`finish_batch`]) means the whole batch is lost.
async fn open_batch<H: Handler>(
    handler: &H,
    shared: &Shared,
    items: &[(&Inbound, &H::Message)],
) -> Result<(BatchTx, Vec<bool>), StageError> {
    let lock_timeout = shared.settings.batch_lock_timeout();
    let mut batch = BatchTx::begin(shared, lock_timeout).await?;
    let message_ids: Vec<&str> = items
        .iter()
        .map(|(inbound, _)| inbound.message_id.as_str())
        .collect();
    let fresh = batch.claim_inboxes(handler.name(), &message_ids).await?;
    Ok((batch, fresh))
}

/// Handles the fresh `items` not `applied_together` each in its own
/// savepoint, and commits. What steps out of the batch (a lock wait, or
/// work a batch cannot hold) runs alone once the batch has committed.
async fn finish_batch<H: Handler>(
    handler: &H,
    shared: &Shared,
    mut batch: BatchTx,
    items: &[(&Inbound, &H::Message)],
    fresh: &[bool],
    applied_together: &[bool],
) -> Result<Vec<Result<Processed, StageError>>, StageError> {
    let mut results = Vec::with_capacity(items.len());
    for (((inbound, message), &fresh), &together) in items.iter().zip(fresh).zip(applied_together) {
        if !fresh {
            results.push(Some(Ok(Processed::AlreadyProcessed)));
            continue;
        }
        if together {
            results.push(Some(Ok(Processed::Committed {
                outcome: Outcome::Applied,
            })));
            continue;
        }
        let span = handle_span(inbound);
        span.record("batched", items.len());
        batch.start(inbound).await?;
        let result = handler
            .handle_in_batch(batch.tx(), inbound, message)
            .instrument(span)
            .await;
        let result = match result {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => {
                batch.step_out(inbound).await?;
                results.push(None);
                continue;
            }
            Err(error) => Err(error),
        };
        match batch.finish(inbound, &result).await? {
            Kept::Stands => results.push(Some(finish(result))),
            Kept::SteppedOut => results.push(None),
        }
    }
    batch.commit().await?;
    let mut all = Vec::with_capacity(results.len());
    for (result, (inbound, message)) in results.into_iter().zip(items) {
        all.push(match result {
            Some(result) => result,
            None => {
                metrics::counter!("payfleet_batch_stepped_out_total", "stage" => handler.name().to_owned())
                    .increment(1);
                handler.process(shared, inbound, message).await
            }
        });
    }
    Ok(all)
}

/// The set-based work of a batch ([`Stage::handle_together`]), when two
/// or more of its fresh messages admit it: which messages it applied. A
/// failure of it (but a lost transaction) is undone, and every message is
/// handled alone.
async fn run_together<S: Stage>(
    stage: &S,
    batch: &mut BatchTx,
    items: &[(&Inbound, &S::Message)],
    fresh: &[bool],
) -> Result<Vec<bool>, StageError> {
    let mut applied = vec![false; items.len()];
    let chosen: Vec<usize> = (0..items.len())
        .filter(|&i| fresh[i] && stage.together(items[i].1))
        .collect();
    if chosen.len() < 2 {
        return Ok(applied);
    }
    let group: Vec<(&Inbound, &S::Message)> = chosen.iter().map(|&i| items[i]).collect();
    batch.start_together().await?;
    let done = match stage.handle_together(batch.tx(), &group).await {
        Ok(done) if done.len() != group.len() => {
            tracing::warn!(
                stage = stage.name(),
                answers = done.len(),
                messages = group.len(),
                "set-based work answered for the wrong number of messages"
            );
            Err(StageError::Permanent(format!(
                "set-based work answered for {} of {} messages",
                done.len(),
                group.len()
            )))
        }
        done => done,
    };
    match done {
        Ok(done) => {
            batch.keep_together();
            for (i, done) in chosen.into_iter().zip(done) {
                applied[i] = done;
            }
            let count = applied.iter().filter(|done| **done).count();
            metrics::counter!("payfleet_messages_together_total", "stage" => stage.name().to_owned())
                .increment(count as u64);
        }
        Err(StageError::Contention(reason)) => return Err(StageError::Contention(reason)),
        Err(error) => {
            tracing::info!(%error, stage = stage.name(), messages = group.len(),
                "set-based work undone; handling its messages one at a time");
            metrics::counter!("payfleet_together_undone_total", "stage" => stage.name().to_owned())
                .increment(1);
            batch.undo_together().await?;
        }
    }
    Ok(applied)
}

/// A [`CallingStage`]: intent, call, result.
pub struct Calling<S>(pub S);

impl<S: CallingStage> Handler for Calling<S> {
    type Message = S::Message;
    fn name(&self) -> &str {
        self.0.name()
    }
    fn decode(&self, inbound: &Inbound) -> Result<S::Message, Undecodable> {
        self.0.decode(inbound)
    }
    fn lock_key(&self, message: &S::Message) -> Option<String> {
        self.0.lock_key(message)
    }
    /// Only work answered at once joins a batch: a third party's call has
    /// its intent committed first, one delivery at a time.
    fn batchable(&self, message: &S::Message) -> bool {
        self.0.may_batch(message)
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
            Intent::Call(intent) if !self.0.answers_at_once(&intent) => intent,
            // Nothing to call, or nobody outside to wait for: this
            // transaction is the whole of the work.
            intent => {
                if !transaction::claim_inbox(&mut cx, inbound).await? {
                    return Ok(Processed::AlreadyProcessed);
                }
                let result = self.at_once(&mut cx, inbound, message, intent).await;
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
        let (batch, fresh) = open_batch(self, shared, items).await?;
        let none_together = vec![false; items.len()];
        finish_batch(self, shared, batch, items, &fresh, &none_together).await
    }

    async fn handle_in_batch(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        message: &S::Message,
    ) -> Result<Option<Outcome>, StageError> {
        match self.0.record_intent(tx, inbound, message).await? {
            // A third party's call after all: its intent must commit first.
            Intent::Call(intent) if !self.0.answers_at_once(&intent) => Ok(None),
            intent => self.at_once(tx, inbound, message, intent).await.map(Some),
        }
    }
}

impl<S: CallingStage> Calling<S> {
    /// Finishes, inside the intent's own transaction, work with nothing to
    /// call or a call answered at once.
    async fn at_once(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        message: &S::Message,
        intent: Intent<S::Intent>,
    ) -> Result<Outcome, StageError> {
        match intent {
            Intent::Finished(outcome) => Ok(outcome),
            Intent::Call(intent) => {
                let reply = self.0.call(message, &intent).await;
                self.0
                    .record_result(tx, inbound, message, intent, reply)
                    .await
            }
        }
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
