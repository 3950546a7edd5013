//! Publishing requests to the ingress exchange as an upstream would.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use payfleet_common::{
    broker::{self, Outgoing, Publisher},
    messages,
};

use super::plan::Planned;

pub(super) async fn publish_all(
    publisher: Publisher,
    exchange: String,
    plan: Vec<Planned>,
    published: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    publish_requests(
        &publisher,
        &exchange,
        plan.into_iter()
            .map(|p| (p.message_id, p.body, p.signature)),
        &published,
        None,
    )
    .await
}

/// Publishes `requests` of `kind` as the requester whose request key is
/// `key` asks them (the wallet application's withdrawals and top-ups, a
/// seller's payouts): each signed, under a new message id.
pub(super) async fn publish_signed_by<T: serde::Serialize>(
    publisher: &Publisher,
    (exchange, kind): (&str, &str),
    key: &str,
    requests: &[T],
    published: &AtomicU64,
) -> anyhow::Result<()> {
    let mut signed = Vec::with_capacity(requests.len());
    for request in requests {
        let body = serde_json::to_vec(request)?;
        let signature = messages::sign(key, &body);
        signed.push((uuid::Uuid::now_v7().to_string(), body, Some(signature)));
    }
    publish_upstream(publisher, exchange, kind, signed, published).await
}

/// Publishes signed upstream bodies of `kind` (`refund.requested`,
/// `payment.reverse`: message id, body, signature) with pipelined
/// confirms; counts each confirmed one.
pub(super) async fn publish_upstream(
    publisher: &Publisher,
    exchange: &str,
    kind: &str,
    requests: Vec<(String, Vec<u8>, Option<String>)>,
    published: &AtomicU64,
) -> anyhow::Result<()> {
    publish_kind(
        publisher,
        exchange,
        kind,
        requests.into_iter(),
        published,
        None,
    )
    .await
}

/// Publishes payment requests (message id, body, signature) to the ingress
/// exchange as a careful upstream would: pipelined confirms in windows of
/// 100, or one at a time at `rate` per second (each request is taken from
/// the iterator at its moment, so it is made when it is sent). Counts each
/// confirmed one.
pub(crate) async fn publish_requests(
    publisher: &Publisher,
    exchange: &str,
    requests: impl Iterator<Item = (String, Vec<u8>, Option<String>)>,
    published: &AtomicU64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    publish_kind(
        publisher,
        exchange,
        messages::kind::PAYMENT_REQUESTED,
        requests,
        published,
        rate,
    )
    .await
}

/// Publishes requests of AMQP type and routing key `kind`, as
/// [`publish_requests`] does.
async fn publish_kind(
    publisher: &Publisher,
    exchange: &str,
    kind: &str,
    mut requests: impl Iterator<Item = (String, Vec<u8>, Option<String>)>,
    published: &AtomicU64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let window = if rate.is_some() { 1 } else { 100 };
    let mut ticker = rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.001)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    loop {
        let mut confirms = Vec::with_capacity(window);
        while confirms.len() < window {
            if let Some(ticker) = ticker.as_mut() {
                ticker.tick().await;
            }
            let Some((message_id, body, signature)) = requests.next() else {
                break;
            };
            let mut properties = broker::properties(&message_id, None, Some(kind));
            if let Some(signature) = signature {
                let mut headers = lapin::types::FieldTable::default();
                broker::set_header(&mut headers, messages::SIGNATURE_HEADER, signature.as_str());
                properties = properties.with_headers(headers);
            }
            let message = Outgoing {
                exchange: exchange.to_owned(),
                routing_key: kind.to_owned(),
                body,
                properties,
            };
            let confirm = publisher.start(&message).await?;
            confirms.push((message, confirm));
        }
        if confirms.is_empty() {
            return Ok(());
        }
        for (message, confirm) in confirms {
            broker::confirmed(confirm, &message)
                .await
                .with_context(|| format!("publishing a {kind}"))?;
            published.fetch_add(1, Ordering::Relaxed);
        }
    }
}
