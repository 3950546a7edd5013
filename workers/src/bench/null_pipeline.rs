//! The null pipeline: the broker's own limit for the fleet's shape. Six
//! durable queues in a chain, each drained by a pass-through consumer that
//! publishes the message on with a publisher confirm and then acks — six
//! persistent hops, as a payment makes, with no business work. Its messages
//! per second are what a fleet with free stages could at best carry here.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use payfleet_common::{
    CancellationToken, Settings,
    broker::{self, Endpoint, Outgoing, Publisher},
    config::QueueType,
};
use tokio::{sync::Semaphore, task::JoinSet};

/// The hops a payment makes: one per stage.
pub const HOPS: usize = 6;

fn queue(hop: usize) -> String {
    format!("bench.null.{hop}")
}

/// Pre-publishes `messages` bodies of `body_len` bytes, then times six
/// pass-through hops draining them; returns the elapsed time.
pub async fn run(
    settings: &Settings,
    messages: usize,
    body_len: usize,
) -> anyhow::Result<Duration> {
    let endpoint = Endpoint::from_settings(settings)?;
    let connection = broker::connect_once(&endpoint, "payfleet-bench-null").await?;
    let admin = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(
            match settings.queue_type {
                QueueType::Classic => "classic",
                QueueType::Quorum => "quorum",
            }
            .into(),
        ),
    );
    for hop in 0..=HOPS {
        admin
            .queue_declare(
                queue(hop).as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments.clone(),
            )
            .await
            .with_context(|| format!("declaring {}", queue(hop)))?;
        admin
            .queue_purge(queue(hop).as_str().into(), Default::default())
            .await?;
    }
    let stop = CancellationToken::new();
    let feeder = Publisher::new(endpoint.clone(), "payfleet-bench-null-feed", stop.clone());
    let body = vec![b'x'; body_len];
    for window in (0..messages).collect::<Vec<_>>().chunks(500) {
        let mut confirms = Vec::with_capacity(window.len());
        for n in window {
            let message = Outgoing {
                exchange: String::new(),
                routing_key: queue(0),
                body: body.clone(),
                properties: broker::properties(&n.to_string(), None, None),
            };
            confirms.push((feeder.start(&message).await?, message));
        }
        for (confirm, message) in confirms {
            broker::confirmed(confirm, &message).await?;
        }
    }
    feeder.close().await;

    let started = Instant::now();
    let mut hops = JoinSet::new();
    for hop in 0..HOPS {
        hops.spawn(pass_through(
            endpoint.clone(),
            hop,
            settings.prefetch,
            settings.max_in_flight,
            stop.clone(),
        ));
    }
    let last = queue(HOPS);
    let elapsed = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let arrived = admin
            .queue_declare(
                last.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count() as usize;
        if arrived >= messages {
            break started.elapsed();
        }
        if let Some(Ok(Err(error))) = hops.try_join_next() {
            stop.cancel();
            return Err(error.context("a null-pipeline hop failed"));
        }
    };
    stop.cancel();
    while hops.join_next().await.is_some() {}
    for hop in 0..=HOPS {
        let _ = admin
            .queue_delete(queue(hop).as_str().into(), Default::default())
            .await;
    }
    let _ = connection.close(200, "bench done".into()).await;
    Ok(elapsed)
}

/// One hop: consume, publish on with a confirm, then ack; up to
/// `in_flight` messages at once, as a stage handles them.
async fn pass_through(
    endpoint: Endpoint,
    hop: usize,
    prefetch: u16,
    in_flight: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let connection = broker::connect_once(&endpoint, &format!("payfleet-bench-null-{hop}")).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue(hop).as_str().into(),
            format!("bench-null-{hop}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = Publisher::new(
        endpoint,
        &format!("payfleet-bench-null-{hop}-out"),
        stop.clone(),
    );
    let slots = Arc::new(Semaphore::new(in_flight.max(1)));
    let next = queue(hop + 1);
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            _ = stop.cancelled() => break,
        };
        let Some(delivery) = delivery else { break };
        let delivery = delivery?;
        let slot = slots.clone().acquire_owned().await?;
        let publisher = publisher.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let message = Outgoing {
                exchange: String::new(),
                routing_key: next,
                body: delivery.data.clone(),
                properties: delivery.properties.clone(),
            };
            if publisher.publish(&message).await.is_ok() {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
            drop(slot);
        });
    }
    publisher.close().await;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(())
}
