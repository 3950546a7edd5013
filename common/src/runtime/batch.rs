//! Batches: the deliveries of a one-transaction stage that arrive together
//! (up to `batch_size`, or what came within `batch_wait_ms` of the first)
//! are handled in one PostgreSQL transaction, each inside its own savepoint
//! ([`super::transaction::BatchTx`]), and acked one by one after the commit.
//!
//! What stays outside batches: suspects (redeliveries, which may have ended
//! a process) run alone as before; a second message for a key already in
//! the batch waits for the next one; a batch that PostgreSQL aborts as a
//! whole (deadlock, serialization failure, a lost connection) is re-run one
//! message at a time, each in its own transaction, with nobody's retry
//! budget spent on the lost batch.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{RwLock, Semaphore, mpsc, oneshot};

use super::{
    Shared,
    handling::{Disposition, Handler, disposition},
    stage::Inbound,
};

/// Batches of one stage in flight at once in a process: one committing
/// while the next fills.
pub const CONCURRENT_BATCHES: usize = 2;

/// How one stage batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Most deliveries in one transaction (1: no batching).
    pub size: usize,
    /// How long a batch waits for more after its first delivery.
    pub wait: Duration,
}

/// A delivery waiting for its batch, and where its disposition goes.
pub(super) struct Job<M> {
    pub inbound: Arc<Inbound>,
    pub message: M,
    pub key: Option<String>,
    pub done: oneshot::Sender<Disposition>,
}

impl<M> Job<M> {
    fn answer(self, disposition: Disposition) {
        // The delivery's task is gone only when its consumer stopped; the
        // broker redelivers it and the inbox recognises it.
        let _ = self.done.send(disposition);
    }
}

/// The stage's batching loop: gathers jobs into batches and runs up to
/// [`CONCURRENT_BATCHES`] of them at once. Ends when every sender is gone.
pub(super) async fn gather<H: Handler>(
    handler: Arc<H>,
    shared: Arc<Shared>,
    solo: Arc<RwLock<()>>,
    settings: BatchSettings,
    mut jobs: mpsc::Receiver<Job<H::Message>>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    let mut held_over: VecDeque<Job<H::Message>> = VecDeque::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(settings.size);
        let mut keys = HashSet::new();
        // Jobs held over from the last batch go first, in their order.
        for job in std::mem::take(&mut held_over) {
            admit(job, &mut batch, &mut keys, &mut held_over, settings.size);
        }
        if batch.is_empty() {
            match jobs.recv().await {
                Some(job) => admit(job, &mut batch, &mut keys, &mut held_over, settings.size),
                None => return,
            }
        }
        let deadline = tokio::time::Instant::now() + settings.wait;
        while batch.len() < settings.size {
            let job = tokio::select! {
                biased;
                job = jobs.recv() => job,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match job {
                Some(job) => admit(job, &mut batch, &mut keys, &mut held_over, settings.size),
                None => break,
            }
        }
        let (handler, shared, solo) = (handler.clone(), shared.clone(), solo.clone());
        tokio::spawn(async move {
            run(&*handler, &shared, &solo, batch).await;
            drop(slot);
        });
    }
}

/// Takes `job` into `batch` unless the batch is full or already holds its
/// key (two messages for one payment never share a transaction).
fn admit<M>(
    job: Job<M>,
    batch: &mut Vec<Job<M>>,
    keys: &mut HashSet<String>,
    held_over: &mut VecDeque<Job<M>>,
    size: usize,
) {
    let fits = batch.len() < size && job.key.as_ref().is_none_or(|key| keys.insert(key.clone()));
    if fits {
        batch.push(job);
    } else {
        held_over.push_back(job);
    }
}

/// Runs one batch: its locks in one round trip, its transaction, its
/// locks released in one round trip, then each job's own disposition.
pub(super) async fn run<H: Handler>(
    handler: &H,
    shared: &Shared,
    solo: &RwLock<()>,
    mut jobs: Vec<Job<H::Message>>,
) {
    // One order for every batch: rows keyed by payment are locked in key order.
    jobs.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = jobs.iter().filter_map(|job| job.key.as_deref()).collect();
    let acquired = shared.locks.try_acquire_many(handler.name(), &keys).await;
    let mut held = Vec::with_capacity(keys.len());
    let mut runnable = Vec::with_capacity(jobs.len());
    match acquired {
        Ok(guards) => {
            let mut guards = guards.into_iter();
            for job in jobs {
                if job.key.is_none() {
                    runnable.push(job);
                } else if let Some(guard) = guards.next().flatten() {
                    held.push(guard);
                    runnable.push(job);
                } else {
                    job.answer(Disposition::LockBusy);
                }
            }
        }
        Err(error) => {
            for job in jobs {
                if job.key.is_none() {
                    runnable.push(job);
                } else {
                    job.answer(Disposition::Retry(error.to_string()));
                }
            }
        }
    }
    if runnable.is_empty() {
        shared.locks.release_many(held).await;
        return;
    }
    let gate = solo.read().await;
    let items: Vec<(&Inbound, &H::Message)> = runnable
        .iter()
        .map(|job| (&*job.inbound, &job.message))
        .collect();
    metrics::histogram!("payfleet_batch_messages", "stage" => handler.name().to_owned())
        .record(items.len() as f64);
    let results = match handler.process_batch(shared, &items).await {
        Ok(results) => results,
        Err(error) => {
            tracing::info!(%error, stage = handler.name(), messages = items.len(),
                "batch rolled back as a whole; handling its messages one at a time");
            metrics::counter!("payfleet_batches_rerun_total", "stage" => handler.name().to_owned())
                .increment(1);
            let mut results = Vec::with_capacity(items.len());
            for (inbound, message) in &items {
                results.push(handler.process(shared, inbound, message).await);
            }
            results
        }
    };
    drop(items);
    drop(gate);
    shared.locks.release_many(held).await;
    for (job, result) in runnable.into_iter().zip(results) {
        let disposition = disposition(result);
        job.answer(disposition);
    }
}
