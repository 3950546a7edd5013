//! Dead letters: publishing one to the stage's DLQ with the headers that
//! explain it, and the keeper that drains every DLQ into the dead-letter
//! store in PostgreSQL (commit, then ack), where ops list, replay and purge.

use std::{sync::Arc, time::Duration};

use lapin::{BasicProperties, message::Delivery, options::BasicAckOptions, types::FieldTable};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::{consumer::DeliveryProcessor, stage::Inbound};
use crate::{
    broker::{self, Outgoing, PublishError, Publisher, header},
    fault,
};

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Undecodable: dead-lettered at once.
    Poison,
    /// The handler said retrying cannot help.
    Permanent,
    /// Transient failures used up the retry budget.
    Exhausted,
    /// Its handling kept ending the process.
    CrashLoop,
    /// Dead-lettered by the broker itself (a reject, a quorum delivery limit).
    Broker,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Poison => "poison",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::CrashLoop => "crash-loop",
            ErrorKind::Broker => "broker",
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Headers for a failed attempt: keeps the first failure time, updates the last.
pub fn failure_headers(inbound: &Inbound, attempts: u32, error: &str) -> FieldTable {
    let mut headers = inbound.headers.clone();
    let now = now_rfc3339();
    if broker::header_str(Some(&headers), header::FIRST_FAILURE_AT).is_none() {
        broker::set_header(&mut headers, header::FIRST_FAILURE_AT, now.as_str());
    }
    broker::set_header(&mut headers, header::LAST_FAILURE_AT, now);
    broker::set_header(&mut headers, header::ATTEMPT, i64::from(attempts));
    broker::set_header(&mut headers, header::ERROR_MESSAGE, truncate(error, 2_000));
    headers
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Publishes the message, body unchanged, to `stage`'s DLQ.
pub async fn publish(
    publisher: &Publisher,
    dead_letter_exchange: &str,
    inbound: &Inbound,
    properties: &BasicProperties,
    kind: ErrorKind,
    error: &str,
    attempts: u32,
) -> Result<(), PublishError> {
    let mut headers = failure_headers(inbound, attempts, error);
    broker::set_header(&mut headers, header::STAGE, inbound.stage.as_str());
    broker::set_header(&mut headers, header::ERROR_KIND, kind.as_str());
    broker::set_header(&mut headers, header::ATTEMPTS, i64::from(attempts));
    // Deterministic per dead-lettering: if the process dies between this
    // publish and the ack, the redelivery is dead-lettered again under the
    // same id and the keeper stores it once. A replayed message that fails
    // again carries its replay mark, so it gets a new row.
    let replayed_from =
        broker::header_str(Some(&inbound.headers), header::REPLAYED_FROM).unwrap_or_default();
    let dead_letter_id = crate::messages::stable_id(&[
        "dead-letter",
        &inbound.stage,
        &inbound.message_id,
        kind.as_str(),
        &attempts.to_string(),
        &replayed_from,
    ]);
    broker::set_header(
        &mut headers,
        header::DEAD_LETTER_ID,
        dead_letter_id.to_string(),
    );
    let mut properties = properties.clone().with_headers(headers);
    if properties.message_id().is_none() {
        properties = properties.with_message_id(inbound.message_id.as_str().into());
    }
    let message = Outgoing {
        exchange: dead_letter_exchange.to_owned(),
        routing_key: inbound.stage.clone(),
        body: inbound.body.clone(),
        properties,
    };
    publisher.publish(&message).await?;
    metrics::counter!("payfleet_dead_lettered_total", "stage" => inbound.stage.clone(), "kind" => kind.as_str()).increment(1);
    Ok(())
}

/// Drains DLQs into the `dead_letters` table.
pub struct Keeper {
    pool: PgPool,
}

impl Keeper {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self { pool })
    }

    /// Stores one dead letter; false when it was already there.
    pub async fn store(&self, delivery: &Delivery) -> Result<bool, sqlx::Error> {
        let headers = delivery.properties.headers().as_ref();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_else(|| body_message_id(&delivery.data));
        let stage = broker::header_str(headers, header::STAGE)
            .unwrap_or_else(|| stage_from_queue(delivery));
        let kind = broker::header_str(headers, header::ERROR_KIND)
            .unwrap_or_else(|| ErrorKind::Broker.as_str().to_owned());
        let error = broker::header_str(headers, header::ERROR_MESSAGE).unwrap_or_else(|| {
            "dead-lettered by the broker (rejected or over its delivery limit)".to_owned()
        });
        let attempts = broker::header_i64(headers, header::ATTEMPTS)
            .or_else(|| broker::header_i64(headers, header::ATTEMPT))
            .unwrap_or(0);
        let now = chrono::Utc::now();
        let first = broker::header_str(headers, header::FIRST_FAILURE_AT)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(now);
        let last = broker::header_str(headers, header::LAST_FAILURE_AT)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(now);
        // Our dead letters carry a unique id; one the broker dead-lettered is
        // keyed by its content and death count, which a redelivery repeats.
        let key = broker::header_str(headers, header::DEAD_LETTER_ID).unwrap_or_else(|| {
            let deaths = broker::headers_to_json(headers)
                .get("x-death")
                .map(|d| d.to_string())
                .unwrap_or_default();
            let mut hash = Sha256::new();
            hash.update(message_id.as_bytes());
            hash.update(deaths.as_bytes());
            hash.update(&delivery.data);
            format!("broker:{}", hex::encode(hash.finalize()))
        });
        let correlation_id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned());
        let inserted = sqlx::query(
            "INSERT INTO dead_letters (dead_letter_key, stage, message_id, correlation_id, error_kind, error_message,
                 attempts, first_failed_at, last_failed_at, routing_key, properties, headers, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (dead_letter_key) DO NOTHING",
        )
        .bind(key)
        .bind(&stage)
        .bind(message_id)
        .bind(correlation_id)
        .bind(kind)
        .bind(error)
        .bind(attempts as i32)
        .bind(first)
        .bind(last)
        .bind(&stage)
        .bind(broker::properties_to_json(&delivery.properties))
        .bind(broker::headers_to_json(headers))
        .bind(&delivery.data)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}

impl DeliveryProcessor for Keeper {
    async fn process(&self, delivery: Delivery) {
        match self.store(&delivery).await {
            Ok(new) => {
                fault::point(fault::KEEPER_AFTER_COMMIT);
                if !new {
                    tracing::info!("dead letter already stored; acking the redelivered copy");
                }
                if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(%error, "dead letter stored but not acked; its redelivery is recognised");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot store dead letter; requeueing it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                super::handling::requeue(&delivery).await;
            }
        }
    }
}

/// `payfleet.<stage>.dlq` → `<stage>`.
fn stage_from_queue(delivery: &Delivery) -> String {
    let key = delivery.routing_key.as_str();
    key.strip_prefix("payfleet.")
        .and_then(|k| k.strip_suffix(".dlq"))
        .unwrap_or(key)
        .to_owned()
}

/// The message id of a message published without one: the body's hash, so
/// duplicates of the same body are recognised.
pub fn body_message_id(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}
