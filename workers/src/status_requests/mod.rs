//! Status requests from upstream: a merchant asks where one of its payments
//! or refunds stands (`status.request`) and gets one `status.reply` on the
//! request's `reply_to`. Outside the chain: its own consumer with a small
//! prefetch and concurrency, read-only SQL through indexed lookups, no
//! stage, no lock, no outbox, so a burst of questions never slows a payment.
//!
//! Every request is acked once handled: a query changes nothing, so there
//! is nothing to retry or to lose. The asker's timeout covers a reply that
//! could not be sent; asking again is always safe.

mod answer;
pub mod client;
mod lookup;

use std::{sync::Arc, time::Duration};

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicPublishOptions},
};
use payfleet_common::{
    Fleet, Settings,
    broker::{self, Outgoing, PublishError, Publisher},
    messages::{StatusReply, kind},
    runtime::consumer::DeliveryProcessor,
};
use sqlx::PgPool;

/// The consumer's name, in `payfleet worker` and in metrics and health.
pub const NAME: &str = "status-requests";
/// Unacked requests held at once: enough to keep the few workers busy.
const PREFETCH: u16 = 16;
/// Requests answered at once: at most this many pool connections are
/// ever taken from the stages by status queries.
const MAX_IN_FLIGHT: usize = 4;
/// RabbitMQ's direct reply-to: the broker rewrites it to
/// `amq.rabbitmq.reply-to.<channel key>` on the way in.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Adds the status-requests consumer to `fleet`.
pub fn serve(fleet: Fleet, settings: &Settings) -> Fleet {
    let shared = fleet.shared().clone();
    let queue = shared.topology.spec.status_requests.queue.clone();
    let service = StatusRequests {
        pool: shared.pool.clone(),
        publisher: shared.publisher.clone(),
        max_age: chrono::Duration::from_std(settings.request_max_age)
            .unwrap_or(chrono::Duration::MAX),
    };
    fleet.consumer(
        NAME,
        vec![queue],
        PREFETCH,
        MAX_IN_FLIGHT,
        Arc::new(service),
    )
}

/// Answers status requests from PostgreSQL.
pub struct StatusRequests {
    pool: PgPool,
    publisher: Publisher,
    /// `request_max_age_ms`, as for payment requests.
    max_age: chrono::Duration,
}

impl DeliveryProcessor for StatusRequests {
    async fn process(&self, delivery: Delivery) {
        let props = &delivery.properties;
        let message_id = props.message_id().as_ref().map(|m| m.to_string());
        let correlation_id = props.correlation_id().as_ref().map(|c| c.to_string());
        match reply_target(props.reply_to().as_ref().map(|r| r.as_str())) {
            Ok(reply_to) => {
                let reply = answer::answer(
                    &self.pool,
                    &delivery.data,
                    props.headers().as_ref(),
                    self.max_age,
                )
                .await;
                count(&reply);
                if let Err(error) = self.send(reply_to, correlation_id.as_deref(), &reply).await {
                    // The asker times out and asks again; a query has no effect to lose.
                    tracing::warn!(%error, ?message_id, reply_to, "status reply not delivered");
                    metrics::counter!("payfleet_status_replies_undelivered_total").increment(1);
                }
            }
            Err((code, why)) => {
                // No one to answer. Not dead-lettered: a query changes
                // nothing, so nothing is lost, and a replay could not be
                // answered either; a misconfigured client must not be able
                // to fill the operators' dead-letter store. Logged with
                // what is wrong and counted instead.
                let merchant = answer::merchant_named(&delivery.data);
                tracing::warn!(
                    ?message_id,
                    ?merchant,
                    why,
                    "status request cannot be answered; dropped"
                );
                metrics::counter!("payfleet_status_requests_total", "result" => "unanswerable", "code" => code).increment(1);
            }
        }
        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: the broker redelivers it, and it is answered again.
            tracing::warn!(%error, ?message_id, "status request not acked");
        }
    }
}

/// Where a reply may go: RabbitMQ's direct reply-to, or a queue of the
/// asker (named by itself or by the broker, `amq.gen-…`). Never one of the
/// fleet's own queues (`payfleet.…`) nor another `amq.` name: the fleet
/// must not be made to post into its own work queues. Refused: the
/// metric's code and what is wrong.
fn reply_target(reply_to: Option<&str>) -> Result<&str, (&'static str, &'static str)> {
    const REFUSED: &str = "reply_to_refused";
    match reply_to.map(str::trim) {
        None | Some("") => Err(("no_reply_to", "no reply_to")),
        Some(to) if to.starts_with(DIRECT_REPLY_TO) || to.starts_with("amq.gen-") => Ok(to),
        Some(to) if to.starts_with("payfleet.") => {
            Err((REFUSED, "reply_to names a payfleet queue"))
        }
        Some(to) if to.starts_with("amq.") => {
            Err((REFUSED, "reply_to names a broker-reserved queue"))
        }
        Some(to) => Ok(to),
    }
}

#[derive(Debug, thiserror::Error)]
enum ReplyError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("no confirm from the broker within {0:?}")]
    Unconfirmed(Duration),
}

fn count(reply: &StatusReply) {
    let (result, code) = match &reply.error {
        None => ("answered", "none"),
        Some(error) => ("refused", error.code.as_str()),
    };
    metrics::counter!("payfleet_status_requests_total", "result" => result, "code" => code)
        .increment(1);
}

impl StatusRequests {
    /// Publishes the reply through the default exchange. With direct
    /// reply-to it is not `mandatory`: RabbitMQ returns every mandatory
    /// message to `amq.rabbitmq.reply-to.*` as unroutable, even the ones it
    /// delivered (seen on 3.10, as its documentation says). To a queue it
    /// is, so a reply to a queue that is gone is known.
    async fn send(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        reply: &StatusReply,
    ) -> Result<(), ReplyError> {
        let body = serde_json::to_vec(reply).unwrap_or_default();
        let message_id = uuid::Uuid::now_v7().to_string();
        // Transient: the asker reads it at once or never.
        let properties = broker::properties(&message_id, correlation_id, Some(kind::STATUS_REPLY))
            .with_delivery_mode(1);
        let message = Outgoing {
            exchange: String::new(),
            routing_key: reply_to.to_owned(),
            body,
            properties,
        };
        let channel = self.publisher.channel().await?;
        let published = channel
            .basic_publish(
                "".into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: !reply_to.starts_with(DIRECT_REPLY_TO),
                    ..Default::default()
                },
                &message.body,
                message.properties.clone(),
            )
            .await;
        let confirm = match published {
            Ok(confirm) => confirm,
            Err(error) => {
                self.publisher.forget().await;
                return Err(PublishError::from(error).into());
            }
        };
        tokio::time::timeout(REPLY_CONFIRM_TIMEOUT, broker::confirmed(confirm, &message))
            .await
            .map_err(|_| ReplyError::Unconfirmed(REPLY_CONFIRM_TIMEOUT))??;
        Ok(())
    }
}

/// How long a reply waits for the broker's confirm.
const REPLY_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_to_the_asker_and_never_into_the_fleet() {
        assert_eq!(
            reply_target(Some("amq.rabbitmq.reply-to.g1h2AA.94ij")),
            Ok("amq.rabbitmq.reply-to.g1h2AA.94ij")
        );
        assert_eq!(reply_target(Some("shop.replies")), Ok("shop.replies"));
        assert_eq!(reply_target(Some("amq.gen-7Yx")), Ok("amq.gen-7Yx"));
        for refused in [
            None,
            Some(""),
            Some("payfleet.fund-freeze"),
            Some("amq.direct"),
        ] {
            assert!(reply_target(refused).is_err(), "{refused:?}");
        }
    }
}
