//! The consuming loop shared by stage consumers and the dead-letter keeper:
//! its own connection, manual acks, prefetch, a bounded number of deliveries
//! in flight, reconnection with backoff, and a bounded graceful stop.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream::select_all};
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{broker, telemetry::Health};

/// Handles one delivery to the end: it acks, nacks or leaves it.
pub trait DeliveryProcessor: Send + Sync + 'static {
    fn process(&self, delivery: Delivery) -> impl Future<Output = ()> + Send;
}

/// What one consumer reads and how much it takes at once.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub name: String,
    pub amqp: broker::Endpoint,
    pub queues: Vec<String>,
    pub prefetch: u16,
    pub max_in_flight: usize,
    pub shutdown_timeout: Duration,
}

/// Consumes until `cancel` fires; then stops taking deliveries, lets the ones
/// in flight finish within `shutdown_timeout`, and closes the channel (the
/// broker requeues whatever was prefetched but not started).
pub async fn consume<P: DeliveryProcessor>(
    spec: ConsumerSpec,
    processor: Arc<P>,
    health: Health,
    cancel: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let in_flight = Arc::new(Semaphore::new(spec.max_in_flight));
    let mut failures: u32 = 0;
    let tag = format!("{}-{}", spec.name, uuid::Uuid::now_v7());
    while !cancel.is_cancelled() {
        let Ok(connection) = broker::connect(&spec.amqp, &spec.name, &cancel).await else {
            break;
        };
        let subscribed = async {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(spec.prefetch, BasicQosOptions::default())
                .await?;
            let mut streams = Vec::new();
            for (index, queue) in spec.queues.iter().enumerate() {
                let consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        format!("{tag}-{index}").into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                streams.push(consumer);
            }
            Ok::<_, lapin::Error>((channel, streams))
        }
        .await;
        let (channel, streams) = match subscribed {
            Ok(ok) => ok,
            Err(error) => {
                failures += 1;
                let delay = Duration::from_millis((100u64 << failures.min(6)).min(5_000));
                tracing::warn!(%error, consumer = %spec.name, ?delay, "cannot subscribe; retrying");
                let _ = connection.close(200, "retrying".into()).await;
                tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = cancel.cancelled() => {} }
                continue;
            }
        };
        failures = 0;
        health.consumer_up(&spec.name);
        tracing::info!(consumer = %spec.name, queues = ?spec.queues, "consuming");
        let mut deliveries = select_all(streams);
        loop {
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => permit.expect("semaphore never closed"),
                _ = cancel.cancelled() => break,
            };
            let next = tokio::select! {
                next = deliveries.next() => next,
                _ = cancel.cancelled() => break,
            };
            match next {
                Some(Ok(delivery)) => {
                    let processor = processor.clone();
                    tracker.spawn(async move {
                        processor.process(delivery).await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, consumer = %spec.name, "consumer stream failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!(consumer = %spec.name, "consumer cancelled by the broker; reconnecting");
                    break;
                }
            }
        }
        health.consumer_down(&spec.name);
        if cancel.is_cancelled() {
            for index in 0..spec.queues.len() {
                let _ = channel
                    .basic_cancel(
                        format!("{tag}-{index}").into(),
                        BasicCancelOptions::default(),
                    )
                    .await;
            }
            tracker.close();
            if tokio::time::timeout(spec.shutdown_timeout, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(consumer = %spec.name, "deliveries still running at the shutdown bound; the broker redelivers them");
            }
            let _ = channel.close(200, "shutdown".into()).await;
            let _ = connection.close(200, "shutdown".into()).await;
            return;
        }
        let _ = connection.close(200, "reconnecting".into()).await;
    }
    tracker.close();
    let _ = tokio::time::timeout(spec.shutdown_timeout, tracker.wait()).await;
}
