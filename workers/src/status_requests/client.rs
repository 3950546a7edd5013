//! Asking as upstream does: a signed `status.request` published to the
//! ingress exchange with RabbitMQ's direct reply-to, and the `status.reply`
//! awaited on the same channel within a timeout. For the tests, the demo
//! and any Rust caller; `contracts/README.md` shows the same in Python.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Confirmation, Connection,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use payfleet_common::{
    broker,
    messages::{self, StatusReply, StatusRequest, kind},
    topology::{TOPOLOGY_TOML, TopologySpec},
};

use super::DIRECT_REPLY_TO;

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the committed topology does not read: {0}")]
    Topology(String),
    #[error("the request was returned unroutable: is the topology applied?")]
    Unroutable,
    #[error("the broker refused the request (the status-requests queue is full): ask later")]
    Refused,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the reply is not a status.reply: {0}")]
    Undecodable(#[from] serde_json::Error),
}

/// Asks where a payment or refund stands: `request` signed with the
/// merchant's `signing_key`, the reply parsed. At most `timeout` in all.
pub async fn ask(
    connection: &Connection,
    request: &StatusRequest,
    signing_key: &str,
    timeout: Duration,
) -> Result<StatusReply, AskError> {
    let body = serde_json::to_vec(request)?;
    let signature = messages::sign(signing_key, &body);
    ask_raw(connection, &body, Some(&signature), timeout).await
}

/// Asks with these exact body bytes and signature header (none when `None`):
/// for requests that are not what [`ask`] would send.
pub async fn ask_raw(
    connection: &Connection,
    body: &[u8],
    signature: Option<&str>,
    timeout: Duration,
) -> Result<StatusReply, AskError> {
    let spec = TopologySpec::parse(TOPOLOGY_TOML).map_err(|e| AskError::Topology(e.to_string()))?;
    let channel = connection.create_channel().await?;
    let mut consumer = None;
    let asked = tokio::time::timeout(timeout, async {
        // Direct reply-to: consume the pseudo-queue (without acks) before
        // publishing, on the channel that publishes.
        let replies = consumer.insert(
            channel
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?,
        );
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let mut headers = FieldTable::default();
        if let Some(signature) = signature {
            broker::set_header(&mut headers, messages::SIGNATURE_HEADER, signature);
        }
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(uuid::Uuid::now_v7().to_string()))
            .with_correlation_id(ShortString::from(correlation_id.as_str()))
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_type(kind::STATUS_REQUEST.into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                spec.exchanges.ingress.as_str().into(),
                spec.status_requests.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                return Err(AskError::Unroutable);
            }
            Confirmation::Nack(None) => return Err(AskError::Refused),
        }
        while let Some(delivery) = replies.next().await {
            let delivery = delivery?;
            let theirs = delivery.properties.correlation_id().as_ref();
            if theirs.is_some_and(|c| c.as_str() == correlation_id) {
                return Ok(serde_json::from_slice(&delivery.data)?);
            }
        }
        Err(AskError::Broker(lapin::Error::from(std::io::Error::other(
            "the reply consumer ended",
        ))))
    })
    .await
    .unwrap_or(Err(AskError::Timeout(timeout)));
    let _ = channel.close(200, "asked".into()).await;
    // The reply consumer goes only now, cancelled by the close. Dropped
    // while still consuming, it sends its cancel on its own, which can
    // reach the broker after the close: a method on a closed channel is a
    // connection error, and every later ask on the connection fails.
    drop(consumer);
    asked
}
