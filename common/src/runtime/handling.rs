//! One delivery through a stage: the crash-loop guard, decoding, the Redis
//! lock, the stage's transaction(s), then ack, retry through a delay level,
//! or dead-letter.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use sqlx::PgPool;
use tokio::sync::{RwLock, mpsc, oneshot};
use tracing::Instrument;

pub use super::handler::{Calling, Handler, Processed, Transactional};
use super::{
    Shared,
    batch::{self, BatchSettings, Job},
    consumer::DeliveryProcessor,
    dead_letter::{self, ErrorKind},
    inbound::{inbound, queue_wait},
    stage::{Inbound, Outcome, StageError},
    transaction,
};
use crate::{
    broker::{self, Outgoing, header},
    fault,
    topology::Topology,
};

/// Where a delivery goes once handled.
#[derive(Debug)]
pub(super) enum Disposition {
    Ack(&'static str),
    /// A held lock: back through the shortest delay, the budget untouched.
    LockBusy,
    /// A transient failure: through the delay levels, counting an attempt.
    Retry(String),
    DeadLetter(ErrorKind, String),
    /// Its batch ended without an answer (the batch's task died): given
    /// back to the queue, to come again as a suspect handled alone.
    Requeue(&'static str),
}

/// Runs deliveries of one stage through its handler.
pub struct StageProcessor<H: Handler> {
    handler: Arc<H>,
    shared: Arc<Shared>,
    /// Redelivered messages are handled alone, so that a crash during one is
    /// attributed to that message only.
    solo: Arc<RwLock<()>>,
    batch: BatchSettings,
    /// Where first deliveries go to be batched, once the first one came.
    batches: OnceLock<mpsc::Sender<Job<H::Message>>>,
}

impl<H: Handler> StageProcessor<H> {
    /// A processor handling deliveries as `batch` says (a stage that cannot
    /// batch handles each on its own whatever `batch` says).
    pub fn new(handler: H, shared: Arc<Shared>, batch: BatchSettings) -> Arc<Self> {
        // Register the stage's series at start, so dashboards see zeros, not gaps.
        for result in ["applied", "stale", "duplicate", "retried", "dead_lettered"] {
            metrics::counter!("payfleet_messages_total", "stage" => handler.name().to_owned(), "result" => result).increment(0);
        }
        Arc::new(Self {
            handler: Arc::new(handler),
            shared,
            solo: Arc::new(RwLock::new(())),
            batch,
            batches: OnceLock::new(),
        })
    }

    /// The stage's batching loop, started on first use; `None` when the
    /// stage handles deliveries one at a time.
    fn batches(&self) -> Option<&mpsc::Sender<Job<H::Message>>> {
        if self.batch.size <= 1 {
            return None;
        }
        Some(self.batches.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(self.batch.size * batch::CONCURRENT_BATCHES);
            tokio::spawn(batch::gather(
                self.handler.clone(),
                self.shared.clone(),
                self.solo.clone(),
                self.batch,
                receiver,
            ));
            sender
        }))
    }

    async fn decide(&self, inbound: &Arc<Inbound>) -> Disposition {
        let shared = &self.shared;
        let message = match self.handler.decode(inbound) {
            Ok(message) => message,
            Err(undecodable) => {
                return Disposition::DeadLetter(ErrorKind::Poison, undecodable.to_string());
            }
        };
        if !inbound.suspect
            && self.handler.batchable(&message)
            && let Some(batches) = self.batches()
        {
            let (done, answer) = oneshot::channel();
            let job = Job {
                inbound: inbound.clone(),
                key: self.handler.lock_key(&message),
                message,
                done,
            };
            if batches.send(job).await.is_err() {
                return Disposition::Requeue("the stage's batching has stopped");
            }
            return answer
                .await
                .unwrap_or(Disposition::Requeue("its batch ended without an answer"));
        }
        let lock = match self.handler.lock_key(&message) {
            Some(key) => match shared.locks.try_acquire(&inbound.stage, &key).await {
                Ok(Some(guard)) => Some(guard),
                Ok(None) => return Disposition::LockBusy,
                Err(error) => return Disposition::Retry(error.to_string()),
            },
            None => None,
        };
        // A suspect may be the message that ended a process: it is counted
        // and handled alone, so a crash is charged to the message that caused
        // it and to no other. The count is taken only when the handler is
        // about to run, and forgotten as soon as a run ends without a crash.
        let _gate = if inbound.suspect {
            let gate = Gate::Solo(self.solo.write().await);
            match count_delivery(&shared.pool, inbound).await {
                Ok(counted) => {
                    // The first delivery was not counted: it was not a suspect yet.
                    let deliveries = counted + 1;
                    if deliveries > i64::from(shared.settings.crash_loop_limit) {
                        if let Some(lock) = lock {
                            lock.release().await;
                        }
                        return Disposition::DeadLetter(
                            ErrorKind::CrashLoop,
                            format!(
                                "delivered {deliveries} times without finishing; its handling keeps ending the process"
                            ),
                        );
                    }
                }
                Err(error) => return Disposition::Retry(format!("counting deliveries: {error}")),
            }
            gate
        } else {
            Gate::Shared(self.solo.read().await)
        };
        let processed = self.handler.process(shared, inbound, &message).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        let committed = matches!(processed, Ok(Processed::Committed { .. }));
        if inbound.suspect && !committed {
            // (a commit cleared it in its own transaction)
            if let Err(error) = transaction::clear_delivery_count(&shared.pool, inbound).await {
                tracing::warn!(%error, "cannot clear the delivery count");
            }
        }
        disposition(processed)
    }

    async fn settle(
        &self,
        delivery: &Delivery,
        inbound: &Inbound,
        disposition: Disposition,
    ) -> &'static str {
        let shared = &self.shared;
        let max_attempts = shared.settings.max_attempts;
        let routed = match disposition {
            Disposition::Ack(label) => {
                ack(delivery).await;
                return label;
            }
            Disposition::Requeue(reason) => {
                tracing::warn!(
                    reason,
                    "requeueing the delivery; it comes back to be handled alone"
                );
                requeue(delivery).await;
                return "requeued";
            }
            Disposition::LockBusy => {
                let mut headers = inbound.headers.clone();
                let waits = broker::header_i64(Some(&headers), header::LOCK_WAITS).unwrap_or(0) + 1;
                broker::set_header(&mut headers, header::LOCK_WAITS, waits);
                if inbound.suspect {
                    // the delayed copy is a new delivery: keep it a suspect
                    broker::set_header(&mut headers, header::SUSPECT, 1);
                }
                self.delay(delivery, inbound, 0, headers)
                    .await
                    .map(|()| "lock_busy")
            }
            Disposition::Retry(reason) => {
                let failures = inbound.attempt + 1;
                if failures >= max_attempts {
                    tracing::warn!(%reason, failures, "retries exhausted; dead-lettering");
                    self.dead_letter(delivery, inbound, ErrorKind::Exhausted, &reason, failures)
                        .await
                } else {
                    tracing::info!(%reason, failures, "transient failure; retrying after a delay");
                    let mut headers = dead_letter::failure_headers(inbound, failures, &reason);
                    // this run ended without a crash: the copy is no suspect
                    headers = without(headers, header::SUSPECT);
                    let level = shared.topology.retry_level(failures);
                    self.delay(delivery, inbound, level, headers)
                        .await
                        .map(|()| "retried")
                }
            }
            Disposition::DeadLetter(kind, reason) => {
                tracing::warn!(%reason, kind = kind.as_str(), "dead-lettering");
                self.dead_letter(delivery, inbound, kind, &reason, inbound.attempt + 1)
                    .await
            }
        };
        match routed {
            Ok(label) => {
                ack(delivery).await;
                label
            }
            Err(error) => {
                // Not routed anywhere: give it back to the queue rather than lose it.
                tracing::warn!(%error, "cannot route the message onwards; requeueing it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                requeue(delivery).await;
                "requeued"
            }
        }
    }

    async fn delay(
        &self,
        delivery: &Delivery,
        inbound: &Inbound,
        level: usize,
        headers: lapin::types::FieldTable,
    ) -> Result<(), broker::PublishError> {
        let mut properties = delivery.properties.clone().with_headers(headers);
        if properties.message_id().is_none() {
            properties = properties.with_message_id(inbound.message_id.as_str().into());
        }
        let message = Outgoing {
            exchange: self.shared.topology.exchanges().retry.clone(),
            routing_key: Topology::retry_routing_key(&inbound.stage, level),
            body: inbound.body.clone(),
            properties,
        };
        self.shared.publisher.publish(&message).await
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        inbound: &Inbound,
        kind: ErrorKind,
        reason: &str,
        attempts: u32,
    ) -> Result<&'static str, broker::PublishError> {
        let exchange = &self.shared.topology.exchanges().dead_letters;
        dead_letter::publish(
            &self.shared.publisher,
            exchange,
            inbound,
            &delivery.properties,
            kind,
            reason,
            attempts,
        )
        .await?;
        if inbound.suspect {
            let _ = transaction::clear_delivery_count(&self.shared.pool, inbound).await;
        }
        Ok("dead_lettered")
    }
}

/// Where a handled delivery goes, from what its transaction(s) came to.
pub(super) fn disposition(processed: Result<Processed, StageError>) -> Disposition {
    match processed {
        Ok(Processed::Committed { outcome }) => {
            fault::point(fault::AFTER_COMMIT_BEFORE_ACK);
            match outcome {
                Outcome::Applied => Disposition::Ack("applied"),
                Outcome::Stale { reason } => {
                    tracing::info!(%reason, "stale duplicate; acked without effect");
                    Disposition::Ack("stale")
                }
                Outcome::Exception { reason } => {
                    tracing::warn!(%reason, "conflicting final state; recorded for review");
                    Disposition::Ack("exception")
                }
                Outcome::NotYet { .. } => Disposition::Ack("applied"),
            }
        }
        Ok(Processed::AlreadyProcessed) => Disposition::Ack("duplicate"),
        Ok(Processed::NotYet(reason)) => {
            Disposition::Retry(format!("arrived before the state it needs: {reason}"))
        }
        Err(
            StageError::Transient(reason)
            | StageError::Contention(reason)
            | StageError::LockWait(reason),
        ) => Disposition::Retry(reason),
        Err(StageError::Permanent(reason)) => Disposition::DeadLetter(ErrorKind::Permanent, reason),
    }
}

enum Gate<'a> {
    Solo(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'a, ()>),
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'a, ()>),
}

impl<H: Handler> DeliveryProcessor for StageProcessor<H> {
    async fn process(&self, delivery: Delivery) {
        let inbound = Arc::new(inbound(
            self.handler.name(),
            &delivery,
            &self.shared.topology.exchanges().ingress,
        ));
        let span = super::handler::handle_span(&inbound);
        async {
            let started = Instant::now();
            if let Some(waited) = queue_wait(&inbound) {
                metrics::histogram!("payfleet_queue_wait_seconds", "stage" => inbound.stage.clone())
                    .record(waited.as_secs_f64());
            }
            let disposition = self.decide(&inbound).await;
            let label = self.settle(&delivery, &inbound, disposition).await;
            let stage = inbound.stage.clone();
            metrics::counter!("payfleet_messages_total", "stage" => stage.clone(), "result" => label).increment(1);
            metrics::histogram!("payfleet_handle_seconds", "stage" => stage).record(started.elapsed().as_secs_f64());
            tracing::debug!(result = label, elapsed_ms = started.elapsed().as_millis() as u64, "handled");
        }
        .instrument(span)
        .await
    }
}

fn without(headers: lapin::types::FieldTable, key: &str) -> lapin::types::FieldTable {
    let mut map = headers.inner().clone();
    map.remove(key);
    map.into()
}

/// Gives the delivery back to its queue; the broker redelivers it flagged.
pub(super) async fn requeue(delivery: &Delivery) {
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker redelivers and the inbox recognises it.
        tracing::warn!(%error, "ack failed; the redelivery will be recognised");
    }
}

/// Counts a redelivery in PostgreSQL (committed before handling starts).
async fn count_delivery(pool: &PgPool, inbound: &Inbound) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO delivery_counts (stage, message_id, deliveries) VALUES ($1, $2, 1)
         ON CONFLICT (stage, message_id)
         DO UPDATE SET deliveries = delivery_counts.deliveries + 1, last_seen_at = now()
         RETURNING deliveries::bigint",
    )
    .bind(&inbound.stage)
    .bind(&inbound.message_id)
    .fetch_one(pool)
    .await
}
