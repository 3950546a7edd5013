//! Counts payments by their final event, as downstream BI sees them: a
//! queue of the bench's own bound to the events exchange, read without
//! touching PostgreSQL, so timing a run costs the fleet's database nothing.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use payfleet_common::{
    CancellationToken, Settings, Topology,
    broker::{self, Endpoint},
    messages::event,
};

/// The payments whose final event has arrived.
pub struct FinalEvents {
    seen: Arc<AtomicU64>,
    stop: CancellationToken,
    reader: tokio::task::JoinHandle<()>,
}

impl FinalEvents {
    /// Binds a queue to every final event before the fleet starts, and
    /// counts distinct payment ids (an event relayed twice counts once).
    pub async fn watch(settings: &Settings, topology: &Topology) -> anyhow::Result<Self> {
        let connection =
            broker::connect_once(&Endpoint::from_settings(settings)?, "payfleet-bench-events")
                .await?;
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        for routing_key in [event::SUCCEEDED, event::FAILED, event::REJECTED] {
            channel
                .queue_bind(
                    queue.name().as_str().into(),
                    topology.exchanges().events.as_str().into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let mut deliveries = channel
            .basic_consume(
                queue.name().as_str().into(),
                "payfleet-bench-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let seen = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let reader = tokio::spawn({
            let (seen, stop) = (seen.clone(), stop.clone());
            async move {
                let mut payments = HashSet::new();
                loop {
                    let delivery = tokio::select! {
                        next = deliveries.next() => next,
                        _ = stop.cancelled() => break,
                    };
                    let Some(Ok(delivery)) = delivery else {
                        tracing::warn!("the bench's event queue closed");
                        break;
                    };
                    // The payment id; a relayed copy keeps its message id too.
                    let properties = &delivery.properties;
                    let payment = properties
                        .correlation_id()
                        .as_ref()
                        .or(properties.message_id().as_ref())
                        .map(|id| id.as_str().to_owned())
                        .unwrap_or_default();
                    if payments.insert(payment) {
                        seen.store(payments.len() as u64, Ordering::Relaxed);
                    }
                }
                let _ = connection.close(200, "counted".into()).await;
            }
        });
        Ok(Self { seen, stop, reader })
    }

    /// Payments with a final event so far.
    pub fn count(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.reader.await;
    }
}
