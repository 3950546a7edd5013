//! The outbox: messages for the next stage and events are inserted in the
//! same transaction as the effects that caused them, then relayed to RabbitMQ
//! with pipelined publisher confirms and `mandatory`. A returned message is a
//! failure: its row stays and is retried with backoff.
//!
//! A stage's rows are inserted already claimed by its own process's relay
//! (for the relay's lease) and handed to it in memory once they commit: the
//! relay publishes them at once and marks them sent (a task of its own
//! gathers the marks of several rounds into one statement), without
//! claiming or reading them back. Rows written elsewhere (jobs, ops
//! commands) are claimed by a relay pass, which runs when woken and polls as a fallback.
//! Either way a claim is a lease, so several relays share the table, and
//! the rows of a process that died before marking them are picked up again
//! once it runs out — with the same message id, which the next stage's
//! inbox recognises.

mod handoff;

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::handoff::{HandedRows, Handoff, Inserted};
use crate::{
    broker::{self, Outgoing, PublishError, Publisher},
    fault,
};

/// One message to publish once the transaction commits.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    pub correlation_id: Option<String>,
    pub message_type: Option<String>,
    pub headers: Value,
    pub body: Vec<u8>,
}

impl OutboxMessage {
    /// A JSON message with a fresh (time-ordered) message id.
    pub fn json(
        exchange: &str,
        routing_key: &str,
        message_type: &str,
        correlation_id: Option<&str>,
        body: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            message_id: uuid::Uuid::now_v7().to_string(),
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            correlation_id: correlation_id.map(str::to_owned),
            message_type: Some(message_type.to_owned()),
            headers: Value::Object(Default::default()),
            body: serde_json::to_vec(body)?,
        })
    }
}

/// Inserts rows in the caller's transaction (one statement for all of
/// them), for a relay pass to claim.
pub async fn insert(
    conn: &mut PgConnection,
    messages: &[OutboxMessage],
) -> Result<(), sqlx::Error> {
    insert_rows(conn, messages.to_vec(), None).await?;
    Ok(())
}

/// Inserts the messages in one statement, claimed for `lease` (with their
/// first publish attempt counted) when given; their rows, in order.
async fn insert_rows(
    conn: &mut PgConnection,
    messages: Vec<OutboxMessage>,
    lease: Option<Duration>,
) -> Result<Vec<Row>, sqlx::Error> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    // Rows are inserted in the messages' order, so their ids ascend with it.
    // The lease runs from the insert (`clock_timestamp`), not from the
    // transaction's start: a long transaction still hands over a live lease.
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO outbox (message_id, exchange, routing_key, correlation_id, message_type, headers, body,
                             claimed_until, publish_attempts)
         SELECT m.message_id, m.exchange, m.routing_key, m.correlation_id, m.message_type, m.headers, m.body,
                clock_timestamp() + make_interval(secs => $8), CASE WHEN $8 IS NULL THEN 0 ELSE 1 END
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::bytea[])
              WITH ORDINALITY AS m (message_id, exchange, routing_key, correlation_id, message_type, headers, body, n)
         ORDER BY m.n
         RETURNING id",
    )
    .bind(messages.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.exchange.as_str()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.routing_key.as_str()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.correlation_id.as_deref()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.message_type.as_deref()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| &m.headers).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>())
    .bind(lease.map(|l| l.as_secs_f64()))
    .fetch_all(conn)
    .await?;
    ids.sort_unstable();
    let attempts = i32::from(lease.is_some());
    Ok(ids
        .into_iter()
        .zip(messages)
        .map(|(id, m)| Row {
            id,
            message_id: m.message_id,
            exchange: m.exchange,
            routing_key: m.routing_key,
            correlation_id: m.correlation_id,
            message_type: m.message_type,
            headers: m.headers,
            body: m.body,
            publish_attempts: attempts,
        })
        .collect())
}

/// An outbox row a relay owns for now.
#[derive(Debug, sqlx::FromRow)]
pub struct Row {
    id: i64,
    message_id: String,
    exchange: String,
    routing_key: String,
    correlation_id: Option<String>,
    message_type: Option<String>,
    headers: Value,
    body: Vec<u8>,
    publish_attempts: i32,
}

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_size: u32,
    pub lease: Duration,
    pub poll: Duration,
    /// Bound on the final flush at shutdown.
    pub flush_timeout: Duration,
}

/// Relays committed outbox rows until cancelled, then flushes what is left:
/// the rows handed over first, then passes over the table when woken or
/// every `poll`.
pub async fn run_relay(
    pool: PgPool,
    publisher: Publisher,
    wake: Arc<Notify>,
    mut handed: HandedRows,
    config: RelayConfig,
    cancel: CancellationToken,
) {
    let mut pass_due = true;
    // A steady tick: handed-over rows arriving more often than `poll` must
    // not keep postponing the passes (jobs' rows, retries, a dead process's).
    let mut poll = tokio::time::interval(config.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The sent marks of handed-over rows go to a task of their own, so that
    // a publish waiting on the broker or a run of passes never holds them.
    let (marks, marker) = spawn_marker(pool.clone(), config.batch_size as usize);
    loop {
        if pass_due {
            let relayed = match relay_once(&pool, &publisher, &config).await {
                Ok(n) => n,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay pass failed");
                    0
                }
            };
            // more may be waiting
            pass_due = relayed as u32 >= config.batch_size;
            if pass_due {
                continue;
            }
        }
        // The tick and the wake come first: under a steady stream of
        // handed-over rows the passes still run.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = poll.tick() => pass_due = true,
            _ = wake.notified() => pass_due = true,
            Some(first) = handed.recv() => {
                let rows = handed.take(first, config.batch_size);
                match publish_unmarked(&pool, &publisher, rows).await {
                    Ok(sent) if !sent.is_empty() => {
                        // (the marker ends only after this loop drops `marks`)
                        let _ = marks.send(sent);
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "handing outbox rows back failed; the lease gives them to a later pass"),
                }
            }
        }
    }
    // The marks held are written before the shutdown flush.
    drop(marks);
    if let Err(error) = marker.await {
        tracing::warn!(%error, "the outbox sent marker ended abnormally");
    }
    // Shutdown: publish what the last transactions committed, the rows
    // handed over first (`recv` ends once every send in progress is in).
    let deadline = tokio::time::Instant::now() + config.flush_timeout;
    handed.receiver.close();
    loop {
        let rows = match tokio::time::timeout_at(deadline, handed.recv()).await {
            Ok(Some(first)) => handed.take(first, config.batch_size),
            Ok(None) | Err(_) => break,
        };
        match tokio::time::timeout_at(deadline, publish(&pool, &publisher, rows)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox flush at shutdown failed; rows stay for the next relay");
                return;
            }
            Err(_) => return,
        }
    }
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, relay_once(&pool, &publisher, &config)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox flush at shutdown failed; rows stay for the next relay");
                break;
            }
        }
    }
}

/// One pass: claim a batch, publish it pipelined, mark what was confirmed.
/// Returns the number of rows claimed.
pub async fn relay_once(
    pool: &PgPool,
    publisher: &Publisher,
    config: &RelayConfig,
) -> Result<usize, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "UPDATE outbox SET claimed_until = now() + make_interval(secs => $2), publish_attempts = publish_attempts + 1
         WHERE id IN (
             SELECT id FROM outbox
             WHERE sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < now())
             ORDER BY id LIMIT $1
             FOR UPDATE SKIP LOCKED)
         RETURNING id, message_id, exchange, routing_key, correlation_id, message_type, headers, body, publish_attempts",
    )
    .bind(i64::from(config.batch_size))
    .bind(config.lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    publish(pool, publisher, rows).await
}

/// Publishes rows this relay owns, pipelined, and marks what was confirmed;
/// what was not is kept for another try. Returns the number of rows.
async fn publish(
    pool: &PgPool,
    publisher: &Publisher,
    rows: Vec<Row>,
) -> Result<usize, sqlx::Error> {
    let claimed = rows.len();
    let sent = publish_unmarked(pool, publisher, rows).await?;
    mark_sent(pool, &sent).await?;
    Ok(claimed)
}

/// Publishes rows this relay owns, pipelined; what was not confirmed is
/// kept for another try. Returns the ids of the rows confirmed, which the
/// caller marks sent (until then the relay's lease keeps them its own).
async fn publish_unmarked(
    pool: &PgPool,
    publisher: &Publisher,
    rows: Vec<Row>,
) -> Result<Vec<i64>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }

    let messages: Vec<Outgoing> = rows.iter().map(outgoing).collect();
    let mut pending = Vec::with_capacity(rows.len());
    let mut not_started = Vec::new();
    for (row, message) in rows.iter().zip(&messages) {
        if pending
            .last()
            .is_some_and(|(_, _, started): &(_, _, Result<_, _>)| started.is_err())
        {
            not_started.push(row.id);
            continue;
        }
        let started = publisher.start(message).await;
        pending.push((row, message, started));
    }
    if !not_started.is_empty() {
        // The channel broke mid-batch: hand these back for the next pass.
        sqlx::query("UPDATE outbox SET claimed_until = now() + interval '1 second', publish_attempts = publish_attempts - 1 WHERE id = ANY($1)")
            .bind(&not_started)
            .execute(pool)
            .await?;
    }
    let confirms = join_all(
        pending
            .into_iter()
            .map(|(row, message, started)| async move {
                let result = match started {
                    Ok(confirm) => broker::confirmed(confirm, message).await,
                    Err(error) => Err(error),
                };
                (row, result)
            }),
    )
    .await;

    fault::point(fault::AFTER_PUBLISH_BEFORE_MARK_SENT);

    let mut sent = Vec::new();
    for (row, result) in confirms {
        match result {
            Ok(()) => sent.push(row.id),
            Err(error) => {
                let retry_in = publish_backoff(row.publish_attempts);
                if matches!(error, PublishError::Returned { .. }) {
                    metrics::counter!("payfleet_outbox_returned_total").increment(1);
                }
                tracing::warn!(%error, outbox_id = row.id, message_id = %row.message_id, ?retry_in,
                    "outbox message not delivered; kept for another try");
                sqlx::query(
                    "UPDATE outbox SET claimed_until = now() + make_interval(secs => $2), last_error = $3 WHERE id = $1",
                )
                .bind(row.id)
                .bind(retry_in.as_secs_f64())
                .bind(error.to_string())
                .execute(pool)
                .await?;
            }
        }
    }
    Ok(sent)
}

/// Marks published rows sent.
async fn mark_sent(pool: &PgPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE outbox SET sent_at = now(), claimed_until = NULL, last_error = NULL WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    metrics::counter!("payfleet_outbox_sent_total").increment(ids.len() as u64);
    Ok(())
}

/// How long the sent marks of handed-over rows wait to be written with
/// others, from the confirm of the first.
pub const MARK_SENT_WITHIN: Duration = Duration::from_millis(20);

/// Starts the task that writes the sent marks of handed-over rows: the ids
/// sent to it are written with one statement once `batch_size` are held or
/// [`MARK_SENT_WITHIN`] after the first, and what is held when the sender
/// is dropped is written before the task ends. Marking a row rewrites it
/// whole (body and all) and indexes it again, and in an open loop the
/// relay's rounds carry a few rows each: one statement per round cost
/// PostgreSQL about as much as all the rounds' rows. Until its mark is
/// written a row is the relay's by its lease (from its insert); a mark
/// that comes too late for it, or never (the process dies first), leaves
/// the row to a pass, and the next stage's inbox recognises the copy.
fn spawn_marker(
    pool: PgPool,
    batch_size: usize,
) -> (
    tokio::sync::mpsc::UnboundedSender<Vec<i64>>,
    tokio::task::JoinHandle<()>,
) {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Vec<i64>>();
    let batch_size = batch_size.max(1);
    let task = tokio::spawn(async move {
        while let Some(first) = receiver.recv().await {
            let mut ids = first;
            let due = tokio::time::Instant::now() + MARK_SENT_WITHIN;
            while ids.len() < batch_size {
                match tokio::time::timeout_at(due, receiver.recv()).await {
                    Ok(Some(sent)) => ids.extend(sent),
                    Ok(None) | Err(_) => break,
                }
            }
            // One retry: a mark lost here is a republish once the lease ends.
            let written = match mark_sent(&pool, &ids).await {
                Ok(()) => Ok(()),
                Err(_) => mark_sent(&pool, &ids).await,
            };
            if let Err(error) = written {
                tracing::warn!(%error, rows = ids.len(), "marking handed-over outbox rows sent failed; the lease gives them to a later pass");
            }
        }
    });
    (sender, task)
}

/// Exponential from 200 ms, capped at 10 s.
fn publish_backoff(attempts: i32) -> Duration {
    let exponent = attempts.clamp(1, 16) as u32 - 1;
    Duration::from_millis((200u64 << exponent).min(10_000))
}

fn outgoing(row: &Row) -> Outgoing {
    let mut properties = broker::properties(
        &row.message_id,
        row.correlation_id.as_deref(),
        row.message_type.as_deref(),
    );
    let mut headers = broker::headers_from_json(&row.headers);
    headers.insert(
        broker::header::RELAYED_AT_MS.into(),
        lapin::types::AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
    );
    properties = properties.with_headers(headers);
    Outgoing {
        exchange: row.exchange.clone(),
        routing_key: row.routing_key.clone(),
        body: row.body.clone(),
        properties,
    }
}
